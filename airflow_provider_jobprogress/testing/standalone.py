"""The real Airflow UI in one command: ``airflow standalone`` with the example DAGs, wired to the vendor emulators.

``make airflow`` (or ``python -m airflow_provider_jobprogress.testing.standalone``) starts the vendor emulators,
stores their connections in Airflow's database (so they show under Admin > Connections, with their forms and
Test button), points Airflow at the example DAGs, starts ``airflow standalone`` (api-server, scheduler,
dag-processor, triggerer) and prints the address and login. Jobs last ``--job-seconds`` so their progress can
be watched in a deferred task's log. Ctrl-C stops everything it started. Nothing outside 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from airflow_provider_jobprogress.testing.demo import default_dags_folder
from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from airflow_provider_jobprogress.testing.emulators.cli import import_json, write_connections_file
from airflow_provider_jobprogress.testing.emulators.model import VENDORS

DEFAULT_PORT = 8080
#: standalone's components must all heartbeat before the UI is useful; a loaded 2-core machine needs a while
READY_TIMEOUT = 300.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_jobprogress.testing.standalone",
        description="airflow standalone with the example DAGs and connections to the vendor emulators",
    )
    parser.add_argument("--home", type=Path, help="AIRFLOW_HOME to use and keep (default: a new temporary one)")
    parser.add_argument("--dags-folder", type=Path, default=None, help="DAG folder (default: the example DAGs)")
    parser.add_argument(
        "--port", type=int, default=0, help=f"api-server port (default {DEFAULT_PORT}, or a free one if taken)"
    )
    parser.add_argument("--job-seconds", type=float, default=30.0, help="how long each emulated job runs")
    parser.add_argument("--poll-seconds", type=float, default=3.0, help="the example DAGs' poll interval")
    return parser


def free_port(preferred: int = 0) -> int:
    """``preferred`` when nothing listens there, else a port the kernel picks."""
    for candidate in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def airflow_env(home: Path, dags_folder: Path, port: int, poll_seconds: float) -> dict[str, str]:
    """A self-contained configuration: the user's own AIRFLOW_* settings would point elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__"))}
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        {
            # standalone starts its components as `airflow <component>`: this environment's airflow first
            "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__WORKERS": "1",
            # the scheduler's and triggerer's log servers bind fixed ports by default (8793, 8794)
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "JOBPROGRESS_EXAMPLE_POLL_SECONDS": str(poll_seconds),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _airflow(env: dict[str, str], *args: str) -> None:
    airflow = str(Path(sys.executable).with_name("airflow"))
    done = subprocess.run([airflow, *args], env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as answer:  # noqa: S310 - our URL
            body = json.load(answer)
    except (OSError, urllib.error.URLError, ValueError):
        return False
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all(body.get(part, {}).get("status") == "healthy" for part in parts)


def login_of(home: Path) -> tuple[str, str]:
    """The admin login standalone generated (simple auth manager), read from its password file."""
    generated = home / "simple_auth_manager_passwords.json.generated"
    passwords: dict[str, str] = json.loads(generated.read_text())
    user, password = next(iter(passwords.items()))
    return user, password


def stop_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM standalone's process group, SIGKILL what is left after ``grace`` s: a scheduler's LocalExecutor
    workers can outlive a SIGTERM for minutes. Only this group is signalled."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    home = (args.home or Path(tempfile.mkdtemp(prefix="jobprogress-airflow-"))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    dags_folder = (args.dags_folder or default_dags_folder()).resolve()
    port = args.port or free_port(DEFAULT_PORT)
    url = f"http://127.0.0.1:{port}"
    env = airflow_env(home, dags_folder, port, args.poll_seconds)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    print(f"Airflow home {home}: migrating the metadata database…", flush=True)
    _airflow(env, "db", "migrate")
    with VendorEmulator() as emulator:
        for vendor in VENDORS:
            emulator.set_default_scenario(vendor, Scenario(duration=args.job_seconds, steps=6, result_size=64 * 1024))
        connections = home / "jobprogress-connections.json"
        write_connections_file(connections, import_json(emulator))
        _airflow(env, "connections", "import", str(connections), "--overwrite")
        stored = ", ".join(import_json(emulator))
        print(f"vendor emulators on {emulator.url}; their connections stored in Airflow: {stored}", flush=True)
        log_path = home / "standalone.log"
        with log_path.open("ab") as log:
            airflow = str(Path(sys.executable).with_name("airflow"))
            proc = subprocess.Popen(
                [airflow, "standalone"],
                env=env,
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            print(f"starting airflow standalone (pid {proc.pid}; its output: {log_path})…", flush=True)
            deadline = time.monotonic() + READY_TIMEOUT
            while not _healthy(url):
                if proc.poll() is not None or stop.is_set() or time.monotonic() > deadline:
                    reason = "exited" if proc.poll() is not None else "stopped" if stop.is_set() else "not ready"
                    print(f"airflow standalone {reason}; the end of its output:", file=sys.stderr)
                    print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
                    return 1
                time.sleep(1)
            user, password = login_of(home)
            control = shlex.quote(json.dumps({"vendor": "itwin", "scenario": {"outcome": "fail", "message": "bad"}}))
            print(
                f"\nAirflow UI: {url}  login: {user}  password: {password}\n"
                f"  DAGs: {dags_folder} (tag jobprogress); trigger one, open its 'wait' task's log to see progress.\n"
                f"  Connections: Admin > Connections; Test calls the emulator. Results: /tmp/jobprogress-results\n"
                f"  Next iTwin job fails: curl -X POST {emulator.url}/_emulator/scenario -d {control}\n"
                f"Ctrl-C stops Airflow and the emulators.",
                flush=True,
            )
            while not stop.is_set() and proc.poll() is None:
                stop.wait(1)
            return 0 if stop.is_set() else 1
        finally:
            print("stopping airflow standalone…", flush=True)
            stop_group(proc)


if __name__ == "__main__":
    sys.exit(main())
