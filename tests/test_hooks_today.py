"""The hooks against the emulators for what the vendors do today: Reality Analysis v2, bucket and nested outputs,
job listing, ScriptX's done-at-once prints and licence path, OL Connect's JSON managed results and set ids."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from airflow_provider_jobprogress.core import AuthenticationError, JobState
from airflow_provider_jobprogress.core.session import ASYNC_SESSIONS
from airflow_provider_jobprogress.hooks.itwin import ITwinHook
from airflow_provider_jobprogress.hooks.olconnect import OLConnectHook
from airflow_provider_jobprogress.hooks.scriptx import ScriptXHook
from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from tests.test_hooks import FAST, download, follow

OBJECTS_2D = {
    "type": "Objects2D",
    "name": "signs",
    "specifications": {"inputs": {"photos": "rd-photos", "photoObjectDetector": "det"}, "outputs": ["objects2D"]},
}


def itwin_hook(emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch, api: str) -> ITwinHook:
    conn = json.loads(emulator.connections()["itwin_default"])
    conn["extra"]["api"] = api
    monkeypatch.setenv("AIRFLOW_CONN_ITWIN_DEFAULT", json.dumps(conn))
    return ITwinHook(request_retry=FAST)


# == Reality Analysis v2 =======================================================================================


def test_reality_analysis_v2_submit_progress_success_outputs(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.set_next_scenario("itwin", Scenario(steps=3, outputs=2, result_size=70_000))
    hook = itwin_hook(emulator, monkeypatch, "reality-analysis")
    job_id = hook.submit(OBJECTS_2D)
    seen = follow(hook, job_id)
    assert [p.state for p in seen][-1] is JobState.SUCCEEDED
    assert all(p.step is None for p in seen), "v2 progress has no step"
    assert emulator.count("POST", "/reality-analysis/jobs") == 1
    assert emulator.count("PATCH", "/jobs/") == 0, "v2 creation starts the job"
    got = download(hook, job_id)
    assert [name for name, _, _ in got] == ["objects2D/output/part_1.bin", "objects2D/output/part_2.bin"]
    assert [sha for _, sha, _ in got] == [emulator.result_sha256("itwin", job_id, i) for i in range(2)]


def test_reality_analysis_v2_failure_says_why(emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    emulator.set_next_scenario("itwin", Scenario(outcome="fail", steps=1, message="Detector not found"))
    hook = itwin_hook(emulator, monkeypatch, "reality-analysis")
    final = follow(hook, hook.submit(OBJECTS_2D))[-1]
    assert (final.state, final.message) == (JobState.FAILED, "Detector not found")


def test_reality_analysis_v2_cancel(emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    emulator.set_next_scenario("itwin", Scenario(steps=20))
    hook = itwin_hook(emulator, monkeypatch, "reality-analysis")
    job_id = hook.submit(OBJECTS_2D)
    hook.cancel(job_id)
    assert emulator.count("DELETE", f"/reality-analysis/jobs/{job_id}") == 1
    assert follow(hook, job_id)[-1].state is JobState.CANCELLED


# == outputs in the iTwin bucket, nested v2 outputs ===========================================================


def test_bucket_and_nested_outputs_arrive(emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = itwin_hook(emulator, monkeypatch, "reality-modeling")
    emulator.set_next_scenario("itwin", Scenario(steps=1, result_size=4000))
    calibration = {"type": "Calibration", "specifications": {"inputs": {"scene": "s"}, "outputs": ["scene", "report"]}}
    calibrated = hook.submit(calibration)
    follow(hook, calibrated)
    got = download(hook, calibrated)
    assert [name for name, _, _ in got] == ["scene/output/part_1.bin", f"report/{'report.json'}"]
    assert [sha for _, sha, _ in got] == [emulator.result_sha256("itwin", calibrated, i) for i in range(2)]

    emulator.set_next_scenario("itwin", Scenario(steps=1, result_size=4000))
    outputs = {"modelingReference": True, "exports": [{"format": "3DTiles"}, {"format": "OBJ"}]}
    spec = {"type": "Reconstruction", "specifications": {"inputs": {"scene": "s"}, "outputs": outputs}}
    modeled = hook.submit(spec)
    follow(hook, modeled)
    names = [name for name, _, _ in download(hook, modeled)]
    assert names == [
        "modelingReference/output/part_1.bin",
        "exports/3DTiles/output/part_1.bin",
        "exports/OBJ/output/part_1.bin",
    ]


# == job listing (for an event trigger that fires when a job newly finishes) ==================================


def test_list_jobs_sync_and_async(emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = itwin_hook(emulator, monkeypatch, "reality-analysis")
    emulator.set_default_scenario("itwin", Scenario(steps=0))
    ids = [hook.submit(OBJECTS_2D) for _ in range(3)]
    hook.get_progress(ids[0])  # ends the first job (a job of no steps ends at its first poll)
    everything = hook.list_jobs(top=2)
    assert sorted(job["id"] for job in everything) == sorted(ids)
    assert emulator.count("GET", "/reality-analysis/jobs") == 2 + 1, "two pages of two, plus the one poll"
    done = hook.list_jobs("state eq 'Success'")
    assert [job["id"] for job in done] == ids[:1]

    async def alist() -> list[dict[str, Any]]:
        try:
            return await ITwinHook(request_retry=FAST).alist_jobs(f"iTwinId eq {emulator.ITWIN_ID}", top=2)
        finally:
            await ASYNC_SESSIONS.aclose_all()

    assert sorted(job["id"] for job in asyncio.run(alist())) == sorted(ids)


# == ScriptX: the licensed page path ===========================================================================


@pytest.mark.parametrize(("path", "allowed"), [("http://localhost/print", True), ("https://other.example/", False)])
def test_scriptx_sends_the_licensed_path(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch, path: str, allowed: bool
) -> None:
    conn = json.loads(emulator.connections()["scriptx_default"])
    conn["extra"]["meadroid_path"] = path
    monkeypatch.setenv("AIRFLOW_CONN_SCRIPTX_DEFAULT", json.dumps(conn))
    hook = ScriptXHook(request_retry=FAST)
    if allowed:
        assert hook.test_connection()[0]
        return
    with pytest.raises(AuthenticationError, match="not valid for this domain"):
        hook.submit("https://example.invalid/a.pdf")


# == OL Connect: JSON managed results, set ids =================================================================


def test_olconnect_create_only_outputs_download_from_the_managed_folder(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(steps=1, outputs=3, result_size=5000))
    hook = OLConnectHook(request_retry=FAST)
    config = {
        "datamining": {"identifier": "a.csv"},
        "outputcreation": {"config": "pdf", "createOnly": True},
        "returnIdInHeader": True,
    }
    op = hook.submit(config)
    follow(hook, op)
    got = download(hook, op)
    assert [name for name, _, _ in got] == ["out_1.pdf", "out_2.pdf", "out_3.pdf"]
    assert [sha for _, sha, _ in got] == [emulator.result_sha256("olconnect", op, i) for i in range(3)]
    metadata = {tuple(sorted(part.metadata)) for part in hook.result_parts(op)}
    assert metadata == {("content_set_id", "data_set_id", "job_set_id")}
