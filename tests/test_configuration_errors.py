"""Configuration mistakes are ConfigurationError naming the connection and the field, never an outage.

A wrong scheme, a host with a path, an unknown ``api`` or unreadable extras used to surface as a
connection error retried for an hour, or as a call to the wrong server (iTwin's defaults after
malformed extras). Each is refused before any request where it can be seen from the connection alone,
fails the Test button, is never retried, and says which field to fix.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from airflow_provider_jobprogress.core.errors import ConfigurationError, JobProgressError, error_from_event
from airflow_provider_jobprogress.core.model import JobProgress, JobState
from airflow_provider_jobprogress.core.policies import RequestRetry
from airflow_provider_jobprogress.hooks.base import JobProgressHook
from airflow_provider_jobprogress.hooks.itwin import ITwinHook
from airflow_provider_jobprogress.hooks.olconnect import OLConnectHook
from airflow_provider_jobprogress.hooks.scriptx import ScriptXHook
from airflow_provider_jobprogress.testing.emulators import VendorEmulator
from tests.test_trigger import close_shared_sessions, events, submit, trigger

__all__ = ["close_shared_sessions"]  # the autouse fixture, shared with test_trigger

HOOKS: dict[str, type[JobProgressHook[Any]]] = {"olconnect": OLConnectHook, "scriptx": ScriptXHook, "itwin": ITwinHook}
CONN_ID = "misconfigured"


def connection(emulator: VendorEmulator, vendor: str, **changes: Any) -> dict[str, Any]:
    """The emulator's working connection for ``vendor`` with ``changes``; ``extra`` entries are merged."""
    conn = json.loads(emulator.connections()[f"{vendor}_default"])
    extra = changes.pop("extra", None)
    conn.update(changes)
    if isinstance(extra, dict):
        conn["extra"] = {**conn.get("extra", {}), **extra}
    elif extra is not None:
        conn["extra"] = extra  # a raw string: what a hand-edited connection holds
    return {key: value for key, value in conn.items() if value is not None}


def use(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any]) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))


def airflow_refuses_it(field: str) -> bool:
    """Airflow 3.1 drops an environment connection whose extras are not JSON (it is "not defined"), so
    Airflow never hands it over with default extras; 3.2+ hands it over and we must refuse it."""
    from airflow.providers.common.compat.sdk import AirflowNotFoundException
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(CONN_ID)
    except AirflowNotFoundException:
        assert field == "extra", "only unreadable extras make Airflow itself refuse the connection"
        return True
    return False


#: (vendor, changes to the emulator's connection, the field the error must name)
MISTAKES: list[tuple[str, dict[str, Any], str]] = [
    ("olconnect", {"schema": "ftp"}, "schema"),
    ("olconnect", {"host": "ftp://127.0.0.1"}, "host"),
    ("olconnect", {"host": "127.0.0.1/rest"}, "host"),
    ("olconnect", {"host": "127.0.0.1:9340", "port": 9341}, "port"),
    ("olconnect", {"host": "127.0.0.1:http"}, "host"),
    ("olconnect", {"extra": {"auth": "kerberos"}}, "auth"),
    ("olconnect", {"extra": "{not json"}, "extra"),
    ("scriptx", {"schema": "ftp"}, "schema"),
    ("scriptx", {"host": "127.0.0.1/api"}, "host"),
    ("scriptx", {"extra": {"variant": "mainframe"}}, "variant"),
    ("scriptx", {"extra": {"variant": "cloud"}, "password": None}, "password"),
    ("scriptx", {"extra": '["not", "an object"]'}, "extra"),
    ("itwin", {"extra": {"api": "reality-everything"}}, "api"),
    ("itwin", {"extra": {"base_url": "api.bentley.com"}}, "base_url"),
    ("itwin", {"extra": {"base_url": "ftp://api.example"}}, "base_url"),
    ("itwin", {"extra": {"auth_url": "not a url"}}, "auth_url"),
    ("itwin", {"extra": "{not json"}, "extra"),
]
IDS = [f"{vendor}-{field}-{i}" for i, (vendor, _, field) in enumerate(MISTAKES)]


@pytest.mark.parametrize(("vendor", "changes", "field"), MISTAKES, ids=IDS)
def test_a_configuration_mistake_is_refused_before_any_request_naming_the_field(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch, vendor: str, changes: dict[str, Any], field: str
) -> None:
    use(monkeypatch, connection(emulator, vendor, **changes))
    if airflow_refuses_it(field):
        return
    with pytest.raises(ConfigurationError) as err:
        HOOKS[vendor](CONN_ID).api  # noqa: B018 - reading the connection's settings is the point
    assert err.value.field == field
    assert err.value.conn_id == CONN_ID
    assert f"'{CONN_ID}'" in str(err.value)
    assert f"'{field}'" in str(err.value)
    assert isinstance(err.value, JobProgressError)
    assert emulator.calls == []


@pytest.mark.parametrize(("vendor", "changes", "field"), MISTAKES, ids=IDS)
def test_the_test_button_fails_for_a_configuration_mistake_naming_the_field(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch, vendor: str, changes: dict[str, Any], field: str
) -> None:
    use(monkeypatch, connection(emulator, vendor, **changes))
    if airflow_refuses_it(field):
        return
    ok, message = HOOKS[vendor](CONN_ID).test_connection()
    assert not ok
    assert f"'{field}'" in message
    assert f"'{CONN_ID}'" in message


