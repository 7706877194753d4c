"""One sensor class for every vendor: JobProgressSensor takes the vendor from the connection's type."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_jobprogress.operators.itwin import ITwinSubmitJobOperator
from airflow_provider_jobprogress.operators.olconnect import OLConnectSubmitOperator
from airflow_provider_jobprogress.operators.scriptx import ScriptXPrintPdfOperator
from airflow_provider_jobprogress.sensors.job_progress import JobProgressSensor

# None = the vendor's own polling guidance; the demo sets a short interval so it finishes quickly.
POLL = float(os.environ.get("JOBPROGRESS_EXAMPLE_POLL_SECONDS", "0")) or None

with DAG(
    "example_generic_sensor",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["jobprogress"],
) as dag:
    jobs = {
        "olconnect_default": OLConnectSubmitOperator(
            task_id="submit_olconnect", configuration={"datamining": {"identifier": "orders.csv", "config": "dm"}}
        ),
        "scriptx_default": ScriptXPrintPdfOperator(
            task_id="submit_scriptx", document="https://example.com/labels.pdf", device={"printToFileName": "l.pdf"}
        ),
        "itwin_default": ITwinSubmitJobOperator(
            task_id="submit_itwin",
            specification={
                "name": "ground",
                "type": "extractGround",
                "inputs": [{"type": "pointClouds", "id": "pc"}],
                "outputs": ["segmentation3D"],
            },
        ),
    }
    for conn_id, submit in jobs.items():
        JobProgressSensor(
            task_id=f"wait_{conn_id.removesuffix('_default')}",
            conn_id=conn_id,
            job_id=submit.output,
            poll_policy=POLL or {"kind": "exponential", "interval": 2, "factor": 2, "max_interval": 60},
            timeout=3600,
        )
