"""Run vendor flows over real HTTP: requests on workers, httpx in the triggerer, one token per session.

The drivers below are the only code that does I/O for a vendor call. Everything vendor-specific,
and the retry and re-login discipline, lives in the flows they run (``core.protocol``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import requests

from airflow_provider_jobprogress.core.errors import DeadlineExceededError, VendorUnavailableError
from airflow_provider_jobprogress.core.protocol import (
    Flow,
    GetToken,
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
SecretSink = Callable[[str], None]
#: connections per vendor connection and event loop, shared by all its triggers
POOL_SIZE = 20


def _no_sink(_: str) -> None:
    return None


class SyncSession:
    """Runs flows with ``requests`` (on Airflow workers). Thread-safe token cache."""

    def __init__(
        self,
        api: VendorApi,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        on_secret: SecretSink = _no_sink,
    ) -> None:
        self.api = api
        self.timeout = timeout
        self.on_secret = on_secret
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
                    raise self._deadline_error(job_id, f"the deadline comes before a {step.seconds:.0f} s pause ends")
                time.sleep(step.seconds)
            elif isinstance(step, GetToken):
                reply = self._get_token(step.stale)
            else:
                try:
                    reply = self._send(step, self._timeout_until(deadline, job_id))
                except TransportError as exc:
                    error = exc

    def _timeout_until(self, deadline: float | None, job_id: str | None) -> tuple[float, float]:
        if deadline is None:
            return self.timeout
        left = deadline - now()
        if left <= 0:
            raise self._deadline_error(job_id, "the deadline passed")
        connect, read = self.timeout
        return (min(connect, left), min(read, left))

    def _deadline_error(self, job_id: str | None, detail: str) -> DeadlineExceededError:
        return DeadlineExceededError(self.api.vendor, job_id, f"gave up waiting: {detail}")

    def _get_token(self, stale: Token | None) -> Token:
        with self._lock:
            token = self._token
            if token is None or token is stale or not token.usable(now(), self.api.token_margin):
                token = self.run(self.api.login())
                self.on_secret(token.value)
                self._token = token
            return token

    def _request(
        self, request: Request, *, stream: bool, timeout: tuple[float, float] | None = None
    ) -> requests.Response:
        try:
            return self.http.request(
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

    def _send(self, request: Request, timeout: tuple[float, float] | None = None) -> Response:
        answer = self._request(request, stream=False, timeout=timeout)
        return Response.build(answer.status_code, answer.headers, answer.content)

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
                    small = Response.build(answer.status_code, answer.headers, answer.raw.read(64 * 1024))
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


def _transport_error(exc: BaseException) -> TransportError:
    never_sent = isinstance(exc, requests.exceptions.ConnectTimeout) or (
        isinstance(exc, requests.exceptions.ConnectionError) and "NewConnectionError" in repr(exc.args)
    )
    return TransportError(type(exc).__name__, sent=not never_sent)


def _async_transport_error(exc: httpx.HTTPError) -> TransportError:
    never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
    return TransportError(type(exc).__name__, sent=not never_sent)


class AsyncSession:
    """Runs flows with httpx in an event loop (the triggerer). One pool and one token for all its users."""

    def __init__(self, api: VendorApi, *, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        self.api = api
        connect, read = timeout
        self.client = httpx.AsyncClient(
            verify=api.verify,
            timeout=httpx.Timeout(read, connect=connect),
            # Keep-alive as many as we open: with fewer, httpcore closes connections under load and every
            # poll of a busy triggerer pays a new TCP (and TLS) handshake.
            limits=httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE),
            follow_redirects=False,
        )
        self._token: Token | None = None
        self._lock = asyncio.Lock()
        self.on_secret: Callable[[str], Any] | None = None

    async def aclose(self) -> None:
        await self.client.aclose()

    async def run(self, flow: Flow[T]) -> T:
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(reply)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            reply, error = None, None
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
            elif isinstance(step, GetToken):
                reply = await self._get_token(step.stale)
            else:
                try:
                    reply = await self._send(step)
                except TransportError as exc:
                    error = exc

    async def _get_token(self, stale: Token | None) -> Token:
        async with self._lock:
            token = self._token
            if token is None or token is stale or not token.usable(now(), self.api.token_margin):
                token = await self.run(self.api.login())
                if self.on_secret is not None:
                    result = self.on_secret(token.value)
                    if asyncio.iscoroutine(result):
                        await result
                self._token = token
            return token

    async def _send(self, request: Request) -> Response:
        try:
            answer = await self.client.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                params=dict(request.params) if request.params else None,
                json=request.json,
                data=dict(request.form) if request.form else None,
            )
        except httpx.HTTPError as exc:
            raise _async_transport_error(exc) from None
        return Response.build(answer.status_code, answer.headers, answer.content)


class SessionRegistry:
    """Per event loop, one ``AsyncSession`` per connection: every trigger on a connection shares it.

    Keyed by a digest of the connection's fields (secrets included, so an edited connection gets a new
    session) without keeping the secrets themselves in the key.
    """

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncSession]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, key_material: str, factory: Callable[[], AsyncSession]) -> AsyncSession:
        loop = asyncio.get_running_loop()
        sessions = self._by_loop.setdefault(loop, {})
        key = hashlib.sha256(key_material.encode()).hexdigest()
        session = sessions.get(key)
        if session is None:
            session = sessions[key] = factory()
        return session

    def sessions(self) -> list[AsyncSession]:
        with contextlib.suppress(RuntimeError):
            return list(self._by_loop.get(asyncio.get_running_loop(), {}).values())
        return []

    async def aclose_all(self) -> None:
        loop = asyncio.get_running_loop()
        for session in self._by_loop.pop(loop, {}).values():
            await session.aclose()


ASYNC_SESSIONS = SessionRegistry()
