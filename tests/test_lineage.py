"""What a fetch tells OpenLineage: one output dataset per stored file, named by OpenLineage's conventions, and the
vendor job as run facets; and that the OpenLineage provider stays optional."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from tests.test_results import FAST, finished_job

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {
    "olconnect_password": "ol-pw-5b1f0c",
    "scriptx_license": "6b0e2a9c-1d4f-4e8a-9c3b-7f2d5e8a1c40",
    "itwin_client_secret": "itwin-secret-93d7",
}


@pytest.fixture
def secret_emulator(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The emulator with distinctive credentials, so a leak into a lineage event is found by searching for them."""
    with VendorEmulator(secrets=SECRETS) as emu:
        for conn_id, uri in emu.connections().items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", uri)
        yield emu


def fetched(conn_id: str, job_id: str, destination: Any) -> tuple[Any, Any]:
    """A fetch run for real against the emulator; the operator (holding what it wrote) and its XCom."""
    from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator

    op = FetchJobResultOperator(
        task_id="fetch", conn_id=conn_id, job_id=job_id, destination=destination, request_retry=FAST
    )
    return op, op.execute({})


def as_json(lineage: Any) -> Any:
    from openlineage.client.serde import Serde

    return json.loads(Serde.to_json(lineage))


# -- names, by OpenLineage's naming conventions (openlineage.io/docs/spec/naming) --------------------


@pytest.mark.parametrize(
    ("uri", "namespace", "name"),
    [
        ("file:///data/out/a.pdf", "file", "/data/out/a.pdf"),
        ("/data/out/a.pdf", "file", "/data/out/a.pdf"),
        ("local:///data/out/a.pdf", "file", "/data/out/a.pdf"),
        ("file://fileserver/share/a.pdf", "file://fileserver", "/share/a.pdf"),
        ("s3://my-bucket/prints/a.pdf", "s3://my-bucket", "prints/a.pdf"),
        # Airflow's connection id in the URI names no data source: it is left out
        ("s3://aws_default@my-bucket/prints/a.pdf", "s3://my-bucket", "prints/a.pdf"),
        ("s3a://my-bucket/a.pdf", "s3://my-bucket", "a.pdf"),
        ("gs://google_cloud_default@my-bucket/prints/a.pdf", "gs://my-bucket", "prints/a.pdf"),
        ("gcs://my-bucket/prints/a.pdf", "gs://my-bucket", "prints/a.pdf"),
        (
            "abfss://results@acct.dfs.core.windows.net/prints/a.pdf",
            "abfss://results@acct.dfs.core.windows.net",
            "prints/a.pdf",
        ),
        (
            "abfs://results@acct.dfs.core.windows.net/prints/a.pdf",
            "abfss://results@acct.dfs.core.windows.net",
            "prints/a.pdf",
        ),
        (
            "wasbs://results@acct.blob.core.windows.net/prints/a.pdf",
            "wasbs://results@acct.blob.core.windows.net",
            "prints/a.pdf",
        ),
        # the storage account is in the Airflow connection, not the URI: the container is all the URI says
        ("abfs://wasb_default@results/prints/a.pdf", "abfs://results", "prints/a.pdf"),
        ("sftp://sftp_default@files.example.com/out/a.pdf", "sftp://files.example.com", "out/a.pdf"),
    ],
)
def test_dataset_names_follow_openlineage_conventions(uri: str, namespace: str, name: str) -> None:
    from airflow_provider_jobprogress.lineage import dataset_name

    assert dataset_name(uri) == (namespace, name)


# -- the facets, from a fetch run against the emulator ---------------------------------------------------


def test_each_stored_file_is_an_output_dataset_with_its_size(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    job_id = finished_job(emulator, "itwin", Scenario(steps=1, outputs=3, result_size=5000))
    op, stored = fetched("itwin_default", job_id, f"file://{tmp_path}/")

    lineage = op.get_openlineage_facets_on_complete(None)

    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        ("file", item["uri"].removeprefix("file://")) for item in stored
    ]
    assert len(lineage.outputs) == 3
    for dataset, item in zip(lineage.outputs, stored, strict=True):
        statistics = dataset.outputFacets["outputStatistics"]
        assert (statistics.size, statistics.fileCount) == (item["bytes"], 1) == (5000, 1)
    assert lineage.inputs == []


def test_the_vendor_job_is_a_run_facet(airflow_db: Path, emulator: VendorEmulator, tmp_path: Path) -> None:
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0))
    op, _ = fetched("scriptx_default", job_id, f"file://{tmp_path}/out.pdf")

    facets = as_json(op.get_openlineage_facets_on_complete(None))["run_facets"]

    job = facets["jobprogress_vendorJob"]
    assert {k: job[k] for k in ("vendor", "connType", "connId", "jobId")} == {
        "vendor": "ScriptX.Services",
        "connType": "scriptx",
        "connId": "scriptx_default",
        "jobId": job_id,
    }
    assert {k: facets["externalQuery"][k] for k in ("externalQueryId", "source")} == {
        "externalQueryId": job_id,
        "source": "scriptx",
    }


