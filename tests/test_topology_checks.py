"""The topology's checks on records made up here: what each accepts and what it refuses, without a cluster.

The topology itself (tests/test_topology.py) takes minutes and runs its disasters at moments nobody picks; a check
that accepts an outcome must be seen refusing its near misses here.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from airflow_provider_jobprogress.testing.emulators import Call, Scenario
from airflow_provider_jobprogress.testing.emulators.model import Download, Job
from tests.topology.scenario import MAPPED, TI, CutTry, Outcome, Plan, check_runs, collected_by_a_killed_try

RUN = "t_run"
SUBMIT: TI = (MAPPED, RUN, "scriptx_submit", 2)
FETCH: TI = (MAPPED, RUN, "scriptx_fetch", 2)
TOKEN = "3f2c0d1e-token"
STARTED_AT = 80.0
KILLED_AT = 100.0
COLLECTED = "Task failed with exception: AirflowFailException: ScriptX.Services job t: output already collected"


def download(at: float) -> Call:
    return Call("GET", f"/api/v1/printPdf/download/{TOKEN}", 200, "scriptx", TOKEN, at)


def records(
    *,
    fetch_state: str = "failed",
    whole: bool = True,
    downloads: tuple[float, ...] = (90.0,),
    cut_try: int | None = 1,
    try_number: int = 2,
    last_error: str = COLLECTED,
    other: dict[TI, str] | None = None,
) -> tuple[Outcome, dict[TI, dict[str, Any]], dict[TI, Any], dict[str, Any], list[Call], dict[TI, str]]:
    """A mapped run whose ScriptX fetch's ``cut_try`` (started at ``STARTED_AT``) a worker kill at ``KILLED_AT``
    cut, the fetch now at ``try_number`` in ``fetch_state``; the PDF's downloads began at ``downloads``, one of
    them ``whole``; the fetch's last error line ``last_error``."""
    out = Outcome(Plan.short())
    out.runs[(MAPPED, RUN)] = "success"
    out.worker_kills.append(("mid-fetch", "worker-1", KILLED_AT))
    if cut_try is not None:
        out.cut_tries[FETCH] = CutTry(cut_try, STARTED_AT, KILLED_AT)
    tis: dict[TI, dict[str, Any]] = {
        SUBMIT: {"state": "success", "try_number": 1},
        FETCH: {"state": fetch_state, "try_number": try_number},
    }
    tis.update({ti: {"state": state, "try_number": 1} for ti, state in (other or {}).items()})
    job = Job("scriptx", TOKEN, Scenario())
    job.submit(time.monotonic())
    job.complete_now(time.monotonic())
    job.downloads.append(Download(0, "0" * 64, 1024, complete=whole))
    return out, tis, {SUBMIT: TOKEN}, {TOKEN: job}, [download(at) for at in downloads], {FETCH: last_error}


def test_a_scriptx_fetch_whose_pdf_a_killed_try_collected_fails_its_run_as_it_must() -> None:
    out, tis, returned, jobs, calls, errors = records()
    assert set(collected_by_a_killed_try(out, tis, returned, jobs, calls, errors)) == {FETCH}
    check = check_runs(out, {(MAPPED, RUN): "failed"}, tis, returned, jobs, calls, 200.0, errors)
    assert check.ok, check.detail
    assert "worker kill" in check.detail
    # and the run succeeding would be wrong: the PDF is gone
    assert not check_runs(out, {(MAPPED, RUN): "success"}, tis, returned, jobs, calls, 200.0, errors).ok


@pytest.mark.parametrize(
    "near_miss",
    [
        {"whole": False},  # the kill cut the download itself: the retry downloads it again
        {"downloads": (90.0, 105.0)},  # a download after the kill: a later try had the PDF
        {"downloads": ()},  # never downloaded: the retry did not fail for want of the PDF
        {"downloads": (70.0,)},  # downloaded before the cut try began: an earlier try had it and failed itself
        {"cut_try": None},  # no kill cut a try of this fetch (another worker's kill, or none ran it)
        {"try_number": 1},  # the try the kill cut is the one that failed: no retry ran
        {"try_number": 3},  # two tries after the cut one: the retry did not fail at once as it must
        {"last_error": "Task failed with exception: ResultDestinationError: S3 refused"},  # another failure
    ],
    ids=lambda miss: ",".join(f"{k}={v}" for k, v in miss.items()),
)
def test_a_scriptx_fetch_failed_otherwise_still_fails_the_check(near_miss: dict[str, Any]) -> None:
    out, tis, returned, jobs, calls, errors = records(**near_miss)
    assert collected_by_a_killed_try(out, tis, returned, jobs, calls, errors) == {}
    check = check_runs(out, {(MAPPED, RUN): "failed"}, tis, returned, jobs, calls, 200.0, errors)
    assert not check.ok
    assert f"scriptx_fetch[2] failed try {tis[FETCH]['try_number']}" in check.detail, "the task is named"


def test_a_lost_pdf_excuses_nothing_else_that_failed_in_its_run() -> None:
    """Another task of the same run that failed (an OL Connect fetch whose retry failed too) is still wrong."""
    other: TI = (MAPPED, RUN, "olconnect_fetch", 4)
    out, tis, returned, jobs, calls, errors = records(other={other: "failed"})
    assert set(collected_by_a_killed_try(out, tis, returned, jobs, calls, errors)) == {FETCH}
    check = check_runs(out, {(MAPPED, RUN): "failed"}, tis, returned, jobs, calls, 200.0, errors)
    assert not check.ok
    assert "olconnect_fetch[4] failed" in check.detail
    assert "worker kill" in check.detail, "the excuse it did find is said too"
