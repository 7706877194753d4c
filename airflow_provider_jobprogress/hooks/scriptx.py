"""Hook for MeadCo ScriptX.Services PrintPdf jobs (connection type ``scriptx``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from airflow_provider_jobprogress.hooks.base import JobProgressHook, ui_field_behaviour
from airflow_provider_jobprogress.vendors.scriptx import ScriptXApi


class ScriptXHook(JobProgressHook[ScriptXApi]):
    """Print PDFs with ScriptX.Services, follow the job and download the printed PDF.

    The connection holds the server (Cloud by default), the license GUID as password, and extras
    ``variant`` (``cloud``, ``on_premise``, ``windows_pc``), ``meadroid_path`` (sent as ``X-Meadroid-Path``,
    as MeadCo's client sends its page URL: cloud licenses are bound to domains), ``verify`` and ``ca_bundle``.
    PrintPdf jobs cannot be cancelled: ``cancel`` raises ``OperationNotSupportedError`` and sends nothing.

    A print the service finished when it was submitted (status 4, no job identifier) gets a job id of our
    own (``scriptx-done-at-submit-…``): its progress is SUCCEEDED without a call, it has no file output.
    """

    conn_type: ClassVar[str] = "scriptx"
    default_conn_name: ClassVar[str] = "scriptx_default"
    hook_name: ClassVar[str] = "MeadCo ScriptX.Services"
    api_class = ScriptXApi
    #: Airflow below 3.2 reads only a hook's own method (3.2+ reads the provider info)
    get_ui_field_behaviour = classmethod(ui_field_behaviour)

    def submit(
        self,
        document: str,
        *,
        description: str | None = None,
        device: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        """Print a PDF (a URL or a ``data:application/pdf;base64,...`` URL); returns the job token (or, for a
        print done at once, our ``scriptx-done-at-submit-…`` id).

        ``device`` and ``settings`` are the vendor's PrintPdfDescription objects (printerName,
        printToFileName, copies, ...; pageRange, orientation, ...); ``extra`` adds other top-level keys.
        """
        body: dict[str, Any] = {"document": document, **extra}
        if description is not None:
            body["description"] = description
        if device is not None:
            body["device"] = dict(device)
        if settings is not None:
            body["settings"] = dict(settings)
        return self.session.run(self.api.submit(body))
