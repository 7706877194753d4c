"""MeadCo ScriptX.Services PrintPdf jobs: endpoints, license auth and JobStatus codes, as pure flows.

Decisions where the vendor docs are silent (see shared/vendors/README.md): status 100 (Collected) and
102 (CompletedWait) mean SUCCEEDED (100 says the output was already downloaded); any code not on the
vendor page is an error that names it. PrintPdf has no cancel: ``cancel`` says so and sends nothing.

A print answered with status 4 (OK) and no job identifier was done at once: MeadCo's own client stops
there ("printed ok, no further information"). We still need a job id for XCom, sensors and retries, so
``submit`` returns one of our own (``DONE_AT_SUBMIT`` + a random part) that ``progress`` knows as
SUCCEEDED without asking the server, and whose ``results`` say there is no file output.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from functools import cached_property
from typing import Any
from urllib.parse import quote

from airflow_provider_jobprogress.core.errors import (
    ConfigurationError,
    JobFailedError,
    OperationNotSupportedError,
    VendorResponseError,
)
from airflow_provider_jobprogress.core.model import JobProgress, JobState
from airflow_provider_jobprogress.core.policies import PollPolicy, RequestRetry
from airflow_provider_jobprogress.core.protocol import ConnectionFields, Flow, Request, ResultPart, Token, VendorApi

VARIANTS = ("cloud", "on_premise", "windows_pc")
CLOUD_HOST = "scriptxservices.meadroid.com"
WINDOWS_PC_PORT = 41191
PDF = "/api/v1/printPdf"

#: JobStatus code -> (name, state, message for a person)
JOB_STATUS: dict[int, tuple[str, JobState]] = {
    0: ("NotStarted", JobState.QUEUED),
    1: ("Queued", JobState.QUEUED),
    2: ("Starting", JobState.RUNNING),
    3: ("Downloading", JobState.RUNNING),
    4: ("Downloaded", JobState.RUNNING),
    5: ("Printing", JobState.RUNNING),
    6: ("Completed", JobState.SUCCEEDED),
    7: ("Paused", JobState.RUNNING),
    8: ("PrintingPdf", JobState.RUNNING),
    100: ("Collected", JobState.SUCCEEDED),
    101: ("CodeException", JobState.FAILED),
    102: ("CompletedWait", JobState.SUCCEEDED),
    -1: ("ItemError", JobState.FAILED),
    -2: ("Abandoned", JobState.CANCELLED),
}
#: what status 100 (Collected) means for a fetch
COLLECTED_MESSAGE = "output already collected: the PDF was downloaded before and is gone from the server"
#: PrintRequestStatus codes answered by the print call
QUEUED_TO_DEVICE, QUEUED_TO_FILE, SOFT_ERROR, OK, NOT_SET = 1, 2, 3, 4, 0
#: our job id for a print the service finished when it was submitted (status 4, no job identifier)
DONE_AT_SUBMIT = "scriptx-done-at-submit-"
#: the header MeadCo's client sends with its page URL: cloud licenses are bound to the domains they were issued for
MEADROID_PATH = "X-Meadroid-Path"


class ScriptXApi(VendorApi):
    """The PrintPdf area of a ScriptX.Services server (Cloud, On-Premise or Windows PC)."""

    vendor = "ScriptX.Services"
    # MeadCo's own client polls status every second; PDF jobs finish in seconds.
    default_poll_policy = PollPolicy.exponential(2, factor=1.5, max_interval=30)

    def __init__(
        self,
        base_url: str,
        *,
        license_guid: str | None = None,
        variant: str = "cloud",
        meadroid_path: str | None = None,
        request_retry: RequestRetry | None = None,
        verify: bool | str = True,
    ) -> None:
        super().__init__(request_retry=request_retry, verify=verify)
        if variant not in VARIANTS:
            raise ConfigurationError(
                self.vendor, None, f"{variant!r} is not one of {', '.join(VARIANTS)}", field="variant"
            )
        self.base_url = base_url.rstrip("/")
        self._license = license_guid or None
        self.variant = variant
        self.meadroid_path = meadroid_path or None

    @classmethod
    def from_connection(cls, conn: ConnectionFields, *, request_retry: RequestRetry | None = None) -> ScriptXApi:
        variant = conn.choice(cls.vendor, "variant", VARIANTS, "cloud")
        local = variant == "windows_pc"
        base_url = conn.service_url(
            cls.vendor,
            default_host="127.0.0.1" if local else CLOUD_HOST,
            default_scheme="http" if local else "https",
            default_port=WINDOWS_PC_PORT if local else None,
        )
        if variant == "cloud" and not conn.password:
            # Every Cloud call needs the license; without one the Test button would only read /api and pass.
            raise conn.problem(cls.vendor, "password", "the cloud variant needs the license GUID (as the password)")
        api = cls(
            base_url,
            license_guid=conn.password,
            variant=variant,
            meadroid_path=str(conn.extra.get("meadroid_path") or "") or None,
            request_retry=request_retry,
            verify=conn.tls_verify(),
        )
        api.from_fields(conn)
        return api

    def authorize(self, request: Request, token: object) -> Request:
        if self._license is None:
            return request  # On-Premise ignores the header; nothing to send
        return request.with_headers({"Authorization": "Basic " + self._basic_credentials})

    @cached_property
    def _basic_credentials(self) -> str:
        return base64.b64encode(f"{self._license}:".encode()).decode()

    def credentials(self, token: Token | None) -> tuple[str, ...]:
        # The license is masked by Airflow (the connection's password), not its base64 form.
        return () if self._license is None else (self._basic_credentials,)

    def _call(self, method: str, path: str, **kwargs: Any) -> Request:
        headers = {MEADROID_PATH: self.meadroid_path} if self.meadroid_path else {}
        return Request(method, self.base_url + path, headers=headers, **kwargs)

    # -- endpoints -------------------------------------------------------------------------------
    def check(self) -> Flow[str]:
        if self.variant == "on_premise" or self._license is None:
            response = yield from self.send(self._call("GET", "/api"), None, what="read the service description")
            data = self.parse_json(response, None, what="read the service description")
            version = data.get("serviceVersion") if isinstance(data, dict) else None
            return f"ScriptX.Services at {self.base_url}, service version {_version(version)}"
        response = yield from self.send(self._call("GET", "/api/v1/licensing"), None, what="check the license")
        data = self.parse_json(response, None, what="check the license")
        company = data.get("company") if isinstance(data, dict) else None
        return f"ScriptX.Services at {self.base_url}: license accepted" + (f" ({company})" if company else "")

    def submit(self, description: Mapping[str, Any]) -> Flow[str]:
        """POST a PrintPdfDescription; returns the job token to poll (or raises if refused at once)."""
        request = self._call("POST", f"{PDF}/print", json=dict(description), idempotent=False)
        response = yield from self.send(request, None, what="submit a PDF print")
        data = self.parse_json(response, None, what="submit a PDF print")
        status = self.require(data, "status", None, what="submit a PDF print")
        if isinstance(status, bool) or not isinstance(status, int):
            raise VendorResponseError(self.vendor, None, f"print answered a status that is not a code: {status!r}")
        job_id = str(data.get("jobIdentifier") or "") or None
        message = str(data.get("message") or "")
        if status in (QUEUED_TO_DEVICE, QUEUED_TO_FILE, OK) and job_id:
            return job_id
        if status == OK:
            return DONE_AT_SUBMIT + uuid.uuid4().hex
        if status in (SOFT_ERROR, NOT_SET):
            raise JobFailedError(self.vendor, job_id, f"print refused (status {status}): {message or 'no message'}")
        raise VendorResponseError(
            self.vendor, job_id, f"print answered status {status!r} without a job identifier to follow"
        )

    def progress(self, job_id: str) -> Flow[JobProgress]:
        if job_id.startswith(DONE_AT_SUBMIT):
            message = "printed when it was submitted (status 4 OK, no job identifier): nothing to follow"
            return JobProgress(self.vendor, job_id, JobState.SUCCEEDED, 100.0, step="Ok", message=message)
        what = "read job status"
        response = yield from self.send(self._call("GET", f"{PDF}/status/{quote(job_id, safe='')}"), job_id, what=what)
        data = self.parse_status_json(response, job_id, what=what)
        return parse_status(data, job_id)

    def cancel(self, job_id: str) -> Flow[None]:
        raise OperationNotSupportedError(
            self.vendor, job_id, "PrintPdf jobs cannot be cancelled (the API has no cancel for them); nothing was sent"
        )
        yield  # pragma: no cover

    def result_gone(self, progress: JobProgress) -> str | None:
        # 100 Collected: the PDF was downloaded whole before (the service serves it once)
        return COLLECTED_MESSAGE if progress.step == JOB_STATUS[100][0] else None

    def results(self, job_id: str) -> Flow[list[ResultPart]]:
        if job_id.startswith(DONE_AT_SUBMIT):
            raise OperationNotSupportedError(
                self.vendor,
                job_id,
                "the print was done when it was submitted (status 4 OK, no job identifier): there is no file "
                "output to download",
                hint="Print to a file (device printToFileName) on a service that queues it to fetch a PDF",
            )
        request = self._call("GET", f"{PDF}/download/{quote(job_id, safe='')}")
        # Unnamed: the download's Content-Disposition names it, else the job id with the PDF extension.
        return [ResultPart(request=request, content_type="application/pdf")]
        yield  # pragma: no cover


def parse_status(data: Any, job_id: str) -> JobProgress:
    """Map a JobStatus answer ``{status, message, jobIdentifier}`` to a ``JobProgress``."""
    vendor = ScriptXApi.vendor
    if not isinstance(data, dict) or "status" not in data:
        raise VendorResponseError(vendor, job_id, "job status answer has no 'status' field")
    code = data["status"]
    if isinstance(code, bool) or not isinstance(code, int) or code not in JOB_STATUS:
        raise VendorResponseError(vendor, job_id, f"unknown job status code {code!r} (not on the vendor's list)")
    name, state = JOB_STATUS[code]
    message = str(data.get("message") or "") or None
    if code == 100:
        message = COLLECTED_MESSAGE
    return JobProgress(vendor, job_id, state, step=name, message=message, raw=data)


def _version(value: Any) -> str:
    if isinstance(value, dict):
        return ".".join(str(value.get(k, 0)) for k in ("major", "minor", "build"))
    return str(value or "unknown")
