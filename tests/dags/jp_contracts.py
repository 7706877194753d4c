"""DAGs for Airflow's contracts on our tasks: mapped submits, soft_fail, who cancels what."""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
from airflow_provider_jobprogress.operators.scriptx import ScriptXPrintPdfOperator
from airflow_provider_jobprogress.sensors.job_progress import JobProgressSensor

FAST: dict[str, Any] = {
    "poll_policy": 0.05,
    "request_retry": {"initial_delay": 0.01, "max_delay": 0.05, "jitter": 0, "attempts": 2},
}
START = pendulum.datetime(2026, 1, 1, tz="UTC")
DOCUMENTS = [f"https://example.invalid/letters/{n}.pdf" for n in range(3)]

with DAG("jp_mapped_submit_wait_fetch", schedule=None, start_date=START, catchup=False) as mapped:
    prints = ScriptXPrintPdfOperator.partial(
        task_id="print", wait_for_completion=True, device={"printToFileName": "letter.pdf"}, **FAST
    ).expand(document=DOCUMENTS)
    fetches = FetchJobResultOperator.partial(
        task_id="fetch",
        conn_id="scriptx_default",
        destination="file://{{ dag_run.conf['out'] }}/{{ ti.map_index }}/",
        request_retry=FAST["request_retry"],
    ).expand(job_id=prints.output)


with DAG("jp_soft_fail_from_conf", schedule=None, start_date=START, catchup=False) as soft_from_conf:

    @task
    def job(**context: Any) -> str:
        return str(context["dag_run"].conf["job"])

    job_id = job()
    JobProgressSensor(
        task_id="wait", conn_id="{{ dag_run.conf['vendor'] }}_default", job_id=job_id, soft_fail=True, **FAST
    )


class PrintThenCrash(ScriptXPrintPdfOperator):
    """The first try submits, then its worker dies at once (SIGKILL: no cleanup, no on_kill), as a host does."""

    def _wait_here(self, job_id: str, *, timeout: float) -> Any:
        if self._try_number == 1:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        return super()._wait_here(job_id, timeout=timeout)

    def execute(self, context: Any) -> Any:
        self._try_number = context["ti"].try_number
        return super().execute(context)


# A print that a user clears to print again, and one whose worker dies after the submit and is retried.
with DAG("jp_print_clear", schedule=None, start_date=START, catchup=False) as print_clear:
    ScriptXPrintPdfOperator(
        task_id="print",
        document="https://example.invalid/letters/reprint.pdf",
        wait_for_completion=True,
        retries=1,
        retry_delay=pendulum.duration(seconds=0),
        **FAST,
    )

with DAG("jp_print_crash_retry", schedule=None, start_date=START, catchup=False) as print_crash_retry:
    PrintThenCrash(
        task_id="print",
        document="https://example.invalid/letters/crash.pdf",
        wait_for_completion=True,
        deferrable=False,
        retries=1,
        retry_delay=pendulum.duration(seconds=0),
        **FAST,
    )
