"""iTwin emulator: IMS token, Reality Analysis/Conversion v1 and Reality Modeling v2 jobs, read access, blobs.

Decisions where the Bentley docs are silent (shared with /work/shared/vendors/README.md):
- Token endpoint accepts client_id/client_secret in the form or as Basic auth (client_secret_basic, what
  requests-oauthlib sends). A missing scope grants `itwin-platform`; any other scope → invalid_scope.
- Bearer errors: no header → 401 HeaderNotFound; unknown token → 401 InvalidToken "... is invalid";
  expired token → 401 InvalidToken "... has expired" (both with WWW-Authenticate: Bearer).
- Accept: a missing, generic (*/*, application/json) or matching `application/vnd.bentley.itwin-platform.vN+json`
  is accepted (v1 for the v1 APIs and reality-management, v2 for reality-modeling); another explicit
  version → 406 {"error": {"code": "InvalidApiVersion", ...}}.
- A status poll is GET .../progress or GET .../jobs/{id}: both count for rate_limit/flaky/garbage and both
  advance a deterministic job one step. messages, readaccess and blob calls do not.
- v1: progress answers 200 only while the job is active; unsubmitted or ended → 404 ProgressNotFound.
  Steps: analysis Prepare_Step → Prepare_Production → Run_Production → Finalize; conversion Prepare_Files →
  Convert_Files → Upload_Files. An X-Emulator-Scenario header on the submitting PATCH replaces the scenario.
  PATCH to a state other than active/cancelled, or from a state that cannot move, → 422 InvalidChange.
- v2: create = submit, the 201 shows state "Active" (as the official SDK's fixture does). progress keeps
  answering after the end, with the terminal state (Success at 100). DELETE of a running job → 200 with
  "TerminatingOnCancel", "Cancelled" from the next poll on; of an ended job → 422 InvalidChange.
  On success `specifications.outputs` maps each requested output name to its reality data id.
- Garbage on job details: html/empty/malformed as on progress, unknown_status → state "weird";
  nonnumeric touches progress only (details carry no number).
- Results: every requested output is one reality data id = one blob container holding `outputs` blobs
  named output/part_<n>.bin. readaccess of a job that has not succeeded → 404 RealityDataNotFound.
  SAS URLs last one hour; the container list honours `prefix`. result index = output position *
  scenario.outputs + blob number.
- flaky → 503 {"error": {"code": "ServiceUnavailable", ...}}.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, quote
from xml.sax.saxutils import escape

from .model import (
    SCENARIO_HEADER,
    EmulatorState,
    Job,
    Reply,
    Request,
    Route,
    basic_credentials,
    common_garbage,
    iso,
    route,
    spread,
)

VENDOR = "itwin"
CLIENT_ID = "service-app-jobprogress-emulator"
CLIENT_SECRET = "emulator-client-secret-7f3a9c"  # noqa: S105 - a published test value, not a secret
ITWIN_ID = "3f6e8a2b-91c4-4d7e-a5b0-6c2d9e1f4a87"
SCOPE = "itwin-platform"
V1_APIS = {
    "realitydataanalysis": "InvalidRealityDataAnalysisRequest",
    "realityconversion": "InvalidRealityConversionRequest",
}
V2_API = "reality-modeling"
PREFIXES = (
    "/connect/token",
    "/realitydataanalysis",
    "/realityconversion",
    "/reality-modeling",
    "/reality-management",
    "/blob",
)
V1_STEPS = {
    "realitydataanalysis": ("Prepare_Step", "Prepare_Production", "Run_Production", "Finalize"),
    "realityconversion": ("Prepare_Files", "Convert_Files", "Upload_Files"),
}
V2_STATES = {"running": "Active", "succeeded": "Success", "failed": "Failed", "cancelled": "Cancelled"}
ACCEPT_VERSION = re.compile(r"application/vnd\.bentley\.itwin-platform\.(v\d+)\+json")
SAS_LIFETIME = 3600.0
RATE_LIMIT_MESSAGE = "The client sent more requests than allowed by this API for the current tier of the client."


def error(status: int, code: str, message: str, details: list[dict[str, str]] | None = None) -> Reply:
    """The iTwin Platform error response."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return Reply.json(status, {"error": body})


# -- IMS token --------------------------------------------------------------------------------------


