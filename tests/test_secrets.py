"""No secret reaches a log line or an error text: a whole run of every vendor, its failures included."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_jobprogress.core import JobProgressError, PollPolicy, RequestRetry
from airflow_provider_jobprogress.core.session import ASYNC_SESSIONS
from airflow_provider_jobprogress.hooks.base import JobProgressHook
from airflow_provider_jobprogress.hooks.itwin import ITwinHook
from airflow_provider_jobprogress.hooks.olconnect import OLConnectHook
from airflow_provider_jobprogress.hooks.scriptx import ScriptXHook
from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from airflow_provider_jobprogress.triggers.job_progress import JobProgressTrigger

SECRETS = {
    "olconnect_password": "Pw-olc-4c0ffee-91",
    "scriptx_license": "9a1c5e77-0d0d-4b1e-8c2a-feedfacecafe",
    "itwin_client_secret": "itwin-Sec-7b7b-3e3e-abab",
}
FAST = RequestRetry(initial_delay=0.01, max_delay=0.02, jitter=0, attempts=2)
HOOKS: dict[str, type[JobProgressHook[Any]]] = {"olconnect": OLConnectHook, "scriptx": ScriptXHook, "itwin": ITwinHook}


@pytest.fixture
def secret_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[VendorEmulator]:
    with VendorEmulator(secrets=SECRETS) as emu:
        for conn_id, uri in emu.connections().items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", uri)
        yield emu


def every_secret(emu: VendorEmulator) -> list[str]:
    """What must never be printed: credentials, every token the vendors issued, SAS signatures."""
    found = list(SECRETS.values())
    basic = f"{VendorEmulator.OLCONNECT_USER}:{SECRETS['olconnect_password']}"
    found.append(base64.b64encode(basic.encode()).decode())
    found.append(base64.b64encode(f"{SECRETS['scriptx_license']}:".encode()).decode())
    for issued in emu.state.tokens.values():
        found.extend(issued)
    found.extend(emu.state.sas_grants)
    return found


async def wait_in_trigger(hook_path: str, conn_id: str, job_id: str) -> list[str]:
    trig = JobProgressTrigger(
        hook_class_path=hook_path,
        conn_id=conn_id,
        job_id=job_id,
        poll_policy=PollPolicy.fixed(0.01).to_dict(),
        request_retry=FAST.to_dict(),
    )
    try:
        return [json.dumps(e.payload) async for e in trig.run()]
    finally:
        await ASYNC_SESSIONS.aclose_all()


def whole_life(emu: VendorEmulator) -> list[str]:
    """Drive each vendor through success, failure, expiry, rate limits and bad credentials; collect error texts."""
    texts: list[str] = []
    submits = {
        "olconnect": lambda h: h.submit({"datamining": {"identifier": "a.csv", "config": "dm"}}),
        "scriptx": lambda h: h.submit("https://example.invalid/a.pdf"),
        "itwin": lambda h: h.submit(
            {"name": "j", "type": "objects2D", "inputs": [{"type": "photos", "id": "i"}], "outputs": ["objects2D"]}
        ),
    }
    for vendor, hook_class in HOOKS.items():
        for scenario in (Scenario(steps=2, rate_limit=1), Scenario(outcome="fail", steps=1, flaky=1)):
            emu.set_next_scenario(vendor, scenario)
            hook = hook_class(request_retry=FAST)
            job_id = submits[vendor](hook)
            emu.expire_tokens()
            while not (progress := hook.get_progress(job_id)).is_terminal:
                pass
            texts.append(progress.describe())
            if progress.state.value == "succeeded":
                for part in hook.result_parts(job_id):
                    with hook.open_result(part, job_id) as answer:
                        for _ in answer.chunks():
                            pass
            texts.append(str(hook.test_connection()))

            hook_path = f"{hook_class.__module__}.{hook_class.__name__}"
            texts.extend(asyncio.run(wait_in_trigger(hook_path, f"{vendor}_default", job_id)))
        for bad in ("job-that-is-not-there",):
            try:
                hook_class(request_retry=FAST).get_progress(bad)
            except JobProgressError as exc:
                texts.append(str(exc))
    return texts


def test_no_secret_in_logs_or_errors(secret_emulator: VendorEmulator, caplog, capfd, monkeypatch) -> None:
    caplog.set_level(logging.DEBUG)
    texts = whole_life(secret_emulator)
    # Wrong credentials: the refusal must not echo them either.
    for vendor in ("olconnect", "scriptx", "itwin"):
        conn = json.loads(secret_emulator.connections()[f"{vendor}_default"])
        conn["password"] = "Wrong-" + SECRETS[next(k for k in SECRETS if k.startswith(vendor))]
        monkeypatch.setenv(f"AIRFLOW_CONN_{vendor.upper()}_DEFAULT", json.dumps(conn))
        hook = HOOKS[vendor](request_retry=FAST)
        ok, message = hook.test_connection()
        assert not ok
        texts.append(message)
    try:
        from airflow.sdk.log import _secrets_masker  # type: ignore[attr-defined]
    except ImportError:  # Airflow < 3.3
        from airflow.sdk._shared.secrets_masker import _secrets_masker  # type: ignore[no-redef,attr-defined]

    out, err = capfd.readouterr()
    printed = "\n".join([out, err, *texts])
    assert "job" in printed, "the run must have produced logs to search"
    secrets = [s for s in every_secret(secret_emulator) if s]
    assert not [s for s in secrets if s in printed], "secrets in what Airflow prints at its INFO level"
    # DEBUG records of libraries (urllib3 logs whole URLs, SAS keys included) are only safe once Airflow's
    # masker knows those values: everything secret must have been registered with it.
    debug = "\n".join(r.getMessage() for r in caplog.records)
    assert len(debug) > 1000
    redacted = _secrets_masker().redact(debug)
    leaked = [s for s in secrets if s in redacted]
    assert not leaked, f"secrets in logs after Airflow's masking: {leaked}"


def test_dag_run_logs_no_secret(airflow_db: Path, secret_emulator: VendorEmulator, capfd) -> None:
    from tests.test_sensors_dag import run_dag

    for vendor in ("olconnect", "scriptx", "itwin"):
        secret_emulator.set_next_scenario(vendor, Scenario(steps=2))
        run_dag("jp_wait_deferrable", vendor)
    out, err = capfd.readouterr()
    logged = out + err
    assert "jp_wait_deferrable" in logged
    leaked = [s for s in every_secret(secret_emulator) if s and s in logged]
    assert not leaked, f"secrets in logs: {leaked}"
