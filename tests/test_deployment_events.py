"""Real-deployment test of event-driven scheduling: an iTwin job that finishes starts exactly one DAG run.

The shipped example ``example_itwin_job_finished_events`` is scheduled on an asset whose watcher is a
``JobFinishedTrigger``; the triggerer runs it, the scheduler turns its events into runs. Airflow's docs warn
that a watcher whose condition stays true re-triggers forever: these tests wait many polls after the run and
across a triggerer restart, and count the runs. Run with ``pytest tests/test_deployment_events.py -m deployment``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_jobprogress.hooks.itwin import ITwinHook
from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from airflow_provider_jobprogress.triggers.job_finished import JobFinishedTrigger

from . import deployment as harness
from .deployment import Deployment, wait_for

deployment = harness.deployment
vendor_emulator = harness.vendor_emulator

pytestmark = pytest.mark.deployment

DAG_ID = "example_itwin_job_finished_events"
CONN_ID = "itwin_reality_analysis"
JOB_NAME = "Road signs nightly"  # the name the example's watcher lists
LISTING = "/reality-analysis/jobs"
RESULTS = Path("/tmp/jobprogress-results/itwin-events")  # the example DAG's default destination
SPEC = {
    "type": "Objects2D",
    "name": JOB_NAME,
    "specifications": {"inputs": {"photos": "rd-photos", "photoObjectDetector": "det"}, "outputs": ["objects2D"]},
}


def listings(emu: VendorEmulator) -> int:
    """The watcher's polls so far (GET …/jobs; the jobs here fit one page)."""
    return sum(1 for c in emu.calls if c.method == "GET" and c.path == LISTING)


def wait_polls(emu: VendorEmulator, n: int, timeout: float = 120) -> None:
    """Wait for ``n`` more polls of the watcher: proof that it is running and has looked again."""
    start = listings(emu)
    wait_for(f"{n} more polls of the watcher", lambda: listings(emu) >= start + n, timeout)


def runs(dep: Deployment) -> list[dict[str, Any]]:
    response = dep.client.get(f"/dags/{DAG_ID}/dagRuns", params={"order_by": "start_date"})
    response.raise_for_status()
    return list(response.json()["dag_runs"])


def finished_job(emu: VendorEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """Someone else's job of the watched name, submitted and then ended (nobody polls it)."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", emu.connections()[CONN_ID])
    emu.set_next_scenario("itwin", Scenario(steps=4))  # ends only when told to
    job_id = ITwinHook(CONN_ID).submit(SPEC)
    emu.finish_jobs("itwin", [job_id])
    return job_id


def wait_for_runs(dep: Deployment, count: int, timeout: float = 150) -> list[dict[str, Any]]:
    def settled() -> list[dict[str, Any]] | None:
        current = runs(dep)
        if len(current) >= count and all(r["state"] in ("success", "failed") for r in current):
            return current
        return None

    result: list[dict[str, Any]] = wait_for(f"{count} finished run(s) of {DAG_ID}", settled, timeout)
    return result


@pytest.fixture(scope="module")
def events_deployment(deployment: Deployment, vendor_emulator: VendorEmulator) -> Iterator[Deployment]:
    deployment.wait_ready([DAG_ID])
    wait_polls(vendor_emulator, 2)  # the watcher runs in the triggerer before any job ends
    yield deployment
    shutil.rmtree(RESULTS, ignore_errors=True)


def test_a_finished_job_starts_exactly_one_run(
    events_deployment: Deployment, vendor_emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep, emu = events_deployment, vendor_emulator
    assert runs(dep) == [], "no job has finished: no run"
    job_id = finished_job(emu, monkeypatch)
    (run,) = wait_for_runs(dep, 1)
    assert run["state"] == "success", dep.log_tails()
    downloaded = sorted(
        p.relative_to(RESULTS / job_id).as_posix() for p in (RESULTS / job_id).rglob("*") if p.is_file()
    )
    assert downloaded, f"the run downloaded nothing for job {job_id}"
    # The job stays finished: many more polls and scheduler loops later, still the one run.
    wait_polls(emu, 12)
    time.sleep(5)
    assert [r["dag_run_id"] for r in runs(dep)] == [run["dag_run_id"]]
    events = dep.client.get("/assets/events", params={"limit": 100}).json()["asset_events"]
    ours = [e for e in events if (e.get("extra") or {}).get("payload", {}).get("job_id") == job_id]
    assert len(ours) == 1, json.dumps(events, indent=1)[:3000]


def test_a_triggerer_restart_fires_no_job_twice(
    events_deployment: Deployment, vendor_emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep, emu = events_deployment, vendor_emulator
    before = runs(dep)
    dep.stop("triggerer")
    while_down = finished_job(emu, monkeypatch)  # ends while no triggerer watches
    dep.start("triggerer")
    wait_polls(emu, 12)
    time.sleep(5)
    after = wait_for_runs(dep, len(before))
    new = [r for r in after if r["dag_run_id"] not in {b["dag_run_id"] for b in before}]
    if hasattr(JobFinishedTrigger(), "asset_state_store"):
        # Airflow 3.3+: the watermark was saved in the asset state store; the job that ended while the
        # triggerer was down fires once on restart, and the job fired before does not fire again.
        assert len(new) == 1, after
        events = dep.client.get("/assets/events", params={"limit": 100}).json()["asset_events"]
        fired = [(e.get("extra") or {}).get("payload", {}).get("job_id") for e in events]
        assert fired.count(while_down) == 1, fired
    else:
        # Below 3.3 there is no state store: the restarted trigger starts from its start time (no `since`),
        # so nothing fires again, and the job that ended while it was down is not fired (at most once).
        assert new == [], after
