"""The shared poller: many waits on one connection read their jobs from one listing, and end as they would alone.

Against the emulators (real HTTP servers): the same jobs' outcomes read per job (``list_polling: false``) and
through listings, the calls the vendor received, the wake on an ended job, and what the poller leaves behind.
Jobs here run on time (``Scenario(duration=…)``), as real ones do: a listing never advances a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from airflow_provider_jobprogress.core import PollPolicy, RequestRetry
from airflow_provider_jobprogress.core.budget import BUDGETS
from airflow_provider_jobprogress.core.errors import VendorUnavailableError
from airflow_provider_jobprogress.core.model import JobProgress, JobState, Listing
from airflow_provider_jobprogress.core.poller import LIST_MIN_WAITS, POLLERS, JobPoller, Watch
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
        assert per_job_calls >= 2 * len(MIX), "each wait read its own job (on a quiet machine about 54 reads)"
    else:
        assert listings(emulator, vendor) >= 1, "the waits were answered from listings"
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


@pytest.mark.parametrize("vendor", ["itwin-v1", "itwin-v2"])
async def test_a_failure_or_cancellation_is_read_from_its_listing_entry(emulator: VendorEmulator, vendor: str) -> None:
    """How a job that left the listing ended comes from its entry in the listing of ended jobs, whatever the end:
    no read of its progress or details of its own (a Trial client has 75 calls a minute for thousands of waits;
    three calls per failure held every other end back). A failure's messages are read where the entry has none
    (v2), as its own wait would."""
    busy = [submit(vendor, Scenario(duration=600), emulator) for _ in range(LIST_MIN_WAITS)]
    # long enough for several listings to see them run, however loaded the machine
    failed = submit(vendor, Scenario(duration=5.0, outcome="fail", message="disk full"), emulator)
    cancelled = submit(vendor, Scenario(duration=5.0, outcome="cancel"), emulator)
    runs = [asyncio.ensure_future(wait_all([trigger(vendor, job, interval=0.5)])) for job in busy]
    soon = time.time() + 0.2
    ended = [trigger(vendor, job, interval=60.0, first_poll_at=soon) for job in (failed, cancelled)]
    try:
        fail, cancel = await asyncio.wait_for(wait_all(ended), timeout=50)
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
    assert (fail["status"], fail["progress"]["state"]) == ("failed", "failed")
    assert "disk full" in fail["message"]
    assert (cancel["status"], cancel["progress"]["state"]) == ("cancelled", "cancelled")
    assert cancel["progress"]["percent"] is not None, "where it stopped: the wait's last reading"
    own = {
        job: [c.path for c in emulator.calls if c.job_id == job and c.method == "GET"] for job in (failed, cancelled)
    }
    assert not [path for path in own[failed] if path.endswith(failed)], "no details read: the entry has them"
    # each read its progress once at most: its first poll, while it ran (a listing gives no percentage)
    assert sum(path.endswith("/progress") for path in own[failed]) <= 1, own[failed]
    assert sum(path.endswith("/progress") for path in own[cancelled]) <= 1, own[cancelled]


async def test_a_wait_alone_reads_its_own_job(emulator: VendorEmulator) -> None:
    job = submit("olconnect", Scenario(steps=4), emulator)  # four reads to the end, however loaded the machine
    (payload,) = await wait_all([trigger("olconnect", job, interval=0.05)])
    assert payload["status"] == "success"
    assert emulator.count("GET", "/getOperations") == 0
    assert emulator.count("GET", "/getProgress/") == 5


@pytest.mark.parametrize("vendor", sorted(LISTING))
async def test_an_unknown_job_among_listed_ones_is_read_on_its_own(emulator: VendorEmulator, vendor: str) -> None:
    jobs = [submit(vendor, Scenario(duration=1.0), emulator) for _ in range(LIST_MIN_WAITS)]
    payloads = await wait_all([trigger(vendor, job, interval=0.1) for job in [*jobs, "no-such-job"]])
    assert [p["status"] for p in payloads] == ["success"] * LIST_MIN_WAITS + ["error"]
    assert payloads[-1]["error"] == "JobNotFoundError"


def with_extra(monkeypatch: pytest.MonkeyPatch, conn_id: str, **extra: Any) -> None:
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    conn = json.loads(os.environ[name])
    monkeypatch.setenv(name, json.dumps({**conn, "extra": {**conn["extra"], **extra}}))


async def scriptx_waits_behind_a_proxy(emulator: VendorEmulator, waits: int, quota: Any) -> list[dict[str, Any]]:
    """``waits`` ScriptX waits (per job: no list call) polling every 50 ms, behind a proxy with ``quota``."""
    from airflow_provider_jobprogress.hooks.scriptx import ScriptXHook

    jobs = []
    for _ in range(waits):
        emulator.set_next_scenario("scriptx", Scenario(duration=1.0))
        jobs.append(ScriptXHook().submit("https://example.invalid/a.pdf"))
    emulator.set_quota("scriptx", quota)
    hook_path = f"{ScriptXHook.__module__}.{ScriptXHook.__qualname__}"
    return await wait_all(
        [
            JobProgressTrigger(
                hook_class_path=hook_path,
                conn_id="scriptx_default",
                job_id=job,
                poll_policy=PollPolicy.fixed(0.05).to_dict(),
                request_retry=RETRY,
            )
            for job in jobs
        ]
    )


async def test_a_budget_under_the_vendors_limit_meets_no_429(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vendor allows 120 calls a minute; the connection's budget says 100: the waits poll slower than they
    ask, and never meet a 429, whatever the window's phase (a budget sends at most 1/12 over its rate in any
    minute)."""
    from airflow_provider_jobprogress.testing.emulators import Quota

    with_extra(monkeypatch, "scriptx_default", requests_per_minute=100)
    payloads = await scriptx_waits_behind_a_proxy(emulator, 4, Quota(120, 60.0))
    assert [p["status"] for p in payloads] == ["success"] * 4
    assert emulator.stats()["vendors"]["scriptx"]["rate_limited"] == 0
    assert BUDGETS.get("scriptx_default", 100).counts.queued_seconds > 0, "the waits queued for their turns"


