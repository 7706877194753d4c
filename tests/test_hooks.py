"""The three hooks against the running emulators: the job's whole life, and every failure on the vendor pages."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest

from airflow_provider_jobprogress.core import (
    AuthenticationError,
    InvalidRequestError,
    JobFailedError,
    JobNotFoundError,
    JobProgress,
    JobState,
    OperationNotSupportedError,
    RateLimitedError,
    RequestRetry,
    VendorResponseError,
)
from airflow_provider_jobprogress.hooks.base import JobProgressHook
from airflow_provider_jobprogress.hooks.itwin import ITwinHook
from airflow_provider_jobprogress.hooks.olconnect import OLConnectHook
from airflow_provider_jobprogress.hooks.scriptx import ScriptXHook
from airflow_provider_jobprogress.testing.emulators import Quota, Scenario, VendorEmulator

FAST = RequestRetry(initial_delay=0.01, max_delay=0.05, jitter=0)
OL_CONFIG = {"datamining": {"identifier": "invoices.csv", "config": "invoices"}, "outputcreation": {"config": "pdf"}}
PDF = {"document": "https://example.invalid/report.pdf", "device": {"printToFileName": "report.pdf"}}
ITWIN_SPEC = {
    "name": "roads",
    "type": "objects2D",
    "inputs": [{"type": "photos", "id": "in-1"}],
    "outputs": ["objects2D"],
}

VENDORS: dict[str, tuple[type[JobProgressHook[Any]], Any]] = {
    "olconnect": (OLConnectHook, lambda h: h.submit(OL_CONFIG)),
    "scriptx": (ScriptXHook, lambda h: h.submit(PDF["document"], device=PDF["device"])),
    "itwin": (ITwinHook, lambda h: h.submit(ITWIN_SPEC)),
}


def make(vendor: str, **kwargs: Any) -> tuple[JobProgressHook[Any], Any]:
    hook_class, submit = VENDORS[vendor]
    return hook_class(request_retry=FAST, **kwargs), submit


def follow(hook: JobProgressHook[Any], job_id: str, limit: int = 50) -> list[JobProgress]:
    seen = []
    for _ in range(limit):
        progress = hook.get_progress(job_id)
        seen.append(progress)
        if progress.is_terminal:
            return seen
    raise AssertionError(f"job {job_id} never finished: {seen[-3:]}")


def download(hook: JobProgressHook[Any], job_id: str) -> list[tuple[str | None, str, int]]:
    got = []
    for part in hook.result_parts(job_id):
        digest, size = hashlib.sha256(), 0
        with hook.open_result(part, job_id) as answer:
            for chunk in answer.chunks(64 * 1024):
                digest.update(chunk)
                size += len(chunk)
        got.append((part.name, digest.hexdigest(), size))
    return got


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_job_life_submit_progress_succeeded_result(emulator: VendorEmulator, vendor: str) -> None:
    emulator.set_next_scenario(vendor, Scenario(steps=4, result_size=300_000))
    hook, submit = make(vendor)
    job_id = submit(hook)
    seen = follow(hook, job_id)
    assert seen[-1].state is JobState.SUCCEEDED
    running = [p for p in seen if not p.is_terminal]
    assert len(running) >= 3, "intermediate progress must be visible"
    if vendor != "scriptx":  # ScriptX reports status codes, not percentages
        percents = [p.percent for p in running if p.percent is not None]
        assert len(percents) == len(running), "every running answer carries a percentage"
        assert percents == sorted(percents)
        assert 0 < percents[0] < percents[-1] < 100
    else:
        assert {p.step for p in running} >= {"Queued", "PrintingPdf"}
    parts = download(hook, job_id)
    assert parts
    assert all(size == 300_000 for _, _, size in parts)
    assert parts[0][1] == emulator.result_sha256(vendor, job_id, 0)


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_failed_job_reports_the_vendor_message(emulator: VendorEmulator, vendor: str) -> None:
    emulator.set_next_scenario(vendor, Scenario(outcome="fail", steps=1, message="input file is corrupt"))
    hook, submit = make(vendor)
    final = follow(hook, submit(hook))[-1]
    assert final.state is JobState.FAILED
    assert "input file is corrupt" in (final.message or "")


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_vendor_cancelled_job_is_cancelled(emulator: VendorEmulator, vendor: str) -> None:
    emulator.set_next_scenario(vendor, Scenario(outcome="cancel", steps=1))
    hook, submit = make(vendor)
    assert follow(hook, submit(hook))[-1].state is JobState.CANCELLED


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_unknown_job_is_job_not_found(emulator: VendorEmulator, vendor: str) -> None:
    hook, _ = make(vendor)
    with pytest.raises(JobNotFoundError) as err:
        hook.get_progress("no-such-job")
    assert str(err.value).startswith(f"{hook.vendor()} job no-such-job:")


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_rate_limit_waits_for_retry_after_then_reads(emulator: VendorEmulator, vendor: str) -> None:
    emulator.set_next_scenario(vendor, Scenario(rate_limit=2, retry_after=1))
    hook, submit = make(vendor)
    job_id = submit(hook)
    progress = hook.get_progress(job_id)
    assert not progress.is_terminal
    assert sum(1 for c in emulator.calls if c.status == 429) == 2


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_rate_limit_longer_than_we_hold_is_rate_limited_error(emulator: VendorEmulator, vendor: str) -> None:
    emulator.set_next_scenario(vendor, Scenario(rate_limit=1, retry_after=120))
    hook_class, submit = VENDORS[vendor]
    hook = hook_class(request_retry=RequestRetry(max_retry_after=5, initial_delay=0.01, jitter=0))
    job_id = submit(hook)
    with pytest.raises(RateLimitedError) as err:
        hook.get_progress(job_id)
    assert err.value.retry_after == 120
    assert job_id in str(err.value)


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_flaky_5xx_is_retried(emulator: VendorEmulator, vendor: str) -> None:
    emulator.set_next_scenario(vendor, Scenario(flaky=2))
    hook, submit = make(vendor)
    job_id = submit(hook)
    assert hook.get_progress(job_id).state in (JobState.QUEUED, JobState.RUNNING)
    assert sum(1 for c in emulator.calls if c.status == 503) == 2


GARBAGE = {
    "olconnect": ["html", "empty", "nonnumeric"],
    "scriptx": ["html", "empty", "malformed", "unknown_status"],
    "itwin": ["html", "empty", "malformed", "unknown_status"],
}


@pytest.mark.parametrize(("vendor", "mode"), [(v, m) for v, modes in GARBAGE.items() for m in modes])
def test_garbage_answer_is_vendor_response_error(emulator: VendorEmulator, vendor: str, mode: str) -> None:
    emulator.set_next_scenario(vendor, Scenario(garbage=mode))
    hook, submit = make(vendor)
    job_id = submit(hook)
    with pytest.raises(VendorResponseError) as err:
        hook.get_progress(job_id)
    assert str(err.value).startswith(f"{hook.vendor()} job {job_id}:")


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_bad_credentials_are_authentication_error(emulator: VendorEmulator, vendor: str, monkeypatch) -> None:
    conn = json.loads(emulator.connections()[f"{vendor}_default"])
    conn["password"] = "wrong-password-123"
    monkeypatch.setenv(f"AIRFLOW_CONN_{vendor.upper()}_DEFAULT", json.dumps(conn))
    hook, submit = make(vendor)
    with pytest.raises(AuthenticationError) as err:
        submit(hook)
    assert "wrong-password-123" not in str(err.value)
    ok, message = make(vendor)[0].test_connection()
    assert not ok
    assert "wrong-password-123" not in message


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_test_connection_makes_a_real_call(emulator: VendorEmulator, vendor: str) -> None:
    hook, _ = make(vendor)
    ok, message = hook.test_connection()
    assert ok, message
    assert emulator.calls, "the Test button must reach the server"


@pytest.mark.parametrize("vendor", ["olconnect", "itwin"])
def test_expired_token_is_renewed_once(emulator: VendorEmulator, vendor: str) -> None:
    hook, submit = make(vendor)
    job_id = submit(hook)
    emulator.expire_tokens()
    assert hook.get_progress(job_id).job_id == job_id
    login = "/authentication/login" if vendor == "olconnect" else "/connect/token"
    assert emulator.count("POST", login) == 2
    assert sum(1 for c in emulator.calls if c.status == 401) == 1


def test_olconnect_basic_mode_never_logs_in(emulator: VendorEmulator, monkeypatch) -> None:
    conn = json.loads(emulator.connections()["olconnect_default"])
    conn["extra"] = {"auth": "basic"}
    monkeypatch.setenv("AIRFLOW_CONN_OLCONNECT_DEFAULT", json.dumps(conn))
    hook, submit = make("olconnect")
    assert follow(hook, submit(hook))[-1].state is JobState.SUCCEEDED
    assert emulator.count("POST", "/authentication/login") == 0


def olconnect() -> tuple[OLConnectHook, Any]:
    hook, submit = make("olconnect")
    assert isinstance(hook, OLConnectHook)
    return hook, submit


def test_olconnect_missing_input_is_invalid_request(emulator: VendorEmulator) -> None:
    hook, _ = olconnect()
    with pytest.raises(InvalidRequestError, match="File Store"):
        hook.submit({"datamining": {"identifier": "missing", "config": "x"}})


def test_olconnect_cancel_is_sent_and_job_ends_cancelled(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(steps=10))
    hook, submit = olconnect()
    job_id = submit(hook)
    hook.get_progress(job_id)
    hook.cancel(job_id)
    assert emulator.count("POST", f"/cancel/{job_id}") == 1
    assert hook.get_progress(job_id).state is JobState.CANCELLED


def test_olconnect_result_text_gives_paths_for_several_spool_files(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("olconnect", Scenario(steps=1, outputs=3))
    hook, submit = olconnect()
    job_id = submit(hook)
    follow(hook, job_id)
    lines = hook.get_result_text(job_id).split()
    assert len(lines) == 3
    assert all(line.startswith("/") for line in lines)


def test_scriptx_soft_error_fails_at_submit(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("scriptx", Scenario(outcome="soft_error", message="printer offline"))
    hook, submit = make("scriptx")
    with pytest.raises(JobFailedError, match="printer offline"):
        submit(hook)


def test_scriptx_cancel_says_it_is_not_supported_and_sends_nothing(emulator: VendorEmulator) -> None:
    hook, submit = make("scriptx")
    job_id = submit(hook)
    before = len(emulator.calls)
    with pytest.raises(OperationNotSupportedError, match="cannot be cancelled"):
        hook.cancel(job_id)
    assert len(emulator.calls) == before


def test_scriptx_code_exception_is_failed(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("scriptx", Scenario(outcome="code_exception", steps=1))
    hook, submit = make("scriptx")
    final = follow(hook, submit(hook))[-1]
    assert final.state is JobState.FAILED
    assert final.step == "CodeException"


def test_itwin_cancel_patches_state_cancelled(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("itwin", Scenario(steps=10))
    hook, submit = make("itwin")
    job_id = submit(hook)
    hook.get_progress(job_id)
    hook.cancel(job_id)
    assert emulator.count("PATCH", f"/jobs/{job_id}") == 2  # submit, then cancel
    assert hook.get_progress(job_id).state is JobState.CANCELLED


@pytest.mark.parametrize(("outcome", "state"), [("fail", JobState.FAILED), ("cancel", JobState.CANCELLED)])
def test_olconnect_an_operation_dropped_after_it_failed_is_read_as_it_ended(
    monkeypatch: pytest.MonkeyPatch, outcome: str, state: JobState
) -> None:
    """A server drops a finished operation from its active list (getProgress: 404) after a while; its result
    call still says how it ended. A success was read from it, a failure or cancellation was "unknown": 10,000
    OL Connect waits ending within two minutes on the default budget confirmed some ends past the emulator's
    retention, and 126 waits ended in error instead of their jobs' failure or cancellation."""
    with VendorEmulator(retention=0.1) as emulator:
        for conn_id, conn in emulator.connections().items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn)
        emulator.set_next_scenario("olconnect", Scenario(steps=0, outcome=outcome, message="No printer"))
        hook, submit = make("olconnect")
        job_id = submit(hook)
        assert hook.get_progress(job_id).state is state  # it ends at its first read
        time.sleep(0.3)  # past the retention
        final = hook.get_progress(job_id)
        assert final.state is state
        assert emulator.calls[-1].path.endswith(f"/getResultTxt/{job_id}")
        if outcome == "fail":
            assert "No printer" in (final.message or "")


