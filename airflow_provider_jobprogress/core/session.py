"""Run vendor flows over real HTTP: requests on workers, aiohttp in the triggerer, one token per session.

The drivers below are the only code that does I/O for a vendor call. Everything vendor-specific,
and the retry and re-login discipline, lives in the flows they run (``core.protocol``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiohttp
import requests
import urllib3
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from airflow_provider_jobprogress.core.budget import BudgetShort, RequestBudget
from airflow_provider_jobprogress.core.errors import (
    DeadlineExceededError,
    JobProgressError,
    RateLimitedError,
    VendorUnavailableError,
)
from airflow_provider_jobprogress.core.policies import parse_retry_after
from airflow_provider_jobprogress.core.protocol import (
    Flow,
    GetToken,
    OversizedAnswer,
    Request,
    Response,
    Sleep,
    Token,
    TransportError,
    VendorApi,
    now,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

#: (connect, read) seconds; a progress call that hangs longer is a transient failure, retried
DEFAULT_TIMEOUT = (10.0, 60.0)
#: TCP connections per vendor connection and event loop, shared by all its triggers. aiohttp's default;
#: with 32, waits polling together queued for connections and cost ~15 % more CPU per poll (500 waits)
POOL_SIZE = 100
#: parsed URLs a session keeps (progress URLs repeat on every poll; cleared whole when full)
URL_CACHE = 16384
#: tokens kept for connections no trigger uses at the moment (so a wait that starts later needs no new login)
PARKED_TOKENS = 256


class SyncSession:
    """Runs flows with ``requests`` (on Airflow workers). Thread-safe token cache."""

    def __init__(
        self,
        api: VendorApi,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        budget: RequestBudget | None = None,
    ) -> None:
        self.api = api
        self.timeout = timeout
        #: the connection's calls per minute, shared with every other user of it in this process
        self.budget = budget
        self.http = requests.Session()
        self.http.verify = api.verify
        self._token: Token | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    def run(self, flow: Flow[T], *, deadline: float | None = None, job_id: str | None = None) -> T:
        """Drive ``flow`` to its value. With a wall-clock ``deadline``, no pause (a backoff, or a wait the
        vendor asked for with Retry-After) and no request outlives it: ``DeadlineExceededError`` instead."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(reply)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            reply, error = None, None
            if isinstance(step, Sleep):
                if deadline is not None and now() + step.seconds > deadline:
                    flow.close()
                    raise self._deadline_error(job_id, f"it comes before a {step.seconds:.0f} s pause ends")
                time.sleep(step.seconds)
            elif isinstance(step, GetToken):
                reply = self._get_token(step.stale)
            else:
                if self.budget is not None and step.authenticated:
                    paused = self.budget.paused_for()
                    if deadline is not None and now() + paused > deadline:
                        flow.close()
                        raise self._deadline_error(job_id, f"the connection is paused {paused:.0f} s after a 429")
                    long_pause(self.budget, self.api, paused, job_id)
                try:
                    reply = self._send(step, self._timeout_until(deadline, job_id))
                except (TransportError, OversizedAnswer) as exc:
                    error = exc

    def _timeout_until(self, deadline: float | None, job_id: str | None) -> tuple[float, float]:
        if deadline is None:
            return self.timeout
        left = deadline - now()
        if left <= 0:
            raise self._deadline_error(job_id, "it passed before the next request")
        connect, read = self.timeout
        return (min(connect, left), min(read, left))

    def _deadline_error(self, job_id: str | None, detail: str) -> DeadlineExceededError:
        return DeadlineExceededError(self.api.vendor, job_id, f"not finished before the deadline ({detail})")

    def _get_token(self, stale: Token | None) -> Token:
        with self._lock:
            token = self._token
            if token is None or token is stale or not token.usable(now(), self.api.token_margin):
                token = self.run(self.api.login())
                self._token = token
            return token

    def _request(
        self, request: Request, *, stream: bool, timeout: tuple[float, float] | None = None
    ) -> requests.Response:
        if self.budget is not None and request.authenticated:
            self.budget.acquire()
        try:
            answer = self.http.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                params=request.params,
                json=request.json,
                data=request.form,
                timeout=timeout or self.timeout,
                stream=stream,
                allow_redirects=False,
            )
        except requests.exceptions.RequestException as exc:
            raise _transport_error(exc) from None
        if self.budget is not None and request.authenticated:
            spend(self.budget, self.api, answer.status_code, answer.headers)
        return answer

    def _send(self, request: Request, timeout: tuple[float, float] | None = None) -> Response:
        started = time.monotonic()
        answer = self._request(request, stream=True, timeout=timeout)
        whole = False
        try:
            body, whole = _read_answer(answer, request.max_answer, request.time_limit, started)
        finally:
            if whole:  # read to its end: the connection goes back to the pool, kept alive
                answer.raw.release_conn()
            else:  # the rest is unread (too long, or the read failed): the connection is closed
                answer.close()
        return Response.build(answer.status_code, answer.headers, body)

    @contextlib.contextmanager
    def stream(self, request: Request, job_id: str | None, *, what: str) -> Iterator[StreamedResponse]:
        """Open ``request`` for a streamed read; errors before the body are typed (one re-login)."""
        for attempt in (1, 2):
            prepared = request
            token: Token | None = None
            if request.authenticated:
                if self.api.uses_token:
                    token = self._get_token(None)
                prepared = self.api.authorize(request, token)
            try:
                answer = self._request(prepared, stream=True)
            except TransportError as exc:
                raise self.api.transport_failure(exc, request, job_id, what=what) from None
            with contextlib.closing(answer):
                if answer.status_code >= 300:
                    small = Response.build(answer.status_code, answer.headers, answer.raw.read(64 * 1024)).without(
                        self.api.credentials(token)
                    )
                    stale = request.authenticated and self.api.uses_token and self.api.token_rejected(small)
                    if stale and attempt == 1:
                        with self._lock:
                            if self._token is token:
                                self._token = None
                        continue
                    raise self.api.status_error(small, job_id, what=what)
                yield StreamedResponse(answer, self.api, job_id, what)
                return
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class StreamedResponse:
    """A download in progress: iterate ``chunks`` to read it without holding it in memory.

    ``chunks`` yields the body decoded (a gzip or deflate ``Content-Encoding`` undone) and, at the end,
    checks that the bytes received *on the wire* match the announced ``Content-Length``, which counts
    the encoded body: a body cut short raises ``VendorUnavailableError`` (retryable), never a short file.
    """

    _answer: requests.Response
    _api: VendorApi
    _job_id: str | None
    _what: str

    @property
    def headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self._answer.headers.items()}

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/octet-stream").split(";")[0].strip()

    @property
    def content_encoding(self) -> str:
        """The body's encoding on the wire (``gzip``, ``deflate``...); empty for identity."""
        value = self.headers.get("content-encoding", "").strip().lower()
        return "" if value == "identity" else value

    @property
    def content_length(self) -> int | None:
        """The announced length of the body as sent, in its ``content_encoding``."""
        value = self.headers.get("content-length")
        return int(value) if value and value.isdigit() else None

    @property
    def received(self) -> int:
        """Bytes of the body read from the wire so far, before decoding."""
        return int(self._answer.raw.tell())

    def chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            yield from self._answer.iter_content(chunk_size=chunk_size)
        except requests.exceptions.RequestException as exc:
            raise self._api.transport_failure(_transport_error(exc), None, self._job_id, what=self._what) from None
        expected, received = self.content_length, self.received
        if expected is not None and received != expected:
            encoding = f" ({self.content_encoding})" if self.content_encoding else ""
            raise VendorUnavailableError(
                self._api.vendor,
                self._job_id,
                f"{self._what}: download cut short: received {received} of {expected} announced bytes{encoding}",
            )


