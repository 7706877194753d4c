"""The `jobprogress-emulator` command: serve the three vendor emulators until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .model import VENDORS, Quota, Scenario, ScenarioError
from .server import VendorEmulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobprogress-emulator",
        description="Serve local emulators of OL Connect, ScriptX.Services and iTwin for tests and DAG development.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument("--token-ttl", type=int, default=3600, help="lifetime of issued tokens in seconds")
    parser.add_argument("--retention", type=float, default=300.0, help="seconds OL Connect keeps ended operations")
    parser.add_argument("--olconnect-no-security", action="store_true", help="OL Connect answers without credentials")
    parser.add_argument(
        "--connections-file",
        type=Path,
        metavar="FILE",
        help="also write the connections to FILE (JSON) for `airflow connections import FILE --overwrite`, "
        "which stores them in Airflow's database: they then show under Admin > Connections, with their forms "
        "and Test button (AIRFLOW_CONN_* variables do not)",
    )
    parser.add_argument(
        "--job-seconds",
        type=float,
        metavar="SECONDS",
        help="every job runs this long (in --steps progress steps) unless a scenario says otherwise; "
        "default: one step per progress read",
    )
    parser.add_argument("--steps", type=int, default=5, help="progress steps of a job run with --job-seconds")
    parser.add_argument(
        "--quota",
        type=_quota,
        action="append",
        default=[],
        metavar="VENDOR=CALLS/SECONDS",
        help="hold a vendor to CALLS calls in any SECONDS (a sliding window), past it 429 with Retry-After, to "
        "rehearse a limit: e.g. itwin=500/60 (and itwin=5000/3600 too: Bentley's Trial tier); repeat for "
        f"more windows or vendors ({', '.join(VENDORS)}). iTwin counts per OAuth client",
    )
    return parser


def _quota(text: str) -> tuple[str, Quota]:
    vendor, equals, limit = text.partition("=")
    if not equals or vendor not in VENDORS:
        raise argparse.ArgumentTypeError(f"{text!r}: give VENDOR=CALLS/SECONDS, VENDOR one of {', '.join(VENDORS)}")
    try:
        return vendor, Quota.parse(limit)
    except ScenarioError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def import_json(emulator: VendorEmulator) -> dict[str, dict[str, Any]]:
    """The emulator's connections as ``airflow connections import`` reads them (conn id -> fields)."""
    written: dict[str, dict[str, Any]] = {}
    for conn_id, conn_json in emulator.connections().items():
        conn = json.loads(conn_json)
        # Airflow 3.3.2's connection list sends `port: Number(port)` (0 for none) with Test and refuses a stored
        # port that differs (apache/airflow#73298); 0 is "no port" to Airflow's URIs and to the hooks alike.
        conn.setdefault("port", 0)
        written[conn_id] = conn
    return written


def write_connections_file(path: Path, connections: Mapping[str, Mapping[str, Any]]) -> None:
    """Write the file whole or not at all (credentials inside: readable by the owner only)."""
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(connections, handle, indent=2)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quotas: dict[str, list[Quota]] = {}
    for vendor, quota in args.quota:
        quotas.setdefault(vendor, []).append(quota)
    emulator = VendorEmulator(
        args.host,
        args.port,
        token_ttl=args.token_ttl,
        olconnect_security=not args.olconnect_no_security,
        retention=args.retention,
        quotas=quotas,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    with emulator:
        if args.job_seconds:
            for vendor in VENDORS:
                emulator.set_default_scenario(vendor, Scenario(duration=args.job_seconds, steps=args.steps))
        if args.connections_file is not None:
            write_connections_file(args.connections_file, import_json(emulator))
        print(f"jobprogress-emulator serving on {emulator.url}", flush=True)
        for conn_id, conn_json in emulator.connections().items():
            print(f"export AIRFLOW_CONN_{conn_id.upper()}={shlex.quote(conn_json)}", flush=True)
        if args.connections_file is not None:
            command = f"airflow connections import {shlex.quote(str(args.connections_file))} --overwrite"
            print(f"# or store them in Airflow's database (shown in the UI): {command}", flush=True)
        for vendor, limits in quotas.items():
            print(f"# {vendor} quota: {' and '.join(map(str, limits))} (429 past it)", flush=True)
        # A timed wait keeps the main thread responsive to signals on every platform.
        while not stop.wait(0.5):
            pass
    return 0
