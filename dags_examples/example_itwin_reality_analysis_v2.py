"""iTwin Reality Analysis v2 (Bentley's current API): detect objects in photos, wait, download every output.

Connection ``itwin_reality_analysis`` (type ``itwin``, extra ``api`` = ``reality-analysis``): a service app's
client id and secret, e.g. ``AIRFLOW_CONN_ITWIN_REALITY_ANALYSIS='{"conn_type": "itwin", "login": "<client id>",
"password": "<client secret>", "extra": {"api": "reality-analysis", "itwin_id": "<iTwin id>"}}'``.
A v2 job runs from its creation; its outputs (reality data ids, ``bkt:`` paths in the iTwin's bucket, exports
with their format) are all downloaded under the destination, one folder per output.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
from airflow_provider_jobprogress.operators.itwin import ITwinSubmitJobOperator
from airflow_provider_jobprogress.sensors.itwin import ITwinJobSensor

CONN_ID = "itwin_reality_analysis"
# None = the vendor's own polling guidance; the demo sets a short interval so it finishes quickly.
POLL = float(os.environ.get("JOBPROGRESS_EXAMPLE_POLL_SECONDS", "0")) or None
# The run id names the run's folder, ':' and '+' replaced: a ':' is refused by Windows disks and SMB shares, and a
# '+' reads as a space once a path goes through a URL.
RUN_FOLDER = "{{ run_id | replace(':', '-') | replace('+', '_') }}"

with DAG(
    "example_itwin_reality_analysis_v2",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "results": Param(
            "file:///tmp/jobprogress-results",
            type="string",
            description="where results go: a folder URI (file://…, s3://<conn id>@<bucket>/…); a sub-folder per run",
        ),
        "photos": Param("7d4f1c2a-photos-reality-data-id", type="string", description="ContextScene of photos"),
        "detector": Param("bentley/traffic-signs", type="string", description="photo object detector"),
    },
    tags=["jobprogress", "itwin"],
) as dag:
    submit = ITwinSubmitJobOperator(
        task_id="submit",
        conn_id=CONN_ID,
        specification={
            "type": "Objects2D",
            "name": "Road signs {{ run_id }}",
            "specifications": {
                "inputs": {"photos": "{{ params.photos }}", "photoObjectDetector": "{{ params.detector }}"},
                "outputs": ["objects2D"],
            },
        },
    )
    wait = ITwinJobSensor(
        task_id="wait",
        conn_id=CONN_ID,
        job_id=submit.output,
        poll_policy=POLL,
        timeout=6 * 3600,
        cancel_on_timeout=True,
    )
    fetch = FetchJobResultOperator(
        task_id="download_outputs",
        conn_id=CONN_ID,
        job_id=submit.output,
        destination="{{ params.results }}/itwin-v2/" + RUN_FOLDER + "/",
    )
    wait >> fetch
