"""Airflow's contracts on our sensors and operators: mapped jobs, soft_fail, who cancels, one deadline rule."""

from __future__ import annotations

import hashlib
import importlib.util
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowSkipException

from airflow_provider_jobprogress.core.errors import AuthenticationError, DeadlineExceededError
from airflow_provider_jobprogress.core.model import JobState
from airflow_provider_jobprogress.hooks.olconnect import OLConnectHook
from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
from airflow_provider_jobprogress.operators.itwin import ITwinSubmitJobOperator
from airflow_provider_jobprogress.operators.olconnect import OLConnectSubmitOperator
from airflow_provider_jobprogress.operators.scriptx import ScriptXPrintPdfOperator
from airflow_provider_jobprogress.sensors.itwin import ITwinJobSensor
from airflow_provider_jobprogress.sensors.job_progress import JobProgressSensor
from airflow_provider_jobprogress.sensors.olconnect import OLConnectOperationSensor
from airflow_provider_jobprogress.sensors.scriptx import ScriptXJobSensor
from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from airflow_provider_jobprogress.triggers.job_progress import LAST_LOOK_BUDGET, ON_KILL_BUDGET, JobProgressTrigger
from tests.test_sensors_dag import run_dag, states
from tests.test_trigger_contracts import silent_server

__all__ = ["silent_server"]  # the fixture, shared with test_trigger_contracts

try:
    from airflow.sdk.exceptions import TaskDeferralTimeout, TaskDeferred
except ImportError:  # Airflow < 3.2
    from airflow.exceptions import TaskDeferralTimeout, TaskDeferred  # type: ignore[no-redef,attr-defined]

DAG_FILE = Path(__file__).parent / "dags" / "jp_contracts.py"
TIMEOUT_KWARGS = {"error": "Trigger timeout"}  # what Airflow resumes a task with when its deferral timed out


def load(dag_id: str) -> Any:
    spec = importlib.util.spec_from_file_location("jp_contracts_dags", DAG_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(v for v in vars(module).values() if getattr(v, "dag_id", None) == dag_id)


def mapped_xcoms(run: Any, task_id: str, key: str = "return_value") -> dict[int, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == run.dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
            )
        )
        return {row.map_index: XComModel.deserialize_value(row) for row in rows}


def mapped_states(run: Any) -> dict[tuple[str, int], str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id)
        )
        return {(ti.task_id, ti.map_index): str(ti.state) for ti in rows}


class FakeTaskInstance:
    """The one TaskInstance method the timeout path uses: the job id this map index pushed."""

    def __init__(self, pushed: dict[int, str], map_index: int = -1) -> None:
        self.pushed = pushed
        self.map_index = map_index

    def xcom_pull(self, *, task_ids: str, key: str, map_indexes: int | None = None) -> Any:
        assert key == "job_id"
        return self.pushed[self.map_index if map_indexes is None else map_indexes]


