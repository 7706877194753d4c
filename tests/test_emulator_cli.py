"""`jobprogress-emulator` as users run it beside a real Airflow: its connections land in Airflow's database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
EXPECTED_IDS = {"olconnect_default", "scriptx_default", "itwin_default", "itwin_reality_analysis"}


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """The command in its own process, with --connections-file; stopped with SIGTERM as a user's Ctrl-C would."""
    conns = tmp_path / "connections.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_jobprogress.testing.emulators", "--connections-file", str(conns)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("jobprogress-emulator serving on http://127.0.0.1:"), first
        yield proc, conns
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def airflow_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    return env


def test_connections_file_is_what_airflow_connections_import_reads(
    emulator_process: tuple[subprocess.Popen[str], Path],
) -> None:
    from airflow.secrets.local_filesystem import load_connections_dict

    _, path = emulator_process
    conns = load_connections_dict(str(path))
    assert set(conns) == EXPECTED_IDS
    assert {c.conn_type for c in conns.values()} == {"olconnect", "scriptx", "itwin"}
    assert conns["itwin_reality_analysis"].extra_dejson["api"] == "reality-analysis"


def test_every_connection_in_the_file_has_a_port(emulator_process: tuple[subprocess.Popen[str], Path]) -> None:
    """Airflow 3.3.2's connection list tests a saved connection with ``port: Number(port)``, 0 for none, and
    refuses it unless the stored port is 0 too (apache/airflow#73298): a type without a port stores 0."""
    _, path = emulator_process
    written: dict[str, dict[str, Any]] = json.loads(path.read_text())
    assert {conn_id: isinstance(conn.get("port"), int) for conn_id, conn in written.items()} == dict.fromkeys(
        EXPECTED_IDS, True
    )
    assert written["itwin_default"]["port"] == 0


def test_imported_connections_show_in_airflow_and_pass_test(
    emulator_process: tuple[subprocess.Popen[str], Path], tmp_path: Path
) -> None:
    _, path = emulator_process
    home = tmp_path / "airflow-home"
    env = airflow_env(home)
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    imported = subprocess.run(
        [AIRFLOW, "connections", "import", str(path), "--overwrite"], env=env, capture_output=True, text=True
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr
    listed = subprocess.run(
        [AIRFLOW, "connections", "list", "--output", "json"], env=env, capture_output=True, text=True, check=True
    )
    assert {c["conn_id"] for c in json.loads(listed.stdout)} >= EXPECTED_IDS
    # What the Test button runs in the api-server (POST /api/v2/connections/test): the stored connection,
    # exported under a transient id as a URI, then Connection.test_connection() through our hook.
    script = (
        "import os\n"
        "from airflow.models import Connection\n"
        "for conn_id in ('olconnect_default', 'scriptx_default', 'itwin_default', 'itwin_reality_analysis'):\n"
        "    conn = Connection.get_connection_from_secrets(conn_id)\n"
        "    conn.conn_id = 'transient_' + conn_id\n"
        "    os.environ['AIRFLOW_CONN_' + conn.conn_id.upper()] = conn.get_uri()\n"
        "    print(*conn.test_connection())\n"
    )
    tested = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0, tested.stderr
    results = [line for line in tested.stdout.splitlines() if line.startswith(("True", "False"))]
    assert len(results) == 4, tested.stdout
    assert all(line.startswith("True") for line in results), results


def test_quota_flags_rehearse_a_vendor_limit() -> None:
    """``--quota VENDOR=CALLS/SECONDS``, once per window (Bentley's Trial tier: itwin=500/60 and itwin=5000/3600)."""
    import requests

    command = [sys.executable, "-m", "airflow_provider_jobprogress.testing.emulators"]
    quotas = ["--quota", "scriptx=1/60", "--quota", "itwin=500/60", "--quota", "itwin=5000/3600"]
    proc = subprocess.Popen([*command, *quotas], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        stats = requests.get(f"{url}/_emulator/stats", timeout=10).json()
        assert stats["quotas"] == {
            "olconnect": [],
            "scriptx": [{"calls": 1, "seconds": 60.0}],
            "itwin": [{"calls": 500, "seconds": 60.0}, {"calls": 5000, "seconds": 3600.0}],
        }
        assert [requests.get(f"{url}/api", timeout=10).status_code for _ in range(2)] == [200, 429]
        assert requests.get(f"{url}/_emulator/stats", timeout=10).json()["vendors"]["scriptx"]["over_quota"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    for bad in ("nobody=1/60", "itwin=500", "itwin=0/60", "itwin"):
        done = subprocess.run([*command, "--quota", bad], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, bad
        assert "--quota" in done.stderr, done.stderr
