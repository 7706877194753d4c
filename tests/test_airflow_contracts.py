"""Airflow's own contracts on our operators: names Airflow owns keep Airflow's meaning."""

from __future__ import annotations

from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG

from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
from airflow_provider_jobprogress.operators.itwin import ITwinSubmitJobOperator
from airflow_provider_jobprogress.operators.olconnect import OLConnectSubmitOperator
from airflow_provider_jobprogress.operators.scriptx import ScriptXPrintPdfOperator
from airflow_provider_jobprogress.sensors.itwin import ITwinJobSensor
from airflow_provider_jobprogress.sensors.job_progress import JobProgressSensor
from airflow_provider_jobprogress.sensors.olconnect import OLConnectOperationSensor
from airflow_provider_jobprogress.sensors.scriptx import ScriptXJobSensor

retry_policy_module = pytest.importorskip(
    "airflow.sdk.definitions.retry_policy", reason="task retry policies are Airflow 3.3"
)


def _every_task_kind() -> list[object]:
    return [
        JobProgressSensor(task_id="generic", conn_id="scriptx_default", job_id="j"),
        OLConnectOperationSensor(task_id="ol_wait", job_id="j"),
        ScriptXJobSensor(task_id="sx_wait", job_id="j"),
        ITwinJobSensor(task_id="it_wait", job_id="j"),
        OLConnectSubmitOperator(task_id="ol_submit", configuration={}),
        ScriptXPrintPdfOperator(task_id="sx_print", document="https://example.invalid/a.pdf"),
        ITwinSubmitJobOperator(task_id="it_submit", specification={}),
        FetchJobResultOperator(task_id="fetch", conn_id="scriptx_default", job_id="j"),
    ]


def test_airflow_task_retry_policy_in_default_args_reaches_every_task() -> None:
    """Airflow 3.3's ``retry_policy`` (task-level retry rules) is Airflow's: ours must not take the name."""
    policy = retry_policy_module.ExceptionRetryPolicy(
        rules=[retry_policy_module.RetryRule(exception=ValueError, action=retry_policy_module.RetryAction.FAIL)]
    )
    with DAG(
        "contracts",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        default_args={"retry_policy": policy},
    ):
        tasks = _every_task_kind()
    for task in tasks:
        assert task.retry_policy is policy, task  # type: ignore[attr-defined]
        assert task.has_retry_policy, task  # type: ignore[attr-defined]


def test_a_trigger_serialized_by_0_1_with_retry_policy_is_recreated_with_it() -> None:
    from airflow_provider_jobprogress.triggers.job_progress import JobProgressTrigger

    old_kwargs: dict[str, Any] = {
        "hook_class_path": "h",
        "conn_id": "c",
        "job_id": "j",
        "retry_policy": {"attempts": 2},
    }
    _, kwargs = JobProgressTrigger(**old_kwargs).serialize()
    assert kwargs["request_retry"] == {"attempts": 2}
    assert "retry_policy" not in kwargs
