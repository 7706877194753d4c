"""The generic job hook: joins a vendor protocol with a transport, a token cache and an Airflow connection."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from functools import cached_property
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import unquote_plus, urlsplit

from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from airflow.sdk import BaseHook

from airflow_provider_jobprogress.core.budget import BUDGETS, BudgetShort, RequestBudget, urgent
from airflow_provider_jobprogress.core.errors import AuthenticationError, ConfigurationError, JobProgressError
from airflow_provider_jobprogress.core.model import JobProgress, Listing
from airflow_provider_jobprogress.core.policies import PollPolicy, RequestRetry
from airflow_provider_jobprogress.core.protocol import ConnectionFields, Flow, ResultPart, Token, VendorApi
from airflow_provider_jobprogress.core.session import (
    ASYNC_SESSIONS,
    DEFAULT_TIMEOUT,
    AsyncSession,
    PerLoop,
    StreamedResponse,
    SyncSession,
)

ApiT = TypeVar("ApiT", bound=VendorApi)
T = TypeVar("T")
#: seconds a connection read in the triggerer also serves other waits on it (a mapped task's waits start
#: together: one read, not one per wait, each a round trip to the API server in a real triggerer)
CONNECTION_TTL = 30.0


class _AsyncConnections:
    """Per event loop: the connection fields last read for each conn id, shared by waits that start together.

    ``get(conn_id, read, not_before)`` answers with a read started at or after ``not_before`` (monotonic),
    joining one in flight, else starts one. Readers of a failing credential ask for a read newer than
    the one they used, so a burst of waits that all see a rotated secret reads the connection once.
    """

    def __init__(self) -> None:
        self._loops: PerLoop[dict[str, tuple[float, asyncio.Future[ConnectionFields]]]] = PerLoop(dict)

    def __len__(self) -> int:
        """The number of event loops with reads kept here."""
        return len(self._loops)

    async def get(
        self, conn_id: str, read: Callable[[], Awaitable[ConnectionFields]], not_before: float
    ) -> tuple[float, ConnectionFields]:
        here = self._loops.here()
        entry = here.get(conn_id)
        if entry is None or entry[0] < not_before or (entry[1].done() and entry[1].exception() is not None):
            entry = here[conn_id] = (time.monotonic(), asyncio.ensure_future(read()))
        started, reading = entry
        # shield: one waiter cancelled (its trigger killed) must not cancel the read the others wait for
        return started, await asyncio.shield(reading)


_CONNECTIONS = _AsyncConnections()


def _mask(secret: str) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret(secret)


#: the query parameters of a pre-signed URL that are secret: Azure SAS ``sig`` (the signature; ``sv``, ``se``,
#: ``sp``, ``sr``, ``skoid``... are a version, dates, permissions and ids), and, should a vendor hand out S3 or
#: GCS URLs, their signatures and AWS's session token. Masking every long value hid dates such as
#: ``sv=2021-08-06`` in every log line of the task, not only in URLs.
SIGNED_URL_SECRETS = frozenset({"sig", "x-amz-signature", "x-amz-security-token", "x-goog-signature"})


def signed_url_secrets(url: str) -> list[str]:
    """The secret query values of a pre-signed URL, as sent (percent-encoded) and decoded."""
    found: list[str] = []
    for pair in urlsplit(url).query.split("&"):
        name, _, value = pair.partition("=")
        if unquote_plus(name).lower() in SIGNED_URL_SECRETS and value:
            found.extend({value, unquote_plus(value)})
    return found


class JobProgressHook(BaseHook, Generic[ApiT]):
    """Base of the vendor hooks: the same methods for every vendor.

    Sync methods (``get_progress``, ``cancel``, ``result_parts``, ``open_result``) run on workers with
    requests; async ones (``aget_progress``, ``acancel``) run in the triggerer with aiohttp, sharing one
    session (pool and token) per connection and event loop. A hook holds its share of that session from
    its first async call until ``await hook.aclose()`` (or the end of ``async with hook:``); the session
    closes when no hook holds it.
    """

    conn_name_attr: ClassVar[str] = "conn_id"
    default_conn_name: ClassVar[str]
    conn_type: ClassVar[str]
    hook_name: ClassVar[str]
    api_class: ClassVar[type[VendorApi]]

    def __init__(
        self,
        conn_id: str | None = None,
        *,
        request_retry: RequestRetry | dict[str, Any] | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name
        self.request_retry = RequestRetry.from_value(request_retry)
        self.timeout = timeout
        self._async_api: ApiT | None = None
        self._async_key = ""
        self._async_read_at = 0.0
        self._lease: AsyncSession | None = None

    # -- vendor facts ----------------------------------------------------------------------------
    @classmethod
    def vendor(cls) -> str:
        return cls.api_class.vendor

    @classmethod
    def default_poll_policy(cls) -> PollPolicy:
        return cls.api_class.default_poll_policy

    # -- connection ------------------------------------------------------------------------------
    def _make_api(self, fields: ConnectionFields) -> ApiT:
        """The vendor API for a read of the connection. A function of ``fields`` and ``request_retry`` alone: the
        async hooks of one class share what it makes for one read (``_api_for``)."""
        return self.api_class.from_connection(fields, request_retry=self.request_retry)  # type: ignore[attr-defined,no-any-return]

    @cached_property
    def api(self) -> ApiT:
        conn = self.get_connection(self.conn_id)
        _check_extra(self.vendor(), self.conn_id, conn)
        return self._make_api(_fields(self.conn_id, conn, conn.extra_dejson))

    @cached_property
    def session(self) -> SyncSession:
        return SyncSession(self.api, timeout=self.timeout, budget=self._budget(self.api))

    def _budget(self, api: VendorApi) -> RequestBudget:
        """The connection's request budget in this process, shared by every hook on it (``core.budget``)."""
        return BUDGETS.get(self.conn_id, api.requests_per_minute, api.requests_per_hour)

    def budget(self) -> RequestBudget | None:
        """The connection's budget in this process, as the hooks that last read the connection set it (None before
        any did); read only: a hook holding an old read must not put old limits back."""
        return BUDGETS.find(self.conn_id)

    def get_conn(self) -> SyncSession:
        return self.session

    async def _read_connection_fields(self) -> ConnectionFields:
        conn = await get_async_connection(self.conn_id, hook=self)
        _check_extra(self.vendor(), self.conn_id, conn)
        return _fields(self.conn_id, conn, await get_async_extra_dejson(conn))

    async def _read_async_connection(self, *, newer: bool = False) -> ApiT:
        """The connection for async calls: as read by any wait in the last ``CONNECTION_TTL`` seconds, or,
        with ``newer``, as read after the read this hook used (after an authentication failure)."""
        not_before = self._async_read_at + 1e-9 if newer else time.monotonic() - CONNECTION_TTL
        self._async_read_at, fields = await _CONNECTIONS.get(self.conn_id, self._read_connection_fields, not_before)
        self._async_api, self._async_key = self._api_for(fields)
        return self._async_api

    def _api_for(self, fields: ConnectionFields) -> tuple[ApiT, str]:
        """The vendor API object and session key for one read of the connection, shared by the hooks of this class
        (and retry policy and timeouts) that read it: thousands of waits each made their own (~0.4 KB and a digest
        each). An API object is not changed once made; a new read of the connection makes new ones."""
        key = (type(self), fields.conn_id, self.request_retry, tuple(self.timeout))
        found = _APIS.get(key)
        if found is None or found[0] is not fields:  # a newer read replaces the older (and its secrets)
            if len(_APIS) >= 256:
                _APIS.clear()
            found = _APIS[key] = (fields, self._make_api(fields), _session_key(type(self), fields, self.timeout))
        return found[1], found[2]

    async def asession(self) -> AsyncSession:
        """The event loop's shared session for this connection (one pool, one token), held until ``aclose``."""
        if self._lease is not None and self._lease.loop is not asyncio.get_running_loop():
            # Kept from an earlier event loop (asyncio.run called again): that loop closed it when it ended.
            self._lease = None
        if self._lease is None:
            api = self._async_api or await self._read_async_connection()
            timeout, budget = self.timeout, self._budget(api)

            def factory(token: Token | None) -> AsyncSession:
                return AsyncSession(api, timeout=timeout, token=token, budget=budget)

            self._lease = ASYNC_SESSIONS.acquire(self._async_key, factory)
        return self._lease

    async def aclose(self) -> None:
        """Give back this hook's share of the shared session; the last hook to do so closes it."""
        lease, self._lease = self._lease, None
        if lease is not None and lease.loop is asyncio.get_running_loop():
            await ASYNC_SESSIONS.release(lease)

    async def __aenter__(self) -> JobProgressHook[ApiT]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _arun(self, build: Callable[[ApiT], Flow[T]], *, optional: bool = False, early_turn: bool = False) -> T:
        """Run a flow on the shared session; on an authentication failure read the connection once more.

        A secret rotated while a wait runs reaches the wait this way: if the connection changed, the flow
        runs again on the new connection's session; if it did not, the failure stands.
        """
        session = await self.asession()
        assert self._async_api is not None
        try:
            return await session.run(build(self._async_api), optional=optional, early_turn=early_turn)
        except AuthenticationError:
            used = self._async_key
            await self._read_async_connection(newer=True)
            if self._async_key == used:
                raise
        await self.aclose()
        session = await self.asession()
        return await session.run(build(self._async_api), optional=optional, early_turn=early_turn)

    # -- the job's life, sync --------------------------------------------------------------------
    def get_progress(self, job_id: str, *, deadline: float | None = None) -> JobProgress:
        """The job's progress now. ``deadline`` (epoch seconds) bounds retries and vendor-asked pauses:
        past it, ``DeadlineExceededError``."""
        return self.session.run(self.api.poll(job_id), deadline=deadline, job_id=job_id)

    def cancel(self, job_id: str, *, deadline: float | None = None) -> None:
        with urgent():
            self.session.run(self.api.cancel(job_id), deadline=deadline, job_id=job_id)

    def result_parts(self, job_id: str) -> list[ResultPart]:
        """Where the job's result is: the parts a download streams (ids or paths come as values)."""
        return self._masked(self.session.run(self.api.results(job_id)))

    def xcom_result_parts(self, job_id: str) -> list[ResultPart]:
        """The result parts as XCom wants them (OL Connect: several spool files as their paths)."""
        return self._masked(self.session.run(self.api.xcom_results(job_id)))

    @staticmethod
    def _masked(parts: list[ResultPart]) -> list[ResultPart]:
        for part in parts:
            # A pre-signed URL (an Azure SAS) carries its key in the query: mask it wherever it is logged.
            if part.request is not None and not part.request.authenticated:
                for secret in signed_url_secrets(part.request.url):
                    _mask(secret)
        return parts

    @contextlib.contextmanager
    def open_result(self, part: ResultPart, job_id: str) -> Iterator[StreamedResponse]:
        """Open one result part for a streamed read: ``for chunk in answer.chunks(): ...``."""
        if part.request is None:
            raise ValueError(f"result part {part.label} of {self.vendor()} job {job_id} is a value, not a download")
        with self.session.stream(part.request, job_id, what=f"download {part.label}") as answer:
            yield answer

    def test_connection(self) -> tuple[bool, str]:
        """A real, harmless call (handshake, license check or token) so the form's Test button means something."""
        try:
            return True, self.session.run(self.api.check())
        except (JobProgressError, ValueError) as exc:
            return False, str(exc)

    # -- the job's life, async (triggerer) -------------------------------------------------------
    async def aget_progress(self, job_id: str) -> JobProgress:
        # early_turn: a wait's poll queued behind a short budget holds its place, not its request (AsyncSession.run)
        return await self._arun(lambda api: api.poll(job_id), early_turn=True)

    async def acancel(self, job_id: str) -> None:
        # urgent: a cancel is bounded by seconds (on_kill's budget) and a job left running costs its whole run,
        # so it takes the connection's next turn rather than queueing behind every wait's poll
        with urgent():
            await self._arun(lambda api: api.cancel(job_id))

    # -- the shared poller's calls (core.poller) -------------------------------------------------
    async def aget_progress_if_budget(self, job_id: str) -> JobProgress | None:
        """``aget_progress`` if the connection's budget has a call to spare; None (nothing sent) if not."""
        try:
            return await self._arun(lambda api: api.poll(job_id), optional=True, early_turn=True)
        except BudgetShort:
            return None

    async def alist_running(self) -> Listing | None:
        """Every job the vendor runs for this connection, in a few calls; None where it cannot list them (or
        the connection's ``list_polling`` extra is false)."""
        if self._async_api is None or time.monotonic() - self._async_read_at > CONNECTION_TTL:
            # the poller's hook lives as long as its waits: it follows an edited connection as a new wait would
            used = self._async_key
            api = await self._read_async_connection()
            if used and self._async_key != used:
                await self.aclose()  # the next call takes the edited connection's session
        else:
            api = self._async_api
        if not api.list_polling:
            return None
        return await self._arun(lambda api: api.list_running())

    async def aread_ended(self, ended: Mapping[str, JobProgress]) -> dict[str, JobProgress]:
        """How jobs that left the running listing ended, as far as the vendor's listings tell."""
        return await self._arun(lambda api: api.read_ended(ended))