def long_pause(budget: RequestBudget, api: VendorApi, paused: float, job_id: str | None) -> None:
    """A call meeting a pause longer than one call holds on (``max_retry_after``) is not made to wait in it: a
    ``RateLimitedError`` hands the wait back to the caller (a trigger sleeps it without holding a request)."""
    if paused > api.request_retry.max_retry_after:
        raise RateLimitedError(
            api.vendor,
            job_id,
            f"connection {budget.name!r} is paused {paused:.0f} s more after the vendor answered 429",
            retry_after=paused,
        )


def spend(budget: RequestBudget, api: VendorApi, status: int, headers: Any) -> None:
    """What an answer tells the connection's budget: a 429 pauses every call of the connection for the time
    the vendor asked (a policy backoff when it did not say), and a vendor's count of calls left caps it."""
    if status == 429:
        asked = parse_retry_after(headers.get("retry-after"))
        seconds = api.request_retry.rate_limit_pause(asked, 1)
        if budget.pause(seconds):
            log.warning(
                "%s connection %r answered 429: every call on it pauses %.0f s%s",
                api.vendor,
                budget.name,
                seconds,
                f" (the vendor asked for {asked:.0f} s)" if asked is not None and asked != seconds else "",
            )
    remaining = api.calls_remaining(headers)
    if remaining is not None:
        budget.observe_remaining(remaining)


