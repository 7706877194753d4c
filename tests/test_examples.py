"""The shipped example DAGs run end to end in real Airflow (dag.test()) against the emulators."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from tests.test_sensors_dag import states, xcom

EXAMPLES = Path(__file__).resolve().parent.parent / "dags_examples"


def example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


@pytest.fixture(autouse=True)
def quick_jobs(emulator: VendorEmulator) -> None:
    for vendor in ("olconnect", "scriptx", "itwin"):
        emulator.set_default_scenario(vendor, Scenario(steps=2))


def stored_files(tmp_path: Path) -> list[Path]:
    """The result files, without the completion markers of folder results."""
    return sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.name != "_SUCCESS")


@pytest.mark.parametrize(
    ("name", "fetch_task"),
    [
        ("example_olconnect_print", "fetch"),
        ("example_scriptx_print_pdf", "download"),
        ("example_itwin_reality_analysis", "download_outputs"),
        ("example_itwin_reality_analysis_v2", "download_outputs"),
    ],
)
def test_vendor_example_submits_waits_and_stores_the_result(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, name: str, fetch_task: str
) -> None:
    run = example(name).test(run_conf={"results": f"file://{tmp_path}"})
    assert set(states(run).values()) == {"success"}, states(run)
    stored = xcom(run, fetch_task)
    items = stored if isinstance(stored, list) else [stored]
    files = stored_files(tmp_path)
    assert [Path(i["uri"].removeprefix("file://")) for i in items] == files
    for item, path in zip(items, files, strict=True):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == item["sha256"]
    markers = sorted(tmp_path.rglob("_SUCCESS"))  # a folder result says it is whole; a single file is
    if name != "example_scriptx_print_pdf":
        [marker] = markers
        assert [f["sha256"] for f in json.loads(marker.read_text())["files"]] == [i["sha256"] for i in items]
    else:
        assert markers == []
    # the run id (manual__2026-01-01T00:00:00+00:00) names the folder without ':' and '+'
    assert not [p for p in files if set(str(p.relative_to(tmp_path))) & set(":+")], files


def test_generic_sensor_example_waits_on_all_three_vendors(airflow_db: Path, emulator: VendorEmulator) -> None:
    run = example("example_generic_sensor").test()
    assert set(states(run).values()) == {"success"}, states(run)
    assert {xcom(run, f"wait_{v}")["vendor"] for v in ("olconnect", "scriptx", "itwin")} == {
        "OL Connect",
        "ScriptX.Services",
        "iTwin",
    }


def test_mapped_example_waits_on_many_jobs(airflow_db: Path, emulator: VendorEmulator, tmp_path: Path) -> None:
    documents = [f"https://example.invalid/{n}.pdf" for n in range(4)]
    run = example("example_many_jobs_mapped").test(run_conf={"results": f"file://{tmp_path}", "documents": documents})
    assert states(run)["download"] == "success"
    assert len(stored_files(tmp_path)) == 4
    assert emulator.count("POST", "/printPdf/print") == 4
    # the UI lists each map by its document, not by its index
    for task_id in ("print", "wait", "download"):
        assert map_labels(run, task_id) == documents, task_id


def map_labels(run: Any, task_id: str) -> list[str | None]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(TaskInstance)
            .where(TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id)
            .where(TaskInstance.task_id == task_id)
            .order_by(TaskInstance.map_index)
        )
        return [ti.rendered_map_index for ti in rows]


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("example_*.py")))
def test_every_example_param_says_what_it_is(name: str) -> None:
    params = example(name).params
    assert {key: bool(params.get_param(key).description) for key in params} == dict.fromkeys(params, True)


@pytest.mark.parametrize(("outcome", "vendor_state"), [("fail", "failed"), ("cancel", "cancelled")])
def test_reality_analysis_v2_example_fails_with_the_job(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, outcome: str, vendor_state: str
) -> None:
    emulator.set_next_scenario("itwin", Scenario(steps=2, outcome=outcome, message="Detector not found"))
    run = example("example_itwin_reality_analysis_v2").test(run_conf={"results": f"file://{tmp_path}"})
    assert states(run) == {"submit": "success", "wait": "failed", "download_outputs": "upstream_failed"}
    job_id = xcom(run, "submit")
    assert emulator.job("itwin", job_id).state == vendor_state
    assert stored_files(tmp_path) == []


def test_reality_analysis_v2_example_cancels_the_job_when_the_wait_times_out(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    dag = example("example_itwin_reality_analysis_v2")
    dag.get_task("wait").timeout = 1
    emulator.set_next_scenario("itwin", Scenario(duration=600))
    run = dag.test(run_conf={"results": f"file://{tmp_path}"})
    assert states(run)["wait"] == "failed"
    job_id = xcom(run, "submit")
    assert emulator.count("DELETE", f"/reality-analysis/jobs/{job_id}") == 1
    assert emulator.job("itwin", job_id).cancelled
