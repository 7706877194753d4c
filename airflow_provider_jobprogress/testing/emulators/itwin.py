"""iTwin emulator: IMS token, Reality Analysis v2/v1, Reality Modeling v2, Reality Conversion v1, data, blobs.

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
- v1: progress of an unsubmitted job → 404 ProgressNotFound. Once the job ended, progress stays readable
  with its final state (success, failed, cancelled), its last percentage (100 for success; where it stopped
  otherwise) and step, as Bentley's own v1 examples read it (they poll progress until state == success and
  stop on any error answer), until `itwin_progress_retention` seconds after the end (Bentley: "won't be
  available after 30 days", the default); then 404 ProgressNotFound, and the job details say how it ended.
  Steps: analysis Prepare_Step → Prepare_Production → Run_Production → Finalize; conversion Prepare_Files →
  Convert_Files → Upload_Files. An X-Emulator-Scenario header on the submitting PATCH replaces the scenario.
  PATCH to a state other than active/cancelled, or from a state that cannot move, → 422 InvalidChange.
- v1 details list every output with its reality data id from creation on; Reality Conversion's
  executionInformation says `submittedDateTime` where Reality Analysis says `submissionDateTime`.
- Reality Conversion v1 details give every input its `type`: Bentley's v1 Python client creates with
  `[{"id": …}]` and reads `inputs[].type` back (the service types each input from its reality data). A type
  given at creation is kept; without one the emulator, which has no input reality data, answers LAZ for a
  Conversion (the file Bentley's own example converts) and GeoJSON for an ImportFeatures job.
- v2 (reality-modeling and reality-analysis, the shapes of Bentley's SDK 2.6 and its fixtures): create =
  submit, the 201 shows state "Active". progress keeps answering after the end, with the terminal state
  (Success at 100). DELETE of a running job → 200 with "TerminatingOnCancel", "Cancelled" from the next poll
  on; of an ended job → 422 InvalidChange. `specifications.outputs` is an object from creation on: a requested
  name maps to its reality data id, `modelingReference` to {"location": id}, each export to its create body
  plus "location", and a `report` to a `bkt:jobs/<job id>/report.json` path in the iTwin's bucket.
- Listing: GET /{api}/jobs needs `$filter` (400 without); it understands the grammar Bentley documents
  (jobs-get-all): id, iTwinId, name, email, type, state, createdDateTime, inputId, outputId compared with
  eq/ne/lt/le/gt/ge or `in (v1, v2, …)`, joined by and/or, with parentheses; inputId/outputId match any of the
  job's inputs/outputs (eq, in; ne: none of them) and take no ordering; anything else (an end time included:
  not filterable; `not`, functions) → 400 InvalidFilter.
  `$top` (default 100) pages, `_links.next.href` carries a
  `continuationToken`. Listing never advances a job. `Faults(repeat_page_token=True)` hands a page's own token
  back as the next one; `Scenario(ended_text=...)` prints that text as the job's endedDateTime.
- Bucket: GET /reality-modeling/itwins/{iTwinId}/bucket (v2) → {"bucket": {"iTwinId"}, "_links": {"containerUrl"}},
  a container holding the bkt: outputs of that iTwin's succeeded jobs.
- Garbage on job details: html/empty/malformed as on progress, unknown_status → state "weird";
  nonnumeric touches progress only (details carry no number).
- Results: every requested output is one reality data id = one blob container holding `outputs` blobs
  named output/part_<n>.bin (a bkt: output is one blob at its path). readaccess of a job that has not
  succeeded → 404 RealityDataNotFound. SAS URLs last one hour; the container list honours `prefix`;
  result index = output position * scenario.outputs + blob number. Blob GETs honour `Range`/`x-ms-range`
  (206 + Content-Range) and say `Last-Modified` in RFC 1123, as Azure Storage does. With a blob store set
  (`VendorEmulator.serve_blobs_from`, e.g. Azurite), outputs are uploaded there when first asked for and
  the read-access and bucket answers carry that store's SAS URLs instead.
- flaky → 503 {"error": {"code": "ServiceUnavailable", ...}}.
- A quota (`VendorEmulator.set_quota`, none by default) is Bentley's platform limit ("Rate limits and quotas":
  Trial 500 calls a minute plus 5,000 an hour, Basic/Premium/Custom 5,000 a minute, per OAuth client): it
  counts the API calls of each OAuth client (the client its token was issued to), not the IMS token endpoint,
  not the Azure blob calls (other services), not a call without a valid token (401). Past it: 429
  {"error": {"code": "RateLimitExceeded", ...}} with `Retry-After` and the page's diagnostic headers (see
  RATE_LIMIT_HEADERS).
"""

