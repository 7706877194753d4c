"""The emulators answer as the vendors do today: Bentley's published answers and Azure's own client are the judge."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from azure.storage.blob import ContainerClient

from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator

BENTLEY = Path(__file__).parent / "data" / "bentley"
V1 = "application/vnd.bentley.itwin-platform.v1+json"
V2 = "application/vnd.bentley.itwin-platform.v2+json"
TIMEOUT = 10


def bentley(name: str) -> Any:
    return json.loads((BENTLEY / f"{name}.json").read_text())


def headers(emu: VendorEmulator, accept: str = V2) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": emu.ITWIN_CLIENT_ID,
        "client_secret": emu.ITWIN_CLIENT_SECRET,
        "scope": "itwin-platform",
    }
    token = requests.post(f"{emu.url}/connect/token", data=form, timeout=TIMEOUT).json()["access_token"]
    return {"Authorization": f"Bearer {token}", "Accept": accept}


def create_v2(emu: VendorEmulator, api: str, body: dict[str, Any], **scenario: Any) -> dict[str, Any]:
    body = {"iTwinId": emu.ITWIN_ID, **body, "emulator": Scenario(**scenario).to_dict()}
    r = requests.post(f"{emu.url}/{api}/jobs", json=body, headers=headers(emu), timeout=TIMEOUT)
    assert r.status_code == 201, r.text
    return r.json()["job"]  # type: ignore[no-any-return]


OBJECTS_2D = {
    "type": "Objects2D",
    "name": "signs",
    "specifications": {"inputs": {"photos": "rd-photos", "photoObjectDetector": "det"}, "outputs": ["objects2D"]},
}
RECONSTRUCTION = {
    "type": "Reconstruction",
    "name": "My first Reality Modeling job",
    "specifications": {
        "inputs": {"scene": "7e8bd05b"},
        "outputs": {"modelingReference": True, "exports": [{"format": "3DTiles"}, {"format": "OBJ"}]},
    },
}


def keys(data: Any) -> Any:
    """The key structure of an answer (dict keys recursively, first list item), to compare with Bentley's."""
    if isinstance(data, dict):
        return {k: keys(v) for k, v in data.items()}
    if isinstance(data, list) and data:
        return [keys(data[0])]
    return None


def covers(ours: Any, theirs: Any) -> bool:
    """Every key Bentley's answer has, ours has too (ours may say more)."""
    if isinstance(theirs, dict):
        return isinstance(ours, dict) and all(k in ours and covers(ours[k], v) for k, v in theirs.items())
    if isinstance(theirs, list) and theirs:
        return isinstance(ours, list) and bool(ours) and covers(ours[0], theirs[0])
    return True


# == Bentley iTwin v2 ============================================================================================


@pytest.mark.parametrize("api", ["reality-analysis", "reality-modeling"])
def test_v2_job_answers_carry_output_ids_from_creation(emulator: VendorEmulator, api: str) -> None:
    job = create_v2(emulator, api, OBJECTS_2D if api == "reality-analysis" else RECONSTRUCTION, steps=3)
    assert job["state"] == "Active"
    outputs = job["specifications"]["outputs"]
    assert isinstance(outputs, dict)
    if api == "reality-modeling":
        assert covers(keys(job), keys(bentley("job_create_201")["job"]))
        assert [e["format"] for e in outputs["exports"]] == ["3DTiles", "OBJ"]
        assert all(e["location"] for e in outputs["exports"])
        assert outputs["modelingReference"]["location"]
    else:
        assert list(outputs) == ["objects2D"]
        assert outputs["objects2D"]
    url = f"{emulator.url}/{api}/jobs/{job['id']}"
    cancelled = requests.delete(url, headers=headers(emulator), timeout=TIMEOUT).json()["job"]
    assert cancelled["state"] == "TerminatingOnCancel"
    assert cancelled["specifications"]["outputs"] == outputs
    theirs = bentley("job_cancel_200")["job"]
    if api == "reality-analysis":  # Bentley's fixture is a Reconstruction: compare all but its specifications
        theirs = {k: v for k, v in theirs.items() if k != "specifications"}
    assert covers(keys(cancelled), keys(theirs))