async def test_429s_pause_the_whole_connection(emulator: VendorEmulator) -> None:
    """A budget above the vendor's limit (the tests' own is far above): a 429 pauses the whole connection, so the
    429s a vendor sends are at most the calls in flight when a pause began, never each wait meeting the limit on
    its own. (How many are in flight at once is the machine's timing: the burst itself is the next test's.)"""
    from airflow_provider_jobprogress.testing.emulators import Quota

    payloads = await scriptx_waits_behind_a_proxy(emulator, 20, Quota(20, 1.0))
    assert [p["status"] for p in payloads] == ["success"] * 20
    refused = emulator.stats()["vendors"]["scriptx"]["rate_limited"]
    budget = BUDGETS.get("scriptx_default", 1)
    assert refused >= 1, "the proxy's limit was met"
    assert 1 <= budget.counts.pauses <= refused
    assert refused <= budget.counts.pauses * 20, "each pause began with at most the 20 calls in flight"


async def test_a_burst_of_429s_in_flight_is_one_pause(emulator: VendorEmulator) -> None:
    """Twenty calls sent in the same moment against a limit of ten: the 429s of the calls already in flight when
    the first came back stretch that one pause, they do not each start one (which would pace the connection
    twenty times over)."""
    from airflow_provider_jobprogress.hooks.scriptx import ScriptXHook
    from airflow_provider_jobprogress.testing.emulators import Quota

    emulator.set_next_scenario("scriptx", Scenario(duration=600.0))
    job = ScriptXHook().submit("https://example.invalid/a.pdf")
    emulator.set_quota("scriptx", Quota(10, 1.0))
    hook = ScriptXHook()
    try:
        progress = await asyncio.gather(*(hook.aget_progress(job) for _ in range(20)))
    finally:
        await hook.aclose()
    assert len(progress) == 20
    assert {p.state for p in progress} <= {JobState.QUEUED, JobState.RUNNING}
    refused = emulator.stats()["vendors"]["scriptx"]["rate_limited"]
    budget = BUDGETS.get("scriptx_default", 1)
    assert budget.counts.rate_limited == refused >= 2, "calls were in flight together when the limit was met"
    assert 1 <= budget.counts.pauses < refused, "one pause per burst, not one per 429"


@pytest.mark.parametrize("vendor", sorted(LISTING))
async def test_a_triggerer_restart_mid_cycle_ends_every_wait_once(emulator: VendorEmulator, vendor: str) -> None:
    """Waits stopped mid-wait (a triggerer shutting down cancels them) and re-created from their kwargs on
    another loop end as they would have: the poller is process-local and rebuilt from the waits themselves."""
    jobs = [submit(vendor, Scenario(duration=2.0), emulator) for _ in range(LIST_MIN_WAITS + 1)]
    first = [trigger(vendor, job, interval=0.1) for job in jobs]
    runs = [asyncio.ensure_future(wait_all([t])) for t in first]
    await asyncio.sleep(0.8)
    assert POLLERS.pollers(), "the waits share a poller"
    for run in runs:
        run.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    assert len(POLLERS) == 0, "a stopped wait leaves the poller; the last one closes it"
    again = [JobProgressTrigger(**t.serialize()[1]) for t in first]
    payloads = await wait_all(again)
    assert [p["status"] for p in payloads] == ["success"] * len(jobs)


@pytest.mark.parametrize("vendor", sorted(LISTING))
async def test_waits_that_join_and_leave_mid_cycle(emulator: VendorEmulator, vendor: str) -> None:
    early = [submit(vendor, Scenario(duration=1.5), emulator) for _ in range(LIST_MIN_WAITS)]
    runs = [asyncio.ensure_future(wait_all([trigger(vendor, job, interval=0.1)])) for job in early]
    await asyncio.sleep(0.5)
    late = [submit(vendor, Scenario(duration=1.0), emulator) for _ in range(2)]
    leaving = submit(vendor, Scenario(duration=60), emulator)
    gone = asyncio.ensure_future(wait_all([trigger(vendor, leaving, interval=0.1)]))
    late_runs = [asyncio.ensure_future(wait_all([trigger(vendor, job, interval=0.1)])) for job in late]
    await asyncio.sleep(0.3)
    gone.cancel()  # a user killed that task: its wait leaves mid-cycle
    results = await asyncio.gather(*runs, *late_runs)
    assert [payloads[0]["status"] for payloads in results] == ["success"] * (LIST_MIN_WAITS + 2)
    await asyncio.gather(gone, return_exceptions=True)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("jobprogress poller")]