def _token(request: Request, state: EmulatorState) -> Reply:
    form = {key: values[0] for key, values in parse_qs(request.body.decode("utf-8", "replace")).items()}
    if form.get("grant_type") != "client_credentials":
        return Reply.json(400, {"error": "unsupported_grant_type"})
    client = basic_credentials(request) or (form.get("client_id", ""), form.get("client_secret", ""))
    if client != (CLIENT_ID, state.secret("itwin_client_secret")):
        return Reply.json(400, {"error": "invalid_client"})
    if set(form.get("scope", SCOPE).split()) != {SCOPE}:
        return Reply.json(400, {"error": "invalid_scope"})
    payload = {
        "access_token": state.issue_token(VENDOR),
        "token_type": "Bearer",
        "expires_in": state.token_ttl,
        "scope": SCOPE,
    }
    reply = Reply.json(200, payload)
    reply.headers["Cache-Control"] = "no-store"
    return reply


def _denied(request: Request, state: EmulatorState) -> Reply | None:
    header = request.header("Authorization")
    if header is None:
        return error(401, "HeaderNotFound", "Header Authorization was not found in the request. Access denied.")
    scheme, _, token = header.partition(" ")
    status = state.token_status(VENDOR, token.strip()) if scheme.lower() == "bearer" else "unknown"
    if status == "valid":
        return None
    reply = error(401, "InvalidToken", f"The access token {'has expired' if status == 'expired' else 'is invalid'}.")
    reply.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return reply


def _wrong_version(request: Request, wanted: str) -> Reply | None:
    offered = ACCEPT_VERSION.findall(request.header("Accept") or "")
    if not offered or wanted in offered:
        return None
    return error(
        406,
        "InvalidApiVersion",
        f"API version {', '.join(offered)} is not supported here; send Accept: "
        f"application/vnd.bentley.itwin-platform.{wanted}+json.",
    )


# -- jobs shared ------------------------------------------------------------------------------------


def _job(state: EmulatorState, api: str, job_id: str) -> Job | None:
    job = state.job(VENDOR, job_id)
    return job if job is not None and job.details["api"] == api else None


def _job_not_found(job_id: str) -> Reply:
    return error(404, "JobNotFound", f"Requested job {job_id} is not available.").for_job(job_id)


def _limited(job: Job, gate: str | None) -> Reply | None:
    """The 429 or 503 a gated poll gets, else None."""
    if gate == "rate_limited":
        reply = error(429, "RateLimitExceeded", RATE_LIMIT_MESSAGE)
        reply.headers["Retry-After"] = str(job.scenario.retry_after)
        return reply
    if gate == "unavailable":
        return error(503, "ServiceUnavailable", "The service is temporarily unavailable. Try again later.")
    return None


def _garbage(mode: str) -> Reply:
    common = common_garbage(mode)
    if common is not None:
        return common
    if mode == "malformed":
        return Reply.text(200, '{"progress": {"percentage": 4', "application/json")
    if mode == "nonnumeric":
        return Reply.json(200, {"progress": {"percentage": "abc", "state": "active", "step": "Run_Production"}})
    return Reply.json(200, {"progress": {"percentage": 50, "state": "weird", "step": "Run_Production"}})


def _gated_progress(job: Job) -> Reply | None:
    """Count a progress poll; its 429/503/garbage answer, or None to answer normally."""
    gate = job.gate()
    if gate == "garbage":
        return _garbage(job.scenario.garbage or "")
    return _limited(job, gate)


def _gated_details(job: Job) -> Reply | None:
    """Count a job-details poll; unknown_status and nonnumeric are left to the details view (None)."""
    gate = job.gate()
    if gate == "garbage" and job.scenario.garbage in ("html", "empty", "malformed"):
        return _garbage(job.scenario.garbage)
    return _limited(job, gate)


def _poll(job: Job, now: float) -> None:
    # Garbage answers never move the job, whatever view they are drawn from.
    if job.scenario.garbage is None:
        job.advance(now)


def _register_outputs(state: EmulatorState, job: Job, names: list[str]) -> None:
    with state.lock:
        ids = []
        for position, _name in enumerate(names):
            reality_data_id = str(uuid.uuid4())
            state.reality_data[reality_data_id] = (job.job_id, position)
            ids.append(reality_data_id)
    job.details["reality_data_ids"] = ids
    job.result_count = len(names) * job.scenario.outputs


def _errors(job: Job) -> list[dict[str, Any]]:
    message = job.scenario.message or f"Job {job.job_id} failed."
    return [{"code": "JobFailed", "title": "Job failed", "message": message, "params": []}]


def _ended(job: Job, now: float) -> str | None:
    finished = job.finished_at(now)
    return None if finished is None else iso(job.wall(finished))


