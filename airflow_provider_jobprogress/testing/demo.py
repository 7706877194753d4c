"""The main job in one command: the bundled emulators, real Airflow, and each vendor's job followed home.

Run with ``make demo`` (or ``python -m airflow_provider_jobprogress.testing.demo``). It starts the
emulators on 127.0.0.1, points Airflow connections at them, and for each vendor submits a job, follows
its progress through the provider's hook and trigger, and streams the result into a local folder.
Nothing outside 127.0.0.1 is contacted. Exits non-zero if any job did not come home.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator

JOBS: dict[str, tuple[str, dict[str, Any]]] = {
    "olconnect": (
        "airflow_provider_jobprogress.hooks.olconnect.OLConnectHook",
        {
            "configuration": {
                "datamining": {"identifier": "invoices.csv", "config": "invoices"},
                "outputcreation": {"config": "pdf"},
            }
        },
    ),
    "scriptx": (
        "airflow_provider_jobprogress.hooks.scriptx.ScriptXHook",
        {"document": "https://example.invalid/statement.pdf", "device": {"printToFileName": "statement.pdf"}},
    ),
    "itwin": (
        "airflow_provider_jobprogress.hooks.itwin.ITwinHook",
        {
            "specification": {
                "name": "road survey",
                "type": "objects2D",
                "inputs": [{"type": "photos", "id": "photos-1"}],
                "outputs": ["objects2D"],
            }
        },
    ),
}


def main() -> int:
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="jobprogress-demo-"))
    out_dir = Path(os.environ.get("JOBPROGRESS_DEMO_OUT") or tempfile.mkdtemp(prefix="jobprogress-results-"))
    from airflow_provider_jobprogress.core.session import ASYNC_SESSIONS
    from airflow_provider_jobprogress.hooks import load_hook_class
    from airflow_provider_jobprogress.triggers.job_progress import JobProgressTrigger

    failures = 0
    with VendorEmulator() as emulator:
        print(f"vendor emulators listening on {emulator.url}")
        for conn_id, uri in emulator.connections().items():
            os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = uri
        for vendor, (hook_path, submit_kwargs) in JOBS.items():
            emulator.set_next_scenario(vendor, Scenario(duration=3.0, steps=5, result_size=256 * 1024))
            hook = load_hook_class(hook_path)()
            job_id = hook.submit(**submit_kwargs)
            print(f"\n{hook.vendor()}: submitted job {job_id}; waiting in the trigger (polling every 0.5 s)")
            trigger = JobProgressTrigger(
                hook_class_path=hook_path,
                conn_id=f"{vendor}_default",
                job_id=job_id,
                poll_policy={"kind": "fixed", "interval": 0.5},
            )

            async def wait(trig: JobProgressTrigger = trigger) -> dict[str, Any]:
                try:
                    async for event in trig.run():
                        return dict(event.payload)
                finally:
                    await ASYNC_SESSIONS.aclose_all()
                return {"status": "error", "message": "the trigger ended without an event"}

            event = asyncio.run(wait())
            if event["status"] != "success":
                print(f"  FAILED: {event['message']}")
                failures += 1
                continue
            for index, part in enumerate(hook.result_parts(job_id)):
                target = out_dir / vendor / part.name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest, size = hashlib.sha256(), 0
                with hook.open_result(part, job_id) as answer, target.open("wb") as sink:
                    for chunk in answer.chunks():
                        sink.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                matches = emulator.result_sha256(vendor, job_id, index) == digest.hexdigest()
                failures += int(not matches)
                verdict = "matches what the vendor served" if matches else "DOES NOT MATCH what the vendor served"
                print(f"  result: {target} ({size} bytes, sha256 {digest.hexdigest()[:16]}… {verdict})")
    print(f"\n{'all jobs came home' if not failures else f'{failures} job(s) failed'}; results under {out_dir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
