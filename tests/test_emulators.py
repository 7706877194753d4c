"""Tests of the vendor emulators over real HTTP with plain requests."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_jobprogress.testing.emulators import Faults, Quota, Scenario, ScenarioError, VendorEmulator

OL = "/rest/serverengine"
AIO = f"{OL}/workflow/print"
PDF = "/api/v1/printPdf"
V1 = "application/vnd.bentley.itwin-platform.v1+json"
V2 = "application/vnd.bentley.itwin-platform.v2+json"
TIMEOUT = 10
# A download cut short surfaces as one of these, depending on where the reader notices.
DROPPED = (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)


@pytest.fixture
def emulator() -> Iterator[VendorEmulator]:
    with VendorEmulator() as emu:
        yield emu


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- OL Connect helpers -----------------------------------------------------------------------------


def ol_login(emu: VendorEmulator) -> dict[str, str]:
    r = requests.post(f"{emu.url}{OL}/authentication/login", auth=("ol-admin", "secret"), timeout=TIMEOUT)
    assert r.status_code == 200
    return {"auth_token": r.text}


def ol_submit(emu: VendorEmulator, headers: dict[str, str], config: dict[str, Any] | None = None) -> str:
    body = config if config is not None else {"datamining": {"identifier": "data.csv"}, "outputcreation": {}}
    r = requests.post(f"{emu.url}{AIO}/submit", json=body, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 202, r.text
    return r.headers["operationId"]


def ol_progress(emu: VendorEmulator, headers: dict[str, str], op: str) -> requests.Response:
    return requests.get(f"{emu.url}{AIO}/getProgress/{op}", headers=headers, timeout=TIMEOUT)


def ol_error(r: requests.Response) -> dict[str, Any]:
    assert r.headers["Content-Type"].startswith("application/json")
    error: dict[str, Any] = r.json()["error"]
    return error


# -- OL Connect -------------------------------------------------------------------------------------


def test_olconnect_happy_path_progress_then_done_then_result(emulator: VendorEmulator) -> None:
    r = requests.post(f"{emulator.url}{OL}/authentication/login", auth=("ol-admin", "secret"), timeout=TIMEOUT)
    assert r.headers["Token-Expires-In"] == "3600"
    headers = {"auth_token": r.text}
    r = requests.post(f"{emulator.url}{AIO}/submit", json={"datamining": {}}, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 202
    assert r.content == b""
    op = r.headers["operationId"]
    assert f'<{AIO}/getProgress/{op}>; rel="progress"' in r.headers["Link"]
    assert f'<{AIO}/cancel/{op}>; rel="cancel"' in r.headers["Link"]
    assert [ol_progress(emulator, headers, op).text for _ in range(5)] == ["20", "40", "60", "80", "done"]
    r = requests.post(f"{emulator.url}{AIO}/getResult/{op}", headers=headers, timeout=TIMEOUT)
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert len(r.content) == 2048
    assert sha256(r.content) == emulator.result_sha256("olconnect", op)
    assert emulator.job("olconnect", op).served_sha256 == (sha256(r.content),)


def test_olconnect_login_without_credentials_asks_for_basic(emulator: VendorEmulator) -> None:
    r = requests.post(f"{emulator.url}{OL}/authentication/login", timeout=TIMEOUT)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "BASIC"


def test_olconnect_login_with_wrong_password_is_401_json_error(emulator: VendorEmulator) -> None:
    r = requests.post(f"{emulator.url}{OL}/authentication/login", auth=("ol-admin", "nope"), timeout=TIMEOUT)
    assert r.status_code == 401
    assert "WWW-Authenticate" not in r.headers
    assert ol_error(r)["status"] == 401


def test_olconnect_call_without_credentials_is_401_basic(emulator: VendorEmulator) -> None:
    r = requests.get(f"{emulator.url}{AIO}/getProgress/x", timeout=TIMEOUT)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "BASIC"


@pytest.mark.parametrize(
    "headers",
    [{"auth_token": "forged"}, {"Authorization": "Basic b2wtYWRtaW46d3Jvbmc="}],
    ids=["unknown-token", "wrong-basic"],
)
def test_olconnect_invalid_credentials_are_403_json_error(emulator: VendorEmulator, headers: dict[str, Any]) -> None:
    r = requests.get(f"{emulator.url}{AIO}/version", headers=headers, timeout=TIMEOUT)
    assert r.status_code == 403
    assert ol_error(r)["status"] == 403


def test_olconnect_basic_credentials_work_on_every_call(emulator: VendorEmulator) -> None:
    r = requests.get(f"{emulator.url}{AIO}/version", auth=("ol-admin", "secret"), timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.text.startswith("2025.")
    assert requests.get(f"{emulator.url}{AIO}", auth=("ol-admin", "secret"), timeout=TIMEOUT).status_code == 200


def test_olconnect_expired_token_is_401_without_www_authenticate(emulator: VendorEmulator) -> None:
    headers = ol_login(emulator)
    op = ol_submit(emulator, headers)
    emulator.expire_tokens()
    r = ol_progress(emulator, headers, op)
    assert r.status_code == 401
    assert "WWW-Authenticate" not in r.headers
    assert "token has expired" in ol_error(r)["message"]
    assert ol_progress(emulator, ol_login(emulator), op).text == "20"


def test_olconnect_token_ttl_expires_tokens_by_clock() -> None:
    with VendorEmulator(token_ttl=0) as emu:
        r = requests.get(f"{emu.url}{AIO}/version", headers=ol_login(emu), timeout=TIMEOUT)
        assert r.status_code == 401


def test_olconnect_without_server_security_needs_no_credentials() -> None:
    with VendorEmulator(olconnect_security=False) as emu:
        op = ol_submit(emu, {})
        assert ol_progress(emu, {}, op).text == "20"


def test_olconnect_unknown_operation_is_404_json_error(emulator: VendorEmulator) -> None:
    headers = ol_login(emulator)
    r = ol_progress(emulator, headers, "nope")
    assert r.status_code == 404
    assert ol_error(r) == {"status": 404, "message": "Operation nope not found", "parameter": "nope"}
    r = requests.post(f"{emulator.url}{AIO}/cancel/nope", headers=headers, timeout=TIMEOUT)
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"nothing": 1}, "no step"),
        ({"datamining": {"identifier": "missing"}}, "not found in File Store"),
    ],
)
def test_olconnect_invalid_submit_is_400_json_error(
    emulator: VendorEmulator, config: dict[str, Any], message: str
) -> None:
    r = requests.post(f"{emulator.url}{AIO}/submit", json=config, headers=ol_login(emulator), timeout=TIMEOUT)
    assert r.status_code == 400
    assert message in ol_error(r)["message"]


def test_olconnect_submit_that_is_not_json_is_400(emulator: VendorEmulator) -> None:
    r = requests.post(f"{emulator.url}{AIO}/submit", data=b"{", headers=ol_login(emulator), timeout=TIMEOUT)
    assert r.status_code == 400


def test_olconnect_failed_operation_is_500_json_error_with_message(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(outcome="fail", steps=1, message="Template broken"))
    headers = ol_login(emulator)
    op = ol_submit(emulator, headers)
    assert ol_progress(emulator, headers, op).text == "50"
    r = ol_progress(emulator, headers, op)
    assert r.status_code == 500
    assert ol_error(r) == {"status": 500, "message": "Template broken", "parameter": op}
    r = requests.post(f"{emulator.url}{AIO}/getResultTxt/{op}", headers=headers, timeout=TIMEOUT)
    assert r.status_code == 500
    assert ol_error(r)["message"] == "Template broken"


def test_olconnect_our_cancel_shows_as_cancelled(emulator: VendorEmulator) -> None:
    headers = ol_login(emulator)
    op = ol_submit(emulator, headers)
    r = requests.post(f"{emulator.url}{AIO}/cancel/{op}", headers=headers, timeout=TIMEOUT)
    assert r.status_code == 204
    r = ol_progress(emulator, headers, op)
    assert r.status_code == 500
    assert "cancelled" in ol_error(r)["message"]
    assert emulator.job("olconnect", op).cancelled


def test_olconnect_vendor_side_cancel_shows_as_cancelled(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(outcome="cancel", steps=0))
    headers = ol_login(emulator)
    r = ol_progress(emulator, headers, ol_submit(emulator, headers))
    assert r.status_code == 500
    assert "cancelled" in ol_error(r)["message"]


def test_olconnect_result_before_done_is_500_not_completed(emulator: VendorEmulator) -> None:
    headers = ol_login(emulator)
    op = ol_submit(emulator, headers)
    r = requests.post(f"{emulator.url}{AIO}/getResult/{op}", headers=headers, timeout=TIMEOUT)
    assert r.status_code == 500
    assert "not completed" in ol_error(r)["message"]


def test_olconnect_several_outputs_answer_paths_and_managed_files(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(steps=0, outputs=3, result_size=1000))
    headers = ol_login(emulator)
    op = ol_submit(emulator, headers)
    assert ol_progress(emulator, headers, op).text == "done"
    paths = [f"/opt/olconnect/output/{op}/out_{n}.pdf" for n in (1, 2, 3)]
    r = requests.post(f"{emulator.url}{AIO}/getResult/{op}", headers=headers, timeout=TIMEOUT)
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.text.splitlines() == paths
    r = requests.post(f"{emulator.url}{AIO}/getResultTxt/{op}", headers=headers, timeout=TIMEOUT)
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text.splitlines() == paths
    r = requests.post(f"{emulator.url}{AIO}/getManagedResult/{op}", headers=headers, timeout=TIMEOUT)
    file_ids = r.text.splitlines()
    assert len(file_ids) == 3
    for index, file_id in enumerate(file_ids):
        r = requests.get(f"{emulator.url}{OL}/filestore/file/{file_id}", headers=headers, timeout=TIMEOUT)
        assert sha256(r.content) == emulator.result_sha256("olconnect", op, index)
    r = requests.get(f"{emulator.url}{OL}/filestore/file/999999", headers=headers, timeout=TIMEOUT)
    assert r.status_code == 404


def test_olconnect_finished_operation_leaves_active_list_after_retention() -> None:
    with VendorEmulator(retention=0.2) as emu:
        headers = ol_login(emu)
        emu.set_next_scenario("olconnect", Scenario(steps=0))
        op = ol_submit(emu, headers)
        assert ol_progress(emu, headers, op).text == "done"
        time.sleep(0.4)
        assert ol_progress(emu, headers, op).status_code == 404
        r = requests.post(f"{emu.url}{AIO}/getResultTxt/{op}", headers=headers, timeout=TIMEOUT)
        assert r.status_code == 200
        assert op in r.text


def test_olconnect_429_carries_retry_after_and_does_not_advance(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(rate_limit=2, retry_after=7))
    headers = ol_login(emulator)
    op = ol_submit(emulator, headers)
    for _ in range(2):
        r = ol_progress(emulator, headers, op)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "7"
    assert ol_progress(emulator, headers, op).text == "20"


def test_olconnect_flaky_503_has_no_json_error_body(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(flaky=1))
    headers = ol_login(emulator)
    op = ol_submit(emulator, headers)
    r = ol_progress(emulator, headers, op)
    assert r.status_code == 503
    assert not r.headers["Content-Type"].startswith("application/json")
    assert ol_progress(emulator, headers, op).text == "20"


@pytest.mark.parametrize(
    ("mode", "content_type", "body"),
    [
        ("html", "text/html", None),
        ("empty", "text/plain", ""),
        ("nonnumeric", "text/plain", "abc"),
        ("malformed", "application/json", None),
    ],
)
def test_olconnect_garbage_progress(emulator: VendorEmulator, mode: str, content_type: str, body: str | None) -> None:
    emulator.set_next_scenario("olconnect", Scenario(garbage=mode))
    headers = ol_login(emulator)
    op = ol_submit(emulator, headers)
    r = ol_progress(emulator, headers, op)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith(content_type)
    if body is not None:
        assert r.text == body
    if mode == "malformed":
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.text)
    assert emulator.job("olconnect", op).polls == 0


def test_olconnect_duration_moves_progress_by_wall_clock(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(duration=0.5, steps=4))
    headers = ol_login(emulator)
    op = ol_submit(emulator, headers)
    assert ol_progress(emulator, headers, op).text == "0"
    time.sleep(0.6)
    assert ol_progress(emulator, headers, op).text == "done"


def test_olconnect_first_download_is_cut_then_whole(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(steps=0, result_size=300_000, drop_download_at=100_000))
    headers = ol_login(emulator)
    op = ol_submit(emulator, headers)
    ol_progress(emulator, headers, op)
    url = f"{emulator.url}{AIO}/getResult/{op}"
    with pytest.raises(DROPPED):
        requests.post(url, headers=headers, timeout=TIMEOUT)
    r = requests.post(url, headers=headers, timeout=TIMEOUT)
    assert sha256(r.content) == emulator.result_sha256("olconnect", op)
    downloads = emulator.job("olconnect", op).downloads
    assert [(d.size, d.complete) for d in downloads] == [(100_000, False), (300_000, True)]


def ol_operations(emu: VendorEmulator, headers: dict[str, str]) -> requests.Response:
    return requests.get(f"{emu.url}{AIO}/getOperations", headers=headers, timeout=TIMEOUT)


def test_olconnect_get_operations_lists_the_active_operations(emulator: VendorEmulator) -> None:
    """Upland's "Get All Operations" answers the "JSON Operations List" of the operations still running."""
    headers = ol_login(emulator)
    before = time.time()
    emulator.set_next_scenario("olconnect", Scenario(steps=3))
    stepped = ol_submit(emulator, headers)
    emulator.set_next_scenario("olconnect", Scenario(duration=60, steps=4))
    timed = ol_submit(emulator, headers)
    emulator.set_next_scenario("olconnect", Scenario(duration=60))
    cancelled = ol_submit(emulator, headers)
    requests.post(f"{emulator.url}{AIO}/cancel/{cancelled}", headers=headers, timeout=TIMEOUT)
    r = ol_operations(emulator, headers)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    listed = {op["id"]: op for op in r.json()}
    assert set(listed) == {stepped, timed}, "a cancelled operation is no longer active"
    for op in listed.values():
        assert set(op) >= {"id", "type", "subTask", "startTime", "progress"}
        assert op["type"] == "PrintRestService"
        assert op["subTask"] in ("Data Mapping", "Output Creation"), "the steps ol_submit's configuration names"
        assert isinstance(op["startTime"], int)
        assert before * 1000 - 1000 <= op["startTime"] <= time.time() * 1000 + 1000
    assert listed[timed]["progress"] == 0
    # A listing reads every operation it lists, as getProgress reads one: a job that moves a step per read
    # moves a step per listing, and leaves the list once it ended (getProgress then says how).
    assert listed[stepped]["progress"] == 25
    assert [op["progress"] for op in ol_operations(emulator, headers).json() if op["id"] == stepped] == [50]
    assert [op["progress"] for op in ol_operations(emulator, headers).json() if op["id"] == stepped] == [75]
    assert [op["id"] for op in ol_operations(emulator, headers).json()] == [timed]
    assert ol_progress(emulator, headers, stepped).text == "done"