def test_reality_analysis_v2_lifecycle_progress_messages(emulator: VendorEmulator) -> None:
    job = create_v2(emulator, "reality-analysis", OBJECTS_2D, steps=2)
    url = f"{emulator.url}/reality-analysis/jobs/{job['id']}"
    progress = [requests.get(f"{url}/progress", headers=headers(emulator), timeout=10).json() for _ in range(3)]
    assert covers(keys(progress[0]), keys(bentley("job_progress_get_200")))
    assert "step" not in progress[0]["progress"]
    assert progress[-1] == {"progress": {"state": "Success", "percentage": 100}}
    messages = requests.get(f"{url}/messages", headers=headers(emulator), timeout=TIMEOUT).json()
    assert messages == {"messages": {"errors": [], "warnings": []}}
    r = requests.get(url, headers=headers(emulator, V1), timeout=TIMEOUT)
    assert r.status_code == 406, "Reality Analysis v2 answers only the v2 Accept"


def test_v1_details_keep_output_ids_in_every_state(emulator: VendorEmulator) -> None:
    body = {
        "name": "detect",
        "iTwinId": emulator.ITWIN_ID,
        "type": "objects2D",
        "inputs": [{"type": "photos", "id": "in-1"}],
        "outputs": ["objects2D"],
    }
    h = headers(emulator, V1)
    job = requests.post(f"{emulator.url}/realitydataanalysis/jobs", json=body, headers=h, timeout=10).json()["job"]
    assert job["state"] == "unsubmitted"
    assert job["outputs"][0]["type"] == "objects2D"
    assert job["outputs"][0]["id"]


def create_v1(emu: VendorEmulator, api: str, **scenario: Any) -> tuple[str, dict[str, str]]:
    """A submitted v1 job (Bentley's v1 clients create, then PATCH state active)."""
    inputs = [{"type": "photos", "id": "in-1"}] if api == "realitydataanalysis" else [{"type": "LAZ", "id": "in-1"}]
    body = {
        "name": "v1",
        "iTwinId": emu.ITWIN_ID,
        "type": "objects2D" if api == "realitydataanalysis" else "Conversion",
        "inputs": inputs,
        "outputs": ["objects2D" if api == "realitydataanalysis" else "OPC"],
        "emulator": Scenario(**scenario).to_dict(),
    }
    h = headers(emu, V1)
    job_id = requests.post(f"{emu.url}/{api}/jobs", json=body, headers=h, timeout=TIMEOUT).json()["job"]["id"]
    r = requests.patch(f"{emu.url}/{api}/jobs/{job_id}", json={"state": "active"}, headers=h, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return f"{emu.url}/{api}/jobs/{job_id}", h


@pytest.mark.parametrize("api", ["realitydataanalysis", "realityconversion"])
def test_v1_progress_stays_readable_with_the_final_state(emulator: VendorEmulator, api: str) -> None:
    """Bentley's own v1 examples poll progress until state == success and exit on any error answer: the
    service keeps a finished job's progress readable ("won't be available after 30 days")."""
    last_step = {"realitydataanalysis": "Finalize", "realityconversion": "Upload_Files"}[api]
    url, h = create_v1(emulator, api, steps=3)
    seen = [requests.get(f"{url}/progress", headers=h, timeout=TIMEOUT) for _ in range(6)]
    assert {r.status_code for r in seen} == {200}
    readings = [r.json()["progress"] for r in seen]
    assert [(p["state"], p["percentage"]) for p in readings] == [("active", 25), ("active", 50), ("active", 75)] + [
        ("success", 100)
    ] * 3
    assert readings[-1]["step"] == last_step

    url, h = create_v1(emulator, api, steps=2, outcome="fail")
    readings = [requests.get(f"{url}/progress", headers=h, timeout=TIMEOUT).json()["progress"] for _ in range(4)]
    assert [(p["state"], p["percentage"]) for p in readings] == [("active", 33), ("active", 67)] + [("failed", 67)] * 2

    url, h = create_v1(emulator, api, steps=4)
    for _ in range(2):
        requests.get(f"{url}/progress", headers=h, timeout=TIMEOUT)
    requests.patch(url, json={"state": "cancelled"}, headers=h, timeout=TIMEOUT)
    reading = requests.get(f"{url}/progress", headers=h, timeout=TIMEOUT).json()["progress"]
    assert (reading["state"], reading["percentage"]) == ("cancelled", 40)


def test_v1_progress_is_gone_after_the_retention() -> None:
    """Past the retention (Bentley: 30 days; here 0 s) a finished job's progress answers 404 ProgressNotFound,
    as the provider's details fallback expects."""
    with VendorEmulator(itwin_progress_retention=0) as emu:
        url, h = create_v1(emu, "realitydataanalysis", steps=0)
        r = requests.get(f"{url}/progress", headers=h, timeout=TIMEOUT)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "ProgressNotFound")
        assert requests.get(url, headers=h, timeout=TIMEOUT).json()["job"]["state"] == "success"


