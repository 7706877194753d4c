"""Benchmark: thousands of concurrent waits in one triggerer loop, JobProgressTrigger against HttpSensorTrigger.

One emulator process (the ``jobprogress-emulator`` command) serves both sides. For each size, each side runs
in its own process, one after the other: it creates its iTwin jobs (wall-clock jobs of ``job`` seconds)
before the clock starts, then runs one trigger per job in one asyncio loop until every trigger has given
its event. The reference is the http provider's ``HttpSensorTrigger`` (a new aiohttp session per poll, no
auth) polling the emulator's done endpoint, 404 while the job runs; ours is ``JobProgressTrigger`` on the
vendor's connection: OL Connect by default (a login token, then one progress GET per poll, as the reference
makes one GET), or ``--vendor itwin`` (OAuth token, progress, and the job's details once progress is gone).
Everything printed is measured in this run.

    .venv/bin/python benchmarks/bench_triggers.py                   # 500 @ 1 s, 2000 @ 5 s, 5000 @ 30 s
    .venv/bin/python benchmarks/bench_triggers.py --sizes 50:0.5:3   # smoke run: waits:interval:job seconds
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SIDES = {"reference": "HttpSensorTrigger (providers-http)", "ours": "JobProgressTrigger"}
DEFAULT_SIZES = "500:1:20,2000:5:40,5000:30:90"


@dataclass(frozen=True)
class Vendor:
    hook: str
    #: a path fragment of its progress call (a poll) and of its login call (a token request)
    poll: str
    login: str
    submit: Any


VENDORS = {
    "olconnect": Vendor(
        "airflow_provider_jobprogress.hooks.olconnect.OLConnectHook",
        "/getProgress/",
        "/authentication/login",
        {"datamining": {"identifier": "a.csv", "config": "dm"}},
    ),
    "itwin": Vendor(
        "airflow_provider_jobprogress.hooks.itwin.ITwinHook",
        "/progress",
        "/connect/token",
        {"name": "bench", "type": "objects2D", "inputs": [{"type": "photos", "id": "in"}], "outputs": ["objects2D"]},
    ),
}
CREATORS = 8
#: a side that has not seen every job end this long after the last one ended has fallen behind for good
GRACE_FACTOR = 3.0


@dataclass(frozen=True)
class Size:
    waits: int
    interval: float
    job: float

    @classmethod
    def parse(cls, text: str) -> Size:
        waits, interval, job = text.split(":")
        return cls(int(waits), float(interval), float(job))

    def __str__(self) -> str:
        return f"{self.waits:,} waits, {self.interval:g} s, {self.job:g} s jobs"


@dataclass(frozen=True)
class Result:
    side: str
    waits: int
    succeeded: int
    wall_s: float
    cpu_s: float
    polls_made: int
    polls_asked: int
    late_p50_s: float
    late_max_s: float
    baseline_rss_mib: float
    peak_rss_mib: float
    token_requests: int
    tcp_connections: int
    http_requests: int
    emulator_cpu_s: float
    load_before: str
    load_after: str

    @property
    def cpu_ms_per_poll(self) -> float:
        return 1000 * self.cpu_s / self.polls_made if self.polls_made else math.inf

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s

    @property
    def emulator_cores(self) -> float:
        return self.emulator_cpu_s / self.wall_s

    @property
    def rss_growth_mib(self) -> float:
        return self.peak_rss_mib - self.baseline_rss_mib


# -- the emulator, in its own process -------------------------------------------------------------------


@dataclass(frozen=True)
class Emulator:
    url: str
    pid: int

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310 - 127.0.0.1
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=120) as answer:  # noqa: S310 - our own http://127.0.0.1
            raw = answer.read()
        return json.loads(raw) if raw else None

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc, clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def emulator_process() -> Iterator[Emulator]:
    command = [sys.executable, "-m", "airflow_provider_jobprogress.testing.emulators", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        first = process.stdout.readline()  # "jobprogress-emulator serving on http://127.0.0.1:PORT"
        yield Emulator(first.split()[-1], process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# -- one side, in its own process ----------------------------------------------------------------------


def rss_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def create_jobs(emu: Emulator, vendor: str, size: Size) -> dict[str, float]:
    """Create and submit the jobs; job id -> wall-clock time it ends (its submit returned + job seconds)."""
    from airflow_provider_jobprogress.hooks import load_hook_class

    emu.control("POST", "/_emulator/scenario", {"vendor": vendor, "scenario": {"duration": size.job}, "default": True})

    def some(count: int) -> list[tuple[str, float]]:
        hook: Any = load_hook_class(VENDORS[vendor].hook)()
        try:
            made = []
            for _ in range(count):
                job_id = hook.submit(VENDORS[vendor].submit)
                made.append((job_id, time.time() + size.job))
            return made
        finally:
            hook.session.close()

    shares = [size.waits // CREATORS + (1 if i < size.waits % CREATORS else 0) for i in range(CREATORS)]
    with ThreadPoolExecutor(CREATORS) as pool:
        return dict(pair for made in pool.map(some, shares) for pair in made)


def trigger_factory(side: str, vendor: str, size: Size) -> Callable[[str], Any]:
    # Both imported on both sides, so both processes start from the same baseline memory.
    from airflow.providers.http.triggers.http import HttpSensorTrigger

    from airflow_provider_jobprogress.core import PollPolicy
    from airflow_provider_jobprogress.triggers.job_progress import JobProgressTrigger

    if side == "ours":
        policy = PollPolicy.fixed(size.interval).to_dict()
        return lambda job_id: JobProgressTrigger(
            hook_class_path=VENDORS[vendor].hook, conn_id=f"{vendor}_default", job_id=job_id, poll_policy=policy
        )
    return lambda job_id: HttpSensorTrigger(
        endpoint=f"/_emulator/jobs/{vendor}/{job_id}/done", http_conn_id="http_default", poke_interval=size.interval
    )


def event_status(event: Any) -> str:
    payload = event.payload
    if payload is True:  # HttpSensorTrigger: the endpoint stopped answering 404
        return "success"
    return str(payload.get("status")) if isinstance(payload, dict) else repr(payload)


async def run_waits(
    make: Callable[[str], Any], job_ids: Sequence[str], give_up_at: float
) -> dict[str, tuple[float, str]]:
    seen: dict[str, tuple[float, str]] = {}

    async def one(job_id: str) -> None:
        async for event in make(job_id).run():
            seen[job_id] = (time.time(), event_status(event))

    tasks = [asyncio.create_task(one(job_id)) for job_id in job_ids]
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, give_up_at - time.time()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if pending:
        print(f"{len(pending)} waits still running when the side gave up", file=sys.stderr)
    return seen


def run_side(side: str, vendor: str, size: Size, emu: Emulator) -> Result:
    connections = emu.control("GET", "/_emulator/connections")
    os.environ.update({f"AIRFLOW_CONN_{conn_id.upper()}": value for conn_id, value in connections.items()})
    os.environ["AIRFLOW_CONN_HTTP_DEFAULT"] = json.dumps({"conn_type": "http", "host": emu.url})
    make = trigger_factory(side, vendor, size)
    ends = create_jobs(emu, vendor, size)
    job_ids = list(ends)

    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS: the peak below is the waits' own
    # The baseline is that reset mark itself: VmRSS read apart from it can be above a later VmHWM when
    # memory is returned in between (seen in CI: peak 286.84 < baseline 286.85 MiB).
    baseline = rss_mib("VmHWM")
    calls_before = int(emu.control("GET", "/_emulator/stats")["calls"])
    load_before = load()
    emu_cpu0, cpu0, start = emu.cpu_seconds(), time.process_time(), time.time()
    give_up_at = max(ends.values()) + GRACE_FACTOR * size.job + 2 * size.interval + 30
    seen = asyncio.run(run_waits(make, job_ids, give_up_at))
    wall = time.time() - start
    cpu, emu_cpu = time.process_time() - cpu0, emu.cpu_seconds() - emu_cpu0
    peak = rss_mib("VmHWM")
    load_after = load()

    calls = emu.control("GET", f"/_emulator/calls?since={calls_before}")
    if side == "ours":
        polled = [c for c in calls if c["method"] == "GET" and VENDORS[vendor].poll in c["path"]]
    else:
        polled = [c for c in calls if c["method"] == "GET" and c["path"].endswith("/done")]
    polls = Counter(call["job_id"] for call in polled)
    first_poll: dict[str, float] = {}
    for call in polled:
        first_poll.setdefault(call["job_id"], call["ts"])
    # A poller keeping its interval from its first poll (the reference polls at once; ours at a random point
    # of its first interval, so that waits started together do not poll together) polls at f, f+i, f+2i, ...
    # and sees the end at the first poll after it.
    asked = sum(
        math.ceil(max(0.0, end - first_poll.get(job_id, start)) / size.interval) + 1 for job_id, end in ends.items()
    )
    late = [seen[job_id][0] - end for job_id, end in ends.items() if job_id in seen] or [math.inf]
    return Result(
        side=side,
        waits=size.waits,
        succeeded=sum(1 for _, status in seen.values() if status == "success"),
        wall_s=wall,
        cpu_s=cpu,
        polls_made=sum(polls[job_id] for job_id in job_ids),
        polls_asked=asked,
        late_p50_s=statistics.median(late),
        late_max_s=max(late),
        baseline_rss_mib=baseline,
        peak_rss_mib=peak,
        token_requests=sum(1 for c in calls if c["method"] == "POST" and VENDORS[vendor].login in c["path"]),
        tcp_connections=len({c["peer"] for c in calls}),
        http_requests=len(calls),
        emulator_cpu_s=emu_cpu,
        load_before=load_before,
        load_after=load_after,
    )


def side_main(args: argparse.Namespace) -> int:
    # Airflow reads its configuration at import time: settle it before anything imports airflow.
    home = tempfile.mkdtemp(prefix="jobprogress-bench-")
    os.environ["AIRFLOW_HOME"] = home
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    # Neither side's log lines are compared: the reference warns on every 404, ours logs changes at INFO.
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "ERROR"
    try:
        emulator = Emulator(args.emulator_url, args.emulator_pid)
        result = run_side(args.side, args.vendor, Size.parse(args.size), emulator)
        Path(args.result).write_text(json.dumps(asdict(result)))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


# -- the whole run -------------------------------------------------------------------------------------


def run_in_process(side: str, vendor: str, size: Size, emu: Emulator) -> Result:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [
            sys.executable,
            __file__,
            "--side",
            side,
            "--vendor",
            vendor,
            "--size",
            f"{size.waits}:{size.interval}:{size.job}",
            "--emulator-url",
            emu.url,
            "--emulator-pid",
            str(emu.pid),
            "--result",
            out.name,
        ]
        # stdout (Airflow's and the triggers' logs) is not part of the result; errors still show.
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return Result(**json.loads(Path(out.name).read_text()))


def ratio(ours: float, reference: float) -> str:
    return f"{ours / reference:.2f}" if reference else "n/a"


def markdown(results: Sequence[tuple[Size, dict[str, Result]]]) -> str:
    lines = [
        "| waits, interval, job length | side | CPU ms per poll | cores | polls made / asked | "
        "end seen late (median / max s) | peak RSS / growth (MiB) | token requests | TCP connections | "
        "emulator cores | load before → after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size, sides in results:
        for side in ("reference", "ours"):
            r = sides[side]
            made = f"{r.polls_made:,} / {r.polls_asked:,} ({100 * r.polls_made / r.polls_asked:.0f} %)"
            if r.succeeded != r.waits:
                made += f", {r.waits - r.succeeded} waits unfinished"
            lines.append(
                f"| {size} | {SIDES[side]} | {r.cpu_ms_per_poll:.2f} | {r.cores:.2f} | {made} | "
                f"{r.late_p50_s:.1f} / {r.late_max_s:.1f} | {r.peak_rss_mib:.0f} / {r.rss_growth_mib:.1f} | "
                f"{r.token_requests} | {r.tcp_connections:,} | {r.emulator_cores:.2f} | "
                f"{r.load_before.split()[0]} → {r.load_after.split()[0]} |"
            )
        ours, reference = sides["ours"], sides["reference"]
        cpu = ratio(ours.cpu_ms_per_poll, reference.cpu_ms_per_poll)
        emulator = ratio(ours.emulator_cores, reference.emulator_cores)
        cores = ratio(ours.cores, reference.cores)
        lines.append(f"| {size} | **ours / reference** | **{cpu}** | {cores} | | | | | | {emulator} | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"waits:interval:job,... (default {DEFAULT_SIZES})")
    parser.add_argument("--vendor", choices=sorted(VENDORS), default="olconnect", help="whose jobs ours waits on")
    parser.add_argument("--json", metavar="PATH", help="also write every raw measurement to PATH")
    parser.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--emulator-url", help=argparse.SUPPRESS)
    parser.add_argument("--emulator-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        return side_main(args)

    # Thousands of sockets at once on both ends of 127.0.0.1: raise the descriptor limit for every process.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sizes = [Size.parse(text) for text in args.sizes.split(",")]
    results: list[tuple[Size, dict[str, Result]]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    with emulator_process() as emu:
        for number, size in enumerate(sizes):
            sides: dict[str, Result] = {}
            # Alternate which side goes first, so a drifting machine favours neither.
            for side in ("reference", "ours") if number % 2 == 0 else ("ours", "reference"):
                emu.control("POST", "/_emulator/reset")
                sides[side] = run_in_process(side, args.vendor, size, emu)
                print(f"{size}: {side}: {sides[side]}", file=sys.stderr, flush=True)
            results.append((size, sides))
    print(f"Run started {started}; ours waits on {args.vendor} jobs; nproc {os.cpu_count()}; load at end {load()}\n")
    print(markdown(results))
    if args.json:
        raw = [{"size": asdict(size), **{side: asdict(r) for side, r in sides.items()}} for size, sides in results]
        Path(args.json).write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
