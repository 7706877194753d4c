"""OL Connect emulator: login, All-In-One submit, getProgress, getOperations, results, cancel, File Store download.

Decisions where the OL Connect docs are silent (shared with /work/shared/vendors/README.md):
- A failed operation: getProgress answers 500 with a JSON Error body carrying the scenario's message and
  the operation id as `parameter`. A cancelled one (by the vendor side or through /cancel) answers 500
  with a JSON Error whose message contains "cancelled".
- A finished operation leaves the active list `retention` seconds after it ended: getProgress then answers
  404 (JSON Error), while getResult/getResultTxt/getManagedResult keep working.
- getResult/getResultTxt/getManagedResult before the operation ended: 500 JSON Error "... has not
  completed yet"; after a failure or cancellation: 500 with the same message getProgress gave.
- getResult with one output streams the file; with several it answers the absolute paths
  (/opt/olconnect/output/<id>/out_<n>.pdf), one per line, as application/octet-stream.
- getManagedResult answers one File Store id per output, one per line (text/plain); each id downloads
  with GET /rest/serverengine/filestore/file/{fileId}. For a configuration with `outputcreation.createOnly`
  it answers JSON `{"identifier": <folder id>, "files": ["out_1.pdf", ...]}` (what Upland's own client
  parses), each file downloading with GET /rest/serverengine/filestore/file/{folderId}/{name}; the folder
  as a whole (a zip on a real server) is not emulated (404).
- With `"returnIdInHeader": true` in the configuration, getResult, getResultTxt and getManagedResult carry
  X-Data-Set-ID, X-Content-Set-ID, X-Job-Set-ID (numbers) and X-Result-Type.
- A call without any credentials: 401 with `WWW-Authenticate: BASIC` and no body.
- Expired token: 401 JSON Error "Authentication token has expired" without WWW-Authenticate (that header
  only ever means "no credentials were sent"); unknown token or wrong Basic credentials: 403 JSON Error.
- /cancel on a finished operation answers 204 and changes nothing (cancel is only a request).
- Transient failures (scenario `flaky`) are a plain-text 503 without a JSON Error body; `rate_limit`
  answers a plain 429 with Retry-After, though no rate limit is documented.
- A quota (`VendorEmulator.set_quota`, none by default; OL Connect runs on the customer's server and documents
  no limit) stands for a limit in front of that server: it counts every call to the one server, login
  included, and answers past it a plain 429 with Retry-After (no JSON Error body).
- Outcomes soft_error/code_exception fail like "fail"; "immediate" succeeds like "succeed".
- getOperations ("Get All Operations", the cookbook's "JSON Operations List"): every operation still
  running, as `{id, type: "PrintRestService", subTask, startTime (ms since the epoch, UTC), progress}`;
  ended ones (done, failed, cancelled) are not listed. `subTask` names the All-In-One step the operation
  is in ("Data Mapping", "Content Creation", "Job Creation", "Output Creation", the steps its
  configuration asked for; the docs give no list of values), with `template` beside "Content Creation"
  when the configuration named one. A listing reads each operation it lists as getProgress reads one:
  a job that moves a step per read (no `duration`) moves a step per listing, and once it ended it is no
  longer listed, so one getProgress then tells done from failed. Per-job scenario gates (`rate_limit`,
  `flaky`, `garbage`) strike getProgress only, not the listing.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any
from urllib.parse import unquote

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

VENDOR = "olconnect"
BASE = "/rest/serverengine"
PRINT = f"{BASE}/workflow/print"
PREFIXES = (BASE,)
USER = "ol-admin"
PASSWORD = "secret"  # noqa: S105 - the documented factory default of OL Connect server security
VERSION = "2025.2.0.12345"
STEP_KEYS = ("datamining", "contentcreation", "jobcreation", "outputcreation")
#: the JSON Operations List's `subTask` for each All-In-One step (the cookbook's example says "Content Creation")
SUBTASKS = dict(zip(STEP_KEYS, ("Data Mapping", "Content Creation", "Job Creation", "Output Creation"), strict=True))
#: the JSON Operations List's `type` of an All-In-One operation
OPERATION_TYPE = "PrintRestService"
OUTPUT_DIR = "/opt/olconnect/output"


def error(status: int, message: str, parameter: str = "") -> Reply:
    """OL Connect's JSON Error structure."""
    return Reply.json(status, {"error": {"status": status, "message": message, "parameter": parameter}})


