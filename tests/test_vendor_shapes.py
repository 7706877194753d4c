"""The vendors as they are today: their current APIs and their own clients' shapes, through our pure protocols.

Bentley's answers are Bentley's own published fixtures (``tests/data/bentley``, MIT); MeadCo's and Upland's
request and answer shapes are written here after their clients (``ScriptX.Print.Client``
``src/meadco-scriptxprint.js``; Upland's ``AllInOneService``), each test saying where its shape comes from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_provider_jobprogress.core.errors import (
    AuthenticationError,
    OperationNotSupportedError,
    VendorResponseError,
)
from airflow_provider_jobprogress.core.model import JobState
from airflow_provider_jobprogress.core.protocol import ConnectionFields, Response
from airflow_provider_jobprogress.vendors import itwin as itwin_module
from airflow_provider_jobprogress.vendors.olconnect import OLConnectApi
from airflow_provider_jobprogress.vendors.scriptx import ScriptXApi
from tests.flowdriver import drive
from tests.test_protocols import ITWIN, OLC, blob_list, itwin, jresp, olconnect, scriptx, text

BENTLEY = Path(__file__).parent / "data" / "bentley"
V2_ACCEPT = "application/vnd.bentley.itwin-platform.v2+json"


def bentley(name: str) -> Any:
    return json.loads((BENTLEY / f"{name}.json").read_text())


def bentley_answer(name: str, status: int = 200) -> Response:
    return jresp(status, bentley(name))


def succeeded(job: dict[str, Any]) -> Response:
    return jresp(200, {"job": {**job["job"], "state": "Success"}})


def container(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


# == Bentley iTwin: Reality Analysis v2 (reality_capture 2.6, service.py _get_analysis_url) ====================


def test_reality_analysis_v2_progress_reads_bentleys_answer() -> None:
    progress, (request,), _ = drive(itwin("reality-analysis").progress("j1"), [bentley_answer("job_progress_get_200")])
    assert request.url == f"{ITWIN}/reality-analysis/jobs/j1/progress"
    assert request.headers["Accept"] == V2_ACCEPT
    assert (progress.state, progress.percent, progress.step) == (JobState.RUNNING, 5.0, None)


def test_reality_analysis_v2_create_is_submit_and_returns_the_id() -> None:
    spec = {
        "type": "Objects2D",
        "name": "signs",
        "specifications": {"inputs": {"photos": "rd-photos", "photoObjectDetector": "det"}, "outputs": ["objects2D"]},
    }
    api = itwin("reality-analysis")
    job_id, (request,), _ = drive(api.create(spec), [bentley_answer("job_create_201", 201)])
    assert job_id == "796715aa-bc5a-4df5-9554-ceed038babc6"
    assert (request.method, request.url) == ("POST", f"{ITWIN}/reality-analysis/jobs")
    assert request.json == {**spec, "iTwinId": "twin-1"}
    assert request.headers["Accept"] == V2_ACCEPT
    _, started, _ = drive(api.start(job_id), [])
    assert started == [], "a v2 job runs from its creation: nothing more is sent"


def test_reality_analysis_v2_cancel_deletes_and_reads_terminating_on_cancel() -> None:
    _, (request,), _ = drive(itwin("reality-analysis").cancel("j1"), [bentley_answer("job_cancel_200")])
    assert (request.method, request.url) == ("DELETE", f"{ITWIN}/reality-analysis/jobs/j1")


def test_reality_analysis_v2_failure_message_comes_from_bentleys_messages() -> None:
    failed = jresp(200, {"job": {**bentley("job_get_200")["job"], "state": "Failed"}})
    progress, requests, _ = drive(
        itwin("reality-analysis").progress("j1"),
        [
            jresp(200, {"progress": {"state": "Failed", "percentage": 40}}),
            failed,
            bentley_answer("job_messages_get_200"),
        ],
    )
    assert progress.state is JobState.FAILED
    assert progress.message == 'Invalid input data. Please check the documentation. ("%1")'
    assert requests[-1].url == f"{ITWIN}/reality-analysis/jobs/j1/messages"


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("Queued", JobState.QUEUED),
        ("Active", JobState.RUNNING),
        ("TerminatingOnCancel", JobState.RUNNING),
        ("TerminatingOnFailure", JobState.RUNNING),
        ("Success", JobState.SUCCEEDED),
        ("Cancelled", JobState.CANCELLED),
    ],
)
def test_reality_analysis_v2_states(state: str, expected: JobState) -> None:
    answer = jresp(200, {"progress": {"state": state, "percentage": 10}})
    progress, _, _ = drive(itwin("reality-analysis").progress("j1"), [answer])
    assert progress.state is expected


def test_bentleys_job_details_read_as_the_final_state() -> None:
    progress, _, _ = drive(itwin("reality-modeling").progress_from_details("j1"), [bentley_answer("job_get_200")])
    assert progress.state is JobState.RUNNING


# == listing jobs: GET …/jobs?$filter=… with continuationToken paging ===========================================


def test_list_jobs_follows_the_continuation_token() -> None:
    page2 = {"jobs": [{**bentley("jobs_get_200")["jobs"][0], "id": "third"}]}
    jobs, (first, second), _ = drive(
        itwin("reality-modeling").list_jobs("state eq 'Success'", top=2),
        [bentley_answer("jobs_get_200"), jresp(200, page2)],
    )
    assert [job["id"] for job in jobs] == [
        "2e8b5984-15b1-45d5-8175-572583d8c3c8",
        "7358a7f6-dcf3-4f81-8cdd-5df3396bb0c9",
        "third",
    ]
    assert first.url == f"{ITWIN}/reality-modeling/jobs"
    assert first.params == {"$filter": "state eq 'Success'", "$top": "2"}
    assert first.headers["Accept"] == V2_ACCEPT
    assert second.params == {
        "$filter": "state eq 'Success'",
        "$top": "2",
        "continuationToken": "MTRmZDkwOGYtNWEzOS00YzY3LWFmMGYtMGMxMWQxYWNkMDhl",
    }


def test_list_jobs_filters_on_the_connections_itwin_by_default() -> None:
    _, (request,), _ = drive(itwin("reality-analysis").list_jobs(), [jresp(200, {"jobs": []})])
    assert request.params == {"$filter": "iTwinId eq twin-1"}


def test_the_running_listing_reads_bentleys_pages_to_the_end() -> None:
    """The shared poller's listing of running jobs, page after page of Bentley's own jobs-get-all answer: each
    job's state by id, the next page asked with the continuation token of ``_links.next``."""
    first = bentley("jobs_get_200")
    first["jobs"][0]["state"] = "Active"  # one of its two jobs still running
    second = {"jobs": [{"id": "job-last", "state": "Queued", "name": "n"}, {"id": "", "state": "Active"}, 5]}
    listing, (one, two), _ = drive(itwin("reality-analysis").list_running(), [jresp(200, first), jresp(200, second)])
    expected = {job["id"]: itwin_module.job_state(job) for job in first["jobs"]} | {"job-last": JobState.QUEUED}
    assert {job_id: reading.state for job_id, reading in listing.jobs.items()} == {
        job_id: state for job_id, state in expected.items() if state is not None and not state.is_terminal
    }
    assert listing.complete
    assert "continuationToken" not in (one.params or {})
    assert (two.params or {}).get("continuationToken") == "MTRmZDkwOGYtNWEzOS00YzY3LWFmMGYtMGMxMWQxYWNkMDhl"


