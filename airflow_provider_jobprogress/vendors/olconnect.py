"""Upland OL Connect All-In-One print operations: endpoints, auth flow and answers, as pure flows.

Decisions where the vendor docs are silent (see shared/vendors/README.md):
- a failed operation shows as getProgress answering HTTP 500 with a JSON Error body: FAILED with that
  message; a message that says the operation was cancelled means CANCELLED. A 5xx without such a body
  is transient and retried.
- getProgress 404: servers drop finished operations from their active list, so we ask getResultTxt;
  a result means SUCCEEDED, a JSON Error (HTTP 500) says how it failed or was cancelled as getProgress's
  would, otherwise the operation is unknown (JobNotFoundError).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import replace
from functools import cached_property
from typing import Any
from urllib.parse import quote

from airflow_provider_jobprogress.core.errors import (
    ConfigurationError,
    JobFailedError,
    JobNotFoundError,
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

DEFAULT_PORT = 9340
ROOT = "/rest/serverengine"
PRINT = f"{ROOT}/workflow/print"
AUTH_MODES = ("token", "basic")
_PERCENT = re.compile(r"[0-9]{1,3}(\.[0-9]+)?", re.ASCII)
#: getResultTxt and getManagedResult list one line (a path, a File Store id) per output file: 10,000 of 1 KiB
RESULT_LIST_ANSWER = answer_limit(10_000, per_item=1024)
#: the most operations a getOperations listing may hold (it lists every operation the server runs, watched or
#: not, ~150 bytes each): 20,000 is 3 MB, parsed on the triggerer's loop in ~30 ms. A server running more is not
#: listed (the poller's listing fails, logged) and its waits read their own operations.
LISTED_OPERATIONS = 20_000
LIST_ANSWER = answer_limit(LISTED_OPERATIONS, per_item=512)


class OLConnectApi(VendorApi):
    """The All-In-One (``/workflow/print``) service of an OL Connect server."""

    vendor = "OL Connect"
    # The vendor gives no polling guidance; operations take seconds to minutes.
    default_poll_policy = PollPolicy.exponential(5, factor=1.5, max_interval=60)
    token_margin = 15.0
    # An on-premise server that also does the printing; Upland documents no limit. 1,200 calls a minute (20 a
    # second) from one process: with getOperations, 5,000 waits need about one a second plus one per ending.
    default_requests_per_minute = 1200.0
    list_interval = 5.0

    def __init__(
        self,
        base_url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        auth: str = "token",
        request_retry: RequestRetry | None = None,
        verify: bool | str = True,
    ) -> None:
        super().__init__(request_retry=request_retry, verify=verify)
        if auth not in AUTH_MODES:
            raise ConfigurationError(self.vendor, None, f"{auth!r} is not one of {', '.join(AUTH_MODES)}", field="auth")
        self.base_url = base_url.rstrip("/")
        self._user = user or None
        self._password = password or ""
        self.auth = auth

    @classmethod
    def from_connection(cls, conn: ConnectionFields, *, request_retry: RequestRetry | None = None) -> OLConnectApi:
        base_url = conn.service_url(
            cls.vendor, default_host="localhost", default_scheme="http", default_port=DEFAULT_PORT
        )
        api = cls(
            base_url,
            user=conn.login,
            password=conn.password,
            auth=conn.choice(cls.vendor, "auth", AUTH_MODES, "token"),
            request_retry=request_retry,
            verify=conn.tls_verify(),
        )
        api.from_fields(conn)
        return api

    # -- auth ------------------------------------------------------------------------------------
    @property
    def uses_token(self) -> bool:
        return self._user is not None and self.auth == "token"

    def _basic(self) -> dict[str, str]:
        return {"Authorization": "Basic " + self._basic_credentials}

    @cached_property
    def _basic_credentials(self) -> str:
        return base64.b64encode(f"{self._user}:{self._password}".encode()).decode()

    def credentials(self, token: Token | None) -> tuple[str, ...]:
        # The login itself and the basic mode send Basic credentials; the password is masked by Airflow, not
        # its base64 form.
        basic = (self._basic_credentials,) if self._user is not None else ()
        return (*super().credentials(token), *basic)

    def login(self) -> Flow[Token]:
        request = Request("POST", f"{ROOT}/authentication/login", headers=self._basic(), authenticated=False)
        response = yield from self.send(self._url(request), None, what="log in")
        token = response.text.strip()
        if not token or "<" in token:
            raise VendorResponseError(self.vendor, None, f"log in: expected a token, got {describe_body(response)}")
        lifetime = response.header("token-expires-in")
        lifetime = (lifetime or "").strip()
        # ASCII digits only: str.isdigit() is also true for "²", which float() refuses
        expires = now() + float(lifetime) if lifetime.isascii() and lifetime.isdigit() else None
        return Token(token, expires)

    def authorize(self, request: Request, token: Token | None) -> Request:
        if token is not None:
            return request.with_headers({"auth_token": token.value})
        if self._user is not None:
            return request.with_headers(self._basic())
        return request  # server security disabled

    def token_rejected(self, response: Response) -> bool:
        # 401 = expired, 403 = invalid on servers up to 2023; 2024.2+ answer 401 for both.
        return response.status in (401, 403)

    def error_message(self, response: Response) -> str:
        error = _json_error(response)
        if error is not None:
            return str(error.get("message") or brief(error))
        if response.status == 401 and not response.body.strip() and response.header("www-authenticate"):
            # What the server answers a call that carried no credentials at all.
            return "the server requires credentials (server security is on): set the connection's login and password"
        return super().error_message(response)

    def is_transient(self, response: Response) -> bool:
        # A 5xx carrying a JSON Error body is the server's verdict on the operation, not a hiccup.
        return _json_error(response) is None

    def _url(self, request: Request) -> Request:
        return replace(request, url=self.base_url + request.url)

    def _call(self, method: str, path: str, **kwargs: Any) -> Request:
        return self._url(Request(method, path, **kwargs))

    # -- endpoints -------------------------------------------------------------------------------
    def check(self) -> Flow[str]:
        response = yield from self.send(self._call("GET", f"{PRINT}/version"), None, what="read the service version")
        return f"OL Connect All-In-One service {response.text.strip()[:40]} at {self.base_url}"

    def submit(self, configuration: Mapping[str, Any]) -> Flow[str]:
        """Start an All-In-One operation; returns its operationId."""
        request = self._call("POST", f"{PRINT}/submit", json=dict(configuration), idempotent=False)
        response = yield from self.exchange(request, None, what="submit an All-In-One operation")
        if response.status >= 500 and _json_error(response) is not None:
            raise JobFailedError(self.vendor, None, f"submit refused: {self.error_message(response)}")
        if response.status >= 300:
            raise self.status_error(response, None, what="submit an All-In-One operation")
        operation_id = (response.header("operationid") or "").strip()
        if not operation_id:
            raise VendorResponseError(
                self.vendor, None, f"submit answered HTTP {response.status} without an operationId header"
            )
        return operation_id

    def progress(self, job_id: str) -> Flow[JobProgress]:
        what = "read progress"
        response = yield from self.exchange(self._call("GET", f"{PRINT}/getProgress/{_q(job_id)}"), job_id, what=what)
        if response.status == 404:
            return (yield from self._progress_after_drop(job_id))
        error = _json_error(response)
        if response.status >= 500 and error is not None:
            return _failure(job_id, error)
        if response.status >= 300:
            raise self.status_error(response, job_id, what=what)
        return parse_progress(response, job_id)

    def _progress_after_drop(self, job_id: str) -> Flow[JobProgress]:
        request = self._call("POST", f"{PRINT}/getResultTxt/{_q(job_id)}", max_answer=RESULT_LIST_ANSWER)
        response = yield from self.exchange(request, job_id, what="read the result of a dropped operation")
        if response.status == 200:
            return JobProgress(
                self.vendor,
                job_id,
                JobState.SUCCEEDED,
                100.0,
                message="operation no longer listed; its result is available",
                raw=response.text.strip(),
            )
        error = _json_error(response)
        if response.status >= 500 and error is not None and "not completed" not in str(error.get("message")):
            # how it failed or was cancelled, as getProgress said before the server dropped it
            return _failure(job_id, error)
        raise JobNotFoundError(self.vendor, job_id, f"getProgress and getResultTxt answered {response.status}")

    def cancel(self, job_id: str) -> Flow[None]:
        yield from self.send(self._call("POST", f"{PRINT}/cancel/{_q(job_id)}"), job_id, what="cancel")
        return None

    def list_running(self) -> Flow[Listing | None]:
        """Every operation the server still runs, with its progress, in one call: getOperations answers the
        "JSON Operations List" (Upland's REST API cookbook: an array of ``{id, type, subTask, startTime,
        progress}``, only operations still active). An operation no longer listed is read once with
        getProgress (``done``, or its error): see ``core.poller``. A server without the call (404, 405)
        cannot list; an entry we cannot read is left out, so its wait reads its own operation."""
        what = "list running operations"
        request = self._call("GET", f"{PRINT}/getOperations", max_answer=LIST_ANSWER)
        response = yield from self.exchange(request, None, what=what)
        if response.status in (404, 405, 501):
            return None
        if response.status >= 300:
            raise self.status_error(response, None, what=what)
        data = self.parse_json(response, None, what=what)
        if not isinstance(data, list):
            raise VendorResponseError(
                self.vendor, None, f"{what}: expected a JSON array, got {describe_body(response)}"
            )
        jobs: dict[str, JobProgress] = {}
        for item in data:
            job_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(job_id, str) or not job_id:
                continue
            try:
                percent = percentage(item.get("progress"), self.vendor, job_id, what=what)
            except VendorResponseError:
                continue
            # no raw: a listing's readings are kept for every wait (core.model.Listing)
            jobs[job_id] = JobProgress(self.vendor, job_id, JobState.RUNNING, percent)
        return Listing(jobs)

    def result_text(self, job_id: str) -> Flow[str]:
        """getResultTxt: the entity id or output path(s), never the file bytes."""
        response = yield from self._result_txt(job_id)
        return response.text

    def _result_txt(self, job_id: str) -> Flow[Response]:
        request = self._call("POST", f"{PRINT}/getResultTxt/{_q(job_id)}", max_answer=RESULT_LIST_ANSWER)
        return (yield from self.send(request, job_id, what="read the result as text"))

    def result_value(self, text: str) -> Any:
        """getResult text is an entity id, or one absolute output path per line."""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[0] if len(lines) == 1 else lines

    def xcom_results(self, job_id: str) -> Flow[list[ResultPart]]:
        """For XCom, several spool files are their paths (getResultTxt), not their bytes."""
        answer = yield from self._result_txt(job_id)
        text, sets = answer.text, set_ids(answer)
        if len([line for line in text.splitlines() if line.strip()]) > 1:
            return [ResultPart(name=f"{job_id}.paths.txt", value=text, metadata=sets)]
        return [ResultPart(request=self._call("POST", f"{PRINT}/getResult/{_q(job_id)}"), metadata=sets)]

    def results(self, job_id: str) -> Flow[list[ResultPart]]:
        """One part for getResult, or one per spool file when the operation wrote several.

        getResult answers an entity id, the bytes of a single output file, or (several spool files) their
        absolute paths on the server. Those files are fetched from the File Store through
        getManagedResult (newer servers); where the server has no File Store result, the paths
        themselves are the result.
        """
        answer = yield from self._result_txt(job_id)
        text, sets = answer.text, set_ids(answer)
        paths = [line.strip() for line in text.splitlines() if line.strip()]
        if len(paths) < 2:
            return [ResultPart(request=self._call("POST", f"{PRINT}/getResult/{_q(job_id)}"), metadata=sets)]
        request = self._call("POST", f"{PRINT}/getManagedResult/{_q(job_id)}", max_answer=RESULT_LIST_ANSWER)
        response = yield from self.exchange(request, job_id, what="read the managed result")
        files = managed_files(response, paths) if response.status == 200 else None
        if files is None:
            return [ResultPart(name=f"{job_id}.paths.txt", value=text, metadata=sets)]
        sets = {**sets, **set_ids(response)}
        return [
            ResultPart(
                name=name, request=self._call("GET", f"{ROOT}/filestore/file/{where}"), source=source, metadata=sets
            )
            for name, where, source in files
        ]


#: result headers (with ``returnIdInHeader``) that Upland's client reads, and our metadata key for each
SET_ID_HEADERS = {"x-data-set-id": "data_set_id", "x-content-set-id": "content_set_id", "x-job-set-id": "job_set_id"}


def set_ids(response: Response) -> dict[str, int | str]:
    """The data, content and job set ids a result answer carries in its headers (numbers where they are)."""
    found: dict[str, int | str] = {}
    for header, key in SET_ID_HEADERS.items():
        value = (response.header(header) or "").strip()
        if value:
            found[key] = int(value) if value.isascii() and value.isdigit() else value
    return found


def managed_files(response: Response, paths: list[str]) -> list[tuple[str, str, str]] | None:
    """getManagedResult as (file name, File Store path after ``/filestore/file/``, the vendor's own name for
    the file); None when unusable.

    The docs say text (one File Store id per output, one per line, matched to the spool paths); Upland's
    own client parses JSON ``{"identifier": <folder id>, "files": [names]}``, whose files download with
    ``/filestore/file/{folder id}/{name}``. Both are read; anything else leaves the paths as the result.
    """
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        folder, names = data.get("identifier"), data.get("files")
        if folder in (None, "") or not isinstance(names, list) or not names:
            return None
        return [(_basename(str(name)), f"{_q(str(folder))}/{quote(str(name), safe='/')}", str(name)) for name in names]
    file_ids = [line.strip() for line in response.text.splitlines() if line.strip()]
    if len(file_ids) != len(paths):
        return None
    return [(_basename(path), _q(file_id), path) for path, file_id in zip(paths, file_ids, strict=True)]


def _basename(path: str) -> str:
    """A spool file's own name, from a Windows or POSIX server path (the core keeps it inside the destination)."""
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _q(job_id: str) -> str:
    return quote(job_id, safe="")


