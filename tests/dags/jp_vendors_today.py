"""DAGs for what the vendors do today: a ScriptX print done when it was submitted (status 4, no job id), and
OL Connect's data/content/job set ids handed to downstream tasks."""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
from airflow_provider_jobprogress.operators.olconnect import OLConnectSubmitOperator
from airflow_provider_jobprogress.operators.scriptx import ScriptXPrintPdfOperator
from airflow_provider_jobprogress.sensors.scriptx import ScriptXJobSensor

FAST: dict[str, Any] = {
    "poll_policy": 0.05,
    "request_retry": {"initial_delay": 0.01, "max_delay": 0.05, "jitter": 0, "attempts": 2},
}

with DAG(
    "jp_scriptx_done_at_submit", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False
) as scriptx_done_at_submit:
    submit = ScriptXPrintPdfOperator(
        task_id="submit",
        document="https://example.invalid/a.pdf",
        device={"printerName": "Office"},
        wait_for_completion=True,
        **FAST,
    )
    wait = ScriptXJobSensor(task_id="wait", job_id=submit.output, **FAST)
    fetch = FetchJobResultOperator(
        task_id="fetch",
        conn_id="scriptx_default",
        job_id=submit.output,
        destination="file://{{ dag_run.conf['out'] }}/",
        request_retry=FAST["request_retry"],
    )
    wait >> fetch


def _olconnect_sets(dag_id: str, destination: str | None) -> DAG:
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False) as dag:
        submit = OLConnectSubmitOperator(
            task_id="submit",
            configuration={"datamining": {"identifier": "a.csv"}, "returnIdInHeader": True},
            wait_for_completion=True,
            **FAST,
        )
        fetch = FetchJobResultOperator(
            task_id="fetch",
            conn_id="olconnect_default",
            job_id=submit.output,
            destination=destination,
            request_retry=FAST["request_retry"],
        )

        @task
        def use_the_sets(**context: Any) -> Any:
            return context["ti"].xcom_pull(task_ids="fetch", key="metadata")

        fetch >> use_the_sets()
    return dag


olconnect_sets_storage = _olconnect_sets("jp_olconnect_sets_storage", "file://{{ dag_run.conf['out'] }}/")
olconnect_sets_xcom = _olconnect_sets("jp_olconnect_sets_xcom", None)
