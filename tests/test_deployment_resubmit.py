"""Real-deployment tests of a submit task run again: a retry after a crash re-attaches to its job, a user's
Clear submits a new one (clearing a print task to reprint prints again).

Run with ``pytest tests/test_deployment_resubmit.py -m deployment``; the harness is in ``tests/deployment.py``.
"""

from __future__ import annotations

import pytest
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_3_PLUS

from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator

from . import deployment as harness
from .deployment import Deployment, wait_for

deployment = harness.deployment
vendor_emulator = harness.vendor_emulator

pytestmark = pytest.mark.deployment

CLEAR = "jp_print_clear"
CRASH = "jp_print_crash_retry"
PRINT = "/api/v1/printPdf/print"


def prints(emu: VendorEmulator) -> int:
    return emu.count("POST", PRINT)


def clear(dep: Deployment, dag_id: str, run_id: str, task_id: str) -> None:
    """What the UI's Clear does for one task of one run."""
    response = dep.client.post(
        f"/dags/{dag_id}/clearTaskInstances",
        json={"dry_run": False, "task_ids": [task_id], "dag_run_id": run_id, "only_failed": False},
    )
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def dep(deployment: Deployment) -> Deployment:
    deployment.wait_ready([CLEAR, CRASH])
    return deployment


def test_clearing_a_print_task_prints_again(dep: Deployment, vendor_emulator: VendorEmulator) -> None:
    emu = vendor_emulator
    emu.set_default_scenario("scriptx", Scenario(steps=2))
    before = prints(emu)
    run_id = dep.trigger_run(CLEAR, {})
    assert dep.wait_run(CLEAR, run_id) == "success", dep.log_tails()
    first = str(dep.xcom(CLEAR, run_id, "print"))
    assert prints(emu) == before + 1

    clear(dep, CLEAR, run_id, "print")
    wait_for("the cleared print to run again", lambda: prints(emu) == before + 2, 120)
    assert dep.wait_run(CLEAR, run_id) == "success", dep.log_tails()
    second = str(dep.xcom(CLEAR, run_id, "print"))
    assert second != first, "the Clear re-attached to the job it had printed already"
    assert dep.task_instance(CLEAR, run_id, "print")["try_number"] == 2


def test_a_retry_after_the_worker_died_re_attaches_to_its_job(dep: Deployment, vendor_emulator: VendorEmulator) -> None:
    emu = vendor_emulator
    emu.set_default_scenario("scriptx", Scenario(steps=40))
    before = prints(emu)
    run_id = dep.trigger_run(CRASH, {})
    assert dep.wait_run(CRASH, run_id, timeout=180) == "success", dep.log_tails()
    assert dep.task_instance(CRASH, run_id, "print")["try_number"] == 2, "the first try died"
    if AIRFLOW_V_3_3_PLUS:
        # task_state_store kept the job id across the crash: the retry waited on the job the first try printed
        assert prints(emu) == before + 1, "the retry printed a second time"
    else:
        # below 3.3 nothing outlives a try (no task_state_store; the try's XComs are cleared): a new print
        assert prints(emu) == before + 2