def _create_problems(body: Any, required: dict[str, type]) -> list[dict[str, str]]:
    if not isinstance(body, dict):
        return [{"code": "InvalidRequestBody", "message": "The request body must be a JSON object.", "target": ""}]
    problems = []
    for name, kind in required.items():
        if name not in body:
            problems.append({"code": "MissingRequiredProperty", "message": f"{name} is required.", "target": name})
        elif not isinstance(body[name], kind) or not body[name]:
            problems.append(
                {"code": "InvalidProperty", "message": f"{name} must be a non-empty {kind.__name__}.", "target": name}
            )
    return problems


def _output_names(outputs: Any) -> list[str]:
    if isinstance(outputs, dict):
        return [str(name) for name in outputs]
    return [str(name if not isinstance(name, dict) else name.get("type", "output")) for name in outputs]


# -- v1: realitydataanalysis / realityconversion ----------------------------------------------------


def _v1_state(job: Job, now: float) -> str:
    state = job.state(now)
    return {"running": "active", "succeeded": "success"}.get(state, state)


def _v1_view(job: Job, now: float, state_override: str | None = None) -> dict[str, Any]:
    d = job.details
    state = _v1_state(job, now)
    outputs: list[dict[str, str]] = [{"type": name} for name in d["outputs"]]
    if state == "success":
        outputs = [{"type": name, "id": rd} for name, rd in zip(d["outputs"], d["reality_data_ids"], strict=True)]
    view: dict[str, Any] = {
        "id": job.job_id,
        "name": d["name"],
        "type": d["type"],
        "state": state_override or state,
        "iTwinId": d["iTwinId"],
        "inputs": d["inputs"],
        "outputs": outputs,
        "options": d["options"],
        "createdDateTime": iso(job.created_at),
        "lastModifiedDateTime": iso(job.created_at if job.started is None else job.wall(job.started)),
        "email": f"{CLIENT_ID}@apps.imsoidc.bentley.com",
        "dataCenter": "East US",
    }
    if job.started is not None:
        view["executionInformation"] = _v1_execution(job, now, state)
    return view


def _v1_execution(job: Job, now: float, state: str) -> dict[str, Any]:
    assert job.started is not None
    info: dict[str, Any] = {
        "submissionDateTime": iso(job.wall(job.started)),
        "startedDateTime": iso(job.wall(job.started)),
        "estimatedUnits": 1.0,
        "errors": _errors(job) if state == "failed" else [],
        "warnings": [],
    }
    ended = _ended(job, now)
    if ended is not None:
        info["endedDateTime"] = ended
        info["exitCode"] = 1 if state == "failed" else 0
    return info


def _v1_create(request: Request, state: EmulatorState, api: str) -> Reply:
    try:
        body = request.json()
    except ValueError:
        body = None
    problems = _create_problems(body, {"type": str, "iTwinId": str, "inputs": list, "outputs": list})
    if problems:
        return error(400, V1_APIS[api], "Invalid job creation request.", problems)
    scenario = state.choose_scenario(VENDOR, request.header(SCENARIO_HEADER), body.get("emulator"))
    details = {key: body.get(key, default) for key, default in (("name", ""), ("type", ""), ("iTwinId", ""))}
    outputs = _output_names(body["outputs"])
    details.update(api=api, inputs=body["inputs"], outputs=outputs, options=body.get("options", {}))
    job = Job(VENDOR, str(uuid.uuid4()), scenario, details=details)
    _register_outputs(state, job, details["outputs"])
    state.add_job(job)
    return Reply.json(201, {"job": _v1_view(job, time.monotonic())}).for_job(job.job_id)


def _v1_get(request: Request, state: EmulatorState, api: str, job_id: str) -> Reply:
    now = time.monotonic()
    with state.lock:
        job = _job(state, api, job_id)
        if job is None:
            return _job_not_found(job_id)
        reply = _gated_details(job)
        if reply is None:
            _poll(job, now)
            weird = "weird" if job.scenario.garbage == "unknown_status" else None
            reply = Reply.json(200, {"job": _v1_view(job, now, weird)})
    return reply.for_job(job_id)


def _v1_progress(request: Request, state: EmulatorState, api: str, job_id: str) -> Reply:
    now = time.monotonic()
    with state.lock:
        job = _job(state, api, job_id)
        if job is None:
            return _job_not_found(job_id)
        reply = _gated_progress(job)
        if reply is None:
            job.advance(now)
            reply = _v1_progress_answer(job, now, api)
    return reply.for_job(job_id)


