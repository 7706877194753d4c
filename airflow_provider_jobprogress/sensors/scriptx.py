"""Sensor for a ScriptX.Services PrintPdf job (job_id = job token)."""

from __future__ import annotations

from typing import ClassVar

from airflow_provider_jobprogress.sensors.job_progress import JobProgressSensor


class ScriptXJobSensor(JobProgressSensor):
    """Wait for a ScriptX.Services PrintPdf job (job_id = job token).

    Every parameter and outcome is described on ``JobProgressSensor``.
    """

    hook_class_path: ClassVar[str | None] = "airflow_provider_jobprogress.hooks.scriptx.ScriptXHook"
    default_conn_id: ClassVar[str | None] = "scriptx_default"