def test_olconnect_get_operations_drops_failed_and_finished_operations(emulator: VendorEmulator) -> None:
    headers = ol_login(emulator)
    emulator.set_next_scenario("olconnect", Scenario(outcome="fail", steps=0, message="Template broken"))
    failed = ol_submit(emulator, headers)
    emulator.set_next_scenario("olconnect", Scenario(steps=0))
    done = ol_submit(emulator, headers)
    assert ol_operations(emulator, headers).json() == []
    assert ol_error(ol_progress(emulator, headers, failed))["message"] == "Template broken"
    assert ol_progress(emulator, headers, done).text == "done"


def test_olconnect_get_operations_needs_credentials_and_meets_faults(emulator: VendorEmulator) -> None:
    r = requests.get(f"{emulator.url}{AIO}/getOperations", timeout=TIMEOUT)
    assert (r.status_code, r.headers["WWW-Authenticate"]) == (401, "BASIC")
    r = requests.get(f"{emulator.url}{AIO}/getOperations", headers={"auth_token": "forged"}, timeout=TIMEOUT)
    assert r.status_code == 403
    r = requests.get(f"{emulator.url}{AIO}/getOperations", auth=("ol-admin", "secret"), timeout=TIMEOUT)
    assert (r.status_code, r.json()) == (200, [])
    headers = ol_login(emulator)
    emulator.set_faults(Faults(error_rate=1.0))
    assert ol_operations(emulator, headers).status_code in (500, 502, 503, 504)