@pytest.mark.parametrize("href", ["https://x]jobs?continuationToken=abc", "http://[::1/jobs?continuationToken=a"])
def test_a_next_link_that_is_no_url_is_a_vendor_response_error(href: str) -> None:
    """Not a listing passed off as whole (the unread pages' jobs would be taken for ended), nor a ValueError
    nobody planned for."""
    page = {"jobs": [{"id": "a", "state": "Active"}], "_links": {"next": {"href": href}}}
    for flow in (itwin("reality-analysis").list_running(), itwin("reality-analysis").list_jobs()):
        with pytest.raises(VendorResponseError, match="next"):
            drive(flow, [jresp(200, page)])


def test_list_jobs_without_a_filter_or_itwin_is_refused_before_any_call() -> None:
    api = itwin("reality-analysis")
    api.itwin_id = None
    with pytest.raises(ValueError, match="filter"):
        drive(api.list_jobs(), [])


# == outputs: nested v2 outputs with their format, outputs in the iTwin bucket ================================


def test_nested_v2_outputs_are_named_with_their_format() -> None:
    access = bentley("reality_data_read_access_200")
    sas = access["_links"]["containerUrl"]["href"]
    parts, requests, _ = drive(
        itwin("reality-modeling").results("796715aa"),
        [
            succeeded(bentley("job_create_201")),
            jresp(200, access),
            blob_list(["ref.xml"]),
            jresp(200, access),
            blob_list(["tileset.json", "tiles/0.b3dm"]),
            jresp(200, access),
            blob_list(["model.obj"]),
        ],
    )
    assert [r.url.split("/reality-data/")[-1] for r in requests if "/readaccess" in r.url] == [
        "1aee1cb3-d0cc-4bb3-a261-fdc17b598464/readaccess",
        "9d9da8fa-0b26-4eaa-b297-b22c2bb8e1d1/readaccess",
        "8359a84c-8bd0-4af9-9403-d5f78d8e37e8/readaccess",
    ]
    assert [p.name for p in parts] == [
        "modelingReference/ref.xml",
        "exports/3DTiles/tileset.json",
        "exports/3DTiles/tiles/0.b3dm",
        "exports/OBJ/model.obj",
    ]
    assert parts[1].request is not None
    assert container(parts[1].request.url) == container(sas) + "/tileset.json"


