"""DAGs for the sensor tests: submit a job on the emulator, wait for it, and look at what downstream receives."""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_jobprogress.hooks import HOOK_CLASS_BY_CONN_TYPE, load_hook_class
from airflow_provider_jobprogress.sensors.job_progress import JobProgressSensor

SUBMITS: dict[str, dict[str, Any]] = {
    "olconnect": {"configuration": {"datamining": {"identifier": "a.csv", "config": "dm"}}},
    "scriptx": {"document": "https://example.invalid/a.pdf"},
    "itwin": {
        "specification": {
            "name": "j",
            "type": "objects2D",
            "inputs": [{"type": "photos", "id": "i"}],
            "outputs": ["objects2D"],
        }
    },
}


def build(dag_id: str, **sensor_kwargs: Any) -> DAG:
    with DAG(
        dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        is_paused_upon_creation=False,
    ) as dag:

        @task
        def submit(**context: Any) -> str:
            vendor = context["dag_run"].conf["vendor"]
            hook = load_hook_class(HOOK_CLASS_BY_CONN_TYPE[vendor])()
            return str(hook.submit(**SUBMITS[vendor]))

        @task
        def downstream(**context: Any) -> dict[str, Any]:
            pulled = context["ti"].xcom_pull(task_ids="wait")
            return {"type": type(pulled).__name__, "value": pulled}

        sensor_kwargs.setdefault("job_id", "{{ ti.xcom_pull(task_ids='submit') }}")
        wait = JobProgressSensor(
            task_id="wait",
            conn_id="{{ dag_run.conf['vendor'] }}_default",
            poll_policy=0.05,
            request_retry={"initial_delay": 0.01, "max_delay": 0.05, "jitter": 0},
            **sensor_kwargs,
        )
        submit() >> wait >> downstream()
    return dag


deferrable = build("jp_wait_deferrable")
# the sensor owns nothing by default; these DAGs ask it to cancel the job when the task is killed
cancel_on_kill = build("jp_wait_cancel_on_kill", cancel_on_kill=True)
poke = build("jp_wait_poke", deferrable=False, mode="poke", cancel_on_kill=True)
reschedule = build("jp_wait_reschedule", deferrable=False, mode="reschedule")
soft = build("jp_wait_soft_fail", soft_fail=True)
deadline = build("jp_wait_deadline", timeout=1, cancel_on_timeout=True)
in_triggerer = build(
    "jp_wait_in_triggerer", finish_in_triggerer=True, job_id="{{ ti.xcom_pull(task_ids='submit', map_indexes=-1) }}"
)
poke_deadline = build("jp_wait_poke_deadline", deferrable=False, mode="poke", timeout=2)
