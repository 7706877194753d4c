"""iTwin outputs served by a real Azure Storage API server (Azurite): our SAS, listing and download handling meet
Azure's own behaviour, not only our emulator's imitation of it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import ContainerClient

from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from tests.test_hooks import download, follow
from tests.test_hooks_today import OBJECTS_2D, itwin_hook
from tests.test_operators_dag import load
from tests.test_sensors_dag import states, xcom


def test_reality_analysis_outputs_download_from_azurite(
    emulator_on_azurite: VendorEmulator, azurite: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = emulator_on_azurite
    emulator.set_next_scenario("itwin", Scenario(steps=1, outputs=3, result_size=3 * 1024 * 1024 + 11))
    hook = itwin_hook(emulator, monkeypatch, "reality-analysis")
    job_id = hook.submit(OBJECTS_2D)
    follow(hook, job_id)
    parts = hook.result_parts(job_id)
    assert {urlsplit(p.request.url).netloc for p in parts if p.request} == {urlsplit(azurite.url).netloc}  # type: ignore[attr-defined]
    got = download(hook, job_id)
    assert [name for name, _, _ in got] == [f"objects2D/output/part_{n}.bin" for n in (1, 2, 3)]
    assert [sha for _, sha, _ in got] == [emulator.result_sha256("itwin", job_id, i) for i in range(3)]
    assert emulator.count("GET", "/blob/") == 0, "nothing came from the emulator's own blob endpoint"


def test_bucket_and_nested_outputs_download_from_azurite(
    emulator_on_azurite: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = emulator_on_azurite
    hook = itwin_hook(emulator, monkeypatch, "reality-modeling")
    emulator.set_next_scenario("itwin", Scenario(steps=1, result_size=4000))
    calibration = {"type": "Calibration", "specifications": {"inputs": {"scene": "s"}, "outputs": ["scene", "report"]}}
    job_id = hook.submit(calibration)
    follow(hook, job_id)
    got = download(hook, job_id)
    assert [name for name, _, _ in got] == ["scene/output/part_1.bin", "report/report.json"]
    assert [sha for _, sha, _ in got] == [emulator.result_sha256("itwin", job_id, i) for i in range(2)]


def test_azures_own_client_reads_the_emulators_sas_url(emulator_on_azurite: VendorEmulator) -> None:
    emulator = emulator_on_azurite
    emulator.set_next_scenario("itwin", Scenario(steps=0, outputs=2, result_size=2 * 1024 * 1024 + 5))
    conn = json.loads(emulator.connections()["itwin_default"])
    form = {
        "grant_type": "client_credentials",
        "client_id": conn["login"],
        "client_secret": conn["password"],
        "scope": "itwin-platform",
    }
    token = requests.post(f"{emulator.url}/connect/token", data=form, timeout=10).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.bentley.itwin-platform.v2+json"}
    body = {**OBJECTS_2D, "iTwinId": emulator.ITWIN_ID}
    job = requests.post(f"{emulator.url}/reality-analysis/jobs", json=body, headers=headers, timeout=10).json()["job"]
    requests.get(f"{emulator.url}/reality-analysis/jobs/{job['id']}", headers=headers, timeout=10)
    rd = job["specifications"]["outputs"]["objects2D"]
    headers["Accept"] = "application/vnd.bentley.itwin-platform.v1+json"
    href = requests.get(f"{emulator.url}/reality-management/reality-data/{rd}/readaccess", headers=headers, timeout=10)
    client = ContainerClient.from_container_url(
        href.json()["_links"]["containerUrl"]["href"], max_single_get_size=1 << 20, max_chunk_get_size=1 << 20
    )
    names = sorted(client.list_blob_names())
    assert names == ["output/part_1.bin", "output/part_2.bin"]
    for index, name in enumerate(names):
        data = client.download_blob(name, max_concurrency=3).readall()
        assert hashlib.sha256(data).hexdigest() == emulator.result_sha256("itwin", job["id"], index)
    with pytest.raises(HttpResponseError, match=r"AuthorizationPermissionMismatch|not authorized"):
        client.upload_blob("intruder.bin", b"x")  # a read+list SAS, as Bentley gives: no writes


def test_fetch_to_storage_from_azurite_in_airflow(
    airflow_db: Path, emulator_on_azurite: VendorEmulator, tmp_path: Path
) -> None:
    emulator = emulator_on_azurite
    emulator.set_next_scenario("itwin", Scenario(steps=1, outputs=2, result_size=200_000))
    run = load("jp_fetch_storage_itwin").test(run_conf={"out": str(tmp_path)})
    assert states(run) == {"submit": "success", "fetch": "success", "downstream": "success"}
    job_id = xcom(run, "submit")
    stored = xcom(run, "fetch")
    assert [item["name"] for item in stored] == ["objects2D/output/part_1.bin", "objects2D/output/part_2.bin"]
    for index, item in enumerate(stored):
        data = Path(item["uri"].removeprefix("file://")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == emulator.result_sha256("itwin", job_id, index)
