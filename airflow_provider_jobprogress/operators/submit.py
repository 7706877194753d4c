"""The generic submit operator: start a job once, re-attach on retry, optionally wait with the sensor's machinery."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_provider_jobprogress.core.errors import DeadlineExceededError, JobNotFoundError, printable
from airflow_provider_jobprogress.core.model import JobState
from airflow_provider_jobprogress.core.policies import PollPolicy, RequestRetry
from airflow_provider_jobprogress.waiting import JobWaitMixin, default_deferrable

#: where the job id is pushed (XCom key), and was kept across tries by 0.1 (task_state_store)
JOB_ID_KEY = "job_id"
#: task_state_store key (Airflow 3.3) of the job and the ``max_tries`` of the try that submitted it: how a
#: retry (same ``max_tries``) is told from a user's Clear (a new one)
SUBMITTED_KEY = "submitted_job"
DEFAULT_TIMEOUT = 7 * 24 * 3600.0


class JobSubmitOperator(JobWaitMixin, BaseOperator):
    """Submit one vendor job; its id is the XCom ``return_value`` (and XCom ``job_id``, pushed at once).

    A retry does not submit a second job while the first one is still alive: the job id is kept in
    Airflow 3.3's ``task_state_store`` and the task re-attaches to that job, saying so in the log. A job
    that already failed or was cancelled is submitted anew. A user's Clear runs the task again, so it
    submits a new job (clearing a print task prints again): Airflow gives a cleared task a new retry budget
    (``max_tries``) where a retry keeps its own, and the job is kept with the ``max_tries`` it was submitted
    under. Below 3.3 Airflow keeps nothing across tries (it clears the earlier try's XComs), so each try
    submits its own job there.

    :param wait_for_completion: wait until the job is finished (the task then fails if the job fails)
    :param deferrable: wait in the triggerer rather than on the worker; default: the deployment's
        ``[operators] default_deferrable`` where it sets one, else True (``waiting.default_deferrable``)
    :param timeout: seconds to wait for completion
    """

    ui_color = "#d8ecf3"
    job_id: Any = None

    def __init__(
        self,
        *,
        conn_id: str | None = None,
        wait_for_completion: bool = False,
        deferrable: bool | None = None,
        poll_policy: PollPolicy | Mapping[str, Any] | float | None = None,
        request_retry: RequestRetry | Mapping[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        cancel_on_kill: bool = True,
        cancel_on_timeout: bool = False,
        **kwargs: Any,
    ) -> None:
        self._init_waiting(
            poll_policy=poll_policy,
            request_retry=request_retry,
            cancel_on_kill=cancel_on_kill,
            cancel_on_timeout=cancel_on_timeout,
        )
        super().__init__(**kwargs)
        self.conn_id = conn_id or self.default_conn_id or ""
        if not self.conn_id:
            raise ValueError(f"{type(self).__name__} {self.task_id!r} needs a conn_id")
        self.wait_for_completion = wait_for_completion
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self.timeout = timeout

    # -- what each vendor operator provides ------------------------------------------------------
    def submit_job(self, context: Any) -> str:
        """Submit the job through ``self.hook``; return its id."""
        raise NotImplementedError

    # -- the shared life -------------------------------------------------------------------------
    def execute(self, context: Any) -> Any:
        job_id = self._reattach(context) or self._submit(context)
        self.job_id = job_id
        context["ti"].xcom_push(key=JOB_ID_KEY, value=job_id)
        if not self.wait_for_completion:
            return job_id
        try:
            progress = self._read(job_id, deadline=time.time() + self.timeout)
        except DeadlineExceededError as exc:
            self._timed_out(str(exc), job_id)
        if not progress.is_terminal:
            if self.deferrable:
                self._defer_wait(job_id, timeout=self.timeout)
            progress = self._wait_here(job_id, timeout=self.timeout)
        self._finish(context, self._outcome(progress))
        return job_id

    def execute_complete(
        self, context: Any, event: dict[str, Any] | str | None = None, job_id: str | None = None
    ) -> Any:
        # The job id travels with the deferral itself: a mapped task's index never meets another's job.
        self.job_id = job_id or self._resumed_job_id(context)
        self._finish(context, self._conclude(context, event))
        return self.job_id

    def _resumed_job_id(self, context: Any) -> str:
        """This try's job when Airflow resumes without our kwargs (its deferral timeout): the XCom this map
        index pushed before deferring."""
        ti = context["ti"]
        return str(ti.xcom_pull(task_ids=self.task_id, key=JOB_ID_KEY, map_indexes=ti.map_index))

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (``apache-airflow-providers-openlineage``, when installed) calls this after a success: the
        vendor job as run facets, the same a fetch of its result reports. Imported here: the provider is optional."""
        from airflow_provider_jobprogress.lineage import job_lineage

        return job_lineage(
            vendor=self.hook.vendor(), conn_type=self.hook.conn_type, conn_id=self.conn_id, job_id=str(self.job_id)
        )

    def _finish(self, context: Any, progress: Any) -> None:
        context["ti"].xcom_push(key="progress", value=progress.to_dict())

    def _submit(self, context: Any) -> str:
        job_id = str(self.submit_job(context))
        self.log.info("%s: submitted job %s", self.hook.vendor(), printable(job_id))
        store = context.get("task_state_store")
        if store is not None:
            store.set(SUBMITTED_KEY, {"job_id": job_id, "max_tries": context["ti"].max_tries})
        return job_id

    def _reattach(self, context: Any) -> str | None:
        """The job of an earlier try of this run of the task, if it is still alive (or already succeeded).

        A retry keeps the ``max_tries`` the job was submitted under; a user's Clear gives the task a new one
        (Airflow sets it to the try number plus ``retries``) and runs it again: a new job. A job id kept by
        0.1 (under ``job_id``, without ``max_tries``) is re-attached to as 0.1 did.
        """
        store = context.get("task_state_store")
        if store is None:
            return None
        earlier = store.get(SUBMITTED_KEY) or {"job_id": store.get(JOB_ID_KEY)}
        if not isinstance(earlier, dict) or not earlier.get("job_id"):
            return None
        job_id = str(earlier["job_id"])
        submitted_under = earlier.get("max_tries")
        if submitted_under is not None and submitted_under != context["ti"].max_tries:
            self.log.info(
                "%s job %s was submitted before the task was cleared; submitting a new one",
                self.hook.vendor(),
                printable(job_id),
            )
            return None
        try:
            progress = self._read(job_id)
        except JobNotFoundError:
            self.log.warning("%s job %s of an earlier try is unknown now; submitting anew", self.hook.vendor(), job_id)
            return None
        if progress.state in (JobState.FAILED, JobState.CANCELLED):
            self.log.warning("%s; the earlier try's job ended, submitting a new one", progress.describe())
            return None
        self.log.info("%s; re-attaching to the earlier try's job instead of submitting again", progress.describe())
        return job_id
