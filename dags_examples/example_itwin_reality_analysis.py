"""iTwin Reality Analysis: detect objects in photos, wait for the job, download every output file.

Connection ``itwin_default`` (type ``itwin``): a service app's client id and secret, e.g.
``AIRFLOW_CONN_ITWIN_DEFAULT='{"conn_type": "itwin", "login": "<client id>", "password": "<client secret>",
"extra": {"api": "realitydataanalysis", "itwin_id": "<iTwin id>"}}'``.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
from airflow_provider_jobprogress.operators.itwin import ITwinSubmitJobOperator
from airflow_provider_jobprogress.sensors.itwin import ITwinJobSensor

# None = the vendor's own polling guidance; the demo sets a short interval so it finishes quickly.
POLL = float(os.environ.get("JOBPROGRESS_EXAMPLE_POLL_SECONDS", "0")) or None
# The run id names the run's folder, ':' and '+' replaced: a ':' is refused by Windows disks and SMB shares, and a
# '+' reads as a space once a path goes through a URL.
RUN_FOLDER = "{{ run_id | replace(':', '-') | replace('+', '_') }}"

with DAG(
    "example_itwin_reality_analysis",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "results": Param(
            "file:///tmp/jobprogress-results",
            type="string",
            description="where results go: a folder URI (file://…, s3://<conn id>@<bucket>/…); a sub-folder per run",
        ),
        "photos": Param("7d4f1c2a-photos-reality-data-id", type="string", description="input reality data id"),
    },
    tags=["jobprogress", "itwin"],
) as dag:
    submit = ITwinSubmitJobOperator(
        task_id="submit",
        specification={
            "name": "Road signs {{ run_id }}",
            "type": "objects2D",
            "inputs": [{"type": "photos", "id": "{{ params.photos }}"}],
            "outputs": ["objects2D"],
        },
    )
    # The vendor's own polling advice (15, 30, 60, 120 s, restarting on change) is the default.
    wait = ITwinJobSensor(
        task_id="wait", job_id=submit.output, poll_policy=POLL, timeout=6 * 3600, cancel_on_timeout=True
    )
    fetch = FetchJobResultOperator(
        task_id="download_outputs",
        conn_id="itwin_default",
        job_id=submit.output,
        destination="{{ params.results }}/itwin/" + RUN_FOLDER + "/",
    )
    wait >> fetch
