"""Benchmark: what thousands of waits cost each vendor: its calls per minute, its 429s, how late ends are seen.

Issue 19's question. The emulator runs in its own process (the ``jobprogress-emulator`` command) and logs every
call it answers; each case runs in a process of its own, one after the other, as one triggerer would: it
creates its jobs (wall-clock jobs, ``Scenario(duration=…)``, each between half its vendor's job length and the
whole of it; 2 % fail and 2 % are cancelled by the vendor), then runs one trigger per job in one asyncio loop
until every trigger has given its event. Each vendor's default poll policy and default request budget are used,
unless a case says otherwise. Three ways to wait:

- **poller**: ``JobProgressTrigger`` as shipped: the waits on a connection share one poller, which lists
  running jobs once per cycle where the vendor has a list call (OL Connect, iTwin), within the connection's
  request budget.
- **per_job**: ``JobProgressTrigger`` with the connection extra ``list_polling: false`` and the budget raised
  out of the way (``requests_per_minute`` 10^9): every wait polls its own job, as before issue 19.
- **reference**: the http provider's ``HttpSensorTrigger`` polling the emulator's done endpoint (404 while
  the job runs) every ``poke_interval``: the vendor policy's first interval, as the sensor's poke mode uses.

Everything printed is measured in this run: calls, 429s and their times from the emulator's call log; each
job's true end and final state from the emulator's record of it; CPU from ``time.process_time``, RSS from
``VmHWM``; polls from the waits themselves (ours: each ``Watch.read``) or from the log (the reference).

    .venv/bin/python benchmarks/bench_vendor_load.py                    # the full run (about 2 hours)
    .venv/bin/python benchmarks/bench_vendor_load.py --plan smoke       # the machinery, tiny sizes (~1 min)
    .venv/bin/python benchmarks/bench_vendor_load.py --only 'OL Connect'  # the cases whose label has it
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import itertools
import json
import math
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench_triggers import Emulator, emulator_process, load, rss_mib

MODES = {
    "poller": "shared poller",
    "per_job": "per-job polling",
    "reference": "HttpSensorTrigger",
}
#: budget extras of a per-job case: far above anything it sends, so nothing paces it (as before issue 19)
NO_BUDGET = {"requests_per_minute": 1e9, "requests_per_hour": 1e12}
#: threads creating jobs before the clock starts (sync hooks, on a connection of their own without a budget)
CREATORS = 8
#: a case gives up this long after its last job ended (a side that falls far behind is reported, not awaited)
GRACE = 900.0
#: of every 50 jobs, one fails and one is cancelled by the vendor (the others succeed). The share matters on
#: iTwin: a failed or cancelled job that left the running listing is read on its own (2-3 calls), a success
#: from its listing entry (one call per 50)
OUTCOMES = ("fail", "cancel", *["succeed"] * 48)
STATUS_OF = {"succeeded": "success", "failed": "failed", "cancelled": "cancelled"}
#: a trigger whose run() raised instead of giving an event (counted an error): this, then the exception's type
RAISED = "raised "


@dataclass(frozen=True)
class Vendor:
    name: str  # the emulator's name for it
    title: str
    conn_id: str
    hook: str
    submit: Callable[[Any], str]


def _submit_olconnect(hook: Any) -> str:
    return str(hook.submit({"datamining": {"identifier": "a.csv", "config": "dm"}}))


def _submit_itwin(hook: Any) -> str:
    specification = {
        "type": "Objects2D",
        "name": "bench",
        "specifications": {"inputs": {"photos": "rd-photos", "photoObjectDetector": "det"}, "outputs": ["objects2D"]},
    }
    return str(hook.submit(specification))


def _submit_scriptx(hook: Any) -> str:
    return str(hook.submit("https://example.invalid/bench.pdf"))


VENDORS = {
    vendor.name: vendor
    for vendor in (
        Vendor(
            "olconnect",
            "OL Connect",
            "olconnect_default",
            "airflow_provider_jobprogress.hooks.olconnect.OLConnectHook",
            _submit_olconnect,
        ),
        # Bentley's current Reality Analysis (v2), the target API
        Vendor(
            "itwin",
            "iTwin v2",
            "itwin_reality_analysis",
            "airflow_provider_jobprogress.hooks.itwin.ITwinHook",
            _submit_itwin,
        ),
        Vendor(
            "scriptx",
            "ScriptX",
            "scriptx_default",
            "airflow_provider_jobprogress.hooks.scriptx.ScriptXHook",
            _submit_scriptx,
        ),
    )
}
#: the longest job per vendor in the full run (jobs last half of it to all of it), seconds: iTwin's as in the
#: issue's measurement (4-minute jobs: 15/30/60/120 s backoff, restarting on each of its 5 progress changes);
#: OL Connect's and ScriptX's 2 minutes reach their policies' longest interval (60 s and 30 s)
JOB_SECONDS = {"olconnect": 120.0, "itwin": 240.0, "scriptx": 120.0}


@dataclass(frozen=True)
class Group:
    vendor: str
    waits: int
    job: float  # the longest job, seconds


@dataclass(frozen=True)
class Case:
    label: str
    mode: str
    groups: tuple[Group, ...]
    #: None: each vendor's default poll policy (the reference: its first interval); else a fixed interval
    interval: float | None = None
    #: emulated vendor quotas during the waits: vendor -> ((calls, seconds), ...)
    quota: tuple[tuple[str, tuple[tuple[int, float], ...]], ...] = ()
    #: extras set on the waits' connections beyond the mode's (a diagnostic case raising one budget)
    extra: tuple[tuple[str, float], ...] = ()

    @property
    def waits(self) -> int:
        return sum(group.waits for group in self.groups)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Case:
        groups = tuple(Group(**group) for group in data["groups"])
        quota = tuple((vendor, tuple((int(c), float(s)) for c, s in limits)) for vendor, limits in data["quota"])
        extra = tuple((str(key), float(value)) for key, value in data.get("extra", ()))
        return cls(data["label"], data["mode"], groups, data["interval"], quota, extra)


# -- the plan ------------------------------------------------------------------------------------------

TRIAL_QUOTA = ("itwin", ((500, 60.0), (5000, 3600.0)))  # Bentley's Trial: 500 a minute and 5,000 an hour


def plan(name: str) -> list[Case]:
    """The cases of a run: the issue's target scenarios, then per vendor 1,000 and 10,000 waits three ways.

    ``smoke`` is the same plan at tiny sizes, short jobs and short fixed intervals: it runs the machinery
    end to end in about a minute, and its numbers mean nothing."""
    smoke = name == "smoke"
    sizes = (12,) if smoke else (1_000, 10_000)
    jobs = dict.fromkeys(JOB_SECONDS, 2.0) if smoke else JOB_SECONDS
    interval = 0.3 if smoke else None
    target = 30 if smoke else 5_000
    mixed = 36 if smoke else 20_000
    one_second = 0.3 if smoke else 1.0
    # the targets first: the answers a run is for come early
    cases = [
        Case(
            f"target: iTwin v2, {target:,} waits, Trial quota",
            "poller",
            (Group("itwin", target, jobs["itwin"]),),
            interval,
            (TRIAL_QUOTA,),
        ),
        Case(
            f"target: iTwin v2, {target:,} waits, reference",
            "reference",
            (Group("itwin", target, jobs["itwin"]),),
            interval,
        ),
        Case(
            f"target: OL Connect, {target:,} waits every {one_second:g} s",
            "poller",
            (Group("olconnect", target, jobs["olconnect"]),),
            one_second,
        ),
        Case(
            f"target: OL Connect, {target:,} waits every {one_second:g} s, reference",
            "reference",
            (Group("olconnect", target, jobs["olconnect"]),),
            one_second,
        ),
        # What the default budgets cost the two targets above: the same with the binding budget raised.
        Case(
            f"diagnostic: iTwin v2, {target:,} waits, Trial quota, requests_per_hour raised",
            "poller",
            (Group("itwin", target, jobs["itwin"]),),
            interval,
            (TRIAL_QUOTA,),
            (("requests_per_hour", 1e12),),
        ),
        Case(
            f"diagnostic: OL Connect, {target:,} waits every {one_second:g} s, requests_per_minute raised",
            "poller",
            (Group("olconnect", target, jobs["olconnect"]),),
            one_second,
            (),
            (("requests_per_minute", 1e9),),
        ),
        Case(
            f"target: {mixed:,} mixed waits",
            "poller",
            tuple(Group(v, mixed // 3 + (1 if i < mixed % 3 else 0), jobs[v]) for i, v in enumerate(VENDORS)),
            interval,
        ),
    ]
    cases += [
        Case(f"{VENDORS[v].title}, {n:,} waits", mode, (Group(v, n, jobs[v]),), interval)
        for v in VENDORS
        for n in sizes
        for mode in MODES
    ]
    return cases


# -- talking to the emulator ---------------------------------------------------------------------------


class Control:
    """The emulator's control API on one kept-alive connection (thousands of small calls before a case)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        self._connection.request(method, path, body=data, headers=headers)
        answer = self._connection.getresponse()
        raw = answer.read()
        if answer.status >= 300:
            raise RuntimeError(f"emulator control {method} {path}: {answer.status} {raw[:200]!r}")
        return json.loads(raw) if raw else None

    def close(self) -> None:
        self._connection.close()