def test_reality_conversion_says_submitted_date_time(emulator: VendorEmulator) -> None:
    body = {"name": "c", "iTwinId": emulator.ITWIN_ID, "type": "LAS2PNTS", "inputs": [{"id": "a"}], "outputs": ["PNTS"]}
    h = headers(emulator, V1)
    url = f"{emulator.url}/realityconversion/jobs"
    job_id = requests.post(url, json=body, headers=h, timeout=TIMEOUT).json()["job"]["id"]
    job = requests.patch(f"{url}/{job_id}", json={"state": "active"}, headers=h, timeout=TIMEOUT).json()["job"]
    info = job["executionInformation"]
    assert "submittedDateTime" in info
    assert "submissionDateTime" not in info


def test_reality_conversion_details_say_each_inputs_type(emulator: VendorEmulator) -> None:
    """Bentley's v1 Python client creates a conversion with inputs ``[{"id": …}]`` and reads the service's
    ``inputs[].type`` back from the job details (its ConversionSettings.from_json fails without it)."""
    body = {
        "name": "c",
        "iTwinId": emulator.ITWIN_ID,
        "type": "Conversion",
        "inputs": [{"id": "rd-laz"}, {"type": "E57", "id": "rd-e57"}],
        "outputs": ["OPC"],
        "options": {"processingEngines": 8},
    }
    h = headers(emulator, V1)
    url = f"{emulator.url}/realityconversion/jobs"
    job_id = requests.post(url, json=body, headers=h, timeout=TIMEOUT).json()["job"]["id"]
    job = requests.get(f"{url}/{job_id}", headers=h, timeout=TIMEOUT).json()["job"]
    bentley_input_types = {"LAS", "LAZ", "PLY", "E57", "OPC", "PointCloud", "PNTS", "Cesium3DTiles"}
    assert [i["id"] for i in job["inputs"]] == ["rd-laz", "rd-e57"]
    assert all(i.get("type") in bentley_input_types for i in job["inputs"]), job["inputs"]
    assert job["inputs"][1]["type"] == "E57", "a type given at creation is kept"


def test_reality_data_view_has_bentleys_fields(emulator: VendorEmulator) -> None:
    job = create_v2(emulator, "reality-analysis", OBJECTS_2D, steps=0)
    rd = job["specifications"]["outputs"]["objects2D"]
    requests.get(f"{emulator.url}/reality-analysis/jobs/{job['id']}", headers=headers(emulator), timeout=10)
    r = requests.get(f"{emulator.url}/reality-management/reality-data/{rd}", headers=headers(emulator, V1), timeout=10)
    view = r.json()["realityData"]
    for field in ("modifiedDateTime", "lastAccessedDateTime", "dataCenterLocation", "size", "createdDateTime"):
        assert field in view, field
    assert isinstance(view["size"], int)