def _v1_progress_answer(job: Job, now: float, api: str) -> Reply:
    if _v1_state(job, now) != "active":
        return error(404, "ProgressNotFound", "Requested progress is not available.")
    step = spread(job.stage(now), job.scenario.steps, V1_STEPS[api])
    return Reply.json(200, {"progress": {"percentage": job.percent(now), "state": "active", "step": step}})


def _v1_patch(request: Request, state: EmulatorState, api: str, job_id: str) -> Reply:
    try:
        body = request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return error(400, V1_APIS[api], "Invalid job update request.", _create_problems(body, {}))
    now = time.monotonic()
    with state.lock:
        job = _job(state, api, job_id)
        if job is None:
            return _job_not_found(job_id)
        reply = _v1_change(request, state, job, str(body.get("state", "")).lower(), now)
        if reply is None:
            reply = Reply.json(200, {"job": _v1_view(job, now)})
    return reply.for_job(job_id)


def _v1_change(request: Request, state: EmulatorState, job: Job, target: str, now: float) -> Reply | None:
    """Apply a state change; the 422 answer when it is not allowed."""
    current = _v1_state(job, now)
    if target == "active" and current == "unsubmitted":
        if request.header(SCENARIO_HEADER) is not None:
            job.scenario = state.choose_scenario(VENDOR, request.header(SCENARIO_HEADER), None)
            job.result_count = len(job.details["outputs"]) * job.scenario.outputs
        job.submit(now)
        return None
    if target == "cancelled" and current in ("unsubmitted", "active"):
        job.cancel(now)
        return None
    return error(422, "InvalidChange", f"Job {job.job_id} cannot change from {current} to {target or 'nothing'}.")


def _v1_delete(request: Request, state: EmulatorState, api: str, job_id: str) -> Reply:
    now = time.monotonic()
    with state.lock:
        job = _job(state, api, job_id)
        if job is None:
            return _job_not_found(job_id)
        if _v1_state(job, now) != "unsubmitted":
            return error(422, "InvalidChange", "Only unsubmitted jobs can be deleted.").for_job(job_id)
        del state.jobs[(VENDOR, job_id)]
    return Reply.empty(204).for_job(job_id)


# -- v2: reality-modeling ---------------------------------------------------------------------------


def _v2_state(job: Job, now: float) -> str:
    if job.details.get("terminating"):
        return "TerminatingOnCancel"
    return V2_STATES.get(job.state(now), "Active")


def _v2_view(job: Job, now: float) -> dict[str, Any]:
    d = job.details
    state = _v2_state(job, now)
    outputs = d["requested_outputs"]
    if state == "Success":
        outputs = dict(zip(d["outputs"], d["reality_data_ids"], strict=True))
    assert job.started is not None
    info: dict[str, Any] = {"createdDateTime": iso(job.created_at), "startedDateTime": iso(job.wall(job.started))}
    ended = _ended(job, now)
    if ended is not None and state != "TerminatingOnCancel":
        info.update(endedDateTime=ended, processingUnits=1.0)
    return {
        "id": job.job_id,
        "name": d["name"],
        "type": d["type"],
        "iTwinId": d["iTwinId"],
        "state": state,
        "userId": CLIENT_ID,
        "executionInfo": info,
        "specifications": {"inputs": d["inputs"], "outputs": outputs, "options": d["options"]},
    }


def _v2_create(request: Request, state: EmulatorState) -> Reply:
    try:
        body = request.json()
    except ValueError:
        body = None
    problems = _create_problems(body, {"type": str, "iTwinId": str, "specifications": dict})
    if not problems:
        specs = body["specifications"]
        problems = [
            {"code": "MissingRequiredProperty", "message": f"specifications.{key} is required.", "target": key}
            for key in ("inputs", "outputs")
            if not specs.get(key)
        ]
    if problems:
        return error(400, "InvalidRealityModelingRequest", "Invalid job creation request.", problems)
    scenario = state.choose_scenario(VENDOR, request.header(SCENARIO_HEADER), body.get("emulator"))
    details = {key: body.get(key, "") for key in ("name", "type", "iTwinId")}
    details.update(
        api=V2_API,
        inputs=specs["inputs"],
        requested_outputs=specs["outputs"],
        outputs=_output_names(specs["outputs"]),
        options=specs.get("options", {}),
    )
    job = Job(VENDOR, str(uuid.uuid4()), scenario, details=details)
    _register_outputs(state, job, details["outputs"])
    now = time.monotonic()
    job.submit(now)
    state.add_job(job)
    return Reply.json(201, {"job": _v2_view(job, now)}).for_job(job.job_id)


