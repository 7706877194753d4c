"""An event trigger for asset watchers: one event per vendor job that newly finishes, never twice.

Event-driven scheduling (``Asset(watchers=[AssetWatcher(name, trigger=JobFinishedTrigger(...))])``) runs this
trigger in the triggerer for as long as the DAG is deployed; every event it yields becomes an asset event and
so a DAG run. A condition that stays true ("there is a finished job") would fire on every poll, so the trigger
keeps a **watermark**: the latest end time it has fired for, and the ids of the jobs that ended at exactly that
time (the API prints end times to the second, so two jobs can share one). A job fires when it ended after the
watermark, or at it with an id not yet seen; then the watermark moves past it.

Where the watermark lives across a triggerer restart (the triggerer re-creates the trigger from
``serialize()``, whose kwargs never change: Airflow identifies a watcher trigger by the hash of its kwargs,
so a value like "now" in them would make every DAG parse a new trigger):

- Airflow 3.3+ injects an asset state store into event triggers; the watermark is saved there after each
  event and read back on start, so jobs that finished while the triggerer was down fire once on restart,
  and jobs that already fired do not fire again. Its key names the stream (connection, API, states, name),
  not how it is polled: a new ``poll_interval``, ``page_size``, ``max_job_hours`` or ``request_retry`` (or
  an upgrade that adds a field to it) keeps the watermark. The store is a round trip to Airflow's API
  server: a failing call is retried until it answers, never the watcher's end.
- Below 3.3 there is no such store: the watermark starts at ``since`` when given (a restart then fires
  again every job finished after ``since``: at least once), else at the time the trigger starts (jobs that
  finish while no triggerer runs are never fired: at most once).

A watcher lives as long as its DAG, so months: an outage, a rate limit, an answer it cannot read, a listing
that repeats its continuation token, or a client secret rotated at Bentley before the connection is updated is
logged and waited through (the connection is read again after a refusal), with the watermark unchanged so that
nothing is missed. A job whose end time cannot be read is skipped, said once in the log.

Only iTwin can list jobs; OL Connect lists only running operations and ScriptX lists none, so neither is
supported (``OperationNotSupportedError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from airflow.providers.common.compat.connection import get_async_connection
from airflow.providers.common.compat.sdk import conf
from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_jobprogress.core.errors import (
    AuthenticationError,
    OperationNotSupportedError,
    RateLimitedError,
    VendorResponseError,
    VendorUnavailableError,
)
from airflow_provider_jobprogress.core.model import JobState
from airflow_provider_jobprogress.core.policies import RequestRetry
from airflow_provider_jobprogress.core.protocol import brief
from airflow_provider_jobprogress.hooks.itwin import ITwinHook
from airflow_provider_jobprogress.vendors.itwin import ITwinApi, job_ended_at, job_state

log = logging.getLogger(__name__)

#: the vendors (connection types) whose APIs can list finished jobs
LISTING_VENDORS = ("itwin",)
FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
STATE_KEY_PREFIX = "jobprogress.job_finished."
#: the kwargs 0.x hashed into its state key (every kwarg it had): read once after an upgrade, then moved
LEGACY_KEY_KWARGS = (
    "conn_id",
    "states",
    "since",
    "poll_interval",
    "max_job_hours",
    "page_size",
    "name",
    "vendor",
    "request_retry",
)
#: what a listing failure that is the vendor's or the network's, not the DAG's, looks like: waited through
WAITED_THROUGH = (VendorUnavailableError, RateLimitedError, VendorResponseError, AuthenticationError)
T = TypeVar("T")


def events_stored_after() -> float:
    """Seconds after which an event this watcher yielded can be taken as stored by Airflow, and the watermark past
    it saved: ``[triggerer] triggerer_health_check_threshold`` (30 s unless the deployment sets it).

    Airflow stores an event a moment after the yield, not at it: the triggerer's runner hands its events to its
    supervisor on its next loop (every second), which writes them after the requests of that round. A triggerer
    killed in between loses them, so a watermark saved at the yield would make such a job never fire. The save
    itself reaches the database through the same supervisor, after the events handed over before it. Waiting
    the time after which Airflow takes a silent triggerer for dead covers a runner or supervisor that stalls (a
    loaded host) for as long as Airflow lets one stall without moving its triggers elsewhere.
    """
    return max(0.0, float(conf.getfloat("triggerer", "triggerer_health_check_threshold", fallback=30.0)))


@dataclass(frozen=True)
class Watermark:
    """The latest end time fired for, and the ids of the jobs that ended at exactly that time."""

    ended: datetime.datetime
    ids: frozenset[str] = frozenset()

    def is_behind(self, ended: datetime.datetime, job_id: str) -> bool:
        """Whether a job that ended at ``ended`` is new to this watermark."""
        return ended > self.ended or (ended == self.ended and job_id not in self.ids)

    def advanced(self, ended: datetime.datetime, job_id: str) -> Watermark:
        if ended > self.ended:
            return Watermark(ended, frozenset({job_id}))
        if ended == self.ended:
            return Watermark(ended, self.ids | {job_id})
        return self

    def to_json(self) -> dict[str, Any]:
        return {"ended": self.ended.isoformat(), "ids": sorted(self.ids)}

    @classmethod
    def from_json(cls, value: Any) -> Watermark | None:
        if not isinstance(value, dict) or not isinstance(value.get("ended"), str):
            return None
        ids = value.get("ids") or []
        return cls(parse_time(value["ended"]), frozenset(str(i) for i in ids))


def parse_time(text: str) -> datetime.datetime:
    """An ISO 8601 time (``Z``, an offset, or none meaning UTC) as an aware datetime in UTC."""
    value = datetime.datetime.fromisoformat(text)
    return value.astimezone(datetime.UTC) if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def newly_finished(
    jobs: Iterable[Mapping[str, Any]], mark: Watermark, *, unplaced: set[str] | None = None
) -> list[tuple[datetime.datetime, dict[str, Any]]]:
    """The listed jobs new to ``mark``, oldest end first (ties by id), each with its end time.

    A finished job without an end time, or with one that is not a time, cannot be placed against the
    watermark: it is skipped, since firing it would fire it on every poll, and the watermark stays where
    it is. It is said once per job when ``unplaced`` (the ids said so far) is given, else every time.
    """
    new: dict[str, tuple[datetime.datetime, dict[str, Any]]] = {}
    said = unplaced if unplaced is not None else set()
    for job in jobs:
        job_id, ended_text = str(job.get("id", "")), job_ended_at(job)
        try:
            if not job_id or ended_text is None:
                raise ValueError("no end time")
            ended = parse_time(ended_text)
        except ValueError as exc:
            if job_id not in said:
                log.warning(
                    "iTwin job %s is listed as finished, but its end time %s cannot be read (%s): not fired",
                    brief(job_id or job),
                    brief(ended_text),
                    exc,
                )
                said.add(job_id)
            continue
        if mark.is_behind(ended, job_id):
            new[job_id] = (ended, dict(job))  # a job listed twice (pages moved under us) fires once
    return sorted(new.values(), key=lambda item: (item[0], str(item[1]["id"])))


class JobFinishedTrigger(BaseEventTrigger):
    """Fire one ``TriggerEvent`` for each iTwin job that newly reaches one of ``states``; never twice.

    :param conn_id: an ``itwin`` connection; its extra ``itwin_id`` narrows the listing to that iTwin
    :param states: which end states fire, from ``succeeded`` (the default), ``failed``, ``cancelled``
    :param since: ISO 8601 time to start from when no saved watermark exists (default: when the trigger
        starts). Fixed text, never computed at parse time: the kwargs identify the trigger.
    :param poll_interval: seconds between listings
    :param max_job_hours: jobs are listed only if created this long before the watermark or later (the API
        cannot filter on end time); a job running longer than this is not seen
    :param page_size: ``$top``, jobs per page of the listing
    :param name: only jobs of this name (the API filters on it), e.g. the name a nightly job is submitted with
    :param vendor: the connection type; only ``itwin`` can list jobs
    :param request_retry: the per-request retry policy (``RequestRetry`` as a dict)

    Event payload: ``vendor``, ``conn_id``, ``job_id``, ``state`` (ours), ``vendor_state``, ``ended``,
    ``name``, ``type``, ``itwin_id``. Read it in the DAG run from ``triggering_asset_events``
    (``event.extra["payload"]``).
    """

    def __init__(
        self,
        *,
        conn_id: str = "itwin_default",
        states: Sequence[str] = ("succeeded",),
        since: str | None = None,
        poll_interval: float = 60.0,
        max_job_hours: float = 168.0,
        page_size: int = 100,
        name: str | None = None,
        vendor: str = "itwin",
        request_retry: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if vendor not in LISTING_VENDORS:
            raise OperationNotSupportedError(
                vendor,
                None,
                f"JobFinishedTrigger needs a vendor that can list finished jobs ({', '.join(LISTING_VENDORS)}); "
                f"{vendor} cannot: wait on a known job with JobProgressSensor instead",
            )
        known = {state.value for state in FINISHED_STATES}
        chosen = [str(state).lower() for state in states]
        if not chosen or set(chosen) - known:
            raise ValueError(f"states must be a non-empty list from {sorted(known)}, not {list(states)!r}")
        if since is not None:
            parse_time(since)  # refuse a bad time when the DAG is parsed, not in the triggerer
        if poll_interval <= 0 or max_job_hours <= 0 or not 2 <= page_size <= 1000:
            raise ValueError("poll_interval and max_job_hours must be > 0 and page_size within 2..1000")
        self.conn_id = conn_id
        self.states = chosen
        self.since = since
        self.poll_interval = float(poll_interval)
        self.max_job_hours = float(max_job_hours)
        self.page_size = int(page_size)
        self.name = name
        self.vendor = vendor
        self.request_retry = RequestRetry.from_value(request_retry).to_dict() if request_retry else None
        self.watermark: Watermark | None = None
        #: listings done so far (every page read), for logs and tests that wait for "n more polls"
        self.completed_polls = 0
        #: jobs whose end time could not be read, said once each
        self._unplaced: set[str] = set()
        #: the hook listing jobs while the watcher runs; cleanup() gives its session back
        self._hook: ITwinHook | None = None
        #: the watermark last written to Airflow's asset state store (None: none written by this instance)
        self.saved: Watermark | None = None
        #: watermarks past events not yet taken as stored, each with when (``loop.time()``) its event was yielded
        self._unsaved: list[tuple[float, Watermark]] = []

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "states": list(self.states),
                "since": self.since,
                "poll_interval": self.poll_interval,
                "max_job_hours": self.max_job_hours,
                "page_size": self.page_size,
                "name": self.name,
                "vendor": self.vendor,
                "request_retry": self.request_retry,
            },
        )

    # -- the watermark's home across restarts ------------------------------------------------------
    def state_key(self, api: ITwinApi) -> str:
        """The asset state store key: what identifies the stream of jobs (the connection, the API it reaches,
        the states and the name), never how it is polled, so tuning the watcher keeps its watermark."""
        stream = {
            "conn_id": self.conn_id,
            "vendor": self.vendor,
            "api": api.api,
            "states": sorted(self.states),
            "name": self.name,
        }
        return STATE_KEY_PREFIX + _digest(stream)

    def legacy_state_key(self) -> str:
        """The key 0.x saved the watermark under: a digest of every kwarg it had."""
        kwargs = self.serialize()[1]
        return STATE_KEY_PREFIX + _digest({name: kwargs[name] for name in LEGACY_KEY_KWARGS})

    def _store(self) -> Any:
        # Airflow 3.3+ sets asset_state_store on event triggers that watch an asset; older ones have none.
        return getattr(self, "asset_state_store", None)

    async def _load_watermark(self, key: str) -> Watermark:
        store = self._store()
        if store is not None:
            try:
                saved = await self._from_store(store, key)
                if saved is None:
                    saved = await self._from_legacy_key(store, key)
            except ValueError:  # the same trigger watches several assets: no single store to read
                log.warning("JobFinishedTrigger watches several assets; its watermark is kept in memory only")
                saved = None
            if saved is not None:
                log.info("Resuming from the saved watermark %s", saved.to_json())
                return saved
        if self.since:
            return Watermark(parse_time(self.since))
        # Whole seconds, the resolution of the end times the API prints: a job that ended in the second the
        # trigger started is fired, rather than lost to a comparison with microseconds it never had.
        return Watermark(datetime.datetime.now(datetime.UTC).replace(microsecond=0))

    async def _from_store(self, store: Any, key: str) -> Watermark | None:
        return Watermark.from_json(await self._store_call(f"read {key}", lambda: store.aget(key)))

    async def _from_legacy_key(self, store: Any, key: str) -> Watermark | None:
        """The watermark 0.x saved under its key, moved to ``key`` (once: the old key is gone then)."""
        legacy = self.legacy_state_key()
        saved = await self._from_store(store, legacy)
        if saved is not None:
            log.info("Moving the watermark saved under %s to %s", legacy, key)
            await self._store_call(f"write {key}", lambda: store.aset(key, saved.to_json()))
            if hasattr(store, "adelete"):
                await self._store_call(f"delete {legacy}", lambda: store.adelete(legacy))
        return saved

    async def _save_watermark(self, key: str, mark: Watermark) -> None:
        store = self._store()
        if store is None:
            return
        with contextlib.suppress(ValueError):  # several assets: logged at load
            await self._store_call(f"write {key}", lambda: store.aset(key, mark.to_json()))
            self.saved = mark

    async def _pause(self, key: str, seconds: float) -> None:
        """Wait ``seconds`` before listing again, saving on the way each watermark whose events can by then be
        taken as stored (``events_stored_after()`` after their yield), the latest of them only.

        Until then a restart reads the watermark before them and fires them again: at least once, never lost.
        A duplicate needs the triggerer to stop, or the watcher to move to another triggerer, within that time
        of an event, after Airflow stored it."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while self._unsaved and (due := self._unsaved[0][0] + events_stored_after()) <= end:
            await asyncio.sleep(max(0.0, due - loop.time()))
            settled_by = loop.time() - events_stored_after()
            settled = [mark for yielded, mark in self._unsaved if yielded <= settled_by]
            self._unsaved = self._unsaved[len(settled) :]
            if settled:
                await self._save_watermark(key, settled[-1])
        await asyncio.sleep(max(0.0, end - loop.time()))

    async def _store_call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """One asset state store call, tried until it answers.

        The store is a round trip to Airflow's API server, which can be away for a while (a restart, a
        database failover): waited through, never the watcher's end. Reading the watermark on start waits
        for it (firing without it would fire jobs twice or never); a save waits before the next poll, so a
        restart meanwhile fires at most the jobs of this one poll again. ``ValueError`` is not transient:
        the trigger watches several assets and there is no single store.
        """
        pause = min(1.0, self.poll_interval)
        while True:
            try:
                return await call()
            except ValueError:
                raise
            except Exception as exc:
                log.warning(
                    "Airflow's asset state store could not %s (%s: %s); trying again in %.1f s",
                    what,
                    type(exc).__name__,
                    exc,
                    pause,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, max(self.poll_interval, 1.0))

    # -- the loop ----------------------------------------------------------------------------------
    async def _check_connection(self) -> None:
        conn = await get_async_connection(self.conn_id)
        if conn.conn_type not in LISTING_VENDORS:
            raise OperationNotSupportedError(
                str(conn.conn_type),
                None,
                f"connection {self.conn_id!r} is of type {conn.conn_type!r}; JobFinishedTrigger can list "
                f"finished jobs only on {', '.join(LISTING_VENDORS)} connections",
            )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await self._check_connection()
        hook = self._hook = ITwinHook(self.conn_id, request_retry=RequestRetry.from_value(self.request_retry))
        key = self.state_key(await self._api(hook))
        mark = self.watermark = await self._load_watermark(key)
        log.info("Watching iTwin jobs on %r that end in %s after %s", self.conn_id, self.states, mark.ended)
        while True:
            try:
                finished = await self._finished_jobs(hook, mark)
            except WAITED_THROUGH as exc:
                # A watcher lives as long as its DAG: an outage that outlasts one listing's retries, a listing
                # it cannot read or a secret rotated before the connection was updated is waited through (the
                # watermark is unchanged, so nothing is missed), never its end.
                pause = getattr(exc, "retry_after", None) or self.poll_interval
                # refused credentials need someone to update the connection: an error, not a warning
                level = logging.ERROR if isinstance(exc, AuthenticationError) else logging.WARNING
                log.log(level, "%s; listing again in %.0f s", exc, pause)
                await self._pause(key, pause)
                continue
            for ended, job in finished:
                mark = self.watermark = mark.advanced(ended, str(job["id"]))
                log.info("iTwin job %s ended %s at %s: firing", job["id"], job.get("state"), ended.isoformat())
                yield TriggerEvent(self._payload(ended, job))
                # Not saved here: Airflow has the event but has not stored it yet (see events_stored_after).
                if self._store() is not None:
                    self._unsaved.append((asyncio.get_running_loop().time(), mark))
            await self._pause(key, self.poll_interval)

    async def cleanup(self) -> None:
        """Airflow calls this whenever the watcher stops (its DAG or asset gone, a triggerer shutdown): the
        connection's shared session goes back (closed when no other trigger uses it)."""
        hook, self._hook = self._hook, None
        if hook is not None:
            await hook.aclose()

    @staticmethod
    async def _api(hook: ITwinHook) -> ITwinApi:
        """The connection's API as the hook's shared session reads it now (again after a rotated secret)."""
        return cast(ITwinApi, (await hook.asession()).api)

    async def _finished_jobs(self, hook: ITwinHook, mark: Watermark) -> list[tuple[datetime.datetime, dict[str, Any]]]:
        """The jobs new to ``mark``, read page by page: only those are kept, never a week of jobs at once."""
        api = await self._api(hook)
        created_after = (mark.ended - datetime.timedelta(hours=self.max_job_hours)).astimezone(datetime.UTC)
        states = [JobState(state) for state in self.states]
        flt = api.finished_jobs_filter(states, created_after.strftime("%Y-%m-%dT%H:%M:%SZ"), name=self.name)
        new: dict[str, tuple[datetime.datetime, dict[str, Any]]] = {}
        async for page in hook.alist_job_pages(flt, top=self.page_size):
            finished = (job for job in page if job_state(job) in states)
            for ended, job in newly_finished(finished, mark, unplaced=self._unplaced):
                new[str(job["id"])] = (ended, job)  # a job on two pages (the listing moved) fires once
        self.completed_polls += 1
        return sorted(new.values(), key=lambda item: (item[0], str(item[1]["id"])))

    def _payload(self, ended: datetime.datetime, job: Mapping[str, Any]) -> dict[str, Any]:
        state = job_state(job)
        return {
            "vendor": "iTwin",
            "conn_id": self.conn_id,
            "job_id": str(job["id"]),
            "state": state.value if state else None,
            "vendor_state": job.get("state"),
            "ended": ended.isoformat(),
            "name": job.get("name"),
            "type": job.get("type"),
            "itwin_id": job.get("iTwinId"),
        }


def _digest(value: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