def test_job_listing_filters_and_pages_with_a_continuation_token(emulator: VendorEmulator) -> None:
    ids = [create_v2(emulator, "reality-analysis", OBJECTS_2D, steps=0)["id"] for _ in range(5)]
    create_v2(emulator, "reality-modeling", RECONSTRUCTION, steps=0)
    url = f"{emulator.url}/reality-analysis/jobs"
    for job_id in ids[:4]:  # one poll ends a job of no steps; the fifth stays Active
        requests.get(f"{url}/{job_id}", headers=headers(emulator), timeout=TIMEOUT)
    theirs = {k: v for k, v in bentley("jobs_get_200")["jobs"][0].items() if k != "specifications"}
    seen: list[str] = []
    params: dict[str, str] = {"$filter": f"iTwinId eq {emulator.ITWIN_ID}", "$top": "2"}
    pages = 0
    while True:
        page = requests.get(url, params=params, headers=headers(emulator), timeout=TIMEOUT).json()
        pages += 1
        assert all(covers(keys(job), keys(theirs)) for job in page["jobs"] if job["state"] == "Success")
        seen += [job["id"] for job in page["jobs"]]
        if "_links" not in page:
            break
        token = parse_qs(urlsplit(page["_links"]["next"]["href"]).query)["continuationToken"][0]
        params["continuationToken"] = token
    assert (sorted(seen), pages) == (sorted(ids), 3)
    state_filter = {"$filter": f"iTwinId eq {emulator.ITWIN_ID} and state eq 'Active'"}
    active = requests.get(url, params=state_filter, headers=headers(emulator), timeout=TIMEOUT).json()["jobs"]
    assert [job["id"] for job in active] == ids[4:]
    assert requests.get(url, headers=headers(emulator), timeout=TIMEOUT).status_code == 400


def test_job_listing_reads_in_and_input_and_output_ids(emulator: VendorEmulator) -> None:
    """Bentley's jobs-get-all pages (Reality Analysis, Reality Conversion, Reality Modeling; v1 and the v2
    Reality Conversion page alike): properties id, iTwinId, name, email, type, state, createdDateTime, inputId,
    outputId; operators eq, lt, le, gt, ge, ne, in, and, or; e.g. ``inputId in ('…', '…')``."""
    jobs = [create_v2(emulator, "reality-analysis", OBJECTS_2D, steps=0) for _ in range(3)]
    ids = [job["id"] for job in jobs]
    url = f"{emulator.url}/reality-analysis/jobs"

    def listed(text: str) -> list[str]:
        r = requests.get(url, params={"$filter": text}, headers=headers(emulator), timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        return sorted(job["id"] for job in r.json()["jobs"])

    assert listed(f"id in ('{ids[0]}', '{ids[2]}')") == sorted([ids[0], ids[2]])
    assert listed(f"iTwinId eq {emulator.ITWIN_ID} and id in ({ids[1]})") == [ids[1]]
    requests.get(f"{url}/{ids[0]}", headers=headers(emulator), timeout=TIMEOUT)  # ends it (no steps)
    assert listed("state in ('Success', 'Failed', 'Cancelled')") == [ids[0]]
    assert listed("inputId eq 'rd-photos'") == sorted(ids)
    assert listed("inputId in ('nothing', 'det')") == sorted(ids)
    output = jobs[1]["specifications"]["outputs"]["objects2D"]
    assert listed(f"outputId eq {output}") == [ids[1]]
    assert listed(f"outputId ne {output}") == sorted([ids[0], ids[2]])
    for refused in ("id in ()", "id in ('a'", "inputId gt 'a'", "contains(name, 'a')", "not state eq 'Active'"):
        r = requests.get(url, params={"$filter": refused}, headers=headers(emulator), timeout=TIMEOUT)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "InvalidFilter"), refused


def test_the_itwin_bucket_serves_bucket_outputs(emulator: VendorEmulator) -> None:
    calibration = {"type": "Calibration", "specifications": {"inputs": {"scene": "s"}, "outputs": ["scene", "report"]}}
    job = create_v2(emulator, "reality-modeling", calibration, steps=0)
    report = job["specifications"]["outputs"]["report"]
    assert report.startswith("bkt:")
    requests.get(f"{emulator.url}/reality-modeling/jobs/{job['id']}", headers=headers(emulator), timeout=10)
    bucket_url = f"{emulator.url}/reality-modeling/itwins/{emulator.ITWIN_ID}/bucket"
    r = requests.get(bucket_url, headers=headers(emulator), timeout=TIMEOUT)
    answer = r.json()
    assert covers(keys(answer), keys(bentley("bucket_get_200")))
    client = ContainerClient.from_container_url(answer["_links"]["containerUrl"]["href"])
    assert report.removeprefix("bkt:") in list(client.list_blob_names())
    data = client.download_blob(report.removeprefix("bkt:")).readall()
    assert hashlib.sha256(data).hexdigest() == emulator.result_sha256("itwin", job["id"], 1)