def _v2_poll(state: EmulatorState, job_id: str, details: bool) -> Reply:
    now = time.monotonic()
    with state.lock:
        job = _job(state, V2_API, job_id)
        if job is None:
            return _job_not_found(job_id)
        reply = _gated_details(job) if details else _gated_progress(job)
        if reply is None:
            job.details.pop("terminating", None)  # TerminatingOnCancel lasts until the next poll
            _poll(job, now)
            reply = _v2_answer(job, now, details)
    return reply.for_job(job_id)


def _v2_answer(job: Job, now: float, details: bool) -> Reply:
    if details:
        view = _v2_view(job, now)
        if job.scenario.garbage == "unknown_status":
            view["state"] = "weird"
        return Reply.json(200, {"job": view})
    state = _v2_state(job, now)
    percent = 100 if state == "Success" else min(job.percent(now), 99)
    return Reply.json(200, {"progress": {"state": state, "percentage": percent}})


def _v2_get(request: Request, state: EmulatorState, job_id: str) -> Reply:
    return _v2_poll(state, job_id, details=True)


def _v2_progress(request: Request, state: EmulatorState, job_id: str) -> Reply:
    return _v2_poll(state, job_id, details=False)


def _v2_messages(request: Request, state: EmulatorState, job_id: str) -> Reply:
    now = time.monotonic()
    with state.lock:
        job = _job(state, V2_API, job_id)
        if job is None:
            return _job_not_found(job_id)
        errors = _errors(job) if job.state(now) == "failed" else []
    return Reply.json(200, {"messages": {"errors": errors, "warnings": []}}).for_job(job_id)


def _v2_cancel(request: Request, state: EmulatorState, job_id: str) -> Reply:
    now = time.monotonic()
    with state.lock:
        job = _job(state, V2_API, job_id)
        if job is None:
            return _job_not_found(job_id)
        if job.finished_at(now) is not None:
            return error(422, "InvalidChange", f"Job {job_id} is not running and cannot be cancelled.").for_job(job_id)
        job.cancel(now)
        job.details["terminating"] = True
        reply = Reply.json(200, {"job": _v2_view(job, now)})
    return reply.for_job(job_id)


# -- results: reality-management read access, blob container ----------------------------------------


def _reality_data_job(state: EmulatorState, reality_data_id: str) -> tuple[Job, int] | None:
    """The succeeded job and output position behind a reality data id."""
    with state.lock:
        target = state.reality_data.get(reality_data_id)
        job = None if target is None else state.job(VENDOR, target[0])
        if target is None or job is None or job.state(time.monotonic()) != "succeeded":
            return None
        return job, target[1]


def _reality_data_not_found(reality_data_id: str) -> Reply:
    return error(404, "RealityDataNotFound", f"Requested reality data {reality_data_id} is not available.")


def _read_access(request: Request, state: EmulatorState, reality_data_id: str) -> Reply:
    found = _reality_data_job(state, reality_data_id)
    if found is None:
        return _reality_data_not_found(reality_data_id)
    signature = secrets.token_hex(16)
    expiry = time.time() + SAS_LIFETIME
    with state.lock:
        state.sas_grants[signature] = (reality_data_id, time.monotonic() + SAS_LIFETIME)
    href = f"{state.base_url}/blob/{reality_data_id}?sv=2021-08-06&se={quote(iso(expiry))}&sr=c&sp=rl&sig={signature}"
    payload = {"type": "AzureBlobSasUrl", "access": "Read", "_links": {"containerUrl": {"href": href}}}
    return Reply.json(200, payload).for_job(found[0].job_id)


def _reality_data(request: Request, state: EmulatorState, reality_data_id: str) -> Reply:
    found = _reality_data_job(state, reality_data_id)
    if found is None:
        return _reality_data_not_found(reality_data_id)
    job, position = found
    view = {
        "id": reality_data_id,
        "displayName": f"{job.details['name'] or job.job_id} {job.details['outputs'][position]}",
        "type": "Unstructured",
        "iTwinId": job.details["iTwinId"],
        "createdDateTime": iso(job.created_at),
    }
    return Reply.json(200, {"realityData": view}).for_job(job.job_id)


