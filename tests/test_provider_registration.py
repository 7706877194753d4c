"""Airflow discovers this provider and builds our three connection forms from its metadata."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from packaging.utils import canonicalize_name

# Airflow writes its config into AIRFLOW_HOME on first import; keep that out of the user's ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="jobprogress-airflow-home-"))

from airflow_provider_jobprogress.get_provider_info import get_provider_info

DIST_NAME = "airflow-provider-jobprogress"
ENTRY_POINT = "airflow_provider_jobprogress.get_provider_info:get_provider_info"
OUR_CONN_TYPES = {"olconnect", "scriptx", "itwin"}


#: the request budget every connection type takes (core.budget); ScriptX has no list call, so no list_polling
BUDGET = ("requests_per_minute", "requests_per_hour")


def _python_modules() -> list[str]:
    info = get_provider_info()
    modules = {
        module
        for kind in ("hooks", "triggers", "sensors", "operators")
        for item in info[kind]
        for module in item["python-modules"]
    }
    return sorted(modules)


def _connection_types() -> list[dict[str, Any]]:
    conn_types: list[dict[str, Any]] = get_provider_info()["connection-types"]
    return conn_types


def _load_airflow_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(files("airflow").joinpath(name).read_text())
    return schema


def _import_attr(dotted: str) -> Any:
    module_name, _, attr_name = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attr_name)


@pytest.fixture
def fresh_providers_manager(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A ProvidersManager that discovers providers anew; the process-wide singleton is restored after."""
    from airflow.providers_manager import ProvidersManager

    monkeypatch.setattr(ProvidersManager, "_instance", None, raising=False)
    monkeypatch.setattr(ProvidersManager, "_initialized", False, raising=False)
    return ProvidersManager()  # type: ignore[no-untyped-call]


@pytest.fixture
def hook_meta(fresh_providers_manager: Any) -> dict[str, Any]:
    """What GET /ui/connections/hook_meta sends the React UI, keyed by connection type."""
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_2_PLUS

    if not AIRFLOW_V_3_2_PLUS:
        pytest.skip("declarative connection forms arrive in Airflow 3.2; below, the UI needs FAB's wtforms")
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    # hook_meta_data is functools.cache'd; call the undecorated function so each test sees fresh data.
    metas = HookMetaService.hook_meta_data.__wrapped__()
    return {meta.connection_type: meta for meta in metas if meta.connection_type}


def test_provider_info_passes_the_runtime_schema() -> None:
    jsonschema.validate(get_provider_info(), _load_airflow_schema("provider_info.schema.json"))


def test_connection_types_pass_the_stricter_provider_yaml_schema() -> None:
    # The runtime schema does not describe conn-fields or ui-field-behaviour; the provider.yaml schema does.
    schema = _load_airflow_schema("provider.yaml.schema.json")["properties"]["connection-types"]
    jsonschema.validate(_connection_types(), schema)


def test_package_name_is_the_canonical_distribution_name() -> None:
    dist = importlib.metadata.distribution(DIST_NAME)
    assert get_provider_info()["package-name"] == canonicalize_name(dist.metadata["Name"])


def test_entry_point_is_registered() -> None:
    entry_points = importlib.metadata.entry_points(group="apache_airflow_provider")
    ours = [ep for ep in entry_points if ep.value == ENTRY_POINT]
    assert len(ours) == 1
    assert ours[0].dist is not None
    assert canonicalize_name(ours[0].dist.name) == DIST_NAME
    assert ours[0].load()() == get_provider_info()


def test_providers_manager_discovers_the_provider(fresh_providers_manager: Any) -> None:
    providers = fresh_providers_manager.providers
    assert DIST_NAME in providers
    assert providers[DIST_NAME].version == importlib.metadata.version(DIST_NAME)
    assert providers[DIST_NAME].data["name"] == "Job Progress"


def test_providers_manager_registers_our_triggers(fresh_providers_manager: Any) -> None:
    ours = {t.trigger_class_name for t in fresh_providers_manager.trigger if t.package_name == DIST_NAME}
    assert ours == {
        "airflow_provider_jobprogress.triggers.job_progress",
        "airflow_provider_jobprogress.triggers.job_finished",  # the asset watchers' event trigger (iTwin)
    }


