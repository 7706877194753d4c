"""What a wait leaves behind: small trigger events without vendor bodies, one log line per reading, SAS masking."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_jobprogress.core import JobProgress, PollPolicy, RequestRetry
from airflow_provider_jobprogress.core.session import ASYNC_SESSIONS
from airflow_provider_jobprogress.hooks import HOOK_CLASS_BY_CONN_TYPE, load_hook_class
from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from airflow_provider_jobprogress.triggers.job_progress import JobProgressTrigger
from tests.test_trigger import submit

VENDORS = ["olconnect", "scriptx", "itwin"]
#: an event lands in the metadata database and in the "Trigger fired event" log line: a few hundred bytes
#: of facts, whatever the vendor answered (a 5,000-character vendor message included)
EVENT_BYTES = 2048
#: what an event may carry, and nothing else
EVENT_KEYS = {"status", "progress", "message", "error"}
PROGRESS_KEYS = {"vendor", "job_id", "state", "percent", "step", "message"}
FAST_RETRY = RequestRetry(initial_delay=0.01, max_delay=0.02, jitter=0, attempts=2, outage_tolerance=30).to_dict()
ROTATED = {
    "olconnect": {"olconnect_password": "rotated-Pw-1234"},
    "scriptx": {"scriptx_license": "00000000-1111-2222-3333-444444444444"},
    "itwin": {"itwin_client_secret": "rotated-secret-5678"},
}


@pytest.fixture(autouse=True)
async def close_shared_sessions() -> AsyncIterator[None]:
    yield
    await ASYNC_SESSIONS.aclose_all()


def wait_trigger(vendor: str, job_id: str, poll: float = 0.01) -> JobProgressTrigger:
    return JobProgressTrigger(
        hook_class_path=HOOK_CLASS_BY_CONN_TYPE[vendor],
        conn_id=f"{vendor}_default",
        job_id=job_id,
        poll_policy=PollPolicy.fixed(poll).to_dict(),
        request_retry=FAST_RETRY,
    )


def vendor_body(vendor: str, job_id: str) -> Any:
    """What the vendor answers for the job now, as the hook parsed it (its raw body)."""
    progress: JobProgress = load_hook_class(HOOK_CLASS_BY_CONN_TYPE[vendor])().get_progress(job_id)
    return progress.raw


def leaves(value: Any) -> tuple[set[str], set[str]]:
    """Every key and every string value in a parsed JSON body (or the body itself when it is text)."""
    keys: set[str] = set()
    texts: set[str] = set()
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            keys.update(str(k) for k in item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, str):
            texts.add(item)
    return keys, texts


def assert_small_and_without_vendor_body(payload: dict[str, Any], body: Any) -> None:
    dumped = json.dumps(payload)
    assert len(dumped.encode()) < EVENT_BYTES, f"event of {len(dumped)} bytes: {dumped[:300]}"
    assert set(payload) == EVENT_KEYS
    progress = payload["progress"]
    if progress is not None:
        assert set(progress) == PROGRESS_KEYS, "no raw vendor body in the event"
    # Nothing of the vendor's own body: none of its keys, none of its texts beyond the facts we keep.
    keys, texts = leaves(body)
    kept = {str(v) for v in (progress or {}).values() if v is not None}
    assert body is not None, "the vendor answered something the test can look for"
    assert "@" not in dumped, "no e-mail (iTwin names the service app's)"
    leaked_keys = sorted(k for k in keys - EVENT_KEYS - PROGRESS_KEYS if f'"{k}":' in dumped)
    assert not leaked_keys, f"vendor body keys in the event: {leaked_keys}"
    leaked = sorted(t for t in texts if len(t) >= 8 and t not in kept and not any(t in k for k in kept) and t in dumped)
    assert not leaked, f"vendor body texts in the event: {leaked}"


async def one_event(trig: JobProgressTrigger) -> dict[str, Any]:
    got = [event async for event in trig.run()]
    assert len(got) == 1
    payload: dict[str, Any] = got[0].payload
    return payload


@pytest.mark.parametrize("vendor", VENDORS)
async def test_success_event_is_small_and_carries_no_vendor_body(emulator: VendorEmulator, vendor: str) -> None:
    emulator.set_next_scenario(vendor, Scenario(steps=2))
    job_id = submit(vendor)
    payload = await one_event(wait_trigger(vendor, job_id))
    assert payload["status"] == "success"
    assert payload["progress"]["job_id"] == job_id
    assert payload["progress"]["state"] == "succeeded"
    assert_small_and_without_vendor_body(payload, await asyncio.to_thread(vendor_body, vendor, job_id))


@pytest.mark.parametrize("vendor", VENDORS)
async def test_failure_event_is_small_even_for_a_long_vendor_message(emulator: VendorEmulator, vendor: str) -> None:
    emulator.set_next_scenario(vendor, Scenario(outcome="fail", steps=1, message="spooler crashed: " + "x" * 5000))
    job_id = submit(vendor)
    payload = await one_event(wait_trigger(vendor, job_id))
    assert payload["status"] == "failed"
    assert "spooler crashed" in payload["message"], "the vendor's reason is kept (shortened)"
    assert "spooler crashed" in payload["progress"]["message"]
    assert_small_and_without_vendor_body(payload, await asyncio.to_thread(vendor_body, vendor, job_id))


@pytest.mark.parametrize("vendor", VENDORS)
async def test_error_event_with_a_last_reading_carries_no_vendor_body(emulator: VendorEmulator, vendor: str) -> None:
    emulator.set_next_scenario(vendor, Scenario(steps=10_000))
    job_id = submit(vendor)
    body = await asyncio.to_thread(vendor_body, vendor, job_id)
    waiting = asyncio.create_task(one_event(wait_trigger(vendor, job_id, poll=0.02)))
    for _ in range(500):  # until the trigger has a reading of its own (bounded: 10 s)
        await asyncio.sleep(0.02)
        if emulator.job(vendor, job_id).polls >= 3:
            break
    # The credentials are rotated under the wait: the vendor refuses it, an error no retry cures.
    emulator.set_secrets(ROTATED[vendor])
    emulator.expire_tokens()
    payload = await asyncio.wait_for(waiting, timeout=30)
    assert payload["status"] == "error"
    assert payload["error"], "the typed error's kind"
    assert payload["progress"] is not None, "the last reading travels with the error"
    assert_small_and_without_vendor_body(payload, body)


async def test_itwin_success_in_the_triggerer_stores_no_vendor_body_in_xcom(emulator: VendorEmulator) -> None:
    trig = wait_trigger("itwin", submit("itwin"))
    trig.finish_in_triggerer = True
    from airflow.triggers.base import TaskSuccessEvent

    got = [event async for event in trig.run()]
    assert len(got) == 1
    assert isinstance(got[0], TaskSuccessEvent)
    xcoms = got[0].xcoms
    assert xcoms is not None
    final = xcoms["return_value"]
    assert isinstance(final, dict)
    assert set(final) == PROGRESS_KEYS
    assert "@" not in json.dumps(xcoms)


def test_progress_dict_has_the_facts_only_and_a_short_message() -> None:
    from airflow_provider_jobprogress.core import JobState

    long = JobProgress("itwin", "j-1", JobState.FAILED, 100.0, message="m" * 10_000, raw={"email": "a@b.c"})
    data = long.to_dict()
    assert set(data) == PROGRESS_KEYS
    assert len(data["message"]) <= 500
    assert JobProgress.from_dict(data).state is JobState.FAILED


# -- one log line per reading ---------------------------------------------------------------------------------

PROGRESS_LINE = re.compile(
    r"((?:OL Connect|ScriptX\.Services|iTwin) job \S+: (?:queued|running|succeeded)\b[^\[\n]*?)\s*(?:\[|$)"
)


def progress_lines(out: str, job_id: str) -> Counter[str]:
    """How often each progress line about ``job_id`` was logged (the reading's text, without time or logger)."""
    found = (PROGRESS_LINE.search(line) for line in out.splitlines() if job_id in line)
    return Counter(match.group(1).strip() for match in found if match is not None)


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_deferred_wait_logs_each_reading_once(
    airflow_db: Path, emulator: VendorEmulator, vendor: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_sensors_dag import run_dag, states, xcom

    # A job that moves with the clock: most polls read what the one before read, as with real jobs, and
    # the trigger's first poll reads what the worker read just before deferring. Long enough to be running
    # when the sensor starts: dag.test() on Airflow 3.1 starts it a second or two after the submit, and more
    # than 5 s later on a loaded machine.
    emulator.set_next_scenario(vendor, Scenario(duration=8.0, steps=3))
    run = run_dag("jp_wait_deferrable", vendor)
    assert states(run)["wait"] == "success"
    lines = progress_lines(capsys.readouterr().out, xcom(run, "submit"))
    assert any("succeeded" in line for line in lines), lines
    assert len(lines) >= 2, f"the wait was seen moving: {lines}"
    repeated = {line: n for line, n in lines.items() if n > 1}
    assert not repeated, f"logged more than once: {repeated}"


def test_submit_wait_and_fetch_log_succeeded_once_each(
    airflow_db: Path, emulator: VendorEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_operators_dag import load
    from tests.test_sensors_dag import states, xcom

    emulator.set_next_scenario("olconnect", Scenario(steps=2, outputs=3))  # spool file paths: text for XCom
    run = load("jp_fetch_xcom_olconnect").test()
    assert states(run)["fetch"] == "success"
    lines = progress_lines(capsys.readouterr().out, xcom(run, "submit"))
    succeeded = [n for line, n in lines.items() if "succeeded" in line]
    # Two readings said "succeeded": the trigger's last poll (the submit task's wait) and the fetch's own read.
    assert succeeded == [2], lines


# -- SAS masking ------------------------------------------------------------------------------------------------

#: an Azure container SAS as Bentley hands them out (shape from Azure's docs): only ``sig`` is secret
SIGNATURE = "Xk3+mHa/9vQ2pL7wR0tYbN5sEo1cFg8uJiK4dZ6hVqA="
SAS_URL = (
    "https://ussc.blob.core.windows.net/reality-data-0a1b?sv=2021-08-06&st=2026-12-02T13%3A00%3A00Z"
    "&se=2026-12-02T14%3A00%3A00Z&sr=c&sp=rl&skoid=3d5a&sig=" + SIGNATURE.replace("+", "%2B").replace("/", "%2F")
)


def masker() -> Any:
    try:
        from airflow.sdk.log import _secrets_masker  # type: ignore[attr-defined]
    except ImportError:  # Airflow < 3.3
        from airflow.sdk._shared.secrets_masker import _secrets_masker  # type: ignore[no-redef,attr-defined]
    return _secrets_masker()


def test_sas_masking_hides_the_signature_and_nothing_else() -> None:
    from airflow_provider_jobprogress.core.protocol import Request, ResultPart
    from airflow_provider_jobprogress.hooks.base import JobProgressHook

    part = ResultPart(name="a.bin", request=Request("GET", SAS_URL, authenticated=False))
    JobProgressHook._masked([part])
    shown = masker().redact(f"GET {SAS_URL}")
    encoded = SAS_URL.rpartition("sig=")[2]
    assert SIGNATURE not in shown
    assert encoded not in shown, "the signature as it stands in the URL (percent-encoded) is hidden too"
    for kept in ("sv=2021-08-06", "se=2026-12-02T14%3A00%3A00Z", "st=2026-12-02T13%3A00%3A00Z", "reality-data-0a1b"):
        assert kept in shown, f"{kept} is no secret and stays readable: {shown}"


def test_itwin_download_urls_keep_their_sas_fields_readable(emulator: VendorEmulator) -> None:
    from airflow_provider_jobprogress.hooks.itwin import ITwinHook

    emulator.set_next_scenario("itwin", Scenario(steps=1))
    hook = ITwinHook()
    job_id = submit("itwin")
    while not hook.get_progress(job_id).is_terminal:
        pass
    urls = [part.request.url for part in hook.result_parts(job_id) if part.request is not None]
    assert urls
    for url in urls:
        shown = masker().redact(url)
        signature = url.rpartition("sig=")[2]
        assert signature not in shown
        assert "sv=2021-08-06" in shown
        assert "sp=rl" in shown