# -- mapped submits ------------------------------------------------------------------------------
def test_each_mapped_submit_keeps_its_own_job_through_wait_and_fetch(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    emulator.set_default_scenario("scriptx", Scenario(steps=2, result_size=20_000))
    run = load("jp_mapped_submit_wait_fetch").test(run_conf={"out": str(tmp_path)})
    assert set(mapped_states(run).values()) == {"success"}, mapped_states(run)
    job_ids = mapped_xcoms(run, "print")
    assert sorted(job_ids) == [0, 1, 2]
    assert all(isinstance(j, str) for j in job_ids.values()), job_ids
    assert len(set(job_ids.values())) == 3, "each map index submitted its own job"
    progress = mapped_xcoms(run, "print", key="progress")
    assert {i: p["job_id"] for i, p in progress.items()} == job_ids
    for index, stored in mapped_xcoms(run, "fetch").items():
        item = stored[0] if isinstance(stored, list) else stored
        path = Path(item["uri"].removeprefix("file://"))
        assert path.parent == tmp_path / str(index)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == emulator.result_sha256("scriptx", job_ids[index], 0)


# -- soft_fail: one rule ---------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [0, 2], ids=["failed before the first read", "failed while deferred"])
@pytest.mark.parametrize(("dag_id", "expected"), [("jp_wait_soft_fail", "skipped"), ("jp_wait_deferrable", "failed")])
def test_a_failed_job_gives_the_same_outcome_whenever_it_failed(
    airflow_db: Path, emulator: VendorEmulator, steps: int, dag_id: str, expected: str
) -> None:
    emulator.set_next_scenario("olconnect", Scenario(outcome="fail", steps=steps, message="out of toner"))
    assert states(run_dag(dag_id, "olconnect"))["wait"] == expected


def test_soft_fail_does_not_hide_an_error_reaching_the_vendor(airflow_db: Path, emulator: VendorEmulator) -> None:
    run = load("jp_soft_fail_from_conf").test(run_conf={"vendor": "scriptx", "job": "no-such-token"})
    assert states(run)["wait"] == "failed"


def test_soft_fail_does_not_hide_an_error_event_from_the_trigger() -> None:
    sensor = ScriptXJobSensor(task_id="wait", job_id="j", soft_fail=True)
    event = {"status": "error", "progress": None, "message": "ScriptX.Services: refused"}
    event["error"] = "AuthenticationError"
    with pytest.raises(AuthenticationError, match="refused"):
        sensor.resume_execution("execute_complete", {"event": event}, {})


# -- who cancels what ------------------------------------------------------------------------------
def test_sensors_do_not_cancel_jobs_they_do_not_own_by_default() -> None:
    sensors = [
        JobProgressSensor(task_id="a", conn_id="scriptx_default", job_id="j"),
        OLConnectOperationSensor(task_id="b", job_id="j"),
        ScriptXJobSensor(task_id="c", job_id="j"),
        ITwinJobSensor(task_id="d", job_id="j"),
    ]
    assert [s.cancel_on_kill for s in sensors] == [False] * 4
    _, kwargs = sensors[1]._trigger("j", timeout=60).serialize()
    assert kwargs["cancel_on_kill"] is False


def test_submit_operators_cancel_the_job_they_own_when_killed() -> None:
    operators = [
        OLConnectSubmitOperator(task_id="a", configuration={}),
        ScriptXPrintPdfOperator(task_id="b", document="https://example.invalid/a.pdf"),
        ITwinSubmitJobOperator(task_id="c", specification={}),
    ]
    assert [o.cancel_on_kill for o in operators] == [True] * 3


# -- one deadline rule -----------------------------------------------------------------------------
def deferral(operator: Any, job_id: str, timeout: float) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as raised:
        operator._defer_wait(job_id, timeout=timeout)
    return raised.value


def test_airflows_deferral_timeout_is_a_backstop_after_the_trigger_deadline() -> None:
    sensor = OLConnectOperationSensor(task_id="wait", job_id="op", cancel_on_timeout=True)
    before = time.time()
    deferred = deferral(sensor, "op", timeout=100)
    trigger = deferred.trigger
    assert isinstance(trigger, JobProgressTrigger)
    assert trigger.deadline is not None
    assert before + 100 <= trigger.deadline <= time.time() + 100
    assert isinstance(deferred.timeout, timedelta)
    # the trigger speaks first: it reads once more, cancels within its budgets, reports before Airflow times out
    assert deferred.timeout.total_seconds() >= 100 + LAST_LOOK_BUDGET + ON_KILL_BUDGET + 10


def test_the_first_poll_waits_until_airflow_has_settled_the_deferral(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow <= 3.3.2 fails a deferred task whose trigger fires before the executor reported the deferring
    process (apache/airflow#72716), which takes up to the workers' min_heartbeat_interval."""
    monkeypatch.setenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "5")
    sensor = ScriptXJobSensor(task_id="wait", job_id="t", poll_policy=0.5)
    before = time.time()
    trigger = deferral(sensor, "t", timeout=600).trigger
    assert trigger.first_poll_at is not None
    assert trigger.first_poll_at >= before + 10


def test_the_first_poll_waits_one_interval_when_that_is_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "5")
    sensor = ITwinJobSensor(task_id="wait", job_id="t", poll_policy=60)
    before = time.time()
    trigger = deferral(sensor, "t", timeout=600).trigger
    assert trigger.first_poll_at is not None
    assert trigger.first_poll_at >= before + 60 * 0.9


def test_the_submit_operator_resumes_with_its_own_job_id() -> None:
    operator = OLConnectSubmitOperator(task_id="submit", configuration={}, wait_for_completion=True)
    deferred = deferral(operator, "op-7", timeout=60)
    assert deferred.kwargs == {"job_id": "op-7"}


def test_submit_operator_cancels_when_airflows_deferral_timeout_wins(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(steps=100_000))
    job_id = OLConnectHook().submit({"datamining": {"identifier": "a.csv", "config": "dm"}})
    operator = OLConnectSubmitOperator(
        task_id="submit", configuration={}, wait_for_completion=True, cancel_on_timeout=True
    )
    context = {"ti": FakeTaskInstance({2: job_id}, map_index=2)}
    with pytest.raises(TaskDeferralTimeout):
        operator.resume_execution("__fail__", TIMEOUT_KWARGS, context)
    assert emulator.count("POST", f"/cancel/{job_id}") == 1


def test_soft_fail_sensor_still_cancels_when_airflows_deferral_timeout_wins(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(steps=100_000))
    job_id = OLConnectHook().submit({"datamining": {"identifier": "a.csv", "config": "dm"}})
    sensor = OLConnectOperationSensor(task_id="wait", job_id=job_id, soft_fail=True, cancel_on_timeout=True)
    with pytest.raises(AirflowSkipException):
        sensor.resume_execution("__fail__", TIMEOUT_KWARGS, {})
    assert emulator.count("POST", f"/cancel/{job_id}") == 1


def test_a_rate_limit_pause_on_a_worker_ends_at_the_deadline(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(rate_limit=3, retry_after=60, steps=1))
    hook = OLConnectHook()
    job_id = hook.submit({"datamining": {"identifier": "a.csv", "config": "dm"}})
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError, match=job_id):
        hook.get_progress(job_id, deadline=time.time() + 1)
    assert time.monotonic() - started < 10


