"""DAGs for what the vendors do today: a ScriptX print done when it was submitted (status 4, no job id)."""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG

from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
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
