"""Sensors in real Airflow (``dag.test()`` on a migrated SQLite DB) against the emulators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator

DAG_FILE = Path(__file__).parent / "dags" / "jp_sensors.py"
VENDORS = ["olconnect", "scriptx", "itwin"]


def load(dag_id: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("jp_sensors_dags", DAG_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dags = {value.dag_id: value for value in vars(module).values() if hasattr(value, "dag_id")}
    return dags[dag_id]


def states(run: Any) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id)
        )
        return {ti.task_id: str(ti.state) for ti in rows}


def xcom(run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == run.dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def run_dag(dag_id: str, vendor: str) -> Any:
    return load(dag_id).test(run_conf={"vendor": vendor})


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("dag_id", ["jp_wait_deferrable", "jp_wait_poke", "jp_wait_reschedule"])
def test_job_succeeds_and_downstream_gets_the_progress_dict(
    airflow_db: Path, emulator: VendorEmulator, vendor: str, dag_id: str
) -> None:
    emulator.set_next_scenario(vendor, Scenario(steps=3))
    run = run_dag(dag_id, vendor)
    assert states(run) == {"submit": "success", "wait": "success", "downstream": "success"}
    final = xcom(run, "wait")
    assert final["state"] == "succeeded"
    assert final["vendor"]
    assert final["job_id"] == xcom(run, "submit")
    assert xcom(run, "downstream")["type"] == "dict"


@pytest.mark.parametrize("vendor", VENDORS)
def test_failed_job_fails_the_task_with_the_vendor_message(
    airflow_db: Path, emulator: VendorEmulator, vendor: str, capsys
) -> None:
    emulator.set_next_scenario(vendor, Scenario(outcome="fail", steps=2, message="the print spooler crashed"))
    run = run_dag("jp_wait_deferrable", vendor)
    assert states(run)["wait"] == "failed"
    assert states(run)["downstream"] == "upstream_failed"
    assert "the print spooler crashed" in capsys.readouterr().out


@pytest.mark.parametrize("vendor", VENDORS)
def test_cancelled_job_fails_or_skips_with_soft_fail(airflow_db: Path, emulator: VendorEmulator, vendor: str) -> None:
    emulator.set_next_scenario(vendor, Scenario(outcome="cancel", steps=1))
    assert states(run_dag("jp_wait_deferrable", vendor))["wait"] == "failed"
    emulator.set_next_scenario(vendor, Scenario(outcome="cancel", steps=1))
    assert states(run_dag("jp_wait_soft_fail", vendor))["wait"] == "skipped"


@pytest.mark.parametrize("vendor", VENDORS)
def test_deadline_times_out_and_cancels_the_remote_job(
    airflow_db: Path, emulator: VendorEmulator, vendor: str, capsys
) -> None:
    emulator.set_next_scenario(vendor, Scenario(steps=100_000))
    run = run_dag("jp_wait_deadline", vendor)
    out = capsys.readouterr().out
    wait_lines = [line for line in out.splitlines() if "wait" in line or "deadline" in line]
    assert states(run)["wait"] == "failed", (states(run), wait_lines[-30:])
    job_id = xcom(run, "submit")
    assert "not finished before the deadline" in out
    cancels = [c for c in emulator.calls if job_id in c.path and (c.method == "PATCH" or "/cancel/" in c.path)]
    if vendor == "scriptx":  # PrintPdf has no cancel: said in the log, nothing sent
        assert "not cancelled" in out
        assert not cancels
    else:
        # exactly one cancel (iTwin: the submitting PATCH, then the cancelling one)
        assert len(cancels) == (2 if vendor == "itwin" else 1), "cancel_on_timeout cancels the job once"


def test_job_already_finished_returns_without_deferring(airflow_db: Path, emulator: VendorEmulator, capsys) -> None:
    emulator.set_next_scenario("olconnect", Scenario(steps=0))
    run = run_dag("jp_wait_deferrable", "olconnect")
    assert states(run)["wait"] == "success"
    assert "Pausing task as DEFERRED" not in capsys.readouterr().out


def test_finish_in_triggerer_still_completes_under_dag_test(airflow_db: Path, emulator: VendorEmulator) -> None:
    # dag.test() ignores start_from_trigger and hands a TaskSuccessEvent back as event="success";
    # the real zero-worker path is covered by the deployment test.
    run = run_dag("jp_wait_in_triggerer", "itwin")
    assert states(run)["wait"] == "success"
    assert xcom(run, "wait")["state"] == "succeeded"


@pytest.mark.parametrize(
    "job_id",
    ["{{ ti.xcom_pull(task_ids='submit') }}", 42],
)
def test_finish_in_triggerer_refuses_a_job_id_the_triggerer_cannot_render(job_id: Any) -> None:
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_3_PLUS

    from airflow_provider_jobprogress.sensors.job_progress import JobProgressSensor

    if not AIRFLOW_V_3_3_PLUS:
        pytest.skip("below 3.3 finish_in_triggerer falls back to the worker path")
    with pytest.raises(ValueError, match="map_indexes=-1"):
        JobProgressSensor(task_id="wait", conn_id="itwin_default", job_id=job_id, finish_in_triggerer=True)