def _azure_error(status: int, code: str, message: str) -> Reply:
    body = (
        f"<?xml version='1.0' encoding='utf-8'?><Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    )
    reply = Reply.text(status, body, "application/xml")
    reply.headers["x-ms-error-code"] = code
    return reply


def _blob_names(job: Job) -> list[str]:
    return [job.scenario.name(n - 1, f"output/part_{n}.bin") for n in range(1, job.scenario.outputs + 1)]


def _blob(request: Request, state: EmulatorState) -> Reply:
    container, _, blob_name = request.path.removeprefix("/blob/").partition("/")
    with state.lock:
        grant = state.sas_grants.get(request.query.get("sig", ""))
    if grant is None or grant[0] != container or time.monotonic() > grant[1]:
        return _azure_error(
            403,
            "AuthenticationFailed",
            "Server failed to authenticate the request. Make sure the value of Authorization header is formed "
            "correctly including the signature.",
        )
    found = _reality_data_job(state, container)
    if found is None:
        return _azure_error(404, "ContainerNotFound", "The specified container does not exist.")
    job, position = found
    if not blob_name:
        return _list_blobs(request, state, job, container)
    names = _blob_names(job)
    if request.method != "GET" or blob_name not in names:
        return _azure_error(404, "BlobNotFound", "The specified blob does not exist.").for_job(job.job_id)
    index = position * job.scenario.outputs + names.index(blob_name)
    headers = {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-08-06", "ETag": f'"0x{index:X}{job.job_id[:8]}"'}
    return state.download(job, index, "application/octet-stream", headers)


def _list_blobs(request: Request, state: EmulatorState, job: Job, container: str) -> Reply:
    if request.query.get("restype") != "container" or request.query.get("comp") != "list":
        return _azure_error(400, "InvalidQueryParameterValue", "Value for one of the query parameters is not valid.")
    prefix = request.query.get("prefix", "")
    blobs = "".join(
        f"<Blob><Name>{escape(name)}</Name><Properties><Last-Modified>{iso(job.created_at)}</Last-Modified>"
        f"<Content-Length>{job.scenario.result_size}</Content-Length>"
        "<Content-Type>application/octet-stream</Content-Type><BlobType>BlockBlob</BlobType></Properties></Blob>"
        for name in _blob_names(job)
        if name.startswith(prefix)
    )
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<EnumerationResults ServiceEndpoint="{escape(state.base_url)}/blob/" ContainerName="{escape(container)}">'
        f"<Prefix>{escape(prefix)}</Prefix><Blobs>{blobs}</Blobs><NextMarker /></EnumerationResults>"
    )
    return Reply.text(200, body, "application/xml").for_job(job.job_id)


# -- routing ----------------------------------------------------------------------------------------

_ID = "([^/]+)"
_V1 = "(" + "|".join(V1_APIS) + ")"
ROUTES: tuple[Route, ...] = (
    ("POST", re.compile(f"/{_V1}/jobs"), _v1_create),
    ("GET", re.compile(f"/{_V1}/jobs/{_ID}"), _v1_get),
    ("PATCH", re.compile(f"/{_V1}/jobs/{_ID}"), _v1_patch),
    ("DELETE", re.compile(f"/{_V1}/jobs/{_ID}"), _v1_delete),
    ("GET", re.compile(f"/{_V1}/jobs/{_ID}/progress"), _v1_progress),
    ("POST", re.compile(f"/{V2_API}/jobs"), _v2_create),
    ("GET", re.compile(f"/{V2_API}/jobs/{_ID}"), _v2_get),
    ("DELETE", re.compile(f"/{V2_API}/jobs/{_ID}"), _v2_cancel),
    ("GET", re.compile(f"/{V2_API}/jobs/{_ID}/progress"), _v2_progress),
    ("GET", re.compile(f"/{V2_API}/jobs/{_ID}/messages"), _v2_messages),
    ("GET", re.compile(f"/reality-management/reality-data/{_ID}/readaccess"), _read_access),
    ("GET", re.compile(f"/reality-management/reality-data/{_ID}"), _reality_data),
)


def handle(request: Request, state: EmulatorState) -> Reply:
    """Answer one request for the token endpoint, the job APIs, reality management or the blob store."""
    if request.path == "/connect/token" and request.method == "POST":
        return _token(request, state)
    if request.path.startswith("/blob/"):
        return _blob(request, state)
    denied = _denied(request, state)
    if denied is not None:
        return denied
    wrong = _wrong_version(request, "v2" if request.path.startswith(f"/{V2_API}") else "v1")
    if wrong is not None:
        return wrong
    return route(request, state, ROUTES) or error(404, "NotFound", f"Nothing is served at {request.path}.")