# -- one case, in its own process ----------------------------------------------------------------------


@dataclass
class VendorResult:
    """What one vendor saw of a case, and how its waits ended."""

    vendor: str
    waits: int
    #: events matching the job's true end (the reference cannot tell outcomes apart: any event after the end)
    right: int
    wrong: int
    errors: int
    unfinished: int
    #: jobs that ended before the waits began (created early, short): their lateness is not counted
    ended_before_start: int
    calls: int
    per_job_calls: int
    rate_limited: int
    rate_limited_after_first_minute: int
    max_calls_in_a_minute: int
    late_p50_s: float
    late_p95_s: float
    late_max_s: float
    wall_s: float
    #: listings (GET calls naming no job) and the longest time between two of them (or from the last one to the
    #: vendor's last event) while its waits waited
    list_calls: int = 0
    longest_list_gap_s: float = math.nan

    @property
    def calls_per_minute(self) -> float:
        return 60.0 * self.calls / self.wall_s if self.wall_s else math.inf

    @property
    def calls_per_second_beyond_one_per_end(self) -> float:
        """Calls a second, not counting one per job that ended (issue 19's OL Connect target)."""
        return max(0.0, self.calls - self.waits) / self.wall_s if self.wall_s else math.inf


@dataclass
class Result:
    case: Case
    vendors: list[VendorResult]
    wall_s: float
    cpu_s: float
    polls: int
    baseline_rss_mib: float
    peak_rss_mib: float
    emulator_cpu_s: float
    load_before: str
    load_after: str
    started: str
    #: when the waits began (epoch seconds)
    start: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s

    @property
    def rss_growth_mib(self) -> float:
        return self.peak_rss_mib - self.baseline_rss_mib

    @property
    def cpu_ms_per_poll(self) -> float:
        return 1000 * self.cpu_s / self.polls if self.polls else math.inf

    @property
    def emulator_cores(self) -> float:
        return self.emulator_cpu_s / self.wall_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        values = dict(data)
        values["case"] = Case.from_dict(values["case"])
        values["vendors"] = [VendorResult(**v) for v in values["vendors"]]
        return cls(**values)


