"""Sans-I/O vendor protocol machinery: requests, responses, auth, retries and error mapping as pure flows.

A *flow* is a generator that yields instructions (send this ``Request``, ``Sleep`` this long, give me
a ``GetToken``) and receives their results; it returns a typed value. Vendor adapters write their
endpoints as flows once; ``core.session`` runs the same flow with requests on workers and with aiohttp
in the triggerer. Nothing in this module touches a socket or a clock.

``VendorApi`` is the discipline every adapter shares (auth, retries, error mapping); a flow's words live in
``core.wire``, a connection's settings in ``core.settings``, value readers in ``core.values`` (all re-exported
here, as adapters written against 0.x import them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from airflow_provider_jobprogress.core.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    JobNotFoundError,
    JobProgressError,
    RateLimitedError,
    ResponseTooLargeError,
    VendorResponseError,
    VendorUnavailableError,
)
from airflow_provider_jobprogress.core.model import JobProgress, Listing
from airflow_provider_jobprogress.core.policies import PollPolicy, RequestRetry, parse_retry_after
from airflow_provider_jobprogress.core.settings import HTTP_SCHEMES, ConnectionFields
from airflow_provider_jobprogress.core.values import NOT_JOB_IDS, brief, check_job_id, percentage
from airflow_provider_jobprogress.core.wire import (
    LIST_ITEM_BYTES,
    MAX_ANSWER,
    TRANSIENT_STATUSES,
    Flow,
    GetToken,
    Instruction,
    OversizedAnswer,
    Request,
    Response,
    Sleep,
    Token,
    TransportError,
    answer_limit,
    describe_body,
    load_json,
    now,
    short_text,
)

__all__ = [
    "HTTP_SCHEMES",
    "LIST_ITEM_BYTES",
    "MAX_ANSWER",
    "NOT_JOB_IDS",
    "TRANSIENT_STATUSES",
    "ConnectionFields",
    "Flow",
    "GetToken",
    "Instruction",
    "OversizedAnswer",
    "Request",
    "Response",
    "ResultPart",
    "Sleep",
    "Token",
    "TransportError",
    "VendorApi",
    "answer_limit",
    "brief",
    "check_job_id",
    "describe_body",
    "load_json",
    "now",
    "percentage",
    "short_text",
]

T = TypeVar("T")


class VendorApi:
    """Base of the three vendor adapters: the shared request/answer discipline, written once.

    Subclasses set ``vendor`` and ``default_poll_policy``, implement the auth hooks when the vendor
    uses tokens, and write their endpoints as flows built on :meth:`send`.
    """

    vendor: ClassVar[str] = "vendor"
    default_poll_policy: ClassVar[PollPolicy] = PollPolicy.fixed(30)
    #: renew a token this many seconds before the vendor says it expires
    token_margin: ClassVar[float] = 60.0
    #: calls per minute (and per hour) one process sends with one connection unless its extras say otherwise
    #: (``requests_per_minute``, ``requests_per_hour``): see ``core.budget``
    default_requests_per_minute: ClassVar[float] = 1200.0
    default_requests_per_hour: ClassVar[float | None] = None
    #: where the vendor lists its jobs, the longest the shared poller goes between two listings (seconds)
    list_interval: ClassVar[float] = 15.0

    def __init__(self, *, request_retry: RequestRetry | None = None, verify: bool | str = True) -> None:
        self.request_retry = request_retry or RequestRetry()
        self.verify = verify
        #: the Airflow connection the settings came from (``from_connection``), for configuration errors
        self.conn_id: str | None = None
        #: the scheme came with the host field (``https://h``), not from the schema field
        self.scheme_from_host = False
        self.requests_per_minute = self.default_requests_per_minute
        self.requests_per_hour = self.default_requests_per_hour
        #: answer many waits' polls from one listing where the vendor has a list call (``list_polling`` extra)
        self.list_polling = True

    def from_fields(self, conn: Any) -> None:
        """Remember which connection (and which of its fields) these settings came from, and read the settings
        every vendor shares: the request budget and whether polls may be answered from a listing."""
        self.conn_id = conn.conn_id
        self.scheme_from_host = "://" in (conn.host or "")
        self.requests_per_minute = conn.positive_number(self.vendor, "requests_per_minute", self.requests_per_minute)
        hourly = conn.positive_number(self.vendor, "requests_per_hour", self.requests_per_hour or 0.0)
        self.requests_per_hour = hourly or None
        polling = conn.extra_bool_or_path("list_polling")
        if not isinstance(polling, bool):
            raise conn.problem(self.vendor, "list_polling", f"{brief(polling)} is not true or false")
        self.list_polling = polling

    def url_field(self, request: Request) -> str:
        """The connection field that set this request's scheme (named by configuration errors)."""
        return "host" if self.scheme_from_host else "schema"

    # -- auth, overridden by vendors ---------------------------------------------------------------
    @property
    def uses_token(self) -> bool:
        return False

    def login(self) -> Flow[Token]:
        """Flow that obtains a fresh token (only for vendors where ``uses_token``)."""
        raise NotImplementedError
        yield  # pragma: no cover - makes this a generator

    def authorize(self, request: Request, token: Token | None) -> Request:
        """Attach credentials to a request (token header, Basic credentials...)."""
        return request

    def calls_remaining(self, headers: Mapping[str, str]) -> int | None:
        """How many calls the vendor says this client has left in its window, where it says so."""
        return None

    def token_rejected(self, response: Response) -> bool:
        """True when the answer means the token is stale and one fresh login may cure it."""
        return response.status == 401

    def credentials(self, token: Token | None) -> tuple[str, ...]:
        """The secret values this vendor sends (a token, Basic credentials, a client secret): an answer that
        echoes one has it replaced before anything reads it (``Response.without``). Tokens are not given to
        Airflow's secrets masker, which keeps every pattern for good (see the README): nothing this provider
        writes may hold one."""
        return () if token is None else (token.value,)

    def error_message(self, response: Response) -> str:
        """The vendor's human message in an error answer; vendors override to read their body format."""
        return short_text(response)

    # -- the shared exchange -----------------------------------------------------------------------
    def send(self, request: Request, job_id: str | None, *, what: str) -> Flow[Response]:
        """Send ``request`` with credentials, retries and one re-login; return the answer, errors raised.

        2xx answers come back; 401/403/404/400/422/429 and exhausted 5xx become typed errors here,
        unless ``expect`` handling is needed, in which case use :meth:`exchange` and check yourself.
        """
        response = yield from self.exchange(request, job_id, what=what)
        if response.status >= 300:
            raise self.status_error(response, job_id, what=what)
        return response

    def exchange(self, request: Request, job_id: str | None, *, what: str) -> Flow[Response]:
        """Like :meth:`send` but hands back non-2xx answers other than retried ones, for vendor checks."""
        policy = self.request_retry
        failures = rate_waits = 0
        token: Token | None = None
        relogged = False
        if request.time_limit is None:
            request = request.within(policy.request_timeout)
        while True:
            if request.authenticated and self.uses_token:
                token = yield GetToken(stale=None)
            try:
                response: Response = yield (self.authorize(request, token) if request.authenticated else request)
                response = response.without(self.credentials(token))
            except TransportError as exc:
                if exc.plain_http:  # the same answer however often it is asked: not retried
                    origin = f"{urlsplit(request.url).hostname}:{urlsplit(request.url).port or 443}"
                    raise ConfigurationError(
                        self.vendor,
                        job_id,
                        f"{what}: the server at {origin} answers plain HTTP to https; use http, or the server's "
                        "https port",
                        conn_id=self.conn_id,
                        field=self.url_field(request),
                    ) from None
                failures += 1
                if (exc.sent and not request.idempotent) or failures >= policy.attempts:
                    raise self.transport_failure(exc, request, job_id, what=f"{what} ({failures} tries)") from None
                yield Sleep(policy.backoff(failures))
                continue
            except OversizedAnswer as exc:
                size = f"{exc.length} bytes" if exc.length is not None else "more than that (it came chunked)"
                raise ResponseTooLargeError(
                    self.vendor,
                    job_id,
                    f"{what}: the answer from {request.path} (HTTP {exc.status}) is larger than the {exc.limit} "
                    f"bytes such an answer may hold: {size}; read no further",
                ) from None
            if request.authenticated and self.uses_token and not relogged and self.token_rejected(response):
                relogged = True
                yield GetToken(stale=token)
                continue
            if response.status == 429:
                asked = parse_retry_after(response.header("retry-after"))
                rate_waits += 1
                wait = policy.rate_limit_pause(asked, rate_waits)
                if asked is not None and asked > policy.retry_after_limit:
                    raise RateLimitedError(
                        self.vendor,
                        job_id,
                        f"{what}: rate limited ({self.error_message(response)}); the vendor asked for a pause of "
                        f"{asked:.0f} s, longer than request_retry.retry_after_limit ({wait:g} s)",
                        retry_after=wait,
                    )
                if wait > policy.max_retry_after or rate_waits > policy.rate_limit_waits:
                    raise RateLimitedError(
                        self.vendor, job_id, f"{what}: rate limited ({self.error_message(response)})", retry_after=wait
                    )
                yield Sleep(wait)
                continue
            if response.status in TRANSIENT_STATUSES and request.idempotent and self.is_transient(response):
                failures += 1
                if failures < policy.attempts:
                    yield Sleep(policy.backoff(failures))
                    continue
                raise VendorUnavailableError(
                    self.vendor,
                    job_id,
                    f"{what} failed: HTTP {response.status} from {request.path} after {failures} tries "
                    f"({self.error_message(response)})",
                )
            return response

    def is_transient(self, response: Response) -> bool:
        """Whether a 5xx answer is worth retrying; vendors whose 5xx can carry a verdict override this."""
        return True

    def status_error(self, response: Response, job_id: str | None, *, what: str) -> JobProgressError:
        """Map an unexpected HTTP status to the typed error a user can act on."""
        message = f"{what}: HTTP {response.status}: {self.error_message(response)}"
        status = response.status
        if status in (401, 403):
            return AuthenticationError(self.vendor, job_id, message)
        if status == 404:
            return JobNotFoundError(self.vendor, job_id, message)
        if status == 429:
            return RateLimitedError(
                self.vendor, job_id, message, retry_after=parse_retry_after(response.header("retry-after"))
            )
        if status in (400, 409, 422):
            return InvalidRequestError(self.vendor, job_id, message)
        if status >= 500:
            return VendorUnavailableError(self.vendor, job_id, message)
        return VendorResponseError(self.vendor, job_id, message)

    def transport_failure(
        self, exc: TransportError, request: Request | None, job_id: str | None, *, what: str
    ) -> VendorUnavailableError:
        where = f" calling {request.path}" if request is not None else ""
        return VendorUnavailableError(self.vendor, job_id, f"{what} failed: {exc.kind}{where}")

    # -- parsing helpers shared by vendors ---------------------------------------------------------
    def parse_json(self, response: Response, job_id: str | None, *, what: str) -> Any:
        """Decode a JSON answer or raise ``VendorResponseError`` saying what came instead."""
        try:
            return response.json()
        except ValueError:
            raise VendorResponseError(
                self.vendor, job_id, f"{what}: expected JSON, got {describe_body(response)}"
            ) from None

    def parse_status_json(self, response: Response, job_id: str | None, *, what: str) -> Any:
        """``parse_json`` for a job's status or progress answer, whose strings are messages and names: read with
        ``Response.lenient_json``."""
        try:
            return response.lenient_json()
        except ValueError:
            raise VendorResponseError(
                self.vendor, job_id, f"{what}: expected JSON, got {describe_body(response)}"
            ) from None

    def require(self, data: Any, key: str, job_id: str | None, *, what: str) -> Any:
        """``data[key]`` from a JSON object, or a ``VendorResponseError`` naming the missing key."""
        if not isinstance(data, dict) or key not in data:
            raise VendorResponseError(self.vendor, job_id, f"{what}: answer has no {key!r} field")
        return data[key]

    def poll(self, job_id: str) -> Flow[JobProgress]:
        """:meth:`progress` as waits read it: an answer we cannot read is retried like a transient failure.

        One garbled answer in a week-long wait (a proxy's error page served with 200, a body cut short) is
        a hiccup, not the job's verdict: it is read again after the policy's backoff, up to its attempts;
        only an answer that stays unreadable is a ``VendorResponseError``. Reading progress changes
        nothing on the vendor's side, so reading it again is always safe.
        """
        policy = self.request_retry
        unreadable = 0
        while True:
            try:
                return (yield from self.progress(job_id))
            except VendorResponseError:
                unreadable += 1
                if unreadable >= policy.attempts:
                    raise
            yield Sleep(policy.backoff(unreadable))

    # -- listing, where the vendor has a list call (core.poller) ---------------------------------------
    def list_running(self) -> Flow[Listing | None]:
        """Every job the vendor runs for this connection, read with the fewest calls it documents; None where
        this API has no list call (then every wait reads its own job)."""
        return None
        yield  # pragma: no cover - makes this a generator

    def read_ended(self, ended: Mapping[str, JobProgress]) -> Flow[dict[str, JobProgress]]:
        """How jobs that left the running listing ended (``ended``: their last listed readings), as far as the
        vendor can tell in a few calls; the jobs missing from the answer are read one by one."""
        return {}
        yield  # pragma: no cover - makes this a generator

    # -- endpoints every vendor implements ---------------------------------------------------------
    def progress(self, job_id: str) -> Flow[JobProgress]:
        raise NotImplementedError
        yield  # pragma: no cover

    def cancel(self, job_id: str) -> Flow[None]:
        raise NotImplementedError
        yield  # pragma: no cover

    def check(self) -> Flow[str]:
        """A harmless call proving the connection works (handshake, version or token); returns a summary."""
        raise NotImplementedError
        yield  # pragma: no cover

    def result_gone(self, progress: JobProgress) -> str | None:
        """Why a finished job's result can no longer be fetched, when its reading says so (a vendor that serves a
        result once); None when it can be."""
        return None

    def result_value(self, text: str) -> Any:
        """A small text result as the value a DAG wants; vendors whose results are ids or paths override."""
        return text

    def results(self, job_id: str) -> Flow[list[ResultPart]]:
        """Where the job's result is: one or more parts to download (streamed by the session)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def xcom_results(self, job_id: str) -> Flow[list[ResultPart]]:
        """The result as a DAG wants it in XCom; vendors whose results are ids or paths override."""
        return (yield from self.results(job_id))


@dataclass(frozen=True)
class ResultPart:
    """One downloadable piece of a job's result.

    ``request`` is fetched streamed. ``name`` is the vendor's own relative file name for it (an iTwin
    output and blob name, an OL Connect spool file's name), used under a directory destination after the
    core made it safe; None lets the download name it (Content-Disposition, else the job id and the
    content type's extension). ``source`` is the vendor's own reference to the file (a spool path), shown
    in XCom so renamed files can be told apart. ``value`` is set instead of ``request`` when the result
    is a small value (an id or a list of paths). ``metadata`` is what the vendor said about the result
    besides its bytes (OL Connect's data, content and job set ids), JSON-able, for downstream tasks.
    """

    name: str | None = None
    request: Request | None = None
    content_type: str | None = None
    value: str | None = None
    source: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How messages refer to this part."""
        return self.name or self.source or "result"


#: ids no vendor hands out; in a URL path ``.`` and ``..`` would address the job list or its parent
