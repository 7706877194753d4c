"""ScriptX.Services emulator (Cloud flavour): service description, licensing, PrintPdf print/status/download.

Decisions where the MeadCo docs are silent (shared with /work/shared/vendors/README.md):
- print answers HTTP 200 (the mock's 202 is not authoritative) with {status, jobIdentifier, message}:
  2 QueuedToFile (Cloud prints to file only); outcome soft_error → status 3 with an empty jobIdentifier
  and no job kept; immediate → status 4 with a token whose job is already complete (download works);
  done_at_submit → status 4 with an empty jobIdentifier and no job kept (done at once, nothing to follow).
- Body keys are read in any case, as the ASP.NET service binds them: MeadCo's own client posts
  `Document`, `Description`, `Settings`, `Device` (and `ProtectedContentAccess`, `UserData`, ignored).
- X-Meadroid-Path (MeadCo's client sends its page URL on every call): when present, its host must be one of
  the license's domains, else 401 "Unauthorized - the license is not valid for this domain"; a call
  without it is accepted (server-side callers).
- Intermediate status values are spread over the scenario's steps: 1 Queued, 2 Starting, 3 Downloading,
  4 Downloaded, 8 PrintingPdf (first and last always shown when steps >= 2); the end is 6 Completed.
  Once a download has been served whole the status answers 100 Collected and the output is gone:
  a later download answers 404 "Job output already collected".
- fail → -1 ItemError, cancel → -2 Abandoned, code_exception → 101 CodeException; `message` carries the
  scenario's message (or a default naming the job).
- Download before completion, or of a failed job: 404 text "Job output not available". The download
  needs no Authorization header (MeadCo's own client opens it without one) and accepts an optional
  trailing /<fileName> segment, as that client sends.
- Errors are plain text like MeadCo's mock: 401 "Unauthorized" / "Unauthorized - unknown license",
  404 "Job not found", 400 "PDF print failed: ...". flaky → plain 503, rate_limit → plain 429 + Retry-After.
- licensing/ping without licenseGuid answers 200 {}; with an unknown one 404 "License not found".
- There is no cancel endpoint for PDF jobs; none is emulated.
- A quota (`VendorEmulator.set_quota`, none by default; MeadCo documents no limit) stands for a limit in front
  of the service: it counts every call to the one server and answers past it a plain 429 with Retry-After.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from .model import (
    SCENARIO_HEADER,
    EmulatorState,
    Job,
    QuotaRefusal,
    Reply,
    Request,
    Route,
    basic_credentials,
    common_garbage,
    rate_limited,
    route,
    spread,
    too_many_requests,
    unavailable,
)

VENDOR = "scriptx"
PREFIXES = ("/api",)
PDF = "/api/v1/printPdf"
LICENSE_GUID = "0d8b9b4e-6a3f-4c1e-9f57-2b7c8e4a1d63"
PDF_HEADER = b"%PDF-1.7\n"
RUNNING_STATUSES = (1, 2, 3, 4, 8)  # Queued, Starting, Downloading, Downloaded, PrintingPdf
COMPLETED, COLLECTED, ITEM_ERROR, ABANDONED, CODE_EXCEPTION = 6, 100, -1, -2, 101
LICENSE_OPTIONS = {
    "basicHtmlPrinting": True,
    "advancedPrinting": True,
    "enhancedFormatting": True,
    "printPdf": True,
    "printHtml": True,
    "printDirect": False,
}
VERSION = {"major": 2, "minor": 23, "build": 1, "revision": 0, "majorRevision": 0, "minorRevision": 0}


LICENSE_DOMAINS = ("127.0.0.1", "localhost")


def _unauthorized(request: Request, state: EmulatorState) -> Reply | None:
    credentials = basic_credentials(request)
    if credentials is None:
        return Reply.text(401, "Unauthorized")
    if credentials[0] != state.secret("scriptx_license"):
        return Reply.text(401, "Unauthorized - unknown license")
    path = request.header("X-Meadroid-Path")
    if path is not None and (urlsplit(path).hostname or "") not in LICENSE_DOMAINS:
        return Reply.text(401, "Unauthorized - the license is not valid for this domain")
    return None


def _field(data: dict[str, Any], name: str) -> Any:
    """``data[name]`` with the key in any case, as ASP.NET model binding reads JSON."""
    wanted = name.lower()
    return next((value for key, value in data.items() if key.lower() == wanted), None)


def _describe(request: Request, state: EmulatorState) -> Reply:
    return Reply.json(
        200,
        {
            "serviceClass": 1,
            "currentAPIVersion": "v1",
            "serviceVersion": VERSION,
            "serverVersion": {**VERSION, "major": 10, "minor": 3},
            "serviceUpgrade": None,
            "availablePrinters": [],
            "printHTML": True,
            "printPDF": True,
            "printDIRECT": False,
        },
    )


def _license(request: Request, state: EmulatorState) -> Reply:
    return Reply.json(
        200,
        {
            "guid": LICENSE_GUID,
            "company": "JobProgress Emulator",
            "companyHomePage": "http://127.0.0.1/",
            "from": "2025-01-01T00:00:00Z",
            "to": "2099-12-31T23:59:59Z",
            "mode": 1,
            "revision": 1,
            "domains": list(LICENSE_DOMAINS),
            "options": LICENSE_OPTIONS,
        },
    )


def _ping(request: Request, state: EmulatorState) -> Reply:
    guid = request.query.get("licenseGuid")
    if guid is None:
        return Reply.json(200, {})
    return (
        Reply.json(200, LICENSE_OPTIONS)
        if guid == state.secret("scriptx_license")
        else Reply.text(404, "License not found")
    )


def _print(request: Request, state: EmulatorState) -> Reply:
    try:
        body = request.json()
    except ValueError:
        return Reply.text(400, "PDF print failed: the request body is not JSON")
    document = _field(body, "document") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(document, str) or not document:
        return Reply.text(400, "PDF print failed: no document")
    scenario = state.choose_scenario(VENDOR, request.header(SCENARIO_HEADER), body.get("emulator"))
    if scenario.outcome == "soft_error":
        message = scenario.message or "PDF print failed: the document could not be processed"
        return Reply.json(200, {"status": 3, "jobIdentifier": "", "message": message})
    if scenario.outcome == "done_at_submit":
        return Reply.json(200, {"status": 4, "jobIdentifier": "", "message": ""})
    device = _field(body, "device")
    named = _field(device, "printToFileName") if isinstance(device, dict) else None
    file_name = str(named or "output.pdf")
    job_id = scenario.job_id or uuid.uuid4().hex
    job = Job(VENDOR, job_id, scenario, result_prefix=PDF_HEADER, details={"fileName": file_name})
    now = time.monotonic()
    job.submit(now)
    if scenario.outcome == "immediate":
        job.complete_now(now)
    state.add_job(job)
    status = 4 if scenario.outcome == "immediate" else 2
    reply = Reply.json(200, {"status": status, "jobIdentifier": job.job_id, "message": ""}).for_job(job.job_id)
    return reply.submitted(scenario)


def _status_code(job: Job, now: float) -> tuple[int, str]:
    state = job.state(now)
    if state == "running":
        return spread(job.stage(now), job.scenario.steps, RUNNING_STATUSES), ""
    if state == "succeeded":
        return (COLLECTED if job.collected else COMPLETED), ""
    if state == "cancelled":
        return ABANDONED, job.scenario.message or f"Job {job.job_id} was abandoned"
    code = CODE_EXCEPTION if job.scenario.outcome == "code_exception" else ITEM_ERROR
    return code, job.scenario.message or f"Job {job.job_id} failed"


def _garbage(mode: str, job_id: str) -> Reply:
    common = common_garbage(mode)
    if common is not None:
        return common
    if mode == "malformed":
        return Reply.text(200, '{"status": 2, "message": "', "application/json")
    status: Any = "abc" if mode == "nonnumeric" else 42
    return Reply.json(200, {"status": status, "message": "", "jobIdentifier": job_id})


def _gated(job: Job) -> Reply | None:
    gate = job.gate()
    if gate == "rate_limited":
        return rate_limited(job.scenario)
    if gate == "unavailable":
        return unavailable()
    if gate == "garbage":
        assert job.scenario.garbage is not None
        return _garbage(job.scenario.garbage, job.job_id)
    return None


def _status(request: Request, state: EmulatorState, token: str) -> Reply:
    now = time.monotonic()
    with state.lock:
        job = state.job(VENDOR, token)
        if job is None:
            return Reply.text(404, "Job not found").for_job(token)
        reply = _gated(job)
        if reply is None:
            job.advance(now)
            status, message = _status_code(job, now)
            reply = Reply.json(200, {"status": status, "message": message, "jobIdentifier": token})
    return reply.for_job(token)


def _download(request: Request, state: EmulatorState, token: str, _file_name: str | None) -> Reply:
    now = time.monotonic()
    with state.lock:
        job = state.job(VENDOR, token)
        if job is None:
            return Reply.text(404, "Job not found").for_job(token)
        if job.state(now) != "succeeded":
            return Reply.text(404, "Job output not available").for_job(token)
        if job.collected:
            return Reply.text(404, "Job output already collected").for_job(token)
        file_name = job.scenario.name(0, job.details["fileName"])
    headers = {"Content-Disposition": f'attachment; filename="{file_name}"'} if file_name else {}
    return state.download(job, 0, "application/pdf", headers)


ROUTES: tuple[Route, ...] = (
    ("POST", re.compile(f"{PDF}/print"), _print),
    ("GET", re.compile(f"{PDF}/status/([^/]+)"), _status),
    ("GET", re.compile("/api/v1/licensing"), _license),
)
OPEN_ROUTES: tuple[Route, ...] = (
    ("GET", re.compile("/api"), _describe),
    ("GET", re.compile("/api/v1/licensing/ping"), _ping),
    ("GET", re.compile(f"{PDF}/download/([^/]+)(?:/([^/]+))?"), _download),
)


def quota_key(request: Request, state: EmulatorState) -> str | None:
    """Every call counts against the one server's quota."""
    return ""


def over_quota(refusal: QuotaRefusal) -> Reply:
    return too_many_requests(refusal.retry_after)


def handle(request: Request, state: EmulatorState) -> Reply:
    """Answer one request under /api."""
    reply = route(request, state, OPEN_ROUTES)
    if reply is not None:
        return reply
    denied = _unauthorized(request, state)
    if denied is not None:
        return denied
    return route(request, state, ROUTES) or Reply.text(404, "Not Found")
