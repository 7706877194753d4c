"""The `jobprogress-emulator` command: serve the three vendor emulators until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import shlex
import signal
import threading
from collections.abc import Sequence
from types import FrameType

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    emulator = VendorEmulator(
        args.host,
        args.port,
        token_ttl=args.token_ttl,
        olconnect_security=not args.olconnect_no_security,
        retention=args.retention,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    with emulator:
        print(f"jobprogress-emulator serving on {emulator.url}", flush=True)
        for conn_id, conn_json in emulator.connections().items():
            print(f"export AIRFLOW_CONN_{conn_id.upper()}={shlex.quote(conn_json)}", flush=True)
        # A timed wait keeps the main thread responsive to signals on every platform.
        while not stop.wait(0.5):
            pass
    return 0
