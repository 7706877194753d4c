"""Shared fixtures: a throwaway Airflow home, a migrated metadata DB, and running vendor emulators."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_HOME = Path(tempfile.mkdtemp(prefix="jobprogress-airflow-"))
# Airflow reads its configuration at import time: settle it before anything imports airflow.
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make unit` runs tests on several processes (pytest-xdist): each its own Airflow home and SQLite database
    # (the home the controller set is inherited, and two processes migrating one SQLite file race)
    os.environ["AIRFLOW_HOME"] = str(_HOME)
else:
    os.environ.setdefault("AIRFLOW_HOME", str(_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "tests" / "dags"))
# Two DAG bundles: the tests' own DAGs and the shipped examples (dag.test() needs a DAG inside a bundle).
_BUNDLES = [
    {"name": name, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {"path": str(path)}}
    for name, path in (("test_dags", ROOT / "tests" / "dags"), ("examples", ROOT / "dags_examples"))
]
DAG_BUNDLES_JSON = json.dumps(_BUNDLES)
os.environ.setdefault("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", DAG_BUNDLES_JSON)
# The examples poll at the vendors' pace by default; tests do not wait minutes for that.
os.environ.setdefault("JOBPROGRESS_EXAMPLE_POLL_SECONDS", "0.2")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
# dag.test() runs every task in this process: no executor reports a deferral late, so the trigger's
# first poll need not wait for Airflow to settle it (2 x this interval; see waiting.deferral_settle_seconds).
# The deployment tests run real components with Airflow's default (5 s).
os.environ.setdefault("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "0")

from airflow_provider_jobprogress.testing.emulators import VendorEmulator  # noqa: E402


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[VendorEmulator]:
    """A fresh emulator of the three vendor APIs on 127.0.0.1, with AIRFLOW_CONN_* pointing at it."""
    with VendorEmulator() as emu:
        for conn_id, uri in emu.connections().items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", uri)
        yield emu


#: calls per minute a connection allows in the tests unless its extras say otherwise: tests poll every few
#: milliseconds and are not about a vendor's limit (test_budget.py and test_poller.py's rate-limit tests are,
#: and set ``requests_per_minute`` themselves)
TEST_BUDGET = 1_000_000.0


@pytest.fixture(autouse=True)
def generous_request_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_jobprogress.core.budget import BUDGETS
    from airflow_provider_jobprogress.core.protocol import VendorApi
    from airflow_provider_jobprogress.vendors.itwin import ITwinApi
    from airflow_provider_jobprogress.vendors.olconnect import OLConnectApi
    from airflow_provider_jobprogress.vendors.scriptx import ScriptXApi

    for api in (VendorApi, ITwinApi, OLConnectApi, ScriptXApi):
        monkeypatch.setattr(api, "default_requests_per_minute", TEST_BUDGET)
        monkeypatch.setattr(api, "default_requests_per_hour", None)
    BUDGETS.clear()


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB in the throwaway AIRFLOW_HOME (what ``dag.test()`` needs)."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def azurite() -> Iterator[Any]:
    """Azurite (Azure Storage's own API server, from npm) on 127.0.0.1, for the session.

    Skipped only where Node.js is absent; CI sets JOBPROGRESS_REQUIRE_AZURITE=1 so a skip there fails instead.
    """
    from airflow_provider_jobprogress.testing.azurite import Azurite, find_azurite

    required = os.environ.get("JOBPROGRESS_REQUIRE_AZURITE") == "1"
    if shutil.which("node") is None:
        if required:
            pytest.fail("JOBPROGRESS_REQUIRE_AZURITE=1 but Node.js is not installed: Azurite cannot run")
        pytest.skip("Node.js is not installed: the Azurite tests need it (then `make azurite`)")
    if find_azurite() is None:
        pytest.fail("Azurite is not installed: run `make azurite` (npm install into .tools/azurite)")
    with Azurite() as server:
        yield server


@pytest.fixture
def emulator_on_azurite(emulator: VendorEmulator, azurite: Any) -> VendorEmulator:
    """The emulator with iTwin outputs uploaded to Azurite and read-access answers carrying Azurite SAS URLs."""
    emulator.serve_blobs_from(azurite.blob_store())
    return emulator
