"""A real Airflow deployment for tests: api-server, scheduler, dag-processor and triggerer as separate processes.

Each component runs as users run it (``airflow <component>``), in its own process group, with LocalExecutor
and SQLite in a throwaway ``AIRFLOW_HOME``; connections come from ``AIRFLOW_CONN_*`` variables pointing at a
``VendorEmulator`` in the test process. Drive it over the REST API (``/api/v2``).

Facts checked against the installed Airflow (3.3.2):

- ``[core] simple_auth_manager_all_admins = True``: on 3.3 ``SimpleAllAdminMiddleware`` adds an admin bearer
  token to every request; 3.1 has no such middleware and answers 401, but both serve ``GET /auth/token``
  (no credentials) with an admin token, so the client fetches one (``api_fastapi/auth/managers/simple``).
- Paths (``api_fastapi/core_api/routes/public``, all under ``/api/v2``): ``GET /monitor/health``,
  ``GET /dags/{dag_id}``, ``POST /dags/{dag_id}/dagRuns`` (``logical_date`` is required, may be null),
  ``GET /dags/{dag_id}/dagRuns/{run_id}``, ``GET|PATCH /dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}``
  (PATCH body ``{"new_state": "failed"}``),
  ``GET /dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from airflow_provider_jobprogress.testing.emulators import VendorEmulator
from tests.conftest import DAG_BUNDLES_JSON

ROOT = Path(__file__).resolve().parent.parent
DAGS_FOLDER = ROOT / "tests" / "dags"  # the same DAGs the dag.test() tests run
#: the shipped example DAGs the deployment runs as users would
EXAMPLE_DAGS = (
    "example_olconnect_print",
    "example_scriptx_print_pdf",
    "example_itwin_reality_analysis",
    "example_itwin_reality_analysis_v2",
)
BIN = Path(sys.executable).parent
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
TERMINAL_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
# A fixed Fernet key (urlsafe base64 of 32 bytes) and JWT secret: test values, not secrets.
FERNET_KEY = "dGVzdC1vbmx5LWZlcm5ldC1rZXktMzItYnl0ZXMhISE="
JWT_SECRET = "jobprogress-deployment-tests-jwt-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Call ``check`` until it returns something truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last error: {last_error!r})")
        time.sleep(interval)


class Deployment:
    """The running components, their logs, and REST helpers."""

    def __init__(self, home: Path, env: dict[str, str], port: int) -> None:
        self.home = home
        self.env = env
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.logs_dir = home / "component-logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.task_logs = home / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: dict[str, Path] = {}
        self._handles: list[IO[bytes]] = []
        self._starts: dict[str, int] = {}
        self._argv: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._env: dict[str, dict[str, str]] = {}
        self.client = httpx.Client(base_url=f"{self.base_url}/api/v2", timeout=30)

    # -- processes ---------------------------------------------------------------------------------
    def start(
        self,
        component: str,
        name: str | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``airflow <component>`` (``"celery worker"`` too); ``name`` (default: the component) tells two of
        a kind apart, and a later ``start(name)`` starts that one again with the same arguments. ``env`` adds
        to (or overrides) the deployment's environment for this one component, e.g. a setting of its own."""
        if name is None and component in self._argv:
            component, name = self._argv[component][0], component
        name = name or component
        if extra_args or env or name not in self._argv:
            self._argv[name] = (component, tuple(extra_args))
            self._env[name] = dict(env or {})
        extra_args = self._argv[name][1]
        n = self._starts[name] = self._starts.get(name, 0) + 1
        log_path = self.logs_dir / f"{name}.{n}.log"
        handle = log_path.open("ab")
        self._handles.append(handle)
        args = [str(BIN / "airflow"), *component.split(), *extra_args]
        if component == "api-server":
            args += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        elif component in ("scheduler", "triggerer"):
            # Their log servers bind every interface on fixed ports (8793/8794); logs are local files here.
            args.append("--skip-serve-logs")
        proc = subprocess.Popen(
            args,
            env={**self.env, **self._env.get(name, {})},
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        self._log_files[name if n == 1 else f"{name}#{n}"] = log_path
        return proc

    def stop(self, name: str, grace: float = 10.0) -> None:
        """SIGTERM the process group started as ``name``, SIGKILL it after ``grace`` seconds."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        stop_group(proc, grace)

    def kill(self, name: str) -> None:
        """SIGKILL the process group started as ``name`` at once: a host lost, nothing cleaned up."""
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def children(self, name: str) -> list[int]:
        """The pids of the processes that the main process started as ``name`` has started itself (Linux), e.g. a
        triggerer's runner, the process in which its triggers run."""
        pid = self.procs[name].pid
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def current_log(self, name: str) -> Path:
        """The log file of the latest start of ``name``."""
        n = self._starts[name]
        return self._log_files[name if n == 1 else f"{name}#{n}"]

    def restart(self, component: str, grace: float = 10.0) -> None:
        self.stop(component, grace)
        self.start(component)

    def stop_all(self, grace: float = 10.0) -> None:
        procs = list(self.procs.values())
        self.procs.clear()
        stop_groups(procs, grace)
        self.client.close()
        for handle in self._handles:
            handle.close()

    def log_tails(self, lines: int = 60) -> str:
        out = []
        for name, path in self._log_files.items():
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            out.append(f"----- {name} ({path}) last {lines} lines -----")
            out.extend(text[-lines:])
        return "\n".join(out)

    # -- readiness -----------------------------------------------------------------------------------
    def wait_ready(self, dag_ids: list[str], timeout: float = 150) -> None:
        def healthy() -> bool:
            self._check_alive()
            body = self.client.get("/monitor/health").json()
            return all(body.get(part, {}).get("status") == "healthy" for part in ("scheduler", "triggerer"))

        wait_for("scheduler and triggerer healthy", healthy, timeout)
        self._authenticate()
        for dag_id in dag_ids:
            wait_for(f"DAG {dag_id} parsed", functools.partial(self._dag_ready, dag_id), timeout)

    def _authenticate(self) -> None:
        """An admin token without credentials (all-admins mode), sent on every REST call."""
        response = httpx.get(f"{self.base_url}/auth/token", timeout=30)
        assert response.status_code in (200, 201), f"GET /auth/token answered {response.status_code}: {response.text}"
        self.client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def _dag_ready(self, dag_id: str) -> bool:
        self._check_alive()
        response = self.client.get(f"/dags/{dag_id}")
        if response.status_code != 200:
            return False
        if response.json().get("is_paused"):
            self.client.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        return True

    def check_alive(self) -> None:
        self._check_alive()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}\n{self.log_tails()}")

    # -- REST helpers ----------------------------------------------------------------------------------
    def trigger_run(self, dag_id: str, conf: dict[str, Any]) -> str:
        run_id = f"t_{uuid.uuid4().hex[:12]}"
        response = self.client.post(
            f"/dags/{dag_id}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": conf}
        )
        assert response.status_code == 200, response.text
        return str(response.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        response = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return str(response.json()["state"])

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 120) -> str:
        def done() -> str | None:
            self._check_alive()
            state = self.run_state(dag_id, run_id)
            return state if state in TERMINAL_RUN_STATES else None

        return str(wait_for(f"run {dag_id}/{run_id} to finish", done, timeout))

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        response = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        response.raise_for_status()
        return dict(response.json())

    def task_state(self, dag_id: str, run_id: str, task_id: str) -> str | None:
        return self.task_instance(dag_id, run_id, task_id).get("state")

    def wait_task_state(self, dag_id: str, run_id: str, task_id: str, state: str, timeout: float = 90) -> None:
        def reached() -> bool:
            self._check_alive()
            current = self.task_state(dag_id, run_id, task_id)
            if current in TERMINAL_TI_STATES and current != state:
                raise AssertionError(f"{dag_id}/{run_id}/{task_id} is {current}, never reached {state}")
            return current == state

        wait_for(f"{dag_id}/{run_id}/{task_id} to be {state}", reached, timeout)

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        """The XCom value as stored (the API answers the raw serialized value; JSON-decoded once here)."""
        response = self.client.get(
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"map_index": map_index},
        )
        assert response.status_code == 200, response.text
        return response.json()["value"]

    def mark_failed(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        response = self.client.patch(
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", json={"new_state": "failed"}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def task_log_dir(self, dag_id: str, run_id: str, task_id: str) -> Path:
        return self.task_logs / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"

    def trigger_logs(self, dag_id: str, run_id: str, task_id: str, attempt: int = 1) -> list[Path]:
        return sorted(self.task_log_dir(dag_id, run_id, task_id).glob(f"attempt={attempt}.log.trigger.*.log"))

    def trigger_log_text(self, dag_id: str, run_id: str, task_id: str, *lines: str, timeout: float = 60) -> str:
        """The trigger logs' text once every one of ``lines`` is in it: a trigger's log lines reach the file through
        the triggerer's supervisor, and on a loaded machine its last ones (the end it saw) can land after the
        resumed task, even the whole run, has finished. Lines that land after the supervisor handled the trigger's
        end go to the triggerer's own log instead (Airflow 3.3.2, ``TriggerRunnerSupervisor``: ``get_logger``
        falls back once the trigger's logger is gone, airflow/jobs/triggerer_job_runner.py): a line looked for is
        taken from there too, and added to the text. AssertionError with the text after ``timeout``."""
        text = ""

        def complete() -> bool:
            nonlocal text
            text = "".join(p.read_text(errors="replace") for p in self.trigger_logs(dag_id, run_id, task_id))
            missing = [line for line in lines if line not in text]
            if missing:
                own = "".join(p.read_text(errors="replace") for p in sorted(self.logs_dir.glob("triggerer*.log")))
                text += "".join(f"{entry}\n" for entry in own.splitlines() if any(line in entry for line in missing))
            return all(line in text for line in lines)

        try:
            wait_for(f"{lines} in the trigger log", complete, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {text[-2000:]}") from None
        return text


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a zombie leader not reaped yet counts as alive
        return True
    return True


def stop_groups(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM each process group, SIGKILL what is left after ``grace`` s (a scheduler given SIGTERM alone,
    or its LocalExecutor workers, may live on for minutes). Only these groups are signalled."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for proc in procs:
            proc.poll()  # reap the leader so an exited group reads as gone
        if not any(group_alive(proc.pid) for proc in procs):
            break
        time.sleep(0.2)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    stop_groups([proc], grace)


def airflow_env(home: Path, port: int, connections: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            # the tests' DAGs and the shipped examples, as two bundles
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": DAG_BUNDLES_JSON,
            "JOBPROGRESS_EXAMPLE_POLL_SECONDS": "0.5",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "16",
            "AIRFLOW__CORE__FERNET_KEY": FERNET_KEY,
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": JWT_SECRET,
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for conn_id, value in connections.items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = value
    return env


class _LogTailsOnFailure:
    """A pytest plugin registered while a deployment runs: a failing test's report gets each component's log tail."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
        outcome: Any = yield
        report = outcome.get_result()
        if report.failed and item.get_closest_marker("deployment") is not None:
            report.sections.append(("airflow component logs (tail)", self.deployment.log_tails()))


@pytest.fixture(scope="module")
def vendor_emulator() -> Iterator[VendorEmulator]:
    with VendorEmulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest, vendor_emulator: VendorEmulator) -> Iterator[Deployment]:
    """Airflow running for real (module scope); the DAGs in ``tests/dags`` parsed and unpaused."""
    home = Path(tempfile.mkdtemp(prefix="jobprogress-deploy-"))
    port = free_port()
    env = airflow_env(home, port, vendor_emulator.connections())
    migrate = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"], env=env, cwd=home, capture_output=True, text=True, timeout=180
    )
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    dep = Deployment(home, env, port)
    plugin = _LogTailsOnFailure(dep)
    request.config.pluginmanager.register(plugin, f"jobprogress-deployment-{port}")
    try:
        for component in COMPONENTS:
            dep.start(component)
        dep.wait_ready(
            [
                "jp_wait_deferrable",
                "jp_wait_cancel_on_kill",
                "jp_wait_in_triggerer",
                "jp_wait_poke",
                "jp_mapped_submit_wait_fetch",
                *EXAMPLE_DAGS,
            ]
        )
        yield dep
    except BaseException:
        sys.stderr.write(dep.log_tails() + "\n")
        raise
    finally:
        dep.stop_all()
        request.config.pluginmanager.unregister(plugin)
        if not os.environ.get("JOBPROGRESS_KEEP_DEPLOYMENT"):
            shutil.rmtree(home, ignore_errors=True)
