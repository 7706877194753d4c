"""JobFinishedTrigger against the iTwin emulator: a job that newly finishes fires once, never again."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import requests

from airflow_provider_jobprogress.core.errors import OperationNotSupportedError
from airflow_provider_jobprogress.core.policies import RequestRetry
from airflow_provider_jobprogress.core.session import ASYNC_SESSIONS
from airflow_provider_jobprogress.get_provider_info import get_provider_info
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
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await ASYNC_SESSIONS.aclose_all()


def run(coro: Callable[[], Any]) -> Any:
    return asyncio.run(coro())


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
        await ASYNC_SESSIONS.aclose_all()
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
