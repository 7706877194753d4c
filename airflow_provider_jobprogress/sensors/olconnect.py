"""Sensor for an OL Connect All-In-One operation (job_id = operationId)."""

from __future__ import annotations

from typing import ClassVar

from airflow_provider_jobprogress.sensors.job_progress import JobProgressSensor


class OLConnectOperationSensor(JobProgressSensor):
    """Wait for an OL Connect All-In-One operation (job_id = operationId).

    Every parameter and outcome is described on ``JobProgressSensor``.
    """

    hook_class_path: ClassVar[str | None] = "airflow_provider_jobprogress.hooks.olconnect.OLConnectHook"
    default_conn_id: ClassVar[str | None] = "olconnect_default"
