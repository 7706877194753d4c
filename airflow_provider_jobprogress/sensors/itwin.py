"""Sensor for an iTwin reality-data job (job_id = job id)."""

from __future__ import annotations

from typing import ClassVar

from airflow_provider_jobprogress.sensors.job_progress import JobProgressSensor


class ITwinJobSensor(JobProgressSensor):
    """Wait for an iTwin reality-data job (job_id = job id).

    Every parameter and outcome is described on ``JobProgressSensor``.
    """

    hook_class_path: ClassVar[str | None] = "airflow_provider_jobprogress.hooks.itwin.ITwinHook"
    default_conn_id: ClassVar[str | None] = "itwin_default"