def _credentials_required() -> Reply:
    return Reply(401, headers={"WWW-Authenticate": "BASIC"})


def _login(request: Request, state: EmulatorState) -> Reply:
    credentials = basic_credentials(request)
    if credentials is None:
        return _credentials_required()
    if credentials != (USER, state.secret("olconnect_password")):
        return error(401, "Invalid user name or password")
    reply = Reply.text(200, state.issue_token(VENDOR))
    reply.headers["Token-Expires-In"] = str(state.token_ttl)
    return reply


def _denied(request: Request, state: EmulatorState) -> Reply | None:
    """None when the request may proceed, else the vendor's 401/403 answer."""
    if not state.olconnect_security:
        return None
    token = request.header("auth_token")
    if token is not None:
        status = state.token_status(VENDOR, token)
        if status == "valid":
            return None
        if status == "expired":
            return error(401, "Authentication token has expired")
        return error(403, "Invalid authentication token")
    credentials = basic_credentials(request)
    if credentials is None:
        return _credentials_required()
    return (
        None
        if credentials == (USER, state.secret("olconnect_password"))
        else error(403, "Invalid user name or password")
    )


def _not_found(job_id: str) -> Reply:
    return error(404, f"Operation {job_id} not found", job_id).for_job(job_id)


def _links(job_id: str) -> str:
    return ", ".join(
        f'<{PRINT}/{action}/{job_id}>; rel="{rel}"'
        for action, rel in (("getProgress", "progress"), ("getResult", "result"), ("cancel", "cancel"))
    )


def _submit(request: Request, state: EmulatorState) -> Reply:
    try:
        config = request.json()
    except ValueError:
        return error(400, "Invalid All-In-One configuration: the body is not JSON")
    if not isinstance(config, dict) or not any(key in config for key in STEP_KEYS):
        return error(400, f"Invalid All-In-One configuration: no step among {', '.join(STEP_KEYS)}")
    datamining = config.get("datamining")
    if isinstance(datamining, dict) and datamining.get("identifier") == "missing":
        return error(400, "Data file 'missing' not found in File Store", "missing")
    scenario = state.choose_scenario(VENDOR, request.header(SCENARIO_HEADER), config.get("emulator"))
    output = config.get("outputcreation")
    content = config.get("contentcreation")
    template = content.get("config") if isinstance(content, dict) else None
    details = {
        "create_only": isinstance(output, dict) and output.get("createOnly") is True,
        "return_ids": config.get("returnIdInHeader") is True,
        "subtasks": [SUBTASKS[key] for key in STEP_KEYS if key in config],
        "template": template if isinstance(template, str) else None,
    }
    job = Job(VENDOR, scenario.job_id or str(uuid.uuid4()), scenario, result_count=scenario.outputs, details=details)
    job.submit(time.monotonic())
    state.add_job(job)
    reply = Reply.empty(202).for_job(job.job_id).submitted(scenario)
    reply.headers.update({"operationId": job.job_id, "Link": _links(job.job_id)})
    return reply


def _garbage(mode: str) -> Reply:
    common = common_garbage(mode)
    if common is not None:
        return common
    if mode == "malformed":
        return Reply.text(200, '{"error": {"status": 50', "application/json")
    return Reply.text(200, "abc" if mode == "nonnumeric" else "pending")


def _gated(job: Job) -> Reply | None:
    gate = job.gate()
    if gate == "rate_limited":
        return rate_limited(job.scenario)
    if gate == "unavailable":
        return unavailable()
    if gate == "garbage":
        assert job.scenario.garbage is not None
        return _garbage(job.scenario.garbage)
    return None


