"""The trigger benchmark's machinery on a tiny size: both sides wait to the end and are counted (no timing)."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import pytest

from airflow_provider_jobprogress.testing.emulators import VendorEmulator

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_bench(name: str = "bench_triggers") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("side", ["reference", "ours"])
def test_each_side_waits_every_job_to_its_end_and_is_counted(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    bench = load_bench()
    for name in list(os.environ):
        if name.startswith("AIRFLOW_CONN_"):
            monkeypatch.delenv(name)  # run_side sets them from the emulator, as in its own process
    monkeypatch.setenv("AIRFLOW_CONN_HTTP_DEFAULT", "")  # restored after the test
    size = bench.Size(20, 0.2, 1.0)
    result = bench.run_side(side, "olconnect", size, bench.Emulator(emulator.url, os.getpid()))
    assert result.succeeded == 20
    # Jobs are timed from their submit: on a loaded machine some may have ended before their wait began,
    # so only "every wait was asked, and made, at least one poll" holds whatever the load.
    assert result.polls_asked >= 20
    assert result.polls_made >= 20
    assert result.token_requests == (1 if side == "ours" else 0)
    assert result.baseline_rss_mib > 0
    # Linux keeps RSS in per-thread counters folded in lazily, so two readings can disagree by a few pages
    # (CI on 3.1.8: a peak 12 KiB below its baseline, twice): growth is measured, to within 1 MiB.
    assert result.rss_growth_mib > -1.0
    row = bench.markdown([(size, {"reference": result, "ours": result})])
    assert "20 waits, 0.2 s, 1 s jobs" in row


def load_vendor_bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports its emulator helpers from bench_triggers
    return load_bench("bench_vendor_load")


@pytest.mark.parametrize("mode", ["poller", "per_job", "reference"])
def test_vendor_load_counts_every_vendors_calls_and_each_waits_true_end(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    bench = load_vendor_bench(monkeypatch)
    groups = tuple(bench.Group(vendor, 4, 3.0) for vendor in ("olconnect", "itwin", "scriptx"))
    case = bench.Case("machinery", mode, groups, interval=0.2)
    with mock.patch.dict(os.environ):  # run_case points the connections at the emulator, as in its own process
        result = bench.run_case(case, bench.Emulator(emulator.url, os.getpid()))
    assert [v.vendor for v in result.vendors] == ["olconnect", "itwin", "scriptx"]
    for vendor in result.vendors:
        assert (vendor.waits, vendor.right, vendor.wrong, vendor.unfinished) == (4, 4, 0, 0), vendor
        # the vendor's own calls while the waits ran (the reference's: its done endpoint), none before
        window = [c for c in emulator.calls if result.start <= c.ts <= result.start + result.wall_s]
        assert vendor.calls == sum(1 for c in window if bench.vendor_of(c.to_dict()) == vendor.vendor) >= 1
        assert vendor.rate_limited == 0
    assert result.polls >= 12
    assert result.rss_growth_mib > -1.0  # within the lazily folded per-thread RSS counters (see above)
    # of every 20 jobs one fails and one is cancelled by the vendor: each vendor's first four have both
    for vendor_name in ("olconnect", "itwin", "scriptx"):
        ended = Counter(
            job.scenario.outcome for (vendor, _), job in list(emulator.state.jobs.items()) if vendor == vendor_name
        )
        assert ended == {"fail": 1, "cancel": 1, "succeed": 2}
    table = bench.report([result], "header")
    assert "machinery: " in table
    assert "| 4 |" in table


def test_vendor_load_counts_a_trigger_that_raised_as_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HttpSensorTrigger.run`` lets every error but an AirflowException out (Airflow fails such a trigger):
    before, such a wait was counted unfinished, as if the case had given up on it, and then its moment as an end."""
    bench = load_vendor_bench(monkeypatch)

    class Raises:
        async def run(self) -> Any:
            raise ConnectionResetError("the vendor hung up")
            yield  # an async generator, as every trigger's run()

    seen = asyncio.run(bench.run_waits({"j1": Raises()}, time.time() + 5.0))
    assert seen["j1"][1] == "raised ConnectionResetError"
    # counted an error, and its moment (before the job's end here) is no end seen late
    records = {"j1": {"submitted_at": 100.0, "scenario": {"duration": 60.0}, "state": "succeeded"}}
    seen = {"j1": (130.0, "raised ConnectionResetError")}
    result = bench.measure_vendor(bench.Group("olconnect", 1, 60.0), ["j1"], records, seen, [], 100.0, 100.0)
    assert (result.right, result.wrong, result.errors, result.unfinished) == (0, 1, 1, 0)
    assert math.isnan(result.late_max_s)


def test_the_token_masking_benchmark_counts_what_each_variant_gives_airflows_masker() -> None:
    bench = load_bench("bench_token_masking")
    env = dict(os.environ)
    rows = {v: bench.run_worker(v, "opaque", 5, 50, env) for v in bench.VARIANTS}
    assert [rows[v]["renewals"] for v in bench.VARIANTS] == [0, 5, 5]
    assert rows["reference"]["patterns"] - rows["none"]["patterns"] == 5
    assert rows["ours"]["patterns"] == rows["none"]["patterns"]
    assert all(row["us_per_line"] > 0 for row in rows.values())