def parse_progress(response: Response, job_id: str) -> JobProgress:
    """Read a getProgress answer: ``0``..``100`` while running, ``done`` when complete."""
    text = response.text.strip()
    if text.lower() == "done":
        return JobProgress(OLConnectApi.vendor, job_id, JobState.SUCCEEDED, 100.0, raw=text)
    # ASCII digits only: float() also reads fullwidth or Arabic-Indic digits, "1_0", "nan" and "inf",
    # none of which a server sends.
    percent = float(text) if _PERCENT.fullmatch(text) else -1.0
    if not 0 <= percent <= 100 or response.content_type == "text/html":
        raise VendorResponseError(
            OLConnectApi.vendor, job_id, f"getProgress: expected 0-100 or 'done', got {describe_body(response)}"
        )
    return JobProgress(OLConnectApi.vendor, job_id, JobState.RUNNING, percent, raw=text)


def _failure(job_id: str, error: dict[str, Any]) -> JobProgress:
    """An operation's JSON Error (HTTP 500): FAILED with its message, or CANCELLED when it says so."""
    message = str(error.get("message") or "operation failed")
    state = JobState.CANCELLED if "cancel" in message.lower() else JobState.FAILED
    return JobProgress(OLConnectApi.vendor, job_id, state, message=message, raw=error)


def _json_error(response: Response) -> dict[str, Any] | None:
    """The ``{"error": {status, message, parameter}}`` body of newer servers, if that is what came."""
    try:
        data = response.lenient_json()
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return data["error"]  # type: ignore[no-any-return]
    return None
