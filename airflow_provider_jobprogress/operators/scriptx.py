"""Print a PDF with ScriptX.Services."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from airflow_provider_jobprogress.operators.submit import JobSubmitOperator


class ScriptXPrintPdfOperator(JobSubmitOperator):
    """Print a PDF (``POST /api/v1/printPdf/print``); the job token is the XCom.

    :param document: URL of the PDF, or a ``data:application/pdf;base64,...`` URL; templated
    :param description: a job description shown by the service
    :param device: the vendor's device settings (``printerName``, ``printToFileName``, ``paperSizeName``,
        ``copies``, ``duplex``, ...); templated
    :param settings: the vendor's print settings (``pageRange``, ``orientation``, ``pageScaling``, ...);
        templated
    """

    template_fields: Sequence[str] = ("document", "description", "device", "settings", "conn_id")
    hook_class_path: ClassVar[str | None] = "airflow_provider_jobprogress.hooks.scriptx.ScriptXHook"
    default_conn_id: ClassVar[str | None] = "scriptx_default"

    def __init__(
        self,
        *,
        document: str,
        description: str | None = None,
        device: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.document = document
        self.description = description
        self.device = device
        self.settings = settings

    def submit_job(self, context: Any) -> str:
        return str(
            self.hook.submit(  # type: ignore[attr-defined]
                self.document, description=self.description, device=self.device, settings=self.settings
            )
        )
