"""Create and submit an iTwin reality-data job."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from airflow_provider_jobprogress.operators.submit import JobSubmitOperator


class ITwinSubmitJobOperator(JobSubmitOperator):
    """Create a reality-data job from its specification and submit it; the job id is the XCom.

    :param specification: the job's create body (``name``, ``type``, ``inputs``, ``outputs``, ``options``
        for v1 APIs; ``type``, ``name``, ``specifications`` for Reality Modeling v2); ``iTwinId`` defaults
        to the connection's ``itwin_id``; templated
    """

    template_fields: Sequence[str] = ("specification", "conn_id")
    template_fields_renderers: ClassVar[dict[str, str]] = {"specification": "json"}
    hook_class_path: ClassVar[str | None] = "airflow_provider_jobprogress.hooks.itwin.ITwinHook"
    default_conn_id: ClassVar[str | None] = "itwin_default"

    def __init__(self, *, specification: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.specification = specification

    def submit_job(self, context: Any) -> str:
        return str(self.hook.submit(self.specification))  # type: ignore[attr-defined]
