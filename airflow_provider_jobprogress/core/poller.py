"""The shared poller: how a wait's job is read. In each triggerer process, the waits on one connection share one.

Every wait polls at its own policy's pace and logs what it sees, as it always did; what changes is what a poll
costs the vendor. A wait *watches* its job on the connection's ``JobPoller`` and asks it for each reading:

- **Few waits, or a vendor without a list call** (ScriptX; iTwin's v1 APIs): the reading is the wait's own
  per-job call (``hook.aget_progress``), paced like every call of the connection by its request budget
  (``core.budget``). A wait alone behaves exactly as before.
- **``LIST_MIN_WAITS`` or more jobs on a connection whose vendor lists its jobs** (OL Connect
  ``getOperations``; iTwin v2 ``GET /jobs?$filter``): once per cycle the poller reads every running job of the
  connection in one call (or a few pages), and each wait's poll is answered from that listing, without a call of
  its own. A job that was listed and no longer is has ended: the vendor's listing of ended jobs (where it has one,
  ``ENDED_CHUNK`` jobs at a time, each chunk's waits woken as its answer comes) or one per-job call reads how,
  and the poller wakes that wait at once instead of at its next poll, so an end is seen within one cycle however
  far the wait's backoff has grown (a budget short for thousands of ends at once stretches that). A poll while
  a listing is under way is answered from the last good one (the first listing is awaited): a listing and its
  ended jobs' reads, paced by a short budget, may take a while, and hold no wait meanwhile. The listing call
  takes the budget's next turn, ahead of the waits' own queued reads (``core.budget.urgent``), and the next one
  starts no sooner after it ended than it took, so the waits' reads keep at least every other turn. A job the listing
  has never shown (it ended before the first listing, or the vendor does not know it) is read per job. Where the
  listing gives no percentage (iTwin), a wait's per-job progress read is *optional*: sent when the budget has a
  call to spare, left out (the wait keeps its last percentage) when it has not, so completions always come first.

The cycle is the shortest current interval of the waits, within the vendor's ``list_interval`` and
``MIN_CYCLE``. A listing that fails is tried again next cycle; meanwhile the waits are answered from the last good
one (they see no change yet) for up to ``STALE_LISTING`` seconds: a failed listing must not turn every wait's poll
into a call of its own just as the vendor struggles (5,000 iTwin waits would queue hours of calls). Only with no
good listing that recent (never one yet, or the listing stays broken, a permission the client lacks) does each
wait read its own job, paced by the budget, so a broken listing delays an end by minutes, never hides it, and an
outage still reaches each wait's ``outage_tolerance``.

The poller is a process-local optimisation: it holds nothing a triggerer restart must recover (each trigger's
kwargs still say everything about its wait), lives while a wait watches a job on its connection, and closes its
task and its hook's share of the HTTP session when the last wait leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Protocol

from airflow_provider_jobprogress.core.budget import BudgetCounts, RequestBudget, urgent
from airflow_provider_jobprogress.core.errors import JobProgressError
from airflow_provider_jobprogress.core.model import JobProgress, JobState, Listing

log = logging.getLogger(__name__)

#: listing pays from this many jobs watched on one connection; below it each wait reads its own job
LIST_MIN_WAITS = 3
#: never list more often than this (seconds), whatever the waits' intervals
MIN_CYCLE = 1.0
#: while listings fail, the last good one answers the waits for this many seconds (then: per-job reads)
STALE_LISTING = 300.0
#: jobs that left the listing are read this many at a time (``aread_ended``), each chunk's waits woken as its
#: answer comes: 5,000 ends at once under a Trial client's 75 calls a minute would otherwise hold the first
#: for the last (iTwin reads 50 per call, ``vendors.itwin.ENDED_BATCH``)
ENDED_CHUNK = 50


#: what receives a connection's counts once a minute (the triggers send them to Airflow's metrics)
Report = Callable[[RequestBudget, BudgetCounts, int], None]


class JobReader(Protocol):
    """What the poller needs from a hook (``hooks.base.JobProgressHook`` is one)."""

    async def aget_progress(self, job_id: str) -> JobProgress: ...

    async def aget_progress_if_budget(self, job_id: str) -> JobProgress | None: ...

    async def alist_running(self) -> Listing | None: ...

    async def aread_ended(self, ended: Mapping[str, JobProgress]) -> dict[str, JobProgress]: ...

    async def aclose(self) -> None: ...

    def budget(self) -> RequestBudget | None: ...


class Watch:
    """One wait's hold on its job: its readings come from ``read()``, its sleeps from ``sleep()``."""

    # one per wait, thousands in a triggerer: slots (a dict each was a tenth of a wait's memory)
    __slots__ = ("_sleeping", "_woken", "interval", "job_id", "last", "poller", "reader")

    def __init__(self, poller: JobPoller, job_id: str, reader: JobReader) -> None:
        self.poller = poller
        self.job_id = job_id
        self.reader = reader
        #: the wait's current poll interval (the poller's cycle follows the shortest)
        self.interval = poller.list_interval
        self.last: JobProgress | None = None
        self._woken = False
        self._sleeping: asyncio.Future[None] | None = None

    async def read(self) -> JobProgress:
        """The job's progress now: from the connection's listing when there is one, else one call."""
        reading = await self.poller.read(self)
        self.last = reading
        return reading

    async def sleep(self, seconds: float, tick: float) -> None:
        """Sleep ``seconds``, to the next point of a ``tick`` grid (waits due together wake together; never
        sooner, as a trigger's ``first_poll_at`` promises), or less if the poller learns meanwhile that the job
        ended."""
        self.interval = seconds
        if self._woken:
            self._woken = False
            return
        loop = asyncio.get_running_loop()
        moment = loop.time()
        when = math.ceil((moment + seconds) / tick) * tick
        if when <= moment:
            when += tick
        woken = self._sleeping = loop.create_future()
        handle = loop.call_at(when, _settle, woken)
        try:
            await woken
        finally:
            handle.cancel()
            self._sleeping = None
            self._woken = False

    def wake(self) -> None:
        """The listing says this job ended: its wait polls now."""
        self._woken = True
        if self._sleeping is not None:
            _settle(self._sleeping)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(frozen=True)