from __future__ import annotations

import base64
import datetime
import operator
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode
from xml.sax.saxutils import escape

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
    http_date,
    iso,
    parse_range,
    result_chunks,
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
V2_APIS = {
    "reality-modeling": "InvalidRealityModelingRequest",
    "reality-analysis": "InvalidRealityAnalysisRequest",
}
PREFIXES = (
    "/connect/token",
    "/realitydataanalysis",
    "/realityconversion",
    "/reality-modeling",
    "/reality-analysis",
    "/reality-management",
    "/blob",
)
#: requested v2 outputs that land in the iTwin's bucket rather than in a reality data
BUCKET_OUTPUTS = frozenset({"report"})
#: the type a Reality Conversion v1 job's details give an input created without one, by job type
CONVERSION_INPUT_TYPES = {"ImportFeatures": "GeoJSON"}
CONVERSION_INPUT_TYPE = "LAZ"
V1_STEPS = {
    "realitydataanalysis": ("Prepare_Step", "Prepare_Production", "Run_Production", "Finalize"),
    "realityconversion": ("Prepare_Files", "Convert_Files", "Upload_Files"),
}
V2_STATES = {"running": "Active", "succeeded": "Success", "failed": "Failed", "cancelled": "Cancelled"}
ACCEPT_VERSION = re.compile(r"application/vnd\.bentley\.itwin-platform\.(v\d+)\+json")
SAS_LIFETIME = 3600.0
RATE_LIMIT_MESSAGE = "The client sent more requests than allowed by this API for the current tier of the client."
#: The headers Bentley adds to a platform 429 ("Rate limits and quotas", developer.bentley.com/apis/overview/
#: rate-limits). The page's Markdown source lists iTwinPlatform-RateLimit-RemainingCalls ("Number of requests
#: allowed before reaching the rate limit"), iTwinPlatform-RateLimit-Retry-After-Seconds ("After reaching the
#: limit, the number of seconds to wait"; Bentley's own iTwin/insights-client waits on it) and iTwinPlatform-Tier
#: ("The name of the subscription used to make the request"), with Retry-After the same as the former. A later
#: rendering of the page names the tier header ITwinPlatform-RateLimited-Tier; its description could not be
#: read, so that name is unconfirmed and both are sent. The tier's value names no real subscription.
RATE_LIMIT_REMAINING = "iTwinPlatform-RateLimit-RemainingCalls"
RATE_LIMIT_RETRY_AFTER = "iTwinPlatform-RateLimit-Retry-After-Seconds"
RATE_LIMIT_TIERS = ("iTwinPlatform-Tier", "ITwinPlatform-RateLimited-Tier")
EMULATED_TIER = "Emulator"


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
        "access_token": state.issue_token(VENDOR, client[0]),
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
    if gate == "garbage" and job.scenario.garbage in ("html", "empty", "malformed", "deep_json"):
        return _garbage(job.scenario.garbage)
    return _limited(job, gate)


def _poll(job: Job, now: float) -> None:
    # Garbage answers never move the job, whatever view they are drawn from.
    if not job.garbled:
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
    if finished is None:
        return None
    return job.scenario.ended_text if job.scenario.ended_text is not None else iso(job.wall(finished))


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
    submitted = "submittedDateTime" if job.details["api"] == "realityconversion" else "submissionDateTime"
    info: dict[str, Any] = {
        submitted: iso(job.wall(job.started)),
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
    inputs = _conversion_inputs(body["inputs"], details["type"]) if api == "realityconversion" else body["inputs"]
    details.update(api=api, inputs=inputs, outputs=outputs, options=body.get("options", {}))
    job = Job(VENDOR, str(uuid.uuid4()), scenario, details=details)
    _register_outputs(state, job, details["outputs"])
    state.add_job(job)
    return Reply.json(201, {"job": _v1_view(job, time.monotonic())}).for_job(job.job_id)


def _conversion_inputs(inputs: list[Any], job_type: str) -> list[Any]:
    """The inputs as Reality Conversion's details answer them: each with a type (the one given, else typed)."""
    default = CONVERSION_INPUT_TYPES.get(job_type, CONVERSION_INPUT_TYPE)
    return [{"type": default, **item} if isinstance(item, dict) and "type" not in item else item for item in inputs]


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
            reply = _v1_progress_answer(job, now, api, state.itwin_progress_retention)
    return reply.for_job(job_id)


def _v1_progress_answer(job: Job, now: float, api: str, retention: float) -> Reply:
    state = _v1_state(job, now)
    finished = job.finished_at(now)
    if state == "unsubmitted" or (finished is not None and now - finished >= retention):
        return error(404, "ProgressNotFound", "Requested progress is not available.")
    steps = job.scenario.steps
    stage = job.stage(now if finished is None else finished)
    if state == "success":
        stage = steps + 1  # done: 100 %, however its time ran out between two steps
    elif state != "active":
        stage = min(stage, steps)  # a failed or cancelled job stopped where it was, short of the end
    percent = round(stage * 100 / (steps + 1))
    step = spread(stage, steps, V1_STEPS[api])
    return Reply.json(200, {"progress": {"percentage": percent, "state": state, "step": step}})


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


# -- v2: reality-modeling, reality-analysis -------------------------------------------------------


def _v2_state(job: Job, now: float) -> str:
    if job.details.get("terminating"):
        return "TerminatingOnCancel"
    return V2_STATES.get(job.state(now), "Active")


def _v2_view(job: Job, now: float) -> dict[str, Any]:
    d = job.details
    state = _v2_state(job, now)
    info: dict[str, Any] = {"createdDateTime": iso(job.created_at)}
    if job.started is not None:
        info["startedDateTime"] = iso(job.wall(job.started))
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
        "specifications": {"inputs": d["inputs"], "outputs": d["outputs_view"], "options": d["options"]},
    }