def test_olconnect_get_operations_without_server_security() -> None:
    with VendorEmulator(olconnect_security=False) as emu:
        op = ol_submit(emu, {})
        assert [listed["id"] for listed in ol_operations(emu, {}).json()] == [op]


# -- ScriptX helpers --------------------------------------------------------------------------------

SX_AUTH = ("0d8b9b4e-6a3f-4c1e-9f57-2b7c8e4a1d63", "")


def sx_print(emu: VendorEmulator, **extra: object) -> dict[str, Any]:
    body = {"document": "https://example.com/a.pdf", "device": {"printToFileName": "a.pdf"}, **extra}
    r = requests.post(f"{emu.url}{PDF}/print", json=body, auth=SX_AUTH, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def sx_status(emu: VendorEmulator, token: str) -> requests.Response:
    return requests.get(f"{emu.url}{PDF}/status/{token}", auth=SX_AUTH, timeout=TIMEOUT)


# -- ScriptX ----------------------------------------------------------------------------------------


def test_scriptx_license_constant_is_the_one_tests_use() -> None:
    assert SX_AUTH[0] == VendorEmulator.SCRIPTX_LICENSE


def test_scriptx_happy_path_status_sequence_then_pdf_then_collected(emulator: VendorEmulator) -> None:
    answer = sx_print(emulator)
    assert answer["status"] == 2
    assert answer["message"] == ""
    token = answer["jobIdentifier"]
    statuses = [sx_status(emulator, token).json()["status"] for _ in range(5)]
    assert statuses == [1, 2, 4, 8, 6]
    r = requests.get(f"{emulator.url}{PDF}/download/{token}", timeout=TIMEOUT)
    assert r.headers["Content-Type"] == "application/pdf"
    assert r.headers["Content-Disposition"] == 'attachment; filename="a.pdf"'
    assert r.content.startswith(b"%PDF-1.7\n")
    assert len(r.content) == 2048
    assert sha256(r.content) == emulator.result_sha256("scriptx", token)
    assert sx_status(emulator, token).json() == {"status": 100, "message": "", "jobIdentifier": token}
    assert requests.get(f"{emulator.url}{PDF}/download/{token}", timeout=TIMEOUT).status_code == 404


def test_scriptx_missing_authorization_is_401(emulator: VendorEmulator) -> None:
    r = requests.get(f"{emulator.url}{PDF}/status/x", timeout=TIMEOUT)
    assert (r.status_code, r.text) == (401, "Unauthorized")


def test_scriptx_unknown_license_is_401(emulator: VendorEmulator) -> None:
    r = requests.get(f"{emulator.url}{PDF}/status/x", auth=("00000000-0000-0000-0000-000000000000", ""), timeout=10)
    assert (r.status_code, r.text) == (401, "Unauthorized - unknown license")


def test_scriptx_service_description_and_licensing(emulator: VendorEmulator) -> None:
    description = requests.get(f"{emulator.url}/api", timeout=TIMEOUT).json()
    assert description["serviceClass"] == 1
    assert description["currentAPIVersion"] == "v1"
    assert description["printPDF"] is True
    assert "major" in description["serviceVersion"]
    license_ = requests.get(f"{emulator.url}/api/v1/licensing", auth=SX_AUTH, timeout=TIMEOUT).json()
    assert license_["guid"] == SX_AUTH[0]
    ping = requests.get(f"{emulator.url}/api/v1/licensing/ping", params={"licenseGuid": SX_AUTH[0]}, timeout=10)
    assert ping.status_code == 200
    assert ping.json()["printPdf"] is True
    assert requests.get(f"{emulator.url}/api/v1/licensing", timeout=TIMEOUT).status_code == 401


def test_scriptx_print_without_document_is_400(emulator: VendorEmulator) -> None:
    r = requests.post(f"{emulator.url}{PDF}/print", json={"description": "x"}, auth=SX_AUTH, timeout=TIMEOUT)
    assert (r.status_code, r.text) == (400, "PDF print failed: no document")


def test_scriptx_unknown_job_is_404(emulator: VendorEmulator) -> None:
    r = sx_status(emulator, "nope")
    assert (r.status_code, r.text) == (404, "Job not found")


def test_scriptx_soft_error_answers_status_3_at_once(emulator: VendorEmulator) -> None:
    answer = sx_print(emulator, emulator={"outcome": "soft_error", "message": "bad pdf"})
    assert answer == {"status": 3, "jobIdentifier": "", "message": "bad pdf"}


def test_scriptx_immediate_answers_status_4_and_is_complete(emulator: VendorEmulator) -> None:
    answer = sx_print(emulator, emulator={"outcome": "immediate"})
    assert answer["status"] == 4
    assert answer["jobIdentifier"]
    assert sx_status(emulator, answer["jobIdentifier"]).json()["status"] == 6


@pytest.mark.parametrize(("outcome", "status"), [("fail", -1), ("cancel", -2), ("code_exception", 101)])
def test_scriptx_terminal_failures(emulator: VendorEmulator, outcome: str, status: int) -> None:
    token = sx_print(emulator, emulator={"outcome": outcome, "steps": 0, "message": "boom"})["jobIdentifier"]
    assert sx_status(emulator, token).json() == {"status": status, "message": "boom", "jobIdentifier": token}
    assert requests.get(f"{emulator.url}{PDF}/download/{token}", timeout=TIMEOUT).status_code == 404


def test_scriptx_download_before_completion_is_404(emulator: VendorEmulator) -> None:
    token = sx_print(emulator)["jobIdentifier"]
    r = requests.get(f"{emulator.url}{PDF}/download/{token}", timeout=TIMEOUT)
    assert (r.status_code, r.text) == (404, "Job output not available")


def test_scriptx_429_then_503_then_status(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("scriptx", Scenario(rate_limit=1, retry_after=3, flaky=1))
    token = sx_print(emulator)["jobIdentifier"]
    r = sx_status(emulator, token)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "3"
    assert sx_status(emulator, token).status_code == 503
    assert sx_status(emulator, token).json()["status"] == 1


@pytest.mark.parametrize(("mode", "status"), [("unknown_status", 42), ("nonnumeric", "abc")])
def test_scriptx_garbage_status_values(emulator: VendorEmulator, mode: str, status: object) -> None:
    token = sx_print(emulator, emulator={"garbage": mode})["jobIdentifier"]
    assert sx_status(emulator, token).json()["status"] == status


def test_scriptx_first_download_is_cut_then_whole(emulator: VendorEmulator) -> None:
    token = sx_print(emulator, emulator={"steps": 0, "result_size": 200_000, "drop_download_at": 70_000})[
        "jobIdentifier"
    ]
    sx_status(emulator, token)
    url = f"{emulator.url}{PDF}/download/{token}"
    with pytest.raises(DROPPED):
        requests.get(url, timeout=TIMEOUT)
    assert sx_status(emulator, token).json()["status"] == 6  # a cut download has not collected the output
    assert sha256(requests.get(url, timeout=TIMEOUT).content) == emulator.result_sha256("scriptx", token)


def test_scriptx_big_result_streams_whole(emulator: VendorEmulator) -> None:
    size = 50 * 1024 * 1024
    token = sx_print(emulator, emulator={"steps": 0, "result_size": size})["jobIdentifier"]
    sx_status(emulator, token)
    digest, received = hashlib.sha256(), 0
    with requests.get(f"{emulator.url}{PDF}/download/{token}", stream=True, timeout=TIMEOUT) as r:
        assert r.headers["Content-Length"] == str(size)
        for chunk in r.iter_content(1024 * 1024):
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == emulator.result_sha256("scriptx", token)


# -- iTwin helpers ----------------------------------------------------------------------------------


def itwin_token(emu: VendorEmulator) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": emu.ITWIN_CLIENT_ID,
        "client_secret": emu.ITWIN_CLIENT_SECRET,
        "scope": "itwin-platform",
    }
    r = requests.post(f"{emu.url}/connect/token", data=form, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 3600
    return str(answer["access_token"])


def itwin_headers(emu: VendorEmulator, accept: str = V1) -> dict[str, str]:
    return {"Authorization": f"Bearer {itwin_token(emu)}", "Accept": accept}


def v1_create(emu: VendorEmulator, headers: dict[str, str], api: str = "realitydataanalysis", **extra: object) -> str:
    body = {
        "name": "detect",
        "iTwinId": emu.ITWIN_ID,
        "type": "objects2D",
        "inputs": [{"type": "photos", "id": "in-1"}],
        "outputs": ["objects2D"],
        **extra,
    }
    r = requests.post(f"{emu.url}/{api}/jobs", json=body, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 201, r.text
    job = r.json()["job"]
    assert job["state"] == "unsubmitted"
    assert [o["type"] for o in job["outputs"]] == ["objects2D"]
    return str(job["id"])


def v1_submit(emu: VendorEmulator, headers: dict[str, str], job_id: str, api: str = "realitydataanalysis") -> None:
    r = requests.patch(f"{emu.url}/{api}/jobs/{job_id}", json={"state": "active"}, headers=headers, timeout=10)
    assert r.status_code == 200
    assert r.json()["job"]["state"] == "active"


def v1_progress(emu: VendorEmulator, headers: dict[str, str], job_id: str) -> requests.Response:
    return requests.get(f"{emu.url}/realitydataanalysis/jobs/{job_id}/progress", headers=headers, timeout=10)


def download_container(emu: VendorEmulator, headers: dict[str, str], reality_data_id: str) -> dict[str, bytes]:
    r = requests.get(
        f"{emu.url}/reality-management/reality-data/{reality_data_id}/readaccess",
        params={"iTwinId": emu.ITWIN_ID},
        headers=headers,
        timeout=TIMEOUT,
    )
    assert r.status_code == 200
    assert r.json()["type"] == "AzureBlobSasUrl"
    container = urlsplit(r.json()["_links"]["containerUrl"]["href"])
    assert parse_qs(container.query)["sp"] == ["rl"]
    base = f"{container.scheme}://{container.netloc}{container.path}"
    listing = requests.get(f"{base}?restype=container&comp=list&{container.query}", timeout=TIMEOUT)
    tree = ET.fromstring(listing.content)  # noqa: S314 - the emulator's own XML
    names = [blob.findtext("Name") or "" for blob in tree.iter("Blob")]
    return {name: requests.get(f"{base}/{name}?{container.query}", timeout=TIMEOUT).content for name in names}


# -- iTwin ------------------------------------------------------------------------------------------


def test_itwin_v1_happy_path_progress_details_and_blobs(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("itwin", Scenario(outputs=2, result_size=5000))
    headers = itwin_headers(emulator)
    job_id = v1_create(emulator, headers)
    assert v1_progress(emulator, headers, job_id).json()["error"]["code"] == "ProgressNotFound"
    v1_submit(emulator, headers, job_id)
    progress = [v1_progress(emulator, headers, job_id).json()["progress"] for _ in range(4)]
    assert [p["percentage"] for p in progress] == [20, 40, 60, 80]
    assert {p["state"] for p in progress} == {"active"}
    assert progress[0]["step"] == "Prepare_Step"
    final = v1_progress(emulator, headers, job_id).json()["progress"]
    assert final == {"percentage": 100, "state": "success", "step": "Finalize"}
    job = requests.get(f"{emulator.url}/realitydataanalysis/jobs/{job_id}", headers=headers, timeout=10).json()["job"]
    assert job["state"] == "success"
    assert job["executionInformation"]["exitCode"] == 0
    blobs = download_container(emulator, headers, job["outputs"][0]["id"])
    assert sorted(blobs) == ["output/part_1.bin", "output/part_2.bin"]
    for index, name in enumerate(sorted(blobs)):
        assert sha256(blobs[name]) == emulator.result_sha256("itwin", job_id, index)


def test_itwin_token_errors(emulator: VendorEmulator) -> None:
    url = f"{emulator.url}/connect/token"
    good = {"grant_type": "client_credentials", "client_id": emulator.ITWIN_CLIENT_ID}
    good["client_secret"] = emulator.ITWIN_CLIENT_SECRET
    cases = [
        ({**good, "client_secret": "wrong"}, "invalid_client"),
        ({**good, "scope": "realitydataanalysis:read"}, "invalid_scope"),
        ({**good, "grant_type": "password"}, "unsupported_grant_type"),
    ]
    for form, code in cases:
        r = requests.post(url, data=form, timeout=TIMEOUT)
        assert (r.status_code, r.json()) == (400, {"error": code})


def test_itwin_token_accepts_basic_client_authentication(emulator: VendorEmulator) -> None:
    auth = (emulator.ITWIN_CLIENT_ID, emulator.ITWIN_CLIENT_SECRET)
    r = requests.post(f"{emulator.url}/connect/token", data={"grant_type": "client_credentials"}, auth=auth, timeout=10)
    assert r.status_code == 200
    assert r.json()["scope"] == "itwin-platform"


def test_itwin_missing_authorization_is_401_header_not_found(emulator: VendorEmulator) -> None:
    r = requests.get(f"{emulator.url}/realitydataanalysis/jobs/x/progress", timeout=TIMEOUT)
    assert r.status_code == 401
    assert r.json() == {
        "error": {
            "code": "HeaderNotFound",
            "message": "Header Authorization was not found in the request. Access denied.",
        }
    }


def test_itwin_invalid_and_expired_tokens_are_401(emulator: VendorEmulator) -> None:
    url = f"{emulator.url}/realitydataanalysis/jobs/x/progress"
    r = requests.get(url, headers={"Authorization": "Bearer forged"}, timeout=TIMEOUT)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "InvalidToken"
    headers = itwin_headers(emulator)
    assert requests.get(url, headers=headers, timeout=TIMEOUT).status_code == 404
    emulator.expire_tokens()
    r = requests.get(url, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 401
    assert "expired" in r.json()["error"]["message"]


def test_itwin_other_api_version_in_accept_is_406(emulator: VendorEmulator) -> None:
    r = requests.get(f"{emulator.url}/realitydataanalysis/jobs/x", headers=itwin_headers(emulator, V2), timeout=10)
    assert r.status_code == 406
    assert r.json()["error"]["code"] == "InvalidApiVersion"


def test_itwin_unknown_job_is_404_job_not_found(emulator: VendorEmulator) -> None:
    r = v1_progress(emulator, itwin_headers(emulator), "nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "JobNotFound"


def test_itwin_invalid_create_is_400_with_details(emulator: VendorEmulator) -> None:
    r = requests.post(
        f"{emulator.url}/realitydataanalysis/jobs", json={"name": "x"}, headers=itwin_headers(emulator), timeout=10
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "InvalidRealityDataAnalysisRequest"
    assert {d["target"] for d in error["details"]} == {"type", "iTwinId", "inputs", "outputs"}


def test_itwin_v1_cancel_delete_and_invalid_changes(emulator: VendorEmulator) -> None:
    headers = itwin_headers(emulator)
    url = f"{emulator.url}/realitydataanalysis/jobs"
    job_id = v1_create(emulator, headers)
    assert requests.delete(f"{url}/{job_id}", headers=headers, timeout=TIMEOUT).status_code == 204
    job_id = v1_create(emulator, headers)
    v1_submit(emulator, headers, job_id)
    assert requests.delete(f"{url}/{job_id}", headers=headers, timeout=TIMEOUT).status_code == 422
    r = requests.patch(f"{url}/{job_id}", json={"state": "active"}, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "InvalidChange"
    r = requests.patch(f"{url}/{job_id}", json={"state": "cancelled"}, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.json()["job"]["state"] == "cancelled"
    assert v1_progress(emulator, headers, job_id).json()["progress"]["state"] == "cancelled"
    r = requests.patch(f"{url}/{job_id}", json={"state": "cancelled"}, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 422


def test_itwin_failed_job_reports_errors_in_execution_information(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("itwin", Scenario(outcome="fail", steps=0, message="No photos"))
    headers = itwin_headers(emulator)
    job_id = v1_create(emulator, headers)
    v1_submit(emulator, headers, job_id)
    job = requests.get(f"{emulator.url}/realitydataanalysis/jobs/{job_id}", headers=headers, timeout=10).json()["job"]
    assert job["state"] == "failed"
    assert job["executionInformation"]["errors"][0]["message"] == "No photos"
    rd = job["outputs"][0]["id"]  # ids from creation on, but a failed job's reality data holds nothing
    r = requests.get(f"{emulator.url}/reality-management/reality-data/{rd}/readaccess", headers=headers, timeout=10)
    assert r.status_code == 404


def test_itwin_429_rate_limit_exceeded_with_retry_after(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("itwin", Scenario(rate_limit=1, retry_after=15, flaky=1))
    headers = itwin_headers(emulator)
    job_id = v1_create(emulator, headers)
    v1_submit(emulator, headers, job_id)
    r = v1_progress(emulator, headers, job_id)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "15"
    assert r.json()["error"]["code"] == "RateLimitExceeded"
    assert v1_progress(emulator, headers, job_id).status_code == 503
    assert v1_progress(emulator, headers, job_id).json()["progress"]["percentage"] == 20


def test_itwin_unknown_state_garbage(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("itwin", Scenario(garbage="unknown_status"))
    headers = itwin_headers(emulator)
    job_id = v1_create(emulator, headers)
    v1_submit(emulator, headers, job_id)
    assert v1_progress(emulator, headers, job_id).json()["progress"]["state"] == "weird"
    job = requests.get(f"{emulator.url}/realitydataanalysis/jobs/{job_id}", headers=headers, timeout=10).json()["job"]
    assert job["state"] == "weird"


def test_itwin_realityconversion_uses_its_own_error_code(emulator: VendorEmulator) -> None:
    headers = itwin_headers(emulator)
    job_id = v1_create(emulator, headers, api="realityconversion")
    r = requests.post(f"{emulator.url}/realityconversion/jobs", json={}, headers=headers, timeout=TIMEOUT)
    assert r.json()["error"]["code"] == "InvalidRealityConversionRequest"
    r = requests.get(f"{emulator.url}/realitydataanalysis/jobs/{job_id}", headers=headers, timeout=TIMEOUT)
    assert r.status_code == 404


def test_itwin_v2_reality_modeling_lifecycle(emulator: VendorEmulator) -> None:
    headers = itwin_headers(emulator, V2)
    body = {
        "type": "Reconstruction",
        "name": "model",
        "iTwinId": emulator.ITWIN_ID,
        "specifications": {"inputs": [{"uuid": "in"}], "outputs": ["scene"], "options": {}},
    }
    r = requests.post(f"{emulator.url}/reality-modeling/jobs", json=body, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 201
    assert r.json()["job"]["state"] == "Active"
    job_id = r.json()["job"]["id"]
    url = f"{emulator.url}/reality-modeling/jobs/{job_id}"
    progress = [requests.get(f"{url}/progress", headers=headers, timeout=10).json()["progress"] for _ in range(5)]
    assert progress[0] == {"state": "Active", "percentage": 20}
    assert progress[-1] == {"state": "Success", "percentage": 100}
    job = requests.get(url, headers=headers, timeout=TIMEOUT).json()["job"]
    blobs = download_container(emulator, itwin_headers(emulator), job["specifications"]["outputs"]["scene"])
    assert sha256(blobs["output/part_1.bin"]) == emulator.result_sha256("itwin", job_id)
    assert requests.delete(url, headers=headers, timeout=TIMEOUT).status_code == 422


def test_itwin_v2_cancel_goes_through_terminating_on_cancel(emulator: VendorEmulator) -> None:
    headers = itwin_headers(emulator, V2)
    body = {"type": "Tiling", "iTwinId": emulator.ITWIN_ID, "specifications": {"inputs": ["a"], "outputs": ["b"]}}
    job_id = requests.post(f"{emulator.url}/reality-modeling/jobs", json=body, headers=headers, timeout=10).json()[
        "job"
    ]["id"]
    url = f"{emulator.url}/reality-modeling/jobs/{job_id}"
    r = requests.delete(url, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.json()["job"]["state"] == "TerminatingOnCancel"
    assert requests.get(f"{url}/progress", headers=headers, timeout=10).json()["progress"]["state"] == "Cancelled"


def test_itwin_v2_failure_messages(emulator: VendorEmulator) -> None:
    headers = itwin_headers(emulator, V2)
    body = {
        "type": "Tiling",
        "iTwinId": emulator.ITWIN_ID,
        "specifications": {"inputs": ["a"], "outputs": ["b"]},
        "emulator": {"outcome": "fail", "steps": 0, "message": "Out of disk"},
    }
    job_id = requests.post(f"{emulator.url}/reality-modeling/jobs", json=body, headers=headers, timeout=10).json()[
        "job"
    ]["id"]
    url = f"{emulator.url}/reality-modeling/jobs/{job_id}"
    assert requests.get(url, headers=headers, timeout=TIMEOUT).json()["job"]["state"] == "Failed"
    messages = requests.get(f"{url}/messages", headers=headers, timeout=TIMEOUT).json()["messages"]
    assert messages["errors"][0]["message"] == "Out of disk"
    assert messages["warnings"] == []


def test_itwin_blob_store_rejects_bad_signature_and_unknown_blob(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("itwin", Scenario(steps=0))
    headers = itwin_headers(emulator)
    job_id = v1_create(emulator, headers)
    v1_submit(emulator, headers, job_id)
    job = requests.get(f"{emulator.url}/realitydataanalysis/jobs/{job_id}", headers=headers, timeout=10).json()["job"]
    rd = job["outputs"][0]["id"]
    r = requests.get(f"{emulator.url}/reality-management/reality-data/{rd}/readaccess", headers=headers, timeout=10)
    href = r.json()["_links"]["containerUrl"]["href"]
    base, _, query = href.partition("?")
    r = requests.get(f"{base}/output/part_1.bin?sig=forged", timeout=TIMEOUT)
    assert r.status_code == 403
    assert b"<Code>AuthenticationFailed</Code>" in r.content
    r = requests.get(f"{base}/output/nope.bin?{query}", timeout=TIMEOUT)
    assert r.status_code == 404
    assert r.headers["x-ms-error-code"] == "BlobNotFound"
    r = requests.get(f"{emulator.url}/reality-management/reality-data/nope/readaccess", headers=headers, timeout=10)
    assert r.status_code == 404


def test_itwin_first_blob_download_is_cut_then_whole(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("itwin", Scenario(steps=0, result_size=150_000, drop_download_at=1000))
    headers = itwin_headers(emulator)
    job_id = v1_create(emulator, headers)
    v1_submit(emulator, headers, job_id)
    job = requests.get(f"{emulator.url}/realitydataanalysis/jobs/{job_id}", headers=headers, timeout=10).json()["job"]
    rd = job["outputs"][0]["id"]
    r = requests.get(f"{emulator.url}/reality-management/reality-data/{rd}/readaccess", headers=headers, timeout=10)
    base, _, query = r.json()["_links"]["containerUrl"]["href"].partition("?")
    with pytest.raises(DROPPED):
        requests.get(f"{base}/output/part_1.bin?{query}", timeout=TIMEOUT)
    r = requests.get(f"{base}/output/part_1.bin?{query}", timeout=TIMEOUT)
    assert sha256(r.content) == emulator.result_sha256("itwin", job_id)


# -- scenarios, control API, call log, server -------------------------------------------------------


def test_scenario_precedence_header_over_body_over_queue(emulator: VendorEmulator) -> None:
    emulator.set_default_scenario("scriptx", Scenario(outcome="fail", steps=0))
    emulator.set_next_scenario("scriptx", Scenario(outcome="cancel", steps=0))
    url = f"{emulator.url}{PDF}/print"
    body = {"document": "data:application/pdf;base64,JVBERi0=", "emulator": {"outcome": "immediate"}}
    header = {"X-Emulator-Scenario": json.dumps({"outcome": "soft_error", "message": "from header"})}
    assert requests.post(url, json=body, headers=header, auth=SX_AUTH, timeout=10).json()["status"] == 3
    assert requests.post(url, json=body, auth=SX_AUTH, timeout=10).json()["status"] == 4
    token = sx_print(emulator)["jobIdentifier"]
    assert sx_status(emulator, token).json()["status"] == -2  # the queued one, still there after the above
    token = sx_print(emulator)["jobIdentifier"]
    assert sx_status(emulator, token).json()["status"] == -1  # the default


def test_invalid_scenario_header_is_400(emulator: VendorEmulator) -> None:
    header = {"X-Emulator-Scenario": json.dumps({"outcome": "explode"})}
    r = requests.post(f"{emulator.url}{PDF}/print", json={"document": "x"}, headers=header, auth=SX_AUTH, timeout=10)
    assert r.status_code == 400
    assert "outcome" in r.text


def test_scenario_round_trips_and_rejects_unknown_fields() -> None:
    scenario = Scenario(outcome="fail", duration=2, garbage="html", message="m")
    assert Scenario.from_dict(scenario.to_dict()) == scenario
    with pytest.raises(ScenarioError):
        Scenario.from_dict({"stepz": 3})
    with pytest.raises(ScenarioError):
        Scenario(rate_limit=-1)


def test_control_api_over_http(emulator: VendorEmulator) -> None:
    control = f"{emulator.url}/_emulator"
    r = requests.post(f"{control}/scenario", json={"vendor": "olconnect", "scenario": {"steps": 1}}, timeout=10)
    assert r.status_code == 204
    headers = ol_login(emulator)
    op = ol_submit(emulator, headers)
    assert ol_progress(emulator, headers, op).text == "50"
    record = requests.get(f"{control}/jobs/olconnect/{op}", timeout=TIMEOUT).json()
    assert record["state"] == "running"
    assert record["scenario"]["steps"] == 1
    assert record["polls"] == 1
    sha = requests.get(f"{control}/jobs/olconnect/{op}/result-sha256", timeout=TIMEOUT).json()["sha256"]
    assert sha == emulator.result_sha256("olconnect", op)
    calls = requests.get(f"{control}/calls", timeout=TIMEOUT).json()
    assert [c["path"] for c in calls][-1] == f"{AIO}/getProgress/{op}"
    assert calls[-1]["vendor"] == "olconnect"
    assert calls[-1]["job_id"] == op
    assert requests.post(f"{control}/expire-tokens", timeout=TIMEOUT).status_code == 204
    assert ol_progress(emulator, headers, op).status_code == 401
    assert requests.post(f"{control}/reset", timeout=TIMEOUT).status_code == 204
    assert emulator.calls == []
    assert requests.get(f"{control}/jobs/olconnect/{op}", timeout=TIMEOUT).status_code == 404


def test_control_api_sets_default_scenario(emulator: VendorEmulator) -> None:
    body = {"vendor": "scriptx", "scenario": {"outcome": "fail", "steps": 0}, "default": True}
    requests.post(f"{emulator.url}/_emulator/scenario", json=body, timeout=TIMEOUT)
    for _ in range(2):
        assert sx_status(emulator, sx_print(emulator)["jobIdentifier"]).json()["status"] == -1


def test_call_log_has_paths_without_query_and_counts(emulator: VendorEmulator) -> None:
    requests.get(f"{emulator.url}/api/v1/licensing/ping", params={"licenseGuid": "secret-ish"}, timeout=10)
    call = emulator.calls[-1]
    assert (call.method, call.path, call.status, call.vendor) == ("GET", "/api/v1/licensing/ping", 404, "scriptx")
    assert emulator.count("get", "/licensing/ping") == 1


def test_unknown_path_is_404(emulator: VendorEmulator) -> None:
    assert requests.get(f"{emulator.url}/nothing/here", timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{emulator.url}{AIO}/nothing", headers=ol_login(emulator), timeout=10).status_code == 404


def test_connections_point_at_the_emulator(emulator: VendorEmulator) -> None:
    conns = {name: json.loads(value) for name, value in emulator.connections().items()}
    assert set(conns) == {"olconnect_default", "scriptx_default", "itwin_default", "itwin_reality_analysis"}
    assert conns["itwin_reality_analysis"]["extra"]["api"] == "reality-analysis"
    ol = conns["olconnect_default"]
    assert (ol["host"], ol["port"], ol["schema"], ol["extra"]) == (
        "127.0.0.1",
        emulator.port,
        "http",
        {"auth": "token"},
    )
    assert conns["scriptx_default"]["password"] == emulator.SCRIPTX_LICENSE
    extra = conns["itwin_default"]["extra"]
    assert extra["auth_url"] == f"{emulator.url}/connect/token"
    assert extra["itwin_id"] == emulator.ITWIN_ID


def test_concurrent_polls_keep_each_job_consistent(emulator: VendorEmulator) -> None:
    tokens = [sx_print(emulator, emulator={"steps": 20})["jobIdentifier"] for _ in range(8)]

    def poll_to_the_end(token: str) -> list[int]:
        with requests.Session() as session:
            session.auth = SX_AUTH
            url = f"{emulator.url}{PDF}/status/{token}"
            return [session.get(url, timeout=TIMEOUT).json()["status"] for _ in range(21)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        sequences = list(pool.map(poll_to_the_end, tokens))
    assert all(sequence[-1] == 6 and 6 not in sequence[:-1] for sequence in sequences)
    assert all(emulator.job("scriptx", token).polls == 21 for token in tokens)


def test_stop_releases_the_port() -> None:
    emu = VendorEmulator().start()
    url = emu.url
    emu.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{url}/api", timeout=2)


def test_cli_prints_url_and_connections_then_stops_on_sigterm() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_jobprogress.testing.emulators", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = first.split()[-1]
        exports = [proc.stdout.readline() for _ in range(3)]
        assert [line.split("=", 1)[0] for line in exports] == [
            "export AIRFLOW_CONN_OLCONNECT_DEFAULT",
            "export AIRFLOW_CONN_SCRIPTX_DEFAULT",
            "export AIRFLOW_CONN_ITWIN_DEFAULT",
        ]
        assert requests.get(f"{url}/api", timeout=TIMEOUT).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- quotas: a vendor's limit of N calls per window, rehearsed ------------------------------------------


def itwin_job_get(emu: VendorEmulator, headers: dict[str, str]) -> requests.Response:
    return requests.get(f"{emu.url}/realitydataanalysis/jobs/nope", headers=headers, timeout=TIMEOUT)


def wait_out(r: requests.Response) -> None:
    time.sleep(int(r.headers["Retry-After"]) + 0.05)


def test_itwin_quota_refuses_past_the_window_in_bentleys_shape() -> None:
    """Past N calls in the window: 429 RateLimitExceeded, Retry-After = seconds until the window frees a call,
    and the iTwinPlatform-RateLimit-* headers of Bentley's "Rate limits and quotas" page."""
    with VendorEmulator(quotas={"itwin": Quota(calls=3, seconds=1)}) as emu:
        headers = itwin_headers(emu)
        assert [itwin_job_get(emu, headers).status_code for _ in range(3)] == [404] * 3  # counted all the same
        refused = itwin_job_get(emu, headers)
        assert refused.status_code == 429
        assert refused.json() == {
            "error": {
                "code": "RateLimitExceeded",
                "message": "The client sent more requests than allowed by this API for the current tier of the client.",
            }
        }
        assert refused.headers["Retry-After"] == "1"
        assert refused.headers["iTwinPlatform-RateLimit-Retry-After-Seconds"] == "1"
        assert refused.headers["iTwinPlatform-RateLimit-RemainingCalls"] == "0"
        assert refused.headers["iTwinPlatform-Tier"]
        # The token endpoint (IMS, not the platform's API) is not counted: a client can still sign in.
        assert itwin_token(emu)
        wait_out(refused)
        assert itwin_job_get(emu, headers).status_code == 404
        stats = emu.stats()["vendors"]["itwin"]
        assert (stats["calls"], stats["rate_limited"], stats["over_quota"]) == (7, 1, 1)


def test_itwin_quota_counts_per_oauth_client_not_per_token() -> None:
    with VendorEmulator(quotas={"itwin": Quota(calls=2, seconds=60)}) as emu:
        first, second = itwin_headers(emu), itwin_headers(emu)
        assert first != second
        assert itwin_job_get(emu, first).status_code == 404
        assert itwin_job_get(emu, second).status_code == 404
        assert itwin_job_get(emu, first).status_code == 429
        assert itwin_job_get(emu, second).status_code == 429
        # A call without a valid token is answered 401 and not counted against anyone.
        assert itwin_job_get(emu, {"Authorization": "Bearer forged"}).status_code == 401
        assert emu.stats()["vendors"]["itwin"]["over_quota"] == 2


def test_quota_window_slides_and_refused_calls_do_not_count() -> None:
    """A sliding window: no more than N calls in any W seconds; a refused call takes no place in it, so
    waiting Retry-After always frees one."""
    with VendorEmulator(quotas={"scriptx": Quota(calls=2, seconds=2)}) as emu:
        url = f"{emu.url}/api"
        assert requests.get(url, timeout=TIMEOUT).status_code == 200
        time.sleep(1.1)
        assert requests.get(url, timeout=TIMEOUT).status_code == 200
        refused = requests.get(url, timeout=TIMEOUT)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1", "the first call leaves the window in under a second"
        for _ in range(3):
            assert requests.get(url, timeout=TIMEOUT).status_code == 429
        wait_out(refused)
        assert requests.get(url, timeout=TIMEOUT).status_code == 200
        assert requests.get(url, timeout=TIMEOUT).status_code == 429


def test_quota_with_two_windows_like_bentleys_trial_tier() -> None:
    """Bentley's Trial tier: 500 calls a minute and 5,000 an hour; both hold, Retry-After names the later."""
    with VendorEmulator() as emu:
        emu.set_quota("olconnect", Quota(calls=2, seconds=1), Quota(calls=3, seconds=60))
        headers = {"Authorization": "Basic b2wtYWRtaW46c2VjcmV0"}
        version = f"{emu.url}{AIO}/version"
        assert [requests.get(version, headers=headers, timeout=TIMEOUT).status_code for _ in range(3)] == [
            200,
            200,
            429,
        ]
        time.sleep(1.05)
        assert requests.get(version, headers=headers, timeout=TIMEOUT).status_code == 200
        refused = requests.get(version, headers=headers, timeout=TIMEOUT)
        assert refused.status_code == 429
        assert 58 <= int(refused.headers["Retry-After"]) <= 60
        emu.set_quota("olconnect")  # no quota any more
        assert requests.get(version, headers=headers, timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("vendor", ["olconnect", "scriptx"])
def test_on_premise_quota_is_a_plain_429_and_counts_every_call(vendor: str) -> None:
    """OL Connect and ScriptX run on the customer's servers and document no limit: a limit in front of them
    (a proxy's) answers a bare 429 with Retry-After, and counts every call, sign-in included."""
    with VendorEmulator(quotas={vendor: Quota(calls=1, seconds=30)}) as emu:
        if vendor == "olconnect":
            assert requests.post(f"{emu.url}{OL}/authentication/login", auth=("ol-admin", "secret"), timeout=10).ok
            refused = requests.get(f"{emu.url}{AIO}/version", auth=("ol-admin", "secret"), timeout=TIMEOUT)
        else:
            sx_print(emu)
            refused = requests.get(f"{emu.url}{PDF}/status/x", auth=SX_AUTH, timeout=TIMEOUT)
        assert refused.status_code == 429
        assert refused.headers["Content-Type"].startswith("text/plain")
        assert 29 <= int(refused.headers["Retry-After"]) <= 30
        assert not any(name.lower().startswith("itwinplatform") for name in refused.headers)
        others = {v: s["over_quota"] for v, s in emu.stats()["vendors"].items() if v != vendor}
        assert others == dict.fromkeys(others, 0)


def test_quota_over_the_control_api(emulator: VendorEmulator) -> None:
    control = f"{emulator.url}/_emulator/quota"
    body = {"vendor": "scriptx", "limits": [{"calls": 1, "seconds": 60}]}
    assert requests.post(control, json=body, timeout=TIMEOUT).status_code == 204
    stats = requests.get(f"{emulator.url}/_emulator/stats", timeout=TIMEOUT).json()
    assert stats["quotas"]["scriptx"] == [{"calls": 1, "seconds": 60.0}]
    assert [requests.get(f"{emulator.url}/api", timeout=TIMEOUT).status_code for _ in range(2)] == [200, 429]
    stats = requests.get(f"{emulator.url}/_emulator/stats", timeout=TIMEOUT).json()
    assert stats["vendors"]["scriptx"] == {"calls": 2, "rate_limited": 1, "over_quota": 1}
    # A reset forgets the calls, not the quota (it is the server's configuration, like its secrets).
    assert requests.post(f"{emulator.url}/_emulator/reset", timeout=TIMEOUT).status_code == 204
    assert [requests.get(f"{emulator.url}/api", timeout=TIMEOUT).status_code for _ in range(2)] == [200, 429]
    for bad in (
        {"vendor": "nobody", "limits": []},
        {"vendor": "scriptx", "limits": [{"calls": 0, "seconds": 60}]},
        {"vendor": "scriptx", "limits": [{"calls": 5, "seconds": -1}]},
        {"vendor": "scriptx", "limits": [{"calls": 5, "seconds": 1, "burst": 2}]},
        {"vendor": "scriptx"},
    ):
        assert requests.post(control, json=bad, timeout=TIMEOUT).status_code == 400, bad
    assert requests.post(control, json={"vendor": "scriptx", "limits": []}, timeout=TIMEOUT).status_code == 204
    assert requests.get(f"{emulator.url}/api", timeout=TIMEOUT).status_code == 200


def test_quota_values_are_checked() -> None:
    assert Quota.parse("500/60") == Quota(calls=500, seconds=60)
    assert Quota.parse("5000/3600") == Quota(calls=5000, seconds=3600.0)
    for bad in ("500", "0/60", "500/0", "a/60", "500/-1", "1.5/60"):
        with pytest.raises(ScenarioError):
            Quota.parse(bad)
    with pytest.raises(ValueError, match="vendor"):
        VendorEmulator(quotas={"bentley": Quota(1, 1)})


# -- windows for a crash: a held submit answer, a download that stops halfway ---------------------------


def test_submit_delay_holds_the_answer_with_the_job_already_started(emulator: VendorEmulator) -> None:
    """The job exists (and its call is logged) while the answer is held: the window a worker can die in."""
    headers = ol_login(emulator)
    config = {"datamining": {"identifier": "data.csv"}, "emulator": {"submit_delay": 1.5, "duration": 60}}
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        future = pool.submit(ol_submit, emulator, headers, config)
        time.sleep(0.5)
        [call] = [c for c in emulator.calls if c.path == f"{AIO}/submit"]
        assert call.job_id is not None
        assert not future.done()
        assert emulator.job("olconnect", call.job_id).state == "running"
        assert future.result(timeout=TIMEOUT) == call.job_id
        assert time.monotonic() - started >= 1.5


def test_download_stall_pauses_halfway_then_sends_the_rest(emulator: VendorEmulator) -> None:
    headers = ol_login(emulator)
    op = ol_submit(
        emulator, headers, {"datamining": {}, "emulator": {"steps": 0, "result_size": 300_000, "download_stall": 1.5}}
    )
    assert ol_progress(emulator, headers, op).text == "done"
    started = time.monotonic()
    r = requests.post(f"{emulator.url}{AIO}/getResult/{op}", headers=headers, timeout=TIMEOUT, stream=True)
    first = r.raw.read(100_000)
    assert time.monotonic() - started < 1.0, "the first half comes at once"
    rest = r.raw.read()
    assert time.monotonic() - started >= 1.5
    assert sha256(first + rest) == emulator.result_sha256("olconnect", op)
    assert emulator.job("olconnect", op).downloads[0].complete


@pytest.mark.parametrize("field", ["submit_delay", "download_stall"])
@pytest.mark.parametrize("value", [-1, True, "5"])
def test_crash_windows_must_be_seconds(field: str, value: Any) -> None:
    with pytest.raises(ScenarioError, match=field):
        Scenario.from_dict({field: value})
