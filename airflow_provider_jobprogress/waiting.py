"""The waiting machinery shared by sensors and submit operators: one way to wait, defer and conclude."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import timedelta
from functools import cached_property
from typing import Any, ClassVar, NoReturn

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseHook,
    conf,
)

from airflow_provider_jobprogress.core.errors import (
    DeadlineExceededError,
    JobCancelledError,
    JobFailedError,
    JobProgressError,
    OperationNotSupportedError,
    error_from_event,
)
from airflow_provider_jobprogress.core.model import JobProgress, JobState
from airflow_provider_jobprogress.core.policies import PollPolicy, RequestRetry, jittered
from airflow_provider_jobprogress.core.protocol import check_job_id
from airflow_provider_jobprogress.hooks import HOOK_CLASS_BY_CONN_TYPE, load_hook_class
from airflow_provider_jobprogress.hooks.base import JobProgressHook
from airflow_provider_jobprogress.results import is_templated
from airflow_provider_jobprogress.triggers.job_progress import LAST_LOOK_BUDGET, ON_KILL_BUDGET, JobProgressTrigger

#: Airflow's own deferral timeout comes this long after the trigger's deadline: only a backstop (for a
#: triggerer that is down), never a race with the trigger, which reads the job once more within
#: LAST_LOOK_BUDGET, cancels within ON_KILL_BUDGET and reports
DEFERRAL_BACKSTOP = LAST_LOOK_BUDGET + ON_KILL_BUDGET + 35.0
#: what Airflow resumes a task with when its deferral timed out (``next_method``, ``next_kwargs["error"]``)
TRIGGER_FAIL = "__fail__"
TRIGGER_TIMEOUT = "Trigger timeout"


def default_deferrable() -> bool:
    """``deferrable`` where the DAG does not say: the deployment's ``[operators] default_deferrable`` (which
    Airflow's own providers obey) where the deployment sets it, else True: waiting is what the triggerer is for.

    Airflow writes its own default (false) into every airflow.cfg it creates, so a false there cannot be told
    from "nothing said": the deployment's word is true set anywhere, or false set in the environment
    (``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE``, as the official image and Helm chart configure Airflow).
    """
    if conf.getboolean("operators", "default_deferrable", fallback=False):
        return True
    return "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE" not in os.environ


def deferral_settle_seconds() -> float:
    """How long after a deferral the trigger must not end the wait.

    Airflow up to 3.3.2 marks a deferred task failed when its trigger fires and the task is running again
    before the executor has reported the process that deferred (apache/airflow#72716, #71580). The
    supervisor notices that process's exit within ``[workers] min_heartbeat_interval`` (5 s); twice that
    leaves room for a loaded scheduler. The jobs we wait on run minutes, so the first poll coming no
    sooner costs nothing that matters.
    """
    return 2.0 * float(conf.getfloat("workers", "min_heartbeat_interval", fallback=5.0))


class JobWaitMixin:
    """Hook resolution, policies, the trigger, and turning a job's end into the task's outcome.

    Mixed into Airflow operators (``BaseSensorOperator`` or ``BaseOperator``); expects ``job_id`` and
    ``conn_id`` attributes, ``log``, and optionally ``soft_fail``.
    """

    #: set by vendor classes; None = resolve the vendor from the connection's type
    hook_class_path: ClassVar[str | None] = None
    default_conn_id: ClassVar[str | None] = None

    job_id: Any
    conn_id: str
    log: Any
    cancel_on_kill: bool
    cancel_on_timeout: bool
    finish_in_triggerer: bool

    def _init_waiting(
        self,
        *,
        poll_policy: PollPolicy | Mapping[str, Any] | float | None,
        request_retry: RequestRetry | Mapping[str, Any] | None,
        cancel_on_kill: bool,
        cancel_on_timeout: bool,
        finish_in_triggerer: bool = False,
    ) -> None:
        # Validate policies now, at parse time: a bad policy must never surface after a job was started.
        self._poll_policy = PollPolicy.from_value(poll_policy, self._default_poll_policy()) if poll_policy else None
        self._request_retry = RequestRetry.from_value(request_retry)
        self.cancel_on_kill = cancel_on_kill
        self.cancel_on_timeout = cancel_on_timeout
        self.finish_in_triggerer = finish_in_triggerer
        self._last: JobProgress | None = None

    @classmethod
    def _default_poll_policy(cls) -> PollPolicy:
        if cls.hook_class_path is None:
            return PollPolicy.fixed(30)
        hook: type[JobProgressHook[Any]] = load_hook_class(cls.hook_class_path)
        return hook.default_poll_policy()

    @property
    def poll_policy(self) -> PollPolicy:
        return self._poll_policy or type(self.hook).default_poll_policy()

    @cached_property
    def hook(self) -> JobProgressHook[Any]:
        path = self.hook_class_path
        if path is None:
            conn_type = BaseHook.get_connection(self.conn_id).conn_type
            path = HOOK_CLASS_BY_CONN_TYPE.get(conn_type or "")
            if path is None:
                raise AirflowFailException(
                    f"connection {self.conn_id!r} has type {conn_type!r}; this provider knows "
                    f"{sorted(HOOK_CLASS_BY_CONN_TYPE)}"
                )
        hook_class: type[JobProgressHook[Any]] = load_hook_class(path)
        return hook_class(self.conn_id, request_retry=self._request_retry)

    def _trigger_kwargs(
        self, job_id: Any, *, deadline: float | None, first_poll_at: float | None = None
    ) -> dict[str, Any]:
        return {
            "hook_class_path": self.hook_class_path or "",
            "conn_id": self.conn_id,
            "job_id": job_id,
            "poll_policy": self._poll_policy.to_dict() if self._poll_policy else None,
            "request_retry": self._request_retry.to_dict(),
            "deadline": deadline,
            "cancel_on_kill": self.cancel_on_kill,
            "cancel_on_timeout": self.cancel_on_timeout,
            "finish_in_triggerer": self.finish_in_triggerer,
            "first_poll_at": first_poll_at,
        }

    def _trigger(self, job_id: str, *, timeout: float) -> JobProgressTrigger:
        """The trigger for a wait this worker hands over, having just read the job itself.

        Its first poll comes one interval after that read, and not before Airflow has settled the deferral.
        """
        now = time.time()
        first_poll_at = now + max(jittered(self.poll_policy.delay(0)), deferral_settle_seconds())
        kwargs = self._trigger_kwargs(job_id, deadline=now + timeout, first_poll_at=first_poll_at)
        # What this worker just logged: the trigger logs the next reading only if it differs.
        kwargs["last_seen"] = self._last.to_dict() if self._last is not None else None
        trigger = JobProgressTrigger(**kwargs)
        if not trigger.hook_class_path:  # resolved on the worker already: spare the triggerer a lookup
            trigger.hook_class_path = f"{type(self.hook).__module__}.{type(self.hook).__qualname__}"
        return trigger

    def _defer_wait(self, job_id: str, *, timeout: float, method_name: str = "execute_complete") -> None:
        """Hand the wait to the triggerer. The trigger's deadline is the one rule; Airflow's timeout is a backstop."""
        self.defer(  # type: ignore[attr-defined]
            trigger=self._trigger(job_id, timeout=timeout),
            method_name=method_name,
            kwargs={"job_id": job_id},
            timeout=timedelta(seconds=timeout + DEFERRAL_BACKSTOP),
        )

    def _check_job_id_at_parse(self, job_id: Any) -> None:
        """A job id known at parse time (not a template, not an XComArg) that cannot be one fails the DAG import."""
        if job_id is None or (isinstance(job_id, str) and not is_templated(job_id)):
            check_job_id(job_id, f"{type(self).__name__} {self.task_id!r}")  # type: ignore[attr-defined]

    def _rendered_job_id(self) -> str:
        """``job_id`` as rendered for this run: a template can render to nothing (or None), refused here,
        before the connection is even read."""
        return check_job_id(self.job_id, f"{type(self).__name__} {self.task_id!r}")  # type: ignore[attr-defined]

    def _read(self, job_id: str, *, deadline: float | None = None) -> JobProgress:
        check_job_id(job_id, f"{type(self).__name__} {self.task_id!r}")  # type: ignore[attr-defined]
        progress = self.hook.get_progress(job_id, deadline=deadline)
        if progress.changed_from(self._last):
            self.log.info("%s", progress.describe())
        self._last = progress
        return progress

    def _wait_here(self, job_id: str, *, timeout: float) -> JobProgress:
        """Poll on the worker (non-deferrable operators) with the same policy, and the same last look at the
        deadline, as the trigger."""
        deadline = time.time() + timeout
        policy, polls_since_change = self.poll_policy, 0
        last_look = False
        while True:
            before = self._last
            try:
                progress = self._read(job_id, deadline=self._read_by(deadline, last_look=last_look))
            except DeadlineExceededError as exc:
                self._timed_out(str(exc), job_id)
            if progress.is_terminal:
                return progress
            if progress.changed_from(before) and policy.restart_on_change:
                polls_since_change = 0
            if last_look or time.time() >= deadline:
                self._timed_out(f"{progress.describe()}: not finished within {timeout:g} s", job_id)
            pause = jittered(policy.delay(polls_since_change))
            # The deadline falls inside this pause: sleep to it, and the next read is the last look.
            last_look = time.time() + pause >= deadline
            time.sleep(min(pause, max(deadline - time.time(), 0)))
            polls_since_change += 1

    @staticmethod
    def _read_by(deadline: float, *, last_look: bool = False) -> float:
        """Until when a read may go on: the wait's deadline, or, for the read at (or past) it, ``LAST_LOOK_BUDGET``
        from now. A job that ended since the last read then ends as what it is, not as a timeout."""
        now = time.time()
        return now + LAST_LOOK_BUDGET if last_look or now >= deadline else deadline

    def _timed_out(self, message: str, job_id: str) -> NoReturn:
        if self.cancel_on_timeout:
            self._cancel_remote("the wait timed out", job_id)
        raise AirflowSensorTimeout(message)

    def _conclude(self, context: Any, event: dict[str, Any] | str | None) -> JobProgress:
        """The trigger's event as the job's final progress (raising for anything but success)."""
        if isinstance(event, str):
            # A TaskSuccessEvent resumed on a worker (dag.test() does this) arrives as a bare state:
            # the job is finished, so one read gives its final progress.
            return self._outcome(self._read(str(self.job_id)))
        if not event or "status" not in event:
            raise AirflowException(f"{type(self).__name__}: no event from the trigger for job {self.job_id}")
        status = event["status"]
        progress = JobProgress.from_dict(event["progress"]) if event.get("progress") else None
        if progress is not None and status in ("success", "failed", "cancelled"):
            self._last = progress
            return self._outcome(progress)
        if status == "timeout":
            raise AirflowSensorTimeout(event.get("message") or f"job {self.job_id} timed out")
        # An error reaching the vendor says nothing about the job: it fails the task even with soft_fail
        # (Airflow skips on any AirflowException there), and stays retryable.
        raise error_from_event(event.get("error"), event.get("message") or f"waiting for job {self.job_id} failed")

    def _outcome(self, progress: JobProgress) -> JobProgress:
        """Succeeded: the progress. Failed or cancelled: the task fails without retry, or is skipped with
        ``soft_fail``, whenever it is seen (before deferring, while deferred, or poking).

        The reading itself was logged where it was read (``_read`` here, or the trigger): not again."""
        if progress.state is JobState.SUCCEEDED:
            return progress
        vendor_says = progress.message or "no message from the vendor"
        error: JobProgressError
        if progress.state is JobState.CANCELLED:
            error = JobCancelledError(progress.vendor, progress.job_id, f"cancelled: {vendor_says}")
        else:
            error = JobFailedError(progress.vendor, progress.job_id, f"failed: {vendor_says}")
        self.log.error("%s", error)
        if getattr(self, "soft_fail", False):
            raise AirflowSkipException(f"{error} (soft_fail)") from error
        raise AirflowFailException(str(error)) from error

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        """Airflow's deferral timeout (the backstop, when the trigger could not report) cancels the job too
        when ``cancel_on_timeout`` says so: before Airflow turns it into a failure or a soft_fail skip."""
        # a str Enum in Airflow (TriggerFailureReason): compare by value
        timed_out = next_method == TRIGGER_FAIL and (next_kwargs or {}).get("error") == TRIGGER_TIMEOUT
        if timed_out and self.cancel_on_timeout:
            self._cancel_remote("Airflow's deferral timeout passed", self._resumed_job_id(context))
        return super().resume_execution(next_method, next_kwargs, context)  # type: ignore[misc]

    def _resumed_job_id(self, context: Any) -> str:
        """The job this task waited on, when Airflow resumes it without the trigger's event."""
        return str(self.job_id)

    def on_kill(self) -> None:
        """A worker-side kill while the job is watched on the worker (poke mode, or a submit operator waiting
        there): cancel the remote job unless it already finished. A deferred task is the trigger's to cancel."""
        if self.cancel_on_kill and self.job_id and not (self._last is not None and self._last.is_terminal):
            self._cancel_remote("the task was killed")

    def _cancel_remote(self, reason: str, job_id: Any = None) -> None:
        """Cancel the job, within ``ON_KILL_BUDGET`` however the vendor behaves; never raises."""
        job = str(job_id or self.job_id)
        try:
            self.hook.cancel(job, deadline=time.time() + ON_KILL_BUDGET)
            self.log.warning("%s job %s cancelled: %s", self.hook.vendor(), job, reason)
        except OperationNotSupportedError as exc:
            self.log.warning("%s", exc)
        except JobProgressError as exc:
            self.log.error("cancel after %s failed: %s", reason, exc)
