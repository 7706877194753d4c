"""OpenLineage in a real deployment: the worker's task runner, OpenLineage's listener in its own fork, a file transport.

Its own deployment (module scope), so OpenLineage is enabled only here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from tests import deployment as harness
from tests.deployment import BIN, COMPONENTS, Deployment, airflow_env, free_port

vendor_emulator = harness.vendor_emulator  # the harness's module-scoped fixture, used by name below

pytestmark = pytest.mark.deployment

DAG_ID = "example_scriptx_print_pdf"  # submit ("print"), wait in the triggerer, fetch ("download") to a folder


@pytest.fixture(scope="module")
def lineage_deployment(vendor_emulator: VendorEmulator) -> Iterator[tuple[Deployment, Path]]:
    home = Path(tempfile.mkdtemp(prefix="jobprogress-lineage-"))
    events = home / "openlineage-events.jsonl"
    port = free_port()
    env = airflow_env(home, port, vendor_emulator.connections())
    env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps({"type": "file", "log_file_path": str(events), "append": True})
    env["AIRFLOW__OPENLINEAGE__NAMESPACE"] = "jobprogress-deployment"
    migrate = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"], env=env, cwd=home, capture_output=True, text=True, timeout=180
    )
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    dep = Deployment(home, env, port)
    try:
        for component in COMPONENTS:
            dep.start(component)
        dep.wait_ready([DAG_ID])
        yield dep, events
    except BaseException:
        print(dep.log_tails())
        raise
    finally:
        dep.stop_all()
        shutil.rmtree(home, ignore_errors=True)


def test_a_workers_fetch_emits_its_files_and_job_to_openlineage(
    lineage_deployment: tuple[Deployment, Path], vendor_emulator: VendorEmulator, tmp_path: Path
) -> None:
    dep, events_file = lineage_deployment
    vendor_emulator.set_next_scenario("scriptx", Scenario(steps=2, result_size=50_000))
    run_id = dep.trigger_run(DAG_ID, {"results": f"file://{tmp_path}"})
    assert dep.wait_run(DAG_ID, run_id, 120) == "success", dep.log_tails()
    job_id = str(dep.xcom(DAG_ID, run_id, "print"))
    [stored] = dep.xcom(DAG_ID, run_id, "download")

    def complete(task_id: str) -> dict[str, Any]:
        events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
        found: list[dict[str, Any]] = [
            e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == f"{DAG_ID}.{task_id}"
        ]
        assert len(found) == 1, found
        return found[0]

    download = complete("download")
    assert [(o["namespace"], o["name"]) for o in download["outputs"]] == [
        ("file", stored["uri"].removeprefix("file://"))
    ]
    assert download["outputs"][0]["outputFacets"]["outputStatistics"]["size"] == 50_000
    job = download["run"]["facets"]["jobprogress_vendorJob"]
    assert (job["vendor"], job["connId"], job["jobId"]) == ("ScriptX.Services", "scriptx_default", job_id)
    assert complete("print")["run"]["facets"]["jobprogress_vendorJob"] == job
