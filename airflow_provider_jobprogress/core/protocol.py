"""Sans-I/O vendor protocol machinery: requests, responses, auth, retries and error mapping as pure flows.

A *flow* is a generator that yields instructions (send this ``Request``, ``Sleep`` this long, give me
a ``GetToken``) and receives their results; it returns a typed value. Vendor adapters write their
endpoints as flows once; ``core.session`` runs the same flow with requests on workers and with aiohttp
in the triggerer. Nothing in this module touches a socket or a clock.
"""

from __future__ import annotations

import json
import reprlib
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar
from urllib.parse import SplitResult, urlsplit

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
from airflow_provider_jobprogress.core.model import JobProgress, Listing, short
from airflow_provider_jobprogress.core.policies import PollPolicy, RequestRetry, parse_retry_after

T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
#: the most a per-job answer (progress, status, a job's details, a login, a submit) may hold; real ones are
#: under 10 KiB. It bounds what is read and what is parsed on the triggerer's loop: json.loads holds the GIL
#: even in a thread, and 1 MiB of JSON numbers took ~50 ms of CPU here, 64 KiB ~3 ms.
MAX_ANSWER = 64 * 1024
#: what one entry of a list answer may add to that bound (``answer_limit``)
LIST_ITEM_BYTES = 16 * 1024


def answer_limit(items: int, per_item: int = LIST_ITEM_BYTES) -> int:
    """The bound for a list answer of up to ``items`` entries (the page size it asked for), ``per_item`` each,
    plus what any answer may hold: a list is bounded in proportion to the page it asked for, not to the job."""
    return MAX_ANSWER + max(items, 0) * per_item


