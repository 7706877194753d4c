"""JobProgressSensor: wait for any vendor's job; the vendor is taken from the connection's type."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseSensorOperator, PokeReturnValue
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_3_PLUS
from airflow.triggers.base import StartTriggerArgs

from airflow_provider_jobprogress.core.errors import DeadlineExceededError
from airflow_provider_jobprogress.core.policies import PollPolicy, RequestRetry
from airflow_provider_jobprogress.triggers.job_progress import CLASSPATH
from airflow_provider_jobprogress.waiting import JobWaitMixin, default_deferrable

if TYPE_CHECKING:
    from airflow.sdk import XComArg


def _check_finish_in_triggerer(task_id: str, job_id: Any) -> bool:
    """Whether the wait can start in the triggerer; raises for a job_id the triggerer cannot render.

    Below Airflow 3.3 the triggerer renders no templates, so the sensor falls back to the worker path
    (with a warning). On 3.3, a job_id must be a template string, and ``xcom_pull`` in it needs
    ``map_indexes=-1``: without it Airflow asks for an XCom sequence, a message the triggerer's
    supervisor cannot decode, and the wait hangs until its timeout (seen on 3.3.2).
    """
    if not AIRFLOW_V_3_3_PLUS:
        warnings.warn(
            f"{task_id}: finish_in_triggerer needs Airflow 3.3 (templates rendered in the triggerer); "
            "this task waits in the triggerer and finishes on a worker instead",
            UserWarning,
            stacklevel=3,
        )
        return False
    example = "job_id=\"{{ ti.xcom_pull(task_ids='submit', map_indexes=-1) }}\""
    if not isinstance(job_id, str):
        raise ValueError(
            f"{task_id}: with finish_in_triggerer, job_id must be a template string the triggerer renders, "
            f"such as {example}; got {type(job_id).__name__}"
        )
    if "xcom_pull(" in job_id and "map_indexes" not in job_id:
        raise ValueError(
            f"{task_id}: with finish_in_triggerer, xcom_pull in job_id needs map_indexes=-1 ({example}); "
            "without it Airflow 3.3's triggerer cannot answer the XCom request and the wait hangs"
        )
    return True


class JobProgressSensor(JobWaitMixin, BaseSensorOperator):
    """Wait until a vendor job is finished; its final ``JobProgress`` (as a dict) is the XCom.

    Deferrable by default: the wait runs in the triggerer and holds no worker slot (a deployment that sets
    ``[operators] default_deferrable`` decides the default; see ``waiting.default_deferrable``). ``mode="poke"``
    or ``"reschedule"`` with ``deferrable=False`` give the same outcome with the same poll policy.

    Outcomes: succeeded → success, XCom = final progress dict; failed or cancelled → the task fails
    without retry (the vendor's message in the log); ``timeout`` passed → ``AirflowSensorTimeout``,
    cancelling the remote job first when ``cancel_on_timeout``. With ``soft_fail`` a failed or cancelled
    job and a timeout mark the task *skipped* instead, whenever they are seen (before deferring, while
    deferred, or poking). Errors reaching the vendor (credentials, configuration, an outage longer than
    ``outage_tolerance``) say nothing about the job: they fail the task even with ``soft_fail``, and
    Airflow's ``retries`` apply to them.

    :param job_id: the vendor's job id (OL Connect operationId, ScriptX job token, iTwin job id); templated
    :param conn_id: Airflow connection; its type (olconnect, scriptx, itwin) picks the vendor; templated
    :param poll_policy: a ``PollPolicy``, its dict, or seconds; default: the vendor's own guidance
    :param request_retry: a ``RequestRetry`` or its dict, for transient errors and rate limits
    :param cancel_on_timeout: cancel the remote job when the sensor times out
    :param cancel_on_kill: cancel the remote job when a user kills the task (trigger ``on_kill``, Airflow 3.3+,
        or the worker's ``on_kill`` in poke mode). Off by default: a sensor watches a job some other task
        started, and "mark success" or "clear" on a waiting sensor must not cancel that task's job. The
        submit operators, which own their job, cancel it by default.
    :param finish_in_triggerer: start the wait in the triggerer and end the task there on success, so the
        whole wait uses no worker slot (Airflow 3.3+). Costs: downstream tasks pull the XCom as a JSON
        *string*, and custom XCom backends are bypassed (Airflow's behaviour for ``TaskSuccessEvent``).
        Off by default so downstream tasks get a dict. ``job_id`` must then be a template string, and an
        ``xcom_pull`` in it needs ``map_indexes=-1``: ``"{{ ti.xcom_pull(task_ids='submit', map_indexes=-1) }}"``.
    """

    template_fields: Sequence[str] = ("job_id", "conn_id")
    ui_color = "#e8f4f8"

    def __init__(
        self,
        *,
        job_id: str | XComArg,
        conn_id: str | None = None,
        deferrable: bool | None = None,
        poll_policy: PollPolicy | Mapping[str, Any] | float | None = None,
        request_retry: RequestRetry | Mapping[str, Any] | None = None,
        cancel_on_timeout: bool = False,
        cancel_on_kill: bool = False,
        finish_in_triggerer: bool = False,
        **kwargs: Any,
    ) -> None:
        self._init_waiting(
            poll_policy=poll_policy,
            request_retry=request_retry,
            cancel_on_kill=cancel_on_kill,
            cancel_on_timeout=cancel_on_timeout,
            finish_in_triggerer=finish_in_triggerer,
        )
        if "poke_interval" not in kwargs:
            kwargs["poke_interval"] = (self._poll_policy or self._default_poll_policy()).delay(0)
        super().__init__(**kwargs)
        conn_id = conn_id or self.default_conn_id
        if not conn_id:
            raise ValueError(f"{type(self).__name__} {self.task_id!r} needs a conn_id")
        self._check_job_id_at_parse(job_id)
        self.job_id = job_id
        self.conn_id = conn_id
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        if self.deferrable and finish_in_triggerer and _check_finish_in_triggerer(self.task_id, job_id):
            self.start_from_trigger = True
            self.start_trigger_args = StartTriggerArgs(
                trigger_cls=CLASSPATH,
                trigger_kwargs=self._trigger_kwargs(job_id, deadline=None),
                next_method="execute_complete",
                next_kwargs=None,
                timeout=timedelta(seconds=self.timeout),
            )

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        job_id = self._rendered_job_id()
        try:
            progress = self._read(job_id, deadline=time.time() + self.timeout)
        except DeadlineExceededError as exc:
            self._timed_out(str(exc), job_id)
        if progress.is_terminal:
            return self._outcome(progress).to_dict()
        self._defer_wait(job_id, timeout=self.timeout)

    def poke(self, context: Any) -> PokeReturnValue | bool:
        job_id, deadline = self._rendered_job_id(), self._poke_deadline(context)
        try:
            # Airflow sleeps whole poke intervals, so this poke may come after the deadline: it still reads the job
            progress = self._read(job_id, deadline=self._read_by(deadline))
        except DeadlineExceededError as exc:
            self._timed_out(str(exc), job_id)
        if progress.is_terminal:
            return PokeReturnValue(is_done=True, xcom_value=self._outcome(progress).to_dict())
        if time.time() >= deadline:
            # before Airflow's own check, which would not cancel the job
            self._timed_out(f"{progress.describe()}: not finished within {self.timeout:g} s", job_id)
        return False

    def _poke_deadline(self, context: Any) -> float:
        """When a poking wait ends: the sensor's timeout counted from the wait's start, as Airflow counts it."""
        ti = context.get("ti")
        started = ti.get_first_reschedule_date(context) if ti is not None and self.reschedule else None
        started = started or getattr(ti, "start_date", None)
        if started is None:  # outside a task run (a direct call): from the first poke
            self._poke_started = getattr(self, "_poke_started", None) or time.time()
            return float(self._poke_started) + self.timeout
        return float(started.timestamp()) + self.timeout

    def execute_complete(
        self, context: Any, event: dict[str, Any] | str | None = None, job_id: str | None = None
    ) -> Any:
        """Resume after the trigger: turn its event into the task's outcome."""
        return self._conclude(context, event).to_dict()