def _v2_outputs(state: EmulatorState, job: Job, requested: Any) -> dict[str, Any]:
    """The answer's `specifications.outputs` for the requested ones, each given its place from creation on."""
    names: list[str] = []
    ids: list[str] = []

    def place(name: str) -> str:
        reality_data_id = str(uuid.uuid4())
        with state.lock:
            state.reality_data[reality_data_id] = (job.job_id, len(names))
        names.append(name)
        ids.append(reality_data_id)
        return reality_data_id

    view: dict[str, Any] = {}
    wanted = {str(name): True for name in requested} if isinstance(requested, list) else dict(requested)
    for name, value in wanted.items():
        if name == "exports" and isinstance(value, list):
            view[name] = [{**export, "location": place(f"exports/{export.get('format')}")} for export in value]
        elif not value:
            continue
        elif name == "modelingReference":
            view[name] = {"location": place(name)}
        elif name in BUCKET_OUTPUTS:
            path = f"jobs/{job.job_id}/{name}.json"
            with state.lock:
                state.bucket_files[(job.details["iTwinId"], path)] = (job.job_id, len(names))
            names.append(name)
            ids.append("")
            view[name] = f"bkt:{path}"
        else:
            view[name] = place(name)
    job.details.update(outputs=names, reality_data_ids=ids)
    job.result_count = len(names) * job.scenario.outputs
    return view


def _v2_create(request: Request, state: EmulatorState, api: str) -> Reply:
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
        return error(400, V2_APIS[api], "Invalid job creation request.", problems)
    scenario = state.choose_scenario(VENDOR, request.header(SCENARIO_HEADER), body.get("emulator"))
    details = {key: body.get(key, "") for key in ("name", "type", "iTwinId")}
    details.update(api=api, inputs=specs["inputs"], options=specs.get("options", {}))
    job = Job(VENDOR, str(uuid.uuid4()), scenario, details=details)
    details["outputs_view"] = _v2_outputs(state, job, specs["outputs"])
    now = time.monotonic()
    job.submit(now)
    state.add_job(job)
    return Reply.json(201, {"job": _v2_view(job, now)}).for_job(job.job_id).submitted(scenario)


def _v2_poll(state: EmulatorState, api: str, job_id: str, details: bool) -> Reply:
    now = time.monotonic()
    with state.lock:
        job = _job(state, api, job_id)
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


def _v2_get(request: Request, state: EmulatorState, api: str, job_id: str) -> Reply:
    return _v2_poll(state, api, job_id, details=True)


def _v2_progress(request: Request, state: EmulatorState, api: str, job_id: str) -> Reply:
    return _v2_poll(state, api, job_id, details=False)


def _v2_messages(request: Request, state: EmulatorState, api: str, job_id: str) -> Reply:
    now = time.monotonic()
    with state.lock:
        job = _job(state, api, job_id)
        if job is None:
            return _job_not_found(job_id)
        errors = _errors(job) if job.state(now) == "failed" else []
    return Reply.json(200, {"messages": {"errors": errors, "warnings": []}}).for_job(job_id)


