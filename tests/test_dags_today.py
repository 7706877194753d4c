"""What the vendors do today, in real Airflow (``dag.test()``) against the emulators."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from tests.test_sensors_dag import states, xcom

DAG_FILE = Path(__file__).parent / "dags" / "jp_vendors_today.py"


def load(dag_id: str) -> Any:
    spec = importlib.util.spec_from_file_location("jp_vendors_today_dags", DAG_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(v for v in vars(module).values() if getattr(v, "dag_id", None) == dag_id)


def test_scriptx_print_done_at_submit_ends_the_wait_and_fetch_says_there_is_no_file(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    emulator.set_next_scenario("scriptx", Scenario(outcome="done_at_submit"))
    run = load("jp_scriptx_done_at_submit").test(run_conf={"out": str(tmp_path)})
    assert states(run) == {"submit": "success", "wait": "success", "fetch": "failed"}
    assert str(xcom(run, "submit")).startswith("scriptx-done-at-submit-")
    assert xcom(run, "wait")["state"] == "succeeded"
    assert emulator.count("GET", "/printPdf/status/") == 0, "there is no job at the vendor to poll"
    assert emulator.count("POST", "/printPdf/print") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["storage", "xcom"])
def test_olconnect_set_ids_reach_downstream_tasks(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, mode: str
) -> None:
    emulator.set_next_scenario("olconnect", Scenario(steps=1, outputs=1 if mode == "storage" else 2))
    run = load(f"jp_olconnect_sets_{mode}").test(run_conf={"out": str(tmp_path)})
    assert set(states(run).values()) == {"success"}, states(run)
    sets = xcom(run, "use_the_sets")
    assert sorted(sets) == ["content_set_id", "data_set_id", "job_set_id"]
    assert all(isinstance(value, int) for value in sets.values())
    if mode == "storage":
        (stored,) = xcom(run, "fetch") if isinstance(xcom(run, "fetch"), list) else [xcom(run, "fetch")]
        assert stored["metadata"] == sets