class _Snapshot:
    listing: Listing
    taken_at: float  # loop time


async def outlast_cancels(work: asyncio.Future[None]) -> asyncio.CancelledError | None:
    """Wait for ``work`` (bounded only by its own time limit, if it has one) however often this task is cancelled
    meanwhile, and return the first of those cancels (None if none came). They are swallowed (this task's
    ``cancelling()`` stays raised: the caller decides whether to raise one), so a task already unwinding a cancel
    finishes what it must (a killed trigger's ``on_kill`` and ``cleanup``, a poller giving its session back) while
    Airflow sends that cancel again every second. Neither the work's exception nor its cancel comes through
    (``asyncio.wait`` neither raises it nor cancels the work); the exception is retrieved (``work.result()`` still
    raises it)."""
    first: asyncio.CancelledError | None = None
    while not work.done():
        try:
            await asyncio.wait({work})
        except asyncio.CancelledError as exc:
            first = first or exc
    if not work.cancelled():
        work.exception()  # retrieved: never "Task exception was never retrieved"
    return first


class JobPoller:
    """The waits on one connection in one event loop, and the listing that answers their polls."""

    def __init__(
        self, name: str, reader: JobReader, *, lists: bool, list_interval: float, report: Report | None = None
    ) -> None:
        self.name = name  # the connection id, for log lines
        self.reader = reader  # the poller's own hook: listings, ended-job reads
        self.report = report
        self.lists = lists
        self.list_interval = list_interval
        #: the waits on each job (a list: one wait a job nearly always, and an empty set alone is 216 bytes)
        self.watches: dict[str, list[Watch]] = {}
        #: the registry's key for this poller (``PollerRegistry``)
        self.key: Hashable = None
        self._snapshot: _Snapshot | None = None
        #: watched jobs some listing showed running, with that reading: missing from a later one, they ended
        self._seen: dict[str, JobProgress] = {}
        #: how watched jobs ended, as the ended listing read them, until their waits leave. A verdict never goes
        #: stale: the snapshot that brought it may be older than a woken wait's interval when it lands (a listing
        #: and its ended listing waiting their turns in a short budget), and the next snapshot no longer has the
        #: job; the wait must not then spend a call of its own on a job the poller has just read.
        self._ended: dict[str, JobProgress] = {}
        self._refreshing: asyncio.Future[_Snapshot | None] | None = None
        self._cycle_task: asyncio.Task[None] | None = None
        #: loop time of the last failed listing while it keeps failing (None when the last one worked)
        self._failed_at: float | None = None
        #: loop time before which no listing starts (``_take_snapshot``)
        self._next_listing_at = 0.0
        self._closed = False

    # -- who watches ------------------------------------------------------------------------------
    def watch(self, job_id: str, reader: JobReader) -> Watch:
        watch = Watch(self, job_id, reader)
        self.watches.setdefault(job_id, []).append(watch)
        if self._cycle_task is None:
            self._cycle_task = asyncio.get_running_loop().create_task(
                self._cycle(), name=f"jobprogress poller {self.name}"
            )
        return watch

    def unwatch(self, watch: Watch) -> None:
        watches = self.watches.get(watch.job_id)
        if watches is not None and watch in watches:
            watches.remove(watch)
            if not watches:
                del self.watches[watch.job_id]
                self._seen.pop(watch.job_id, None)
                self._ended.pop(watch.job_id, None)

    @property
    def listing(self) -> bool:
        """Whether this connection's polls are answered from a listing now."""
        return self.lists and len(self.watches) >= LIST_MIN_WAITS

    @property
    def waits(self) -> int:
        return sum(len(w) for w in self.watches.values())

    async def aclose(self) -> None:
        """Stop the cycle and any listing under way (a listing left running would take a session again after
        its hook gave it back), then give back the hook's share of the session (a failure is logged, not raised); then
        raise a cancel of the closing task that came meanwhile."""
        self._closed = True
        closer = asyncio.current_task()
        # A cancel of the closer meanwhile (its wait stopped) is its own, not the tasks' it cancels: raised at the
        # end as it came (Airflow reads its message: a user's kill runs on_kill). Unless the closer was being
        # cancelled already (a wait's ``finally`` under its first cancel): that cancel is on its way with its
        # message, and what comes meanwhile is Airflow sending it again (which may come with none).
        cancels = closer.cancelling() if closer is not None else 0
        own: asyncio.CancelledError | None = None
        for task in (self._cycle_task, self._refreshing):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError as exc:
                    if cancels == 0 and own is None and closer is not None and closer.cancelling() > 0:
                        own = exc
                except Exception:  # noqa: S110 - the listing's failure was logged where it happened
                    pass
        self._cycle_task = self._refreshing = None
        # the hook's share of the session, given back whole (the last share closes it) through a re-sent cancel;
        # a close that fails is logged, never raised: in a wait's ``finally`` it would take the place of its cancel
        closing = asyncio.ensure_future(self.reader.aclose())
        came = await outlast_cancels(closing)
        failed = None if closing.cancelled() else closing.exception()
        if failed is not None:
            log.warning("%s: giving back the poller's session failed: %s: %s", self.name, type(failed).__name__, failed)
        if cancels == 0:
            own = own or came
            if own is not None:
                raise own
            if closer is not None and closer.cancelling() > 0:
                raise asyncio.CancelledError

    # -- reading ----------------------------------------------------------------------------------
    async def read(self, watch: Watch) -> JobProgress:
        verdict = self._ended.get(watch.job_id)
        if verdict is not None:
            last = watch.last
            if verdict.state is JobState.CANCELLED and verdict.percent is None and last is not None:
                # a cancellation read from a listing has no percentage: where the job stopped is the wait's last
                return dataclasses.replace(verdict, percent=last.percent)
            return verdict
        if not self.listing:
            return await watch.reader.aget_progress(watch.job_id)
        snapshot = await self._fresh(max_age=max(watch.interval, MIN_CYCLE))
        listed = snapshot.listing.jobs.get(watch.job_id) if snapshot is not None else None
        if listed is None:
            # never listed, gone without a verdict from the ended listing, or no good listing lately: one call
            return await watch.reader.aget_progress(watch.job_id)
        if listed.is_terminal or snapshot is None or snapshot.listing.percentages:
            return listed
        # the listing knows the state, not the percentage: read it if the budget has a call to spare
        with contextlib.suppress(JobProgressError):
            reading = await watch.reader.aget_progress_if_budget(watch.job_id)
            if reading is not None:
                return reading
        last = watch.last
        if last is not None and last.state is listed.state and not last.is_terminal:
            return last
        return listed

    async def _fresh(self, max_age: float) -> _Snapshot | None:
        """A snapshot no older than ``max_age`` seconds, taken now if need be (one listing at a time)."""
        moment = asyncio.get_running_loop().time()
        snapshot = self._snapshot
        if snapshot is not None and moment - snapshot.taken_at <= max_age:
            return snapshot
        if self._failed_at is not None and moment - self._failed_at < self.list_interval:
            return self._last_good(moment)  # the last listing failed: no new try before the next cycle
        last_good = self._last_good(moment)
        if last_good is None:
            return await self._refresh(force=True)  # nothing to answer from: the gap after the last one waits
        # A listing takes its time (pages, then how the jobs that left it ended, all paced by the budget): a
        # poll meanwhile sees the last one; the new one wakes the waits whose jobs it finds ended.
        self._start_refresh()
        return last_good

    def _last_good(self, moment: float) -> _Snapshot | None:
        snapshot = self._snapshot
        return snapshot if snapshot is not None and moment - snapshot.taken_at <= STALE_LISTING else None

    def _start_refresh(self, *, force: bool = False) -> asyncio.Future[_Snapshot | None] | None:
        """The listing under way, or a new one; None once closed, or inside the gap a listing leaves after it
        (``_next_listing_at``) unless ``force`` (no listing yet, or the last too old to answer from)."""
        if self._closed:
            return None
        if self._refreshing is None or self._refreshing.done():
            if not force and asyncio.get_running_loop().time() < self._next_listing_at:
                return None
            self._refreshing = asyncio.ensure_future(self._take_snapshot())
        return self._refreshing

    async def _refresh(self, *, force: bool = False) -> _Snapshot | None:
        refreshing = self._start_refresh(force=force)
        if refreshing is None:
            return None
        # shield: one wait leaving (its trigger killed) must not cancel the listing the others wait for
        return await asyncio.shield(refreshing)

    async def _take_snapshot(self) -> _Snapshot | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # One listing answers every wait of the connection: it takes the budget's next turn, ahead of the waits'
            # own queued reads (behind thousands of end confirmations it waited minutes, and every wait started
            # meanwhile read its own job). Listings leave turns between them (``_next_listing_at``); the reads of
            # ended jobs (iTwin: 50 a call, a failure's messages one each) take their turns in order.
            try:
                with urgent():
                    listing = await self.reader.alist_running()
            finally:
                # the next listing call no sooner after this one ended than this one took: a slow listing (many
                # pages on a short budget), urgent as it is, still leaves the waits' own reads every other turn
                # (the reads of ended jobs that follow take normal turns: not counted)
                listed = loop.time()
                self._next_listing_at = listed + (listed - started)
            if listing is None:  # this connection cannot list (an API without a list call)
                self.lists = False
                return None
            jobs = dict(listing.jobs)
            # seen running before, missing now: ended (unless pages were left unread)
            ended = {job: self._seen[job] for job in self.watches if job in self._seen and job not in jobs}
            if not listing.complete:
                ended = {}
            items = list(ended.items())
            for start in range(0, len(items), ENDED_CHUNK):
                found = await self._read_ended(dict(items[start : start + ENDED_CHUNK]))
                jobs.update(found)
                verdicts = {job: reading for job, reading in found.items() if reading.is_terminal}
                self._verdicts(verdicts)
        except Exception as exc:  # anything (a bug too) fails this listing only, never every wait's poll nor the cycle
            if self._failed_at is None:
                log.warning(
                    "%s: listing jobs failed; the waits see the last listing (up to %.0f s old) until it works: %s",
                    self.name,
                    STALE_LISTING,
                    exc,
                    exc_info=not isinstance(exc, JobProgressError),  # a typed failure says all; anything else, where
                )
            self._failed_at = loop.time()
            return self._last_good(self._failed_at)
        if self._failed_at is not None:
            log.warning("%s: listing jobs works again", self.name)
            self._failed_at = None
        for job in self.watches:
            reading = jobs.get(job)
            if reading is not None and not reading.is_terminal:
                self._seen[job] = reading
        snapshot = self._snapshot = _Snapshot(Listing(jobs, listing.complete, listing.percentages), started)
        for job in ended:  # the rest read their own jobs now (a verdict's waits were woken with it)
            reading = jobs.get(job)
            if reading is not None and not reading.is_terminal:
                continue  # still running, as the ended read found: the listing's pages missed it
            if self._seen.pop(job, None) is not None:
                for watch in self.watches.get(job, ()):
                    watch.wake()
        return snapshot

    def _verdicts(self, verdicts: Mapping[str, JobProgress]) -> None:
        """How watched jobs ended, kept until their waits leave; each wait woken to read it now."""
        for job, reading in verdicts.items():
            if job in self.watches:
                self._ended[job] = reading
                self._seen.pop(job, None)
                for watch in self.watches[job]:
                    watch.wake()

    async def _read_ended(self, ended: Mapping[str, JobProgress]) -> dict[str, JobProgress]:
        """How jobs that left the listing ended; nothing when that read fails (their waits, woken, read their
        own jobs): the listing it came with is good, and still answers the others."""
        try:
            found = await self.reader.aread_ended(ended)
        except Exception as exc:
            log.warning(
                "%s: reading how %d jobs ended failed; their waits read them: %s",
                self.name,
                len(ended),
                exc,
                exc_info=not isinstance(exc, JobProgressError),
            )
            return {}
        return {job: reading for job, reading in found.items() if job in ended}

    async def _cycle(self) -> None:
        """While waits watch jobs here: list once per cycle where listing pays (so an ended job's wait is woken
        within one cycle), and say once a minute what the connection's budget saw."""
        loop = asyncio.get_running_loop()
        try:
            while self.watches:
                if not self.listing:
                    await asyncio.sleep(self.list_interval)
                else:
                    shortest = min((w.interval for ws in self.watches.values() for w in ws), default=MIN_CYCLE)
                    cycle = min(max(shortest, MIN_CYCLE), self.list_interval)
                    await asyncio.sleep(max(max(self._last_listed() + cycle, self._next_listing_at) - loop.time(), 0.0))
                    # a wait's poll may have started a listing meanwhile: none twice in a cycle (nor inside the gap
                    # after the last, which ``_start_refresh`` keeps), and the summary below does not wait for it
                    under_way = self._refreshing is not None and not self._refreshing.done()
                    if self.listing and not under_way and loop.time() - self._last_listed() >= cycle * 0.9:
                        await self._refresh()
                self._summarise()
        finally:
            if self._cycle_task is asyncio.current_task():
                self._cycle_task = None

    def _last_listed(self) -> float:
        """Loop time of the last listing begun (its snapshot's) or failed; 0.0 before any."""
        return max(self._snapshot.taken_at if self._snapshot else 0.0, self._failed_at or 0.0)

    def _summarise(self) -> None:
        """Once a minute at most: a log line and the metrics of what the connection's budget saw."""
        budget = self.reader.budget()
        harvest = budget.harvest() if budget is not None else None
        if budget is None or harvest is None:
            return
        counts, span = harvest
        log.info("%s", budget.describe(counts, span, waits=self.waits))
        if self.report is not None:
            self.report(budget, counts, self.waits)