# == Azure's own client against the emulator's blob store ======================================================


def finished_container(emu: VendorEmulator, size: int) -> tuple[str, str]:
    job = create_v2(emu, "reality-analysis", OBJECTS_2D, steps=0, result_size=size)
    requests.get(f"{emu.url}/reality-analysis/jobs/{job['id']}", headers=headers(emu), timeout=TIMEOUT)
    rd = job["specifications"]["outputs"]["objects2D"]
    r = requests.get(f"{emu.url}/reality-management/reality-data/{rd}/readaccess", headers=headers(emu, V1), timeout=10)
    return job["id"], r.json()["_links"]["containerUrl"]["href"]


def test_blob_reads_honour_ranges_and_say_last_modified_in_rfc_1123(emulator: VendorEmulator) -> None:
    _, href = finished_container(emulator, 300_000)
    base, _, query = href.partition("?")
    whole = requests.get(f"{base}/output/part_1.bin?{query}", timeout=TIMEOUT)
    assert email.utils.parsedate_to_datetime(whole.headers["Last-Modified"]) is not None
    for header in ("Range", "x-ms-range"):
        r = requests.get(f"{base}/output/part_1.bin?{query}", headers={header: "bytes=100-199"}, timeout=TIMEOUT)
        assert r.status_code == 206
        assert r.headers["Content-Range"] == "bytes 100-199/300000"
        assert r.content == whole.content[100:200]
    tail = requests.get(f"{base}/output/part_1.bin?{query}", headers={"Range": "bytes=299990-"}, timeout=TIMEOUT)
    assert tail.content == whole.content[299_990:]


def test_azure_storage_blob_downloads_from_the_emulator(emulator: VendorEmulator) -> None:
    job_id, href = finished_container(emulator, 5 * 1024 * 1024 + 3)
    # Small gets force Azure's client through its ranged, parallel path.
    client = ContainerClient.from_container_url(href, max_single_get_size=1 << 20, max_chunk_get_size=1 << 20)
    blobs = list(client.list_blobs())
    assert [b.name for b in blobs] == ["output/part_1.bin"]
    assert blobs[0].size == 5 * 1024 * 1024 + 3
    data = client.download_blob("output/part_1.bin", max_concurrency=4).readall()
    assert hashlib.sha256(data).hexdigest() == emulator.result_sha256("itwin", job_id)


# == MeadCo ScriptX.Services: the request MeadCo's own client sends ============================================


