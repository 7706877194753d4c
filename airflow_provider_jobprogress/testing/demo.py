"""The main job in one command: the example DAGs, run by real Airflow against the bundled emulators.

``make demo`` (or ``python -m airflow_provider_jobprogress.testing.demo [DAGS_FOLDER]``) migrates a
throwaway Airflow home, starts the vendor emulators on 127.0.0.1, points the ``*_default`` connections
at them, and runs each example DAG with ``airflow dags test``: jobs are submitted, waited on in the
trigger, and their results streamed to a local folder. It prints each job's progress as it changes
and where every result went, and exits non-zero if any DAG run failed. Nothing outside 127.0.0.1
is contacted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator

EXAMPLES = (
    "example_olconnect_print",
    "example_scriptx_print_pdf",
    "example_itwin_reality_analysis",
    "example_itwin_reality_analysis_v2",
    "example_generic_sensor",
    "example_many_jobs_mapped",
)
#: a progress or result line from the provider, in Airflow's log format
SHOWN = re.compile(r"\]\s+((?:OL Connect|ScriptX\.Services|iTwin) job \S+: .*?)\s+\[[\w.]+\](?: loc=\S+)?")
FINISHED = re.compile(r"DagRun Finished: dag_id=(\S+), .*? state=(\w+)")
RESULT = re.compile(r"^(OL Connect|ScriptX\.Services|iTwin) job (\S+): result \S+ \(\d+ bytes, sha256 (\w+)\)")
VENDOR_KEYS = {"OL Connect": "olconnect", "ScriptX.Services": "scriptx", "iTwin": "itwin"}


def default_dags_folder() -> Path:
    return Path(__file__).resolve().parents[2] / "dags_examples"


def verify(emulator: VendorEmulator, message: str, counts: dict[str, int]) -> str:
    """Check a stored result's sha256 against what the emulated vendor served; a suffix for the line."""
    found = RESULT.match(message)
    if found is None:
        return ""
    vendor, job_id, sha = VENDOR_KEYS[found.group(1)], found.group(2), found.group(3)
    index = counts[job_id] = counts.get(job_id, -1) + 1
    served = emulator.result_sha256(vendor, job_id, index)
    return "  [sha256 matches what the vendor served]" if served == sha else "  [SHA256 DIFFERS FROM WHAT WAS SERVED]"


def run_example(
    airflow: str, dag_id: str, conf: Mapping[str, object], env: dict[str, str], emulator: VendorEmulator
) -> str:
    """Run one example DAG with ``airflow dags test``; print its progress lines; return the run's state."""
    print(f"\n== {dag_id}", flush=True)
    command = [airflow, "dags", "test", dag_id, "-c", json.dumps(conf)]
    state, mismatches = "failed (no end state reported)", 0
    seen: set[str] = set()
    counts: dict[str, int] = {}
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if shown := SHOWN.search(line):
                message = shown.group(1)
                if message not in seen:  # the sensor and its trigger may both report the same reading
                    seen.add(message)
                    verdict = verify(emulator, message, counts)
                    mismatches += "DIFFERS" in verdict
                    print(f"   {message}{verdict}", flush=True)
            elif finished := FINISHED.search(line):
                state = finished.group(2)
        proc.wait()
    if mismatches:
        state = f"{state}, but {mismatches} result(s) differ from what the vendor served"
    print(f"   -> DAG run {state}", flush=True)
    return state


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    dags_folder = Path(args[0]) if args else default_dags_folder()
    if not dags_folder.is_dir():
        print(f"no example DAG folder at {dags_folder}; pass its path", file=sys.stderr)
        return 2
    home = Path(tempfile.mkdtemp(prefix="jobprogress-demo-airflow-"))
    results = Path(os.environ.get("JOBPROGRESS_DEMO_OUT") or tempfile.mkdtemp(prefix="jobprogress-results-"))
    airflow = str(Path(sys.executable).with_name("airflow"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder),
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        JOBPROGRESS_EXAMPLE_POLL_SECONDS="0.5",
        # `airflow dags test` runs every task in one process: no executor reports a deferral late, so the
        # trigger's first poll need not wait for Airflow to settle it (see waiting.deferral_settle_seconds).
        AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL="0",
    )
    print(f"Airflow home {home}: migrating the metadata database…", flush=True)
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    states: dict[str, str] = {}
    with VendorEmulator() as emulator:
        print(f"vendor emulators (OL Connect, ScriptX.Services, iTwin) on {emulator.url}")
        for conn_id, conn in emulator.connections().items():
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = conn
        for vendor in ("olconnect", "scriptx", "itwin"):
            emulator.set_default_scenario(vendor, Scenario(duration=3.0, steps=5, result_size=512 * 1024))
        conf = {
            "results": f"file://{results}",
            "documents": [f"https://example.invalid/letter-{n}.pdf" for n in (1, 2, 3)],
        }
        for dag_id in EXAMPLES:
            states[dag_id] = run_example(airflow, dag_id, conf, env, emulator)
    files = sorted(p for p in results.rglob("*") if p.is_file())
    print(f"\n{len(files)} result files under {results}:")
    for path in files:
        print(f"   {path.relative_to(results)}  ({path.stat().st_size} bytes)")
    failed = [dag_id for dag_id, state in states.items() if state != "success"]
    print("\nall example DAG runs succeeded" if not failed else f"\nFAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