def test_itwin_progress_gone_falls_back_to_job_details(monkeypatch: pytest.MonkeyPatch) -> None:
    # Past Bentley's 30 days (here at once) a finished v1 job's progress answers 404 ProgressNotFound.
    with VendorEmulator(itwin_progress_retention=0) as emulator:
        for conn_id, conn in emulator.connections().items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn)
        emulator.set_next_scenario("itwin", Scenario(steps=1))
        hook, submit = make("itwin")
        job_id = submit(hook)
        follow(hook, job_id)
        final = hook.get_progress(job_id)
        assert final.state is JobState.SUCCEEDED
        progress_calls = [c.status for c in emulator.calls if c.path.endswith(f"/jobs/{job_id}/progress")]
        assert progress_calls[-1] == 404
        assert any(c.path.endswith(f"/jobs/{job_id}") and c.method == "GET" for c in emulator.calls)


@pytest.mark.parametrize(
    ("outcome", "state"), [("succeed", JobState.SUCCEEDED), ("fail", JobState.FAILED), ("cancel", JobState.CANCELLED)]
)
def test_itwin_v1_progress_readable_after_the_end(emulator: VendorEmulator, outcome: str, state: JobState) -> None:
    """Bentley keeps a finished v1 job's progress readable with its final state: the hook takes the state from
    it (no details read for a success), again and again, as a trigger restarted after the end would."""
    emulator.set_next_scenario("itwin", Scenario(steps=2, outcome=outcome, message="No photos"))
    hook, submit = make("itwin")
    job_id = submit(hook)
    assert follow(hook, job_id)[-1].state is state
    again = hook.get_progress(job_id)
    assert again.state is state
    assert {c.status for c in emulator.calls if c.path.endswith(f"/jobs/{job_id}/progress")} == {200}
    details = [c for c in emulator.calls if c.method == "GET" and c.path.endswith(f"/jobs/{job_id}")]
    if state is JobState.SUCCEEDED:
        assert again.percent == 100.0
        assert details == []
    if state is JobState.FAILED:
        assert again.message == "No photos", "the reason comes from the job details"