class PollerRegistry:
    """Per event loop, one ``JobPoller`` per connection; made when a wait first watches a job on it, closed
    when the last wait leaves. Entries never outlive their loop's waits (nothing keeps a closed loop)."""

    def __init__(self) -> None:
        self._pollers: dict[tuple[int, Hashable], tuple[asyncio.AbstractEventLoop, JobPoller]] = {}

    def watch(self, key: Hashable, job_id: str, reader: JobReader, make: Callable[[], JobPoller]) -> Watch:
        """Watch ``job_id`` on the poller of connection ``key`` (made with ``make()`` if none), until ``unwatch``.
        (Not a context manager: an async generator's frame, weak reference and wrapper were a tenth of a wait.)"""
        loop = asyncio.get_running_loop()
        slot = (id(loop), key)
        entry = self._pollers.get(slot)
        if entry is None or entry[0] is not loop:
            entry = self._pollers[slot] = (loop, make())
            entry[1].key = key
        return entry[1].watch(job_id, reader)

    async def unwatch(self, watch: Watch) -> None:
        """The wait is over: its poller closes when it was the last."""
        poller = watch.poller
        poller.unwatch(watch)
        if poller.watches:
            return
        slot = (id(asyncio.get_running_loop()), poller.key)
        entry = self._pollers.get(slot)
        if entry is not None and entry[1] is poller:
            del self._pollers[slot]
            await poller.aclose()

    def pollers(self) -> list[JobPoller]:
        """The pollers of the running loop (tests)."""
        loop = asyncio.get_running_loop()
        return [poller for (owner, poller) in self._pollers.values() if owner is loop]

    def __len__(self) -> int:
        return len(self._pollers)


POLLERS = PollerRegistry()