def test_airflow_cli_lists_the_provider(tmp_path: Path) -> None:
    airflow = Path(sys.executable).with_name("airflow")
    # A clean Airflow as a user runs it: no settings inherited from the test session (unit-test mode,
    # for one, logs to stdout and would corrupt the JSON).
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path)
    result = subprocess.run(
        [str(airflow), "providers", "list", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    listed = {p["package_name"]: p for p in json.loads(result.stdout)}
    assert DIST_NAME in listed
    assert listed[DIST_NAME]["version"] == importlib.metadata.version(DIST_NAME)


def test_hook_meta_lists_our_connection_types_by_display_name(hook_meta: dict[str, Any]) -> None:
    assert hook_meta["olconnect"].hook_name == "Upland OL Connect"
    assert hook_meta["scriptx"].hook_name == "MeadCo ScriptX.Services"
    assert hook_meta["itwin"].hook_name == "Bentley iTwin (reality data jobs)"
    for conn_type in OUR_CONN_TYPES:
        assert hook_meta[conn_type].hook_class_name.startswith("airflow_provider_jobprogress.hooks.")


def test_olconnect_form_asks_for_server_port_protocol_and_user(hook_meta: dict[str, Any]) -> None:
    meta = hook_meta["olconnect"]
    std = meta.standard_fields
    assert std.host.title == "Server"
    assert std.port.placeholder == "9340"
    assert std.url_schema.title == "Protocol (http or https)"
    assert std.login.title == "User (empty: server security off)"
    assert std.password.title == "Password"
    assert not any(f.hidden for f in (std.host, std.port, std.url_schema, std.login, std.password))
    assert set(meta.extra_fields) == {"auth", "verify", "ca_bundle", *BUDGET, "list_polling"}
    auth = meta.extra_fields["auth"]
    assert auth["value"] == "token"
    assert auth["schema"]["enum"] == ["token", "basic"]
    assert "auth_token" in auth["description"]


def test_scriptx_form_hides_login_and_asks_for_the_license_guid(hook_meta: dict[str, Any]) -> None:
    meta = hook_meta["scriptx"]
    std = meta.standard_fields
    assert std.login.hidden
    assert std.password.title == "License GUID"
    assert std.host.placeholder == "scriptxservices.meadroid.com"
    assert std.url_schema.placeholder == "https"
    assert "41191" in std.port.placeholder
    assert set(meta.extra_fields) == {"variant", "meadroid_path", "verify", "ca_bundle", *BUDGET}
    assert "X-Meadroid-Path" in meta.extra_fields["meadroid_path"]["description"]
    variant = meta.extra_fields["variant"]
    assert variant["value"] == "cloud"
    assert variant["schema"]["enum"] == ["cloud", "on_premise", "windows_pc"]


def test_itwin_form_asks_only_for_client_credentials_and_api_settings(hook_meta: dict[str, Any]) -> None:
    meta = hook_meta["itwin"]
    std = meta.standard_fields
    assert std.host.hidden
    assert std.port.hidden
    assert std.url_schema.hidden
    assert std.login.title == "Client ID"
    assert std.password.title == "Client secret"
    extras = meta.extra_fields
    assert set(extras) == {
        "api",
        "base_url",
        "auth_url",
        "scope",
        "itwin_id",
        "verify",
        "ca_bundle",
        *BUDGET,
        "list_polling",
    }
    assert extras["api"]["value"] == "realitydataanalysis"
    assert extras["api"]["schema"]["enum"] == [
        "realitydataanalysis",
        "realityconversion",
        "reality-modeling",
        "reality-analysis",
    ]
    assert "reality-analysis" in extras["api"]["description"]
    assert extras["base_url"]["value"] == "https://api.bentley.com"
    assert extras["scope"]["value"] == "itwin-platform"
    assert extras["auth_url"]["value"] == "https://ims.bentley.com/connect/token"
    assert "download" in extras["itwin_id"]["description"]


def test_verify_is_a_switch_and_the_ca_bundle_a_field_of_its_own(hook_meta: dict[str, Any]) -> None:
    for conn_type in OUR_CONN_TYPES:
        verify = hook_meta[conn_type].extra_fields["verify"]
        assert verify["value"] is True  # saved as a JSON boolean, not the string "true"
        assert verify["schema"]["type"][0] == "boolean"  # the form shows a switch
        bundle = hook_meta[conn_type].extra_fields["ca_bundle"]
        assert bundle["value"] is None
        assert "PEM" in bundle["description"]


def test_scriptx_variants_are_named_and_the_server_overrides_their_host(hook_meta: dict[str, Any]) -> None:
    meta = hook_meta["scriptx"]
    variant = meta.extra_fields["variant"]
    shown = variant["schema"]["values_display"]
    assert set(shown) == set(variant["schema"]["enum"])
    assert "MeadCo's hosted service" in shown["cloud"]
    assert "at Server if set" in shown["cloud"]
    assert "scriptxservices.meadroid.com" in variant["description"]
    assert "any variant" in variant["description"]
    assert meta.standard_fields.host.title == "Server (empty: the variant's default)"


def test_no_form_field_is_prefilled_with_a_masked_value(hook_meta: dict[str, Any]) -> None:
    # The API masks values of extra keys that look secret (any key containing "token"); a masked default
    # would be saved as "***" into every new connection created from the form.
    for conn_type in OUR_CONN_TYPES:
        for name, field in hook_meta[conn_type].extra_fields.items():
            assert field["value"] != "***", f"{conn_type}.{name}"


@pytest.mark.parametrize("conn", _connection_types(), ids=lambda c: c["connection-type"])
def test_every_extra_field_has_label_description_and_a_valid_default(conn: dict[str, Any]) -> None:
    for name, field in conn["conn-fields"].items():
        assert field["label"], name
        assert field["description"], name
        schema = field["schema"]
        if "default" in schema:
            jsonschema.validate(schema["default"], schema)


@pytest.mark.parametrize("module", _python_modules())
def test_listed_module_is_importable(module: str) -> None:
    importlib.import_module(module)


@pytest.mark.parametrize("conn", _connection_types(), ids=lambda c: c["connection-type"])
def test_hook_class_matches_its_connection_type(conn: dict[str, Any]) -> None:
    hook_cls = _import_attr(conn["hook-class-name"])
    assert inspect.isclass(hook_cls)
    assert getattr(hook_cls, "conn_type", None) == conn["connection-type"]
    assert getattr(hook_cls, "conn_name_attr", None)
    assert getattr(hook_cls, "default_conn_name", None)
    # Once a hook is imported, ProvidersManager shows the class's hook_name instead of "hook-name".
    assert getattr(hook_cls, "hook_name", None) == conn["hook-name"]


@pytest.mark.parametrize("conn_type", sorted(OUR_CONN_TYPES))
def test_field_behaviour_reaches_every_airflow_version(fresh_providers_manager: Any, conn_type: str) -> None:
    """3.2+ reads the declarative provider info; below, only a hook's *own* ``get_ui_field_behaviour``,
    validated against ``customized_form_field_behaviours.schema.json``. Both must give the form's labels."""
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_2_PLUS

    if not AIRFLOW_V_3_2_PLUS:
        pytest.importorskip("wtforms", reason="below 3.2 Airflow reads hook form methods only with FAB's wtforms")
    behaviour = fresh_providers_manager.field_behaviours.get(conn_type)
    assert behaviour, f"Airflow knows no field behaviour for {conn_type}"
    expected = next(c for c in _connection_types() if c["connection-type"] == conn_type)["ui-field-behaviour"]
    assert behaviour["relabeling"] == expected["relabeling"]
    assert behaviour["hidden_fields"] == expected["hidden-fields"]


@pytest.mark.parametrize("conn", _connection_types(), ids=lambda c: c["connection-type"])
def test_the_pre_3_2_field_behaviour_method_passes_airflows_schema(conn: dict[str, Any]) -> None:
    hook_class = _import_attr(conn["hook-class-name"])
    assert "get_ui_field_behaviour" in hook_class.__dict__, "Airflow < 3.2 only reads the hook's own method"
    schema = _load_airflow_schema("customized_form_field_behaviours.schema.json")
    jsonschema.validate(hook_class.get_ui_field_behaviour(), schema)
