"""Request budgets: the calls one connection may send per minute from this process, shared by all its users.

A vendor counts calls per client (Bentley: per OAuth client, 500 a minute on a Trial subscription), and an
on-premise print server serves every wait of a deployment: a limit belongs to the connection, not to each wait.
So every call a process makes with one connection's credentials, whichever wait or worker-side task makes it,
takes its turn from one ``RequestBudget``: a token bucket refilled at ``per_minute / 60`` a second (and a second
one per hour where the vendor also counts per hour, as Bentley does for Trial subscriptions), each holding at
most ``BURST_FRACTION`` of its window.

- **Required** calls (states, the confirmation that a job ended, a cancel, a submit) queue: ``reserve()`` hands
  each its moment in order, spaced at the budget's rate once the bucket is empty.
- **Optional** calls (a progress percentage a listing did not give) go only while every bucket is at least half
  full (``try_take()``): the other half is kept for required calls, so when the budget is short the optional
  ones thin out and the required ones never queue behind them.
- A 429 pauses the whole connection (``pause()``) for the time the vendor asked, once: every call of every
  wait waits for the same moment, and the bucket starts empty after it, so the calls that come back are paced.

Pure bookkeeping on a monotonic clock, thread-safe: the triggerer's event loop and a worker's threads use the
same object (``asleep`` and ``sleep`` wait the reserved time).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: a bucket holds this fraction of its window's calls: a burst after a quiet spell, never a window's worth at
#: once. A token bucket can send its capacity plus a window's refill within one sliding window, so 1/12 keeps a
#: budget 8 % under the vendor's limit worst case (450/min: at most 487 in any minute, under Bentley's Trial 500)
BURST_FRACTION = 1 / 12
#: one summary line per connection at most this often (and Airflow metrics on every change)
SUMMARY_SECONDS = 60.0


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

    # -- taking turns ---------------------------------------------------------------------------------
    def _refill(self) -> float:
        moment = self._clock()
        if moment > self._at:
            for bucket in self._buckets:
                bucket.refill(moment - self._at)
            self._at = moment
        return moment

    def reserve(self) -> float:
        """Count one required call and return how many seconds it must wait for its turn (0: go now)."""
        with self._lock:
            moment = self._refill()
            # a bucket refills from ``_at`` on (the end of a pause, if one is under way): this call's turn
            # comes when the most indebted bucket is back at zero
            turn = self._at
            for bucket in self._buckets:
                bucket.tokens -= 1.0
                turn = max(turn, self._at - bucket.tokens / bucket.rate)
            wait = max(turn - moment, 0.0)
            self.counts.calls += 1
            self.counts.queued_seconds += wait
            return wait

    def try_take(self) -> bool:
        """An optional call may go now: every bucket at least half full (the other half is kept for required
        calls, which therefore never queue behind optional ones), and no pause. Counted when True."""
        with self._lock:
            moment = self._refill()
            if moment >= self._paused_until and all(b.tokens >= max(1.0, b.capacity / 2) for b in self._buckets):
                for bucket in self._buckets:
                    bucket.tokens -= 1.0
                self.counts.calls += 1
                return True
            self.counts.optional_skipped += 1
            return False

    def paused_for(self) -> float:
        """Seconds left of a pause a 429 put on the connection (0 when none)."""
        with self._lock:
            return max(0.0, self._paused_until - self._clock())

    def pause(self, seconds: float) -> bool:
        """A 429: no call of this connection goes for ``seconds``, and the buckets are empty after it.

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

    async def aacquire(self) -> None:
        """Wait for a required call's turn in the event loop, and for any pause that began meanwhile."""
        wait = self.reserve()
        while wait > 0:
            await asyncio.sleep(wait)
            wait = self.paused_for()

    def acquire(self) -> None:
        """``aacquire`` for worker threads."""
        wait = self.reserve()
        while wait > 0:
            time.sleep(wait)
            wait = self.paused_for()

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

    def clear(self) -> None:
        """Forget every budget (tests and benchmarks that start afresh)."""
        with self._lock:
            self._budgets.clear()


BUDGETS = BudgetRegistry()
