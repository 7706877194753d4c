"""JobProgressTrigger in a real event loop against the emulators: events, restarts, kills, shared clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from airflow_provider_jobprogress.core import JobState, PollPolicy, RequestRetry
from airflow_provider_jobprogress.core.session import ASYNC_SESSIONS, POOL_SIZE
from airflow_provider_jobprogress.hooks.itwin import ITwinHook
from airflow_provider_jobprogress.hooks.olconnect import OLConnectHook
from airflow_provider_jobprogress.hooks.scriptx import ScriptXHook
from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from airflow_provider_jobprogress.triggers.job_progress import CLASSPATH, POLL_TICK, JobProgressTrigger, sleep_on_tick
from tests import triggerer_comms
from tests.triggerer_comms import GONE, Triggerer

triggerer = triggerer_comms.triggerer  # the fixture, used by name below

FAST_POLL = PollPolicy.fixed(0.01).to_dict()
FAST_RETRY = RequestRetry(initial_delay=0.01, max_delay=0.02, jitter=0, attempts=2, outage_tolerance=30).to_dict()
HOOKS = {
    "olconnect": "airflow_provider_jobprogress.hooks.olconnect.OLConnectHook",
    "scriptx": "airflow_provider_jobprogress.hooks.scriptx.ScriptXHook",
    "itwin": "airflow_provider_jobprogress.hooks.itwin.ITwinHook",
}


def submit(vendor: str) -> str:
    if vendor == "olconnect":
        return OLConnectHook().submit({"datamining": {"identifier": "a.csv", "config": "dm"}})
    if vendor == "scriptx":
        return ScriptXHook().submit("https://example.invalid/a.pdf")
    return ITwinHook().submit(
        {"name": "j", "type": "objects2D", "inputs": [{"type": "photos", "id": "i"}], "outputs": ["objects2D"]}
    )


def trigger(vendor: str, job_id: str, **kwargs: Any) -> JobProgressTrigger:
    params: dict[str, Any] = {
        "hook_class_path": HOOKS[vendor],
        "conn_id": f"{vendor}_default",
        "job_id": job_id,
        "poll_policy": FAST_POLL,
        "request_retry": FAST_RETRY,
    }
    params.update(kwargs)
    return JobProgressTrigger(**params)


async def events(trig: JobProgressTrigger) -> list[Any]:
    return [event async for event in trig.run()]


@pytest.fixture(autouse=True)
async def close_shared_sessions() -> AsyncIterator[None]:
    yield
    await ASYNC_SESSIONS.aclose_all()


def test_serialize_is_plain_json_and_round_trips() -> None:
    trig = trigger("itwin", "job-1", deadline=1_900_000_000.5, cancel_on_timeout=True)
    classpath, kwargs = trig.serialize()
    assert classpath == CLASSPATH
    assert json.loads(json.dumps(kwargs)) == kwargs
    try:
        from airflow.sdk import serde
    except ImportError:  # Airflow < 3.2
        from airflow.serialization import serde  # type: ignore[no-redef,attr-defined]

    assert serde.deserialize(serde.serialize(kwargs)) == kwargs
    assert JobProgressTrigger(**kwargs).serialize() == (classpath, kwargs)


@pytest.mark.parametrize("vendor", sorted(HOOKS))
async def test_success_yields_one_event_with_final_progress(emulator: VendorEmulator, vendor: str, capsys) -> None:
    # A job that moves with the clock (three steps in 2 s) polled every 0.05 s: most polls see no change, even
    # on a loaded machine that starts the wait late.
    emulator.set_next_scenario(vendor, Scenario(steps=2, duration=2.0))
    job_id = submit(vendor)
    got = await events(trigger(vendor, job_id, poll_policy=PollPolicy.fixed(0.05).to_dict()))
    assert len(got) == 1
    payload = got[0].payload
    assert payload["status"] == "success"
    assert payload["progress"]["state"] == JobState.SUCCEEDED.value
    assert payload["progress"]["job_id"] == job_id
    # Airflow's structlog writes to stdout: one line per change of progress, never one per poll.
    lines = [line for line in capsys.readouterr().out.splitlines() if job_id in line]
    polls = emulator.job(vendor, job_id).status_calls
    assert polls >= 6, f"only {polls} polls: the test needs polls that see no change"
    assert 2 <= len(lines) <= 4, f"a line for each change of progress (at most 4), not one per poll: {lines}"
    assert len(lines) == len(set(lines)), lines


@pytest.mark.parametrize(("outcome", "status"), [("fail", "failed"), ("cancel", "cancelled")])
@pytest.mark.parametrize("vendor", sorted(HOOKS))
async def test_failed_and_cancelled_jobs(emulator: VendorEmulator, vendor: str, outcome: str, status: str) -> None:
    emulator.set_next_scenario(vendor, Scenario(outcome=outcome, steps=1, message="disk full"))
    got = await events(trigger(vendor, submit(vendor)))
    assert [e.payload["status"] for e in got] == [status]
    if outcome == "fail":
        assert "disk full" in got[0].payload["message"]


async def test_deadline_gives_timeout_event_and_can_cancel(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(steps=10_000))
    job_id = submit("olconnect")
    got = await events(trigger("olconnect", job_id, deadline=time.time() + 0.3, cancel_on_timeout=True))
    assert [e.payload["status"] for e in got] == ["timeout"]
    assert "remote job cancelled" in got[0].payload["message"]
    assert emulator.count("POST", f"/cancel/{job_id}") == 1


async def test_unreachable_vendor_is_waited_through(emulator: VendorEmulator) -> None:
    # Each poll's own retries (2 tries) give up; the wait goes on until the vendor answers again.
    emulator.set_next_scenario("itwin", Scenario(flaky=5, steps=1))
    got = await events(trigger("itwin", submit("itwin")))
    assert [e.payload["status"] for e in got] == ["success"]


async def test_unknown_job_is_an_error_event(emulator: VendorEmulator) -> None:
    got = await events(trigger("scriptx", "no-such-token"))
    assert got[0].payload["status"] == "error"
    assert got[0].payload["error"] == "JobNotFoundError"


async def test_restart_from_serialized_kwargs_completes_without_submit_or_cancel(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("itwin", Scenario(steps=20))
    job_id = submit("itwin")
    first = trigger("itwin", job_id, poll_policy=PollPolicy.fixed(0.05).to_dict())
    task = asyncio.create_task(events(first))
    for _ in range(500):  # until the trigger is polling (bounded: 10 s)
        await asyncio.sleep(0.02)
        if emulator.count("GET", f"/jobs/{job_id}/progress") >= 2:
            break
    task.cancel()  # what a triggerer shutdown does: CancelledError, no on_kill
    with pytest.raises(asyncio.CancelledError):
        await task
    polls_before = emulator.count("GET", f"/jobs/{job_id}/progress")
    assert 2 <= polls_before < 20, "stopped mid-wait"
    _, kwargs = first.serialize()
    got = await events(JobProgressTrigger(**json.loads(json.dumps(kwargs))))
    assert [e.payload["status"] for e in got] == ["success"]
    assert emulator.count("POST", "/realitydataanalysis/jobs") == 1
    assert emulator.count("PATCH", f"/jobs/{job_id}") == 1  # the submit only: no cancel


async def polling_then_stopped(emulator: VendorEmulator, vendor: str = "olconnect") -> tuple[JobProgressTrigger, str]:
    """A wait on a running job, polled at least twice, then stopped as the triggerer stops it (its coroutine
    cancelled); what happens next is on_kill's to decide."""
    emulator.set_next_scenario(vendor, Scenario(steps=100000))
    job_id = submit(vendor)
    trig = trigger(vendor, job_id, poll_policy=PollPolicy.fixed(0.05).to_dict())
    task = asyncio.create_task(events(trig))
    for _ in range(500):  # until the trigger is polling (bounded: 10 s)
        await asyncio.sleep(0.02)
        if len([c for c in emulator.calls if c.job_id == job_id and c.method == "GET"]) >= 2:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return trig, job_id