def test_two_exports_of_one_format_get_distinct_names() -> None:
    job = {
        "id": "j1",
        "state": "Success",
        "iTwinId": "twin-1",
        "specifications": {
            "outputs": {"exports": [{"format": "OBJ", "location": "rd-a"}, {"format": "OBJ", "location": "rd-b"}]}
        },
    }
    access = bentley("reality_data_read_access_200")
    parts, _, _ = drive(
        itwin("reality-modeling").results("j1"),
        [jresp(200, {"job": job}), jresp(200, access), blob_list(["m.obj"]), jresp(200, access), blob_list(["m.obj"])],
    )
    assert [p.name for p in parts] == ["exports/OBJ/m.obj", "exports/OBJ-2/m.obj"]


def calibration(report: Any = "bkt:Calibration/job-1/report.json") -> Response:
    job = {
        "id": "j1",
        "type": "Calibration",
        "state": "Success",
        "iTwinId": "twin-of-the-job",
        "specifications": {"inputs": {"scene": "rd-in"}, "outputs": {"scene": "rd-scene", "report": report}},
    }
    return jresp(200, {"job": job})


def test_bucket_outputs_download_through_the_itwin_bucket() -> None:
    access = bentley("reality_data_read_access_200")
    bucket = bentley("bucket_get_200")
    parts, requests, _ = drive(
        itwin("reality-modeling").results("j1"),
        [
            calibration(),
            jresp(200, access),
            blob_list(["scene.xml"]),
            jresp(200, bucket),
            blob_list(["Calibration/job-1/report.json"]),
        ],
    )
    bucket_request, listing = requests[3], requests[4]
    assert bucket_request.url == f"{ITWIN}/reality-modeling/itwins/twin-of-the-job/bucket"
    assert bucket_request.headers["Accept"] == V2_ACCEPT
    assert parse_qs(urlsplit(listing.url).query)["prefix"] == ["Calibration/job-1/report.json"]
    assert listing.authenticated is False
    assert [p.name for p in parts] == ["scene/scene.xml", "report/report.json"]
    assert parts[1].request is not None
    sas = bucket["_links"]["containerUrl"]["href"]
    assert parts[1].request.url.startswith(container(sas) + "/Calibration/job-1/report.json?")
    assert parts[1].request.authenticated is False


def test_a_bucket_folder_output_keeps_its_inner_paths() -> None:
    parts, _, _ = drive(
        itwin("reality-analysis").results("j1"),
        [
            calibration("bkt:eval/out/"),
            jresp(200, bentley("reality_data_read_access_200")),
            blob_list(["scene.xml"]),
            jresp(200, bentley("bucket_get_200")),
            blob_list(["eval/out/report.json", "eval/out/detail/a.csv"]),
        ],
    )
    assert [p.name for p in parts][1:] == ["report/report.json", "report/detail/a.csv"]


def test_a_bucket_output_that_is_not_there_is_an_error_naming_it() -> None:
    with pytest.raises(VendorResponseError, match=r"output 'report'.*bkt:Calibration/job-1/report\.json"):
        drive(
            itwin("reality-modeling").results("j1"),
            [
                calibration(),
                jresp(200, bentley("reality_data_read_access_200")),
                blob_list(["scene.xml"]),
                jresp(200, bentley("bucket_get_200")),
                blob_list([]),
            ],
        )


def test_an_output_we_cannot_read_is_an_error_naming_it() -> None:
    with pytest.raises(VendorResponseError, match="output 'report'"):
        drive(itwin("reality-modeling").results("j1"), [calibration(report=42)])


def test_an_empty_output_container_is_an_error_naming_it() -> None:
    with pytest.raises(VendorResponseError, match=r"output 'scene'.*rd-scene.*no files"):
        drive(
            itwin("reality-modeling").results("j1"),
            [calibration(), jresp(200, bentley("reality_data_read_access_200")), blob_list([])],
        )


def test_a_finished_v1_output_without_an_id_is_an_error_naming_it() -> None:
    details = {"job": {"id": "j1", "state": "success", "outputs": [{"type": "objects2D", "id": "rd-1"}, {"type": "x"}]}}
    with pytest.raises(VendorResponseError, match="output 'x' has no reality data id"):
        drive(itwin().results("j1"), [jresp(200, details)])


# == MeadCo ScriptX.Services: what MeadCo's own client does (ScriptX.Print.Client, src/meadco-scriptxprint.js) ==