#: bytes asked of the socket at once while reading an answer
READ_CHUNK = 64 * 1024


def _refused_unread(status: int, headers: Any, limit: int) -> int | None:
    """The announced length of a 2xx answer that is over ``limit`` before a byte of it is read; None otherwise.

    Only an identity body's Content-Length says how long it is: a compressed one decodes to more."""
    length = headers.get("Content-Length", "")
    encoded = headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
    if status < 300 and length.isdigit() and int(length) > limit and not encoded:
        return int(length)
    return None


def _read_answer(answer: requests.Response, limit: int, time_limit: float | None, started: float) -> tuple[bytes, bool]:
    """Read a streamed ``requests`` answer, at most ``limit`` bytes decoded; (body, whether it was read to its end).

    A 2xx answer past the bound raises ``OversizedAnswer``; of an error answer only its first ``limit`` bytes
    are kept (its message is all that is read of it). Past ``time_limit`` seconds after ``started``
    (monotonic) the read stops with a ``TransportError``: checked whenever bytes arrive, so a trickled body
    overruns it by one socket read at most.
    """
    length = _refused_unread(answer.status_code, answer.headers, limit)
    if length is not None:
        raise OversizedAnswer(answer.status_code, limit, length)
    raw = answer.raw
    read = getattr(raw, "read1", raw.read)  # urllib3 2: read1 answers with what has arrived
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            chunk = read(min(READ_CHUNK, limit + 1 - size), decode_content=True)
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
            if time_limit is not None and time.monotonic() - started > time_limit:
                raise TransportError(_out_of_time(time_limit), sent=True)
    except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
        raise TransportError(type(exc).__name__, sent=True) from None
    if answer.status_code < 300:
        raise OversizedAnswer(answer.status_code, limit, None)
    return b"".join(chunks)[:limit], False


def _out_of_time(seconds: float) -> str:
    return f"AnswerTimeout (no whole answer within {seconds:g} s)"


