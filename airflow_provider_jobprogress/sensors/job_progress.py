"""JobProgressSensor: wait for any vendor's job; the vendor is taken from the connection's type."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseHook,
    BaseSensorOperator,
    PokeReturnValue,
)

try:
    from airflow.sdk.exceptions import TaskDeferralTimeout
except ImportError:  # Airflow < 3.2
    from airflow.exceptions import TaskDeferralTimeout  # type: ignore[no-redef,attr-defined]
from airflow.triggers.base import StartTriggerArgs

from airflow_provider_jobprogress.core.errors import (
    JobCancelledError,
    JobFailedError,
    JobProgressError,
    OperationNotSupportedError,
)
from airflow_provider_jobprogress.core.model import JobProgress, JobState
from airflow_provider_jobprogress.core.policies import PollPolicy, RetryPolicy
from airflow_provider_jobprogress.hooks import HOOK_CLASS_BY_CONN_TYPE, load_hook_class
from airflow_provider_jobprogress.hooks.base import JobProgressHook
from airflow_provider_jobprogress.triggers.job_progress import CLASSPATH, JobProgressTrigger


class JobProgressSensor(BaseSensorOperator):
    """Wait until a vendor job is finished; its final ``JobProgress`` (as a dict) is the XCom.

    Deferrable by default: the wait runs in the triggerer and holds no worker slot. ``mode="poke"`` or
    ``"reschedule"`` with ``deferrable=False`` give the same outcome with the same poll policy.

    Outcomes: succeeded → success, XCom = final progress dict; failed → the task fails without retry
    (the vendor's message in the log); cancelled → fails (skips with ``soft_fail``); ``timeout`` passed
    → ``AirflowSensorTimeout``, cancelling the remote job first when ``cancel_on_timeout``.

    :param job_id: the vendor's job id (OL Connect operationId, ScriptX job token, iTwin job id); templated
    :param conn_id: Airflow connection; its type (olconnect, scriptx, itwin) picks the vendor; templated
    :param poll_policy: a ``PollPolicy``, its dict, or seconds; default: the vendor's own guidance
    :param retry_policy: a ``RetryPolicy`` or its dict, for transient errors and rate limits
    :param cancel_on_timeout: cancel the remote job when the sensor times out
    :param cancel_on_kill: cancel the remote job when a user kills the task (trigger ``on_kill``, Airflow 3.3+,
        or the worker's ``on_kill`` in poke mode)
    :param finish_in_triggerer: start the wait in the triggerer and end the task there on success, so the
        whole wait uses no worker slot. Costs: downstream tasks pull the XCom as a JSON *string*, and
        custom XCom backends are bypassed (Airflow's behaviour for ``TaskSuccessEvent``). Off by default
        so downstream tasks get a dict.
    """

    template_fields: Sequence[str] = ("job_id", "conn_id")
    ui_color = "#e8f4f8"
    #: set by the vendor sensors; None = resolve from the connection's type
    hook_class_path: ClassVar[str | None] = None
    default_conn_id: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        job_id: str,
        conn_id: str | None = None,
        deferrable: bool = True,
        poll_policy: PollPolicy | Mapping[str, Any] | float | None = None,
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        cancel_on_timeout: bool = False,
        cancel_on_kill: bool = True,
        finish_in_triggerer: bool = False,
        **kwargs: Any,
    ) -> None:
        # Validate policies now, at parse time: a bad policy must never surface after a job was started.
        self._poll_policy = PollPolicy.from_value(poll_policy, self._default_poll_policy()) if poll_policy else None
        self._retry_policy = RetryPolicy.from_value(retry_policy)
        if "poke_interval" not in kwargs:
            kwargs["poke_interval"] = (self._poll_policy or self._default_poll_policy()).delay(0)
        super().__init__(**kwargs)
        conn_id = conn_id or self.default_conn_id
        if not conn_id:
            raise ValueError(f"{type(self).__name__} {self.task_id!r} needs a conn_id")
        self.job_id = job_id
        self.conn_id = conn_id
        self.deferrable = deferrable
        self.cancel_on_timeout = cancel_on_timeout
        self.cancel_on_kill = cancel_on_kill
        self.finish_in_triggerer = finish_in_triggerer
        self._last: JobProgress | None = None
        if deferrable and finish_in_triggerer:
            self.start_from_trigger = True
            self.start_trigger_args = StartTriggerArgs(
                trigger_cls=CLASSPATH,
                trigger_kwargs=self._trigger_kwargs(deadline=None),
                next_method="execute_complete",
                next_kwargs=None,
                timeout=timedelta(seconds=self.timeout),
            )

    @classmethod
    def _default_poll_policy(cls) -> PollPolicy:
        if cls.hook_class_path is None:
            return PollPolicy.fixed(30)
        hook: type[JobProgressHook[Any]] = load_hook_class(cls.hook_class_path)
        return hook.default_poll_policy()

    def _trigger_kwargs(self, *, deadline: float | None) -> dict[str, Any]:
        return {
            "hook_class_path": self.hook_class_path or "",
            "conn_id": self.conn_id,
            "job_id": self.job_id,
            "poll_policy": self._poll_policy.to_dict() if self._poll_policy else None,
            "retry_policy": self._retry_policy.to_dict(),
            "deadline": deadline,
            "cancel_on_kill": self.cancel_on_kill,
            "cancel_on_timeout": self.cancel_on_timeout,
            "finish_in_triggerer": self.finish_in_triggerer,
        }

    @cached_property
    def hook(self) -> JobProgressHook[Any]:
        path = self.hook_class_path
        if path is None:
            conn_type = BaseHook.get_connection(self.conn_id).conn_type
            path = HOOK_CLASS_BY_CONN_TYPE.get(conn_type or "")
            if path is None:
                raise AirflowFailException(
                    f"connection {self.conn_id!r} has type {conn_type!r}; JobProgressSensor knows "
                    f"{sorted(HOOK_CLASS_BY_CONN_TYPE)}"
                )
        hook_class: type[JobProgressHook[Any]] = load_hook_class(path)
        return hook_class(self.conn_id, retry_policy=self._retry_policy)

    # -- running ---------------------------------------------------------------------------------
    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        progress = self._read(str(self.job_id))
        if progress.is_terminal:
            return self._outcome(progress)
        trigger = JobProgressTrigger(**self._trigger_kwargs(deadline=time.time() + self.timeout))
        if trigger.hook_class_path == "":
            trigger.hook_class_path = f"{type(self.hook).__module__}.{type(self.hook).__qualname__}"
        self.defer(trigger=trigger, method_name="execute_complete", timeout=timedelta(seconds=self.timeout))

    def poke(self, context: Any) -> PokeReturnValue | bool:
        progress = self._read(str(self.job_id))
        if not progress.is_terminal:
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._outcome(progress))

    def _read(self, job_id: str) -> JobProgress:
        progress = self.hook.get_progress(job_id)
        if progress.changed_from(self._last):
            self.log.info("%s", progress.describe())
        self._last = progress
        return progress

    def execute_complete(self, context: Any, event: dict[str, Any] | str | None = None) -> Any:
        """Resume after the trigger: turn its event into the task's outcome."""
        if isinstance(event, str):
            # A TaskSuccessEvent resumed on a worker (dag.test() does this) arrives as a bare state:
            # the job is finished, so one read gives its final progress.
            return self._outcome(self._read(str(self.job_id)))
        if not event or "status" not in event:
            raise AirflowException(f"{type(self).__name__}: no event from the trigger for job {self.job_id}")
        status = event["status"]
        progress = JobProgress.from_dict(event["progress"]) if event.get("progress") else None
        if progress is not None and status in ("success", "failed", "cancelled"):
            return self._outcome(progress)
        if status == "timeout":
            raise AirflowSensorTimeout(event.get("message") or f"job {self.job_id} timed out")
        raise AirflowException(event.get("message") or f"waiting for job {self.job_id} failed: {event}")

    def _outcome(self, progress: JobProgress) -> dict[str, Any]:
        if progress.state is JobState.SUCCEEDED:
            self.log.info("%s", progress.describe())
            return progress.to_dict()
        vendor_says = progress.message or "no message from the vendor"
        if progress.state is JobState.CANCELLED:
            error: JobProgressError = JobCancelledError(progress.vendor, progress.job_id, f"cancelled: {vendor_says}")
            self.log.error("%s", error)
            if self.soft_fail:
                raise AirflowSkipException(str(error)) from error
            raise AirflowFailException(str(error)) from error
        error = JobFailedError(progress.vendor, progress.job_id, f"failed: {vendor_says}")
        self.log.error("%s", error)
        raise AirflowFailException(str(error)) from error

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except (AirflowSensorTimeout, TaskDeferralTimeout):
            if self.cancel_on_timeout:
                self._cancel_remote("the sensor timed out")
            raise

    def on_kill(self) -> None:
        """Worker-side kill (poke mode): cancel the remote job unless it already finished."""
        if self.cancel_on_kill and not (self._last is not None and self._last.is_terminal):
            self._cancel_remote("the task was killed")

    def _cancel_remote(self, reason: str) -> None:
        try:
            self.hook.cancel(str(self.job_id))
            self.log.warning("%s job %s cancelled: %s", self.hook.vendor(), self.job_id, reason)
        except OperationNotSupportedError as exc:
            self.log.warning("%s", exc)
        except JobProgressError as exc:
            self.log.error("cancel after %s failed: %s", reason, exc)