@pytest.mark.parametrize("state", ["failed", "success", "skipped", None, GONE, "scheduled", "queued", "running"])
async def test_on_kill_cancels_the_job_when_a_user_killed_the_task(
    emulator: VendorEmulator, triggerer: Triggerer, state: str | None
) -> None:
    """Marked failed, success or skipped, cleared, or its DAG run deleted: nobody waits on the job any more. A
    Clear sets no state, and the scheduler has the task scheduled or queued (even running) within a second,
    usually before the triggerer gets to on_kill: the new try submits a job of its own, so this one is
    cancelled while it still runs (a wait another triggerer took over and ended has a job that ended: below)."""
    trig, job_id = await polling_then_stopped(emulator)
    trig.task_instance = triggerer.task_instance(state)
    await trig.on_kill()
    assert emulator.count("POST", f"/cancel/{job_id}") == 1
    assert [type(m).__name__ for m in triggerer.comms.asked] == ["GetTaskStates"]


@pytest.mark.parametrize("state", ["deferred", "up_for_retry"])
async def test_on_kill_leaves_the_job_while_its_wait_goes_on_elsewhere(
    emulator: VendorEmulator, triggerer: Triggerer, state: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Airflow 3.3.2 stops a wait through its user-kill path, on_kill included, also when another triggerer has
    taken it over (apache/airflow#73454). Still deferred: the other triggerer waits on the job. Up for retry: the
    wait ended there and the retry re-attaches to the job. Either way the job is not this copy's to cancel."""
    trig, job_id = await polling_then_stopped(emulator)
    trig.task_instance = triggerer.task_instance(state)
    await trig.on_kill()
    assert emulator.count("POST", "/cancel/") == 0
    assert not emulator.job("olconnect", job_id).cancelled
    out = capsys.readouterr().out  # Airflow's structlog writes to stdout
    assert f"OL Connect job {job_id}: not cancelled: the task is {state}" in out, out[-2000:]


@pytest.mark.parametrize("state", ["scheduled", "queued", "running"])
async def test_on_kill_leaves_a_job_that_ended_while_the_task_resumed(
    emulator: VendorEmulator, triggerer: Triggerer, state: str
) -> None:
    """Another triggerer took the wait over, saw the job end and the task resumed on a worker: the job ended,
    nothing to cancel."""
    trig, job_id = await polling_then_stopped(emulator)
    emulator.finish_jobs("olconnect", [job_id])
    trig.task_instance = triggerer.task_instance(state)
    await trig.on_kill()
    assert emulator.count("POST", "/cancel/") == 0


@pytest.mark.parametrize("state", ["deferred", "failed"])
async def test_on_kill_of_a_mapped_task_asks_about_its_own_map_index(
    emulator: VendorEmulator, triggerer: Triggerer, state: str
) -> None:
    """Airflow answers a mapped task instance's state under ``<task_id>_<map_index>``."""
    trig, job_id = await polling_then_stopped(emulator)
    trig.task_instance = triggerer.task_instance(state, map_index=3)
    await trig.on_kill()
    assert emulator.count("POST", f"/cancel/{job_id}") == (1 if state == "failed" else 0)


@pytest.mark.parametrize("cause", ["the API server fails", "no task instance"])
async def test_on_kill_leaves_the_job_when_airflow_cannot_say_whether_the_task_was_killed(
    emulator: VendorEmulator, triggerer: Triggerer, cause: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cancelling a job another triggerer still waits on destroys its work and fails the task, past undoing;
    leaving running a job a user no longer wants costs its run, and it can still be cancelled at the vendor.
    So when Airflow cannot say which it is, the job is left, and the log says so, naming it."""
    trig, job_id = await polling_then_stopped(emulator)
    if cause == "no task instance":
        trig.task_instance = None
    else:
        trig.task_instance = triggerer.task_instance("failed")
        triggerer.comms.failures = 100
    await trig.on_kill()
    assert emulator.count("POST", "/cancel/") == 0
    lines = capsys.readouterr().out.splitlines()  # Airflow's structlog writes to stdout
    said = [line for line in lines if f"OL Connect job {job_id}: not cancelled" in line]
    assert len(said) == 1, lines[-5:]
    assert "[warning" in said[0]
    assert "cancel it at the vendor" in said[0]


async def test_on_kill_after_success_cancels_nothing(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(steps=1))
    job_id = submit("olconnect")
    trig = trigger("olconnect", job_id)
    await events(trig)
    await trig.on_kill()
    assert emulator.count("POST", "/cancel/") == 0


async def test_on_kill_for_scriptx_sends_nothing(emulator: VendorEmulator, triggerer: Triggerer) -> None:
    emulator.set_next_scenario("scriptx", Scenario(steps=100))
    trig = trigger("scriptx", submit("scriptx"))
    trig.task_instance = triggerer.task_instance("failed")
    await trig.on_kill()  # PrintPdf has no cancel: logged, nothing sent, no exception


async def test_finish_in_triggerer_yields_task_success_event(emulator: VendorEmulator) -> None:
    from airflow.triggers.base import TaskSuccessEvent

    got = await events(trigger("itwin", submit("itwin"), finish_in_triggerer=True))
    assert len(got) == 1
    assert isinstance(got[0], TaskSuccessEvent)
    xcoms = got[0].xcoms
    assert xcoms is not None
    final = xcoms["return_value"]
    assert isinstance(final, dict)
    assert final["state"] == "succeeded"


async def test_two_hundred_triggers_share_one_token_and_one_pool(emulator: VendorEmulator) -> None:
    emulator.set_default_scenario("itwin", Scenario(steps=3))
    hook = ITwinHook()
    job_ids = [
        hook.submit(
            {"name": f"j{i}", "type": "objects2D", "inputs": [{"type": "photos", "id": "i"}], "outputs": ["objects2D"]}
        )
        for i in range(200)
    ]
    tokens_before = emulator.count("POST", "/connect/token")
    waits = asyncio.gather(*(events(trigger("itwin", job_id)) for job_id in job_ids))
    open_sessions = set()
    while not waits.done():  # however the waits read (their own calls, or the shared poller's listings)
        open_sessions.add(len(ASYNC_SESSIONS.sessions()))
        await asyncio.sleep(0.01)
    assert open_sessions <= {0, 1}, "one session for the connection"
    assert 1 in open_sessions
    got = await waits
    assert all(e[0].payload["status"] == "success" for e in got)
    assert emulator.count("POST", "/connect/token") - tokens_before == 1
    assert ASYNC_SESSIONS.sessions() == [], "closed when the last wait ended"
    peers = {c.peer for c in emulator.calls if c.method == "GET" and "/realitydataanalysis/jobs" in c.path}
    assert len(peers) <= POOL_SIZE, f"one pool of at most {POOL_SIZE} connections, saw {len(peers)}"


async def test_waits_due_within_one_tick_wake_together_on_the_grid() -> None:
    """Polls are spread over the interval, yet those due within one POLL_TICK go out in one wake of the loop."""
    loop = asyncio.get_running_loop()
    asked = [0.2 + i * 0.0013 for i in range(60)]  # 60 waits due over ~78 ms: a few ticks, not 60 wakes
    started = loop.time()
    woke_at = await asyncio.gather(*(sleep_on_tick(seconds) for seconds in asked))
    for seconds, when in zip(asked, woke_at, strict=True):
        assert round(when / POLL_TICK, 6).is_integer()  # on the grid
        assert abs(when - (started + seconds)) <= POLL_TICK / 2 + 0.01  # the nearest point, so the mean holds
    assert len(set(woke_at)) <= 3


async def test_a_sleep_on_the_tick_never_wakes_at_once() -> None:
    loop = asyncio.get_running_loop()
    before = loop.time()
    when = await sleep_on_tick(0)
    assert when > before
    assert loop.time() >= when


async def test_a_killed_wait_cancels_on_the_session_it_held_and_cleanup_gives_it_back(
    emulator: VendorEmulator, triggerer: Triggerer
) -> None:
    """As the triggerer does it on a user's kill: cancel the wait, call on_kill, then cleanup(). The cancel goes
    out on the session (pool and token) the wait held, not a new one; cleanup(), which Airflow calls on every
    exit, gives it back."""
    emulator.set_next_scenario("itwin", Scenario(steps=100))
    job_id = submit("itwin")
    trig = trigger("itwin", job_id, poll_policy=PollPolicy.fixed(0.05).to_dict())
    task = asyncio.create_task(events(trig))
    for _ in range(500):  # until the trigger is polling (bounded: 10 s)
        await asyncio.sleep(0.02)
        if emulator.count("GET", f"/jobs/{job_id}/progress") >= 2:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    held = ASYNC_SESSIONS.sessions()
    assert len(held) == 1, "the cancelled wait still holds its session until cleanup()"
    trig.task_instance = triggerer.task_instance("failed")  # a user marked it failed
    await trig.on_kill()
    cancels = [c for c in emulator.calls if c.method == "PATCH" and c.path.endswith(f"/jobs/{job_id}")]
    assert len(cancels) == 2, "the submit, then the cancel"
    assert ASYNC_SESSIONS.sessions() == held, "on_kill opened a session of its own"
    await trig.cleanup()
    assert ASYNC_SESSIONS.sessions() == []
