"""JobFinishedTrigger against the iTwin emulator: a job that newly finishes fires once, never again."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import requests

from airflow_provider_jobprogress.core.errors import OperationNotSupportedError, VendorResponseError
from airflow_provider_jobprogress.core.policies import RequestRetry
from airflow_provider_jobprogress.core.session import ASYNC_SESSIONS
from airflow_provider_jobprogress.get_provider_info import get_provider_info
from airflow_provider_jobprogress.hooks.itwin import ITwinHook
from airflow_provider_jobprogress.testing.emulators import Faults, Scenario, VendorEmulator
from airflow_provider_jobprogress.triggers.job_finished import JobFinishedTrigger, Watermark, newly_finished
from tests.test_hooks_today import OBJECTS_2D, itwin_hook

PAST = "2020-01-01T00:00:00Z"
LISTING = "/reality-analysis/jobs"


class Watch:
    """A trigger running in the background as the triggerer runs it, its events collected."""

    def __init__(self, emulator: VendorEmulator, trigger: JobFinishedTrigger) -> None:
        self.emulator = emulator
        self.trigger = trigger
        self.events: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None

    def listings(self) -> int:
        """GET …/jobs calls so far: one per page."""
        return sum(1 for c in self.emulator.calls if c.method == "GET" and c.path == LISTING)

    async def polls(self, n: int = 1) -> None:
        """Wait until the trigger has listed jobs ``n`` more times (every page of a listing read)."""
        start = self.trigger.completed_polls
        deadline = time.monotonic() + 20
        while self.trigger.completed_polls < start + n:
            assert time.monotonic() < deadline, "the trigger stopped polling"
            await asyncio.sleep(0.01)

    def job_ids(self) -> list[str]:
        return [event["job_id"] for event in self.events]

    def task_done(self) -> bool:
        return self.task is not None and self.task.done()


@asynccontextmanager
async def watching(emulator: VendorEmulator, **kwargs: Any) -> AsyncIterator[Watch]:
    kwargs.setdefault("poll_interval", 0.05)
    watch = Watch(emulator, JobFinishedTrigger(**kwargs))

    async def consume() -> None:
        async for event in watch.trigger.run():
            watch.events.append(event.payload)

    task = watch.task = asyncio.create_task(consume())
    try:
        await watch.polls(1)
        yield watch
    finally:
        task.cancel()  # as the triggerer stops a watcher: cancel it, then cleanup()
        with pytest.raises(asyncio.CancelledError):
            await task
        await watch.trigger.cleanup()
        assert ASYNC_SESSIONS.sessions() == [], "cleanup() gave the connection's session back"


def run(coro: Callable[[], Any]) -> Any:
    return asyncio.run(coro())


@pytest.fixture(autouse=True)
def events_stored_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watermark past an event is saved at the watcher's first pause after it (production waits the
    triggerer health threshold, 30 s, before taking the event as stored; see events_stored_after)."""
    monkeypatch.setenv("AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD", "0")


@pytest.fixture
def submit(emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[str]]:
    hook = itwin_hook(emulator, monkeypatch, "reality-analysis")

    def submit(n: int = 1, **scenario: Any) -> list[str]:
        emulator.set_default_scenario("itwin", Scenario(steps=4, **scenario))  # never ends unless told to
        return [hook.submit(OBJECTS_2D) for _ in range(n)]

    return submit