def _v2_cancel(request: Request, state: EmulatorState, api: str, job_id: str) -> Reply:
    now = time.monotonic()
    with state.lock:
        job = _job(state, api, job_id)
        if job is None:
            return _job_not_found(job_id)
        if job.finished_at(now) is not None:
            return error(422, "InvalidChange", f"Job {job_id} is not running and cannot be cancelled.").for_job(job_id)
        job.cancel(now)
        job.details["terminating"] = True
        reply = Reply.json(200, {"job": _v2_view(job, now)})
    return reply.for_job(job_id)


# -- listing: GET /{api}/jobs?$filter=… ---------------------------------------------------------------


#: the properties and operators Bentley documents for `$filter` on GET …/jobs (jobs-get-all of Reality Analysis
#: and Reality Conversion v1, of Reality Modeling v1 (contextcapture) and of the v2 Reality Conversion preview, all
#: the same words: "Properties supported for filtering: id, iTwinId, name, email, type, state, createdDateTime,
#: inputId, outputId. Supported operators: eq, lt, le, gt, ge, ne, in, and, or."). An end time is NOT among them,
#: so a client filters on it itself. Parentheses are not mentioned; the emulator reads them (as OData does).
FILTER_PROPERTIES = {
    p.lower(): p for p in ("id", "iTwinId", "name", "email", "type", "state", "createdDateTime", "inputId", "outputId")
}
#: properties with several values per job (any input, any output): eq/in match any of them, ne none of them
FILTER_COLLECTIONS = frozenset({"inputId", "outputId"})
COMPARISONS = ("eq", "ne", "lt", "le", "gt", "ge")
FILTER_TOKEN = re.compile(r"\s*(?:(\()|(\))|(,)|'((?:[^']|'')*)'|([^\s(),']+))")


class FilterRow:
    """One job as the filter sees it: its id, iTwin and state, and when a filter or the page needs them, its
    listed view and the ids of its inputs and outputs. Made lazily: a listing filters every job of the API, page
    after page, and building each one's whole view every time (10,000 jobs, 10 pages and dozens of
    ``id eq … or …`` reads a cycle) made the emulator the slow part of a 10,000-wait benchmark."""

    __slots__ = ("__dict__", "api", "job", "now")

    def __init__(self, job: Job, now: float, api: str) -> None:
        self.job, self.now, self.api = job, now, api

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def itwin_id(self) -> Any:
        return self.job.details["iTwinId"]

    @cached_property
    def state(self) -> str:
        return _v2_state(self.job, self.now) if self.api in V2_APIS else _v1_state(self.job, self.now)

    @cached_property
    def view(self) -> dict[str, Any]:
        return _v2_view(self.job, self.now) if self.api in V2_APIS else _v1_view(self.job, self.now)

    @cached_property
    def input_ids(self) -> tuple[str, ...]:
        d = self.job.details
        if self.api in V2_APIS:
            inputs = d["inputs"]
            return tuple(i for v in (inputs.values() if isinstance(inputs, dict) else inputs) for i in _ids(v))
        return tuple(str(i["id"]) for i in d["inputs"] if isinstance(i, dict) and "id" in i)

    @cached_property
    def output_ids(self) -> tuple[str, ...]:
        return tuple(rd for rd in self.job.details["reality_data_ids"] if rd)


Predicate = Callable[[FilterRow], bool]


class FilterError(ValueError):
    """A `$filter` this API would refuse (400 InvalidFilter)."""


def _filter_tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) tokens: ``(``, ``)``, ``,``, a quoted string (``''`` is one quote) or a bare word."""
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = FILTER_TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise FilterError(f"cannot read the $filter at {text[position:]!r}")
        opening, closing, comma, quoted, word = match.groups()
        if opening or closing or comma:
            tokens.append((opening or closing or comma, ""))
        elif quoted is not None:
            tokens.append(("string", quoted.replace("''", "'")))
        else:
            tokens.append(("word", word))
        position = match.end()
    return tokens


def parse_iso(text: str) -> datetime.datetime:
    """An ISO 8601 date and time (``Z`` or an offset; none means UTC), as the service reads filter values."""
    value = datetime.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def _filter_values(row: FilterRow, prop: str) -> tuple[Any, ...]:
    """The job's values of ``prop``: one for a plain property (None when absent), any number for ids."""
    if prop == "inputId":
        return row.input_ids
    if prop == "outputId":
        return row.output_ids
    if prop == "id":
        return (row.job_id,)
    if prop == "iTwinId":
        return (row.itwin_id,)
    if prop == "state":
        return (row.state,)
    if prop == "createdDateTime":  # v1 answers it at the top, v2 in executionInfo
        return (row.view.get(prop) or (row.view.get("executionInfo") or {}).get(prop),)
    return (row.view.get(prop),)


