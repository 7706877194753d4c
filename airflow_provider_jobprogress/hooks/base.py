"""The generic job hook: joins a vendor protocol with a transport, a token cache and an Airflow connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from functools import cached_property
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import parse_qsl, urlsplit

from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from airflow.sdk import BaseHook

from airflow_provider_jobprogress.core.errors import JobProgressError
from airflow_provider_jobprogress.core.model import JobProgress
from airflow_provider_jobprogress.core.policies import PollPolicy, RequestRetry
from airflow_provider_jobprogress.core.protocol import ConnectionFields, ResultPart, VendorApi
from airflow_provider_jobprogress.core.session import (
    ASYNC_SESSIONS,
    DEFAULT_TIMEOUT,
    AsyncSession,
    StreamedResponse,
    SyncSession,
)

ApiT = TypeVar("ApiT", bound=VendorApi)


def _mask(secret: str) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret(secret)


async def _amask(secret: str) -> None:
    # amask_secret exists from Airflow 3.3.2; below, the sync call runs in a thread so the loop never blocks.
    from airflow.sdk import log as sdk_log

    amask = getattr(sdk_log, "amask_secret", None)
    if amask is not None:
        await amask(secret)
        return
    await asyncio.to_thread(sdk_log.mask_secret, secret)


class JobProgressHook(BaseHook, Generic[ApiT]):
    """Base of the vendor hooks: the same methods for every vendor.

    Sync methods (``get_progress``, ``cancel``, ``result_parts``, ``open_result``) run on workers with
    requests; async ones (``aget_progress``, ``acancel``) run in the triggerer with httpx, sharing one
    client and one token per connection and event loop.
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

    # -- vendor facts ----------------------------------------------------------------------------
    @classmethod
    def vendor(cls) -> str:
        return cls.api_class.vendor

    @classmethod
    def default_poll_policy(cls) -> PollPolicy:
        return cls.api_class.default_poll_policy

    # -- connection ------------------------------------------------------------------------------
    def _make_api(self, fields: ConnectionFields) -> ApiT:
        return self.api_class.from_connection(fields, request_retry=self.request_retry)  # type: ignore[attr-defined,no-any-return]

    @cached_property
    def api(self) -> ApiT:
        conn = self.get_connection(self.conn_id)
        return self._make_api(_fields(self.conn_id, conn, conn.extra_dejson))

    @cached_property
    def session(self) -> SyncSession:
        return SyncSession(self.api, timeout=self.timeout, on_secret=_mask)

    def get_conn(self) -> SyncSession:
        return self.session

    async def asession(self) -> AsyncSession:
        """The event loop's shared session for this connection (one pool, one token)."""
        if self._async_api is None:
            conn = await get_async_connection(self.conn_id, hook=self)
            extra = await get_async_extra_dejson(conn)
            self._async_api = self._make_api(_fields(self.conn_id, conn, extra))
            self._async_key = _key_material(type(self), _fields(self.conn_id, conn, extra), self.request_retry)
        api = self._async_api

        def factory() -> AsyncSession:
            session = AsyncSession(api, timeout=self.timeout)
            session.on_secret = _amask
            return session

        return ASYNC_SESSIONS.get(self._async_key, factory)

    # -- the job's life, sync --------------------------------------------------------------------
    def get_progress(self, job_id: str, *, deadline: float | None = None) -> JobProgress:
        """The job's progress now. ``deadline`` (epoch seconds) bounds retries and vendor-asked pauses:
        past it, ``DeadlineExceededError``."""
        return self.session.run(self.api.progress(job_id), deadline=deadline, job_id=job_id)

    def cancel(self, job_id: str, *, deadline: float | None = None) -> None:
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
                query = urlsplit(part.request.url).query
                for value in [query, *(v for _, v in parse_qsl(query))]:
                    if len(value) >= 8:
                        _mask(value)
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
        session = await self.asession()
        return await session.run(session.api.progress(job_id))

    async def acancel(self, job_id: str) -> None:
        session = await self.asession()
        await session.run(session.api.cancel(job_id))


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


def _key_material(hook: type, fields: ConnectionFields, retry: RequestRetry) -> str:
    return repr(
        (
            hook.__module__,
            hook.__qualname__,
            fields.conn_id,
            fields.host,
            fields.port,
            fields.schema,
            fields.login,
            fields.password,
            sorted(fields.extra.items()),
            retry,
        )
    )
