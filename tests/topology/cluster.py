"""The production topology on one machine: PostgreSQL, Redis, the CeleryExecutor, two workers, two triggerers.

What runs (each in its own process group, started and stopped here, whatever happens):

- PostgreSQL (Debian's ``postgresql``): its own cluster in a temporary folder, run as an unprivileged user
  (``initdb`` refuses root), on 127.0.0.1 and a free port, the metadata database and Celery's result backend;
- Redis (Debian's ``redis-server``): Celery's broker, on 127.0.0.1, nothing persisted;
- moto's S3 server (``moto_server``): the results' object store;
- the vendor emulators (``VendorEmulator``, in this process: the scenario reads their own counts), with
  distinctive credentials so a log that holds one is found;
- Airflow: api-server, scheduler, dag-processor, two triggerers and two Celery workers (``airflow celery
  worker``), through ``tests/deployment.py``'s ``Deployment`` (processes, REST client, readiness).

Missing Debian packages are installed with apt-get (CI starts from a fresh machine); the Python side comes with
the ``topology`` extra (``make venv``). Connections are ``AIRFLOW_CONN_*`` variables (the environment-variable
secrets backend), as a production deployment would take them from its secrets backend.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from airflow_provider_jobprogress.testing.emulators import VendorEmulator
from tests.deployment import BIN, ROOT, Deployment, airflow_env, free_port, stop_group, wait_for

TOPOLOGY_DAGS = Path(__file__).resolve().parent / "dags"
#: the DAG bundles the dag-processor reads: the shipped examples and the scenario's mapped DAG
BUNDLES = json.dumps(
    [
        {"name": name, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {"path": str(p)}}
        for name, p in (("examples", ROOT / "dags_examples"), ("topology", TOPOLOGY_DAGS))
    ]
)
S3_CONN = "aws_default"
#: [triggerer] triggerer_health_check_threshold, Airflow's default (the checks read it too)
HEALTH_CHECK_THRESHOLD = 30
DEBIAN_PACKAGES = {"postgresql": "initdb", "redis-server": "redis-server"}


def _initdb() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return found[-1] if found else shutil.which("initdb")


def missing_debian_packages() -> list[str]:
    missing = []
    if _initdb() is None:
        missing.append("postgresql")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    return missing


def ensure_debian_packages() -> None:
    """Install PostgreSQL and Redis from Debian when they are missing (root, as CI is)."""
    missing = missing_debian_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"the topology needs Debian's {' '.join(missing)}: apt-get install {' '.join(missing)}")
    print(f"== installing {' '.join(missing)} (Debian) for the topology", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


def ensure_python_packages() -> None:
    try:
        import airflow.providers.celery  # noqa: F401
        import psycopg2  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            f"the topology needs the [topology] extra (celery and postgres providers): `make venv` ({exc})"
        ) from exc


def process_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system, reaped children included) of every live process in group ``pgid``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        # after the command: state ppid pgrp ... utime(14) stime(15) cutime(16) cstime(17), 1-based from pid
        if int(fields[2]) == pgid:
            total += sum(int(v) for v in fields[11:15])
    return total / ticks


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        parents[int(stat.split("/")[2])] = int(text[text.rfind(")") + 2 :].split()[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants. Airflow's supervisor puts each task process in a process group of its
    own (so it can signal the task's children), so a worker's process group does not hold its tasks."""
    parents = _parents()
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def ancestors(pid: int, parents: dict[int, int] | None = None) -> list[int]:
    """``pid`` and its ancestors, from ``parents`` (``pid -> parent``; read now when not given)."""
    parents, chain = parents if parents is not None else _parents(), []
    while pid in parents and pid > 1:
        chain.append(pid)
        pid = parents[pid]
    return chain


def _started(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): with the pid, names one process even after pid reuse."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()[19]


def identify(pids: list[int]) -> list[tuple[int, str]]:
    return [(pid, started) for pid in pids if (started := _started(pid)) is not None]


