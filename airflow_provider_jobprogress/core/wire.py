"""The words of a flow: what a vendor adapter's flows yield (``Request``, ``Sleep``, ``GetToken``) and are sent
back (``Response``, ``Token``), the transport's errors, the bounds on an answer, and how an answer is read for a
message. Nothing here touches a socket (``core.session`` does).
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from airflow_provider_jobprogress.core.model import short

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


def describe_body(response: Response) -> str:
    """Say what a body looks like without dumping it: for errors about nonsense answers."""
    if not response.body:
        return f"an empty body (HTTP {response.status})"
    kind = response.content_type or "no content type"
    if b"<html" in response.body[:512].lower() or kind == "text/html":
        return f"an HTML page (HTTP {response.status}, {kind}): {short_text(response, 80)}"
    return f"{kind} (HTTP {response.status}): {short_text(response, 80)}"
