"""ScriptX.Services: print a PDF to file in the cloud, wait for the job, download the printed PDF.

Connection ``scriptx_default`` (type ``scriptx``): the license GUID as password, e.g.
``AIRFLOW_CONN_SCRIPTX_DEFAULT='{"conn_type": "scriptx", "password": "<license GUID>",
"extra": {"variant": "cloud"}}'``.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
from airflow_provider_jobprogress.operators.scriptx import ScriptXPrintPdfOperator
from airflow_provider_jobprogress.sensors.scriptx import ScriptXJobSensor

# None = the vendor's own polling guidance; the demo sets a short interval so it finishes quickly.
POLL = float(os.environ.get("JOBPROGRESS_EXAMPLE_POLL_SECONDS", "0")) or None
# The run id names the run's folder, ':' and '+' replaced: a ':' is refused by Windows disks and SMB shares, and a
# '+' reads as a space once a path goes through a URL.
RUN_FOLDER = "{{ run_id | replace(':', '-') | replace('+', '_') }}"

with DAG(
    "example_scriptx_print_pdf",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "results": Param(
            "file:///tmp/jobprogress-results",
            type="string",
            description="where results go: a folder URI (file://…, s3://<conn id>@<bucket>/…); a sub-folder per run",
        ),
        "document": Param(
            "https://example.com/statements/2026-11.pdf", type="string", description="URL of the PDF to print"
        ),
    },
    tags=["jobprogress", "scriptx"],
) as dag:
    submit = ScriptXPrintPdfOperator(
        task_id="print",
        document="{{ params.document }}",
        description="Monthly statement",
        device={"printToFileName": "statement.pdf", "paperSizeName": "A4", "copies": 1},
        settings={"orientation": 1, "pageScaling": 1},
    )
    wait = ScriptXJobSensor(task_id="wait", job_id=submit.output, poll_policy=POLL, timeout=600)
    fetch = FetchJobResultOperator(
        task_id="download",
        conn_id="scriptx_default",
        job_id=submit.output,
        destination="{{ params.results }}/scriptx/" + RUN_FOLDER + "/statement.pdf",
    )
    wait >> fetch