def test_the_emulator_reads_bentleys_filter_grammar(emulator: VendorEmulator, submit: Callable[..., list[str]]) -> None:
    ids = submit(3)
    emulator.finish_jobs("itwin", ids[:1])
    hook = itwin_hook(emulator, pytest.MonkeyPatch(), "reality-analysis")
    assert [
        j["id"] for j in hook.list_jobs("(state eq 'Success' or state eq 'Failed') and createdDateTime gt " + PAST)
    ] == ids[:1]
    assert sorted(j["id"] for j in hook.list_jobs(f"state ne 'Success' and iTwinId eq {emulator.ITWIN_ID}")) == sorted(
        ids[1:]
    )
    assert hook.list_jobs("createdDateTime lt 2020-01-01T00:00:00Z") == []
    url = f"{emulator.url}{LISTING}"
    token = requests.post(
        f"{emulator.url}/connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": emulator.ITWIN_CLIENT_ID,
            "client_secret": emulator.ITWIN_CLIENT_SECRET,
        },
        timeout=10,
    ).json()["access_token"]
    refused = requests.get(
        url,
        params={"$filter": f"executionInfo/endedDateTime gt {PAST}"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "InvalidFilter"), (
        "end time is not filterable"
    )


def test_a_job_that_finishes_fires_exactly_once(emulator: VendorEmulator, submit: Callable[..., list[str]]) -> None:
    first, _still_running = submit(2)

    async def scenario() -> list[str]:
        async with watching(emulator, since=PAST) as watch:
            await watch.polls(2)
            assert watch.events == [], "running jobs do not fire"
            emulator.finish_jobs("itwin", [first])
            await watch.polls(2)
            assert watch.job_ids() == [first]
            await watch.polls(5)  # the condition "a finished job exists" stays true: nothing more fires
            return watch.job_ids()

    assert run(scenario) == [first]


def test_jobs_ending_at_the_same_second_all_fire_once(
    emulator: VendorEmulator, submit: Callable[..., list[str]]
) -> None:
    a, b, c = submit(3)

    async def scenario() -> list[dict[str, Any]]:
        async with watching(emulator, since=PAST) as watch:
            emulator.finish_jobs("itwin", [a])
            await watch.polls(2)
            emulator.finish_jobs("itwin", [b, c])  # may well share a's second too: the ids tell them apart
            await watch.polls(4)
            return watch.events

    events = run(scenario)
    assert sorted(e["job_id"] for e in events) == sorted([a, b, c])
    assert events[0]["job_id"] == a
    assert {e["state"] for e in events} == {"succeeded"}
    assert {e["vendor_state"] for e in events} == {"Success"}


def test_every_page_of_the_listing_is_read(emulator: VendorEmulator, submit: Callable[..., list[str]]) -> None:
    ids = submit(5)
    emulator.finish_jobs("itwin", ids)

    async def scenario() -> tuple[list[str], int, int]:
        async with watching(emulator, since=PAST, page_size=2) as watch:
            await watch.polls(3)
            return watch.job_ids(), watch.listings(), watch.trigger.completed_polls

    fired, pages, polls = run(scenario)
    assert sorted(fired) == sorted(ids)
    assert pages >= 3 * polls, "five jobs, two a page: three pages each poll"


def test_only_jobs_of_the_given_name_fire(
    emulator: VendorEmulator, submit: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    (other,) = submit(1)
    hook = itwin_hook(emulator, monkeypatch, "reality-analysis")
    nightly = hook.submit({**OBJECTS_2D, "name": "nightly o'clock"})
    emulator.finish_jobs("itwin", [other, nightly])

    async def scenario() -> list[str]:
        async with watching(emulator, since=PAST, name="nightly o'clock") as watch:
            await watch.polls(2)
            return watch.job_ids()

    assert run(scenario) == [nightly]


def test_failed_jobs_fire_only_when_asked_for(emulator: VendorEmulator, submit: Callable[..., list[str]]) -> None:
    (failed,) = submit(1, outcome="fail")
    (ok,) = submit(1)
    emulator.finish_jobs("itwin", [failed, ok])

    async def scenario(states: list[str]) -> list[dict[str, Any]]:
        async with watching(emulator, since=PAST, states=states) as watch:
            await watch.polls(2)
            return watch.events

    assert [e["job_id"] for e in asyncio.run(scenario(["succeeded"]))] == [ok]
    both = asyncio.run(scenario(["succeeded", "failed"]))
    assert sorted((e["job_id"], e["state"]) for e in both) == sorted([(ok, "succeeded"), (failed, "failed")])


def test_a_job_finished_before_the_watermark_does_not_fire(
    emulator: VendorEmulator, submit: Callable[..., list[str]]
) -> None:
    (old,) = submit(1)
    emulator.finish_jobs("itwin", [old])
    time.sleep(1.1)  # end times are printed to the second: the trigger starts in a later one

    async def scenario() -> list[str]:
        async with watching(emulator) as watch:  # no since: the watermark starts when the trigger does
            await watch.polls(3)
            return watch.job_ids()

    assert run(scenario) == []


class StateStore:
    """Stands in for Airflow 3.3's asset state store (a supervisor round trip in the triggerer): get and set."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return json.loads(json.dumps(self.values.get(key, default)))  # what survives the trip is JSON

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))


def test_a_restarted_trigger_resumes_from_the_saved_watermark(
    emulator: VendorEmulator, submit: Callable[..., list[str]]
) -> None:
    first, second = submit(2)
    store = StateStore()

    async def once(finish: list[str], with_store: bool = True) -> list[str]:
        watch = Watch(emulator, JobFinishedTrigger(since=PAST, poll_interval=0.05))
        if with_store:
            watch.trigger.asset_state_store = store  # type: ignore[assignment]  # as the 3.3 triggerer injects it
        emulator.finish_jobs("itwin", finish) if finish else None

        async def consume() -> None:
            async for event in watch.trigger.run():
                watch.events.append(event.payload)

        task = watch.task = asyncio.create_task(consume())
        await watch.polls(3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await watch.trigger.cleanup()
        return watch.job_ids()

    assert asyncio.run(once([first])) == [first]
    # the triggerer was down while `second` finished: the new trigger (same kwargs) fires it, and only it
    assert asyncio.run(once([second])) == [second]
    assert asyncio.run(once([])) == []
    # without a store (Airflow < 3.3) the watermark starts at `since` again: both fire again (at least once)
    assert sorted(asyncio.run(once([], with_store=False))) == sorted([first, second])


def test_the_watermark_tells_same_second_jobs_apart() -> None:
    jobs: list[dict[str, Any]] = [
        {"id": "b", "executionInfo": {"endedDateTime": "2026-01-01T00:00:05Z"}},
        {"id": "a", "executionInfo": {"endedDateTime": "2026-01-01T00:00:05Z"}},
        {"id": "old", "executionInformation": {"endedDateTime": "2026-01-01T00:00:04Z"}},
        {"id": "no-end"},
    ]
    mark = Watermark.from_json({"ended": "2026-01-01T00:00:05+00:00", "ids": ["a"]})
    assert mark is not None
    assert [job["id"] for _, job in newly_finished(jobs, mark)] == ["b"]
    after = mark.advanced(newly_finished(jobs, mark)[0][0], "b")
    assert newly_finished(jobs, after) == []
    assert after.ids == {"a", "b"}


def test_kwargs_round_trip_and_stay_the_same_between_parses() -> None:
    one = JobFinishedTrigger(conn_id="itwin_default", states=["succeeded", "failed"], poll_interval=30)
    classpath, kwargs = one.serialize()
    assert classpath == "airflow_provider_jobprogress.triggers.job_finished.JobFinishedTrigger"
    json.dumps(kwargs)  # plain JSON: Airflow stores and hashes them
    again = JobFinishedTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    assert JobFinishedTrigger.hash(classpath, kwargs) == JobFinishedTrigger.hash(*again.serialize())


@pytest.mark.parametrize("vendor", ["olconnect", "scriptx"])
def test_vendors_without_job_listing_are_refused(vendor: str) -> None:
    with pytest.raises(OperationNotSupportedError, match="cannot"):
        JobFinishedTrigger(conn_id=f"{vendor}_default", vendor=vendor)


def test_an_olconnect_connection_is_refused_in_the_triggerer(emulator: VendorEmulator) -> None:
    async def scenario() -> None:
        async for _ in JobFinishedTrigger(conn_id="olconnect_default").run():
            pass

    with pytest.raises(OperationNotSupportedError, match="olconnect"):
        asyncio.run(scenario())


def test_bad_parameters_are_refused_when_the_dag_is_parsed() -> None:
    with pytest.raises(ValueError, match="states"):
        JobFinishedTrigger(states=["done"])
    with pytest.raises(ValueError, match="yesterday"):
        JobFinishedTrigger(since="yesterday")


def test_the_provider_registers_the_trigger() -> None:
    modules = [m for entry in get_provider_info()["triggers"] for m in entry["python-modules"]]
    assert "airflow_provider_jobprogress.triggers.job_finished" in modules


def test_polls_share_one_client_and_one_token(emulator: VendorEmulator, submit: Callable[..., list[str]]) -> None:
    submit(1)
    tokens_before = emulator.count("POST", "/connect/token")

    async def scenario() -> list[str]:
        async with watching(emulator, since=PAST) as watch:
            await watch.polls(6)
            return [c.peer for c in emulator.calls if c.path == LISTING]

    peers = run(scenario)
    assert emulator.count("POST", "/connect/token") - tokens_before == 1, "one token for every poll"
    # the polls reuse one kept-alive connection (the very first may still ride the token's): no client per poll
    assert len(set(peers[-5:])) == 1, f"a new connection per poll: {peers}"


def test_an_outage_longer_than_the_retries_does_not_end_the_watcher(
    emulator: VendorEmulator, submit: Callable[..., list[str]]
) -> None:
    """A watcher lives as long as its DAG: a vendor outage is waited through, never the watcher's end."""
    (job,) = submit(1)
    retry = RequestRetry(initial_delay=0.01, max_delay=0.02, jitter=0, attempts=2).to_dict()

    async def scenario() -> list[str]:
        async with watching(emulator, since=PAST, request_retry=retry) as watch:
            emulator.set_faults(Faults(outage_at=0.01, outage_seconds=1.0))
            await asyncio.sleep(1.2)  # many listings' worth of retries fail in that second
            assert not watch.task_done(), "the outage ended the watcher"
            emulator.set_faults(Faults())
            emulator.finish_jobs("itwin", [job])
            await watch.polls(2)
            return watch.job_ids()

    assert run(scenario) == [job]


# -- a watcher lives as long as its DAG: months ----------------------------------------------------------------


async def _watch_until(watch: Watch, done: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert not watch.task_done(), f"the watcher ended: {watch.task.exception() if watch.task else None!r}"
        assert time.monotonic() < deadline, "not within the time given"
        await asyncio.sleep(0.02)


def test_a_rotated_client_secret_reaches_the_watcher(
    emulator: VendorEmulator, submit: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way the transport's rotation test does it: the secret changes at Bentley and in the connection while
    the watcher runs; its next listing is refused once, the connection is read again, and the watch goes on."""
    (job,) = submit(1)

    async def scenario() -> list[str]:
        async with watching(emulator, since=PAST) as watch:
            emulator.set_secrets({"itwin_client_secret": "rotated-itwin-secret-7"})
            emulator.expire_tokens()
            itwin_hook(emulator, monkeypatch, "reality-analysis")  # the connection, with the new secret
            emulator.finish_jobs("itwin", [job])
            await _watch_until(watch, lambda: bool(watch.events))
            await watch.polls(2)
            return watch.job_ids()

    assert run(scenario) == [job]
    assert any(call.status == 401 for call in emulator.calls), "the old secret was refused on the way"


def test_a_secret_rotated_before_the_connection_is_updated_is_waited_through(
    emulator: VendorEmulator, submit: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bentley has the new secret, the connection not yet: each listing is refused (and the connection read
    again) until someone updates it; then the watch goes on from its watermark."""
    (job,) = submit(1)

    async def scenario() -> list[str]:
        async with watching(emulator, since=PAST) as watch:
            emulator.set_secrets({"itwin_client_secret": "rotated-itwin-secret-8"})
            emulator.expire_tokens()
            emulator.finish_jobs("itwin", [job])
            refused = emulator.count("POST", "/connect/token")
            await _watch_until(watch, lambda: emulator.count("POST", "/connect/token") >= refused + 3)
            assert watch.events == []
            itwin_hook(emulator, monkeypatch, "reality-analysis")  # the connection is updated at last
            await _watch_until(watch, lambda: bool(watch.events))
            return watch.job_ids()

    assert run(scenario) == [job]


def test_a_job_with_a_malformed_end_time_is_skipped_with_one_warning(
    emulator: VendorEmulator, submit: Callable[..., list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    (bad,) = submit(1, ended_text="yesterday afternoon")
    good, later = submit(2)

    async def scenario() -> list[str]:
        async with watching(emulator, since=PAST) as watch:
            emulator.finish_jobs("itwin", [bad, good])
            await _watch_until(watch, lambda: bool(watch.events))
            await watch.polls(3)
            emulator.finish_jobs("itwin", [later])  # the watermark still moves for the jobs that can be placed
            await _watch_until(watch, lambda: len(watch.events) >= 2)
            await watch.polls(3)
            return watch.job_ids()

    with caplog.at_level(logging.WARNING, logger="airflow_provider_jobprogress.triggers.job_finished"):
        assert run(scenario) == [good, later]
    warnings = [r.getMessage() for r in caplog.records if bad in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "yesterday afternoon" in warnings[0]


def test_since_with_an_offset_is_read_as_the_instant_it_names(
    emulator: VendorEmulator, submit: Callable[..., list[str]]
) -> None:
    """A minute ago, written in UTC+05:00: the listing's createdDateTime bound is that instant in UTC (printed as
    local time labelled Z, it was five hours in the future and the job was never listed)."""
    (job,) = submit(1)
    emulator.finish_jobs("itwin", [job])
    a_minute_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    since = a_minute_ago.astimezone(datetime.timezone(datetime.timedelta(hours=5))).isoformat(timespec="seconds")

    async def scenario() -> list[str]:
        async with watching(emulator, since=since, max_job_hours=0.5) as watch:
            await watch.polls(2)
            return watch.job_ids()

    assert run(scenario) == [job]


def test_a_listing_that_repeats_its_continuation_token_ends_with_a_typed_error(
    emulator: VendorEmulator, submit: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    submit(5)
    emulator.set_faults(Faults(repeat_page_token=True))
    hook = itwin_hook(emulator, monkeypatch, "reality-analysis")
    outcome: list[BaseException | list[dict[str, Any]]] = []

    def list_all() -> None:
        try:
            outcome.append(hook.list_jobs(top=2))
        except BaseException as exc:  # what the thread saw is the test's subject
            outcome.append(exc)

    thread = threading.Thread(target=list_all, daemon=True)
    thread.start()
    thread.join(20)
    pages = emulator.count("GET", LISTING)
    emulator.set_faults(Faults())  # lets a listing that loops reach its end, so the thread ends
    thread.join(20)
    assert pages <= 3, f"{pages} pages asked for: the listing followed the same token again and again"
    (error,) = outcome
    assert isinstance(error, VendorResponseError), error
    assert "iTwin" in str(error)
    assert "continuation token" in str(error)


def test_the_watcher_waits_through_a_listing_that_repeats_its_token(
    emulator: VendorEmulator, submit: Callable[..., list[str]]
) -> None:
    ids = submit(5)

    async def scenario() -> tuple[list[str], int]:
        async with watching(emulator, since=PAST, page_size=2, poll_interval=0.2) as watch:
            emulator.set_faults(Faults(repeat_page_token=True))
            emulator.finish_jobs("itwin", ids)
            before = watch.listings()
            await asyncio.sleep(1.0)
            pages = watch.listings() - before
            assert not watch.task_done()
            assert watch.events == [], "nothing fires from a listing that was never read to its end"
            emulator.set_faults(Faults())
            await _watch_until(watch, lambda: len(watch.events) == 5)
            return watch.job_ids(), pages

    fired, pages = run(scenario)
    assert sorted(fired) == sorted(ids)
    # A poll every 0.2 s for a second, two pages each before the repeat shows: about ten, never hundreds.
    assert pages <= 20, f"{pages} pages asked for in one second"


def test_the_listing_is_read_page_by_page(emulator: VendorEmulator, submit: Callable[..., list[str]]) -> None:
    """A week of jobs is many pages: the triggerer reads them one at a time, never all of them into one list."""
    submit(7)

    async def first_page() -> tuple[int, int]:
        hook = ITwinHook()
        try:
            pages = hook.alist_job_pages(f"iTwinId eq {emulator.ITWIN_ID}", top=2)
            async for page in pages:
                asked = emulator.count("GET", LISTING)
                await pages.aclose()
                return len(page), asked
        finally:
            await hook.aclose()
            await ASYNC_SESSIONS.aclose_all()
        raise AssertionError("no page")

    assert run(first_page) == (2, 1), "one page read, one asked for"


# -- Airflow's own asset state store (3.3+), in this process -----------------------------------------------------


class StoreComms:
    """The triggerer supervisor's side of the asset state store, in this process: Airflow's own request handlers
    and execution API client, on Airflow's execution API (in process) and the test's metadata DB.

    ``failures`` makes the next calls fail as the triggerer's comms fail them when the API server cannot answer
    (``AirflowRuntimeError`` carrying ``API_SERVER_ERROR``)."""

    def __init__(self) -> None:
        from airflow.sdk.execution_time.supervisor import InProcessTestSupervisor

        self.client = InProcessTestSupervisor._api_client()
        self.failures = 0
        self.calls: list[str] = []

    async def asend(self, msg: Any) -> Any:
        from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
        from airflow.sdk.execution_time import comms, request_handlers

        self.calls.append(type(msg).__name__)
        if self.failures:
            self.failures -= 1
            raise AirflowRuntimeError(
                comms.ErrorResponse(error=ErrorType.API_SERVER_ERROR, detail={"status_code": 503})
            )
        handlers: dict[type, Callable[[Any, Any], Any]] = {
            comms.GetAssetStateStoreByName: request_handlers.handle_get_asset_state_store_by_name,
            comms.SetAssetStateStoreByName: request_handlers.handle_set_asset_state_store_by_name,
            comms.DeleteAssetStateStoreByName: request_handlers.handle_delete_asset_state_store_by_name,
        }
        answer: Any = await asyncio.to_thread(handlers[type(msg)], self.client, msg)
        return answer[0] if isinstance(answer, tuple) else comms.OKResponse(ok=True)


@pytest.fixture
def asset_store(airflow_db: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Airflow's asset state store for one fresh asset, as the 3.3 triggerer hands it to a watcher."""
    from airflow.sdk.execution_time import context

    if not hasattr(context, "AssetStateStoreAccessors"):
        pytest.skip("Airflow < 3.3 has no asset state store")
    import uuid

    from airflow.models.asset import AssetActive, AssetModel
    from airflow.sdk import Asset
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.context import AssetStateStoreAccessors
    from airflow.utils.session import create_session

    name = f"itwin-jobs-{uuid.uuid4().hex[:8]}"
    with create_session() as session:
        asset = AssetModel(name=name, uri=f"itwin://jobs/{name}", group="asset")
        session.add(asset)
        session.flush()
        session.add(AssetActive.for_asset(asset))
    comms = StoreComms()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    store = AssetStateStoreAccessors(inlets=[Asset(name=name, uri=f"itwin://jobs/{name}")])
    store.comms = comms  # type: ignore[attr-defined]  # for the test to reach
    # The in-process API starts on its first call (seconds on a loaded machine): not inside a watcher's wait.
    assert asyncio.run(store.aget("warm-up")) is None
    comms.calls.clear()
    return store


async def _watch_with_store(
    emulator: VendorEmulator, store: Any, until: Callable[[Watch], bool], **kwargs: Any
) -> list[str]:
    """One life of a watcher with ``store``, until ``until`` holds and three more polls are done."""
    kwargs.setdefault("poll_interval", 0.05)
    watch = Watch(emulator, JobFinishedTrigger(**kwargs))
    watch.trigger.asset_state_store = store  # type: ignore[attr-defined]  # as the 3.3 triggerer injects it

    async def consume() -> None:
        async for event in watch.trigger.run():
            watch.events.append(event.payload)

    watch.task = asyncio.create_task(consume())
    try:
        await _watch_until(watch, lambda: until(watch) and watch.trigger.completed_polls > 0)
        await watch.polls(3)
    finally:
        watch.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch.task
        await watch.trigger.cleanup()
    return watch.job_ids()


def test_the_watermark_survives_a_restart_in_airflows_store(
    emulator: VendorEmulator, submit: Callable[..., list[str]], asset_store: Any
) -> None:
    first, second = submit(2)
    emulator.finish_jobs("itwin", [first])
    assert asyncio.run(_watch_with_store(emulator, asset_store, lambda w: len(w.events) == 1, since=PAST)) == [first]
    emulator.finish_jobs("itwin", [second])
    assert asyncio.run(_watch_with_store(emulator, asset_store, lambda w: len(w.events) == 1, since=PAST)) == [second]
    assert asyncio.run(_watch_with_store(emulator, asset_store, lambda w: True, since=PAST)) == []


def test_the_watermark_outlives_a_change_of_poll_interval_page_size_or_request_retry(
    emulator: VendorEmulator, submit: Callable[..., list[str]], asset_store: Any
) -> None:
    """What identifies the stream is the connection, the API, the states and the name: a DAG author tuning how
    often or how the watcher polls (or an upgrade adding a field to RequestRetry) does not restart it."""
    first, second = submit(2)
    emulator.finish_jobs("itwin", [first])
    assert asyncio.run(
        _watch_with_store(emulator, asset_store, lambda w: len(w.events) == 1, since=PAST, states=["succeeded"])
    ) == [first]
    emulator.finish_jobs("itwin", [second])
    tuned = {
        "poll_interval": 0.07,
        "page_size": 50,
        "request_retry": RequestRetry(initial_delay=0.01, attempts=3).to_dict(),
        "max_job_hours": 24.0,
    }
    again = asyncio.run(
        _watch_with_store(
            emulator, asset_store, lambda w: len(w.events) >= 1, since=PAST, states=["succeeded"], **tuned
        )
    )
    assert again == [second], "the first job fired again: the watermark was lost"


def test_a_watermark_saved_under_the_old_key_is_read_once_after_an_upgrade(
    emulator: VendorEmulator, submit: Callable[..., list[str]], asset_store: Any
) -> None:
    """0.x keyed the watermark by a digest of every kwarg; the first start after the upgrade reads that key."""
    import hashlib

    first, second = submit(2)
    emulator.finish_jobs("itwin", [first])
    kwargs = JobFinishedTrigger(since=PAST, poll_interval=0.05).serialize()[1]
    old_key = "jobprogress.job_finished." + hashlib.sha256(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:16]
    ended = newly_finished(
        ITwinHook().list_jobs("state eq 'Success'"), Watermark(datetime.datetime.min.replace(tzinfo=datetime.UTC))
    )
    ((first_ended, _),) = ended
    asyncio.run(asset_store.aset(old_key, Watermark(first_ended, frozenset({first})).to_json()))
    emulator.finish_jobs("itwin", [second])
    assert asyncio.run(_watch_with_store(emulator, asset_store, lambda w: len(w.events) >= 1, since=PAST)) == [second]
    assert asyncio.run(asset_store.aget(old_key)) is None, "moved to the new key, not left behind"
    assert asyncio.run(_watch_with_store(emulator, asset_store, lambda w: True, since=PAST)) == []


def test_a_store_that_fails_for_a_while_never_ends_the_watcher(
    emulator: VendorEmulator, submit: Callable[..., list[str]], asset_store: Any
) -> None:
    """The store is a round trip to the API server: one that cannot answer for a while (a restart, a database
    failover) is retried, on start and after events, and the watermark gets saved once it answers again."""
    first, second = submit(2)
    emulator.finish_jobs("itwin", [first])
    asset_store.comms.failures = 3  # the start's read fails three times
    assert asyncio.run(_watch_with_store(emulator, asset_store, lambda w: len(w.events) == 1, since=PAST)) == [first]

    async def save_fails_then_heals() -> list[str]:
        watch = Watch(emulator, JobFinishedTrigger(since=PAST, poll_interval=0.05))
        watch.trigger.asset_state_store = asset_store  # type: ignore[attr-defined]

        async def consume() -> None:
            async for event in watch.trigger.run():
                watch.events.append(event.payload)

        watch.task = asyncio.create_task(consume())
        try:
            await watch.polls(2)
            asset_store.comms.failures = 2  # the save after the next event fails, and its first retry
            emulator.finish_jobs("itwin", [second])
            await _watch_until(watch, lambda: len(watch.events) == 1)
            await _watch_until(watch, lambda: asset_store.comms.failures == 0)
            await watch.polls(3)
        finally:
            watch.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch.task
            await watch.trigger.cleanup()
        return watch.job_ids()

    assert asyncio.run(save_fails_then_heals()) == [second]
    # the watermark was saved in the end: a restart fires neither job again
    assert asyncio.run(_watch_with_store(emulator, asset_store, lambda w: True, since=PAST)) == []


def test_a_watcher_killed_right_after_firing_fires_the_job_again(
    emulator: VendorEmulator, submit: Callable[..., list[str]], asset_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow stores a watcher's event a moment after the trigger yields it (the triggerer's runner hands it to
    its supervisor on its next loop, which then writes it). A triggerer killed in between loses the event, and
    had the watermark been saved at the yield the job would never fire again (the production topology saw 18
    watched jobs succeed and 15 asset events). Killed right after firing, before its next poll, the watcher
    re-created from its kwargs fires the job again: at least once. Once the event can be taken as stored the
    watermark is saved, and a restart then fires the job no more."""
    monkeypatch.setenv("AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD", "1")
    (first,) = submit(1)
    emulator.finish_jobs("itwin", [first])
    kwargs = json.loads(json.dumps(JobFinishedTrigger(since=PAST, poll_interval=0.5).serialize()[1]))

    async def one_life(until: Callable[[Watch], bool], seconds: float = 20) -> list[str]:
        """A watcher re-created from its kwargs, as the triggerer re-creates it, run until ``until`` (or for
        ``seconds``), then killed; the jobs it fired."""
        watch = Watch(emulator, JobFinishedTrigger(**kwargs))
        watch.trigger.asset_state_store = asset_store  # type: ignore[attr-defined]  # as the 3.3 triggerer does

        async def consume() -> None:  # as the triggerer's runner takes a trigger's events
            async for event in watch.trigger.run():
                watch.events.append(event.payload)

        watch.task = asyncio.create_task(consume())
        deadline = time.monotonic() + seconds
        try:
            while not (watch.trigger.completed_polls > 0 and until(watch)) and time.monotonic() < deadline:
                assert not watch.task_done(), f"the watcher ended: {watch.task.exception()!r}"
                await asyncio.sleep(0.01)
            polls = watch.trigger.completed_polls
        finally:
            watch.task.cancel()  # killed: what it yielded but Airflow had not stored is gone with it
            with contextlib.suppress(asyncio.CancelledError):
                await watch.task
            await watch.trigger.cleanup()
        assert watch.trigger.completed_polls == polls
        return watch.job_ids()

    assert asyncio.run(one_life(lambda w: len(w.events) == 1)) == [first]
    # killed right after the event, before its next poll: the job fires again, rather than never
    again = asyncio.run(one_life(lambda w: len(w.events) == 1 and w.trigger.saved == w.trigger.watermark, 5))
    assert again == [first], "the job fired once, was lost with the triggerer, and never fired again"
    # this time the watcher lived until the event could be taken as stored, and saved its watermark
    assert asyncio.run(one_life(lambda w: w.trigger.completed_polls >= 3)) == []