def test_a_poking_sensor_times_out_on_time_through_rate_limit_pauses(
    airflow_db: Path, emulator: VendorEmulator
) -> None:
    emulator.set_next_scenario("olconnect", Scenario(rate_limit=20, retry_after=60, steps=1))
    started = time.monotonic()
    run = run_dag("jp_wait_poke_deadline", "olconnect")
    assert states(run)["wait"] == "failed"
    assert time.monotonic() - started < 45, "the 2 s timeout was kept, not 20 pauses of 60 s"


def test_worker_on_kill_is_bounded_when_the_vendor_hangs(
    silent_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = silent_server
    monkeypatch.setenv(
        "AIRFLOW_CONN_HANGING", f'{{"conn_type": "olconnect", "host": "{host}", "port": {port}, "schema": "http"}}'
    )
    monkeypatch.setattr("airflow_provider_jobprogress.waiting.ON_KILL_BUDGET", 1.5)
    sensor = JobProgressSensor(task_id="wait", conn_id="hanging", job_id="op", cancel_on_kill=True)
    started = time.monotonic()
    sensor.on_kill()
    assert time.monotonic() - started < 4


def test_fetch_operator_never_cancels() -> None:
    assert FetchJobResultOperator(task_id="f", conn_id="scriptx_default", job_id="j").cancel_on_kill is False


# -- the last look at the deadline, on a worker -------------------------------------------------------
def finish_after_its_first_read(emulator: VendorEmulator, job_id: str) -> threading.Thread:
    """End an OL Connect job as soon as the wait has read it once (running), from another thread."""

    def finish() -> None:
        deadline = time.monotonic() + 10
        while emulator.job("olconnect", job_id).status_calls < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        emulator.finish_jobs("olconnect", [job_id])

    thread = threading.Thread(target=finish, daemon=True)
    thread.start()
    return thread


def test_a_worker_wait_reads_once_more_at_the_deadline(emulator: VendorEmulator) -> None:
    """A submit operator waiting on the worker sleeps to a deadline inside its interval, then reads the job again:
    one that ended meanwhile is a success, not a timeout, and is not cancelled."""
    emulator.set_next_scenario("olconnect", Scenario(steps=10_000))  # ends only when told to
    job_id = OLConnectHook().submit({"datamining": {"identifier": "a.csv", "config": "dm"}})
    finish_after_its_first_read(emulator, job_id)
    operator = OLConnectSubmitOperator(
        task_id="submit",
        configuration={},
        wait_for_completion=True,
        deferrable=False,
        poll_policy=60,
        cancel_on_timeout=True,
    )
    progress = operator._wait_here(job_id, timeout=3.0)
    assert progress.state is JobState.SUCCEEDED
    assert emulator.count("GET", f"/getProgress/{job_id}") == 2, "one read while running, one at the deadline"
    assert emulator.count("POST", f"/cancel/{job_id}") == 0


def test_a_poke_after_the_deadline_still_reads_the_job(emulator: VendorEmulator) -> None:
    """Airflow sleeps a whole poke interval, so a poke can come after the sensor's deadline: it reads the job
    before it calls the wait a timeout."""
    emulator.set_next_scenario("olconnect", Scenario(steps=10_000))  # ends only when told to
    job_id = OLConnectHook().submit({"datamining": {"identifier": "a.csv", "config": "dm"}})
    finish_after_its_first_read(emulator, job_id)
    sensor = OLConnectOperationSensor(
        task_id="wait",
        job_id=job_id,
        deferrable=False,
        mode="poke",
        poll_policy=4.0,
        timeout=2.0,  # the first poke's read (a login, then the progress) ends before it on a loaded machine
        cancel_on_timeout=True,
    )
    final = sensor.execute({})
    assert final["state"] == "succeeded"
    assert emulator.count("POST", f"/cancel/{job_id}") == 0


# -- [operators] default_deferrable -------------------------------------------------------------------------
def _waiting_tasks() -> list[Any]:
    return [
        JobProgressSensor(task_id="generic", conn_id="olconnect_default", job_id="j"),
        OLConnectOperationSensor(task_id="ol_wait", job_id="j"),
        ITwinJobSensor(task_id="it_wait", job_id="j"),
        OLConnectSubmitOperator(task_id="ol_submit", configuration={}, wait_for_completion=True),
        ScriptXPrintPdfOperator(task_id="sx_print", document="https://example.invalid/a.pdf"),
    ]


def test_a_deployment_that_says_nothing_defers() -> None:
    """Our promise: waiting is what the triggerer is for. Airflow writes its own default (false) into every new
    airflow.cfg, as it did into this test's: that is not the deployment's word."""
    assert [task.deferrable for task in _waiting_tasks()] == [True] * 5


@pytest.mark.parametrize("setting", ["false", "true"])
def test_the_deployments_default_deferrable_is_obeyed(monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", setting)
    assert [task.deferrable for task in _waiting_tasks()] == [setting == "true"] * 5


def test_the_dags_own_deferrable_wins_over_the_deployments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "false")
    assert OLConnectOperationSensor(task_id="w", job_id="j", deferrable=True).deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "true")
    assert OLConnectOperationSensor(task_id="w", job_id="j", deferrable=False).deferrable is False


def test_a_deployment_without_deferral_waits_on_the_worker(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """default_deferrable=false (a deployment with no triggerer): the sensor pokes instead of deferring."""
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "false")
    emulator.set_next_scenario("olconnect", Scenario(steps=3))
    job_id = OLConnectHook().submit({"datamining": {"identifier": "a.csv", "config": "dm"}})
    sensor = OLConnectOperationSensor(task_id="wait", job_id=job_id, poll_policy=0.05, timeout=60)
    final = sensor.execute({})  # deferring would raise TaskDeferred here
    assert final["state"] == "succeeded"