def sx_headers(emu: VendorEmulator, path: str | None = None) -> dict[str, str]:
    token = base64.b64encode(f"{emu.SCRIPTX_LICENSE}:".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    if path is not None:
        headers["X-Meadroid-Path"] = path
    return headers


def meadco_client_body() -> dict[str, Any]:
    """funcPrintPdfAtServer's requestData as JSON.stringify sends it: PascalCase keys, functions dropped."""
    settings = {"jobDescription": "Invoice", "jobTitle": "Invoice", "pageRange": "", "orientation": 2, "copies": 1}
    return {
        "Document": "https://example.invalid/invoice.pdf",
        "Description": "Invoice",
        "Settings": settings,
        "Device": {"printerName": "Microsoft Print to PDF", "printToFileName": "invoice.pdf"},
        "ProtectedContentAccess": None,
        "UserData": {"order": 42},
    }


def test_scriptx_accepts_meadcos_pascal_case_request(emulator: VendorEmulator) -> None:
    url = f"{emulator.url}/api/v1/printPdf/print"
    r = requests.post(url, json=meadco_client_body(), headers=sx_headers(emulator), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == 2
    download = requests.get(f"{emulator.url}/api/v1/printPdf/download/{answer['jobIdentifier']}", timeout=TIMEOUT)
    assert download.status_code == 404, "not finished yet"
    assert emulator.job("scriptx", answer["jobIdentifier"]).state == "running"


def test_scriptx_done_at_submit_answers_status_4_without_a_job(emulator: VendorEmulator) -> None:
    body = {**meadco_client_body(), "emulator": {"outcome": "done_at_submit"}}
    r = requests.post(f"{emulator.url}/api/v1/printPdf/print", json=body, headers=sx_headers(emulator), timeout=10)
    assert r.json() == {"status": 4, "jobIdentifier": "", "message": ""}


def test_scriptx_checks_the_licensed_path_against_the_license_domains(emulator: VendorEmulator) -> None:
    url = f"{emulator.url}/api/v1/licensing"
    assert requests.get(url, headers=sx_headers(emulator, "http://localhost/app"), timeout=10).status_code == 200
    denied = requests.get(url, headers=sx_headers(emulator, "https://elsewhere.example/app"), timeout=10)
    assert denied.status_code == 401
    assert "domain" in denied.text


# == Upland OL Connect =========================================================================================

OL = "/rest/serverengine"
AIO = f"{OL}/workflow/print"


def ol_token(emu: VendorEmulator) -> dict[str, str]:
    r = requests.post(f"{emu.url}{OL}/authentication/login", auth=(emu.OLCONNECT_USER, "secret"), timeout=10)
    return {"auth_token": r.text}


def ol_run(emu: VendorEmulator, config: dict[str, Any], outputs: int) -> tuple[str, dict[str, str]]:
    headers = ol_token(emu)
    body = {**config, "emulator": {"steps": 0, "outputs": outputs, "result_size": 999}}
    op = requests.post(f"{emu.url}{AIO}/submit", json=body, headers=headers, timeout=TIMEOUT).headers["operationId"]
    assert requests.get(f"{emu.url}{AIO}/getProgress/{op}", headers=headers, timeout=TIMEOUT).text == "done"
    return op, headers


def test_olconnect_managed_result_of_create_only_is_json_folder_and_files(emulator: VendorEmulator) -> None:
    config = {"datamining": {"identifier": "a.csv"}, "outputcreation": {"config": "pdf", "createOnly": True}}
    op, headers = ol_run(emulator, config, outputs=2)
    r = requests.post(f"{emulator.url}{AIO}/getManagedResult/{op}", headers=headers, timeout=TIMEOUT)
    assert r.headers["Content-Type"] == "application/json"
    managed = r.json()
    assert managed["files"] == ["out_1.pdf", "out_2.pdf"]
    for index, name in enumerate(managed["files"]):
        url = f"{emulator.url}{OL}/filestore/file/{managed['identifier']}/{name}"
        got = requests.get(url, headers=headers, timeout=TIMEOUT).content
        assert hashlib.sha256(got).hexdigest() == emulator.result_sha256("olconnect", op, index)


def test_olconnect_result_headers_carry_the_set_ids_when_asked(emulator: VendorEmulator) -> None:
    op, headers = ol_run(emulator, {"datamining": {"identifier": "a.csv"}, "returnIdInHeader": True}, outputs=1)
    for call in ("getResultTxt", "getResult", "getManagedResult"):
        r = requests.post(f"{emulator.url}{AIO}/{call}/{op}", headers=headers, timeout=TIMEOUT)
        assert {h: r.headers.get(h, "").isdigit() for h in ("X-Data-Set-ID", "X-Content-Set-ID", "X-Job-Set-ID")} == {
            "X-Data-Set-ID": True,
            "X-Content-Set-ID": True,
            "X-Job-Set-ID": True,
        }, call
    op, headers = ol_run(emulator, {"datamining": {"identifier": "a.csv"}}, outputs=1)
    r = requests.post(f"{emulator.url}{AIO}/getResultTxt/{op}", headers=headers, timeout=TIMEOUT)
    assert "X-Data-Set-ID" not in r.headers


def test_olconnect_401_without_credentials_has_no_body(emulator: VendorEmulator) -> None:
    for method, path in (("GET", f"{AIO}/getProgress/x"), ("POST", f"{OL}/authentication/login")):
        r = requests.request(method, f"{emulator.url}{path}", timeout=TIMEOUT)
        assert (r.status_code, r.headers["WWW-Authenticate"], r.content) == (401, "BASIC", b"")