def _comparable(value: str, prop: str) -> Any:
    # identifiers and states compare without regard to case, as the service does
    return parse_iso(value) if prop == "createdDateTime" else value.lower()


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}


def _compare(actual: Any, op: str, rights: tuple[Any, ...], prop: str) -> bool:
    """``actual op rights[0]`` (``in``: among ``rights``), ``rights`` already made ``_comparable``."""
    if actual is None:
        return op == "ne"
    left = _comparable(str(actual), prop)
    if op == "in":
        return left in rights
    return _OPERATORS[op](left, rights[0])


def _matches(values: tuple[Any, ...], op: str, rights: tuple[Any, ...], prop: str) -> bool:
    if prop in FILTER_COLLECTIONS:  # any input (output) is it; "ne": none is
        if op == "ne":
            return not any(_compare(value, "eq", rights, prop) for value in values)
        return any(_compare(value, op, rights, prop) for value in values)
    return _compare(values[0], op, rights, prop)


class _Equals:
    """``prop eq value`` on a plain property; ``or`` joins those on one property into one set lookup (a client
    reads how 50 jobs ended with ``id eq … or id eq …``: 50 comparisons a job, each listing call, before)."""

    __slots__ = ("prop", "values")

    def __init__(self, prop: str, values: frozenset[Any]) -> None:
        self.prop, self.values = prop, values

    def __call__(self, row: FilterRow) -> bool:
        actual = _filter_values(row, self.prop)[0]
        return actual is not None and _comparable(str(actual), self.prop) in self.values


class _FilterParser:
    """`expr := and_expr ('or' and_expr)*; and_expr := atom ('and' atom)*;
    atom := '(' expr ')' | prop op value | prop 'in' '(' value (',' value)* ')'`."""

    def __init__(self, text: str) -> None:
        self.tokens = _filter_tokens(text)
        self.at = 0

    def parse(self) -> Predicate:
        predicate = self._or()
        if self.at != len(self.tokens):
            raise FilterError("unexpected text after the end of the $filter")
        return predicate

    def _keyword(self, word: str) -> bool:
        if self.at < len(self.tokens) and self.tokens[self.at] in (("word", word), ("word", word.upper())):
            self.at += 1
            return True
        return False

    def _next(self) -> tuple[str, str]:
        if self.at >= len(self.tokens):
            raise FilterError("the $filter ends too soon")
        self.at += 1
        return self.tokens[self.at - 1]

    def _or(self) -> Predicate:
        parts = [self._and()]
        while self._keyword("or"):
            parts.append(self._and())
        if len(parts) == 1:
            return parts[0]
        equals = [part for part in parts if isinstance(part, _Equals)]
        if len(equals) == len(parts) and len({part.prop for part in equals}) == 1:
            return _Equals(equals[0].prop, frozenset().union(*(part.values for part in equals)))
        return lambda row: any(part(row) for part in parts)

    def _and(self) -> Predicate:
        parts = [self._atom()]
        while self._keyword("and"):
            parts.append(self._atom())
        return parts[0] if len(parts) == 1 else (lambda row: all(part(row) for part in parts))

    def _atom(self) -> Predicate:
        kind, text = self._next()
        if kind == "(":
            inner = self._or()
            if self._next()[0] != ")":
                raise FilterError("a '(' in the $filter is not closed")
            return inner
        prop = FILTER_PROPERTIES.get(text.lower()) if kind == "word" else None
        if prop is None:
            raise FilterError(
                f"{text!r} is not a property supported for filtering ({', '.join(FILTER_PROPERTIES.values())})"
            )
        op = self._next()[1].lower()
        if op not in (*COMPARISONS, "in"):
            raise FilterError(f"{op!r} is not a supported operator ({', '.join(COMPARISONS)}, in)")
        if prop in FILTER_COLLECTIONS and op not in ("eq", "ne", "in"):
            raise FilterError(f"{prop} is compared with eq, ne or in only")
        wanted = self._values(prop, op) if op == "in" else (self._value(prop, op),)
        if prop == "createdDateTime":
            for value in wanted:
                try:
                    parse_iso(value)
                except ValueError:
                    raise FilterError(f"{value!r} is not a date and time") from None
        rights = tuple(_comparable(value, prop) for value in wanted)
        if op == "eq" and prop not in FILTER_COLLECTIONS and prop != "createdDateTime":
            return _Equals(prop, frozenset(rights))
        return lambda row: _matches(_filter_values(row, prop), op, rights, prop)

    def _value(self, prop: str, op: str) -> str:
        kind, value = self._next()
        if kind not in ("string", "word"):
            raise FilterError(f"{prop} {op} needs a value")
        return value

    def _values(self, prop: str, op: str) -> tuple[str, ...]:
        """``in``'s list: ``(v1, v2, …)``, at least one value."""
        if self._next()[0] != "(":
            raise FilterError(f"{prop} in needs a list of values in parentheses")
        values = [self._value(prop, op)]
        while True:
            kind = self._next()[0]
            if kind == ")":
                return tuple(values)
            if kind != ",":
                raise FilterError(f"the list after {prop} in is not closed")
            values.append(self._value(prop, op))


