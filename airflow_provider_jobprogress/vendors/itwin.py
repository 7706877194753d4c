"""Bentley iTwin reality-data jobs (Reality Analysis v2 and v1, Reality Modeling v2, Reality Conversion v1).

Pure flows for OAuth2 client credentials, job create/submit/progress/details/cancel/listing and the
download of job outputs: a reality data id is read through Reality Management read access, a ``bkt:<path>``
output through the iTwin's bucket (``GET /reality-modeling/itwins/{iTwinId}/bucket``), both Azure Blob
containers. Bentley's current SDK (reality_capture 2.6) talks to the v2 APIs only (``/reality-analysis``,
``/reality-modeling``); the v1 APIs are kept for existing jobs and connections.
A 404 ProgressNotFound means a v1 job left ``active`` (or 30 days passed): its details give the final state.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import msgspec

from airflow_provider_jobprogress.core.errors import (
    AuthenticationError,
    ConfigurationError,
    JobProgressError,
    ResultNotReadyError,
    VendorResponseError,
)
from airflow_provider_jobprogress.core.model import JobProgress, JobState, Listing
from airflow_provider_jobprogress.core.policies import PollPolicy, RequestRetry
from airflow_provider_jobprogress.core.protocol import (
    ConnectionFields,
    Flow,
    Request,
    Response,
    ResultPart,
    Token,
    VendorApi,
    answer_limit,
    brief,
    describe_body,
    now,
    percentage,
)

BASE_URL = "https://api.bentley.com"
TOKEN_URL = "https://ims.bentley.com/connect/token"  # noqa: S105 - a URL, not a secret
SCOPE = "itwin-platform"


@dataclass(frozen=True)
class ApiFamily:
    """What differs between the reality-data job APIs."""

    path: str
    version: int
    #: v1 jobs are created unsubmitted and submitted with a PATCH; v2 creation submits
    separate_submit: bool


FAMILIES: dict[str, ApiFamily] = {
    "realitydataanalysis": ApiFamily("/realitydataanalysis", 1, True),
    "realityconversion": ApiFamily("/realityconversion", 1, True),
    "reality-modeling": ApiFamily("/reality-modeling", 2, False),
    "reality-analysis": ApiFamily("/reality-analysis", 2, False),
}
#: the iTwin's bucket lives under Reality Modeling whatever API made the job (as Bentley's SDK reads it)
BUCKET_PATH = "/reality-modeling/itwins/{itwin_id}/bucket"
BUCKET_SCHEME = "bkt:"

STATES: dict[str, JobState] = {
    "unsubmitted": JobState.QUEUED,
    "queued": JobState.QUEUED,
    "active": JobState.RUNNING,
    "terminatingoncancel": JobState.RUNNING,
    "terminatingonfailure": JobState.RUNNING,
    "success": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "cancelled": JobState.CANCELLED,
}
PROGRESS_GONE = ("ProgressNotFound", "JobProgressNotFound")
#: the states of a job that has not ended, as ``$filter`` spells them (v2: Bentley's SDK ``JobState``)
V2_RUNNING = ("Queued", "Active", "TerminatingOnCancel", "TerminatingOnFailure")
V1_RUNNING = ("unsubmitted", "active")
#: how many calls the client has left in the platform's window, on Bentley's answers ("Rate limits and quotas")
REMAINING_CALLS = "itwinplatform-ratelimit-remainingcalls"
#: more calls left than any subscription has in a window (paid tiers: 5,000 a minute): a header saying more is broken
MAX_REMAINING_CALLS = 1_000_000
log = logging.getLogger(__name__)
_T = TypeVar("_T")

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: jobs per page (``$top``, at most 1,000 per Bentley) and pages per listing of the shared poller
LIST_PAGE = 1000
LIST_PAGES = 20
#: job ids per ``id eq … or …`` filter when reading how jobs ended (about 2.5 KB of URL, well under what gateways
#: allow, and a filter of modest size); the shared poller asks about ``core.poller.ENDED_CHUNK`` at a time
ENDED_BATCH = 50
#: the largest page of jobs the API serves (``$top`` 2..1000): the bound of a listing that names no page size
MAX_PAGE = 1000
#: a failed v2 job's messages: up to a hundred entries of 2 KiB
MESSAGES_ANSWER = answer_limit(100, per_item=2048)
#: one page of Azure's List Blobs (5,000 names at most, each ``<Blob>`` with its properties under 4 KiB)
BLOB_LIST_ANSWER = answer_limit(5000, per_item=4096)


class ITwinApi(VendorApi):
    """One reality-data job API of the iTwin Platform, with client-credentials auth."""

    vendor = "iTwin"
    # The vendor asks for 15, 30, 60, 120 s, restarting whenever the percentage changes.
    default_poll_policy = PollPolicy.sequence([15, 30, 60, 120], restart_on_change=True)
    token_margin = 300.0
    # Bentley's limits per OAuth client ("Rate limits and quotas"): Trial 500 calls a minute and 5,000 an hour,
    # Basic, Premium and Custom 5,000 a minute. The default stays under Trial's, worst case (see core.budget);
    # a paid subscription raises it with the requests_per_minute and requests_per_hour extras.
    default_requests_per_minute = 450.0
    default_requests_per_hour = 4500.0
    list_interval = 15.0

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        api: str = "realitydataanalysis",
        base_url: str = BASE_URL,
        token_url: str = TOKEN_URL,
        scope: str = SCOPE,
        itwin_id: str | None = None,
        request_retry: RequestRetry | None = None,
        verify: bool | str = True,
    ) -> None:
        super().__init__(request_retry=request_retry, verify=verify)
        if api not in FAMILIES:
            raise ConfigurationError(
                self.vendor, None, f"{api!r} is not one of {', '.join(sorted(FAMILIES))}", field="api"
            )
        if not client_id or not client_secret:
            raise AuthenticationError(
                self.vendor, None, "the connection needs a client id (login) and secret (password)"
            )
        self.family = FAMILIES[api]
        self.api = api
        self.base_url = base_url.rstrip("/")
        self.token_url = token_url
        self.scope = scope
        self.itwin_id = itwin_id or None
        self._client_id = client_id
        self._client_secret = client_secret

    @classmethod
    def from_connection(cls, conn: ConnectionFields, *, request_retry: RequestRetry | None = None) -> ITwinApi:
        extra = conn.extra
        api = cls(
            client_id=conn.login or "",
            client_secret=conn.password or "",
            api=conn.choice(cls.vendor, "api", tuple(sorted(FAMILIES)), "realitydataanalysis"),
            base_url=conn.extra_url(cls.vendor, "base_url", BASE_URL),
            # auth_url, because Airflow masks extras whose key contains "token"; token_url still read
            token_url=conn.extra_url(cls.vendor, "auth_url", TOKEN_URL, also="token_url"),
            scope=str(extra.get("scope") or SCOPE),
            itwin_id=str(extra.get("itwin_id") or "").strip() or None,
            request_retry=request_retry,
            verify=conn.tls_verify(),
        )
        api.from_fields(conn)
        return api

    def url_field(self, request: Request) -> str:
        return "auth_url" if request.url == self.token_url else "base_url"

    def calls_remaining(self, headers: Mapping[str, str]) -> int | None:
        # A plausible count or nothing: a proxy's or a broken gateway's value of thousands of digits makes int()
        # raise, and one of hundreds overflows the budget's float(); neither says how many calls are left.
        value = str(headers.get(REMAINING_CALLS) or "").strip()
        if not (value.isascii() and value.isdigit() and len(value) <= len(str(MAX_REMAINING_CALLS))):
            return None
        count = int(value)
        return count if count <= MAX_REMAINING_CALLS else None

    # -- auth ------------------------------------------------------------------------------------
    @property
    def uses_token(self) -> bool:
        return True

    def login(self) -> Flow[Token]:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "scope": self.scope,
        }
        request = Request("POST", self.token_url, form=form, authenticated=False)
        response = yield from self.exchange(request, None, what="get an access token")
        if response.status in (400, 401, 403):
            raise AuthenticationError(self.vendor, None, f"token endpoint refused the client: {_oauth_error(response)}")
        if response.status >= 300:
            raise self.status_error(response, None, what="get an access token")
        data = self.parse_json(response, None, what="get an access token")
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise VendorResponseError(self.vendor, None, "token endpoint answered without an access_token")
        try:  # a number, or a numeric string on some servers
            expires: float | None = now() + float(data.get("expires_in"))
        except (TypeError, ValueError):
            expires = None
        return Token(token, expires)

    def authorize(self, request: Request, token: Token | None) -> Request:
        assert token is not None
        return request.with_headers({"Authorization": f"Bearer {token.value}"})

    def credentials(self, token: Token | None) -> tuple[str, ...]:
        # The client secret goes in the token request's form; Airflow masks it in logs, not in events.
        return (*super().credentials(token), self._client_secret)

    def error_message(self, response: Response) -> str:
        error = _error(response)
        if error is None:
            return super().error_message(response)
        text = f"{error.get('code', 'Error')}: {error.get('message', '')}".strip()
        details = [d for d in _list(error.get("details")) if isinstance(d, dict)]
        if details:
            text += " (" + "; ".join(f"{d.get('target') or d.get('code')}: {d.get('message')}" for d in details) + ")"
        return text

    def _call(self, method: str, path: str, *, version: int | None = None, **kwargs: Any) -> Request:
        accept = f"application/vnd.bentley.itwin-platform.v{version or self.family.version}+json"
        return Request(method, self.base_url + path, headers={"Accept": accept}, **kwargs)

    def _job_path(self, job_id: str = "") -> str:
        return f"{self.family.path}/jobs" + (f"/{quote(job_id, safe='')}" if job_id else "")

    # -- endpoints -------------------------------------------------------------------------------
    def check(self) -> Flow[str]:
        token = yield from self.login()
        del token  # proving we can get one is the check; it is never shown
        return f"iTwin token obtained for client {self._client_id} ({self.api} at {self.base_url})"

    def create(self, specification: Mapping[str, Any]) -> Flow[str]:
        """Create a job (v2: created = submitted); returns its id."""
        body = dict(specification)
        if self.itwin_id and "iTwinId" not in body:
            body["iTwinId"] = self.itwin_id
        request = self._call("POST", self._job_path(), json=body, idempotent=False)
        response = yield from self.send(request, None, what="create a job")
        data = self.parse_json(response, None, what="create a job")
        job = self.require(data, "job", None, what="create a job")
        job_id = self.require(job, "id", None, what="create a job")
        return str(job_id)

    def start(self, job_id: str) -> Flow[None]:
        """Submit a created v1 job (PATCH state active); v2 jobs run from creation."""
        if self.family.separate_submit:
            request = self._call("PATCH", self._job_path(job_id), json={"state": "active"})
            yield from self.send(request, job_id, what="submit the job")
        return None

    def delete_unsubmitted(self, job_id: str) -> Flow[None]:
        yield from self.send(self._call("DELETE", self._job_path(job_id)), job_id, what="delete the unsubmitted job")
        return None

    def details(self, job_id: str) -> Flow[dict[str, Any]]:
        response = yield from self.send(self._call("GET", self._job_path(job_id)), job_id, what="read job details")
        data = self.parse_json(response, job_id, what="read job details")
        job = self.require(data, "job", job_id, what="read job details")
        if not isinstance(job, dict):
            raise VendorResponseError(self.vendor, job_id, "job details: 'job' is not an object")
        return job

    def progress(self, job_id: str) -> Flow[JobProgress]:
        what = "read progress"
        request = self._call("GET", self._job_path(job_id) + "/progress")
        response = yield from self.exchange(request, job_id, what=what)
        error = _error(response)
        if response.status == 404 and error is not None and error.get("code") in PROGRESS_GONE:
            return (yield from self.progress_from_details(job_id))
        if response.status >= 300:
            raise self.status_error(response, job_id, what=what)
        data = self.parse_status_json(response, job_id, what=what)
        reading = self.require(data, "progress", job_id, what=what)
        progress = parse_progress(reading, job_id)
        if progress.state is JobState.FAILED:
            return (yield from self.progress_from_details(job_id))
        return progress

    def progress_from_details(self, job_id: str) -> Flow[JobProgress]:
        """The final state, from job details, when progress is gone (or to learn why a job failed)."""
        job = yield from self.details(job_id)
        return (yield from self.progress_from_job(job_id, job))

    def progress_from_job(self, job_id: str, job: dict[str, Any]) -> Flow[JobProgress]:
        """A job's reading from its details or a listing's entry for it (a failure's messages read if need be)."""
        state = _state(job.get("state"), job_id)
        message = None
        if state is JobState.FAILED:
            message = yield from self._failure_message(job_id, job)
        elif state is JobState.QUEUED and str(job.get("state")).lower() == "unsubmitted":
            message = "the job was created but never submitted"
        percent = 100.0 if state is JobState.SUCCEEDED else None
        return JobProgress(self.vendor, job_id, state, percent, message=message, raw={"job": job})

    def _failure_message(self, job_id: str, job: dict[str, Any]) -> Flow[str]:
        info = job.get("executionInformation")
        errors = _list(info.get("errors") if isinstance(info, dict) else None)
        if not errors and self.family.version == 2:
            request = self._call("GET", self._job_path(job_id) + "/messages", max_answer=MESSAGES_ANSWER)
            response = yield from self.send(request, job_id, what="read job messages")
            data = self.parse_json(response, job_id, what="read job messages")
            messages = data.get("messages") if isinstance(data, dict) else None
            errors = _list(messages.get("errors") if isinstance(messages, dict) else None)
        texts = [str(e.get("message") or e.get("title") or e.get("code")) for e in errors if isinstance(e, dict)]
        return "; ".join(texts) or "the job failed (the vendor gave no message)"

    def cancel(self, job_id: str) -> Flow[None]:
        if self.family.separate_submit:
            request = self._call("PATCH", self._job_path(job_id), json={"state": "cancelled"})
        else:
            request = self._call("DELETE", self._job_path(job_id))
        yield from self.send(request, job_id, what="cancel")
        return None

    # -- the shared poller's listings (core.poller) ------------------------------------------------
    def list_running(self) -> Flow[Listing | None]:
        """The connection's running jobs (states only: a listing carries no percentage) in a few pages of
        ``GET …/jobs?$filter=`` on their states, in the grammar of Bentley's jobs-get-all pages (properties id,
        iTwinId, name, email, type, state, createdDateTime, inputId, outputId; operators eq, ne, lt, le, gt, ge,
        in, and, or), the same for v1 and v2. Pages stop at ``LIST_PAGES``: then the listing is incomplete, and
        a job missing from it is not taken for ended."""
        running = V2_RUNNING if self.family.version == 2 else V1_RUNNING
        states = " or ".join(f"state eq '{state}'" for state in running)
        clauses = [f"iTwinId eq {self.itwin_id}"] if self.itwin_id else []
        jobs, complete = yield from self._listed(" and ".join([*clauses, f"({states})"]), self._states_of)
        readings: dict[str, JobProgress] = {}
        for job_id, name in jobs.items():
            state = state_named(name)
            if state is not None and not state.is_terminal:
                readings[job_id] = JobProgress(self.vendor, job_id, state)  # no raw (core.model.Listing)
        return Listing(readings, complete=complete, percentages=False)

    def read_ended(self, ended: Mapping[str, JobProgress]) -> Flow[dict[str, JobProgress]]:
        """How jobs that left the running listing ended: their entries, ``ENDED_BATCH`` ids a call
        (``id eq '…' or …``), each read as its details would be (a listing's entry is the job's details): no call
        of its own but a failure's messages where the entry has none (v2). Per job, a failure would cost three
        calls (progress, details, messages): a Trial client's hour holds 75 a minute for every wait's end. A
        cancellation's percentage is the wait's last one (``core.poller``). Failures come last, each on its own:
        one whose messages cannot be read is left out (its wait reads it), the others' verdicts stay. A job still
        running is answered as the running listing would have (a listing of many pages misses jobs when others end
        between its pages), so its wait is not woken to read it."""
        found: dict[str, JobProgress] = {}
        failed: dict[str, dict[str, Any]] = {}
        ids = sorted(ended)
        for start in range(0, len(ids), ENDED_BATCH):
            batch = " or ".join(f"id eq {_literal(job_id)}" for job_id in ids[start : start + ENDED_BATCH])
            jobs, _ = yield from self._listed(f"({batch})", self._jobs_by_id)
            for job_id, job in jobs.items():
                state = job_state(job)
                if job_id not in ended or state is None:
                    continue
                if not state.is_terminal:  # still running: the listing's pages missed it (others ended between them)
                    found[job_id] = JobProgress(self.vendor, job_id, state)
                elif state is JobState.FAILED:
                    failed[job_id] = job
                else:
                    found[job_id] = replace((yield from self.progress_from_job(job_id, job)), raw=None)
        for job_id, job in failed.items():
            try:
                found[job_id] = replace((yield from self.progress_from_job(job_id, job)), raw=None)
            except JobProgressError as exc:
                log.warning("iTwin job %s failed; reading why failed too, its wait reads it: %s", job_id, exc)
        return found

    def _listed(
        self, filter: str, read: Callable[[Response], tuple[dict[str, _T], str | None]]
    ) -> Flow[tuple[dict[str, _T], bool]]:
        """What ``read`` takes of each job a filter selects, by id, from at most ``LIST_PAGES`` pages of
        ``LIST_PAGE``; and whether that was all of them (a continuation token handed out twice is a
        ``VendorResponseError``)."""
        jobs: dict[str, _T] = {}
        token: str | None = None
        seen: set[str] = set()
        for _ in range(LIST_PAGES):
            page, token = read((yield from self._list_page(filter, LIST_PAGE, token)))
            jobs.update(page)
            token = next_page_token(token, seen, None, what="list jobs")
            if token is None:
                return jobs, True
        return jobs, False

    def _jobs_by_id(self, response: Response) -> tuple[dict[str, dict[str, Any]], str | None]:
        jobs, token = self._jobs_of(response)
        return {job["id"]: job for job in jobs if isinstance(job.get("id"), str) and job["id"]}, token

    def _states_of(self, response: Response) -> tuple[dict[str, Any], str | None]:
        """A listing page's jobs' states by id, decoding only those two fields of each (``_StatesPage``): the
        running listing reads pages of up to 1,000 jobs' whole details every cycle (``json.loads`` of one: 2.8 ms;
        this: 0.35 ms). A page this shape does not fit (an entry that is not an object, no ``jobs`` list, not
        JSON) is read as ``list_jobs_page`` reads it, with its errors. Fields it skips are not checked: a page
        whose job names hold bytes that are not UTF-8, which the whole parse refuses, is read."""
        try:
            page = _STATES_PAGE.decode(response.body)
        except (msgspec.MsgspecError, RecursionError):  # deep nesting: msgspec meets the recursion limit
            jobs, token = self._jobs_by_id(response)
            return {job_id: job.get("state", "") for job_id, job in jobs.items()}, token
        states = {job.id: job.state for job in page.jobs if isinstance(job.id, str) and job.id}
        return states, _continuation_token({"_links": page.links})

    # -- listing -------------------------------------------------------------------------------
    def list_jobs_page(
        self, filter: str | None = None, *, top: int | None = None, continuation_token: str | None = None
    ) -> Flow[tuple[list[dict[str, Any]], str | None]]:
        """One page of ``GET …/jobs?$filter=…``: (jobs, the continuation token of the next page or None).

        The API needs a filter; without one, the connection's iTwin is the filter.
        """
        return self._jobs_of((yield from self._list_page(filter, top, continuation_token)))

    def _list_page(self, filter: str | None, top: int | None, continuation_token: str | None) -> Flow[Response]:
        params = {"$filter": self._job_filter(filter)}
        if top is not None:
            params["$top"] = str(top)
        if continuation_token:
            params["continuationToken"] = continuation_token
        request = self._call("GET", self._job_path(), params=params, max_answer=answer_limit(top or MAX_PAGE))
        return (yield from self.send(request, None, what="list jobs"))

    def _jobs_of(self, response: Response) -> tuple[list[dict[str, Any]], str | None]:
        what = "list jobs"
        data = self.parse_json(response, None, what=what)
        jobs = self.require(data, "jobs", None, what=what)
        if not isinstance(jobs, list):
            raise VendorResponseError(self.vendor, None, "list jobs: 'jobs' is not a list")
        return [job for job in jobs if isinstance(job, dict)], _continuation_token(data)

    def list_jobs(self, filter: str | None = None, *, top: int | None = None) -> Flow[list[dict[str, Any]]]:
        """Every job the filter selects, page after page."""
        jobs: list[dict[str, Any]] = []
        token: str | None = None
        seen: set[str] = set()
        while True:
            page, token = yield from self.list_jobs_page(filter, top=top, continuation_token=token)
            jobs.extend(page)
            token = next_page_token(token, seen, None, what="list jobs")
            if token is None:
                return jobs

    def _job_filter(self, filter: str | None) -> str:
        if filter:
            return filter
        if self.itwin_id:
            return f"iTwinId eq {self.itwin_id}"
        raise ValueError(
            'listing iTwin jobs needs a filter (for example "iTwinId eq <id>") or the connection extra itwin_id'
        )

    def finished_jobs_filter(
        self, states: Sequence[JobState], created_after: str | None = None, *, name: str | None = None
    ) -> str:
        """The ``$filter`` for jobs of the connection's iTwin in one of ``states``, created after a time
        (and named ``name``, when given).

        Bentley filters on id, iTwinId, name, email, type, state and createdDateTime only (jobs-get-all): the
        end time cannot be filtered on, so the caller keeps its own watermark of end times, and bounds the
        listing by creation time (a job ends after it was created).
        """
        names = {JobState.SUCCEEDED: "success", JobState.FAILED: "failed", JobState.CANCELLED: "cancelled"}
        spelled = [names[state] if self.family.version == 1 else names[state].capitalize() for state in states]
        clauses = [f"iTwinId eq {self.itwin_id}"] if self.itwin_id else []
        clauses.append("(" + " or ".join(f"state eq '{name}'" for name in spelled) + ")")
        if created_after:
            clauses.append(f"createdDateTime gt {created_after}")
        if name is not None:
            clauses.append(f"name eq {_quoted(name)}")
        return " and ".join(clauses)

    # -- results ---------------------------------------------------------------------------------
    def output_ids(self, job_id: str) -> Flow[list[tuple[str, str]]]:
        """The job's outputs as (name, location): a reality data id or a ``bkt:<path>`` in the iTwin's bucket."""
        job = yield from self.details(job_id)
        return self._finished_outputs(job_id, job)

    def _finished_outputs(self, job_id: str, job: dict[str, Any]) -> list[tuple[str, str]]:
        state = _state(job.get("state"), job_id)
        if state is not JobState.SUCCEEDED:
            raise ResultNotReadyError(self.vendor, job_id, f"the job is {state.value}, it has no outputs to download")
        if self.family.version == 1:
            return v1_outputs(job, job_id)
        specifications = job.get("specifications")
        if specifications is not None and not isinstance(specifications, dict):
            raise VendorResponseError(
                self.vendor, job_id, f"job specifications are not an object: {brief(specifications)}"
            )
        return v2_outputs((specifications or {}).get("outputs"), job_id)

    def results(self, job_id: str) -> Flow[list[ResultPart]]:
        job = yield from self.details(job_id)
        parts: list[ResultPart] = []
        bucket: str | None = None
        for name, location in self._finished_outputs(job_id, job):
            if location.startswith(BUCKET_SCHEME):
                if bucket is None:
                    bucket = yield from self._bucket_url(job_id, str(job.get("iTwinId") or self.itwin_id or ""))
                parts.extend((yield from self._bucket_parts(job_id, bucket, name, location)))
                continue
            container = yield from self._container_url(job_id, location)
            blobs = yield from self._list_blobs(job_id, container)
            if not blobs:
                raise VendorResponseError(
                    self.vendor, job_id, f"output {name!r} (reality data {location}) holds no files to download"
                )
            parts.extend(ResultPart(name=f"{name}/{blob}", request=_blob_request(container, blob)) for blob in blobs)
        return parts

    def _bucket_parts(self, job_id: str, bucket: str, name: str, location: str) -> Flow[list[ResultPart]]:
        """The blobs of a ``bkt:`` output, the path taken as a prefix (a file, or a folder of files)."""
        prefix = location.removeprefix(BUCKET_SCHEME).lstrip("/")
        blobs = yield from self._list_blobs(job_id, bucket, prefix=prefix)
        if prefix in blobs:  # a file: not its namesakes with longer names ("report.json.bak")
            blobs = [prefix]
        if not blobs:
            raise VendorResponseError(
                self.vendor, job_id, f"output {name!r} ({location}) is not in the iTwin's bucket: nothing to download"
            )
        parts = []
        for blob in blobs:
            inner = blob.rsplit("/", 1)[-1] if blob == prefix else blob.removeprefix(prefix).lstrip("/")
            parts.append(ResultPart(name=f"{name}/{inner}", request=_blob_request(bucket, blob)))
        return parts

    def _bucket_url(self, job_id: str, itwin_id: str) -> Flow[str]:
        if not itwin_id:
            raise VendorResponseError(
                self.vendor, job_id, "the job names no iTwin and the connection has no itwin_id: no bucket to read"
            )
        path = BUCKET_PATH.format(itwin_id=quote(itwin_id, safe=""))
        response = yield from self.send(self._call("GET", path, version=2), job_id, what="get the iTwin's bucket")
        data = self.parse_json(response, job_id, what="get the iTwin's bucket")
        return _container_href(data, job_id, what="bucket answer")

    def _container_url(self, job_id: str, data_id: str) -> Flow[str]:
        params = {"iTwinId": self.itwin_id} if self.itwin_id else None
        path = f"/reality-management/reality-data/{quote(data_id, safe='')}/readaccess"
        response = yield from self.send(
            self._call("GET", path, version=1, params=params), job_id, what="get read access"
        )
        data = self.parse_json(response, job_id, what="get read access")
        return _container_href(data, job_id, what="read access answer")

    def _list_blobs(self, job_id: str, container: str, *, prefix: str = "") -> Flow[list[str]]:
        names: list[str] = []
        marker: str | None = ""
        seen: set[str] = set()
        while True:
            query = "restype=container&comp=list"
            if prefix:
                query += f"&prefix={quote(prefix, safe='')}"
            if marker:
                query += f"&marker={quote(marker, safe='')}"
            request = Request("GET", _with_query(container, query), authenticated=False, max_answer=BLOB_LIST_ANSWER)
            response = yield from self.send(request, job_id, what="list output files")
            page, marker = parse_blob_list(response, job_id)
            names.extend(page)
            marker = next_page_token(marker, seen, job_id, what="list output files")
            if not marker:
                return names


def parse_progress(reading: Any, job_id: str) -> JobProgress:
    """Read ``{"percentage", "state", "step"}`` (v1) or ``{"state", "percentage"}`` (v2)."""
    if not isinstance(reading, dict):
        raise VendorResponseError(ITwinApi.vendor, job_id, "progress: 'progress' is not an object")
    state = _state(reading.get("state"), job_id)
    try:
        percent = percentage(reading.get("percentage"), ITwinApi.vendor, job_id, what="progress")
    except VendorResponseError:
        if not state.is_terminal:
            raise
        percent = None  # a clear final state wins over a number that cannot be read
    step = reading.get("step")
    message = "the job was created but never submitted" if str(reading.get("state")).lower() == "unsubmitted" else None
    return JobProgress(
        ITwinApi.vendor,
        job_id,
        state,
        percent,
        step=str(step) if isinstance(step, str | int | float) and step else None,
        message=message,
        raw=reading,
    )


def _state(value: Any, job_id: str) -> JobState:
    state = STATES.get(str(value).lower()) if isinstance(value, str) else None
    if state is None:
        raise VendorResponseError(ITwinApi.vendor, job_id, f"unknown job state {brief(value)}")
    return state


def parse_blob_list(response: Response, job_id: str) -> tuple[list[str], str]:
    """Azure List Blobs XML -> (blob names, next marker)."""
    try:
        # The XML comes from the vendor's storage account over TLS; the stdlib parser does not fetch entities.
        root = ET.fromstring(response.body)  # noqa: S314
    except ET.ParseError:
        raise VendorResponseError(
            ITwinApi.vendor, job_id, f"list output files: expected Azure XML, got {describe_body(response)}"
        ) from None
    names = [el.text for el in root.iter("Name") if el.text]
    return names, (root.findtext("NextMarker") or "").strip()


def v1_outputs(job: dict[str, Any], job_id: str) -> list[tuple[str, str]]:
    """v1 outputs ``[{"type", "id"}]`` of a finished job; one without an id cannot be downloaded."""
    outputs = job.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise VendorResponseError(ITwinApi.vendor, job_id, f"job outputs are not a list: {brief(outputs)}")
    found = []
    for output in outputs or []:
        name = str(output.get("type") or "output") if isinstance(output, dict) else brief(output)
        location = output.get("id") if isinstance(output, dict) else None
        if not isinstance(location, str) or not location:
            raise VendorResponseError(ITwinApi.vendor, job_id, f"output {name!r} has no reality data id to download")
        found.append((name, location))
    return found


def v2_outputs(outputs: Any, job_id: str) -> list[tuple[str, str]]:
    """v2 ``specifications.outputs`` as (name, location); nested ones named after their key and format.

    Values are reality data ids or ``bkt:`` paths (``{"scene": id, "report": "bkt:…"}``), or nested:
    ``{"modelingReference": {"location": id}}``, ``{"exports": [{"format": "OBJ", "location": id}, …]}``.
    An output left null was not produced; any other shape is an error naming the output.
    """
    if outputs is None:
        return []
    if not isinstance(outputs, dict):
        raise VendorResponseError(ITwinApi.vendor, job_id, f"job outputs are not an object: {brief(outputs)}")
    found: list[tuple[str, str]] = []
    for key, value in outputs.items():
        found.extend(_v2_output(str(key), value, job_id))
    return found


def _v2_output(name: str, value: Any, job_id: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, str) and value:
        return [(name, value)]
    if isinstance(value, dict) and isinstance(value.get("location"), str):
        return [(name, value["location"])]
    if isinstance(value, list) and all(isinstance(item, dict) and "location" in item for item in value):
        found: list[tuple[str, str]] = []
        seen: dict[str, int] = {}
        for position, item in enumerate(value):
            label = str(item.get("format") or position)
            seen[label] = seen.get(label, 0) + 1
            suffix = f"-{seen[label]}" if seen[label] > 1 else ""
            found.extend(_v2_output(f"{name}/{label}{suffix}", item["location"], job_id))
        return found
    raise VendorResponseError(
        ITwinApi.vendor, job_id, f"output {name!r} is {brief(value)}: neither a reality data id nor a bucket path"
    )


def _container_href(data: Any, job_id: str, *, what: str) -> str:
    try:
        return str(data["_links"]["containerUrl"]["href"])
    except (KeyError, TypeError):
        raise VendorResponseError(ITwinApi.vendor, job_id, f"{what} has no _links.containerUrl.href") from None


def job_ended_at(job: Mapping[str, Any]) -> str | None:
    """A listed job's end time as the API printed it (v2 ``executionInfo``, v1 ``executionInformation``)."""
    for key in ("executionInfo", "executionInformation"):
        info = job.get(key)
        if isinstance(info, dict) and info.get("endedDateTime"):
            return str(info["endedDateTime"])
    return None


def job_state(job: Mapping[str, Any]) -> JobState | None:
    """A listed job's state in our words; None for a state this module does not know."""
    return state_named(job.get("state", ""))


def state_named(name: Any) -> JobState | None:
    """A job state as the API spells it (any case: v1 ``active``, v2 ``Active``) in our words, or None."""
    return STATES.get(str(name).lower())


def _quoted(value: str) -> str:
    """An OData string literal (a quote inside doubled)."""
    return "'" + value.replace("'", "''") + "'"


def _literal(job_id: str) -> str:
    """A job id in ``$filter``: bare when it is a GUID, as Bentley's examples write ``id eq <guid>``."""
    return job_id if _GUID.fullmatch(job_id) else _quoted(job_id)


def next_page_token(token: str | None, seen: set[str], job_id: str | None, *, what: str) -> str | None:
    """The token of the next page to ask for (a continuation token, a blob marker), or None at the end.

    A token handed out before would send the listing round for ever (holding every page it reads): that is a
    ``VendorResponseError``, never a short listing passed off as whole, which would lose what the unread pages
    hold. ``seen`` collects the tokens of one listing.
    """
    if not token:
        return None
    if token in seen:
        raise VendorResponseError(
            ITwinApi.vendor,
            job_id,
            f"{what}: the API handed out the same continuation token again after {len(seen) + 1} pages; "
            "following it would never reach the end",
        )
    seen.add(token)
    return token


class _StatedJob(msgspec.Struct, gc=False):
    """A listed job as the running listing reads it: its id and state, the rest of its details skipped.

    Not tracked by the garbage collector (it holds no reference back to itself): a page's thousand entries
    would each count towards the next collection."""

    id: Any = None
    state: Any = ""


class _StatesPage(msgspec.Struct, gc=False):
    """A listing page as the running listing reads it (untracked too: decoded JSON holds no cycle)."""

    jobs: list[_StatedJob]
    links: Any = msgspec.field(default=None, name="_links")


_STATES_PAGE = msgspec.json.Decoder(_StatesPage)


def _continuation_token(data: dict[str, Any]) -> str | None:
    """The ``continuationToken`` in ``_links.next.href``, as Bentley's SDK reads it."""
    try:
        href = str(data["_links"]["next"]["href"])
    except (KeyError, TypeError):
        return None
    try:
        query = urlsplit(href).query
    except ValueError:  # "Invalid IPv6 URL": the next page cannot be found, and the listing is not whole
        raise VendorResponseError(ITwinApi.vendor, None, "list jobs: the next page's link is not a URL") from None
    tokens = parse_qs(query).get("continuationToken")
    return tokens[0] if tokens else None


def _with_query(url: str, extra: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _blob_request(container: str, blob: str) -> Request:
    parts = urlsplit(container)
    path = parts.path.rstrip("/") + "/" + quote(blob)
    return Request("GET", urlunsplit((parts.scheme, parts.netloc, path, parts.query, "")), authenticated=False)


def _list(value: Any) -> list[Any]:
    """A list the vendor answered, or an empty one for anything else (absent, null, a number...)."""
    return value if isinstance(value, list) else []


def _error(response: Response) -> dict[str, Any] | None:
    try:
        data = response.lenient_json()
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return data["error"]  # type: ignore[no-any-return]
    return None


def _oauth_error(response: Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return f"HTTP {response.status}"
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return f"HTTP {response.status} {data['error']}"
    return f"HTTP {response.status}"
