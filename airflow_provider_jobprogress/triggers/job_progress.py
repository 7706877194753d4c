"""JobProgressTrigger: waits on any vendor's job in the triggerer, knowing nothing about vendors."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.common.compat.connection import get_async_connection
from airflow.providers.common.compat.sdk import conf
from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from airflow_provider_jobprogress.core.budget import BudgetCounts, RequestBudget, urgent
from airflow_provider_jobprogress.core.errors import (
    JobProgressError,
    OperationNotSupportedError,
    RateLimitedError,
    VendorUnavailableError,
    printable,
)
from airflow_provider_jobprogress.core.model import JobProgress, JobState, short
from airflow_provider_jobprogress.core.policies import PollPolicy, RequestRetry, jittered
from airflow_provider_jobprogress.core.poller import POLLERS, JobPoller, Watch, outlast_cancels
from airflow_provider_jobprogress.core.protocol import check_job_id
from airflow_provider_jobprogress.hooks import HOOK_CLASS_BY_CONN_TYPE, load_hook_class

CLASSPATH = "airflow_provider_jobprogress.triggers.job_progress.JobProgressTrigger"
#: the whole of an ``on_kill`` (connection, one progress read, the cancel) and of a cancel on timeout fits in
#: this many seconds; an ``on_kill`` also within the deployment's ``[triggerer] on_kill_timeout`` (``on_kill_budget``)
ON_KILL_BUDGET = 25.0
#: the read at the deadline (a wait that slept to its deadline reads the job once more before calling it a
#: timeout) is bounded by this many seconds of its own: the deadline itself has passed
LAST_LOOK_BUDGET = 10.0
#: waits wake on a grid of this many seconds (the loop's clock): polls due within one tick go out together.
#: Measured at 500 waits polling every second (benchmarks/README.md): spread one by one, each poll woke the
#: idle loop (and the vendor's server) on its own and cost ~0.48 ms CPU; on a 50 ms grid ~0.32 ms, with
#: the polls still spread over the interval (25 per tick there, where lockstep sent all 500 at once)
POLL_TICK = 0.05

STATUS_BY_STATE = {
    JobState.SUCCEEDED: "success",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
}


def _event(status: str, progress: JobProgress | None, message: str, error: str | None) -> TriggerEvent:
    """What the task resumes with, and all of it: small facts, never a vendor's body.

    Airflow stores the event in its database and logs it whole ("Trigger fired event"), so it carries the
    status, the last reading's facts (``JobProgress.to_dict``), a message of at most ``core.model.MAX_MESSAGE``
    characters and the typed error's class name. Whatever else the task needs, it asks the vendor for.
    """
    return TriggerEvent(
        {
            "status": status,
            "progress": None if progress is None else progress.to_dict(),
            "message": short(message),
            "error": error,
        }
    )


def on_kill_budget() -> float:
    """Seconds an ``on_kill`` may take: Airflow 3.3 cuts it off after ``[triggerer] on_kill_timeout`` (30 s unless
    the deployment sets it), so ours ends first, with room to log why; never more than ``ON_KILL_BUDGET``."""
    airflows = float(conf.getfloat("triggerer", "on_kill_timeout", fallback=30.0))
    return min(ON_KILL_BUDGET, max(airflows - 5.0, airflows / 2))


class _DeadlinePassed(Exception):
    """The wait's deadline passed while a poll was still under way (in the vendor's retries or pauses)."""


class JobProgressTrigger(BaseTrigger):
    """Poll a vendor job until it is terminal, the deadline passes, or an error retries cannot cure.

    Everything it needs is in its kwargs (plain JSON), so a triggerer restart re-creates it and the wait
    goes on: no job is submitted or cancelled by a restart. It yields exactly one event, whatever happens
    (an exception nobody planned for included), then returns:

    ``{"status": "success"|"failed"|"cancelled"|"timeout"|"error", "progress": {...}|None,
    "message": str, "error": error class name|None}``

    With ``finish_in_triggerer`` a success ends the task here (``TaskSuccessEvent`` with the progress as
    XCom ``return_value``, stored by Airflow as a JSON string); every other outcome resumes the task on a
    worker so failure semantics (no retry, ``soft_fail``) stay the sensor's.

    When polls happen: the first at ``first_poll_at`` when the task has just read the job on a worker
    (one interval later, and never before Airflow has settled the deferral: see ``waiting.py``), else at a
    random moment within the first interval; then every interval of the poll policy, each stretched or
    shrunk by up to ``core.policies.POLL_JITTER`` so that waits started together do not poll together, and
    rounded to the nearest point of a ``POLL_TICK`` grid, so the loop wakes once for the polls due then.

    The deadline: a wait that sleeps to it (it fell inside the interval) reads the job once more there, bounded
    by ``LAST_LOOK_BUDGET``; a job found finished then ends as what it is, so a job that ended since the last
    poll is never a timeout, nor cancelled. A poll still in its retries or pauses when the deadline passes was
    that look: it is abandoned at the deadline.

    :param hook_class_path: import path of a ``JobProgressHook`` subclass ("" = from the connection's type)
    :param conn_id: the Airflow connection to reach the vendor
    :param job_id: the vendor's job id
    :param poll_policy: ``PollPolicy.to_dict()``
    :param request_retry: ``RequestRetry.to_dict()`` (``retry_policy``, its 0.1 name, is still accepted)
    :param deadline: wall-clock epoch seconds after which the wait ends with a ``timeout`` event
    :param cancel_on_kill: cancel the remote job when a user kills the task (Airflow 3.3+ ``on_kill``)
    :param cancel_on_timeout: cancel the remote job when the deadline passes
    :param first_poll_at: wall-clock epoch seconds of the first poll (None: within the first interval)
    :param last_seen: the reading the task logged before deferring (``JobProgress.to_dict()``), so the trigger
        logs a reading only when it differs: each reading once, in the task's log or the trigger's
    """

    def __init__(
        self,
        *,
        hook_class_path: str,
        conn_id: str,
        job_id: str,
        poll_policy: dict[str, Any] | None = None,
        request_retry: dict[str, Any] | None = None,
        deadline: float | None = None,
        cancel_on_kill: bool = True,
        cancel_on_timeout: bool = False,
        finish_in_triggerer: bool = False,
        first_poll_at: float | None = None,
        retry_policy: dict[str, Any] | None = None,
        last_seen: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.hook_class_path = hook_class_path
        self.conn_id = conn_id
        self.job_id = job_id
        self.poll_policy = poll_policy
        # ``retry_policy``: the 0.1 name, so triggers serialized before an upgrade are re-created intact.
        self.request_retry = request_retry if request_retry is not None else retry_policy
        self.deadline = deadline
        self.cancel_on_kill = cancel_on_kill
        self.cancel_on_timeout = cancel_on_timeout
        self.finish_in_triggerer = finish_in_triggerer
        self.first_poll_at = first_poll_at
        self.last_seen = last_seen
        self._last: JobProgress | None = JobProgress.from_dict(last_seen) if last_seen else None
        self._hooks: list[Any] = []
        #: the kill's work (``_kill``, started by ``on_kill``), which ``cleanup`` waits for before giving back the
        #: hooks it uses
        self._killing: asyncio.Task[None] | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            CLASSPATH,
            {
                "hook_class_path": self.hook_class_path,
                "conn_id": self.conn_id,
                "job_id": self.job_id,
                "poll_policy": self.poll_policy,
                "request_retry": self.request_retry,
                "deadline": self.deadline,
                "cancel_on_kill": self.cancel_on_kill,
                "cancel_on_timeout": self.cancel_on_timeout,
                "finish_in_triggerer": self.finish_in_triggerer,
                "first_poll_at": self.first_poll_at,
                "last_seen": self.last_seen,
            },
        )

    async def _hook(self) -> Any:
        path = self.hook_class_path
        if not path:
            # The generic sensor started in the triggerer: the connection's type names the vendor.
            conn = await get_async_connection(self.conn_id)
            path = HOOK_CLASS_BY_CONN_TYPE.get(conn.conn_type or "", "")
            if not path:
                raise JobProgressError(
                    "jobprogress",
                    self.job_id,
                    f"connection {self.conn_id!r} has type "
                    f"{conn.conn_type!r}, not one of {sorted(HOOK_CLASS_BY_CONN_TYPE)}",
                )
        hook_class = load_hook_class(path)
        hook = hook_class(self.conn_id, request_retry=RequestRetry.from_value(self.request_retry))
        self._hooks.append(hook)
        return hook

    async def _release_hooks(self) -> None:
        """Give back the shared HTTP sessions this trigger's hooks hold (the last user closes one)."""
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            with contextlib.suppress(Exception):  # giving a session back must never cost the event
                await hook.aclose()

    async def cleanup(self) -> None:
        """Airflow calls this on every exit: after the event, on a triggerer shutdown, and after ``on_kill``
        when a user kills the task. What the wait (or ``on_kill``) holds goes back here, so a killed wait's
        cancel still goes out on the session, pool and token the wait held (a kill's work still under way is waited
        for first: on Python 3.11 Airflow's re-sent cancel ends its ``wait_for`` of ``on_kill`` early)."""
        # Airflow sends a kill's cancel again every second until the trigger has ended, whether or not the kill has
        # work (a wait that does not own its job has none): the kill's work, then the hooks' release, outlast them.
        if self._killing is not None:
            await outlast_cancels(self._killing)  # raises neither a cancel nor anything of the work
        await self._give_back()

    async def _give_back(self) -> asyncio.CancelledError | None:
        """Release the hooks in a task of its own that cancels of this one do not cut (a session's close cut short
        would leave it and the other hooks held); the first such cancel, for the caller to raise or not."""
        if not self._hooks:
            return None
        return await outlast_cancels(asyncio.get_running_loop().create_task(self._release_hooks()))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # Exactly one event, whatever happens: Airflow only says "exited without sending an event" otherwise.
        try:
            event = await self._wait()
        except Exception as exc:  # the one place where anything unplanned becomes an event
            event = self._error_event(exc)
        # The wait is over: give back what it held before the event too, since dag.test() runs a trigger only
        # to its first event and calls no cleanup() (cancelled, it is cleanup() that gives it back). A kill that
        # lands meanwhile waits for the release, then ends the trigger as it came (message and all).
        came = await self._give_back()
        if came is not None:
            raise came
        yield event

    async def _wait(self) -> TriggerEvent:
        hook = await self._hook()
        vendor, job = hook.vendor(), check_job_id(self.job_id, hook.vendor())
        watch = POLLERS.watch(_poller_key(hook), job, hook, lambda: _poller(hook))
        try:
            return await self._follow(hook, vendor, job, watch)
        finally:
            await POLLERS.unwatch(watch)

    async def _follow(self, hook: Any, vendor: str, job: str, watch: Watch) -> TriggerEvent:
        """Poll at the policy's pace (each reading through the connection's shared poller) until the end."""
        policy = PollPolicy.from_value(self.poll_policy, hook.default_poll_policy())
        retry = RequestRetry.from_value(self.request_retry)
        delay = self._first_delay(policy)
        polls_since_change = 1  # the first delay stood for the policy's first interval
        outage_since: float | None = None
        while True:
            if await self._sleep_or_deadline(delay, watch):
                last = await self._last_look(hook, job)
                if last is not None and last.is_terminal:
                    return self._terminal_event(last)
                return await self._timeout_event(hook, vendor, job)
            try:
                progress: JobProgress | None = await self._poll(watch)
                outage_since = None
            except _DeadlinePassed:
                return await self._timeout_event(hook, vendor, job)
            except RateLimitedError as exc:
                # The vendor's pause was longer than one call holds on; it is not a poll, just a pause.
                delay = exc.retry_after or jittered(policy.delay(polls_since_change))
                self.log.warning("%s; waiting %.0f s as asked", exc, delay)
                continue
            except VendorUnavailableError as exc:
                outage_since = outage_since or time.time()
                if time.time() - outage_since > retry.outage_tolerance:
                    return self._error_event(exc)
                self.log.warning("%s; still waiting (unreachable for %.0f s)", exc, time.time() - outage_since)
                progress = None
            if progress is not None:
                if progress.changed_from(self._last):
                    self.log.info("%s", progress.describe())
                    if policy.restart_on_change:
                        polls_since_change = 0
                self._last = progress
                if progress.is_terminal:
                    return self._terminal_event(progress)
            delay = jittered(policy.delay(polls_since_change))
            polls_since_change += 1

    def _first_delay(self, policy: PollPolicy) -> float:
        """Until ``first_poll_at``; without one (or past it, after a restart), a random point in one interval."""
        now = time.time()
        if self.first_poll_at is not None and self.first_poll_at > now:
            return self.first_poll_at - now
        return random.uniform(0, policy.delay(0))

    async def _poll(self, watch: Watch) -> JobProgress:
        """One progress reading, abandoned at the deadline however long its retries and pauses would take."""
        if self.deadline is None:
            return await watch.read()
        left = self.deadline - time.time()
        if left <= 0:
            raise _DeadlinePassed
        timeout = asyncio.timeout(left)
        try:
            async with timeout:
                return await watch.read()
        except TimeoutError:
            if timeout.expired():
                raise _DeadlinePassed from None
            raise

    async def _last_look(self, hook: Any, job: str) -> JobProgress | None:
        """The job read once more at the deadline (its own call: a listing may be a cycle old), within
        ``LAST_LOOK_BUDGET``; None when that read failed."""
        try:
            with urgent():  # bounded by seconds: ahead of the waits' queued polls
                async with asyncio.timeout(LAST_LOOK_BUDGET):
                    progress: JobProgress = await hook.aget_progress(job)
        except (JobProgressError, TimeoutError) as exc:
            self.log.warning("%s job %s: no reading at the deadline: %s", hook.vendor(), job, exc or "timed out")
            return None
        if progress.changed_from(self._last):
            self.log.info("%s", progress.describe())
        self._last = progress
        return progress

    async def _sleep_or_deadline(self, seconds: float, watch: Watch) -> bool:
        """Sleep ``seconds`` (less if the shared poller learns the job ended) but not past the deadline; True
        when the deadline has passed."""
        if self.deadline is not None:
            left = self.deadline - time.time()
            if left <= 0:
                return True
            if left <= seconds:
                await asyncio.sleep(left)  # the deadline is an instant of its own, not rounded to a tick
                return True
        await watch.sleep(seconds, POLL_TICK)
        return self.deadline is not None and time.time() >= self.deadline

    def _terminal_event(self, progress: JobProgress) -> TriggerEvent:
        status = STATUS_BY_STATE[progress.state]
        if status == "success" and self.finish_in_triggerer:
            return TaskSuccessEvent(xcoms={"return_value": progress.to_dict()})
        return _event(status, progress, progress.describe(), None)

    def _error_event(self, exc: Exception) -> TriggerEvent:
        if isinstance(exc, JobProgressError):
            exc = exc.for_job(str(self.job_id))  # settings are read before the job is named
            message = str(exc)
            self.log.error("%s", message)
        else:
            # Not one of ours: keep the traceback in the trigger log, and say plainly what happened.
            detail = short(str(exc)) or "(no message)"
            message = (
                f"job {printable(str(self.job_id))} on connection {self.conn_id!r}: {type(exc).__name__}: {detail}"
            )
            self.log.exception("waiting for %s failed unexpectedly", message)
        return _event("error", self._last, message, type(exc).__name__)

    async def _timeout_event(self, hook: Any, vendor: str, job: str) -> TriggerEvent:
        message = f"{vendor} job {job}: not finished before the deadline"
        if self._last is not None:
            message += f" (last seen {self._last.describe()})"
        if self.cancel_on_timeout:
            message += "; " + await self._cancel(hook, vendor, job, reason="deadline passed")
        self.log.error("%s", message)
        return _event("timeout", self._last, message, None)

    async def _cancel(self, hook: Any, vendor: str, job: str, *, reason: str) -> str:
        """Cancel this trigger's job (only this one), bounded in time; returns what happened."""
        try:
            await asyncio.wait_for(hook.acancel(job), timeout=ON_KILL_BUDGET)
        except OperationNotSupportedError as exc:
            return f"not cancelled: {exc.detail}"
        except (JobProgressError, TimeoutError) as exc:
            self.log.warning("%s job %s: cancel after %s failed: %s", vendor, job, reason, exc or "timed out")
            return f"cancel failed: {exc or 'timed out'}"
        self.log.warning("%s job %s: cancelled (%s)", vendor, job, reason)
        return "remote job cancelled"

    async def on_kill(self) -> None:
        """Airflow 3.3+ stopped the wait through its user-kill path: cancel the remote job if a user really killed
        the task and the job is still running.

        Airflow 3.3.2 takes that path for two things a trigger cannot tell apart by the cancel itself: a user
        marked the task failed or success, or cleared it; or this triggerer's heartbeat was late by more than
        ``[triggerer] triggerer_health_check_threshold`` (a loaded host, a runner that did not answer), another
        triggerer took its triggers over, and this one now drops its copy (apache/airflow#73454, open). So the
        task instance's state is asked first (``task_instance_state``): a task still deferred (another triggerer
        waits on the job) or up for retry (the retry re-attaches to it) keeps its job; any other state is a
        user's kill (a Clear shows as scheduled, queued or running by the time this runs: the scheduler is
        quicker than the triggerer's cleanup) and the job is cancelled unless it has ended (as it has when
        another triggerer took the wait over and saw its end). Never called on a triggerer restart or shutdown.
        The whole of it (the state, connection, a progress read, the cancel) is bounded by ``on_kill_budget()``.

        Airflow 3.3.2 sends the kill's cancel again at every sync of its triggerer (about a second: the supervisor
        keeps the trigger in ``cancelling_triggers`` until it has ended), and each one cancels what ``on_kill``
        awaits: a kill whose question took more than a second was cut off and left its job running. So the work
        runs in a task of its own, which ``on_kill`` (and ``cleanup``) wait for through those cancels: Airflow's
        ``on_kill_timeout`` no longer cuts it either, and ``on_kill_budget()``, always below that timeout, is its
        only bound.
        """
        if not self.cancel_on_kill or (self._last is not None and self._last.is_terminal):
            return
        if self._killing is None:
            job = printable(str(self.job_id))
            self._killing = asyncio.get_running_loop().create_task(self._kill(), name=f"jobprogress kill {job}")
        await outlast_cancels(self._killing)

    async def _kill(self) -> None:
        """``on_kill``'s work, within ``on_kill_budget()``; it logs every way it ends but success and raises none."""
        job = printable(str(self.job_id))
        try:
            seconds = on_kill_budget()
            async with asyncio.timeout(seconds):
                await self._cancel_if_killed(seconds)
        except TimeoutError:
            self.log.warning("job %s: cancel on kill gave up after %.0f s", job, seconds)
        except asyncio.CancelledError:  # only the event loop's end (a triggerer shutting down) cancels this task
            self.log.warning("job %s: cancel on kill cut short by the triggerer's shutdown; the job may still run", job)
            raise
        except Exception as exc:  # on_kill must never raise into Airflow's cleanup
            self.log.warning("job %s: cancel on kill failed: %s: %s", job, type(exc).__name__, exc)

    async def _cancel_if_killed(self, seconds: float) -> None:
        """Within ``seconds``: ask Airflow whether the task was killed, then read the job and cancel it. The question
        may take all but the cancel's share (``seconds / 3``): on a loaded deployment its answer is the slow part
        (ten kills at once queue their questions in the triggerer, behind a busy API server), and without it
        nothing is cancelled. The progress read (is the job still running?) goes only when it fits beside that
        share; without it the cancel goes anyway (cancelling an ended job is harmless, leaving one running not)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        reserve = seconds / 3  # the cancel's share: its call, a token refresh, the log line
        # the wait's own hook where it has one (its connection read, its session and token): a new one would read
        # the connection again, through the same busy comms as the question
        hook = self._hooks[0] if self._hooks else await self._hook()
        vendor, job = hook.vendor(), check_job_id(self.job_id, hook.vendor())
        try:
            async with asyncio.timeout_at(deadline - reserve):
                state = await task_instance_state(self.task_instance)
        except Exception as exc:  # the comms' errors, a timeout, no task instance to ask about
            # Cancelling a job that another triggerer still waits on destroys its work and fails the task, past
            # undoing; leaving a job running that a user no longer wants costs its run, and it can still be
            # cancelled at the vendor. Unknown, the job is left, and said so.
            self.log.warning(
                "%s job %s: not cancelled: Airflow could not say whether the task was killed or its wait moved to "
                "another triggerer (%s: %s); if the task was killed, cancel it at the vendor",
                vendor,
                job,
                type(exc).__name__,
                str(exc) or "no answer in time",
            )
            return
        if state in WAIT_GOES_ON_STATES:
            # A warning: this triggerer was late enough to be taken for dead (see the README, Running in production).
            self.log.warning(
                "%s job %s: not cancelled: the task is %s, not killed; another triggerer took its wait over (Airflow "
                "stops the copy left here as if the task were killed)",
                vendor,
                job,
                state,
            )
            return
        current: JobProgress | None = None  # unknown: cancelling a job that ended is harmless, leaving one running not
        spare = deadline - reserve - loop.time()
        if spare > 0:
            try:
                with urgent():  # bounded: ahead of the waits' queued polls
                    current = await asyncio.wait_for(hook.aget_progress(job), timeout=min(spare, reserve))
            except (JobProgressError, TimeoutError):
                pass
        if current is not None and current.is_terminal:
            return
        await self._cancel(hook, vendor, job, reason="the task was killed")


#: the task instance states in which a wait Airflow stopped through its user-kill path still has a use for the
#: job: still deferred (another triggerer took the wait over), or up for retry (the wait ended on a worker with an
#: error, and the retry re-attaches to the job). Any other state is a user's kill: marked failed, success or
#: skipped, a deleted DAG run (``TASK_INSTANCE_GONE``), or a Clear (no state, then scheduled, queued, running).
TASK_INSTANCE_GONE = "gone"
WAIT_GOES_ON_STATES = frozenset({"deferred", "up_for_retry"})


async def task_instance_state(ti: Any) -> str | None:
    """The state of the trigger's task instance in Airflow's database now (``TASK_INSTANCE_GONE``: no such row).

    Asked as a trigger may ask in Airflow 3: ``RuntimeTaskInstance.get_task_states``, which the triggerer
    answers through its supervisor (``GetTaskStates``), in an asgiref thread as Airflow's own triggers call it.
    Raises when there is no task instance to ask about or Airflow cannot answer.
    """
    if ti is None:
        raise LookupError("the trigger has no task instance")
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
    from asgiref.sync import sync_to_async

    states = await sync_to_async(RuntimeTaskInstance.get_task_states)(
        dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id], map_index=ti.map_index
    )
    # one task instance at most: keyed by its task id, or "<task id>_<map index>" when mapped
    found = list((states.get(ti.run_id) or {}).values())
    if not found:
        return TASK_INSTANCE_GONE
    state = found[0]
    return None if state is None else str(getattr(state, "value", state))  # the enum's value, in case one comes


def _poller_key(hook: Any) -> tuple[type, str]:
    """Waits share a poller when they use the same connection with the same hook class."""
    return (type(hook), hook.conn_id)


def _poller(hook: Any) -> JobPoller:
    """A connection's poller, with a hook of its own for the listings (the waits' hooks read their own jobs)."""
    return JobPoller(
        hook.conn_id,
        type(hook)(hook.conn_id),
        lists=True,
        list_interval=hook.api_class.list_interval,
        report=report_metrics,
    )


def report_metrics(budget: RequestBudget, counts: BudgetCounts, waits: int) -> None:
    """A connection's last minute as Airflow metrics (StatsD or OpenTelemetry, as the deployment sends them):
    counters ``jobprogress.<conn id>.calls``, ``.rate_limited``, ``.pauses``, ``.optional_skipped`` and gauges
    ``.waits``, ``.budget_per_minute``, ``.paused_seconds``."""
    from airflow.providers.common.compat.sdk import Stats

    prefix = "jobprogress." + re.sub(r"[^A-Za-z0-9_-]", "_", budget.name)
    for name, value in (
        ("calls", counts.calls),
        ("rate_limited", counts.rate_limited),
        ("pauses", counts.pauses),
        ("optional_skipped", counts.optional_skipped),
    ):
        if value:
            Stats.incr(f"{prefix}.{name}", value)
    Stats.gauge(f"{prefix}.waits", waits)
    Stats.gauge(f"{prefix}.budget_per_minute", budget.per_minute)
    Stats.gauge(f"{prefix}.paused_seconds", counts.paused_seconds)


async def sleep_on_tick(seconds: float) -> float:
    """Sleep about ``seconds``: until the nearest point of the ``POLL_TICK`` grid (never now). Returns that point
    (``loop.time()``). Rounding to the nearest keeps the mean interval, so waits keep their polls per hour."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    when = round((now + seconds) / POLL_TICK) * POLL_TICK
    if when <= now:
        when += POLL_TICK
    woken = loop.create_future()
    handle = loop.call_at(when, _wake, woken)
    try:
        await woken
    finally:
        handle.cancel()
    return when


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():  # cancelled meanwhile: the trigger is going away
        woken.set_result(None)