def ui_field_behaviour(hook: type[JobProgressHook[Any]]) -> dict[str, Any]:
    """A hook's connection form for Airflow below 3.2, from the facts 3.2+ reads in ``get_provider_info``.

    Airflow below 3.2 only calls a hook's *own* ``get_ui_field_behaviour`` (each vendor hook binds this
    function to that name) and validates snake_case keys (``hidden_fields``), where the provider info has
    kebab-case ones (``hidden-fields``).
    """
    from airflow_provider_jobprogress.get_provider_info import get_provider_info

    for conn_type in get_provider_info()["connection-types"]:
        if conn_type["connection-type"] == hook.conn_type:
            behaviour = conn_type.get("ui-field-behaviour", {})
            return {key.replace("-", "_"): value for key, value in behaviour.items()}
    return {"hidden_fields": [], "relabeling": {}}


def _check_extra(vendor: str, conn_id: str, conn: Any) -> None:
    """Extras that are not a JSON object: Airflow would log them and hand us ``{}``, and every setting would
    silently become its default (iTwin would call api.bentley.com). Refused, naming the field."""
    raw = getattr(conn, "extra", None)
    if not isinstance(raw, str) or not raw.strip():
        return
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise ConfigurationError(
            vendor,
            None,
            "the extras are not a JSON object ({...}): fix them in the connection's Extra field",
            conn_id=conn_id,
            field="extra",
        )


