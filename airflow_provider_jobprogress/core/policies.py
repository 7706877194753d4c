"""Poll and retry policies: plain JSON-able values, because they travel inside trigger kwargs."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import pendulum

_POLL_KINDS = ("fixed", "exponential", "sequence")
#: each poll interval is stretched or shrunk by up to this fraction at random (``jittered``), so waits
#: started together drift apart instead of polling the vendor in bursts
POLL_JITTER = 0.1


def jittered(seconds: float) -> float:
    """``seconds`` give or take ``POLL_JITTER``: the same mean, never the same instant for every wait."""
    return seconds * random.uniform(1 - POLL_JITTER, 1 + POLL_JITTER)


@dataclass(frozen=True)
class PollPolicy:
    """How long to wait between two progress polls.

    - ``fixed``: always ``interval`` seconds.
    - ``exponential``: ``interval * factor**k`` capped at ``max_interval``.
    - ``sequence``: the vendor's list of intervals, the last one repeating (iTwin asks for 15, 30, 60, 120).

    ``k`` counts polls since the last change of progress when ``restart_on_change`` is set (the vendor
    sequence restarts whenever the percentage moves), else since the wait began.
    """

    kind: str = "fixed"
    interval: float = 30.0
    factor: float = 2.0
    max_interval: float = 600.0
    intervals: tuple[float, ...] = ()
    restart_on_change: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _POLL_KINDS:
            raise ValueError(f"poll policy kind must be one of {_POLL_KINDS}, not {self.kind!r}")
        if self.kind == "sequence" and not self.intervals:
            raise ValueError("a sequence poll policy needs at least one interval")
        values = (self.interval, self.max_interval, *self.intervals)
        if any(v <= 0 for v in values) or self.factor < 1:
            raise ValueError("poll intervals must be positive and the factor at least 1")

    @classmethod
    def fixed(cls, seconds: float) -> PollPolicy:
        return cls(kind="fixed", interval=seconds)

    @classmethod
    def exponential(cls, initial: float, *, factor: float = 2.0, max_interval: float = 600.0) -> PollPolicy:
        return cls(kind="exponential", interval=initial, factor=factor, max_interval=max_interval)

    @classmethod
    def sequence(cls, intervals: Sequence[float], *, restart_on_change: bool = True) -> PollPolicy:
        return cls(kind="sequence", intervals=tuple(float(i) for i in intervals), restart_on_change=restart_on_change)

    def delay(self, k: int) -> float:
        """Seconds to wait before poll number ``k + 1`` (``k`` counted as the class doc says)."""
        if self.kind == "fixed":
            return self.interval
        if self.kind == "exponential":
            return float(min(self.interval * self.factor ** min(k, 64), self.max_interval))
        return self.intervals[min(k, len(self.intervals) - 1)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "interval": self.interval,
            "factor": self.factor,
            "max_interval": self.max_interval,
            "intervals": list(self.intervals),
            "restart_on_change": self.restart_on_change,
        }

    @classmethod
    def from_value(cls, value: PollPolicy | Mapping[str, Any] | float | int | None, default: PollPolicy) -> PollPolicy:
        """Accept what a DAG author writes: a policy, its dict, a number of seconds, or None (default)."""
        if value is None:
            return default
        if isinstance(value, PollPolicy):
            return value
        if isinstance(value, int | float):
            return cls.fixed(float(value))
        data = _known_fields(cls, value)
        if "intervals" in data:
            data["intervals"] = tuple(float(i) for i in data["intervals"])
        return cls(**data)


@dataclass(frozen=True)
class RequestRetry:
    """Which failures of one vendor *request* are retried and how long to back off between tries.

    Not Airflow's task-level ``retry_policy`` (Airflow 3.3): that decides whether a failed task runs
    again; this one decides how one HTTP call to the vendor is retried inside a task or trigger. Operators
    take it as ``request_retry`` so Airflow's ``retry_policy`` stays Airflow's.

    Transient failures (connection errors, timeouts, HTTP 5xx) are retried ``attempts - 1`` times with
    exponential backoff and jitter. A 429 waits what the vendor's ``Retry-After`` says, up to
    ``max_retry_after`` seconds in one call; a longer wait is handed back to the caller as
    ``RateLimitedError`` so a trigger can sleep it without holding the request open. No pause is shorter
    than this policy's own backoff (``Retry-After: 0`` or ``-5`` is no reason to ask again at once) or
    longer than ``retry_after_limit``: a vendor asking for a day, or for a date in the year 9999, is told
    no, and the error says what it asked for.

    ``request_timeout`` bounds one try as a whole, from the moment it has a connection to the last byte of
    its answer: the hook's per-read timeout restarts with every byte, so a server trickling its answer
    would hold a poll until the wait's deadline (and for ever without one). A try that runs out of time
    is a transient failure, retried like a dropped connection.
    """

    attempts: int = 5
    initial_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.25
    max_retry_after: float = 300.0
    rate_limit_waits: int = 10
    #: how long a wait keeps polling through an unreachable vendor (after each call's own retries)
    outage_tolerance: float = 3600.0
    #: seconds one try may take once it has a connection, its whole answer read
    request_timeout: float = 120.0
    #: the longest pause a Retry-After gets, however long the vendor asks for
    retry_after_limit: float = 900.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.rate_limit_waits < 0:
            raise ValueError("retry attempts must be at least 1 and rate_limit_waits not negative")
        if (
            min(
                self.initial_delay,
                self.max_delay,
                self.max_retry_after,
                self.jitter,
                self.outage_tolerance,
                self.retry_after_limit,
            )
            < 0
            or self.factor < 1
        ):
            raise ValueError("retry delays must not be negative and the factor at least 1")
        if not self.request_timeout > 0:
            raise ValueError("request_timeout must be a positive number of seconds")

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive transient failure (1-based)."""
        base = min(self.initial_delay * self.factor ** min(max(failures - 1, 0), 64), self.max_delay)
        return base + random.uniform(0, base * self.jitter)

    def rate_limit_pause(self, asked: float | None, waits: int) -> float:
        """Seconds to pause after the ``waits``-th 429 in a row, the vendor having asked for ``asked`` (None:
        nothing readable): what it asked, but at least our backoff and at most ``retry_after_limit``."""
        return min(max(asked or 0.0, self.backoff(waits)), self.retry_after_limit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "initial_delay": self.initial_delay,
            "factor": self.factor,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
            "max_retry_after": self.max_retry_after,
            "rate_limit_waits": self.rate_limit_waits,
            "outage_tolerance": self.outage_tolerance,
            "request_timeout": self.request_timeout,
            "retry_after_limit": self.retry_after_limit,
        }

    @classmethod
    def from_value(cls, value: RequestRetry | Mapping[str, Any] | None) -> RequestRetry:
        """A policy from what a DAG author or a trigger's kwargs give. Frozen, so shared: every wait of a triggerer
        comes with the same dict, and each built its own twice (a twentieth of a wait's memory at 20,000)."""
        if isinstance(value, RequestRetry):
            return value
        try:
            # the values' types too: 1, 1.0 and True are equal keys, and one caller's type would reach another
            key = (cls, None if value is None else tuple(sorted((k, type(v), v) for k, v in value.items())))
            found = _RETRIES.get(key)
        except (AttributeError, TypeError):  # not a mapping, or a value that cannot be hashed: its own, or its error
            return cls() if value is None else cls(**_known_fields(cls, value))
        if found is None:
            found = cls() if value is None else cls(**_known_fields(cls, value))
            if len(_RETRIES) >= 64:
                _RETRIES.clear()
            _RETRIES[key] = found
        return found


#: the policies ``RequestRetry.from_value`` built, by class and the items they came from
_RETRIES: dict[tuple[type, tuple[tuple[str, type, Any], ...] | None], Any] = {}


#: The 0.1 name, kept for one release: it collides with ``airflow.sdk.RetryPolicy`` (task retries).
RetryPolicy = RequestRetry


def _known_fields(cls: type, value: Mapping[str, Any]) -> dict[str, Any]:
    """The mapping as constructor arguments, or a ValueError naming the keys that are not fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no {', '.join(unknown)}; it takes {', '.join(sorted(names))}")
    return dict(value)


def parse_retry_after(value: str | None, *, now: pendulum.DateTime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = pendulum.instance(parsedate_to_datetime(text))
    except (TypeError, ValueError, IndexError):
        return None
    return max((when - (now or pendulum.now("UTC"))).total_seconds(), 0.0)
