"""The emulators' model: scenarios, jobs and their progression, HTTP request/reply values, shared state."""

from __future__ import annotations

import base64
import binascii
import bisect
import email.utils
import gzip
import hashlib
import json
import math
import random
import re
import secrets
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal
from urllib.parse import unquote

VENDORS = ("olconnect", "scriptx", "itwin")
# done_at_submit: ScriptX answers the print with status 4 and no job identifier; elsewhere it succeeds.
OUTCOMES = frozenset({"succeed", "fail", "cancel", "soft_error", "immediate", "code_exception", "done_at_submit"})
# Outcomes that end in failure; ScriptX-only outcomes fail on the other vendors, which have no such answer.
FAILING_OUTCOMES = frozenset({"fail", "soft_error", "code_exception"})
GARBAGE_MODES = frozenset({"html", "empty", "nonnumeric", "malformed", "unknown_status", "deep_json"})
CONTENT_ENCODINGS = frozenset({"gzip", "deflate"})
SCENARIO_HEADER = "X-Emulator-Scenario"
CHUNK_SIZE = 64 * 1024

JobState = Literal["unsubmitted", "running", "succeeded", "failed", "cancelled"]
TokenStatus = Literal["valid", "expired", "unknown"]
Gate = Literal["rate_limited", "unavailable", "garbage"]


class ScenarioError(ValueError):
    """A scenario given over HTTP or in code is not valid."""


