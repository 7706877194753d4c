"""Benchmark: many concurrent iTwin waits with JobProgressTrigger versus a client and a token per poll.

Both variants wait on the same kind of jobs in one asyncio loop, at the same fixed poll interval, against the
bundled emulator running in its own process (so this process's CPU time is the client's alone). The
reference is the naive trigger: for every poll a fresh ``httpx.AsyncClient``, a fresh OAuth token, then the
progress call (and job details once progress is gone), which is what a trigger without shared clients or
tokens does. Jobs are created before the clock starts. Everything reported is measured in this run.

    .venv/bin/python benchmarks/bench_polling.py [--waits 200] [--steps 5] [--interval 0.05] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

# Airflow reads its configuration at import time: settle it before anything imports airflow.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="jobprogress-bench-")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# One log line per change of progress is part of a real triggerer, but not of what is compared here.
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

import httpx
from compare import Summary, cell, summarize

from airflow_provider_jobprogress.core import PollPolicy
from airflow_provider_jobprogress.core.session import ASYNC_SESSIONS
from airflow_provider_jobprogress.hooks.itwin import ITwinHook
from airflow_provider_jobprogress.triggers.job_progress import JobProgressTrigger

HOOK_PATH = "airflow_provider_jobprogress.hooks.itwin.ITwinHook"
CONN_ID = "itwin_default"
ACCEPT = "application/vnd.bentley.itwin-platform.v1+json"
JOB_SPEC = {"type": "objects2D", "inputs": [{"type": "photos", "id": "in"}], "outputs": ["objects2D"]}
#: no wait may run away: each variant must finish well within this many seconds
RUN_TIMEOUT = 300.0


#: The emulator, served from a child process so its CPU time is measured apart from the client's.
EMULATOR_SERVER = """
import json, sys
from airflow_provider_jobprogress.testing.emulators import VendorEmulator
with VendorEmulator("127.0.0.1") as emu:
    print(json.dumps({"url": emu.url, "connections": emu.connections()}), flush=True)
    sys.stdin.read()  # serve until the benchmark closes our stdin
"""


@dataclass(frozen=True)
class Emulator:
    """The bundled emulator in a child process, reached over 127.0.0.1 only."""

    url: str
    pid: int
    #: connection id -> Airflow connection JSON
    connections: dict[str, str]

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310 - 127.0.0.1
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - our own http://127.0.0.1 URL
            raw = answer.read()
        return json.loads(raw) if raw else None

    def calls(self) -> list[dict[str, Any]]:
        return list(self.control("GET", "/_emulator/calls"))

    def cpu_seconds(self) -> float:
        """User + system CPU of the emulator process so far (Linux /proc)."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def emulator_process() -> Iterator[Emulator]:
    command = [sys.executable, "-c", EMULATOR_SERVER]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        started = json.loads(process.stdout.readline())
        yield Emulator(started["url"], process.pid, started["connections"])
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(timeout=10)


@dataclass(frozen=True)
class Measurement:
    wall_s: float
    cpu_s: float
    emulator_cpu_s: float
    tcp_connections: int
    token_requests: int
    http_requests: int


METRICS = (
    ("wall_s", "wall time (s)"),
    ("cpu_s", "client CPU time (s)"),
    ("emulator_cpu_s", "emulator CPU time (s)"),
    ("tcp_connections", "TCP connections (distinct client ip:port)"),
    ("token_requests", "token requests"),
    ("http_requests", "HTTP requests"),
)


def create_jobs(emu: Emulator, count: int, steps: int) -> list[str]:
    emu.control("POST", "/_emulator/scenario", {"vendor": "itwin", "scenario": {"steps": steps}, "default": True})
    hook = ITwinHook(CONN_ID)
    try:
        return [hook.submit({"name": f"bench-{i}", **JOB_SPEC}) for i in range(count)]
    finally:
        hook.session.close()


async def wait_with_triggers(job_ids: Sequence[str], interval: float) -> list[str]:
    policy = PollPolicy.fixed(interval).to_dict()
    deadline = time.time() + RUN_TIMEOUT

    async def one(job_id: str) -> str:
        trigger = JobProgressTrigger(
            hook_class_path=HOOK_PATH, conn_id=CONN_ID, job_id=job_id, poll_policy=policy, deadline=deadline
        )
        events = [event async for event in trigger.run()]
        return str(events[0].payload["status"]) if len(events) == 1 else f"{len(events)} events"

    try:
        return await asyncio.gather(*(one(job_id) for job_id in job_ids))
    finally:
        await ASYNC_SESSIONS.aclose_all()


