"""Request budgets: the calls one connection may send per minute from this process, shared by all its users.

A vendor counts calls per client (Bentley: per OAuth client, 500 a minute on a Trial subscription), and an
on-premise print server serves every wait of a deployment: a limit belongs to the connection, not to each wait.
So every call a process makes with one connection's credentials, whichever wait or worker-side task makes it,
takes its turn from one ``RequestBudget``: a token bucket refilled at ``per_minute / 60`` a second (and a second
one per hour where the vendor also counts per hour, as Bentley does for Trial subscriptions), each holding at
most ``BURST_FRACTION`` of its window.

- **Required** calls (states, the confirmation that a job ended, a submit) queue (``aacquire()``/``acquire()``),
  in order, and go one at a time as the buckets refill. An **urgent** one (a cancel, the last look at a deadline:
  each bounded by a few seconds; a listing of the shared poller, one call for every wait) takes the next turn
  ahead of every queued poll. A call given up while queued (its
  wait ended) leaves the queue without spending a turn.
- **Optional** calls (a progress percentage a listing did not give) go only while every bucket is at least half
  full (``try_take()``): the other half is kept for required calls, so when the budget is short the optional
  ones thin out and the required ones never queue behind them.
- A 429 pauses the whole connection (``pause()``) for the time the vendor asked, once: no call goes until it
  ends, and the buckets start empty after it, so the queued calls go at the budget's rate from its end.

Bookkeeping on a monotonic clock, thread-safe: the triggerer's event loop and a worker's threads use the same
object; the first call in line wakes on a timer, the others when the one ahead of them goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: a bucket holds this fraction of its window's calls: a burst after a quiet spell, never a window's worth at
#: once. A token bucket can send its capacity plus a window's refill within one sliding window, so 1/12 keeps a
#: budget 8 % under the vendor's limit worst case (450/min: at most 487 in any minute, under Bentley's Trial 500)
BURST_FRACTION = 1 / 12
#: one summary line per connection at most this often (and Airflow metrics on every change)
SUMMARY_SECONDS = 60.0


#: set while the calls made must not queue behind polls (``urgent()``)
_URGENT: ContextVar[bool] = ContextVar("jobprogress_urgent_calls", default=False)


@contextlib.contextmanager
def urgent() -> Iterator[None]:
    """Required calls made inside (in this task, and tasks it starts) take the connection's next turn, ahead of
    every queued poll: a cancel, the last look at a deadline, each bounded by seconds, which a queue of
    thousands of polls would outlast; the shared poller's listings, each one call for every wait. A context,
    not a parameter, so every hook method (a vendor's own overrides too) runs urgently as it is."""
    token = _URGENT.set(True)
    try:
        yield
    finally:
        _URGENT.reset(token)


class BudgetShort(Exception):
    """An optional call found no call to spare in its connection's budget, so it was not sent."""


@dataclass
class BudgetCounts:
    """What a budget saw since its last summary (for the log line and the metrics)."""

    calls: int = 0
    optional_skipped: int = 0
    rate_limited: int = 0
    pauses: int = 0
    paused_seconds: float = 0.0
    queued_seconds: float = 0.0


@dataclass(eq=False, slots=True)
class _Waiter:
    """A required call waiting for its turn; ``wake`` (thread-safe) tells it to look again."""

    wake: Callable[[], object]
    since: float


class _LoopWake:
    """Wakes a call queued in an event loop, from any thread: a future for each time it sleeps, nothing else. (An
    ``asyncio.Event`` and a closure were 1 KB a queued call: thousands of waits queue behind a short budget.) A wake
    that lands before its call sleeps again is a spurious wake at worst: the call looks at its turn, then sleeps."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] | None = None

    def arm(self) -> asyncio.Future[None]:
        self.future = self.loop.create_future()
        return self.future

    def __call__(self) -> None:
        self.loop.call_soon_threadsafe(self._set)

    def _set(self) -> None:
        future = self.future
        if future is not None and not future.done():
            future.set_result(None)


@dataclass
class _Bucket:
    """Calls per ``window`` seconds, refilled continuously, holding at most ``BURST_FRACTION`` of a window."""

    limit: float
    window: float
    tokens: float = 0.0

    def __post_init__(self) -> None:
        if not self.limit > 0:
            raise ValueError(f"a request budget must be positive, not {self.limit!r}")
        self.tokens = self.capacity

    @property
    def rate(self) -> float:
        return self.limit / self.window

    @property
    def capacity(self) -> float:
        return max(1.0, self.limit * BURST_FRACTION)

    def refill(self, seconds: float) -> None:
        self.tokens = min(self.capacity, self.tokens + seconds * self.rate)


class RequestBudget:
    """One connection's calls per minute (and per hour, where the vendor counts that too) in this process:
    token buckets with a queue for required calls, a share left to optional ones, and a pause for 429s."""

    def __init__(
        self,
        name: str,
        per_minute: float,
        per_hour: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets = _buckets(per_minute, per_hour)
        self._at = clock()
        self._paused_until = 0.0
        #: required calls waiting for a turn, in order (dicts as ordered sets: a cancelled call leaves in O(1));
        #: the first urgent one goes before every other
        self._urgent: OrderedDict[_Waiter, None] = OrderedDict()
        self._queued: OrderedDict[_Waiter, None] = OrderedDict()
        self.counts = BudgetCounts()
        self._summarised_at = clock()

    # -- settings -------------------------------------------------------------------------------------
    @property
    def per_minute(self) -> float:
        return self._buckets[0].limit

    @property
    def per_hour(self) -> float | None:
        return self._buckets[1].limit if len(self._buckets) > 1 else None

    def set_limits(self, per_minute: float, per_hour: float | None = None) -> None:
        """Follow an edited connection (each bucket keeps what it holds, within its new capacity)."""
        buckets = _buckets(per_minute, per_hour)
        with self._lock:
            self._refill()
            for new, old in zip(buckets, self._buckets, strict=False):
                new.tokens = min(old.tokens, new.capacity)
            self._buckets = buckets
            # the call first in line sleeps on a timer set from the old limits: it looks again now
            self._wake_head()

    # -- taking turns ---------------------------------------------------------------------------------
    def _refill(self) -> float:
        moment = self._clock()
        if moment > self._at:
            for bucket in self._buckets:
                bucket.refill(moment - self._at)
            self._at = moment
        return moment

    def _free_in(self, moment: float) -> float:
        """Seconds from ``moment`` until every bucket holds a call and no pause is on (buckets refill from
        ``_at``, which a pause sets to its end)."""
        turn = max(moment, self._paused_until)
        for bucket in self._buckets:
            turn = max(turn, self._at + (1.0 - bucket.tokens) / bucket.rate)
        return turn - moment

    def _spend(self) -> None:
        for bucket in self._buckets:
            bucket.tokens -= 1.0
        self.counts.calls += 1

    def refund(self) -> None:
        """A turn taken for a call that was not sent (its flow took the turn before it started, then needed a
        login first, or ended without a call): back to the buckets, and the first in line looks again."""
        with self._lock:
            for bucket in self._buckets:
                bucket.tokens = min(bucket.tokens + 1.0, bucket.capacity)
            self.counts.calls -= 1
            self._wake_head()

    def _head(self) -> _Waiter | None:
        for lane in (self._urgent, self._queued):
            if lane:
                return next(iter(lane))
        return None

    def try_acquire(self, *, urgent: bool = False) -> float:
        """A required call's turn now, if one is free and no call it must let go first is queued: 0.0, the
        call counted. Otherwise the seconds until a turn could be free (nothing taken: join the queue)."""
        with self._lock:
            moment = self._refill()
            ahead = self._urgent or (not urgent and self._queued)
            wait = self._free_in(moment)
            if wait > 0 or ahead:
                return max(wait, 1e-9)
            self._spend()
            return 0.0

    def _join(self, urgent: bool, wake: Callable[[], object]) -> _Waiter:
        with self._lock:
            waiter = _Waiter(wake, self._clock())
            (self._urgent if urgent else self._queued)[waiter] = None
            return waiter

    def _turn(self, waiter: _Waiter) -> float:
        """0.0 when ``waiter``'s call may go (its turn taken, the next in line woken); else the seconds to wait
        (``math.inf``: calls ahead of it go first, and the last of them wakes it)."""
        with self._lock:
            if self._head() is not waiter:
                return math.inf
            moment = self._refill()
            wait = self._free_in(moment)
            if wait > 0:
                return wait
            self._spend()
            self.counts.queued_seconds += moment - waiter.since
            self._remove(waiter)
            return 0.0

    def _remove(self, waiter: _Waiter) -> None:
        """Out of the queue (its turn taken, or its call cancelled before it was sent: nothing spent); whoever is
        first in line now looks for its turn."""
        head = self._head()
        self._urgent.pop(waiter, None)
        self._queued.pop(waiter, None)
        if head is waiter:
            self._wake_head()

    def _wake_head(self) -> None:
        """Wake the call first in line; one whose event loop has closed (it can never take its turn) leaves the
        queue, and the next is woken instead."""
        while (head := self._head()) is not None:
            try:
                head.wake()
                return
            except RuntimeError:  # call_soon_threadsafe on a closed loop
                self._urgent.pop(head, None)
                self._queued.pop(head, None)

    def _leave(self, waiter: _Waiter) -> None:
        with self._lock:
            self._remove(waiter)

    async def aacquire(self, *, urgent: bool | None = None) -> None:
        """Wait for a required call's turn in the event loop. ``urgent`` (default: inside ``urgent()``): the next
        turn, ahead of every queued poll. A call cancelled while it waits gives its place back."""
        urgent = _URGENT.get() if urgent is None else urgent
        wait = self.try_acquire(urgent=urgent)
        if wait == 0:
            return
        wake = _LoopWake(asyncio.get_running_loop())
        waiter = self._join(urgent, wake)
        try:
            while (wait := self._turn(waiter)) > 0:
                woken = wake.arm()
                if wait == math.inf:
                    await woken
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await woken
        except BaseException:
            self._leave(waiter)
            raise

    def acquire(self, *, urgent: bool | None = None) -> None:
        """``aacquire`` for worker threads."""
        urgent = _URGENT.get() if urgent is None else urgent
        if self.try_acquire(urgent=urgent) == 0:
            return
        woken = threading.Event()
        waiter = self._join(urgent, woken.set)
        try:
            while (wait := self._turn(waiter)) > 0:
                woken.wait(None if wait == math.inf else wait)
                woken.clear()
        except BaseException:
            self._leave(waiter)
            raise

    def try_take(self) -> bool:
        """An optional call may go now: every bucket at least half full (the other half is kept for required
        calls, which therefore never queue behind optional ones), and no pause. Counted when True."""
        with self._lock:
            moment = self._refill()
            if moment >= self._paused_until and all(b.tokens >= max(1.0, b.capacity / 2) for b in self._buckets):
                self._spend()
                return True
            self.counts.optional_skipped += 1
            return False

    def paused_for(self) -> float:
        """Seconds left of a pause a 429 put on the connection (0 when none)."""
        with self._lock:
            return max(0.0, self._paused_until - self._clock())

    def pause(self, seconds: float) -> bool:
        """A 429: no call of this connection goes for ``seconds``, and the buckets are empty after it, so the
        calls queued meanwhile go one by one at the budget's rate from its end.

        True for the first 429 of a burst (a new pause); the 429s of calls already in flight when it came
        only stretch that pause to the latest moment asked, and return False."""
        with self._lock:
            moment = self._refill()
            self.counts.rate_limited += 1
            until = moment + max(seconds, 0.0)
            ongoing = moment < self._paused_until
            if until > self._paused_until:
                self.counts.paused_seconds += until - max(self._paused_until, moment)
                self._paused_until = until
            if ongoing:
                return False
            self.counts.pauses += 1
            for bucket in self._buckets:
                bucket.tokens = min(bucket.tokens, 0.0)
            self._at = until  # nothing refills during the pause: the calls after it are paced from empty
            return True

    def observe_remaining(self, remaining: int) -> None:
        """The vendor said how many calls are left in its window: never spend more than that at once."""
        with self._lock:
            self._refill()
            for bucket in self._buckets:
                # compared as given: float() of a count of hundreds of digits overflows
                if remaining < bucket.tokens:
                    bucket.tokens = float(max(remaining, 0))

    # -- what users watch -----------------------------------------------------------------------------
    def harvest(self) -> tuple[BudgetCounts, float] | None:
        """What the budget saw since the last harvest and over how many seconds, at most once per
        ``SUMMARY_SECONDS`` (None until then); the counts start again."""
        with self._lock:
            moment = self._clock()
            span = moment - self._summarised_at
            if span < SUMMARY_SECONDS:
                return None
            counts, self.counts, self._summarised_at = self.counts, BudgetCounts(), moment
        return counts, span

    def describe(self, counts: BudgetCounts, span: float, waits: int | None = None) -> str:
        """The summary line of a harvest."""
        limits = f"{self.per_minute:.0f}/min" + (f", {self.per_hour:.0f}/h" if self.per_hour else "")
        parts = [
            f"connection {self.name!r}: {counts.calls * 60.0 / span:.0f} calls/min (budget {limits})",
            *([f"{waits} waits"] if waits is not None else []),
            f"{counts.rate_limited} answered 429",
            f"paused {counts.paused_seconds:.0f} s" if counts.pauses else "no pause",
        ]
        if counts.optional_skipped:
            parts.append(f"{counts.optional_skipped} progress reads left out to stay within the budget")
        return ", ".join(parts)


def _buckets(per_minute: float, per_hour: float | None) -> list[_Bucket]:
    buckets = [_Bucket(per_minute, 60.0)]
    if per_hour is not None:
        buckets.append(_Bucket(per_hour, 3600.0))
    return buckets


class BudgetRegistry:
    """This process's budgets, one per connection id, made on first use and kept (a few numbers each)."""

    def __init__(self) -> None:
        self._budgets: dict[str, RequestBudget] = {}
        self._lock = threading.Lock()

    def get(self, conn_id: str, per_minute: float, per_hour: float | None = None) -> RequestBudget:
        with self._lock:
            budget = self._budgets.get(conn_id)
            if budget is None:
                budget = self._budgets[conn_id] = RequestBudget(conn_id, per_minute, per_hour)
            elif (budget.per_minute, budget.per_hour) != (per_minute, per_hour):
                budget.set_limits(per_minute, per_hour)
            return budget

    def find(self, conn_id: str) -> RequestBudget | None:
        """The connection's budget as its users last set it, if it has one (changes nothing)."""
        with self._lock:
            return self._budgets.get(conn_id)

    def clear(self) -> None:
        """Forget every budget (tests and benchmarks that start afresh)."""
        with self._lock:
            self._budgets.clear()


BUDGETS = BudgetRegistry()
