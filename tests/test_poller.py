"""The shared poller: many waits on one connection read their jobs from one listing, and end as they would alone.

Against the emulators (real HTTP servers): the same jobs' outcomes read per job (``list_polling: false``) and
through listings, the calls the vendor received, the wake on an ended job, and what the poller leaves behind.
Jobs here run on time (``Scenario(duration=…)``), as real ones do: a listing never advances a job.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from airflow_provider_jobprogress.core import PollPolicy, RequestRetry
from airflow_provider_jobprogress.core.budget import BUDGETS
from airflow_provider_jobprogress.core.poller import LIST_MIN_WAITS, POLLERS
from airflow_provider_jobprogress.core.session import ASYNC_SESSIONS
from airflow_provider_jobprogress.hooks.itwin import ITwinHook
from airflow_provider_jobprogress.hooks.olconnect import OLConnectHook
from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from airflow_provider_jobprogress.triggers.job_progress import JobProgressTrigger

RETRY = RequestRetry(initial_delay=0.01, max_delay=0.02, jitter=0, attempts=2, outage_tolerance=30).to_dict()
#: per API with a list call: (connection, hook, the list call the vendor receives, a per-job progress call)
LISTING = {
    "olconnect": ("olconnect_default", OLConnectHook, "/getOperations", "/getProgress/"),
    "itwin-v2": ("itwin_reality_analysis", ITwinHook, "/reality-analysis/jobs", "/progress"),
    "itwin-v1": ("itwin_default", ITwinHook, "/realitydataanalysis/jobs", "/progress"),
}
ITWIN_V1_JOB = {"name": "j", "type": "objects2D", "inputs": [{"type": "photos", "id": "i"}], "outputs": ["objects2D"]}
ITWIN_V2_JOB = {
    "type": "Objects2D",
    "name": "signs",
    "specifications": {"inputs": {"photos": "rd-photos", "photoObjectDetector": "det"}, "outputs": ["objects2D"]},
}


@pytest.fixture(autouse=True)
async def nothing_left_behind() -> AsyncIterator[None]:
    BUDGETS.clear()
    yield
    assert len(POLLERS) == 0, "every poller closed with its last wait"
    await ASYNC_SESSIONS.aclose_all()
    BUDGETS.clear()


@pytest.fixture(params=["listing", "per_job"])
def mode(request: pytest.FixtureRequest, emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of reading: through listings, and with ``list_polling`` off (every wait reads its own job, as
    before the shared poller)."""
    if request.param == "per_job":
        for conn_id, _, _, _ in LISTING.values():
            name = f"AIRFLOW_CONN_{conn_id.upper()}"
            conn = json.loads(os.environ[name])
            monkeypatch.setenv(name, json.dumps({**conn, "extra": {**conn["extra"], "list_polling": False}}))
    return str(request.param)


def listings(emulator: VendorEmulator, vendor: str) -> int:
    """List calls the vendor answered (the call's path, without a job id after it)."""
    path = LISTING[vendor][2]
    return sum(1 for call in emulator.calls if call.method == "GET" and call.path.endswith(path))


def submit(vendor: str, scenario: Scenario, emulator: VendorEmulator) -> str:
    conn_id = LISTING[vendor][0]
    emulator.set_next_scenario(vendor.split("-")[0], scenario)
    if vendor == "olconnect":
        return OLConnectHook(conn_id).submit({"datamining": {"identifier": "a.csv", "config": "dm"}})
    return ITwinHook(conn_id).submit(ITWIN_V2_JOB if vendor == "itwin-v2" else ITWIN_V1_JOB)


def trigger(vendor: str, job_id: str, interval: float, **kwargs: Any) -> JobProgressTrigger:
    conn_id, hook_class, _, _ = LISTING[vendor]
    return JobProgressTrigger(
        hook_class_path=f"{hook_class.__module__}.{hook_class.__qualname__}",
        conn_id=conn_id,
        job_id=job_id,
        poll_policy=PollPolicy.fixed(interval).to_dict(),
        request_retry=RETRY,
        **kwargs,
    )