def _list_filter(text: str) -> Predicate:
    """The `$filter` grammar Bentley documents: eq/ne/lt/le/gt/ge/in joined by and/or (and parentheses)."""
    return _FilterParser(text).parse()


def _ids(value: Any) -> list[str]:
    """The reality data ids in a v2 `specifications.inputs` value (an id, or a list of them)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _list_jobs(request: Request, state: EmulatorState, api: str) -> Reply:
    text = request.query.get("$filter")
    if not text:
        return error(400, "InvalidFilter", "A $filter with at least one criterion is required.")
    try:
        predicate = _list_filter(text)
    except FilterError as exc:
        return error(400, "InvalidFilter", f"Invalid $filter: {exc}.")
    try:
        top = max(1, min(int(request.query.get("$top", "100")), 1000))
        offset = int(base64.urlsafe_b64decode(request.query.get("continuationToken", "") + "==") or b"0")
    except ValueError:
        return error(400, "InvalidParameter", "$top and continuationToken must be the values this API gave.")
    now = time.monotonic()
    with state.lock:
        rows = (
            FilterRow(job, now, api)
            for job in state.jobs.values()
            if job.vendor == VENDOR and job.details["api"] == api
        )
        selected = [row for row in rows if predicate(row)]
        views = [row.view for row in selected[offset : offset + top]]
    payload: dict[str, Any] = {"jobs": views}
    if offset + top < len(selected):
        token = base64.urlsafe_b64encode(str(offset + top).encode()).decode().rstrip("=")
        if offset and state.faults.repeat_page_token:
            token = request.query["continuationToken"]  # the paging bug: the same page again, and again
        query = urlencode({"$filter": text, "$top": top, "continuationToken": token}, quote_via=quote)
        payload["_links"] = {"next": {"href": f"{state.base_url}/{api}/jobs?{query}"}}
    return Reply.json(200, payload)


# -- results: reality-management read access, the iTwin bucket, blob containers ------------------------


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


def _container_href(state: EmulatorState, container: str, files: dict[str, tuple[Job, int]]) -> str:
    """A read+list SAS URL for `container`: this emulator's blob endpoint, or the blob store holding `files`."""
    if state.blob_store is not None:
        blobs = {name: _blob_source(job, index) for name, (job, index) in files.items()}
        return str(state.blob_store.publish(container, blobs, SAS_LIFETIME))
    signature = secrets.token_hex(16)
    expiry = time.time() + SAS_LIFETIME
    with state.lock:
        state.sas_grants[signature] = (container, time.monotonic() + SAS_LIFETIME)
    return f"{state.base_url}/blob/{container}?sv=2021-08-06&se={quote(iso(expiry))}&sr=c&sp=rl&sig={signature}"


def _blob_source(job: Job, index: int) -> tuple[int, Iterator[bytes]]:
    size = job.scenario.result_size
    return size, result_chunks(job.job_id, index, size, job.result_prefix)


def _read_access(request: Request, state: EmulatorState, reality_data_id: str) -> Reply:
    found = _reality_data_job(state, reality_data_id)
    if found is None:
        return _reality_data_not_found(reality_data_id)
    job, position = found
    files = {name: (job, position * job.scenario.outputs + n) for n, name in enumerate(_blob_names(job))}
    href = _container_href(state, reality_data_id, files)
    payload = {"type": "AzureBlobSasUrl", "access": "Read", "_links": {"containerUrl": {"href": href}}}
    return Reply.json(200, payload).for_job(job.job_id)