@dataclass(frozen=True)
class Request:
    """One HTTP request, built by a vendor adapter. ``url`` is absolute."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] | None = None
    json: Any = None
    form: Mapping[str, str] | None = None
    #: apply the vendor's credentials (False for the login call itself and for pre-signed URLs)
    authenticated: bool = True
    #: safe to send twice; a submit is not, so it is only retried when it surely never left
    idempotent: bool = True
    #: the longest answer read, in bytes (decoded): a longer 2xx answer is a ``ResponseTooLargeError``, read no
    #: further; of a longer error answer only this much is read, for its message
    max_answer: int = MAX_ANSWER
    #: seconds the request may take once it has a connection, its answer read to the end (None: no limit);
    #: ``VendorApi.exchange`` sets its policy's ``request_timeout``
    time_limit: float | None = None

    @property
    def path(self) -> str:
        """The URL without query string: what may appear in logs and errors (query strings carry SAS keys)."""
        return urlsplit(self.url).path

    def __repr__(self) -> str:
        # Headers carry tokens and Basic credentials, forms client secrets, queries SAS keys: names only.
        headers = ", ".join(self.headers)
        form = ", ".join(self.form or {})
        return f"Request({self.method} {self.path}, headers=[{headers}], form=[{form}])"

    def with_headers(self, extra: Mapping[str, str]) -> Request:
        # Built directly: dataclasses.replace costs ~10 us, and every poll adds its credentials this way.
        return Request(
            method=self.method,
            url=self.url,
            headers={**self.headers, **extra},
            params=self.params,
            json=self.json,
            form=self.form,
            authenticated=self.authenticated,
            idempotent=self.idempotent,
            max_answer=self.max_answer,
            time_limit=self.time_limit,
        )

    def within(self, seconds: float) -> Request:
        """This request with a time limit (``with_headers``'s direct build, for the same reason)."""
        return Request(
            method=self.method,
            url=self.url,
            headers=self.headers,
            params=self.params,
            json=self.json,
            form=self.form,
            authenticated=self.authenticated,
            idempotent=self.idempotent,
            max_answer=self.max_answer,
            time_limit=seconds,
        )


_UNPARSED = object()


@dataclass(frozen=True)
class _NotJson:
    reason: str
    #: the body is JSON but for bytes that are not UTF-8
    undecodable: bool


@dataclass(frozen=True)
class Response:
    """A whole (small) HTTP answer. Header names are lower-cased."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @classmethod
    def build(cls, status: int, headers: Mapping[str, str], body: bytes) -> Response:
        return cls(status, {k.lower(): v for k, v in headers.items()}, body)

    @property
    def text(self) -> str:
        """The body as text: UTF-8, a leading byte order mark dropped, a byte that is not UTF-8 read as U+FFFD."""
        return self.body.decode("utf-8-sig", errors="replace")

    def json(self) -> Any:
        """The body as JSON, parsed once however many readers ask (an error check, then the parser); a
        ``ValueError`` when it is not JSON."""
        parsed = self.__dict__.get("_json", _UNPARSED)
        if parsed is _UNPARSED:
            try:
                parsed = load_json(self.body)
            except ValueError as exc:
                parsed = _NotJson(str(exc), isinstance(exc, UnicodeDecodeError))
            object.__setattr__(self, "_json", parsed)  # a cache beside the fields, not one of them
        if isinstance(parsed, _NotJson):
            raise ValueError(parsed.reason)
        return parsed

    def lenient_json(self) -> Any:
        """``json()``, but a byte that is not UTF-8 reads as U+FFFD instead of refusing the whole answer: for
        answers whose strings are messages and names (a job's status), where one bad byte in a vendor's message
        must not turn a finished job into an error. Facts stay checked: a mangled key or state is still wrong."""
        try:
            return self.json()
        except ValueError:
            if not self.__dict__["_json"].undecodable:
                raise
        parsed = self.__dict__.get("_lenient_json", _UNPARSED)
        if parsed is _UNPARSED:
            parsed = load_json(self.body.decode("utf-8", errors="replace"))
            object.__setattr__(self, "_lenient_json", parsed)
        return parsed

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def without(self, secrets: tuple[str, ...]) -> Response:
        """This answer with each of ``secrets`` (the credentials its request carried) replaced by ``***``: a
        proxy's error page can show the request's headers, and the answer's text goes into errors, events and
        logs. The same answer when none is in it (the common case costs a search of the body per secret)."""
        body = self.body
        for secret in secrets:
            raw = secret.encode()
            if raw and raw in body:
                body = body.replace(raw, b"***")
        return self if body is self.body else Response(self.status, self.headers, body)


@dataclass(frozen=True)
class Sleep:
    """Wait this many seconds (time.sleep on workers, asyncio.sleep in the triggerer)."""

    seconds: float


@dataclass(frozen=True)
class GetToken:
    """Ask the session for a valid token; ``stale`` is the token the vendor just refused, if any."""

    stale: Token | None = None


@dataclass(frozen=True)
class Token:
    """A bearer or session token with its wall-clock expiry. Its repr never shows the value."""

    value: str = field(repr=False)
    expires_at: float | None = None
    #: when it was issued (wall clock, at its creation after the login answered)
    issued_at: float = field(default_factory=lambda: now(), compare=False)

    def usable(self, now: float, margin: float) -> bool:
        if self.expires_at is None:
            return True
        # A vendor's margin (iTwin renews 5 minutes early) is made for hour-long tokens: with a token that
        # lives 10 s it would make every call log in again, a token storm. Never more than half its life.
        margin = min(margin, max(self.expires_at - self.issued_at, 0.0) / 2)
        return now < self.expires_at - margin


class TransportError(Exception):
    """Raised by a transport into a flow: the request got no HTTP answer.

    ``sent`` is False when the connection was never made (refused, DNS), so even a submit is safe to retry.
    The message carries the error's class only, never the URL (query strings can hold keys).
    """

    def __init__(self, kind: str, *, sent: bool, plain_http: bool = False) -> None:
        self.kind = kind
        self.sent = sent
        #: the server answered an https request in plain HTTP: the URL's scheme is wrong, not the network
        self.plain_http = plain_http
        super().__init__(kind)


class OversizedAnswer(Exception):
    """Raised by a transport into a flow: a 2xx answer is longer than the request's ``max_answer``.

    ``length`` is what the answer announced (Content-Length), None when it came chunked or compressed: then
    the transport stopped reading one byte past the bound.
    """

    def __init__(self, status: int, limit: int, length: int | None) -> None:
        self.status = status
        self.limit = limit
        self.length = length
        super().__init__(f"HTTP {status} answer over {limit} bytes")


Instruction = Request | Sleep | GetToken
Flow = Generator[Instruction, Any, T]


@dataclass(frozen=True)
class ConnectionFields:
    """The parts of an Airflow connection a vendor adapter reads; built by the hooks, sync or async."""

    conn_id: str
    conn_type: str | None = None
    host: str | None = None
    port: int | None = None
    schema: str | None = None
    login: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def extra_bool_or_path(self, key: str, default: bool = True) -> bool | str:
        """Read a ``verify``-style extra: a boolean, its text ("true", "false"...), or a CA bundle path."""
        value = self.extra.get(key)
        if value is None:  # absent, or saved empty by the connection form
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip()
        if text.lower() in ("true", "1", "yes", "on", ""):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        return text

    # -- settings, each wrong one a ConfigurationError naming its field ------------------------------
    def problem(self, vendor: str, field: str, message: str) -> ConfigurationError:
        return ConfigurationError(vendor, None, message, conn_id=self.conn_id, field=field)

    def choice(self, vendor: str, field: str, options: tuple[str, ...], default: str) -> str:
        """An extra that names one of ``options``, read whatever its case and surrounding blanks."""
        raw = self.extra.get(field)
        value = default if raw is None or str(raw).strip() == "" else str(raw).strip().lower()
        if value not in options:
            raise self.problem(vendor, field, f"{brief(raw)} is not one of {', '.join(options)}")
        return value

    def extra_url(self, vendor: str, field: str, default: str, *, also: str | None = None) -> str:
        """An extra holding an absolute http(s) URL (``also``: an older name for the same extra)."""
        raw = self.extra.get(field)
        if (raw is None or str(raw).strip() == "") and also is not None:
            raw, field = self.extra.get(also), also
        if raw is None or str(raw).strip() == "":
            return default
        text = str(raw).strip()
        parts = _split(text)
        if parts is None or parts.scheme not in HTTP_SCHEMES or not parts.hostname:
            raise self.problem(vendor, field, f"{brief(text)} is not an http:// or https:// URL with a host")
        if parts.port is None and _port_text(parts) is not None:
            raise self.problem(vendor, field, f"{brief(text)} has a port that is not a number from 1 to 65535")
        return text

    def service_url(self, vendor: str, *, default_host: str, default_scheme: str, default_port: int | None) -> str:
        """The base URL from host, schema and port: a host name (``h`` or ``h:port``), or a whole URL in host.

        A path belongs in a whole URL (``http://h/prefix``): ``h/rest`` in host would make a URL like
        ``http://h/rest:9340``. A port in host and a different one in the port field, or a schema other
        than http or https, cannot be meant.
        """
        host = (self.host or default_host).strip().rstrip("/")
        schema = (self.schema or "").strip().lower() or None
        if schema is not None and schema not in HTTP_SCHEMES:
            raise self.problem(vendor, "schema", f"{brief(self.schema)} is not http or https")
        if "://" in host:
            parts = _split(host)
            if parts is None or parts.scheme not in HTTP_SCHEMES or not parts.hostname:
                raise self.problem(vendor, "host", f"{brief(host)} is not an http:// or https:// URL with a host")
            if schema is not None and schema != parts.scheme:
                raise self.problem(vendor, "schema", f"{schema!r} contradicts the scheme of host {brief(host)}")
        else:
            parts = _split(f"//{host}")
            if parts is None or not parts.hostname or parts.path or parts.query or parts.fragment:
                raise self.problem(
                    vendor, "host", f"{brief(host)} is not a host name (put a path in a whole URL: http://host/path)"
                )
        port_text = _port_text(parts)
        if port_text is not None and parts.port is None:
            raise self.problem(vendor, "host", f"{brief(host)} has a port that is not a number from 1 to 65535")
        if self.port is not None and not 0 < self.port < 65536:
            raise self.problem(vendor, "port", f"{self.port} is not a port number from 1 to 65535")
        if self.port is not None and parts.port is not None and self.port != parts.port:
            raise self.problem(vendor, "port", f"{self.port} contradicts the port in host {brief(host)}")
        if "://" in host:
            return host if self.port is None or parts.port is not None else _with_port(parts, self.port)
        scheme = schema or default_scheme
        port = parts.port or self.port or default_port
        return f"{scheme}://{parts.netloc}" if parts.port or not port else f"{scheme}://{parts.netloc}:{port}"

    def positive_number(self, vendor: str, field: str, default: float) -> float:
        """An extra holding a number above zero (a JSON number or its text); ``default`` when absent or empty."""
        raw = self.extra.get(field)
        if raw is None or str(raw).strip() == "":
            return default
        try:
            value = float(str(raw).strip()) if not isinstance(raw, bool) else float("nan")
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise self.problem(vendor, field, f"{brief(raw)} is not a number above zero")
        return value

    def tls_verify(self) -> bool | str:
        """The TLS check as requests takes it (``core.session`` turns a bundle path into aiohttp's SSL context):
        True, False, or the path of a CA bundle.

        The form saves ``verify`` as a switch (a JSON boolean) and the bundle in its own field, ``ca_bundle``;
        connections saved before keep ``verify`` as text, a bundle path included, and are read as they were.
        """
        verify = self.extra_bool_or_path("verify")
        bundle = str(self.extra.get("ca_bundle") or "").strip()
        return bundle if verify is True and bundle else verify


HTTP_SCHEMES = ("http", "https")


def _split(text: str) -> SplitResult | None:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return None
    if any(c.isspace() for c in text):
        return None
    return parts


def _port_text(parts: SplitResult) -> str | None:
    """What follows the host's colon, if anything (an IPv6 literal's colons are inside its brackets)."""
    netloc = parts.netloc.rpartition("@")[2]
    _, colon, tail = netloc.rpartition(":")
    return tail if colon and "]" not in tail else None


def _with_port(parts: SplitResult, port: int) -> str:
    netloc = f"{parts.netloc}:{port}"
    return parts._replace(netloc=netloc).geturl()


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
NOT_JOB_IDS = ("", ".", "..")


def check_job_id(job_id: object, subject: str) -> str:
    """The job id as text, or a ``ConfigurationError`` (before any call) for None, blank, ``.`` or ``..``, and for
    ids with line breaks or other control characters: no vendor hands those out, and they would forge log lines."""
    text = None if job_id is None else str(job_id)
    if text is None or text.strip() in NOT_JOB_IDS or not text.isprintable():
        raise ConfigurationError(
            subject, None, f"{brief(job_id)} is not a job id (set job_id to the id the vendor gave)", field="job_id"
        )
    return text


def now() -> float:
    """Wall-clock seconds; tokens and deadlines are wall-clock because triggers move between hosts."""
    return time.time()


def short_text(response: Response, limit: int = 200) -> str:
    return short(response.text, limit) or "(empty body)"


def load_json(body: bytes | str) -> Any:
    """``json.loads`` that fails only with ValueError: a vendor's body nested deeper than Python's recursion
    limit (a 2 KB body can be 1,000 levels deep) is unreadable JSON like any other, not a RecursionError."""
    try:
        return json.loads(body)  # ValueError (UnicodeDecodeError included) for anything else unreadable
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


_BRIEF = reprlib.Repr()  # keyword arguments only from Python 3.12
_BRIEF.maxlevel, _BRIEF.maxdict, _BRIEF.maxlist, _BRIEF.maxstring, _BRIEF.maxother = 3, 6, 6, 60, 60


def brief(value: Any, limit: int = 80) -> str:
    """A short repr of any vendor value for an error message: bounded in depth and length, never raising."""
    text = _BRIEF.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def percentage(value: Any, vendor: str, job_id: str | None, *, what: str) -> float | None:
    """A vendor's percentage as a float in 0..100; None when absent. NaN, infinities, values outside
    0..100 and non-numbers are a ``VendorResponseError``: a progress that cannot be shown is not one."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise VendorResponseError(vendor, job_id, f"{what}: percentage {brief(value)} is not a number")
    # Compared before float(): an integer of 400 digits overflows float(); NaN fails every comparison.
    if not 0 <= value <= 100:
        raise VendorResponseError(vendor, job_id, f"{what}: percentage {brief(value)} is not within 0-100")
    return float(value)


def describe_body(response: Response) -> str:
    """Say what a body looks like without dumping it: for errors about nonsense answers."""
    if not response.body:
        return f"an empty body (HTTP {response.status})"
    kind = response.content_type or "no content type"
    if b"<html" in response.body[:512].lower() or kind == "text/html":
        return f"an HTML page (HTTP {response.status}, {kind}): {short_text(response, 80)}"
    return f"{kind} (HTTP {response.status}): {short_text(response, 80)}"