async def wait_all(triggers: list[JobProgressTrigger]) -> list[dict[str, Any]]:
    async def one(trig: JobProgressTrigger) -> dict[str, Any]:
        events = [event async for event in trig.run()]
        assert len(events) == 1, "one event per wait"
        return dict(events[0].payload)

    return list(await asyncio.gather(*(one(t) for t in triggers)))


#: a mix of ends: successes of several lengths, a failure, a cancellation; and what each wait must end with
MIX = [
    (Scenario(duration=0.6), ("success", "succeeded", 100.0, None)),
    (Scenario(duration=1.2), ("success", "succeeded", 100.0, None)),
    (Scenario(duration=1.8), ("success", "succeeded", 100.0, None)),
    (Scenario(duration=0.9, outcome="fail", message="disk full"), ("failed", "failed", None, "disk full")),
    (Scenario(duration=0.9, outcome="cancel"), ("cancelled", "cancelled", "any", None)),
]


@pytest.mark.parametrize("vendor", sorted(LISTING))
async def test_listing_and_per_job_polling_end_alike(emulator: VendorEmulator, vendor: str, mode: str) -> None:
    jobs = [submit(vendor, scenario, emulator) for scenario, _ in MIX]
    payloads = await wait_all([trigger(vendor, job, interval=0.1) for job in jobs])
    for payload, (_, (status, state, percent, says)) in zip(payloads, MIX, strict=True):
        assert payload["status"] == status, payload
        assert payload["progress"]["state"] == state, payload
        assert percent == "any" or payload["progress"]["percent"] == percent, payload
        assert says is None or says in payload["message"], payload
    per_job_calls = emulator.count("GET", LISTING[vendor][3])
    if mode == "per_job":
        assert listings(emulator, vendor) == 0
        assert per_job_calls >= 5 * len(MIX), "per job, these waits poll about 54 times"
    else:
        assert listings(emulator, vendor) >= 3, "the waits were answered from listings"
        if vendor == "olconnect":  # a listing with percentages: per-job reads before the first one and at the ends
            assert per_job_calls <= 25, "per job, these waits poll about 54 times"


@pytest.mark.parametrize("vendor", sorted(LISTING))
async def test_an_ended_job_wakes_its_wait_within_one_cycle(emulator: VendorEmulator, vendor: str) -> None:
    """A wait whose backoff has grown long learns of its job's end from the next listing, not its next poll."""
    jobs = [submit(vendor, Scenario(duration=600), emulator) for _ in range(LIST_MIN_WAITS)]
    quick = submit(vendor, Scenario(duration=1.0), emulator)
    started = time.monotonic()
    waits = [trigger(vendor, job, interval=0.2) for job in jobs]
    slow = trigger(vendor, quick, interval=60.0, first_poll_at=time.time() + 0.3)
    runs = [asyncio.ensure_future(wait_all([t])) for t in waits]
    (payload,) = await asyncio.wait_for(wait_all([slow]), timeout=20)
    assert payload["status"] == "success"
    assert time.monotonic() - started < 10, "woken by the listing, not by its 60 s poll interval"
    for run in runs:
        run.cancel()
    await asyncio.gather(*runs, return_exceptions=True)


async def test_a_wait_alone_reads_its_own_job(emulator: VendorEmulator) -> None:
    job = submit("olconnect", Scenario(duration=0.5), emulator)
    (payload,) = await wait_all([trigger("olconnect", job, interval=0.05)])
    assert payload["status"] == "success"
    assert emulator.count("GET", "/getOperations") == 0
    assert emulator.count("GET", "/getProgress/") >= 3


@pytest.mark.parametrize("vendor", sorted(LISTING))
async def test_an_unknown_job_among_listed_ones_is_read_on_its_own(emulator: VendorEmulator, vendor: str) -> None:
    jobs = [submit(vendor, Scenario(duration=1.0), emulator) for _ in range(LIST_MIN_WAITS)]
    payloads = await wait_all([trigger(vendor, job, interval=0.1) for job in [*jobs, "no-such-job"]])
    assert [p["status"] for p in payloads] == ["success"] * LIST_MIN_WAITS + ["error"]
    assert payloads[-1]["error"] == "JobNotFoundError"