class _Clock:
    """One request's time limit: started when the request has its connection, it cancels the request's task
    when it runs out (as ``asyncio.timeout`` does, for a third of its cost per request: one timer handle)."""

    __slots__ = ("cancelling", "expired", "handle", "seconds", "task")

    def __init__(self, seconds: float, task: asyncio.Task[Any]) -> None:
        self.seconds = seconds
        self.task: asyncio.Task[Any] | None = task
        self.handle: asyncio.TimerHandle | None = None
        self.expired = False
        #: the task's cancel requests before the request began: ``on_kill`` runs in a task Airflow has cancelled
        self.cancelling = task.cancelling()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.handle is not None:  # aiohttp retries an idempotent request once on a dropped kept-alive connection
            self.handle.cancel()
        self.handle = loop.call_at(loop.time() + self.seconds, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self.task is not None:
            self.task.cancel()

    def stop(self) -> bool:
        """Stop it (once); True when it ran out, its cancellation then taken back: the caller raises instead
        unless ``cancelled_too``.

        It lets go of the task: the request's context holds this clock (``_REQUEST_CLOCK``), and the timers made in
        that context (this one, aiohttp's) outlive the request: asyncio keeps a cancelled timer, with its context,
        until its time comes unless it is the next one due (or cancelled timers pass half of 100+ scheduled, which
        thousands of waits' live sleeps never let happen). Holding the task, they kept its result for the time
        limit: each of a shared poller's listings (a task of its own, its snapshot the result, one a second), 147 MB
        in a minute at 1,000 waits."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
            if self.expired and self.task is not None:
                self.task.uncancel()
        self.task = None
        return self.expired

    def cancelled_too(self, task: asyncio.Task[Any]) -> bool:
        """Whether someone else (a wait's deadline, a killed trigger) cancelled ``task`` during the request."""
        return task.cancelling() > self.cancelling


#: the clock of the request the running task is sending, started by the connector
_REQUEST_CLOCK: contextvars.ContextVar[_Clock | None] = contextvars.ContextVar("jobprogress_clock", default=None)


class _ClockedConnector(aiohttp.TCPConnector):
    """Starts the running request's time limit once it has a connection: a wait for a free pooled connection
    under load is the pool's, not the vendor's, and is bounded by nothing here (as before)."""

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Any],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> aiohttp.connector.Connection:
        connection = await super().connect(req, traces, timeout)
        clock = _REQUEST_CLOCK.get()
        if clock is not None:
            clock.start(self._loop)
        return connection


async def _aread_answer(answer: aiohttp.ClientResponse, limit: int) -> bytes:
    """``_read_answer`` for aiohttp: at most ``limit`` bytes decoded, the connection closed if any is left unread."""
    announced = answer.content_length
    if announced is not None and announced <= limit and "Content-Encoding" not in answer.headers:
        return await answer.read()  # the common case: small, and it said so
    length = _refused_unread(answer.status, answer.headers, limit)
    if length is not None:
        answer.close()
        raise OversizedAnswer(answer.status, limit, length)
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await answer.content.read(min(READ_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    answer.close()
    if answer.status < 300:
        raise OversizedAnswer(answer.status, limit, None)
    return b"".join(chunks)[:limit]


#: what OpenSSL says when the server answers a TLS hello in plain HTTP (https against an http port)
PLAIN_HTTP_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"}
)


def _plain_http(exc: BaseException) -> bool:
    """Whether a transport failure is a TLS handshake the server answered in plain HTTP.

    The ``ssl.SSLError`` sits a few wrappers deep (requests -> urllib3 MaxRetryError -> SSLError; aiohttp's
    ``os_error``): follow causes, contexts, ``reason``, ``os_error`` and exception arguments, a bounded walk.
    """
    todo: list[object] = [exc]
    seen: set[int] = set()
    while todo and len(seen) < 32:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        reason = getattr(item, "reason", None) if isinstance(item, ssl.SSLError) else None
        if isinstance(reason, str) and reason.upper() in PLAIN_HTTP_REASONS:
            return True
        todo.extend([item.__cause__, item.__context__, *item.args])
        for name in ("reason", "os_error"):
            with contextlib.suppress(Exception):  # aiohttp's properties can raise on errors without them
                todo.append(getattr(item, name))
    return False


def _transport_error(exc: BaseException) -> TransportError:
    never_sent = isinstance(exc, requests.exceptions.ConnectTimeout) or (
        isinstance(exc, requests.exceptions.ConnectionError) and "NewConnectionError" in repr(exc.args)
    )
    plain = isinstance(exc, requests.exceptions.SSLError) and _plain_http(exc)
    return TransportError(type(exc).__name__, sent=not never_sent and not plain, plain_http=plain)


def _async_transport_error(exc: BaseException) -> TransportError:
    """Map an aiohttp failure to a ``TransportError``; the message names the error, never the URL.

    ``sent=False`` only where aiohttp raises before a byte of the request is written: while it connects
    (``ClientConnectorError`` covers refused, DNS, proxy and TLS handshake failures; ``ConnectionTimeoutError``
    is raised around ``connector.connect`` only) or when the URL cannot be used at all. A keep-alive
    connection the server closed is reported as sent (``ServerDisconnectedError``): aiohttp already
    resent idempotent requests once on a fresh connection, and a submit must not be sent twice.
    """
    never_sent = isinstance(
        exc,
        aiohttp.ClientConnectorError
        | aiohttp.ConnectionTimeoutError
        | aiohttp.InvalidURL
        | aiohttp.NonHttpUrlClientError,
    )
    kind = type(exc).__name__
    cause = _cause(exc.os_error) if isinstance(exc, aiohttp.ClientConnectorError) else None
    if cause:
        kind = f"{kind} ({cause})"
    plain = isinstance(exc, aiohttp.ClientSSLError) and _plain_http(exc)
    return TransportError(kind, sent=not never_sent, plain_http=plain)


def _cause(error: OSError) -> str | None:
    """What went wrong, in the words of whoever said it. OpenSSL's and the resolver's codes are not errno
    values: ``os.strerror`` made "Operation not permitted" of a certificate refused and "Unknown error -2" of a
    name that does not resolve."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return error.reason
    if isinstance(error, socket.gaierror):
        return error.strerror
    return os.strerror(error.errno) if error.errno else None


def _ssl_option(api: VendorApi) -> bool | ssl.SSLContext:
    """The connection's ``verify``: True (system CAs), False, or a CA bundle read once per session, in a thread."""
    if isinstance(api.verify, bool):
        return api.verify
    try:
        return ssl.create_default_context(cafile=api.verify)
    except (OSError, ssl.SSLError) as exc:
        raise JobProgressError(
            api.vendor,
            None,
            f"the CA bundle {api.verify!r} in the connection's verify extra cannot be read ({type(exc).__name__}: "
            f"{exc.strerror or exc})",
            hint="Set verify to true, false or the path of a PEM CA bundle that exists on the triggerer",
        ) from None


class AsyncSession:
    """Runs flows with aiohttp in an event loop (the triggerer). One pool and one token for all its users.

    aiohttp, not httpx, by measurement (500 pollers sharing one client, 1 s interval, on this project's
    2-core machine): httpcore's pool spent ~6 ms CPU per request assigning queued requests to its
    connections, made a third of the polls and with 100 connections ran into ``PoolTimeout``; bare
    aiohttp spent 0.27-0.30 ms with every poll made, and its connector queues waiters per host in O(1)
    and parses HTTP in C. benchmarks/bench_triggers.py measures the whole trigger against the http
    provider's ``HttpSensorTrigger``.
    """

    def __init__(
        self,
        api: VendorApi,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        token: Token | None = None,
        pool_size: int = POOL_SIZE,
        budget: RequestBudget | None = None,
    ) -> None:
        self.api = api
        #: the connection's calls per minute, shared with every other user of it in this process
        self.budget = budget
        #: the event loop this session's connections belong to; it can serve no other
        self.loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._pool_size = pool_size
        self._closed = False
        # The aiohttp client; with a CA bundle, made once the file was read in a thread (off the loop).
        self._client: asyncio.Future[aiohttp.ClientSession]
        if isinstance(api.verify, bool):
            self._client = self.loop.create_future()
            self._client.set_result(self._make_client(api.verify))
        else:
            self._client = asyncio.ensure_future(self._open_with_bundle())
        self._token = token
        self._lock = asyncio.Lock()
        self._urls: dict[str, URL] = {}
        self._proxies: dict[tuple[str, str | None, int | None], tuple[URL | None, aiohttp.BasicAuth | None]] = {}

    def _make_client(self, tls: bool | ssl.SSLContext) -> aiohttp.ClientSession:
        connect, read = self._timeout
        return aiohttp.ClientSession(
            connector=_ClockedConnector(limit=self._pool_size, ssl=tls),
            # Per socket operation, as requests' (connect, read), and a time limit per request once it has
            # its connection (_ClockedConnector): no total, so waiting for a free pooled connection under
            # load is not mistaken for a dead vendor.
            timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect, sock_read=read),
            # No vendor API here uses cookies; a real jar would cost CPU on every request and carry one
            # trigger's cookies into another's requests.
            cookie_jar=aiohttp.DummyCookieJar(),
            # Proxies from the environment are resolved once per origin (_proxy), not on every request
            # in a worker thread as trust_env=True does.
            trust_env=False,
        )

    async def _open_with_bundle(self) -> aiohttp.ClientSession:
        return self._make_client(await asyncio.to_thread(_ssl_option, self.api))

    async def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise JobProgressError(self.api.vendor, None, "this HTTP session is closed")
        if self._client.done():
            return self._client.result()  # raises the CA bundle's error, for every call, as it should
        # shield: one caller cancelled (its trigger killed) must not cancel the reading the others wait for
        return await asyncio.shield(self._client)

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        if not self._client.done():
            self._client.cancel()  # the CA bundle is still being read: no client was made
        elif not self._client.cancelled() and self._client.exception() is None:
            await self._client.result().close()

    async def run(self, flow: Flow[T], *, optional: bool = False, early_turn: bool = False) -> T:
        """Drive ``flow`` to its value. ``optional``: its calls go only if the connection's budget has one to
        spare (``RequestBudget.try_take``), else ``BudgetShort`` ends it (a progress read a listing can stand
        in for); other calls wait their turn.

        ``early_turn`` (a wait's poll, a flow that starts with its one call): its first call's turn is taken before
        the flow starts. A required one waits for it: thousands of waits queue behind a short budget (20,000
        mixed waits on the default budgets: 11,400 at once), each with only this frame and the unstarted flow, not
        the flow's generators, its request and the send under way (``benchmarks/README.md``). An optional one left
        out (four of five iTwin percentage reads at 5,000 waits on a Trial budget) builds no request. A turn the
        flow does not use at once goes back: before a login (the turn is taken again once the token is there, so
        the calls held by a slow login do not all go together when it ends), or when the flow ends without a call."""
        if asyncio.get_running_loop() is not self.loop:
            flow.close()
            raise JobProgressError(
                self.api.vendor,
                None,
                "this HTTP session belongs to another event loop, whose connections cannot serve this one",
                hint="Get it in the loop that uses it (await hook.asession()), or call the hook's async methods",
            )
        held = False  # the first authenticated call's turn: taken before the flow starts, not yet used
        budget = self.budget
        if budget is not None and early_turn:
            try:
                await self._take_turn(budget, optional)  # most of a short budget's optional reads end here
            except BaseException:
                flow.close()
                raise
            held = True
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    step = flow.throw(error) if error is not None else flow.send(reply)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                reply, error = None, None
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, GetToken):
                    if held and budget is not None and self._fresh_token(step.stale) is None:
                        held = False  # a login first: the turn goes back, and is taken again when the call goes
                        budget.refund()
                    reply = await self._get_token(step.stale)
                else:
                    taken = held and step.authenticated
                    held = held and not taken
                    try:
                        reply = await self._send(step, optional=optional, turn_taken=taken)
                    except (TransportError, OversizedAnswer) as exc:
                        error = exc
                    except (BudgetShort, RateLimitedError):
                        flow.close()
                        raise
        finally:
            if held and budget is not None:
                budget.refund()  # the flow ended (or failed) before its first call

    def _fresh_token(self, stale: Token | None) -> Token | None:
        token = self._token
        return (
            token if token is not None and token is not stale and token.usable(now(), self.api.token_margin) else None
        )

    async def _get_token(self, stale: Token | None) -> Token:
        token = self._fresh_token(stale)
        if token is not None:
            return token  # the hot path of every poll: no lock
        async with self._lock:
            token = self._fresh_token(stale)
            if token is None:
                token = self._token = await self.run(self.api.login())
            return token

    @property
    def token(self) -> Token | None:
        """The token this session holds, if any (the registry keeps it when the session closes)."""
        return self._token

    def _url(self, text: str) -> URL:
        # A wait asks for the same URL on every poll; parsing it costs yarl ~20 us each time.
        url = self._urls.get(text)
        if url is None:
            if len(self._urls) >= URL_CACHE:
                self._urls.clear()
            url = self._urls[text] = URL(text)
        return url

    async def _env_proxy(self, url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        # get_env_proxy_for_url reads ~/.netrc: off the loop, once per origin and session.
        found: tuple[URL | None, aiohttp.BasicAuth | None]
        try:
            found = await asyncio.to_thread(get_env_proxy_for_url, url)
        except LookupError:
            found = (None, None)
        self._proxies[(url.scheme, url.host, url.port)] = found
        return found

    async def _take_turn(self, budget: RequestBudget, optional: bool) -> None:
        """A call's turn in the connection's budget: a required one waits for it, an optional one goes only if
        one is spare, else ``BudgetShort``; a pause longer than a call holds on hands the wait back."""
        long_pause(budget, self.api, budget.paused_for(), None)
        if not optional:
            await budget.aacquire()
        elif not budget.try_take():
            raise BudgetShort

    async def _send(self, request: Request, *, optional: bool = False, turn_taken: bool = False) -> Response:
        budget = self.budget if request.authenticated else None  # logins and pre-signed URLs are not API calls
        if budget is not None and not turn_taken:
            await self._take_turn(budget, optional)
        task = asyncio.current_task()
        clock = _Clock(request.time_limit, task) if request.time_limit is not None and task is not None else None
        context = _REQUEST_CLOCK.set(clock)  # set going by the connector (_ClockedConnector)
        try:
            url = self._url(request.url)
            found = self._proxies.get((url.scheme, url.host, url.port))
            proxy, proxy_auth = found if found is not None else await self._env_proxy(url)
            http = await self._http()
            async with http.request(
                request.method,
                url,
                headers=request.headers,
                params=request.params,
                json=request.json,
                data=dict(request.form) if request.form else None,
                allow_redirects=False,
                proxy=proxy,
                proxy_auth=proxy_auth,
            ) as answer:
                body = await _aread_answer(answer, request.max_answer)
                if budget is not None:
                    spend(budget, self.api, answer.status, answer.headers)
                return Response.build(answer.status, answer.headers, body)
        except (TimeoutError, aiohttp.ClientError, asyncio.CancelledError) as exc:
            if clock is not None and task is not None and clock.stop() and not clock.cancelled_too(task):
                raise TransportError(_out_of_time(clock.seconds), sent=True) from None
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _async_transport_error(exc) from None
        except ValueError:
            # yarl and aiohttp raise ValueError on URLs they cannot use; its text would carry the URL.
            raise TransportError("InvalidURL", sent=False) from None
        finally:
            if clock is not None:
                clock.stop()
            _REQUEST_CLOCK.reset(context)


V = TypeVar("V")


class PerLoop(Generic[V]):
    """Process-wide state kept for each event loop, closed and dropped when that loop shuts down.

    A ``WeakKeyDictionary`` keyed by the loop never lets a loop go: what it holds (an aiohttp session, a
    future) holds the loop. Here each loop's value is closed (``close``, awaited in that loop) and dropped
    when the loop finalizes its async generators, which ``asyncio.run`` and ``asyncio.Runner`` do before
    closing it: Airflow's triggerer, and ``dag.test()`` once per deferral. Values of loops closed without
    that are dropped when the next loop makes one.
    """

    def __init__(self, make: Callable[[], V], close: Callable[[V], Awaitable[None]] | None = None) -> None:
        self._make = make
        self._close = close
        self._by_loop: dict[asyncio.AbstractEventLoop, tuple[V, AsyncGenerator[None]]] = {}

    def __len__(self) -> int:
        return len(self._by_loop)

    def here(self) -> V:
        """The running loop's value, made on first use."""
        loop = asyncio.get_running_loop()
        entry = self._by_loop.get(loop)
        if entry is None:
            for gone in [other for other in self._by_loop if other.is_closed()]:
                del self._by_loop[gone]
            value = self._make()
            ending = self._at_shutdown(loop, value)
            _start(ending)
            entry = self._by_loop[loop] = (value, ending)
        return entry[0]

    def peek(self) -> V | None:
        """The running loop's value if it has one (None outside a loop)."""
        with contextlib.suppress(RuntimeError):
            entry = self._by_loop.get(asyncio.get_running_loop())
            return None if entry is None else entry[0]
        return None

    async def aclose_here(self) -> None:
        """Close and drop the running loop's value now."""
        entry = self._by_loop.get(asyncio.get_running_loop())
        if entry is not None:
            await entry[1].aclose()

    async def _at_shutdown(self, loop: asyncio.AbstractEventLoop, value: V) -> AsyncGenerator[None]:
        try:
            yield
        finally:
            entry = self._by_loop.get(loop)
            if entry is not None and entry[0] is value:
                del self._by_loop[loop]
            if self._close is not None:
                await self._close(value)


def _start(ending: AsyncGenerator[None]) -> None:
    """Run ``ending`` to its first ``yield``, now: from then on the running loop finalizes it when it shuts down
    (its ``finally`` runs, in the loop, from ``loop.shutdown_asyncgens``). It awaits nothing before that yield,
    so one step gets there."""
    try:
        ending.asend(None).send(None)
    except StopIteration:
        return
    raise AssertionError("a shutdown hook awaited before its first yield")  # pragma: no cover


@dataclass
class _Shared:
    session: AsyncSession
    users: int = 0


@dataclass
class _LoopSessions:
    shared: dict[str, _Shared] = field(default_factory=dict)
    #: key -> token of a connection whose session closed; reused while usable by the next session
    parked: dict[str, Token] = field(default_factory=dict)


async def _close_sessions(here: _LoopSessions) -> None:
    shared, here.shared = list(here.shared.values()), {}
    for item in shared:
        await item.session.aclose()


class SessionRegistry:
    """Per event loop, one ``AsyncSession`` per connection, shared by every hook using it, closed after the last.

    Hooks ``acquire`` a session and ``release`` it when their wait ends: the number of open sessions (and
    their sockets) is the number of connections in use, however many connections, policies and triggers
    come and go. The token of a closed session is kept (``PARKED_TOKENS`` at most, dropped when no longer
    usable) so that a wait starting later on the same connection logs in only when the token expires. When
    the loop shuts down, its sessions still open are closed and its tokens forgotten (``PerLoop``).

    Keys are opaque digests built by the hook (connection fields, secrets included, so an edited
    connection gets a new session); the secrets themselves are not kept here.
    """

    def __init__(self) -> None:
        self._loops: PerLoop[_LoopSessions] = PerLoop(_LoopSessions, _close_sessions)

    def __len__(self) -> int:
        """The number of event loops with sessions or parked tokens here."""
        return len(self._loops)

    def acquire(self, key: str, factory: Callable[[Token | None], AsyncSession]) -> AsyncSession:
        """The shared session for ``key`` (made with ``factory(parked token)`` if none is open), one more user."""
        here = self._loops.here()
        shared = here.shared.get(key)
        if shared is None:
            token = here.parked.pop(key, None)
            shared = here.shared[key] = _Shared(factory(token))
        shared.users += 1
        return shared.session

    async def release(self, session: AsyncSession) -> None:
        """One user less; the last one closes the session (its token is parked for the next)."""
        here = self._loops.here()
        for key, shared in here.shared.items():
            if shared.session is session:
                shared.users -= 1
                if shared.users > 0:
                    return
                del here.shared[key]
                self._park(here, key, session.token)
                break
        await session.aclose()

    def _park(self, here: _LoopSessions, key: str, token: Token | None) -> None:
        moment = now()
        for old in [k for k, t in here.parked.items() if not t.usable(moment, 0)]:
            del here.parked[old]
        if token is not None and token.usable(moment, 0):
            here.parked[key] = token
            while len(here.parked) > PARKED_TOKENS:
                del here.parked[next(iter(here.parked))]

    def sessions(self) -> list[AsyncSession]:
        """The sessions open in the running loop (none outside a loop)."""
        here = self._loops.peek()
        return [] if here is None else [shared.session for shared in here.shared.values()]

    async def aclose_all(self) -> None:
        """Close every session of the running loop and forget parked tokens (tests, benchmarks, shutdown)."""
        await self._loops.aclose_here()


ASYNC_SESSIONS = SessionRegistry()