def _fields(conn_id: str, conn: Any, extra: Any) -> ConnectionFields:
    return ConnectionFields(
        conn_id=conn_id,
        conn_type=getattr(conn, "conn_type", None),
        host=conn.host or None,
        port=int(conn.port) if conn.port else None,
        schema=conn.schema or None,
        login=conn.login or None,
        password=conn.password or None,
        extra=dict(extra or {}),
    )


#: ``JobProgressHook._api_for``: (hook class, connection id, retry policy, timeouts) -> (the last read, its API, key)
_APIS: dict[tuple[type, str, RequestRetry, tuple[float, ...]], tuple[ConnectionFields, Any, str]] = {}


def _session_key(hook: type, fields: ConnectionFields, timeout: tuple[float, float]) -> str:
    """What makes two hooks share a session: the same connection as it reads now, and the same timeouts.

    Secrets are in it (an edited connection must not reuse the old token) but only as part of a digest.
    The request retry policy is not: it lives in each hook's own flows, so waits with different
    policies on one connection share the session.
    """
    material = repr(
        (
            hook.__module__,
            hook.__qualname__,
            fields.conn_id,
            fields.conn_type,
            fields.host,
            fields.port,
            fields.schema,
            fields.login,
            fields.password,
            sorted((str(k), repr(v)) for k, v in fields.extra.items()),
            timeout,
        )
    )
    return hashlib.sha256(material.encode()).hexdigest()
