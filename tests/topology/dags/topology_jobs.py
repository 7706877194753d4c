"""The topology scenario's mapped DAG: many jobs of the three vendors in one run, each submit owning its wait.

A run's ``jobs`` param lists, per vendor, one emulator scenario per job (``[]``: none of that vendor). Each map
index submits one job and waits for it in the triggerer (``wait_for_completion=True``: the submit operator
owns its job, so killing the waiting task cancels the job), then its fetch streams the result to
``<results>/topology/<run>/<vendor>/<map index>/``. OL Connect and iTwin carry the scenario in the submit body
(the emulator reads an ``emulator`` key there); ScriptX's body has no room for one, so its jobs take the
emulator's default scenario. iTwin jobs go to Reality Analysis v2 under the name the shipped asset watcher
(``example_itwin_job_finished_events``) lists, so each one that succeeds must fire that watcher once.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
from airflow_provider_jobprogress.operators.itwin import ITwinSubmitJobOperator
from airflow_provider_jobprogress.operators.olconnect import OLConnectSubmitOperator
from airflow_provider_jobprogress.operators.scriptx import ScriptXPrintPdfOperator

POLL = float(os.environ.get("JOBPROGRESS_EXAMPLE_POLL_SECONDS", "0")) or None
RUN_FOLDER = "{{ run_id | replace(':', '-') | replace('+', '_') }}"
WATCHED_NAME = "Road signs nightly"  # example_itwin_job_finished_events's watcher lists this name
ITWIN_CONN = "itwin_reality_analysis"


def destination(vendor: str) -> str:
    return "{{ params.results }}/topology/" + RUN_FOLDER + f"/{vendor}/" + "{{ ti.map_index }}/"


with DAG(
    "topology_jobs",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_tasks=64,
    params={
        "results": Param("file:///tmp/jobprogress-results", type="string"),
        "jobs": Param({"olconnect": [], "scriptx": [], "itwin": []}, type="object"),
    },
    tags=["jobprogress", "topology"],
) as dag:

    @task
    def olconnect_jobs(params: Any = None) -> list[dict[str, Any]]:
        return [
            {"datamining": {"identifier": f"invoices-{n}.csv"}, "outputcreation": {}, "emulator": scenario}
            for n, scenario in enumerate(params["jobs"].get("olconnect", []))
        ]

    @task
    def scriptx_jobs(params: Any = None) -> list[str]:
        return [f"https://example.com/letters/{n}.pdf" for n in range(len(params["jobs"].get("scriptx", [])))]

    @task
    def itwin_jobs(params: Any = None) -> list[dict[str, Any]]:
        inputs = {"photoObjectDetector": "signs"}
        return [
            {
                "type": "Objects2D",
                "name": WATCHED_NAME,
                "specifications": {"inputs": {**inputs, "photos": f"photos-{n}"}, "outputs": ["objects2D"]},
                "emulator": scenario,
            }
            for n, scenario in enumerate(params["jobs"].get("itwin", []))
        ]

    waiting: dict[str, Any] = {"wait_for_completion": True, "poll_policy": POLL, "timeout": 3600}
    ol = OLConnectSubmitOperator.partial(task_id="olconnect_submit", **waiting).expand(configuration=olconnect_jobs())
    sx = ScriptXPrintPdfOperator.partial(
        task_id="scriptx_submit", device={"printToFileName": "letter.pdf"}, **waiting
    ).expand(document=scriptx_jobs())
    it = ITwinSubmitJobOperator.partial(task_id="itwin_submit", conn_id=ITWIN_CONN, **waiting).expand(
        specification=itwin_jobs()
    )
    for vendor, submit, conn_id in (
        ("olconnect", ol, "olconnect_default"),
        ("scriptx", sx, "scriptx_default"),
        ("itwin", it, ITWIN_CONN),
    ):
        FetchJobResultOperator.partial(
            task_id=f"{vendor}_fetch", conn_id=conn_id, destination=destination(vendor)
        ).expand(job_id=submit.output)
