"""Any answer gives exactly one event: a garbled answer in a long wait is retried, nonsense is a typed error event."""

from __future__ import annotations

import pytest

from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from tests.test_trigger import close_shared_sessions, events, submit, trigger

__all__ = ["close_shared_sessions"]  # the autouse fixture, shared with test_trigger

VENDORS = ("olconnect", "scriptx", "itwin")
VENDOR_NAMES = {"olconnect": "OL Connect", "scriptx": "ScriptX.Services", "itwin": "iTwin"}


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("mode", ["html", "empty", "deep_json"])
async def test_one_garbled_answer_during_a_wait_is_retried_not_fatal(
    emulator: VendorEmulator, vendor: str, mode: str
) -> None:
    emulator.set_next_scenario(vendor, Scenario(steps=2, garbage=mode, garbage_polls=1))
    job_id = submit(vendor)
    got = await events(trigger(vendor, job_id))
    assert [e.payload["status"] for e in got] == ["success"], got[0].payload


@pytest.mark.parametrize("vendor", VENDORS)
async def test_json_nested_a_thousand_deep_gives_one_typed_error_event(emulator: VendorEmulator, vendor: str) -> None:
    """Served for good (every retry sees it): one error event naming the vendor and job, not a RecursionError."""
    emulator.set_next_scenario(vendor, Scenario(steps=2, garbage="deep_json"))
    job_id = submit(vendor)
    got = await events(trigger(vendor, job_id))
    assert len(got) == 1
    payload = got[0].payload
    assert (payload["status"], payload["error"]) == ("error", "VendorResponseError")
    assert payload["message"].startswith(f"{VENDOR_NAMES[vendor]} job {job_id}:")
    assert "expected" in payload["message"]