def _reality_data(request: Request, state: EmulatorState, reality_data_id: str) -> Reply:
    found = _reality_data_job(state, reality_data_id)
    if found is None:
        return _reality_data_not_found(reality_data_id)
    job, position = found
    ended = job.finished_at(time.monotonic())
    modified = iso(job.wall(ended) if ended is not None else job.created_at)
    view = {
        "id": reality_data_id,
        "displayName": f"{job.details['name'] or job.job_id} {job.details['outputs'][position]}",
        "classification": "Undefined",
        "type": "Unstructured",
        "size": len(_blob_names(job)) * job.scenario.result_size // 1024,  # KB, as Reality Management counts
        "authoring": False,
        "dataCenterLocation": "East US",
        "iTwinId": job.details["iTwinId"],
        "ownerId": CLIENT_ID,
        "createdDateTime": iso(job.created_at),
        "modifiedDateTime": modified,
        "lastAccessedDateTime": modified,
    }
    return Reply.json(200, {"realityData": view}).for_job(job.job_id)


def _bucket_container(itwin_id: str) -> str:
    return f"bucket-{itwin_id.lower()}"


def _bucket_files(state: EmulatorState, itwin_id: str) -> dict[str, tuple[Job, int]]:
    """The bucket's blobs: the bkt: outputs of the iTwin's succeeded jobs, by path."""
    now = time.monotonic()
    files = {}
    with state.lock:
        for (owner, path), (job_id, position) in state.bucket_files.items():
            job = state.job(VENDOR, job_id)
            if owner == itwin_id and job is not None and job.state(now) == "succeeded":
                files[path] = (job, position * job.scenario.outputs)
    return files


def _bucket(request: Request, state: EmulatorState, itwin_id: str) -> Reply:
    href = _container_href(state, _bucket_container(itwin_id), _bucket_files(state, itwin_id))
    return Reply.json(200, {"bucket": {"iTwinId": itwin_id}, "_links": {"containerUrl": {"href": href}}})


def _azure_error(status: int, code: str, message: str) -> Reply:
    body = (
        f"<?xml version='1.0' encoding='utf-8'?><Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    )
    reply = Reply.text(status, body, "application/xml")
    reply.headers["x-ms-error-code"] = code
    return reply


def _blob_names(job: Job) -> list[str]:
    return [job.scenario.name(n - 1, f"output/part_{n}.bin") for n in range(1, job.scenario.outputs + 1)]


def _container_files(state: EmulatorState, container: str) -> dict[str, tuple[Job, int]] | None:
    """The blobs of a container, by name, as (job, result index); None for an unknown container."""
    if container.startswith("bucket-"):
        itwin_id = container.removeprefix("bucket-")
        with state.lock:
            owners = {owner.lower(): owner for owner, _ in state.bucket_files}
        return _bucket_files(state, owners.get(itwin_id, itwin_id))
    found = _reality_data_job(state, container)
    if found is None:
        return None
    job, position = found
    return {name: (job, position * job.scenario.outputs + n) for n, name in enumerate(_blob_names(job))}


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
    files = _container_files(state, container)
    if files is None:
        return _azure_error(404, "ContainerNotFound", "The specified container does not exist.")
    if not blob_name:
        return _list_blobs(request, state, container, files)
    target = files.get(unquote(blob_name))
    if request.method != "GET" or target is None:
        return _azure_error(404, "BlobNotFound", "The specified blob does not exist.")
    return _blob_download(request, state, *target)


def _blob_download(request: Request, state: EmulatorState, job: Job, index: int) -> Reply:
    size = job.scenario.result_size
    headers = {
        "x-ms-blob-type": "BlockBlob",
        "x-ms-version": "2021-08-06",
        "ETag": f'"0x{index:X}{job.job_id[:8].upper()}"',
        "Last-Modified": http_date(job.created_at),
        "Accept-Ranges": "bytes",
    }
    # Azure's own client asks with x-ms-range, plain HTTP clients with Range; x-ms-range wins when both come.
    wanted = parse_range(request.header("x-ms-range") or request.header("Range"), size)
    if wanted == "unsatisfiable":
        message = "The range specified is invalid for the current size of the resource."
        reply = _azure_error(416, "InvalidRange", message)
        reply.headers["Content-Range"] = f"bytes */{size}"
        return reply.for_job(job.job_id)
    return state.download(job, index, "application/octet-stream", headers, byte_range=wanted)


def _list_blobs(request: Request, state: EmulatorState, container: str, files: dict[str, tuple[Job, int]]) -> Reply:
    if request.query.get("restype") != "container" or request.query.get("comp") != "list":
        return _azure_error(400, "InvalidQueryParameterValue", "Value for one of the query parameters is not valid.")
    prefix = request.query.get("prefix", "")
    blobs = "".join(
        f"<Blob><Name>{escape(name)}</Name><Properties>"
        f"<Creation-Time>{http_date(job.created_at)}</Creation-Time>"
        f"<Last-Modified>{http_date(job.created_at)}</Last-Modified>"
        f"<Etag>0x{index:X}{job.job_id[:8].upper()}</Etag>"
        f"<Content-Length>{job.scenario.result_size}</Content-Length>"
        "<Content-Type>application/octet-stream</Content-Type><BlobType>BlockBlob</BlobType>"
        "<AccessTier>Hot</AccessTier><LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState>"
        "</Properties></Blob>"
        for name, (job, index) in sorted(files.items())
        if name.startswith(prefix)
    )
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<EnumerationResults ServiceEndpoint="{escape(state.base_url)}/blob/" ContainerName="{escape(container)}">'
        f"<Prefix>{escape(prefix)}</Prefix><Blobs>{blobs}</Blobs><NextMarker /></EnumerationResults>"
    )
    reply = Reply.text(200, body, "application/xml")
    reply.headers["x-ms-version"] = "2021-08-06"
    job_ids = {job.job_id for job, _ in files.values()}
    return reply.for_job(job_ids.pop() if len(job_ids) == 1 else None)