def _check_count(name: str, value: object, minimum: int = 0) -> None:
    # bool is an int subclass; `"flaky": true` in JSON is a mistake worth rejecting.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ScenarioError(f"scenario field {name!r} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class Scenario:
    """How one emulated job behaves; every field has a default so a scenario names only what it changes."""

    outcome: str = "succeed"
    steps: int = 4
    duration: float | None = None
    rate_limit: int = 0
    retry_after: int = 1
    flaky: int = 0
    result_size: int = 2048
    drop_download_at: int | None = None
    garbage: str | None = None
    #: how many status calls (after the rate-limited and flaky ones) answer ``garbage``; None: every one.
    #: 1 is the one garbled answer in a long wait that a client retries
    garbage_polls: int | None = None
    outputs: int = 1
    message: str = ""
    #: downloads are sent compressed with this Content-Encoding (gzip, deflate), as a proxy or CDN would
    content_encoding: str | None = None
    #: the vendor's own names for the result files, hostile ones included: OL Connect spool paths, iTwin blob
    #: names, the ScriptX download's Content-Disposition file name ("" sends none)
    names: tuple[str, ...] | None = None
    #: the id the vendor hands out (ScriptX jobIdentifier, OL Connect operationId) instead of a fresh uuid
    job_id: str | None = None
    #: each result file can be downloaded whole once, then answers 404 (ScriptX always behaves so)
    download_once: bool = False
    #: iTwin: what the job's ``endedDateTime`` says once it ended, instead of the time (a hostile answer)
    ended_text: str | None = None
    #: seconds the submit's answer is held after the job was created (and the call logged): a slow vendor, and
    #: the window in which a worker dies with the job started but its id not yet known
    submit_delay: float = 0.0
    #: seconds a download stops halfway through the file (after the first half was sent): the window in which a
    #: worker dies in the middle of a fetch
    download_stall: float = 0.0

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ScenarioError(f"scenario outcome must be one of {sorted(OUTCOMES)}, got {self.outcome!r}")
        if self.garbage is not None and self.garbage not in GARBAGE_MODES:
            raise ScenarioError(f"scenario garbage must be one of {sorted(GARBAGE_MODES)}, got {self.garbage!r}")
        for name in ("steps", "rate_limit", "retry_after", "flaky", "result_size"):
            _check_count(name, getattr(self, name))
        _check_count("outputs", self.outputs, minimum=1)
        if self.drop_download_at is not None:
            _check_count("drop_download_at", self.drop_download_at)
        if self.garbage_polls is not None:
            _check_count("garbage_polls", self.garbage_polls)
        if self.duration is not None:
            if isinstance(self.duration, bool) or not isinstance(self.duration, int | float) or self.duration <= 0:
                raise ScenarioError(f"scenario duration must be a number > 0 or null, got {self.duration!r}")
            object.__setattr__(self, "duration", float(self.duration))
        if not isinstance(self.message, str):
            raise ScenarioError(f"scenario message must be a string, got {self.message!r}")
        if self.content_encoding is not None and self.content_encoding not in CONTENT_ENCODINGS:
            raise ScenarioError(
                f"scenario content_encoding must be one of {sorted(CONTENT_ENCODINGS)} or null, "
                f"got {self.content_encoding!r}"
            )
        if self.names is not None:
            if isinstance(self.names, str) or not all(isinstance(n, str) for n in self.names):
                raise ScenarioError(f"scenario names must be a list of strings, got {self.names!r}")
            object.__setattr__(self, "names", tuple(self.names))
        if self.job_id is not None and (not isinstance(self.job_id, str) or not self.job_id):
            raise ScenarioError(f"scenario job_id must be a non-empty string or null, got {self.job_id!r}")
        if not isinstance(self.download_once, bool):
            raise ScenarioError(f"scenario download_once must be true or false, got {self.download_once!r}")
        if self.ended_text is not None and not isinstance(self.ended_text, str):
            raise ScenarioError(f"scenario ended_text must be a string or null, got {self.ended_text!r}")
        for name in ("submit_delay", "download_stall"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ScenarioError(f"scenario {name} must be a number of seconds >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))

    def name(self, index: int, default: str) -> str:
        """The vendor's name for result file ``index``: the scenario's, else ``default``."""
        return self.names[index] if self.names is not None and index < len(self.names) else default

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        """Build a scenario from JSON-like data; unknown keys are an error so typos do not pass silently."""
        if not isinstance(data, Mapping):
            raise ScenarioError(f"a scenario must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ScenarioError(f"unknown scenario fields: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def fails(self) -> bool:
        return self.outcome in FAILING_OUTCOMES


Fault = Literal["outage", "reset", "rate_limited", "server_error"]
SERVER_ERRORS = (500, 502, 503, 504)


@dataclass(frozen=True)
class Faults:
    """A hostile network and an overloaded vendor, on every vendor call (never the control API).

    Unlike a scenario, which scripts one job's answers, faults strike any call at random (``seed`` makes the
    draw repeatable) or by the clock, counted from the moment they are set:

    - ``error_rate``: this share of calls is answered with a bare 500, 502, 503 or 504 (a proxy's answer);
    - ``reset_rate``: this share of connections is reset without an answer;
    - ``burst_every`` / ``burst_seconds``: a burst of 429s with ``Retry-After: retry_after`` starts every
      ``burst_every`` seconds and lasts ``burst_seconds``; every call in it is refused;
    - ``outage_at`` / ``outage_seconds``: a total outage from ``outage_at`` seconds on, for ``outage_seconds``:
      every connection is reset, the token endpoints' included;
    - ``repeat_page_token``: iTwin's job listing answers a page asked for with a continuation token with that
      same token as the next one (a paging bug: a client that follows it never reaches the end).
    """

    error_rate: float = 0.0
    reset_rate: float = 0.0
    burst_every: float | None = None
    burst_seconds: float = 1.0
    retry_after: int = 1
    outage_at: float | None = None
    outage_seconds: float = 0.0
    seed: int | None = None
    repeat_page_token: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.repeat_page_token, bool):
            raise ScenarioError(f"fault 'repeat_page_token' must be true or false, got {self.repeat_page_token!r}")
        for name in ("error_rate", "reset_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ScenarioError(f"fault {name!r} must be a share between 0 and 1, got {value!r}")
        for name in ("burst_every", "outage_at"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
                raise ScenarioError(f"fault {name!r} must be a number of seconds > 0 or null, got {value!r}")
        for name in ("burst_seconds", "outage_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ScenarioError(f"fault {name!r} must be a number of seconds >= 0, got {value!r}")
        _check_count("retry_after", self.retry_after)
        if self.seed is not None:
            _check_count("seed", self.seed)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        """Build faults from JSON-like data; unknown keys are an error so typos do not pass silently."""
        if not isinstance(data, Mapping):
            raise ScenarioError(f"faults must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ScenarioError(f"unknown fault fields: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def strike(self, elapsed: float, draw: float) -> Fault | None:
        """The fault for a call ``elapsed`` seconds after the faults were set; ``draw`` is uniform in [0, 1)."""
        if self.outage_at is not None and self.outage_at <= elapsed < self.outage_at + self.outage_seconds:
            return "outage"
        in_burst = self.burst_every is not None and elapsed % self.burst_every < self.burst_seconds
        if in_burst and elapsed >= (self.burst_every or 0):
            return "rate_limited"
        if draw < self.reset_rate:
            return "reset"
        if draw < self.reset_rate + self.error_rate:
            return "server_error"
        return None


QUOTA_TEXT = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d*)?)\s*")


@dataclass(frozen=True)
class Quota:
    """A vendor's limit, rehearsed: at most ``calls`` calls in any ``seconds`` (a sliding window).

    Sliding rather than fixed: no burst of twice the limit across a window's edge, and the ``Retry-After`` of a
    refused call is exact (the seconds until the oldest call in the window leaves it). A refused call takes no
    place in the window. Several quotas on one vendor all hold (Bentley's Trial tier: 500 a minute and 5,000
    an hour). What each vendor counts and how it refuses lives in the vendor's module (``quota_key``,
    ``over_quota``).
    """

    calls: int
    seconds: float

    def __post_init__(self) -> None:
        _check_count("calls", self.calls, minimum=1)
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, int | float) or not self.seconds > 0:
            raise ScenarioError(f"quota 'seconds' must be a number of seconds > 0, got {self.seconds!r}")
        object.__setattr__(self, "seconds", float(self.seconds))

    @classmethod
    def parse(cls, text: str) -> Quota:
        """``"500/60"``: 500 calls per 60 seconds (how ``jobprogress-emulator --quota`` takes it)."""
        match = QUOTA_TEXT.fullmatch(text)
        if match is None:
            raise ScenarioError(f"a quota is CALLS/SECONDS, e.g. 500/60, got {text!r}")
        return cls(int(match.group(1)), float(match.group(2)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Quota:
        if not isinstance(data, Mapping):
            raise ScenarioError(f"a quota must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        missing = {f.name for f in fields(cls)} - set(data)
        if unknown or missing:
            raise ScenarioError(f"a quota has the fields calls and seconds, got {sorted(data)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.calls} calls per {self.seconds:g} s"


@dataclass(frozen=True)
class QuotaRefusal:
    """A call the quota refused: which limit, and the whole seconds until the window frees a call."""

    quota: Quota
    retry_after: int


@dataclass(frozen=True)
class Call:
    """One request the emulator answered (path without query string, so no secret leaks into the log)."""

    method: str
    path: str
    status: int
    vendor: str | None
    job_id: str | None
    ts: float
    #: the client's address:port, one per TCP connection: how tests count connection pools
    peer: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Download:
    """One download of a result file: what was actually written to the socket."""

    index: int
    sha256: str
    size: int
    complete: bool


@dataclass(frozen=True)
class JobRecord:
    """A read-only snapshot of one emulated job, for assertions in tests."""

    vendor: str
    job_id: str
    state: JobState
    scenario: Scenario
    submitted_at: float | None
    polls: int
    status_calls: int
    cancelled: bool
    result_count: int
    downloads: tuple[Download, ...]

    @property
    def served_sha256(self) -> tuple[str, ...]:
        """sha256 of every complete download, in order."""
        return tuple(d.sha256 for d in self.downloads if d.complete)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["served_sha256"] = list(self.served_sha256)
        return data


@dataclass
class Job:
    """One emulated job; mutated only under EmulatorState.lock."""

    vendor: str
    job_id: str
    scenario: Scenario
    result_count: int = 1
    result_prefix: bytes = b""
    created_at: float = field(default_factory=time.time)
    created_mono: float = field(default_factory=time.monotonic)
    started: float | None = None  # monotonic; None while not submitted (iTwin v1 "unsubmitted")
    polls: int = 0
    status_calls: int = 0
    cancelled_at: float | None = None
    ended_at: float | None = None  # monotonic; when a poll (or "immediate") reached the end
    downloads: list[Download] = field(default_factory=list)
    downloads_started: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    #: what the last status call was answered with (``gate``)
    last_gate: Gate | None = None

    def submit(self, now: float) -> None:
        self.started = now

    def cancel(self, now: float) -> None:
        self.cancelled_at = now

    def complete_now(self, now: float) -> None:
        self.ended_at = now

    def stage(self, now: float) -> int:
        """0 = nothing yet, 1..steps = intermediate values, steps + 1 = the end."""
        end = self.scenario.steps + 1
        if self.started is None:
            return 0
        if self.ended_at is not None:
            return end
        if self.scenario.duration is None:
            return min(self.polls, end)
        return min(int((now - self.started) / self.scenario.duration * end), end)

    def reached_end(self, now: float) -> bool:
        return self.stage(now) > self.scenario.steps

    def state(self, now: float) -> JobState:
        if self.cancelled_at is not None:
            return "cancelled"
        if self.started is None:
            return "unsubmitted"
        if not self.reached_end(now):
            return "running"
        if self.scenario.fails:
            return "failed"
        return "cancelled" if self.scenario.outcome == "cancel" else "succeeded"

    def percent(self, now: float) -> int:
        return round(self.stage(now) * 100 / (self.scenario.steps + 1))

    def finished_at(self, now: float) -> float | None:
        """Monotonic time the job reached a terminal state, None while it has not."""
        if self.cancelled_at is not None:
            return self.cancelled_at
        if self.started is None or not self.reached_end(now):
            return None
        if self.ended_at is not None:
            return self.ended_at
        assert self.scenario.duration is not None  # deterministic jobs always set ended_at
        return self.started + self.scenario.duration

    def wall(self, mono: float) -> float:
        """Wall-clock time of a monotonic instant, for the dates vendors report."""
        return self.created_at + (mono - self.created_mono)

    def gate(self) -> Gate | None:
        """Count a progress/status call; say whether this one is answered with 429, 503 or garbage."""
        n = self.status_calls
        self.status_calls += 1
        self.last_gate = self._gate(n)
        return self.last_gate

    def _gate(self, n: int) -> Gate | None:
        scenario = self.scenario
        if n < scenario.rate_limit:
            return "rate_limited"
        if n < scenario.rate_limit + scenario.flaky:
            return "unavailable"
        if not scenario.garbage:
            return None
        limit = scenario.garbage_polls
        return "garbage" if limit is None or n < scenario.rate_limit + scenario.flaky + limit else None

    @property
    def garbled(self) -> bool:
        """Whether this job's answers are garbage: for good, or (``garbage_polls``) the last status call's."""
        if self.scenario.garbage is None:
            return False
        return self.scenario.garbage_polls is None or self.last_gate == "garbage"

    def advance(self, now: float) -> None:
        """One answered poll: deterministic jobs move one step (wall-clock jobs move by themselves)."""
        if self.started is None or self.cancelled_at is not None or self.reached_end(now):
            return
        self.polls += 1
        if self.scenario.duration is None and self.reached_end(now):
            self.ended_at = now

    @property
    def collected(self) -> bool:
        return any(d.complete for d in self.downloads)

    def snapshot(self, now: float) -> JobRecord:
        return JobRecord(
            vendor=self.vendor,
            job_id=self.job_id,
            state=self.state(now),
            scenario=self.scenario,
            submitted_at=None if self.started is None else self.wall(self.started),
            polls=self.polls,
            status_calls=self.status_calls,
            cancelled=self.cancelled_at is not None,
            result_count=self.result_count,
            downloads=tuple(self.downloads),
        )


def spread(stage: int, steps: int, values: Sequence[Any]) -> Any:
    """Map intermediate stage 1..steps onto `values`, first and last included (stage 0 shows the first)."""
    if stage <= 1 or steps <= 1:
        return values[0]
    return values[round((min(stage, steps) - 1) * (len(values) - 1) / (steps - 1))]


def result_chunks(job_id: str, index: int, size: int, prefix: bytes = b"") -> Iterator[bytes]:
    """Deterministic pseudo-random result bytes, generated chunk by chunk so any size streams in flat memory."""
    head = prefix[:size]
    if head:
        yield head
    remaining = size - len(head)
    chunk_no = 0
    while remaining > 0:
        n = min(CHUNK_SIZE, remaining)
        seed = hashlib.sha256(f"{job_id}:{index}:{chunk_no}".encode()).digest()
        # Not security relevant: a fast seeded generator keeps big results cheap to produce twice.
        yield random.Random(seed).randbytes(n)
        remaining -= n
        chunk_no += 1


def _compress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    return zlib.compress(data)  # HTTP "deflate" is the zlib format (RFC 9110 8.4.1.2)


def byte_slice(chunks: Iterable[bytes], start: int, stop: int) -> Iterator[bytes]:
    """Bytes ``start`` to ``stop`` (excluded) of a chunked stream, without holding more than one chunk."""
    offset = 0
    for chunk in chunks:
        begin, end = max(start - offset, 0), min(stop - offset, len(chunk))
        if begin < end:
            yield chunk[begin:end]
        offset += len(chunk)
        if offset >= stop:
            return


def parse_range(header: str | None, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """An HTTP ``bytes=`` range (one range only) as (first, last) within ``size``; None when absent or unreadable."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return "unsatisfiable"
    return start, end


def http_date(ts: float) -> str:
    """RFC 1123 date (``Last-Modified``), as Azure Storage writes it."""
    return email.utils.formatdate(ts, usegmt=True)


def sha256_of(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def iso(ts: float) -> str:
    """UTC ISO 8601 with a Z, the way the vendors print dates."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True)
class Request:
    """A parsed HTTP request; header names are lower-cased."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is not."""
        return json.loads(self.body.decode("utf-8"))


SentCallback = Callable[[str, int, bool], None]


@dataclass
class Reply:
    """What to answer: a small body, or a stream of `length` bytes that may be cut after `drop_after`."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterable[bytes] | None = None
    length: int = 0
    drop_after: int | None = None
    job_id: str | None = None
    on_sent: SentCallback | None = None
    #: seconds to hold the answer back (after the call was logged): a scenario's submit_delay
    delay: float = 0.0
    #: seconds a stream stops halfway (after half of ``length`` was written): a scenario's download_stall
    stall: float = 0.0

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Reply:
        return cls(status, text.encode("utf-8"), {"Content-Type": content_type})

    @classmethod
    def json(cls, status: int, payload: Any) -> Reply:
        return cls(status, json.dumps(payload).encode("utf-8"), {"Content-Type": "application/json"})

    @classmethod
    def empty(cls, status: int) -> Reply:
        return cls(status)

    def for_job(self, job_id: str | None) -> Reply:
        self.job_id = job_id
        return self

    def submitted(self, scenario: Scenario) -> Reply:
        """The answer to a call that started a job: held back by the scenario's ``submit_delay``."""
        self.delay = scenario.submit_delay
        return self


NOT_FOUND = "Not Found"
HTML_ERROR_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    "<body><h1>Bad Gateway</h1><p>The proxy server received an invalid response.</p></body></html>"
)


def rate_limited(scenario: Scenario) -> Reply:
    """Plain 429 for vendors that document no rate-limit body."""
    return too_many_requests(scenario.retry_after)


def too_many_requests(retry_after: int) -> Reply:
    """A bare 429 with Retry-After (seconds): what a server or proxy in front of it says without a vendor body."""
    reply = Reply.text(429, "Too Many Requests")
    reply.headers["Retry-After"] = str(retry_after)
    return reply


def unavailable() -> Reply:
    """Plain 503 without a vendor error body: the kind of answer a proxy gives, transient by nature."""
    return Reply.text(503, "Service Unavailable")


def common_garbage(mode: str) -> Reply | None:
    """The garbage answers every vendor shares; None for the vendor-specific modes."""
    if mode == "html":
        return Reply.text(200, HTML_ERROR_PAGE, "text/html; charset=utf-8")
    if mode == "empty":
        return Reply.text(200, "")
    if mode == "deep_json":
        # 2 KB of JSON nested 1,000 deep: deeper than a parser that recurses can go
        return Reply(200, b"[" * 1000 + b"]" * 1000, {"Content-Type": "application/json"})
    return None


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """(user, password) from Basic auth; None when no Authorization header; ("", "") when malformed."""
    header = request.header("Authorization")
    if header is None:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return ("", "")
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    return (user, password)


#: how long a finished iTwin v1 job's progress stays readable: Bentley says it "won't be available after 30 days"
ITWIN_PROGRESS_RETENTION = 30 * 24 * 3600.0


class EmulatorState:
    """Everything the three APIs share: jobs, tokens, scenarios, the call log. One lock guards it all."""

    def __init__(
        self,
        *,
        token_ttl: int,
        olconnect_security: bool,
        retention: float,
        secrets: Mapping[str, str],
        itwin_progress_retention: float = ITWIN_PROGRESS_RETENTION,
    ) -> None:
        self.lock = threading.RLock()
        self.secrets = dict(secrets)
        self.token_ttl = token_ttl
        self.olconnect_security = olconnect_security
        self.retention = retention
        self.itwin_progress_retention = itwin_progress_retention
        self.base_url = ""
        self.jobs: dict[tuple[str, str], Job] = {}
        self.calls: list[Call] = []
        self.tokens: dict[str, dict[str, float]] = {}
        self.queues: dict[str, deque[Scenario]] = {}
        self.defaults: dict[str, Scenario] = {}
        self.managed_files: dict[str, tuple[str, int]] = {}
        self.reality_data: dict[str, tuple[str, int]] = {}
        #: (iTwin id, blob path in its bucket) -> (job id, output position)
        self.bucket_files: dict[tuple[str, str], tuple[str, int]] = {}
        self.sas_grants: dict[str, tuple[str, float]] = {}
        #: where iTwin outputs are served from: None = this emulator's own blob endpoint, else e.g. Azurite
        self.blob_store: Any = None
        self.faults = Faults()
        self.faults_since = time.monotonic()
        self._fault_draw = random.Random()
        #: calls answered with a server error so far (which of the 5xx comes next)
        self.struck = 0
        #: the limits per vendor (server configuration: a reset keeps them, as it keeps the secrets)
        self.quotas: dict[str, tuple[Quota, ...]] = {vendor: () for vendor in VENDORS}
        #: (vendor, who is counted) -> monotonic times of the calls the quota let through, oldest first
        self.quota_windows: dict[tuple[str, str], list[float]] = {}
        #: iTwin token -> the OAuth client it was issued to (Bentley counts calls per client)
        self.token_clients: dict[str, str] = {}
        self.vendor_calls: dict[str, int] = {}
        self.vendor_429s: dict[str, int] = {}
        self.over_quota: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.jobs.clear()
            self.calls.clear()
            self.managed_files.clear()
            self.reality_data.clear()
            self.bucket_files.clear()
            self.sas_grants.clear()
            self.tokens = {vendor: {} for vendor in VENDORS}
            self.token_clients.clear()
            self.queues = {vendor: deque() for vendor in VENDORS}
            self.defaults = {vendor: Scenario() for vendor in VENDORS}
            self.set_faults(Faults())
            self.quota_windows.clear()
            for counter in (self.vendor_calls, self.vendor_429s, self.over_quota):
                counter.clear()
                counter.update(dict.fromkeys(VENDORS, 0))

    def secret(self, name: str) -> str:
        """The credential the emulator accepts (olconnect_password, scriptx_license, itwin_client_secret)."""
        return self.secrets[name]

    # -- scenarios -------------------------------------------------------------------------------
    def queue_scenario(self, vendor: str, scenario: Scenario, *, default: bool = False) -> None:
        check_vendor(vendor)
        with self.lock:
            if default:
                self.defaults[vendor] = scenario
            else:
                self.queues[vendor].append(scenario)

    def choose_scenario(self, vendor: str, header: str | None, body_value: Any) -> Scenario:
        """Header > submit body's "emulator" key > next queued > default; the queue is consumed only when used."""
        if header is not None:
            try:
                data = json.loads(header)
            except ValueError as exc:
                raise ScenarioError(f"{SCENARIO_HEADER} is not JSON: {exc}") from exc
            return Scenario.from_dict(data)
        if body_value is not None:
            return Scenario.from_dict(body_value)
        with self.lock:
            queue = self.queues[vendor]
            return queue.popleft() if queue else self.defaults[vendor]

    # -- faults ----------------------------------------------------------------------------------
    def set_faults(self, faults: Faults) -> None:
        """Strike vendor calls with ``faults`` from now on (their clock starts now); ``Faults()`` ends them."""
        with self.lock:
            self.faults = faults
            self.faults_since = time.monotonic()
            # Not security relevant: a seeded generator makes a fault run repeatable.
            self._fault_draw = random.Random(faults.seed)

    def fault(self) -> tuple[Fault | None, Faults]:
        """Whether this vendor call is struck, and by which fault (with the faults that decided it)."""
        with self.lock:
            faults = self.faults
            if faults == NO_FAULTS:
                return None, faults
            return faults.strike(time.monotonic() - self.faults_since, self._fault_draw.random()), faults

    # -- quotas ----------------------------------------------------------------------------------
    def set_quota(self, vendor: str, limits: Sequence[Quota]) -> None:
        """Hold ``vendor``'s calls to every one of ``limits`` from now on (none: no quota); windows start empty."""
        check_vendor(vendor)
        with self.lock:
            self.quotas[vendor] = tuple(limits)
            for key in [key for key in self.quota_windows if key[0] == vendor]:
                del self.quota_windows[key]

    def admit(self, vendor: str, who: str) -> QuotaRefusal | None:
        """Count one call of ``who`` (an OAuth client, or "" for a whole server) against ``vendor``'s quota:
        None when it may proceed, else the refusal (the call then takes no place in the window)."""
        with self.lock:
            limits = self.quotas[vendor]
            if not limits:
                return None
            now = time.monotonic()
            window = self.quota_windows.setdefault((vendor, who), [])
            del window[: bisect.bisect_right(window, now - max(quota.seconds for quota in limits))]
            refusal: QuotaRefusal | None = None
            for quota in limits:
                start = bisect.bisect_right(window, now - quota.seconds)
                held = len(window) - start
                if held < quota.calls:
                    continue
                # the call whose leaving the window brings it under the limit
                frees_in = window[start + held - quota.calls] + quota.seconds - now
                retry_after = max(1, math.ceil(frees_in))
                if refusal is None or retry_after > refusal.retry_after:
                    refusal = QuotaRefusal(quota, retry_after)
            if refusal is not None:
                self.over_quota[vendor] += 1
                return refusal
            window.append(now)
            return None

    # -- jobs ------------------------------------------------------------------------------------
    def add_job(self, job: Job) -> None:
        with self.lock:
            self.jobs[(job.vendor, job.job_id)] = job

    def job(self, vendor: str, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get((vendor, job_id))

    def download(
        self,
        job: Job,
        index: int,
        content_type: str,
        headers: Mapping[str, str] | None = None,
        *,
        byte_range: tuple[int, int] | None = None,
    ) -> Reply:
        """Stream result file `index` of `job`; the job's first download is cut when the scenario says so.

        ``byte_range`` (first, last), both included and within the file, answers 206 with that slice; a
        ranged read is recorded as a download only when it covers the whole file. With the scenario's
        ``content_encoding`` the whole file is served encoded (200; ranges are not offered then).
        """
        scenario = job.scenario
        with self.lock:
            if scenario.download_once and any(d.index == index and d.complete for d in job.downloads):
                return Reply.text(404, "Output already collected").for_job(job.job_id)
            first = job.downloads_started == 0
            job.downloads_started += 1
        size = scenario.result_size
        stream: Iterable[bytes] = result_chunks(job.job_id, index, size, job.result_prefix)
        extra = dict(headers or {})
        decoded_sha = None
        if scenario.content_encoding is not None:
            # Compressed whole, in memory: Content-Length must announce the encoded size up front.
            plain = b"".join(stream)
            decoded_sha = hashlib.sha256(plain).hexdigest()
            body = _compress(plain, scenario.content_encoding)
            stream, byte_range = [body], None
            extra["Content-Encoding"] = scenario.content_encoding
            start, end, length = 0, len(body) - 1, len(body)
        else:
            start, end = byte_range if byte_range is not None else (0, size - 1)
            length = end - start + 1 if size else 0
        whole = byte_range is None or (start, end) == (0, size - 1)

        def sent(sha256: str, n: int, complete: bool) -> None:
            with self.lock:
                # A client keeps the decoded bytes: record their digest for an encoded download.
                job.downloads.append(Download(index, decoded_sha if complete and decoded_sha else sha256, n, complete))

        if byte_range is not None:
            extra["Content-Range"] = f"bytes {start}-{end}/{size}"
        return Reply(
            206 if byte_range is not None else 200,
            headers={"Content-Type": content_type, **extra},
            stream=stream if whole else byte_slice(stream, start, end + 1),
            length=length,
            drop_after=scenario.drop_download_at if first else None,
            job_id=job.job_id,
            on_sent=sent if whole else None,
            stall=scenario.download_stall,
        )

    # -- tokens ----------------------------------------------------------------------------------
    def issue_token(self, vendor: str, client: str | None = None) -> str:
        """A new token of ``vendor``; ``client``: the OAuth client it is issued to (iTwin)."""
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[vendor][token] = time.monotonic() + self.token_ttl
            if client is not None:
                self.token_clients[token] = client
        return token

    def token_client(self, vendor: str, token: str) -> str | None:
        """The client a valid token was issued to; None for an unknown, expired or client-less token."""
        if self.token_status(vendor, token) != "valid":
            return None
        with self.lock:
            return self.token_clients.get(token)

    def token_status(self, vendor: str, token: str) -> TokenStatus:
        with self.lock:
            expires = self.tokens[vendor].get(token)
        if expires is None:
            return "unknown"
        return "valid" if time.monotonic() < expires else "expired"

    def expire_tokens(self) -> None:
        with self.lock:
            for issued in self.tokens.values():
                for token in issued:
                    issued[token] = float("-inf")

    # -- call log --------------------------------------------------------------------------------
    def record(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)
            if call.vendor is not None:
                self.vendor_calls[call.vendor] += 1
                if call.status == 429:
                    self.vendor_429s[call.vendor] += 1

    def vendor_stats(self) -> dict[str, dict[str, int]]:
        """Per vendor: calls answered (or reset), how many of them got a 429 (any cause), how many the quota refused."""
        with self.lock:
            return {
                vendor: {
                    "calls": self.vendor_calls[vendor],
                    "rate_limited": self.vendor_429s[vendor],
                    "over_quota": self.over_quota[vendor],
                }
                for vendor in VENDORS
            }

    def snapshot_calls(self) -> list[Call]:
        with self.lock:
            return list(self.calls)


NO_FAULTS = Faults()


def check_vendor(vendor: str) -> None:
    if vendor not in VENDORS:
        raise ValueError(f"vendor must be one of {VENDORS}, got {vendor!r}")


Route = tuple[str, re.Pattern[str], Callable[..., Reply]]


def route(request: Request, state: EmulatorState, routes: Sequence[Route]) -> Reply | None:
    """Call the handler whose method and path pattern match; 405 for a known path with another method."""
    path_known = False
    for method, pattern, handler in routes:
        match = pattern.fullmatch(request.path)
        if match is None:
            continue
        if request.method == method:
            # Ids arrive percent-encoded (a hostile "../x" as "..%2Fx"): handlers see the vendor's own id.
            groups = (None if group is None else unquote(group) for group in match.groups())
            reply: Reply = handler(request, state, *groups)
            return reply
        path_known = True
    return Reply.text(405, "Method Not Allowed") if path_known else None