def test_a_fetch_into_xcom_reports_the_job_and_no_dataset(airflow_db: Path, emulator: VendorEmulator) -> None:
    job_id = finished_job(emulator, "olconnect", Scenario(steps=1, outputs=2))
    op, paths = fetched("olconnect_default", job_id, None)
    assert len(paths) == 2

    lineage = op.get_openlineage_facets_on_complete(None)

    assert lineage.outputs == []
    assert lineage.run_facets["jobprogress_vendorJob"].jobId == job_id


def test_a_failed_fetch_reports_the_job_and_no_dataset(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    """OpenLineage asks a failed task for its lineage through the same method (there is no on_failure one)."""
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator

    job_id = finished_job(emulator, "itwin", Scenario(steps=0, outcome="fail", message="bad photos"))

    op = FetchJobResultOperator(task_id="fetch", conn_id="itwin_default", job_id=job_id, destination=f"{tmp_path}/")
    with pytest.raises(AirflowFailException, match="bad photos"):
        op.execute({})
    lineage = op.get_openlineage_facets_on_complete(None)

    assert lineage.outputs == []
    assert lineage.run_facets["jobprogress_vendorJob"].jobId == job_id
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("vendor", ["olconnect", "scriptx", "itwin"])
def test_no_credential_reaches_the_lineage(
    airflow_db: Path, secret_emulator: VendorEmulator, vendor: str, tmp_path: Path
) -> None:
    job_id = finished_job(secret_emulator, vendor, Scenario(steps=0))
    op, _ = fetched(f"{vendor}_default", job_id, f"file://{tmp_path}/")

    text = json.dumps(as_json(op.get_openlineage_facets_on_complete(None)))

    assert job_id in text
    for secret in SECRETS.values():
        assert secret not in text


# -- OpenLineage stays optional at runtime ---------------------------------------------------------------

WITHOUT_OPENLINEAGE = """
import importlib, pkgutil, sys
# None in sys.modules makes every import of these modules fail, as when they are not installed: the OpenLineage
# client, and the provider's modules lineage code imports (its get_provider_info stays: Airflow's provider
# discovery reads it from the installed distribution's entry point)
for name in ("openlineage", "airflow.providers.openlineage.extractors", "airflow.providers.common.compat.openlineage"):
    sys.modules[name] = None
import airflow_provider_jobprogress as package
skip = {"airflow_provider_jobprogress.lineage", "airflow_provider_jobprogress.testing.azurite"}
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if info.name not in skip:
        importlib.import_module(info.name)
from airflow_provider_jobprogress.get_provider_info import get_provider_info
from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
get_provider_info()
FetchJobResultOperator(task_id="t", conn_id="c", job_id="j", destination="file:///tmp/x/")
print("imported without openlineage")
"""


def test_the_package_works_without_the_openlineage_provider() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPENLINEAGE], capture_output=True, text=True, cwd=ROOT, env=os.environ.copy()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported without openlineage" in done.stdout


# -- the events OpenLineage's own listener emits, in real Airflow ---------------------------------------

RUN_DAG = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("jp_operators_dags", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dag = next(v for v in vars(module).values() if getattr(v, "dag_id", None) == sys.argv[2])
run = dag.test(run_conf={"out": sys.argv[3]})
print("dag run state:", run.state)
"""


def lineage_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("vendor", ["olconnect", "itwin"])
def test_the_complete_event_of_a_fetch_names_its_destination_and_vendor_job(
    airflow_db: Path, emulator: VendorEmulator, vendor: str, tmp_path: Path
) -> None:
    """OpenLineage's listener, configured as a user would (a file transport), in a fresh process: its plugin
    reads the configuration once, when Airflow loads plugins."""
    events_file = tmp_path / "events.jsonl"
    out = tmp_path / "out"
    emulator.set_next_scenario(vendor, Scenario(steps=1, outputs=2, result_size=3000))
    env = {
        **os.environ,
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "jobprogress-tests",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_DAG,
            str(ROOT / "tests/dags/jp_operators.py"),
            f"jp_fetch_storage_{vendor}",
            f"{out}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert "dag run state: success" in done.stdout, done.stdout[-3000:] + done.stderr[-5000:]

    events = lineage_events(events_file)
    [complete] = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"].endswith(".fetch")]
    files = sorted(str(p) for p in out.rglob("*") if p.is_file() and p.name != "_SUCCESS")
    assert len(files) == 2
    assert sorted((o["namespace"], o["name"]) for o in complete["outputs"]) == [("file", f) for f in files]
    assert all(o["outputFacets"]["outputStatistics"]["size"] == 3000 for o in complete["outputs"])
    job = complete["run"]["facets"]["jobprogress_vendorJob"]
    assert (job["connType"], job["connId"]) == (vendor, f"{vendor}_default")
    # the job id is the one whose results landed: the emulator served exactly these bytes for it
    served = {emulator.result_sha256(vendor, job["jobId"], i) for i in range(2)}
    assert {hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files} == served
    assert complete["run"]["facets"]["externalQuery"]["externalQueryId"] == job["jobId"]
    # the submit task names the same job: a lineage tool joins the two tasks through it
    [submitted] = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"].endswith(".submit")]
    assert submitted["run"]["facets"]["jobprogress_vendorJob"] == job
    assert submitted["outputs"] == []