def _ended_answer(job: Job, now: float) -> Reply | None:
    """The 500 JSON Error of a failed or cancelled operation, else None."""
    state = job.state(now)
    if state == "failed":
        return error(500, job.scenario.message or f"Operation {job.job_id} failed", job.job_id)
    if state == "cancelled":
        return error(500, f"Operation {job.job_id} was cancelled", job.job_id)
    return None


def _progress(request: Request, state: EmulatorState, job_id: str) -> Reply:
    now = time.monotonic()
    with state.lock:
        job = state.job(VENDOR, job_id)
        finished = None if job is None else job.finished_at(now)
        if job is None or (finished is not None and now - finished > state.retention):
            return _not_found(job_id)
        reply = _gated(job)
        if reply is None:
            job.advance(now)
            reply = _ended_answer(job, now)
        if reply is None:
            reply = Reply.text(200, "done" if job.state(now) == "succeeded" else str(job.percent(now)))
    return reply.for_job(job_id)


def _operations(request: Request, state: EmulatorState) -> Reply:
    """Get All Operations: the JSON Operations List of the operations still running (read, so advanced)."""
    now = time.monotonic()
    listed = []
    with state.lock:
        for job in state.jobs.values():
            if job.vendor != VENDOR or job.state(now) != "running":
                continue
            job.advance(now)
            if job.state(now) == "running":
                listed.append(_operation(job, now))
    return Reply.json(200, listed)


def _operation(job: Job, now: float) -> dict[str, Any]:
    assert job.started is not None
    subtask = spread(job.stage(now), job.scenario.steps, job.details["subtasks"])
    operation: dict[str, Any] = {
        "id": job.job_id,
        "type": OPERATION_TYPE,
        "subTask": subtask,
        "startTime": int(job.wall(job.started) * 1000),
        "progress": job.percent(now),
    }
    if subtask == SUBTASKS["contentcreation"] and job.details["template"]:
        operation["template"] = job.details["template"]
    return operation


def _finished_job(state: EmulatorState, job_id: str) -> Job | Reply:
    """The succeeded job, or the error answer a result call gets."""
    now = time.monotonic()
    with state.lock:
        job = state.job(VENDOR, job_id)
        if job is None:
            return _not_found(job_id)
        ended = _ended_answer(job, now)
        if ended is not None:
            return ended.for_job(job_id)
        if job.state(now) != "succeeded":
            return error(500, f"Operation {job_id} has not completed yet", job_id).for_job(job_id)
        return job


def _file_names(job: Job) -> list[str]:
    return [f"out_{n}.pdf" for n in range(1, job.result_count + 1)]


def _paths(job: Job) -> str:
    return "\n".join(
        job.scenario.name(n - 1, f"{OUTPUT_DIR}/{job.job_id}/{name}") for n, name in enumerate(_file_names(job), 1)
    )


def _with_set_ids(reply: Reply, state: EmulatorState, job: Job) -> Reply:
    """Add the X-…-Set-ID headers when the configuration asked for them (returnIdInHeader)."""
    if job.details.get("return_ids"):
        with state.lock:
            base = job.details.setdefault("set_base", 100 + 3 * len(state.jobs))
        reply.headers.update(
            {
                "X-Data-Set-ID": str(base),
                "X-Content-Set-ID": str(base + 1),
                "X-Job-Set-ID": str(base + 2),
                "X-Result-Type": "Job-Set-ID",
            }
        )
    return reply


def _result(request: Request, state: EmulatorState, job_id: str) -> Reply:
    job = _finished_job(state, job_id)
    if isinstance(job, Reply):
        return job
    if job.result_count == 1:
        return _with_set_ids(state.download(job, 0, "application/octet-stream"), state, job)
    return _with_set_ids(Reply.text(200, _paths(job), "application/octet-stream").for_job(job_id), state, job)


