"""Submit an OL Connect All-In-One operation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from airflow_provider_jobprogress.operators.submit import JobSubmitOperator


class OLConnectSubmitOperator(JobSubmitOperator):
    """Start an All-In-One operation from its JSON configuration; the operationId is the XCom.

    :param configuration: the All-In-One configuration (``datamining``, ``contentcreation``,
        ``jobcreation``, ``outputcreation``); templated
    """

    template_fields: Sequence[str] = ("configuration", "conn_id")
    template_fields_renderers: ClassVar[dict[str, str]] = {"configuration": "json"}
    hook_class_path: ClassVar[str | None] = "airflow_provider_jobprogress.hooks.olconnect.OLConnectHook"
    default_conn_id: ClassVar[str | None] = "olconnect_default"

    def __init__(self, *, configuration: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.configuration = configuration

    def submit_job(self, context: Any) -> str:
        return str(self.hook.submit(self.configuration))  # type: ignore[attr-defined]