def policy_interval(vendor: str, interval: float | None) -> float:
    """The reference's poke interval: the case's, else the vendor policy's first (as our sensor's poke mode)."""
    if interval is not None:
        return interval
    from airflow_provider_jobprogress.hooks import load_hook_class

    return float(load_hook_class(VENDORS[vendor].hook).default_poll_policy().delay(0))


def set_connections(emu: Emulator, mode: str, more: Mapping[str, Any] | None = None) -> None:
    """AIRFLOW_CONN_* from the emulator: the vendors' default connections for the waits (list polling off and no
    budget for ``per_job``), and a ``bench_create_<vendor>`` twin without a budget that creates the jobs."""
    connections = Control(emu.url)
    try:
        known = connections.call("GET", "/_emulator/connections")
    finally:
        connections.close()
    for vendor in VENDORS.values():
        conn = json.loads(known[vendor.conn_id])
        extra = dict(conn.get("extra") or {})
        waits = {**extra, "list_polling": False, **NO_BUDGET} if mode == "per_job" else extra
        waits = {**waits, **(more or {})}
        os.environ[f"AIRFLOW_CONN_{vendor.conn_id.upper()}"] = json.dumps({**conn, "extra": waits})
        create = {**conn, "extra": {**extra, **NO_BUDGET}}
        os.environ[f"AIRFLOW_CONN_BENCH_CREATE_{vendor.name.upper()}"] = json.dumps(create)
    os.environ["AIRFLOW_CONN_HTTP_DEFAULT"] = json.dumps({"conn_type": "http", "host": emu.url})


