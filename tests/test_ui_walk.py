"""A new user's first hour, in a real browser: `make airflow`'s Airflow, driven in headless Chromium.

The fixture runs what ``make airflow`` runs (``python -m airflow_provider_jobprogress.testing.standalone``) and
reads the address and login it prints, as a user would. The walk signs in, tests the connections the emulator
stored, creates and edits a connection of each type through its form and presses Test, sees a misconfigured
one fail with the provider's message, triggers an example DAG and reads the wait's progress in its log.

Chromium is Debian's ``chromium`` (``apt-get install chromium``), driven by Playwright for Python (no browser
download). Without it the test skips; CI sets ``JOBPROGRESS_REQUIRE_CHROMIUM=1``, so there it fails instead.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from airflow_provider_jobprogress.testing.emulators import VendorEmulator
from tests.deployment import free_port

pytestmark = [
    pytest.mark.deployment,
    pytest.mark.browser,
    pytest.mark.skipif(
        Version(importlib.metadata.version("apache-airflow")) < Version("3.3"),
        reason="the walk follows Airflow 3.3's UI (declarative connection forms arrive in 3.2, their layout in 3.3)",
    ),
]

#: Debian's chromium, with the flags a sandbox-less, network-less CI machine needs
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
READY = re.compile(r"^Airflow UI: (?P<url>\S+)  login: (?P<user>\S+)  password: (?P<password>\S+)")
EMULATOR = re.compile(r"^vendor emulators on (?P<url>\S+);")
STANDALONE_PID = re.compile(r"airflow standalone \(pid (?P<pid>\d+)")
#: standalone on a loaded 2-core machine: migrate, four components, DAGs parsed
START_TIMEOUT = 420.0
UI_TIMEOUT_MS = 60_000


def chromium_path() -> str:
    found = os.environ.get("JOBPROGRESS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("JOBPROGRESS_REQUIRE_CHROMIUM") == "1":
        pytest.fail("JOBPROGRESS_REQUIRE_CHROMIUM=1 but no chromium: apt-get install chromium")
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the UI walk needs it")


@dataclass
class AirflowUI:
    url: str
    user: str
    password: str
    emulator_url: str
    home: Path


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowUI]:
    chromium_path()  # skip before starting Airflow when there is no browser
    if running := os.environ.get("JOBPROGRESS_WALK_AIRFLOW"):
        # "URL USER PASSWORD EMULATOR_URL" of a `make airflow` already running: the walk without the wait
        url, user, password, emulator_url = running.split()
        yield AirflowUI(url, user, password, emulator_url, Path(tempfile.gettempdir()))
        return
    home = tmp_path_factory.mktemp("airflow-ui")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "airflow_provider_jobprogress.testing.standalone",
        "--home",
        str(home),
        "--port",
        str(port),
        "--job-seconds",
        "40",
        "--poll-seconds",
        "2",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__"))}
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    seen: list[str] = []
    standalone_pid: int | None = None
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        emulator_url = ""
        for line in proc.stdout:
            seen.append(line.rstrip())
            if found := EMULATOR.match(line):
                emulator_url = found["url"]
            if found := STANDALONE_PID.search(line):
                standalone_pid = int(found["pid"])
            if found := READY.match(line):
                yield AirflowUI(found["url"], found["user"], found["password"], emulator_url, home)
                break
            if time.monotonic() > deadline:
                break
        else:
            pytest.fail("make airflow's runner ended before Airflow was ready:\n" + "\n".join(seen[-40:]))
        if not seen or not READY.match(seen[-1]):
            pytest.fail("Airflow was not ready in time:\n" + "\n".join(seen[-40:]))
    finally:
        # Ctrl-C as a user would: the runner stops standalone's process group itself (SIGTERM, then SIGKILL).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if standalone_pid is not None:  # the runner was killed before it could stop standalone
            with contextlib.suppress(ProcessLookupError):
                os.killpg(standalone_pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser(airflow_ui: AirflowUI) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def page(browser: Any, airflow_ui: AirflowUI) -> Iterator[Any]:
    """Signed in with the login `make airflow` printed."""
    context = browser.new_context(viewport={"width": 1400, "height": 1400})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    page.goto(f"{airflow_ui.url}/connections")
    page.get_by_label("Username").fill(airflow_ui.user)
    page.get_by_label("Password").fill(airflow_ui.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/connections$"))
    yield page
    context.close()


def connections_page(page: Any, url: str) -> None:
    page.goto(f"{url}/connections")
    page.get_by_role("button", name="Add Connection").wait_for()


def press_test(page: Any, conn_id: str) -> tuple[int, dict[str, Any], str]:
    """Press a row's Test button; the API's status and answer, and the toast the user reads."""
    row = page.get_by_role("row").filter(has=page.get_by_text(conn_id, exact=True))
    page.mouse.move(0, 0)  # a button's tooltip left open by the last press covers the row below it
    with page.expect_response(lambda r: r.url.endswith("/api/v2/connections/test")) as answer:
        row.get_by_role("button", name="Test Connection").click()
    status, body = answer.value.status, answer.value.json()
    # the toast that answers this press: it carries the hook's message (a refused request shows only its title)
    words = str(body.get("message") or "Test Connection Failed")[:50]
    toast = page.locator("[data-scope=toast][data-part=root]").filter(has_text=words).last
    toast.wait_for()
    return status, body, toast.inner_text().replace("\n", " | ")


def fill_form(
    page: Any, conn_id: str | None, type_name: str | None, standard: dict[str, str], extra: dict[str, str]
) -> dict[str, Any]:
    """Fill the open Add/Edit dialog (standard fields by their form labels, extra fields by name) and save it."""
    dialog = page.get_by_role("dialog")
    if conn_id is not None:
        dialog.locator("input[name=connection_id]").fill(conn_id)
    if type_name is not None:
        dialog.locator("input[role=combobox]").fill(type_name)
        page.get_by_role("option", name=type_name).click()
    for label, value in standard.items():
        dialog.get_by_label(label, exact=True).fill(value)
    if extra:
        dialog.get_by_role("button", name="Extra Fields", exact=True).click()
        for name, value in extra.items():
            dialog.locator(f"input[name=element_{name}]").fill(value)
    with page.expect_response(
        lambda r: "/api/v2/connections" in r.url and r.request.method in ("POST", "PATCH")
    ) as saved:
        dialog.get_by_role("button", name="Save").click()
    assert saved.value.status in (200, 201), saved.value.text()
    dialog.wait_for(state="hidden")
    return dict(saved.value.request.post_data_json)


def secrets() -> dict[str, str]:
    return {
        "olconnect": VendorEmulator.OLCONNECT_PASSWORD,
        "scriptx": VendorEmulator.SCRIPTX_LICENSE,
        "itwin": VendorEmulator.ITWIN_CLIENT_SECRET,
    }


def test_connections_from_the_emulator_show_and_pass_test(page: Any, airflow_ui: AirflowUI) -> None:
    connections_page(page, airflow_ui.url)
    expected = {
        "olconnect_default": "OL Connect All-In-One service",
        "scriptx_default": "license accepted",
        "itwin_default": "iTwin token obtained",
        "itwin_reality_analysis": "iTwin token obtained",
    }
    for conn_id, message in expected.items():
        status, body, shown = press_test(page, conn_id)
        assert (status, body["status"]) == (200, True), (conn_id, body)
        assert message in body["message"]
        assert "Test Connection Successful" in shown, shown
        assert message in shown, shown


def test_a_connection_of_each_type_made_in_its_form_passes_test(page: Any, airflow_ui: AirflowUI) -> None:
    emu = urllib.parse.urlsplit(airflow_ui.emulator_url)
    host, port = str(emu.hostname), str(emu.port)
    forms: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {
        "olconnect_ui": (
            "Upland OL Connect",
            {
                "Server": host,
                "Port": port,
                "Protocol (http or https)": "http",
                "User (empty: server security off)": "ol-admin",
                "Password": secrets()["olconnect"],
            },
            {},
        ),
        "scriptx_ui": (
            "MeadCo ScriptX.Services",
            {
                "Server (empty: the variant's default)": host,
                "Port (optional)": port,
                "Protocol (http or https)": "http",
                "License GUID": secrets()["scriptx"],
            },
            {},
        ),
    }
    for conn_id, (type_name, standard, extra) in forms.items():
        connections_page(page, airflow_ui.url)
        page.get_by_role("button", name="Add Connection").click()
        saved = fill_form(page, conn_id, type_name, standard, extra)
        assert json.loads(saved["extra"])["verify"] is True  # the switch saves a JSON boolean
        status, body, shown = press_test(page, conn_id)
        assert (status, body["status"]) == (200, True), (conn_id, body, shown)
        assert "Test Connection Successful" in shown


def test_an_itwin_connection_made_in_its_form_and_one_edited(page: Any, airflow_ui: AirflowUI) -> None:
    """iTwin's form has no port: Airflow 3.3.2's list refuses Test for a stored NULL port (fixed upstream by
    apache/airflow#73298). Made in the form, it tests on fixed Airflow; edited in the form, a connection
    stored by `jobprogress-emulator --connections-file` (port 0) tests everywhere."""
    from airflow import __version__ as airflow_version

    connections_page(page, airflow_ui.url)
    page.get_by_role("button", name="Add Connection").click()
    fill_form(
        page,
        "itwin_ui",
        "Bentley iTwin (reality data jobs)",
        {"Client ID": VendorEmulator.ITWIN_CLIENT_ID, "Client secret": secrets()["itwin"]},
        {"base_url": airflow_ui.emulator_url, "auth_url": f"{airflow_ui.emulator_url}/connect/token"},
    )
    status, body, _ = press_test(page, "itwin_ui")
    if Version(airflow_version) <= Version("3.3.2"):
        assert status == 400, body
        assert "differs from the stored connection" in body["detail"]
    else:
        assert (status, body["status"]) == (200, True), body

    connections_page(page, airflow_ui.url)
    row = page.get_by_role("row").filter(has=page.get_by_text("itwin_default", exact=True))
    row.get_by_role("button", name="Edit Connection").click()
    saved = fill_form(page, None, None, {"Description": "edited in the form"}, {"scope": "itwin-platform"})
    assert saved.get("port") == 0, saved  # the hidden port keeps the stored 0
    status, body, shown = press_test(page, "itwin_default")
    assert (status, body["status"]) == (200, True), (body, shown)


def test_a_misconfigured_connection_fails_test_with_the_providers_message(page: Any, airflow_ui: AirflowUI) -> None:
    emu = urllib.parse.urlsplit(airflow_ui.emulator_url)
    connections_page(page, airflow_ui.url)
    page.get_by_role("button", name="Add Connection").click()
    standard = {
        "Server": str(emu.hostname),
        "Port": str(emu.port),
        "Protocol (http or https)": "http",
        "User (empty: server security off)": "ol-admin",
        "Password": "not-the-password",
    }
    fill_form(page, "olconnect_wrong_password", "Upland OL Connect", standard, {})
    status, body, shown = press_test(page, "olconnect_wrong_password")
    assert (status, body["status"]) == (200, False), body
    assert body["message"].startswith("OL Connect"), body
    assert "Test Connection Failed" in shown, shown
    assert body["message"][:60] in shown, shown
    assert "Bad Request" not in shown
    assert "not-the-password" not in shown


def test_a_dag_triggered_in_the_ui_shows_progress_in_its_log(page: Any, airflow_ui: AirflowUI) -> None:
    dag_id = "example_itwin_reality_analysis"
    page.goto(f"{airflow_ui.url}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger Dag").click()
    with page.expect_response(lambda r: r.url.endswith("/dagRuns") and r.request.method == "POST") as answer:
        page.get_by_role("dialog").get_by_role("button", name="Trigger").click()
    assert answer.value.status == 200, answer.value.text()
    run_id = answer.value.json()["dag_run_id"]
    quoted = urllib.parse.quote(run_id, safe="")
    page.goto(f"{airflow_ui.url}/dags/{dag_id}/runs/{quoted}/tasks/wait")
    running = re.compile(r"iTwin job \S+: running \d+(\.\d+)?%")
    finished = re.compile(r"iTwin job \S+: succeeded")
    seen_running: set[str] = set()
    seen_while_deferred = False
    observed: list[tuple[Any, int]] = []  # (the task's state, progress lines in its log) at each look
    deadline = time.monotonic() + 240
    text = ""
    while time.monotonic() < deadline:
        # the log arrives after the page: wait for the provider's first line (the worker's read before deferring)
        with contextlib.suppress(PlaywrightTimeoutError):
            page.get_by_text(re.compile(r"iTwin job \S+: ")).first.wait_for(timeout=20_000)
        text = page.locator("body").inner_text()
        lines = {line for line in text.splitlines() if running.search(line)}
        seen_running |= lines
        # the task's state as the UI reads it (the browser's own session), right after the log was read
        state = page.request.get(f"{airflow_ui.url}/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/wait")
        observed.append((state.json().get("state") if state.ok else state.status, len(lines)))
        seen_while_deferred |= bool(lines) and observed[-1][0] == "deferred"
        if finished.search(text):
            break
        time.sleep(4)
        page.reload()
    assert finished.search(text), f"the wait's log never showed the job finish; progress seen: {sorted(seen_running)}"
    assert seen_running, "no progress line in the wait task's log"
    assert seen_while_deferred, f"no progress shown while the task was deferred: {observed}"