def _result_txt(request: Request, state: EmulatorState, job_id: str) -> Reply:
    job = _finished_job(state, job_id)
    if isinstance(job, Reply):
        return job
    return _with_set_ids(Reply.text(200, _paths(job)).for_job(job_id), state, job)


def _managed_result(request: Request, state: EmulatorState, job_id: str) -> Reply:
    job = _finished_job(state, job_id)
    if isinstance(job, Reply):
        return job
    with state.lock:
        ids: list[str] = job.details.setdefault("managed_ids", [])
        if not ids:
            # createOnly: one File Store folder holding the files (index -1 marks the folder)
            indexes = [-1] if job.details["create_only"] else list(range(job.result_count))
            for index in indexes:
                file_id = str(1000 + len(state.managed_files))
                state.managed_files[file_id] = (job_id, index)
                ids.append(file_id)
    if job.details["create_only"]:
        reply = Reply.json(200, {"identifier": int(ids[0]), "files": _file_names(job)})
    else:
        reply = Reply.text(200, "\n".join(ids))
    return _with_set_ids(reply.for_job(job_id), state, job)


def _filestore_file(request: Request, state: EmulatorState, file_id: str, rel_path: str | None = None) -> Reply:
    with state.lock:
        target = state.managed_files.get(file_id)
    job = None if target is None else state.job(VENDOR, target[0])
    if target is None or job is None:
        return error(404, f"Managed file {file_id} not found", file_id)
    index = target[1]
    rel_path = None if rel_path is None else unquote(rel_path)
    if index < 0:  # a folder: only the files in it are served
        names = _file_names(job)
        if rel_path is None or rel_path not in names:
            return error(404, f"Managed directory {file_id} has no file {rel_path!r}", file_id)
        index = names.index(rel_path)
    elif rel_path is not None:
        return error(404, f"Managed file {file_id} is not a directory", file_id)
    return state.download(job, index, "application/octet-stream")


def _cancel(request: Request, state: EmulatorState, job_id: str) -> Reply:
    now = time.monotonic()
    with state.lock:
        job = state.job(VENDOR, job_id)
        if job is None:
            return _not_found(job_id)
        if job.finished_at(now) is None:
            job.cancel(now)
    return Reply.empty(204).for_job(job_id)


def _handshake(request: Request, state: EmulatorState) -> Reply:
    return Reply.text(200, "All-In-One service available")


def _version(request: Request, state: EmulatorState) -> Reply:
    return Reply.text(200, VERSION)


_ID = "([^/]+)"
ROUTES: tuple[Route, ...] = (
    ("GET", re.compile(PRINT), _handshake),
    ("GET", re.compile(f"{PRINT}/version"), _version),
    ("POST", re.compile(f"{PRINT}/submit"), _submit),
    ("GET", re.compile(f"{PRINT}/getOperations"), _operations),
    ("GET", re.compile(f"{PRINT}/getProgress/{_ID}"), _progress),
    ("POST", re.compile(f"{PRINT}/getResult/{_ID}"), _result),
    ("POST", re.compile(f"{PRINT}/getResultTxt/{_ID}"), _result_txt),
    ("POST", re.compile(f"{PRINT}/getManagedResult/{_ID}"), _managed_result),
    ("POST", re.compile(f"{PRINT}/cancel/{_ID}"), _cancel),
    ("GET", re.compile(f"{BASE}/filestore/file/{_ID}(?:/(.+))?"), _filestore_file),
)


def quota_key(request: Request, state: EmulatorState) -> str | None:
    """Every call counts against the one server's quota."""
    return ""


def over_quota(refusal: QuotaRefusal) -> Reply:
    return too_many_requests(refusal.retry_after)


def handle(request: Request, state: EmulatorState) -> Reply:
    """Answer one request under /rest/serverengine."""
    if request.path == f"{BASE}/authentication/login" and request.method == "POST":
        return _login(request, state)
    denied = _denied(request, state)
    if denied is not None:
        return denied
    return route(request, state, ROUTES) or Reply.text(404, "Not Found")