async def wait_naively(job_ids: Sequence[str], interval: float, conn: dict[str, Any], max_polls: int) -> list[str]:
    extra = conn["extra"]
    form = {
        "grant_type": "client_credentials",
        "client_id": conn["login"],
        "client_secret": conn["password"],
        "scope": extra["scope"],
    }
    jobs_url = f"{extra['base_url']}/realitydataanalysis/jobs"

    async def one(job_id: str) -> str:
        for _ in range(max_polls):
            async with httpx.AsyncClient(timeout=60.0) as client:
                token = (await client.post(extra["auth_url"], data=form)).raise_for_status().json()["access_token"]
                headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
                progress = await client.get(f"{jobs_url}/{job_id}/progress", headers=headers)
                if progress.status_code == 404:  # progress is gone once the job ended: its details tell how
                    details = (await client.get(f"{jobs_url}/{job_id}", headers=headers)).raise_for_status()
                    return {"success": "success"}.get(details.json()["job"]["state"], "not success")
                progress.raise_for_status()
            await asyncio.sleep(interval)
        return f"still running after {max_polls} polls"

    return await asyncio.gather(*(one(job_id) for job_id in job_ids))


def measure(emu: Emulator, job_ids: Sequence[str], wait: Callable[[], Awaitable[list[str]]]) -> Measurement:
    first_call = len(emu.calls())
    cpu0, emu_cpu0, wall0 = time.process_time(), emu.cpu_seconds(), time.perf_counter()
    statuses = asyncio.run(asyncio.wait_for(wait(), RUN_TIMEOUT))
    wall, cpu, emu_cpu = time.perf_counter() - wall0, time.process_time() - cpu0, emu.cpu_seconds() - emu_cpu0
    bad = [status for status in statuses if status != "success"]
    if bad or len(statuses) != len(job_ids):
        raise SystemExit(f"benchmark invalid: {len(bad)} of {len(job_ids)} waits did not end in success: {bad[:3]}")
    calls = emu.calls()[first_call:]
    return Measurement(
        wall_s=wall,
        cpu_s=cpu,
        emulator_cpu_s=emu_cpu,
        tcp_connections=len({call["peer"] for call in calls}),
        token_requests=sum(1 for call in calls if call["method"] == "POST" and call["path"] == "/connect/token"),
        http_requests=len(calls),
    )


def markdown(summary: Summary, args: argparse.Namespace) -> str:
    lines = [
        f"{args.waits} concurrent iTwin waits, {args.steps} steps each, poll every {args.interval} s, "
        f"{args.repeats} repeats: median (min-max)",
        "",
        "| metric | ours: JobProgressTrigger | reference: client + token per poll | reference / ours |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in METRICS:
        digits = 2 if key.endswith("_s") else 0
        row = summary[key]
        lines.append(
            f"| {label} | {cell(row['ours'], digits)} | {cell(row['reference'], digits)} | {cell(row['ratio'], 1)}x |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--waits", type=int, default=200, help="concurrent waits (default 200)")
    parser.add_argument("--steps", type=int, default=5, help="progress steps per job, one per poll (default 5)")
    parser.add_argument("--interval", type=float, default=0.05, help="fixed poll interval in seconds (default 0.05)")
    parser.add_argument("--repeats", type=int, default=3, help="ours/reference pairs to run (default 3)")
    parser.add_argument("--json", action="store_true", help="print the raw measurements and summary as JSON")
    args = parser.parse_args(argv)
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
    max_polls = 4 * (args.steps + 2)
    runs: dict[str, list[Measurement]] = {"ours": [], "reference": []}
    with emulator_process() as emu:
        os.environ.update({f"AIRFLOW_CONN_{conn_id.upper()}": value for conn_id, value in emu.connections.items()})
        conn = json.loads(emu.connections[CONN_ID])
        for repeat in range(args.repeats):
            variants: dict[str, Callable[[Sequence[str]], Callable[[], Awaitable[list[str]]]]] = {
                "ours": lambda ids: lambda: wait_with_triggers(ids, args.interval),
                "reference": lambda ids: lambda: wait_naively(ids, args.interval, conn, max_polls),
            }
            # Alternate which variant goes first, so a slow start or a drifting machine favours neither.
            order = ["ours", "reference"] if repeat % 2 == 0 else ["reference", "ours"]
            for name in order:
                job_ids = create_jobs(emu, args.waits, args.steps)
                runs[name].append(measure(emu, job_ids, variants[name](job_ids)))
                print(f"repeat {repeat + 1}/{args.repeats} {name}: {runs[name][-1]}", file=sys.stderr)
    summary = summarize({name: [asdict(m) for m in ms] for name, ms in runs.items()}, [key for key, _ in METRICS])
    if args.json:
        raw = {name: [asdict(m) for m in measured] for name, measured in runs.items()}
        print(json.dumps({"args": vars(args), "runs": raw, "summary": summary}, indent=2))
    else:
        print(markdown(summary, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