def create_jobs(emu: Emulator, group: Group) -> list[str]:
    """Queue one scenario per job (lengths spread over the second half of ``group.job``, outcomes as
    ``OUTCOMES``), then create and submit the jobs with ``CREATORS`` threads; their ids."""
    from airflow_provider_jobprogress.hooks import load_hook_class

    vendor = VENDORS[group.vendor]
    # lengths evenly spread, in an order of their own (the same every run): ends do not follow creation order
    shares = [index / max(group.waits - 1, 1) for index in range(group.waits)]
    random.Random(group.waits).shuffle(shares)
    control = Control(emu.url)
    try:
        for index, share in enumerate(shares):
            scenario = {"duration": group.job * (0.5 + 0.5 * share), "outcome": OUTCOMES[index % len(OUTCOMES)]}
            control.call("POST", "/_emulator/scenario", {"vendor": vendor.name, "scenario": scenario})
    finally:
        control.close()

    def some(count: int) -> list[str]:
        hook: Any = load_hook_class(vendor.hook)(f"bench_create_{vendor.name}")
        try:
            return [vendor.submit(hook) for _ in range(count)]
        finally:
            hook.session.close()

    counts = [group.waits // CREATORS + (1 if i < group.waits % CREATORS else 0) for i in range(CREATORS)]
    with ThreadPoolExecutor(CREATORS) as pool:
        return [job for made in pool.map(some, counts) for job in made]


def make_trigger(mode: str, vendor: str, job_id: str, interval: float | None) -> Any:
    from airflow.providers.http.triggers.http import HttpSensorTrigger

    from airflow_provider_jobprogress.core import PollPolicy
    from airflow_provider_jobprogress.triggers.job_progress import JobProgressTrigger

    if mode == "reference":
        return HttpSensorTrigger(
            endpoint=f"/_emulator/jobs/{vendor}/{job_id}/done",
            http_conn_id="http_default",
            poke_interval=policy_interval(vendor, interval),
        )
    return JobProgressTrigger(
        hook_class_path=VENDORS[vendor].hook,
        conn_id=VENDORS[vendor].conn_id,
        job_id=job_id,
        poll_policy=None if interval is None else PollPolicy.fixed(interval).to_dict(),
    )


@contextmanager
def counting_reads() -> Iterator[list[int]]:
    """Count every poll our waits make while inside (each ``Watch.read``: from a listing or a call of its own)."""
    from airflow_provider_jobprogress.core import poller

    counter = [0]
    read = poller.Watch.read

    async def counted(self: Any) -> Any:
        counter[0] += 1
        return await read(self)

    setattr(poller.Watch, "read", counted)  # noqa: B010 - mypy refuses assigning to a method
    try:
        yield counter
    finally:
        setattr(poller.Watch, "read", read)  # noqa: B010


@dataclass
class BudgetUse:
    """What the connections' budgets did while the waits ran (all connections of the case together)."""

    required: int = 0
    #: seconds required calls waited for their turn: in all, and the longest one wait
    queued_s: float = 0.0
    longest_queue_s: float = 0.0
    optional_sent: int = 0
    optional_skipped: int = 0


@contextmanager
def watching_budgets() -> Iterator[BudgetUse]:
    """Count the budgets' turns while inside (``RequestBudget.aacquire`` and ``try_take``)."""
    from airflow_provider_jobprogress.core.budget import RequestBudget

    use = BudgetUse()
    aacquire, try_take = RequestBudget.aacquire, RequestBudget.try_take

    async def acquired(self: Any, *, urgent: bool | None = None) -> None:
        started = time.monotonic()
        await aacquire(self, urgent=urgent)
        wait = time.monotonic() - started
        use.required += 1
        use.queued_s += wait
        use.longest_queue_s = max(use.longest_queue_s, wait)

    def taken(self: Any) -> bool:
        went = try_take(self)
        if went:
            use.optional_sent += 1
        else:
            use.optional_skipped += 1
        return went

    setattr(RequestBudget, "aacquire", acquired)  # noqa: B010 - mypy refuses assigning to a method
    setattr(RequestBudget, "try_take", taken)  # noqa: B010
    try:
        yield use
    finally:
        setattr(RequestBudget, "aacquire", aacquire)  # noqa: B010
        setattr(RequestBudget, "try_take", try_take)  # noqa: B010


def event_status(payload: Any) -> str:
    if payload is True:  # HttpSensorTrigger: the done endpoint stopped answering 404
        return "ended"
    return str(payload.get("status")) if isinstance(payload, dict) else repr(payload)


async def run_waits(triggers: Mapping[str, Any], give_up_at: float) -> dict[str, tuple[float, str]]:
    """Every trigger to its event, or to ``give_up_at``; job id -> (when, status)."""
    seen: dict[str, tuple[float, str]] = {}

    async def one(job_id: str, trigger: Any) -> None:
        try:
            async for event in trigger.run():
                seen[job_id] = (time.time(), event_status(event.payload))
        except Exception as exc:  # HttpSensorTrigger lets out every error not an AirflowException: a failed trigger
            seen[job_id] = (time.time(), f"{RAISED}{type(exc).__name__}")

    tasks = [asyncio.create_task(one(job, trigger)) for job, trigger in triggers.items()]
    # one wait for all of them: waiting again and again would cost a callback per task each time, in the
    # process whose CPU is measured
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, give_up_at - time.time()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return seen


def most_in_a_minute(times: Sequence[float]) -> int:
    most, first = 0, 0
    for last, moment in enumerate(times):
        while times[first] <= moment - 60.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


_DONE = re.compile(r"/_emulator/jobs/([^/]+)/([^/]+)/done")


def vendor_of(call: Mapping[str, Any]) -> str | None:
    """The vendor a logged call went to: its API's, or (the reference) the one its done endpoint names."""
    done = _DONE.fullmatch(call["path"])
    return done.group(1) if done else call.get("vendor")


def measure_vendor(
    group: Group,
    jobs: Sequence[str],
    records: Mapping[str, Mapping[str, Any]],
    seen: Mapping[str, tuple[float, str]],
    calls: Sequence[Mapping[str, Any]],
    start: float,
    wall: float,
) -> VendorResult:
    right = wrong = errors = unfinished = before = 0
    late: list[float] = []
    for job in jobs:
        record = records[job]
        end = float(record["submitted_at"]) + float(record["scenario"]["duration"])
        truth = STATUS_OF.get(str(record["state"]), str(record["state"]))
        if job not in seen:
            unfinished += 1
            continue
        when, status = seen[job]
        if status.startswith(RAISED):  # no event: an error, and no time at which its end was seen
            wrong += 1
            errors += 1
            continue
        if status == truth or (status == "ended" and when >= end):
            right += 1
        else:
            wrong += 1
            errors += status == "error"
        if end < start:
            before += 1
        else:
            late.append(when - end)
    mine = [call for call in calls if vendor_of(call) == group.vendor]
    times = sorted(float(call["ts"]) for call in mine)
    limited = [float(call["ts"]) for call in mine if call["status"] == 429]
    lists = sorted(float(call["ts"]) for call in mine if call["method"] == "GET" and not call.get("job_id"))
    # while some wait of this vendor still waited: after the last event a poller has nothing to list for
    events = [seen[job][0] for job in jobs if job in seen and not seen[job][1].startswith(RAISED)]
    last_event = max(events, default=start + wall)
    marks = [moment for moment in lists if moment <= last_event]
    gaps = [b - a for a, b in itertools.pairwise([*marks, last_event])] if marks else []
    return VendorResult(
        vendor=group.vendor,
        waits=group.waits,
        right=right,
        wrong=wrong,
        errors=errors,
        unfinished=unfinished,
        ended_before_start=before,
        calls=len(mine),
        per_job_calls=sum(1 for call in mine if call.get("job_id")),
        rate_limited=len(limited),
        rate_limited_after_first_minute=sum(1 for moment in limited if moment >= start + 60.0),
        max_calls_in_a_minute=most_in_a_minute(times),
        late_p50_s=statistics.median(late) if late else math.nan,
        late_p95_s=percentile(late, 0.95),
        late_max_s=max(late) if late else math.nan,
        wall_s=wall,
        list_calls=len(lists),
        longest_list_gap_s=max(gaps, default=math.nan),
    )


def run_case(case: Case, emu: Emulator, calls_dir: str | None = None) -> Result:
    from airflow_provider_jobprogress.core.budget import BUDGETS

    set_connections(emu, case.mode, dict(case.extra))
    control = Control(emu.url)
    try:
        created = time.time()
        jobs = {group.vendor: create_jobs(emu, group) for group in case.groups}
        created = time.time() - created
        triggers = {
            job: make_trigger(case.mode, group.vendor, job, case.interval)
            for group in case.groups
            for job in jobs[group.vendor]
        }
        # every job has ended by then (each job's own end is read from the emulator's record of it afterwards)
        last_end = time.time() + max(group.job for group in case.groups)
        for vendor, limits in case.quota:
            body = {"vendor": vendor, "limits": [{"calls": c, "seconds": s} for c, s in limits]}
            control.call("POST", "/_emulator/quota", body)
        BUDGETS.clear()  # the waits' connections start with their budget untouched

        gc.collect()
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM := VmRSS: the peak below is the waits' own
        baseline = rss_mib("VmHWM")
        calls_before = int(control.call("GET", "/_emulator/stats")["calls"])
        load_before, started = load(), time.strftime("%H:%M:%S")
        with counting_reads() as reads, watching_budgets() as budgets, sampling_rss(baseline) as rss_timeline:
            emu_cpu0, cpu0, start = emu.cpu_seconds(), time.process_time(), time.time()
            seen = asyncio.run(run_waits(triggers, last_end + GRACE))
            wall = time.time() - start
            cpu, emu_cpu = time.process_time() - cpu0, emu.cpu_seconds() - emu_cpu0
        peak = rss_mib("VmHWM")
        load_after = load()

        for vendor, _ in case.quota:
            control.call("POST", "/_emulator/quota", {"vendor": vendor, "limits": []})
        calls = [
            call
            for call in control.call("GET", f"/_emulator/calls?since={calls_before}")
            if float(call["ts"]) <= start + wall
        ]
        records = {
            job: control.call("GET", f"/_emulator/jobs/{group.vendor}/{job}")
            for group in case.groups
            for job in jobs[group.vendor]
        }
        if calls_dir:
            kept = {
                "case": asdict(case),
                "start": start,
                "calls": calls,
                "events": {job: list(event) for job, event in seen.items()},
                "records": records,
            }
            name = re.sub(r"[^A-Za-z0-9]+", "-", f"{case.label}-{case.mode}").strip("-")
            Path(calls_dir, f"{name}.json").write_text(json.dumps(kept))
    finally:
        control.close()
    polls = reads[0] if case.mode != "reference" else sum(1 for call in calls if _DONE.fullmatch(call["path"]))
    return Result(
        case=case,
        vendors=[measure_vendor(group, jobs[group.vendor], records, seen, calls, start, wall) for group in case.groups],
        wall_s=wall,
        cpu_s=cpu,
        polls=polls,
        baseline_rss_mib=baseline,
        peak_rss_mib=peak,
        emulator_cpu_s=emu_cpu,
        load_before=load_before,
        load_after=load_after,
        started=started,
        start=start,
        extra={"creation_s": created, "budget": asdict(budgets), "rss_timeline": rss_timeline},
    )


@contextmanager
def sampling_rss(baseline: float, every: float = 5.0) -> Iterator[list[tuple[float, float]]]:
    """VmRSS above ``baseline`` every ``every`` seconds while the waits run, as (seconds, MiB): where a case's
    memory goes up (the waits' own structures at the start, or reads queued behind a budget later) tells what
    to look for (``benchmarks/README.md``, stop 25's profile)."""
    timeline: list[tuple[float, float]] = []
    done = threading.Event()
    start = time.monotonic()

    def sample() -> None:
        while not done.wait(every):
            timeline.append((round(time.monotonic() - start, 1), round(rss_mib("VmRSS") - baseline, 1)))
        timeline.append((round(time.monotonic() - start, 1), round(rss_mib("VmRSS") - baseline, 1)))  # at the end

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        yield timeline
    finally:
        done.set()
        sampler.join()


def airflow_home() -> str:
    """A throwaway AIRFLOW_HOME, settled before anything imports airflow (it reads its configuration then)."""
    home = tempfile.mkdtemp(prefix="jobprogress-bench-")
    os.environ["AIRFLOW_HOME"] = home
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    # The reference warns on every 404, ours logs each progress change: neither is what is measured.
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "ERROR"
    return home


def case_main(args: argparse.Namespace) -> int:
    home = airflow_home()
    try:
        case = Case.from_dict(json.loads(args.case))
        result = run_case(case, Emulator(args.emulator_url, args.emulator_pid), args.calls)
        Path(args.result).write_text(json.dumps(result.to_dict()))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


def run_in_process(case: Case, emu: Emulator, calls_dir: str | None = None) -> Result:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [
            sys.executable,
            __file__,
            "--case",
            case.to_json(),
            "--emulator-url",
            emu.url,
            "--emulator-pid",
            str(emu.pid),
            "--result",
            out.name,
            *(["--calls", calls_dir] if calls_dir else []),
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return Result.from_dict(json.loads(Path(out.name).read_text()))


# -- the tables ----------------------------------------------------------------------------------------


def _seconds(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def _ended(v: VendorResult) -> str:
    text = f"{v.right:,}/{v.waits:,}"
    if v.wrong:
        text += f", {v.wrong:,} wrong ({v.errors:,} errors)"
    if v.unfinished:
        text += f", **{v.unfinished:,} unfinished**"
    if v.ended_before_start:
        text += f" ({v.ended_before_start:,} ended before the waits began)"
    return text


def _listings(v: VendorResult) -> str:
    if not v.list_calls:
        return "0"
    return f"{v.list_calls:,} ({_seconds(v.longest_list_gap_s)})"


def _budget(r: Result) -> str:
    use = r.extra.get("budget")
    if r.case.mode != "poller" or not use:
        return "n/a"
    return f"{use['required']:,} ({use['longest_queue_s']:.0f}) / {use['optional_sent']:,}, {use['optional_skipped']:,}"


def markdown(results: Sequence[Result]) -> str:
    lines = [
        "| case | waits | calls/min (mean / most in a minute) | per-job calls per wait | listings (longest gap, s) | "
        "429s (after 1st min) | budget: required calls (longest wait s) / optional sent, left out | "
        "end seen late p50 / p95 / max (s) | ended right | triggerer cores | CPU ms per poll | polls | "
        "RSS growth (MiB) | emulator cores | wall (s) | load before → after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for index, v in enumerate(r.vendors):
            label = f"{r.case.label}: {MODES[r.case.mode]}"
            if len(r.vendors) > 1:
                label += f" ({VENDORS[v.vendor].title})"
            whole = index == 0  # the process's own figures once per case, on its first row
            cpu = f"{r.cores:.2f}" if whole else "″"
            per_poll = f"{r.cpu_ms_per_poll:.3f}" if whole else "″"
            polls = f"{r.polls:,}" if whole else "″"
            rss = f"{r.rss_growth_mib:.0f}" if whole else "″"
            emu = f"{r.emulator_cores:.2f}" if whole else "″"
            loads = f"{r.load_before.split()[0]} → {r.load_after.split()[0]}" if whole else "″"
            lines.append(
                f"| {label} | {v.waits:,} | {v.calls_per_minute:,.0f} / {v.max_calls_in_a_minute:,} | "
                f"{v.per_job_calls / v.waits:.2f} | {_listings(v)} | "
                f"{v.rate_limited:,} ({v.rate_limited_after_first_minute:,}) | {_budget(r) if whole else '″'} | "
                f"{_seconds(v.late_p50_s)} / {_seconds(v.late_p95_s)} / {_seconds(v.late_max_s)} | {_ended(v)} | "
                f"{cpu} | {per_poll} | {polls} | {rss} | {emu} | {r.wall_s:.0f} | {loads} |"
            )
    return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    held: bool | None  # None: the run has no case for it


def _find(results: Iterable[Result], prefix: str, mode: str) -> Result | None:
    return next((r for r in results if r.case.label.startswith(prefix) and r.case.mode == mode), None)


def verdicts(results: Sequence[Result]) -> list[Verdict]:
    """Issue 19's targets, each against what this run measured."""
    found: list[Verdict] = []
    quota = _find(results, "target: iTwin v2", "poller")
    if quota is None:
        found.append(Verdict("iTwin v2 under a Trial quota", "not run", None))
    else:
        v = quota.vendors[0]
        checks = [
            (f"{v.right:,} of {v.waits:,} waits ended in their job's true state", v.right == v.waits),
            (f"{v.errors} error events", v.errors == 0),
            (
                f"{v.rate_limited_after_first_minute} 429s after the first minute",
                v.rate_limited_after_first_minute == 0,
            ),
            (
                f"{v.calls_per_minute:.0f} calls/min (most in any minute {v.max_calls_in_a_minute})",
                v.max_calls_in_a_minute <= 450,
            ),
            (f"end seen late p95 {v.late_p95_s:.1f} s", v.late_p95_s <= 60),
        ]
        for text, held in checks:
            found.append(Verdict(f"iTwin v2, {v.waits:,} waits, Trial quota", text, held))
    ol = _find(results, "target: OL Connect", "poller")
    if ol is None:
        found.append(Verdict("OL Connect polling every second", "not run", None))
    else:
        v = ol.vendors[0]
        found.append(
            Verdict(
                f"OL Connect, {v.waits:,} waits every second: calls",
                f"{v.calls_per_second_beyond_one_per_end:.2f} calls/s beyond one per finished operation "
                f"({v.calls:,} calls for {v.waits:,} operations in {v.wall_s:.0f} s)",
                v.calls_per_second_beyond_one_per_end <= 2.0,
            )
        )
        found.append(
            Verdict(f"OL Connect, {v.waits:,} waits every second: CPU", f"{ol.cores:.3f} core", ol.cores <= 0.1)
        )
    mixed = next((r for r in results if "mixed" in r.case.label), None)
    if mixed is None:
        found.append(Verdict("mixed waits in one process", "not run", None))
    else:
        right = sum(v.right for v in mixed.vendors)
        name = f"{mixed.case.waits:,} mixed waits"
        found.append(Verdict(f"{name}: CPU", f"{mixed.cores:.3f} core", mixed.cores <= 0.25))
        found.append(
            Verdict(f"{name}: RSS", f"+{mixed.rss_growth_mib:.0f} MiB", mixed.rss_growth_mib * 1.048576 <= 150)
        )
        found.append(Verdict(f"{name}: events", f"{right:,} of {mixed.case.waits:,} right", right == mixed.case.waits))
    for title, prefix in (("iTwin v2", "target: iTwin v2"), ("OL Connect", "target: OL Connect")):
        ours, reference = _find(results, prefix, "poller"), _find(results, prefix, "reference")
        if ours is None or reference is None:
            found.append(Verdict(f"CPU per poll vs HttpSensorTrigger, {title}", "not run", None))
            continue
        ratio = ours.cpu_ms_per_poll / reference.cpu_ms_per_poll
        found.append(
            Verdict(
                f"CPU per wait per poll vs HttpSensorTrigger's per poll, {title}, {ours.case.waits:,} waits",
                f"{ours.cpu_ms_per_poll:.3f} / {reference.cpu_ms_per_poll:.3f} ms = {ratio:.2f}x",
                ratio <= 0.1,
            )
        )
    return found


def verdict_table(results: Sequence[Result]) -> str:
    lines = ["| target | measured | held |", "| --- | --- | --- |"]
    for v in verdicts(results):
        held = "n/a" if v.held is None else ("yes" if v.held else "**no**")
        lines.append(f"| {v.target} | {v.measured} | {held} |")
    return "\n".join(lines)


def report(results: Sequence[Result], header: str) -> str:
    return f"{header}\n\n{markdown(results)}\n\n{verdict_table(results)}\n"


# -- the whole run -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--plan", choices=("full", "smoke"), default="full")
    parser.add_argument("--only", action="append", default=[], help="run only cases whose label contains this")
    parser.add_argument("--mode", action="append", choices=sorted(MODES), help="run only these ways of waiting")
    parser.add_argument("--json", metavar="PATH", help="write every raw result to PATH, as each case ends")
    parser.add_argument("--table", metavar="PATH", help="print the tables of a --json file, run nothing")
    parser.add_argument(
        "--calls", metavar="DIR", help="also keep each case's call log, events and job records in DIR (JSON)"
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--emulator-url", help=argparse.SUPPRESS)
    parser.add_argument("--emulator-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        return case_main(args)
    if args.table:
        saved = json.loads(Path(args.table).read_text())
        print(report([Result.from_dict(r) for r in saved["results"]], saved["header"]))
        return 0

    # Thousands of sockets at once on both ends of 127.0.0.1: raise the descriptor limit for every process.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cases = [
        case
        for case in plan(args.plan)
        if (not args.only or any(text in case.label for text in args.only))
        and (not args.mode or case.mode in args.mode)
    ]
    results: list[Result] = []
    header = (
        f"Run started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, plan {args.plan}; nproc {os.cpu_count()}; "
        f"load average at start {load()}"
    )
    # The full run gives each case a process of its own (its own baseline and peak); the smoke run, whose
    # numbers mean nothing, runs them all here, so that it is not mostly Airflow's imports.
    home = airflow_home() if args.plan == "smoke" else None
    with emulator_process() as emu:
        for case in cases:
            reset = Control(emu.url)
            try:
                reset.call("POST", "/_emulator/reset")
            finally:
                reset.close()
            result = run_case(case, emu, args.calls) if home else run_in_process(case, emu, args.calls)
            results.append(result)
            print(f"{case.label}, {case.mode}: {replace(result, extra={})}", file=sys.stderr, flush=True)
            if args.json:
                raw = {"header": header, "results": [r.to_dict() for r in results]}
                Path(args.json).write_text(json.dumps(raw, indent=1))
    if home:
        shutil.rmtree(home, ignore_errors=True)
    header += f"; load average at end {load()}"
    print(report(results, header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
