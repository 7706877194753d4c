"""What the connection forms save is what the hooks read: TLS settings and the ScriptX variant, end to end."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_jobprogress.core.protocol import ConnectionFields
from airflow_provider_jobprogress.get_provider_info import get_provider_info
from airflow_provider_jobprogress.hooks.base import JobProgressHook
from airflow_provider_jobprogress.hooks.itwin import ITwinHook
from airflow_provider_jobprogress.hooks.olconnect import OLConnectHook
from airflow_provider_jobprogress.hooks.scriptx import ScriptXHook
from airflow_provider_jobprogress.testing.emulators import VendorEmulator

HOOKS: dict[str, type[JobProgressHook[Any]]] = {"olconnect": OLConnectHook, "scriptx": ScriptXHook, "itwin": ITwinHook}


def form_defaults(conn_type: str) -> dict[str, Any]:
    """The extra a new connection gets from the 3.2+ form when the user changes none of its extra fields."""
    conn = next(c for c in get_provider_info()["connection-types"] if c["connection-type"] == conn_type)
    return {
        name: field["schema"]["default"] for name, field in conn["conn-fields"].items() if "default" in field["schema"]
    }


@pytest.mark.parametrize("conn_type", sorted(HOOKS))
def test_the_form_saves_verify_as_a_json_boolean(conn_type: str) -> None:
    assert form_defaults(conn_type)["verify"] is True


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, True),
        ({"verify": True}, True),
        ({"verify": False}, False),
        ({"verify": True, "ca_bundle": "/etc/ssl/private-ca.pem"}, "/etc/ssl/private-ca.pem"),
        ({"verify": True, "ca_bundle": "  "}, True),
        ({"verify": False, "ca_bundle": "/etc/ssl/private-ca.pem"}, False),
        ({"verify": None, "ca_bundle": None}, True),
        # connections saved before verify became a switch keep working
        ({"verify": "true"}, True),
        ({"verify": "false"}, False),
        ({"verify": "/etc/ssl/old-ca.pem"}, "/etc/ssl/old-ca.pem"),
    ],
)
def test_tls_verify_reads_the_switch_and_the_ca_bundle(extra: dict[str, Any], expected: bool | str) -> None:
    assert ConnectionFields("c", extra=extra).tls_verify() == expected


@pytest.mark.parametrize("conn_type", sorted(HOOKS))
def test_every_vendor_takes_its_tls_settings_from_the_form_fields(
    conn_type: str, emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = json.loads(emulator.connections()[f"{conn_type}_default"])
    conn["extra"] = {**form_defaults(conn_type), **conn["extra"], "ca_bundle": "/etc/ssl/private-ca.pem"}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_type.upper()}_DEFAULT", json.dumps(conn))
    assert HOOKS[conn_type]().api.verify == "/etc/ssl/private-ca.pem"


@pytest.mark.parametrize("conn_type", sorted(HOOKS))
def test_a_connection_saved_from_the_form_defaults_passes_test(
    conn_type: str, emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulator's connection with every extra field the form adds: Test succeeds, so the defaults are usable."""
    conn = json.loads(emulator.connections()[f"{conn_type}_default"])
    conn["extra"] = {**form_defaults(conn_type), **conn["extra"]}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_type.upper()}_DEFAULT", json.dumps(conn))
    ok, message = HOOKS[conn_type]().test_connection()
    assert ok, message