def test_itwin_hook_rides_out_an_emulated_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rehearsing a limit: the emulator holds the iTwin client to 3 calls a second; the hook meets the 429s
    (RateLimitExceeded, Retry-After 1), waits them out and still follows the job to its end."""
    with VendorEmulator(quotas={"itwin": Quota(calls=3, seconds=1)}) as emulator:
        for conn_id, conn in emulator.connections().items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn)
        emulator.set_next_scenario("itwin", Scenario(steps=4))
        hook, submit = make("itwin")
        job_id = submit(hook)
        assert follow(hook, job_id)[-1].state is JobState.SUCCEEDED
        stats = emulator.stats()["vendors"]["itwin"]
        assert stats["over_quota"] >= 1
        assert stats["over_quota"] == stats["rate_limited"]


def test_itwin_reality_modeling_v2(emulator: VendorEmulator, monkeypatch) -> None:
    conn = json.loads(emulator.connections()["itwin_default"])
    conn["extra"]["api"] = "reality-modeling"
    monkeypatch.setenv("AIRFLOW_CONN_ITWIN_DEFAULT", json.dumps(conn))
    hook = ITwinHook(request_retry=FAST)
    spec = {"inputs": [{"type": "CCImageCollection", "id": "in-1"}], "outputs": ["modelingReference"]}
    job_id = hook.submit({"type": "Reconstruction", "name": "mesh", "specifications": spec})
    assert follow(hook, job_id)[-1].state is JobState.SUCCEEDED
    assert emulator.count("PATCH", "/jobs/") == 0, "v2 creation submits the job"


def test_itwin_several_outputs_are_all_downloadable(emulator: VendorEmulator) -> None:
    emulator.set_next_scenario("itwin", Scenario(steps=1, outputs=3, result_size=10_000))
    hook, submit = make("itwin")
    job_id = submit(hook)
    follow(hook, job_id)
    parts = download(hook, job_id)
    assert len(parts) == 3
    assert [sha for _, sha, _ in parts] == [emulator.result_sha256("itwin", job_id, i) for i in range(3)]


def test_async_progress_matches_sync(emulator: VendorEmulator) -> None:
    import asyncio

    from airflow_provider_jobprogress.core.session import ASYNC_SESSIONS

    hook, submit = make("itwin")
    job_id = submit(hook)

    async def read() -> JobProgress:
        try:
            return await ITwinHook(request_retry=FAST).aget_progress(job_id)
        finally:
            await ASYNC_SESSIONS.aclose_all()

    progress = asyncio.run(read())
    assert progress.job_id == job_id
    assert progress.state is JobState.RUNNING