@pytest.mark.parametrize(
    ("vendor", "changes"),
    [
        ("olconnect", {"extra": {"auth": "Token"}}),
        ("olconnect", {"schema": "HTTP"}),
        ("scriptx", {"extra": {"variant": "On_Premise"}}),
        ("itwin", {"extra": {"api": "RealityDataAnalysis"}}),
        ("itwin", {"extra": {"api": " reality-modeling "}}),
    ],
)
def test_choices_are_read_whatever_their_case(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch, vendor: str, changes: dict[str, Any]
) -> None:
    use(monkeypatch, connection(emulator, vendor, **changes))
    ok, message = HOOKS[vendor](CONN_ID).test_connection()
    assert ok, message


def test_https_against_a_plain_http_port_is_a_configuration_error_not_retried(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, connection(emulator, "olconnect", schema="https"))
    hook = OLConnectHook(CONN_ID, request_retry=RequestRetry(initial_delay=2, jitter=0))
    started = time.monotonic()
    ok, message = hook.test_connection()
    assert not ok
    assert "'schema'" in message
    assert "plain HTTP" in message
    assert time.monotonic() - started < 1.5, "not retried with backoff"


async def test_the_trigger_says_a_configuration_error_is_one(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, connection(emulator, "itwin", extra={"base_url": "api.bentley.com"}))
    got = await events(trigger("itwin", "job-1", conn_id=CONN_ID))
    assert len(got) == 1
    payload = got[0].payload
    assert (payload["status"], payload["error"]) == ("error", "ConfigurationError")
    assert "configuration error" in payload["message"]
    assert "'base_url'" in payload["message"]
    assert "job-1" in payload["message"]
    assert isinstance(error_from_event(payload["error"], payload["message"]), ConfigurationError)


async def test_https_against_a_plain_http_port_in_the_triggerer_is_one_configuration_error_event(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = submit("olconnect")
    use(monkeypatch, connection(emulator, "olconnect", schema="https"))
    started = time.monotonic()
    got = await events(trigger("olconnect", job_id, conn_id=CONN_ID))
    assert [(e.payload["status"], e.payload["error"]) for e in got] == [("error", "ConfigurationError")]
    assert "'schema'" in got[0].payload["message"]
    assert time.monotonic() - started < 5, "not waited through as an outage"


def test_a_configuration_error_survives_pickling_with_its_fields() -> None:
    import pickle

    err = ConfigurationError("iTwin", None, "not a URL", conn_id="c", field="base_url")
    again = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own bytes
    assert (type(again), again.conn_id, again.field, str(again)) == (ConfigurationError, "c", "base_url", str(err))


# -- job ids ---------------------------------------------------------------------------------------


def test_a_crlf_in_a_job_id_never_reaches_a_message_raw() -> None:
    job_id = "op-1\r\nINFO forged line"
    assert "\n" not in str(JobProgressError("OL Connect", job_id, "gone"))
    assert "\r" not in str(JobProgressError("OL Connect", job_id, "gone"))
    assert "\n" not in JobProgress("OL Connect", job_id, JobState.RUNNING, 5.0).describe()


async def test_a_crlf_in_a_job_id_never_reaches_a_trigger_log_line_raw(
    emulator: VendorEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    got = await events(trigger("olconnect", "op-1\r\nINFO forged line"))
    assert [e.payload["status"] for e in got] == ["error"]
    assert "\n" not in got[0].payload["message"]
    for record in caplog.records:
        assert "\r\n" not in record.getMessage(), record.getMessage()


NOT_JOB_IDS = [None, "", "  ", ".", "..", "op-1\r\nINFO forged line"]


def _sensor(job_id: Any) -> Any:
    from airflow_provider_jobprogress.sensors.olconnect import OLConnectOperationSensor

    return OLConnectOperationSensor(task_id="wait", job_id=job_id, conn_id="olconnect_default")


def _fetch(job_id: Any) -> Any:
    from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator

    return FetchJobResultOperator(task_id="fetch", job_id=job_id, conn_id="olconnect_default")


@pytest.mark.parametrize("build", [_sensor, _fetch], ids=["sensor", "fetch"])
@pytest.mark.parametrize("job_id", NOT_JOB_IDS, ids=repr)
def test_a_job_id_that_cannot_be_one_fails_at_parse_time(build: Any, job_id: Any) -> None:
    with pytest.raises(ConfigurationError) as err:
        build(job_id)
    assert err.value.field == "job_id"
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("build", [_sensor, _fetch], ids=["sensor", "fetch"])
@pytest.mark.parametrize("rendered", [None, "", ".."], ids=repr)
def test_a_templated_job_id_is_checked_when_rendered(build: Any, rendered: Any, emulator: VendorEmulator) -> None:
    task = build("{{ ti.xcom_pull(task_ids='submit') }}")  # accepted: Airflow renders it at run time
    task.job_id = rendered  # what the template rendered to (None: a native rendering of a missing XCom)
    with pytest.raises(ConfigurationError, match="job_id"):
        task.execute({})
    assert emulator.calls == [], "refused before any call to the vendor"


@pytest.mark.parametrize("job_id", ["", "..", "op-1\r\nINFO forged line"], ids=repr)
async def test_the_trigger_refuses_a_job_id_that_cannot_be_one_before_any_call(
    emulator: VendorEmulator, job_id: str
) -> None:
    got = await events(trigger("olconnect", job_id))
    assert [(e.payload["status"], e.payload["error"]) for e in got] == [("error", "ConfigurationError")]
    assert "'job_id'" in got[0].payload["message"]
    assert "\n" not in got[0].payload["message"]
    assert emulator.calls == []
