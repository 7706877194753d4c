"""The topology's checks on records made up here: what each accepts and what it refuses, without a cluster.

The topology itself (tests/test_topology.py) takes minutes and runs its disasters at moments nobody picks; a check
that accepts an outcome must be seen refusing its near misses here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from airflow_provider_jobprogress.testing.emulators import Call
from tests.topology.scenario import MAPPED, TI, Outcome, Plan, check_runs, collected_by_a_killed_try

RUN = "t_run"
FETCH: TI = (MAPPED, RUN, "scriptx_fetch", 2)
TOKEN = "3f2c0d1e-token"
KILLED_AT = 100.0


@dataclass
class Job:
    collected: bool
    vendor: str = "scriptx"

    def state(self, now: float) -> str:
        return "succeeded"


def download(status: int, at: float) -> Call:
    return Call("GET", f"/api/v1/printPdf/download/{TOKEN}", status, "scriptx", TOKEN, at)


def records(
    fetch_state: str = "failed", collected: bool = True, served_at: float = 90.0, refused_at: float | None = 110.0
) -> tuple[Outcome, dict[TI, dict[str, Any]], dict[TI, Any], dict[str, Any], list[Call]]:
    out = Outcome(Plan.short())
    out.runs[(MAPPED, RUN)] = "success"
    out.worker_kills.append(("mid-fetch", "worker-1", KILLED_AT))
    tis: dict[TI, dict[str, Any]] = {
        (MAPPED, RUN, "scriptx_submit", 2): {"state": "success", "try_number": 1},
        FETCH: {"state": fetch_state, "try_number": 3},
    }
    returned: dict[TI, Any] = {(MAPPED, RUN, "scriptx_submit", 2): TOKEN}
    calls = [download(200, served_at)] + ([download(404, refused_at)] if refused_at is not None else [])
    return out, tis, returned, {TOKEN: Job(collected)}, calls


def test_a_scriptx_fetch_whose_pdf_a_killed_try_collected_fails_its_run_as_it_must() -> None:
    out, tis, returned, jobs, calls = records()
    assert set(collected_by_a_killed_try(out, tis, returned, jobs, calls)) == {FETCH}
    check = check_runs(out, {(MAPPED, RUN): "failed"}, tis, returned, jobs, calls, now=200.0)
    assert check.ok, check.detail
    assert "worker kill" in check.detail
    # and the run succeeding would be wrong: the PDF is gone
    assert not check_runs(out, {(MAPPED, RUN): "success"}, tis, returned, jobs, calls, now=200.0).ok


@pytest.mark.parametrize(
    "near_miss",
    [
        {"collected": False},  # the kill cut the download itself: the retry downloads it again
        {"served_at": 105.0},  # served after the kill: no killed try had it
        {"refused_at": 95.0},  # refused before the kill: not the kill's doing
        {"refused_at": None},  # never refused: the retry did not fail for want of the PDF
        {"fetch_state": "success"},
    ],
    ids=lambda miss: ",".join(f"{k}={v}" for k, v in miss.items()),
)
def test_a_scriptx_fetch_failed_otherwise_still_fails_the_check(near_miss: dict[str, Any]) -> None:
    out, tis, returned, jobs, calls = records(**near_miss)
    assert collected_by_a_killed_try(out, tis, returned, jobs, calls) == {}
    if near_miss != {"fetch_state": "success"}:
        check = check_runs(out, {(MAPPED, RUN): "failed"}, tis, returned, jobs, calls, now=200.0)
        assert not check.ok
        assert "scriptx_fetch[2] failed try 3" in check.detail, "the task that failed the run is named"
