"""OL Connect: run an All-In-One print operation, wait for it in the triggerer, store the output.

Connection ``olconnect_default`` (type ``olconnect``): see the README, e.g.
``AIRFLOW_CONN_OLCONNECT_DEFAULT='{"conn_type": "olconnect", "host": "connect.example.com", "port": 9340,
"schema": "https", "login": "ol-admin", "password": "...", "extra": {"auth": "token"}}'``.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
from airflow_provider_jobprogress.operators.olconnect import OLConnectSubmitOperator
from airflow_provider_jobprogress.sensors.olconnect import OLConnectOperationSensor

# None = the vendor's own polling guidance; the demo sets a short interval so it finishes quickly.
POLL = float(os.environ.get("JOBPROGRESS_EXAMPLE_POLL_SECONDS", "0")) or None
# The run id names the run's folder, ':' and '+' replaced: a ':' is refused by Windows disks and SMB shares, and a
# '+' reads as a space once a path goes through a URL.
RUN_FOLDER = "{{ run_id | replace(':', '-') | replace('+', '_') }}"

with DAG(
    "example_olconnect_print",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "results": Param(
            "file:///tmp/jobprogress-results",
            type="string",
            description="where results go: a folder URI (file://…, s3://<conn id>@<bucket>/…); a sub-folder per run",
        )
    },
    tags=["jobprogress", "olconnect"],
) as dag:
    submit = OLConnectSubmitOperator(
        task_id="submit",
        configuration={
            "datamining": {"identifier": "invoices.csv", "config": "invoices-dm"},
            "contentcreation": {"config": "invoice-template"},
            "jobcreation": {"config": "invoice-job"},
            "outputcreation": {"config": "pdf-output"},
        },
    )
    wait = OLConnectOperationSensor(task_id="wait", job_id=submit.output, poll_policy=POLL, timeout=3600)
    fetch = FetchJobResultOperator(
        task_id="fetch",
        conn_id="olconnect_default",
        job_id=submit.output,
        destination="{{ params.results }}/olconnect/" + RUN_FOLDER + "/",
    )
    wait >> fetch
