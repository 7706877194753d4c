"""Event-driven: a run for each iTwin job that finishes, started by an asset watcher; it downloads the outputs.

Nothing here submits the job: someone else does (another DAG, a desktop tool, a colleague). The asset's
watcher, a ``JobFinishedTrigger`` in the triggerer, lists the iTwin's finished jobs named ``JOB_NAME`` and
fires once per job that newly finishes; each event becomes an asset event, and the asset event starts this
DAG. Events that arrive before the scheduler creates the run are delivered to one run together, so the run
downloads every job its events name (a mapped download per job).

Connection ``itwin_reality_analysis`` (type ``itwin``, extra ``api`` = ``reality-analysis`` and ``itwin_id``):
see example_itwin_reality_analysis_v2.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, AssetWatcher, Param, task

from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
from airflow_provider_jobprogress.triggers.job_finished import JobFinishedTrigger

CONN_ID = "itwin_reality_analysis"
JOB_NAME = "Road signs nightly"
# The vendor is polled once a minute by default; the demo and tests set a short interval. Trigger kwargs must
# not change between parses (they identify the watcher's trigger), so no "now" or random value goes in them.
POLL = float(os.environ.get("JOBPROGRESS_EXAMPLE_POLL_SECONDS", "0")) or 60.0

finished_jobs = Asset(
    "itwin_road_signs_finished",
    uri="itwin://reality-analysis/jobs/road-signs-nightly",
    watchers=[
        AssetWatcher(
            name="itwin_road_signs_finished_watcher",
            trigger=JobFinishedTrigger(conn_id=CONN_ID, name=JOB_NAME, states=["succeeded"], poll_interval=POLL),
        )
    ],
)

with DAG(
    "example_itwin_job_finished_events",
    schedule=[finished_jobs],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "results": Param(
            "file:///tmp/jobprogress-results",
            type="string",
            description="where results go: a folder URI (file://…, s3://<conn id>@<bucket>/…); a sub-folder per job",
        ),
    },
    tags=["jobprogress", "itwin", "event-driven"],
) as dag:

    @task
    def finished(triggering_asset_events: Any = None, params: Any = None) -> list[dict[str, str]]:
        """One download per job the triggering events name (the trigger's payload is each event's extra)."""
        jobs: dict[str, dict[str, str]] = {}
        for events in triggering_asset_events.values():
            for event in events:
                payload = (event.extra or {}).get("payload") or {}
                job_id = payload.get("job_id")
                if job_id:
                    print(f"iTwin job {job_id} ({payload.get('name')}) ended {payload.get('ended')}")
                    jobs[job_id] = {"job_id": job_id, "destination": f"{params['results']}/itwin-events/{job_id}/"}
        return list(jobs.values())

    FetchJobResultOperator.partial(task_id="download_outputs", conn_id=CONN_ID).expand_kwargs(finished())
