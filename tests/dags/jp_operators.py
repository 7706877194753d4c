"""DAGs for the operator tests: submit, wait (deferred), fetch the result into XCom or storage."""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
from airflow_provider_jobprogress.operators.itwin import ITwinSubmitJobOperator
from airflow_provider_jobprogress.operators.olconnect import OLConnectSubmitOperator
from airflow_provider_jobprogress.operators.scriptx import ScriptXPrintPdfOperator

FAST: dict[str, Any] = {
    "poll_policy": 0.05,
    "request_retry": {"initial_delay": 0.01, "max_delay": 0.05, "jitter": 0, "attempts": 2},
}
START = pendulum.datetime(2026, 1, 1, tz="UTC")


def submit_task(vendor: str, **kwargs: Any) -> Any:
    if vendor == "olconnect":
        return OLConnectSubmitOperator(
            task_id="submit", configuration={"datamining": {"identifier": "a.csv", "config": "dm"}}, **kwargs
        )
    if vendor == "scriptx":
        return ScriptXPrintPdfOperator(
            task_id="submit", document="https://example.invalid/a.pdf", device={"printToFileName": "a.pdf"}, **kwargs
        )
    return ITwinSubmitJobOperator(
        task_id="submit",
        specification={
            "name": "j",
            "type": "objects2D",
            "inputs": [{"type": "photos", "id": "i"}],
            "outputs": ["objects2D"],
        },
        **kwargs,
    )


def build(vendor: str, dag_id: str, *, destination: str | None, retries: int = 0, **submit_kwargs: Any) -> DAG:
    with DAG(
        dag_id,
        schedule=None,
        start_date=START,
        catchup=False,
        default_args={"retries": retries, "retry_delay": pendulum.duration(seconds=0)},
    ) as dag:
        submit = submit_task(vendor, wait_for_completion=True, **FAST, **submit_kwargs)
        fetch = FetchJobResultOperator(
            task_id="fetch",
            conn_id=f"{vendor}_default",
            job_id="{{ ti.xcom_pull(task_ids='submit') }}",
            destination=destination,
            chunk_size=64 * 1024,
            request_retry=FAST["request_retry"],
        )

        @task
        def downstream(**context: Any) -> Any:
            return context["ti"].xcom_pull(task_ids="fetch")

        submit >> fetch >> downstream()
    return dag


for _vendor in ("olconnect", "scriptx", "itwin"):
    globals()[f"to_storage_{_vendor}"] = build(
        _vendor, f"jp_fetch_storage_{_vendor}", destination="file://{{ dag_run.conf['out'] }}/", retries=1
    )
    globals()[f"to_xcom_{_vendor}"] = build(_vendor, f"jp_fetch_xcom_{_vendor}", destination=None)
    globals()[f"single_file_{_vendor}"] = build(
        _vendor, f"jp_fetch_file_{_vendor}", destination="file://{{ dag_run.conf['out'] }}/result.bin"
    )