@pytest.mark.parametrize("vendor", sorted(LISTING))
async def test_a_job_that_ends_right_after_a_listing_is_seen_at_the_next(emulator: VendorEmulator, vendor: str) -> None:
    jobs = [submit(vendor, Scenario(duration=600), emulator) for _ in range(LIST_MIN_WAITS)]
    runs = {job: asyncio.ensure_future(wait_all([trigger(vendor, job, interval=30.0)])) for job in jobs}
    before = listings(emulator, vendor)
    for _ in range(200):  # until a listing has shown the jobs running
        if listings(emulator, vendor) > before:
            break
        await asyncio.sleep(0.05)
    emulator.finish_jobs(vendor.split("-")[0], jobs[:1])
    (payload,) = await asyncio.wait_for(runs[jobs[0]], timeout=40)
    assert payload["status"] == "success", "seen at the next listing, not after the wait's own 30 s interval"
    for run in runs.values():
        run.cancel()
    await asyncio.gather(*runs.values(), return_exceptions=True)


async def test_a_verdict_from_a_slow_ended_listing_answers_the_wait_it_wakes(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget of one call every 5 s. The first listing goes at 1 s; the next is asked for at 2 s and answers at
    6 s without the job that ended at 3.5 s; the ended listing that reads that job answers at 11 s. The snapshot
    is then 9 s old, older than the 7.5 s interval (+-10 %) of the wait it wakes, which slept through it (its
    poll at 5.5 s read the first listing). Its job's verdict came with that snapshot and answers it: no call of
    its own for a job the poller has just read (under a short budget, one such call per ended job queued behind
    each other and ahead of the next listing)."""
    running = [submit("itwin-v2", Scenario(duration=600), emulator) for _ in range(LIST_MIN_WAITS)]
    ending = submit("itwin-v2", Scenario(duration=3.5), emulator)
    with_extra(monkeypatch, "itwin_reality_analysis", requests_per_minute=12)
    start = time.time()
    others = [
        asyncio.ensure_future(wait_all([trigger("itwin-v2", job, interval=1.0, first_poll_at=start + 1.0)]))
        for job in running
    ]
    slow = trigger("itwin-v2", ending, interval=7.5, first_poll_at=start + 5.5)
    (payload,) = await asyncio.wait_for(wait_all([slow]), timeout=60)
    for run in others:
        run.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    assert payload["status"] == "success"
    own = [c.path for c in emulator.calls if c.method == "GET" and c.job_id == ending]
    assert own == [], "its job read from the listings only, never on its own"


async def test_a_listing_goes_ahead_of_the_end_confirmations_queued_before_it(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OL Connect's listing has no ended listing: each operation that left it gets one getProgress of its own (a
    required call). Forty end together on a budget of four calls a second (a burst of twenty): twenty of those wait
    their turns for five seconds. The listing is one call that answers every wait (and shows the operations started
    meanwhile): it takes the next turn, not the place behind them. Queued behind them, the OL Connect benchmark
    listed twice in 338 s while 5,000 ends were confirmed, and every wait started meanwhile read its own job."""
    emulator.set_default_scenario("olconnect", Scenario(duration=600))
    with_extra(monkeypatch, "olconnect_default", requests_per_minute=240)
    running = [submit("olconnect", Scenario(duration=600), emulator) for _ in range(LIST_MIN_WAITS)]
    ending = [submit("olconnect", Scenario(duration=1.5), emulator) for _ in range(40)]
    runs = [asyncio.ensure_future(wait_all([trigger("olconnect", job, interval=1.0)])) for job in running]
    payloads = await asyncio.wait_for(wait_all([trigger("olconnect", job, interval=1.0) for job in ending]), 60)
    for run in runs:
        run.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    assert {p["status"] for p in payloads} == {"success"}
    calls = [c for c in emulator.calls if c.method == "GET"]
    confirmations = [i for i, c in enumerate(calls) if c.path.endswith(tuple(f"/getProgress/{j}" for j in ending))]
    between = [c for c in calls[confirmations[0] : confirmations[-1]] if c.path.endswith("/getOperations")]
    assert len(confirmations) >= 40, "each ended operation confirmed once"
    assert len(between) >= 3, f"the cycle's listings went while the confirmations queued ({len(between)})"


async def test_a_busy_ol_connect_server_is_listed_in_one_call(emulator: VendorEmulator) -> None:
    """getOperations lists every operation the server runs, watched or not (~150 bytes each): a server running
    a thousand is 150 KB, past the 64 KiB bound of a per-job answer. Its bound is a listing's."""
    emulator.set_default_scenario("olconnect", Scenario(duration=600))
    hook = OLConnectHook("olconnect_default")
    job_ids = [hook.submit({"datamining": {"identifier": "a.csv", "config": "dm"}}) for _ in range(1000)]
    try:
        listing = await hook.alist_running()
    finally:
        await hook.aclose()
        await ASYNC_SESSIONS.aclose_all()
    assert listing is not None
    assert set(job_ids) <= set(listing.jobs)


async def test_an_absurd_count_of_calls_left_on_a_listing_fails_no_wait(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy in front of iTwin answers the listings with an ``iTwinPlatform-RateLimit-RemainingCalls`` of 400
    digits. Before: OverflowError out of the listing, an untyped error event on every wait of the connection."""
    import aiohttp
    from aiohttp import web

    jobs = [submit("itwin-v2", Scenario(duration=1.5), emulator) for _ in range(LIST_MIN_WAITS)]
    client = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with client.request(
            request.method, emulator.url + request.path_qs, headers=headers, data=await request.read()
        ) as answer:
            out = {"Content-Type": answer.headers.get("Content-Type", "application/json")}
            if request.method == "GET" and request.path.endswith("/jobs"):  # the listings only
                out["iTwinPlatform-RateLimit-RemainingCalls"] = "9" * 400
            return web.Response(status=answer.status, body=await answer.read(), headers=out)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        proxy = f"http://127.0.0.1:{runner.addresses[0][1]}"
        with_extra(monkeypatch, "itwin_reality_analysis", base_url=proxy, auth_url=proxy + "/connect/token")
        payloads = await asyncio.wait_for(wait_all([trigger("itwin-v2", job, interval=0.2) for job in jobs]), 30)
        assert [p["status"] for p in payloads] == ["success"] * len(jobs), payloads
        assert listings(emulator, "itwin-v2") >= 1, "the waits were answered from listings"
    finally:
        await client.close()
        await runner.cleanup()


class StandIn:
    """A hook stand-in for the poller's own bookkeeping: ``listing(n)`` answers the n-th listing (raise to fail
    it); every job runs. Used where no vendor answer can cause what is tested (an exception nobody planned for)."""

    def __init__(self, jobs: int, fail: dict[int, BaseException] | None = None) -> None:
        self.jobs = [f"j{i}" for i in range(jobs)]
        self.fail = fail or {}
        self.listings = 0
        self.per_job = 0

    async def aget_progress(self, job_id: str) -> JobProgress:
        self.per_job += 1
        return JobProgress("iTwin", job_id, JobState.RUNNING)

    async def aget_progress_if_budget(self, job_id: str) -> JobProgress | None:
        return None

    async def alist_running(self) -> Listing | None:
        self.listings += 1
        failure = self.fail.get(self.listings)
        if failure is not None:
            raise failure
        return Listing({j: JobProgress("iTwin", j, JobState.RUNNING) for j in self.jobs}, percentages=False)

    async def aread_ended(self, ended: Mapping[str, JobProgress]) -> dict[str, JobProgress]:
        return {}

    async def aclose(self) -> None: ...

    def budget(self) -> None:
        return None


async def test_a_listing_that_raises_anything_is_a_failed_listing(caplog: pytest.LogCaptureFixture) -> None:
    """A bug (ours or a vendor adapter's) raising out of a listing: a failed listing, logged once with its
    traceback; the waits read their own jobs and the poller's cycle goes on (before: the error reached every
    wait's poll, and killed the cycle task)."""
    reader = StandIn(5, fail={1: OverflowError("int too large to convert to float")})
    poller = JobPoller("itwin_default", reader, lists=True, list_interval=0.3)
    watches = [poller.watch(job, reader) for job in reader.jobs]
    try:
        readings = await asyncio.gather(*(w.read() for w in watches))
        assert {r.state for r in readings} == {JobState.RUNNING}
        assert reader.per_job == len(watches), "no listing yet: each wait read its own job"
        await asyncio.sleep(0.8)
        assert poller._cycle_task is not None
        assert not poller._cycle_task.done(), "the cycle goes on"
        assert reader.listings >= 2, "the listing was tried again"
        await asyncio.gather(*(w.read() for w in watches))
        assert reader.per_job == len(watches), "answered from the listing that worked"
    finally:
        for watch in watches:
            poller.unwatch(watch)
        await poller.aclose()
    logged = [r for r in caplog.records if "listing jobs failed" in r.getMessage()]
    assert len(logged) == 1, "once"
    assert logged[0].exc_info is not None, "with its traceback"


async def test_a_failed_listing_answers_from_the_last_good_one() -> None:
    """200 waits listed once; the next listing fails (a 503 burst outlasting its retries). Before: every wait polling
    in the next list_interval sent its own call (5,000 iTwin waits: hours of queued calls just as the vendor
    struggles). Now they see no change yet, and the listing is tried again."""
    reader = StandIn(200, fail={2: VendorUnavailableError("iTwin", None, "HTTP 503")})
    poller = JobPoller("itwin_default", reader, lists=True, list_interval=15.0)
    watches = [poller.watch(job, reader) for job in reader.jobs]
    try:
        for watch in watches:
            watch.interval = 1.0  # an iTwin wait's interval is 15-120 s; 1 s keeps the test short
        await asyncio.gather(*(w.read() for w in watches))
        assert (reader.listings, reader.per_job) == (1, 0)
        await asyncio.sleep(1.1)  # every wait polls again: the listing is tried, and fails
        readings = await asyncio.gather(*(w.read() for w in watches))
        assert reader.listings == 2
        assert reader.per_job == 0, "one failed listing costs the vendor no call per wait"
        assert {r.state for r in readings} == {JobState.RUNNING}
    finally:
        for watch in watches:
            poller.unwatch(watch)
        await poller.aclose()


class SlowToStop(StandIn):
    """A listing that, cancelled, winds up until ``finish`` is set (or it is cancelled again)."""

    def __init__(self, jobs: int) -> None:
        super().__init__(jobs)
        self.cleaning = asyncio.Event()
        self.finish = asyncio.Event()
        self.closed = False

    async def alist_running(self) -> Listing | None:
        self.listings += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cleaning.set()
            await self.finish.wait()
            raise
        return None

    async def aclose(self) -> None:
        self.closed = True


async def _closing_with_a_listing_under_way(reader: SlowToStop | None = None) -> tuple[JobPoller, SlowToStop]:
    reader = reader or SlowToStop(3)
    poller = JobPoller("itwin_default", reader, lists=True, list_interval=0.1)
    watches = [poller.watch(job, reader) for job in reader.jobs]
    for _ in range(100):
        if reader.listings:
            break
        await asyncio.sleep(0.05)
    assert reader.listings, "a listing is under way"
    for watch in watches:
        poller.unwatch(watch)
    return poller, reader


async def test_closing_a_poller_keeps_a_cancel_of_its_closer() -> None:
    """The last wait leaving closes its poller, which cancels the listing under way and waits for it to wind up.
    A cancel of the wait itself meanwhile (Airflow sends a user's kill again every second) is the wait's own, with
    its message (Airflow runs ``on_kill`` on it): before, it was swallowed with the listing's, and the wait went on
    as if never asked to stop. The hook's share is given back all the same."""
    poller, reader = await _closing_with_a_listing_under_way()
    closer = asyncio.ensure_future(poller.aclose())
    await asyncio.wait_for(reader.cleaning.wait(), 5)
    closer.cancel("user action")
    with pytest.raises(asyncio.CancelledError) as cancelled:
        await closer
    assert cancelled.value.args == ("user action",)
    assert reader.closed, "the hook's share was given back"


async def test_a_poller_closed_by_a_task_cancelled_before_closes_without_a_cancel_of_its_own() -> None:
    """A wait cancelled once closes its poller in its ``finally``: the close itself raises nothing (the wait's
    first cancel goes on as it came)."""
    poller, reader = await _closing_with_a_listing_under_way()

    async def cancelled_wait() -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            reader.finish.set()  # the listing winds up at once
            await poller.aclose()
            return "closed"
        return "not cancelled"

    assert await cancelled_wait() == "closed"
    assert reader.closed


async def test_a_cancel_sent_again_while_a_cancelled_wait_closes_its_poller_is_not_raised_in_its_place() -> None:
    """A user's kill cancels the wait with Airflow's message; the wait's ``finally`` closes its poller; Airflow
    sends the cancel again meanwhile. The close raises nothing: the first cancel, message and all, goes on (a
    cancel raised in its place, without the message, made Airflow skip ``on_kill`` and leave the job)."""
    poller, reader = await _closing_with_a_listing_under_way()
    loop = asyncio.get_running_loop()

    async def killed_wait() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            loop.call_later(0.2, reader.finish.set)  # the listing winds up
            loop.call_soon(lambda: loop.call_soon(wait.cancel))  # sent again while the close waits for it
            await poller.aclose()

    wait = asyncio.ensure_future(killed_wait())
    await asyncio.sleep(0.05)
    wait.cancel("user action")
    with pytest.raises(asyncio.CancelledError) as cancelled:
        await wait
    assert cancelled.value.args == ("user action",)
    assert reader.closed


class SlowToClose(SlowToStop):
    """A hook whose share of the session takes a while to give back (the last share: the session closes)."""

    def __init__(self, jobs: int) -> None:
        super().__init__(jobs)
        self.closing = asyncio.Event()

    async def aclose(self) -> None:
        self.closing.set()
        await asyncio.sleep(0.3)
        self.closed = True


async def _wait_then_close(reader: SlowToStop, seconds: float) -> None:
    """Waits on the reader's jobs for ``seconds``, then (or once cancelled) leave, closing their poller as a wait's
    ``finally`` does."""
    poller = JobPoller("itwin_default", reader, lists=False, list_interval=15.0)
    watches = [poller.watch(job, reader) for job in reader.jobs]
    try:
        await asyncio.sleep(seconds)
    finally:
        for watch in watches:
            poller.unwatch(watch)
        await poller.aclose()


async def test_a_cancel_sent_again_while_the_poller_gives_its_session_back_does_not_cut_that_short() -> None:
    """A user's kill cancels the wait; its ``finally`` closes the poller; Airflow sends the cancel again while the
    hook's share of the session is being given back (the session closing). Before, that cancel cut the close
    short (the session left held) and came out of ``aclose`` in place of the first one."""
    reader = SlowToClose(3)
    loop = asyncio.get_running_loop()

    async def resend() -> None:
        await reader.closing.wait()
        wait.cancel()  # sent again, without the message

    wait = asyncio.ensure_future(_wait_then_close(reader, seconds=30))
    resender = loop.create_task(resend())
    await asyncio.sleep(0.05)
    wait.cancel("user action")
    with pytest.raises(asyncio.CancelledError) as cancelled:
        await wait
    await resender
    assert cancelled.value.args == ("user action",)
    assert reader.closed, "the session was given back whole"


@pytest.mark.parametrize("cancelled", ["before the close", "during the close", "never"])
async def test_a_session_close_that_fails_is_logged_and_never_replaces_the_kill(
    cancelled: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The hook's share of the session fails to go back (the session's close raised): that is logged, and the
    wait's cancel, message and all, goes on. Raised instead, a close's failure in the wait's ``finally`` took the
    place of Airflow's kill (no ``on_kill``, an error event for a wait that was killed); with no kill, it turned a
    wait's end into an error event."""

    class FailsToClose(SlowToClose):
        async def aclose(self) -> None:
            await super().aclose()
            raise RuntimeError("the session's close failed")

    reader = FailsToClose(3)
    task = asyncio.ensure_future(_wait_then_close(reader, seconds=30 if cancelled == "before the close" else 0))
    with caplog.at_level(logging.WARNING):
        if cancelled == "never":
            await task  # raises nothing
        else:
            if cancelled == "before the close":
                await asyncio.sleep(0.05)
            else:
                await reader.closing.wait()
            task.cancel("user action")
            with pytest.raises(asyncio.CancelledError) as kill:
                await task
            assert kill.value.args == ("user action",)
    assert reader.closed
    assert "RuntimeError" in caplog.text
    assert "the session's close failed" in caplog.text


async def test_a_cancel_of_the_closer_that_its_listing_absorbed_is_still_raised() -> None:
    """The listing the close cancels may swallow the cancel that comes for the closer too and end quietly: the
    closer was still asked to stop, so ``aclose`` raises a cancel once the session is given back."""

    class Swallows(SlowToStop):
        async def alist_running(self) -> Listing | None:
            self.listings += 1
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cleaning.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.finish.wait()
            return None

    poller, reader = await _closing_with_a_listing_under_way(Swallows(3))
    closer = asyncio.ensure_future(poller.aclose())
    await asyncio.wait_for(reader.cleaning.wait(), 5)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert reader.closed


async def test_a_failed_read_of_ended_jobs_keeps_the_listing() -> None:
    """The listing worked, the read of how a vanished job ended did not: the listing still answers the others."""

    class EndedFails(StandIn):
        async def aread_ended(self, ended: Mapping[str, JobProgress]) -> dict[str, JobProgress]:
            raise VendorUnavailableError("iTwin", None, "HTTP 503")

    reader = EndedFails(5)
    poller = JobPoller("itwin_default", reader, lists=True, list_interval=15.0)
    watches = [poller.watch(job, reader) for job in reader.jobs]
    try:
        for watch in watches:
            watch.interval = 1.0
        await asyncio.gather(*(w.read() for w in watches))
        reader.jobs = reader.jobs[1:]  # j0 ended: no longer listed
        await asyncio.sleep(1.1)
        await asyncio.gather(*(w.read() for w in watches[1:]))
        assert reader.listings == 2
        assert reader.per_job == 0, "the others answered from the listing that worked"
        await watches[0].read()
        assert reader.per_job == 1, "the ended job read on its own"
    finally:
        for watch in watches:
            poller.unwatch(watch)
        await poller.aclose()


async def test_slow_listings_leave_the_budget_turns_between_them() -> None:
    """A listing takes the budget's next turn ahead of the waits' own reads (the reads of jobs no listing showed
    yet among them): were a slow one (many pages on a short budget) followed at once by the next, those reads would
    get no turn at all. A listing starts no sooner after the last one ended than that one took."""

    class Slow(StandIn):
        def __init__(self, jobs: int) -> None:
            super().__init__(jobs)
            self.spans: list[tuple[float, float]] = []

        async def alist_running(self) -> Listing | None:
            started = time.monotonic()
            await asyncio.sleep(0.6)
            listing = await super().alist_running()
            self.spans.append((started, time.monotonic()))
            return listing

    reader = Slow(5)
    poller = JobPoller("itwin_default", reader, lists=True, list_interval=0.3)
    watches = [poller.watch(job, reader) for job in reader.jobs]

    async def poll(watch: Watch) -> None:
        watch.interval = 0.2
        while True:
            await watch.read()
            await watch.sleep(0.2, tick=0.05)

    polls = [asyncio.ensure_future(poll(w)) for w in watches]
    try:
        await asyncio.sleep(4.0)
    finally:
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        for watch in watches:
            poller.unwatch(watch)
        await poller.aclose()
    spans = reader.spans
    assert len(spans) >= 2
    gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(spans)]
    assert min(gaps) >= 0.5, f"listings {len(spans)}, gaps between them {[round(g, 2) for g in gaps]}"


async def test_only_the_listing_call_is_urgent_not_the_reads_of_ended_jobs() -> None:
    """The listing takes the budget's next turn; the reads of how jobs ended that follow it (iTwin: 50 ids a
    call, a failure's messages one each) take their turns in order, behind the waits' own queued reads: urgent
    too, a thousand ends at once would have every wait's read wait behind them."""
    from airflow_provider_jobprogress.core.budget import _URGENT

    class Recording(StandIn):
        def __init__(self, jobs: int) -> None:
            super().__init__(jobs)
            self.urgent: dict[str, list[bool]] = {"listing": [], "ended": []}

        async def alist_running(self) -> Listing | None:
            self.urgent["listing"].append(_URGENT.get())
            listing = await super().alist_running()
            if self.listings > 1:  # from the second on, one job has left the listing
                assert listing is not None
                return Listing({j: r for j, r in listing.jobs.items() if j != "j0"}, percentages=False)
            return listing

        async def aread_ended(self, ended: Mapping[str, JobProgress]) -> dict[str, JobProgress]:
            self.urgent["ended"].append(_URGENT.get())
            return {job: JobProgress("iTwin", job, JobState.SUCCEEDED, 100.0) for job in ended}

    reader = Recording(LIST_MIN_WAITS)
    poller = JobPoller("itwin_default", reader, lists=True, list_interval=0.1)
    watches = [poller.watch(job, reader) for job in reader.jobs]
    try:
        for _ in range(2):
            await asyncio.gather(*(w.read() for w in watches))
            await asyncio.sleep(0.3)
        await asyncio.gather(*(w.read() for w in watches))
    finally:
        for watch in watches:
            poller.unwatch(watch)
        await poller.aclose()
    assert reader.urgent["listing"], "it listed"
    assert set(reader.urgent["listing"]) == {True}, reader.urgent
    assert reader.urgent["ended"] == [False], reader.urgent


async def test_an_edited_connection_reaches_the_poller(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poller's own hook read the connection once: its once-a-minute summary put the old budget back on the
    connection, and an edited ``list_polling`` was not honoured while the poller lived."""
    from airflow_provider_jobprogress.core import budget as budget_module
    from airflow_provider_jobprogress.hooks import base as hooks_base

    with_extra(monkeypatch, "olconnect_default", requests_per_minute=5000)
    jobs = [submit("olconnect", Scenario(duration=600), emulator) for _ in range(LIST_MIN_WAITS + 1)]
    runs = [asyncio.ensure_future(wait_all([trigger("olconnect", job, interval=0.2)])) for job in jobs[:-1]]
    try:
        await asyncio.sleep(1.5)
        with_extra(monkeypatch, "olconnect_default", requests_per_minute=7000, list_polling=False)
        monkeypatch.setattr(hooks_base, "CONNECTION_TTL", 0.0)
        runs.append(asyncio.ensure_future(wait_all([trigger("olconnect", jobs[-1], interval=0.2)])))
        await asyncio.sleep(1.0)  # the new wait read the edited connection, and with it the poller's hook
        listed = listings(emulator, "olconnect")
        monkeypatch.setattr(budget_module, "SUMMARY_SECONDS", 0.0)  # the poller's summary, now
        await asyncio.sleep(1.5)
        budget = BUDGETS.find("olconnect_default")
        assert budget is not None
        assert budget.per_minute == 7000, "the summary put the old budget back"
        assert listings(emulator, "olconnect") == listed, "list_polling: false honoured"
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


class ScriptedVendor:
    """A vendor in memory for the poller alone: ``running`` jobs are listed; an ended job's verdict comes from
    ``aread_ended``, which holds any call that asks about ``held`` until ``release`` is set."""

    def __init__(self, jobs: list[str], held: str = "") -> None:
        self.running = set(jobs)
        self.held = held
        self.release = asyncio.Event()
        self.ended_reads: list[int] = []
        #: running jobs the next listing leaves out (pages that shifted as other jobs ended between them)
        self.skipped: set[str] = set()
        self.own_reads: list[str] = []

    async def alist_running(self) -> Listing:
        listed = self.running - self.skipped
        self.skipped = set()
        return Listing({job: JobProgress("v", job, JobState.RUNNING) for job in listed})

    async def aread_ended(self, ended: Mapping[str, JobProgress]) -> dict[str, JobProgress]:
        self.ended_reads.append(len(ended))
        if self.held in ended:
            await self.release.wait()
        return {
            job: JobProgress("v", job, JobState.RUNNING if job in self.running else JobState.SUCCEEDED) for job in ended
        }

    async def aget_progress(self, job_id: str) -> JobProgress:
        self.own_reads.append(job_id)
        state = JobState.RUNNING if job_id in self.running else JobState.SUCCEEDED
        return JobProgress("v", job_id, state)

    async def aget_progress_if_budget(self, job_id: str) -> JobProgress | None:
        return None

    async def aclose(self) -> None:
        pass

    def budget(self) -> None:
        return None


async def read_until_ended(watch: Watch) -> JobProgress:
    """A wait's polls, every 50 ms, until its job ended (a read while a listing is under way answers at once)."""
    for _ in range(400):
        reading = await watch.read()
        if reading.is_terminal:
            return reading
        await asyncio.sleep(0.05)
    raise AssertionError(f"{watch.job_id} did not end within 400 polls")


async def test_ended_jobs_are_read_in_chunks_each_waking_its_waits() -> None:
    """Thousands of jobs that end together are read a chunk at a time, and each chunk's waits learn their end as
    its answer comes, not after every ended job of the cycle was read (5,000 ends under a Trial client's 75
    calls a minute held the first for the last: a p95 of 80 s)."""
    from airflow_provider_jobprogress.core.poller import ENDED_CHUNK

    jobs = [f"job-{i:04d}" for i in range(ENDED_CHUNK + 10)]
    vendor = ScriptedVendor(jobs, held=jobs[-1])
    poller = JobPoller("scripted", vendor, lists=True, list_interval=1.0)
    watches = [poller.watch(job, vendor) for job in jobs]
    try:
        for watch in watches:
            watch.interval = 0.05
        assert (await watches[0].read()).state is JobState.RUNNING, "from the first listing"
        vendor.running.clear()  # every job ends; the next cycle's listing shows none of them
        first = await asyncio.wait_for(read_until_ended(watches[0]), timeout=10)
        assert first.state is JobState.SUCCEEDED, "its chunk answered while the last chunk's read still waits"
        assert not vendor.release.is_set()
        assert vendor.ended_reads == [ENDED_CHUNK, 10]
        vendor.release.set()
        last = await asyncio.wait_for(read_until_ended(watches[-1]), timeout=10)
        assert last.state is JobState.SUCCEEDED
    finally:
        vendor.release.set()
        for watch in watches:
            poller.unwatch(watch)
        await poller.aclose()


async def test_a_running_job_a_listing_missed_is_not_taken_for_ended() -> None:
    """A listing of many pages misses jobs when others end between its pages (offsets shift): the read of the
    "ended" ones finds them running. They stay watched from the listings, not woken to read their own jobs (the
    Trial benchmark saw 40 such reads in one second, each a required call of a short budget)."""
    jobs = [f"job-{i}" for i in range(LIST_MIN_WAITS + 2)]
    vendor = ScriptedVendor(jobs)
    poller = JobPoller("scripted", vendor, lists=True, list_interval=1.0)
    watches = [poller.watch(job, vendor) for job in jobs]
    try:
        for watch in watches:
            watch.interval = 0.05
        assert (await watches[0].read()).state is JobState.RUNNING
        vendor.skipped = {jobs[1]}
        for _ in range(200):  # until the listing that missed it, and its ended read, are through
            await asyncio.sleep(0.05)
            if vendor.ended_reads and not vendor.skipped:
                break
        assert vendor.ended_reads == [1], "taken for ended by the listing that missed it, and read"
        for _ in range(3):
            await asyncio.sleep(0.4)
            assert (await watches[1].read()).state is JobState.RUNNING
        assert vendor.own_reads == [], "answered from the listings, as before the miss"
        vendor.running.discard(jobs[1])  # now it ends: seen as any other end
        ended = await asyncio.wait_for(read_until_ended(watches[1]), timeout=10)
        assert ended.state is JobState.SUCCEEDED
    finally:
        for watch in watches:
            poller.unwatch(watch)
        await poller.aclose()


@pytest.mark.parametrize("vendor", ["itwin-v1", "itwin-v2"])
async def test_itwin_says_a_job_taken_for_ended_still_runs(emulator: VendorEmulator, vendor: str) -> None:
    """The read of jobs that left a listing answers for those still running too (a listing's pages missed them):
    without that answer their waits would each read their own job."""
    running = submit(vendor, Scenario(duration=600), emulator)
    ended = submit(vendor, Scenario(duration=0.1), emulator)
    await asyncio.sleep(0.5)
    hook = ITwinHook(LISTING[vendor][0])
    try:
        found = await hook.aread_ended({job: JobProgress("iTwin", job, JobState.RUNNING) for job in (running, ended)})
    finally:
        await hook.aclose()
    assert found[ended].state is JobState.SUCCEEDED
    assert found[running].state in (JobState.QUEUED, JobState.RUNNING)


@pytest.mark.parametrize("vendor", sorted(LISTING))
async def test_a_listing_keeps_nothing_of_the_vendors_answer(emulator: VendorEmulator, vendor: str) -> None:
    """A listing's readings live in the poller's snapshot and in every wait's last reading, and the poller keeps
    the running ones between listings: with the vendor's own entries in them (an iTwin job's whole details), two
    listings' worth of parsed JSON stayed alive, 29 MB at 20,000 waits. They carry the facts, no ``raw``."""
    job_ids = [submit(vendor, Scenario(duration=600), emulator) for _ in range(3)]
    conn_id, hook_class, _, _ = LISTING[vendor]
    hook: Any = hook_class(conn_id)
    try:
        listing = await hook.alist_running()
        assert listing is not None
        ended = await hook.aread_ended({job: listing.jobs[job] for job in job_ids})
    finally:
        await hook.aclose()
    assert set(job_ids) <= set(listing.jobs)
    assert [listing.jobs[job].raw for job in job_ids] == [None] * 3
    if vendor != "olconnect":  # iTwin reads them from its listing too (OL Connect: getProgress's few bytes)
        assert [ended[job].raw for job in job_ids] == [None] * 3
        finished = [submit(vendor, Scenario(duration=0.2, outcome=o), emulator) for o in ("succeed", "fail")]
        await asyncio.sleep(0.5)
        hook = hook_class(conn_id)
        try:
            verdicts = await hook.aread_ended({job: JobProgress("iTwin", job, JobState.RUNNING) for job in finished})
        finally:
            await hook.aclose()
        assert {verdicts[job].state for job in finished} == {JobState.SUCCEEDED, JobState.FAILED}
        assert [verdicts[job].raw for job in finished] == [None, None]
