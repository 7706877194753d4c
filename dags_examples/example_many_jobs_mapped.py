"""Many jobs at once: dynamic task mapping submits, waits on and downloads one PDF print per document."""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
from airflow_provider_jobprogress.operators.scriptx import ScriptXPrintPdfOperator
from airflow_provider_jobprogress.sensors.scriptx import ScriptXJobSensor

# None = the vendor's own polling guidance; the demo sets a short interval so it finishes quickly.
POLL = float(os.environ.get("JOBPROGRESS_EXAMPLE_POLL_SECONDS", "0")) or None
# The run id names the run's folder, ':' and '+' replaced: a ':' is refused by Windows disks and SMB shares, and a
# '+' reads as a space once a path goes through a URL.
RUN_FOLDER = "{{ run_id | replace(':', '-') | replace('+', '_') }}"
# Each map is listed in the UI by the document it prints (map i of every task is document i), not by its index.
DOCUMENT = "{{ ti.xcom_pull(task_ids='documents')[ti.map_index] }}"

with DAG(
    "example_many_jobs_mapped",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "results": Param(
            "file:///tmp/jobprogress-results",
            type="string",
            description="where results go: a folder URI (file://…, s3://<conn id>@<bucket>/…); a sub-folder per run",
        ),
        "documents": Param(
            [f"https://example.com/letters/{n}.pdf" for n in range(1, 6)], type="array", description="PDFs to print"
        ),
    },
    tags=["jobprogress", "scriptx", "mapping"],
) as dag:

    @task
    def documents(**context: Any) -> list[str]:
        return list(context["params"]["documents"])

    prints = ScriptXPrintPdfOperator.partial(
        task_id="print", device={"printToFileName": "letter.pdf"}, map_index_template=DOCUMENT
    ).expand(document=documents())
    waits = ScriptXJobSensor.partial(
        task_id="wait", timeout=1800, poll_policy=POLL, map_index_template=DOCUMENT
    ).expand(job_id=prints.output)
    downloads = FetchJobResultOperator.partial(
        task_id="download",
        conn_id="scriptx_default",
        map_index_template=DOCUMENT,
        destination="{{ params.results }}/mapped/" + RUN_FOLDER + "/{{ ti.map_index }}.pdf",
    ).expand(job_id=prints.output)
    waits >> downloads