# -- routing ----------------------------------------------------------------------------------------

_ID = "([^/]+)"
_V1 = "(" + "|".join(V1_APIS) + ")"
_V2 = "(" + "|".join(V2_APIS) + ")"
ROUTES: tuple[Route, ...] = (
    ("POST", re.compile(f"/{_V1}/jobs"), _v1_create),
    ("GET", re.compile(f"/{_V1}/jobs"), _list_jobs),
    ("GET", re.compile(f"/{_V1}/jobs/{_ID}"), _v1_get),
    ("PATCH", re.compile(f"/{_V1}/jobs/{_ID}"), _v1_patch),
    ("DELETE", re.compile(f"/{_V1}/jobs/{_ID}"), _v1_delete),
    ("GET", re.compile(f"/{_V1}/jobs/{_ID}/progress"), _v1_progress),
    ("POST", re.compile(f"/{_V2}/jobs"), _v2_create),
    ("GET", re.compile(f"/{_V2}/jobs"), _list_jobs),
    ("GET", re.compile(f"/{_V2}/jobs/{_ID}"), _v2_get),
    ("DELETE", re.compile(f"/{_V2}/jobs/{_ID}"), _v2_cancel),
    ("GET", re.compile(f"/{_V2}/jobs/{_ID}/progress"), _v2_progress),
    ("GET", re.compile(f"/{_V2}/jobs/{_ID}/messages"), _v2_messages),
    ("GET", re.compile(f"/reality-modeling/itwins/{_ID}/bucket"), _bucket),
    ("GET", re.compile(f"/reality-management/reality-data/{_ID}/readaccess"), _read_access),
    ("GET", re.compile(f"/reality-management/reality-data/{_ID}"), _reality_data),
)


def quota_key(request: Request, state: EmulatorState) -> str | None:
    """The OAuth client a platform API call counts against; None for calls the platform limit leaves alone."""
    if request.path == "/connect/token" or request.path.startswith("/blob/"):
        return None  # IMS and Azure Storage: other services than the platform's APIs
    scheme, _, token = (request.header("Authorization") or "").partition(" ")
    return state.token_client(VENDOR, token.strip()) if scheme.lower() == "bearer" else None


def over_quota(refusal: QuotaRefusal) -> Reply:
    reply = error(429, "RateLimitExceeded", RATE_LIMIT_MESSAGE)
    seconds = str(refusal.retry_after)
    reply.headers.update({"Retry-After": seconds, RATE_LIMIT_RETRY_AFTER: seconds, RATE_LIMIT_REMAINING: "0"})
    reply.headers.update(dict.fromkeys(RATE_LIMIT_TIERS, EMULATED_TIER))
    return reply


def handle(request: Request, state: EmulatorState) -> Reply:
    """Answer one request for the token endpoint, the job APIs, reality management or the blob store."""
    if request.path == "/connect/token" and request.method == "POST":
        return _token(request, state)
    if request.path.startswith("/blob/"):
        return _blob(request, state)
    denied = _denied(request, state)
    if denied is not None:
        return denied
    v2 = any(request.path.startswith(f"/{api}") for api in V2_APIS)
    wrong = _wrong_version(request, "v2" if v2 else "v1")
    if wrong is not None:
        return wrong
    return route(request, state, ROUTES) or error(404, "NotFound", f"Nothing is served at {request.path}.")