def kill_identified(processes: list[tuple[int, str]]) -> None:
    """SIGKILL each process that is still the one identified (never a later process that reused its pid)."""
    for pid, started in processes:
        if _started(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s group and every process below it: a host lost, its task processes too."""
    tree = identify(process_tree(pid))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    kill_identified(tree)


class Service:
    """A non-Airflow server (PostgreSQL, Redis, moto) in its own process group, with its log."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.name, self.proc, self.log = name, proc, log

    def alive(self) -> bool:
        return self.proc.poll() is None


class Topology:
    """Start everything (``start``), hand out the parts, stop everything (``stop``, also on any failure)."""

    def __init__(
        self, home: Path | None = None, *, workers: int = 2, triggerers: int = 2, concurrency: int = 8
    ) -> None:
        self.home = home or Path(tempfile.mkdtemp(prefix="jobprogress-topology-"))
        self.workers = [f"worker-{n}" for n in range(1, workers + 1)]
        self.triggerers = [f"triggerer-{n}" for n in range(1, triggerers + 1)]
        self.concurrency = concurrency
        self.services: dict[str, Service] = {}
        # Distinctive credentials: the scenario searches every log for each of them.
        self.secrets = {
            "olconnect_password": f"ol-pw-{secrets.token_hex(8)}",
            "scriptx_license": f"{secrets.token_hex(4)}-5c1d-4a0e-9b7e-{secrets.token_hex(6)}",
            "itwin_client_secret": f"itwin-secret-{secrets.token_hex(8)}",
        }
        self.aws_secret = f"aws-secret-{secrets.token_hex(8)}"
        self.emulator = VendorEmulator(secrets=self.secrets, retention=7200.0)
        self.deployment: Deployment | None = None
        #: triggerer name -> its TriggererJob id (the trigger table's triggerer_id)
        self.triggerer_jobs: dict[str, int] = {}
        self.pg_port = self.redis_port = self.s3_port = 0
        self.bucket = "jobprogress-results"
        self.local_results = self.home / "results"
        #: CPU seconds of component processes that were stopped or killed before the end
        self.cpu_spent: dict[str, float] = {}
        self._started_at = time.monotonic()

    # -- the parts -----------------------------------------------------------------------------------------
    @property
    def dep(self) -> Deployment:
        assert self.deployment is not None, "the topology is not started"
        return self.deployment

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def db_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.pg_port} dbname=airflow user=airflow"

    def db(self) -> Any:
        import psycopg2

        conn = psycopg2.connect(self.db_dsn)
        conn.autocommit = True
        return conn

    def s3(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id="topology",
            aws_secret_access_key=self.aws_secret,
            region_name="us-east-1",
        )

    # -- start -----------------------------------------------------------------------------------------------
    def start(self) -> Topology:
        ensure_debian_packages()
        ensure_python_packages()
        self.local_results.mkdir(parents=True, exist_ok=True)
        self._start_postgres()
        self._start_redis()
        self._start_moto()
        self.emulator.start()
        env = self._airflow_env()
        migrate = subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"], env=env, cwd=self.home, capture_output=True, text=True, timeout=600
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrate.stdout[-3000:]}{migrate.stderr[-3000:]}")
        dep = self.deployment = Deployment(self.home, env, int(env["AIRFLOW__API__PORT"]))
        for component in ("api-server", "scheduler", "dag-processor"):
            dep.start(component)
        for name in self.triggerers:
            # one after the other: each one's TriggererJob row tells which process holds which triggers
            known = self._triggerer_job_ids()
            dep.start("triggerer", name=name)

            def registered(known: set[int] = known) -> int | None:
                new = self._triggerer_job_ids() - known
                return new.pop() if new else None

            self.triggerer_jobs[name] = int(wait_for(f"{name} to register", registered, 180))
        for name in self.workers:
            self.start_worker(name)
        dep.wait_ready([], timeout=240)
        for name in self.workers:
            self.wait_worker_ready(name)
        return self

    def _triggerer_job_ids(self) -> set[int]:
        conn = self.db()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id FROM job WHERE job_type = 'TriggererJob'")
                return {row[0] for row in cur.fetchall()}
        finally:
            conn.close()

    def start_worker(self, name: str) -> None:
        self.dep.start(
            "celery worker",
            name=name,
            extra_args=["--celery-hostname", f"{name}@%h", "--concurrency", str(self.concurrency), "--skip-serve-logs"],
        )

    def wait_worker_ready(self, name: str, timeout: float = 180) -> None:
        """Celery prints "<hostname> ready." once it consumes from the broker."""
        log = self.dep.current_log(name)

        def ready() -> bool:
            self.dep.check_alive()
            return f"{name}@" in (text := log.read_text(errors="replace")) and " ready." in text

        wait_for(f"Celery {name} ready", ready, timeout)

    def _as_unprivileged(self) -> dict[str, Any]:
        """Popen arguments that run PostgreSQL as an unprivileged user (initdb and postgres refuse root)."""
        if os.geteuid() != 0:
            return {}
        for user in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(user)
                return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        raise RuntimeError("no unprivileged user (postgres, nobody) to run PostgreSQL as")

    def _start_postgres(self) -> None:
        initdb = _initdb()
        assert initdb is not None
        bindir = Path(initdb).parent
        pg_home = self.home / "postgres"
        pg_home.mkdir()
        who = self._as_unprivileged()
        if who:
            for path in (self.home, pg_home):
                os.chmod(path, 0o755)  # noqa: S103 - the unprivileged user must reach its folder; nothing secret in it
            os.chown(pg_home, who["user"], who["group"])
        data = pg_home / "data"
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "airflow", "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            cwd=pg_home,
            **who,
        )
        self.pg_port = free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.pg_port),
            "unix_socket_directories": str(pg_home),
            "max_connections": "300",
            # a throwaway cluster: durability buys nothing here and costs the shared disk
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        args = [str(bindir / "postgres"), "-D", str(data)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        self._spawn("postgres", args, cwd=pg_home, **who)

        def accepting() -> bool:
            self._check_services()
            import psycopg2

            try:
                conn = psycopg2.connect(f"host=127.0.0.1 port={self.pg_port} dbname=postgres user=airflow")
            except psycopg2.OperationalError:
                return False
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("CREATE DATABASE airflow")
            conn.close()
            return True

        wait_for("PostgreSQL to accept connections", accepting, 60)

    def _start_redis(self) -> None:
        self.redis_port = free_port()
        redis_dir = self.home / "redis"
        redis_dir.mkdir()
        args = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.redis_port),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self._spawn("redis", [*args, "--dir", str(redis_dir)], cwd=redis_dir)

        def pong() -> bool:
            self._check_services()
            import redis

            return bool(redis.Redis(host="127.0.0.1", port=self.redis_port, socket_timeout=2).ping())

        wait_for("Redis to answer PING", lambda: _quiet(pong), 30)

    def _start_moto(self) -> None:
        self.s3_port = free_port()
        self._spawn("moto-s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.s3_port)], cwd=self.home)

        def answering() -> bool:
            self._check_services()
            return httpx.get(self.s3_url, timeout=5).status_code < 500

        wait_for("moto's S3 server", answering, 60)
        self.s3().create_bucket(Bucket=self.bucket)

    def _spawn(self, name: str, args: list[str], cwd: Path, **kwargs: Any) -> None:
        log = self.home / f"{name}.log"
        handle = log.open("ab")
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )
        handle.close()
        self.services[name] = Service(name, proc, log)

    def _check_services(self) -> None:
        for service in self.services.values():
            if not service.alive():
                tail = service.log.read_text(errors="replace")[-3000:] if service.log.exists() else ""
                raise RuntimeError(f"{service.name} exited with {service.proc.returncode}:\n{tail}")

    def _airflow_env(self) -> dict[str, str]:
        port = free_port()
        connections = dict(self.emulator.connections())
        connections[S3_CONN] = json.dumps(
            {
                "conn_type": "aws",
                "login": "topology",
                "password": self.aws_secret,
                "extra": {"endpoint_url": self.s3_url, "region_name": "us-east-1"},
            }
        )
        env = airflow_env(self.home, port, connections)
        pg = f"airflow@127.0.0.1:{self.pg_port}/airflow"
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{pg}",
                "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{pg}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
                "AIRFLOW__CORE__DAGS_FOLDER": str(TOPOLOGY_DAGS),
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": BUNDLES,
                # no more task instances queued than the workers have slots: what waits in the broker is then only
                # what a worker reserved, and a reserved message of a SIGKILLed worker comes back only after the
                # broker's visibility timeout (a day): [scheduler] task_queued_timeout retries its task instead
                "AIRFLOW__CORE__PARALLELISM": str(self.concurrency * len(self.workers)),
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
                # Airflow's default, not the deployment tests' 10 s: a triggerer late by more than this loses its
                # triggers while it runs, and Airflow 3.3.2 then runs their on_kill (apache/airflow#73454), which
                # cancels the jobs of waits that own them; a loaded 2-core machine is late by 10 s at times
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(HEALTH_CHECK_THRESHOLD),
                # Airflow's advice for HA: well below capacity, so that both triggerers hold waits (with the default
                # 50 the first to look takes every wait of a small burst)
                "AIRFLOW__TRIGGERER__MAX_TRIGGER_TO_SELECT_PER_LOOP": "4",
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "15",
                "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "256",
                "AIRFLOW__CORE__MAX_ACTIVE_RUNS_PER_DAG": "256",
                # a task whose worker died is failed after this long without a heartbeat, then retried
                "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "2",
                "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "3",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                "JOBPROGRESS_EXAMPLE_POLL_SECONDS": "2",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            }
        )
        return env

    # -- stop ------------------------------------------------------------------------------------------------
    def component_cpu(self) -> dict[str, float]:
        """CPU seconds per component so far: live process groups plus what stopped ones had spent."""
        spent = dict(self.cpu_spent)
        if self.deployment is not None:
            for name, proc in self.deployment.procs.items():
                spent[name] = spent.get(name, 0.0) + process_cpu_seconds(proc.pid)
        for name, service in self.services.items():
            if service.alive():
                spent[name] = spent.get(name, 0.0) + process_cpu_seconds(service.proc.pid)
        return spent

    def account(self, name: str) -> None:
        """Keep the CPU a component spent before it is stopped or killed."""
        proc = self.dep.procs.get(name)
        if proc is not None:
            self.cpu_spent[name] = self.cpu_spent.get(name, 0.0) + process_cpu_seconds(proc.pid)

    def kill(self, name: str) -> None:
        """SIGKILL a component and every process below it (its tasks too): a host lost, nothing cleaned up."""
        self.account(name)
        kill_tree(self.dep.procs[name].pid)
        self.dep.kill(name)

    def worker_running(self, pid: int | None, parents: dict[int, int] | None = None) -> str | None:
        """The Celery worker a task process ``pid`` runs under (``parents``: one reading of the process table for
        many questions, ``process_parents()``)."""
        if not pid:
            return None
        chain = set(ancestors(pid, parents))
        for name in self.workers:
            proc = self.dep.procs.get(name)
            if proc is not None and proc.pid in chain:
                return name
        return None

    @staticmethod
    def process_parents() -> dict[int, int]:
        """``pid -> parent pid`` of every live process, read once."""
        return _parents()

    def restart(self, name: str) -> None:
        self.account(name)
        self.dep.stop(name)
        self.dep.start(name)

    def stop(self) -> None:
        """Airflow first (SIGTERM, then SIGKILL: its clients go before the database), then the services."""
        try:
            if self.deployment is not None:
                # task processes sit in process groups of their own: whatever outlives its worker goes too
                trees = [identify(process_tree(proc.pid)) for proc in self.deployment.procs.values()]
                self.deployment.stop_all(grace=15)
                for tree in trees:
                    kill_identified(tree)
        finally:
            self.emulator.stop()
            for service in reversed(list(self.services.values())):
                if service.name == "postgres" and service.alive():
                    with contextlib.suppress(ProcessLookupError):
                        service.proc.send_signal(signal.SIGINT)  # fast shutdown: no waiting for clients
                stop_group(service.proc, grace=15)

    def remove(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Topology:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_files(self) -> Iterator[Path]:
        """Every log any component wrote: component logs, task and trigger logs, the services' logs."""
        for path in self.home.rglob("*"):
            if path.is_file() and (path.suffix == ".log" or "logs" in path.parts):
                yield path


def _quiet(check: Any) -> Any:
    try:
        return check()
    except Exception:
        return False


if __name__ == "__main__":  # a quick look: start, print the addresses, stop on Enter
    with Topology() as topo:
        print(topo.dep.base_url, topo.home, file=sys.stderr)
        input("running; Enter stops it")
