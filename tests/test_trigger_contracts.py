"""JobProgressTrigger's promises to Airflow: one event for anything, deadlines kept, polls spread, kills bounded."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from airflow_provider_jobprogress.core import PollPolicy, RequestRetry
from airflow_provider_jobprogress.core.model import JobProgress
from airflow_provider_jobprogress.core.poller import outlast_cancels
from airflow_provider_jobprogress.hooks.olconnect import OLConnectHook
from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from airflow_provider_jobprogress.triggers import job_progress
from airflow_provider_jobprogress.triggers.job_progress import JobProgressTrigger
from tests import triggerer_comms
from tests.test_trigger import close_shared_sessions, events, submit, trigger
from tests.triggerer_comms import Triggerer

triggerer = triggerer_comms.triggerer  # the fixture, used by name below

__all__ = ["close_shared_sessions"]  # the autouse fixture, shared with test_trigger


class ExplodingHook(OLConnectHook):
    """A hook whose progress read fails with an error no parser should ever let out."""

    async def aget_progress(self, job_id: str) -> JobProgress:
        raise RuntimeError("something no one planned for")


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """A TCP server that accepts connections and never answers: a vendor that hangs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()


def first_poll_times(emulator: VendorEmulator, job_ids: list[str]) -> list[float]:
    firsts: dict[str, float] = {}
    for call in emulator.calls:
        for job_id in job_ids:
            if job_id in call.path and call.method == "GET" and job_id not in firsts:
                firsts[job_id] = call.ts
    return sorted(firsts.values())


async def test_first_poll_waits_until_first_poll_at(emulator: VendorEmulator) -> None:
    """After a worker deferral the task has just read the job: the trigger's first poll comes later."""
    emulator.set_next_scenario("olconnect", Scenario(steps=1))
    job_id = submit("olconnect")
    started = time.time()
    got = await events(trigger("olconnect", job_id, first_poll_at=started + 1.0))
    assert [e.payload["status"] for e in got] == ["success"]
    polls = [c.ts for c in emulator.calls if f"/getProgress/{job_id}" in c.path]
    assert polls, "the trigger polled"
    assert min(polls) >= started + 1.0