def test_status_4_without_a_job_identifier_is_done_at_once() -> None:
    # printAtServer: status 4 (OK) goes to responseInterface.ok, "printed ok, no further information".
    api = scriptx()
    job_id, (request,), _ = drive(api.submit({"document": "d"}), [jresp(200, {"status": 4, "jobIdentifier": ""})])
    assert request.path == "/api/v1/printPdf/print"
    progress, sent, _ = drive(api.progress(job_id), [])
    assert sent == [], "there is no job at the vendor to ask about"
    assert (progress.state, progress.percent) == (JobState.SUCCEEDED, 100.0)
    assert "status 4" in (progress.message or "")
    with pytest.raises(OperationNotSupportedError, match="no file output"):
        drive(api.results(job_id), [])


def test_status_4_with_a_job_identifier_is_followed() -> None:
    job_id, _, _ = drive(scriptx().submit({"document": "d"}), [jresp(200, {"status": 4, "jobIdentifier": "t9"})])
    assert job_id == "t9"


def test_the_licensed_page_url_is_sent_as_x_meadroid_path() -> None:
    conn = ConnectionFields(
        "sx", host="sx.example", password="guid", extra={"variant": "cloud", "meadroid_path": "https://app.example/p"}
    )
    api = ScriptXApi.from_connection(conn)
    _, (request,), _ = drive(api.progress("t1"), [jresp(200, {"status": 1, "jobIdentifier": "t1"})])
    assert request.headers["X-Meadroid-Path"] == "https://app.example/p"
    _, (plain,), _ = drive(scriptx().progress("t1"), [jresp(200, {"status": 1, "jobIdentifier": "t1"})])
    assert "X-Meadroid-Path" not in plain.headers


# == Upland OL Connect: what Upland's own client reads (AllInOneService) ======================================

SPOOLED = "/out/op1/a.pdf\n/out/op1/b.pdf\n"
SET_IDS = {"X-Data-Set-ID": "12", "X-Content-Set-ID": "34", "X-Job-Set-ID": "56", "X-Result-Type": "Job-Set-ID"}


def test_a_json_managed_result_names_a_folder_and_its_files() -> None:
    # AllInOneService parses getManagedResult as JSON: ManagedFileResult {identifier, files}.
    managed = jresp(200, {"identifier": 5001, "files": ["a.pdf", "b.pdf"]})
    parts, _, _ = drive(olconnect().results("op1"), [text(200, SPOOLED), managed])
    assert [p.name for p in parts] == ["a.pdf", "b.pdf"]
    assert [p.request.url for p in parts if p.request] == [
        f"{OLC}/rest/serverengine/filestore/file/5001/a.pdf",
        f"{OLC}/rest/serverengine/filestore/file/5001/b.pdf",
    ]


def test_a_text_managed_result_is_one_file_store_id_per_line() -> None:
    parts, _, _ = drive(olconnect().results("op1"), [text(200, SPOOLED), text(200, "1001\n1002")])
    assert [p.request.url for p in parts if p.request] == [
        f"{OLC}/rest/serverengine/filestore/file/1001",
        f"{OLC}/rest/serverengine/filestore/file/1002",
    ]


def test_json_that_is_not_a_managed_result_falls_back_to_the_paths() -> None:
    parts, _, _ = drive(olconnect().results("op1"), [text(200, SPOOLED), jresp(200, {"something": "else"})])
    assert [p.value for p in parts] == [SPOOLED]


@pytest.mark.parametrize("spooled", ["/out/op1/only.pdf", SPOOLED])
def test_the_set_ids_in_the_result_headers_travel_with_the_result(spooled: str) -> None:
    answers = [text(200, spooled, SET_IDS)]
    if "\n" in spooled.strip():
        answers.append(jresp(200, {"identifier": 5001, "files": ["a.pdf", "b.pdf"]}, SET_IDS))
    parts, _, _ = drive(olconnect().results("op1"), answers)
    assert {p.name: dict(p.metadata) for p in parts} == {
        p.name: {"data_set_id": 12, "content_set_id": 34, "job_set_id": 56} for p in parts
    }
    xcom_parts, _, _ = drive(olconnect().xcom_results("op1"), [text(200, spooled, SET_IDS)])
    assert dict(xcom_parts[0].metadata) == {"data_set_id": 12, "content_set_id": 34, "job_set_id": 56}


def test_without_set_id_headers_there_is_no_metadata() -> None:
    parts, _, _ = drive(olconnect().results("op1"), [text(200, "/out/op1/only.pdf")])
    assert dict(parts[0].metadata) == {}


def test_a_bodiless_401_says_the_server_wants_credentials() -> None:
    api = OLConnectApi(OLC)  # no user: server security assumed off
    with pytest.raises(AuthenticationError, match="requires credentials"):
        drive(api.progress("op1"), [Response.build(401, {"WWW-Authenticate": "BASIC"}, b"")])