async def test_waits_started_together_spread_their_polls(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No lockstep: a hundred waits started at once, each reading its own job, poll at different moments within
    their interval. (With listings on, one listing per cycle answers them all: test_poller.py.)"""
    conn = json.loads(os.environ["AIRFLOW_CONN_OLCONNECT_DEFAULT"])
    conn["extra"] = {**conn["extra"], "list_polling": False}
    monkeypatch.setenv("AIRFLOW_CONN_OLCONNECT_DEFAULT", json.dumps(conn))
    emulator.set_default_scenario("olconnect", Scenario(steps=1))
    job_ids = [submit("olconnect") for _ in range(100)]
    interval = PollPolicy.fixed(2.0).to_dict()
    started = time.time()
    await asyncio.gather(*(events(trigger("olconnect", j, poll_policy=interval)) for j in job_ids))
    firsts = first_poll_times(emulator, job_ids)
    assert len(firsts) == 100
    # Lockstep would put all 100 within a few ms. Spread uniformly over 2 s they span ~1.9 s; on a loaded
    # machine a busy loop holds the earliest back (seen: 0.93 s), hence half the interval, not more.
    assert firsts[-1] - firsts[0] >= 0.5, "first polls spread over the interval"
    assert all(t <= started + 2.0 + 1.0 for t in firsts), "no first poll later than one interval (plus slack)"
    # Uniform, the busiest 0.2 s holds ~20; a loaded machine's stalled loop bunches what was due meanwhile
    # (CI saw 41). Lockstep puts all 100 in one 0.2 s and leaves the other windows of the interval empty.
    busiest = max(sum(1 for t in firsts if start <= t < start + 0.2) for start in firsts)
    assert busiest <= 60, f"{busiest} of 100 first polls within 0.2 s: a burst"
    windows = {int((t - firsts[0]) / 0.2) for t in firsts}
    assert len(windows) >= 5, f"first polls in {len(windows)} windows of 0.2 s only"


async def test_deadline_is_kept_while_a_poll_is_in_retries(emulator: VendorEmulator) -> None:
    """A vendor answering 503 keeps one poll in its backoff for seconds; the deadline still ends the wait."""
    emulator.set_next_scenario("olconnect", Scenario(flaky=1000, steps=1))
    job_id = submit("olconnect")
    slow_retries = RequestRetry(initial_delay=5, max_delay=5, jitter=0, attempts=5).to_dict()
    deadline = time.time() + 0.5
    got = await events(trigger("olconnect", job_id, request_retry=slow_retries, deadline=deadline))
    ended = time.time()
    assert [e.payload["status"] for e in got] == ["timeout"]
    assert ended - deadline < 2.0, f"timeout event {ended - deadline:.1f} s after the deadline"


async def test_an_unexpected_exception_still_gives_exactly_one_error_event(emulator: VendorEmulator) -> None:
    trig = trigger("olconnect", "op-1")
    trig.hook_class_path = f"{__name__}.ExplodingHook"
    got = await events(trig)
    assert len(got) == 1
    payload = got[0].payload
    assert payload["status"] == "error"
    assert payload["error"] == "RuntimeError"
    assert "op-1" in payload["message"]
    assert "something no one planned for" in payload["message"]


async def test_a_missing_connection_gives_one_error_event_naming_it(emulator: VendorEmulator) -> None:
    got = await events(trigger("olconnect", "op-1", conn_id="no_such_connection"))
    assert len(got) == 1
    assert got[0].payload["status"] == "error"
    assert "no_such_connection" in got[0].payload["message"]


async def test_generic_trigger_with_a_missing_connection_gives_one_error_event(emulator: VendorEmulator) -> None:
    got = await events(trigger("olconnect", "op-1", conn_id="no_such_connection", hook_class_path=""))
    assert [e.payload["status"] for e in got] == ["error"]
    assert "no_such_connection" in got[0].payload["message"]


async def test_on_kill_is_bounded_when_the_vendor_hangs(
    emulator: VendorEmulator, silent_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch, triggerer: Triggerer
) -> None:
    """on_kill has Airflow's [triggerer] on_kill_timeout (30 s); ours ends first, whatever the vendor does."""
    host, port = silent_server
    monkeypatch.setenv(
        "AIRFLOW_CONN_HANGING",
        f'{{"conn_type": "olconnect", "host": "{host}", "port": {port}, "schema": "http"}}',
    )
    monkeypatch.setattr(job_progress, "ON_KILL_BUDGET", 1.5)
    trig = trigger("olconnect", "op-1", conn_id="hanging")
    trig.task_instance = triggerer.task_instance("failed")  # a user's kill: the cancel is tried
    started = time.monotonic()
    await trig.on_kill()
    assert time.monotonic() - started < 3.0


async def test_on_kill_is_bounded_when_airflow_does_not_answer(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch, triggerer: Triggerer
) -> None:
    """Whether the task was killed is asked of Airflow first: an answer that does not come ends on_kill within
    its budget too, the job left running (it could be one another triggerer waits on)."""
    monkeypatch.setattr(job_progress, "ON_KILL_BUDGET", 1.5)
    emulator.set_next_scenario("olconnect", Scenario(steps=100))
    job_id = submit("olconnect")
    trig = trigger("olconnect", job_id)
    trig.task_instance = triggerer.task_instance("failed")
    triggerer.comms.hang.set()
    started = time.monotonic()
    try:
        await trig.on_kill()
    finally:
        triggerer.comms.released.set()
    assert time.monotonic() - started < 3.0
    assert emulator.count("POST", f"/cancel/{job_id}") == 0


async def test_on_kill_waits_for_a_slow_answer_while_the_cancel_still_fits(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch, triggerer: Triggerer
) -> None:
    """On a loaded deployment Airflow answers "was the task killed?" slowly (ten kills at once queue their
    questions in the triggerer; the API server is busy): the question may take what the budget has beyond the
    cancel's share, not a fixed third of it. In a 300-job topology at load 21, ten user kills all left their jobs
    running, each having given up on Airflow's answer."""
    monkeypatch.setattr(job_progress, "ON_KILL_BUDGET", 9.0)
    emulator.set_next_scenario("olconnect", Scenario(steps=100))
    job_id = submit("olconnect")
    trig = trigger("olconnect", job_id)
    trig.task_instance = triggerer.task_instance("failed")
    # past a third of the budget (3 s: the old share), 2 s inside what the cancel's share leaves (6 s)
    triggerer.comms.delay = 4.0
    await trig.on_kill()
    assert emulator.count("POST", f"/cancel/{job_id}") == 1


#: Airflow's cancel message for a user's kill (``_USER_ACTION_CANCEL_MSG``, airflow/jobs/triggerer_job_runner.py)
USER_ACTION = "__airflow_user_action__"


async def run_like_airflow(
    trig: JobProgressTrigger, resend_every: float, kill_when: Callable[[], Awaitable[object]] | None = None
) -> None:
    """A trigger run as Airflow 3.3.2's triggerer runs it when a user kills its task (``TriggerRunner.run_trigger``
    and ``arun`` in airflow/jobs/triggerer_job_runner.py): the task is cancelled with ``USER_ACTION``; on that
    message ``on_kill`` runs under ``wait_for(on_kill_timeout)``, a CancelledError of it swallowed; ``cleanup`` in
    ``finally``. The supervisor keeps the trigger in ``cancelling_triggers`` until the runner reports it finished, and
    every sync (about a second) hands it to ``cancel_triggers`` again, which cancels the task again."""

    async def run_trigger() -> None:
        try:
            async for _ in trig.run():
                pass
        except asyncio.CancelledError as exc:
            if exc.args and exc.args[0] == USER_ACTION:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(trig.on_kill(), timeout=30)
            raise
        finally:
            with contextlib.suppress(Exception):
                await trig.cleanup()

    task = asyncio.ensure_future(run_trigger())
    await (kill_when() if kill_when is not None else asyncio.sleep(1.0))  # by default: the wait under way
    while not task.done():
        task.cancel(USER_ACTION)
        await asyncio.wait({task}, timeout=resend_every)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_kill_cancels_the_job_though_airflow_sends_the_cancel_again_every_second(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch, triggerer: Triggerer
) -> None:
    """Airflow 3.3.2 sends a killed trigger's cancel again at every sync until the trigger ends, and each one
    cancels what ``on_kill`` awaits: before, a kill whose first step (Airflow's answer to "was the task killed?")
    took more than a second was cut off and left its job running (likely the topology's third run, at load 21: ten
    user kills, ten jobs left). The kill's work, and then the hooks' release, now outlast the repeated cancels,
    within the kill's own budget."""
    monkeypatch.setattr(job_progress, "ON_KILL_BUDGET", 9.0)
    emulator.set_next_scenario("olconnect", Scenario(steps=100))
    job_id = submit("olconnect")
    trig = trigger("olconnect", job_id)
    trig.task_instance = triggerer.task_instance("failed")
    triggerer.comms.delay = 2.0  # the answer comes after two re-sent cancels
    started = time.monotonic()
    await run_like_airflow(trig, resend_every=0.5)
    assert emulator.count("POST", f"/cancel/{job_id}") == 1
    assert time.monotonic() - started < 1.0 + 9.0 + 2.0, "the wait's second, the kill's budget, and slack"
    assert trig._killing is not None
    assert trig._killing.done()
    assert trig._hooks == [], "the hooks were given back"


class SlowRelease:
    """The hooks' ``aclose`` made slow (as the last share's session close, waiting on its connections), noting
    which hooks began giving their share back and which finished."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.giving_back: list[OLConnectHook] = []
        self.given_back: list[OLConnectHook] = []
        self._waiting: dict[int, asyncio.Event] = {}
        release = OLConnectHook.aclose

        async def slow_release(hook: OLConnectHook) -> None:
            self.giving_back.append(hook)
            for n, event in self._waiting.items():
                if len(self.giving_back) >= n:
                    event.set()
            await asyncio.sleep(0.3)  # re-sent cancels land meanwhile
            await release(hook)
            self.given_back.append(hook)

        monkeypatch.setattr(OLConnectHook, "aclose", slow_release)

    async def began(self, n: int) -> None:
        """Until ``n`` hooks have begun giving their share back."""
        event = self._waiting.setdefault(n, asyncio.Event())
        if len(self.giving_back) >= n:
            event.set()
        await event.wait()


async def test_a_kill_with_nothing_to_cancel_still_gives_its_session_back_through_re_sent_cancels(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch, triggerer: Triggerer
) -> None:
    """A killed wait with no kill work (it does not own its job, or its job has ended) still gives its hooks'
    sessions back in ``cleanup`` while Airflow sends the kill's cancel again every second: a release cut short there
    leaves the shared session held (the last share's close cut off)."""
    emulator.set_next_scenario("olconnect", Scenario(steps=100))
    job_id = submit("olconnect")
    trig = trigger("olconnect", job_id, cancel_on_kill=False)  # as for a job already ended: no kill work
    trig.task_instance = triggerer.task_instance("failed")
    slow = SlowRelease(monkeypatch)
    giving_back, given_back = slow.giving_back, slow.given_back
    await run_like_airflow(trig, resend_every=0.05)
    # two hooks: the wait's own, and its connection's poller's (given back when the poller closes)
    assert len(giving_back) == 2
    assert given_back == giving_back, "every hook that began giving its session back finished"
    assert trig._hooks == []
    assert emulator.count("POST", f"/cancel/{job_id}") == 0


async def test_a_kill_just_after_the_event_still_gives_the_session_back(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch, triggerer: Triggerer
) -> None:
    """The job ended and the wait gives its hooks back before its event; a user's kill lands just then, and
    Airflow sends it again every second. That release, cut short, had already handed the hooks over, so
    ``cleanup`` found none to give back: the shared session stayed held."""
    emulator.set_next_scenario("olconnect", Scenario(steps=1))
    job_id = submit("olconnect")
    trig = trigger("olconnect", job_id, cancel_on_kill=False)
    trig.task_instance = triggerer.task_instance("failed")
    slow = SlowRelease(monkeypatch)

    # the poller's hook goes back first (inside the wait), then the wait's own in run(), before the event
    await run_like_airflow(trig, resend_every=0.05, kill_when=lambda: slow.began(2))
    assert len(slow.giving_back) == 2
    assert slow.given_back == slow.giving_back, "every hook that began giving its session back finished"
    assert trig._hooks == []


@pytest.mark.parametrize("ending", ["returns", "raises", "is cancelled"])
async def test_outlasting_cancels_returns_however_the_work_ends(ending: str, caplog: pytest.LogCaptureFixture) -> None:
    """``cleanup`` awaits the kill's work and then the hooks' release in plain sequence, on the promise that
    ``outlast_cancels`` raises nothing: not the cancels sent meanwhile (three here), not the work's exception,
    not the work's own cancel (a loop shutting down cancels it), and leaves no exception unretrieved."""
    release = asyncio.Event()

    async def work() -> None:
        await release.wait()
        if ending == "raises":
            raise RuntimeError("the kill's work failed")
        if ending == "is cancelled":
            raise asyncio.CancelledError

    task = asyncio.get_running_loop().create_task(work())
    waiter = asyncio.get_running_loop().create_task(outlast_cancels(task))
    for sent in range(3):
        await asyncio.sleep(0.01)
        waiter.cancel(f"cancel {sent}")
    release.set()
    await asyncio.wait({waiter}, timeout=5.0)
    assert waiter.done()
    assert waiter.exception() is None, "returned: neither a cancel nor the work's end came through"
    first = waiter.result()
    assert isinstance(first, asyncio.CancelledError)
    assert first.args == ("cancel 0",), "the first cancel, for the caller to raise or not"
    assert waiter.cancelling() == 3, "the cancels stay counted for a caller already unwinding one"
    del task
    gc.collect()
    assert "never retrieved" not in caplog.text


async def test_on_kill_ends_within_the_deployments_on_kill_timeout(
    emulator: VendorEmulator, silent_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch, triggerer: Triggerer
) -> None:
    """Airflow 3.3 cuts on_kill off after ``[triggerer] on_kill_timeout``, which a deployment may set below the
    30 s default: the cancel must end first, or it is cut off mid-request and nobody hears why."""
    host, port = silent_server
    monkeypatch.setenv(
        "AIRFLOW_CONN_HANGING",
        f'{{"conn_type": "olconnect", "host": "{host}", "port": {port}, "schema": "http"}}',
    )
    monkeypatch.setenv("AIRFLOW__TRIGGERER__ON_KILL_TIMEOUT", "4")
    trig = trigger("olconnect", "op-1", conn_id="hanging")
    trig.task_instance = triggerer.task_instance("failed")  # a user's kill: the cancel is tried
    started = time.monotonic()
    await asyncio.wait_for(trig.on_kill(), timeout=15)  # what Airflow does, with room to see how long it took
    assert time.monotonic() - started < 4.0


async def test_rate_limit_pause_longer_than_the_deadline_ends_at_the_deadline(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(rate_limit=5, retry_after=600, steps=1))
    job_id = submit("olconnect")
    deadline = time.time() + 0.5
    got = await events(trigger("olconnect", job_id, deadline=deadline))
    assert [e.payload["status"] for e in got] == ["timeout"]
    assert time.time() - deadline < 2.0


def _kwargs_of(trig: JobProgressTrigger) -> dict[str, Any]:
    return trig.serialize()[1]


def test_first_poll_at_travels_in_the_serialized_kwargs() -> None:
    trig = trigger("olconnect", "op-1", first_poll_at=1_900_000_000.0)
    assert _kwargs_of(JobProgressTrigger(**_kwargs_of(trig)))["first_poll_at"] == 1_900_000_000.0


# -- the last look at the deadline ------------------------------------------------------------------
@pytest.mark.parametrize("cancel_on_timeout", [False, True])
async def test_a_job_that_ended_before_the_deadline_is_no_timeout(
    emulator: VendorEmulator, cancel_on_timeout: bool
) -> None:
    """The deadline falls inside the poll interval (iTwin's is 120 s): the wait reads the job once more at the
    deadline, and a job that ended meanwhile ends as what it is, never as a timeout or with a cancel."""
    emulator.set_next_scenario("olconnect", Scenario(steps=10_000))  # ends only when told to
    job_id = submit("olconnect")
    now = time.time()
    trig = trigger(
        "olconnect",
        job_id,
        poll_policy=PollPolicy.fixed(60).to_dict(),
        first_poll_at=now + 0.2,  # one read while it runs, the next one due long after the deadline
        deadline=now + 3.0,
        cancel_on_timeout=cancel_on_timeout,
    )
    waiting = asyncio.create_task(events(trig))
    for _ in range(250):  # until the first read saw it running (bounded: 5 s)
        if emulator.count("GET", f"/getProgress/{job_id}") >= 1:
            break
        await asyncio.sleep(0.02)
    emulator.finish_jobs("olconnect", [job_id])  # it ends between the reads
    got = await waiting
    assert [e.payload["status"] for e in got] == ["success"]
    assert emulator.count("GET", f"/getProgress/{job_id}") == 2, "one read while running, one at the deadline"
    assert emulator.count("POST", f"/cancel/{job_id}") == 0


async def test_a_job_still_running_at_the_last_look_times_out_and_is_cancelled(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(steps=10_000))
    job_id = submit("olconnect")
    now = time.time()
    trig = trigger(
        "olconnect",
        job_id,
        poll_policy=PollPolicy.fixed(60).to_dict(),
        first_poll_at=now + 1.0,  # a wait started after its first_poll_at polls at random in its 60 s interval
        deadline=now + 2.5,
        cancel_on_timeout=True,
    )
    got = await events(trig)
    assert [e.payload["status"] for e in got] == ["timeout"]
    assert "remote job cancelled" in got[0].payload["message"]
    assert emulator.count("GET", f"/getProgress/{job_id}") == 2
    assert emulator.count("POST", f"/cancel/{job_id}") == 1
