"""Real-deployment tests: the sensor deferred to a real triggerer (separate processes, LocalExecutor, SQLite).

Run with ``pytest tests/test_deployment.py -m deployment``; the harness is in ``tests/deployment.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from typing import Any

import pytest
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_3_PLUS

from airflow_provider_jobprogress.testing.emulators import Call, Scenario, VendorEmulator

from . import deployment as harness
from .deployment import Deployment, wait_for

# the harness's module-scoped fixtures, used by name below
deployment = harness.deployment
vendor_emulator = harness.vendor_emulator

pytestmark = pytest.mark.deployment

VENDORS = ("olconnect", "scriptx", "itwin")
#: what JobProgress.vendor says for each connection type
VENDOR_NAMES = {"olconnect": "OL Connect", "scriptx": "ScriptX.Services", "itwin": "iTwin"}
DEFERRABLE = "jp_wait_deferrable"
CANCEL_ON_KILL = "jp_wait_cancel_on_kill"
MAPPED = "jp_mapped_submit_wait_fetch"
IN_TRIGGERER = "jp_wait_in_triggerer"
POKE = "jp_wait_poke"


def job_calls(emu: VendorEmulator, job_id: str) -> list[Call]:
    return [c for c in emu.calls if c.job_id == job_id]


def submit_calls(calls: list[Call]) -> list[Call]:
    """Calls that start a job: OL Connect submit, ScriptX print, iTwin create (its PATCH to start is below)."""
    return [c for c in calls if c.method == "POST" and c.path.endswith(("/print/submit", "/printPdf/print", "/jobs"))]


def cancel_calls(calls: list[Call]) -> list[Call]:
    """OL Connect POST .../cancel/<id>, iTwin v2 DELETE or v1 PATCH beyond the one that submitted."""
    cancels = [c for c in calls if "cancel" in c.path or c.method == "DELETE"]
    patches = [c for c in calls if c.method == "PATCH"]
    return cancels + patches[1:]


def progress_calls(calls: list[Call]) -> list[Call]:
    return [c for c in calls if c.method == "GET"]


def start_runs(dep: Deployment, dag_id: str, vendors: tuple[str, ...] = VENDORS) -> dict[str, str]:
    return {vendor: dep.trigger_run(dag_id, {"vendor": vendor}) for vendor in vendors}


def wait_runs(dep: Deployment, dag_id: str, runs: dict[str, str], timeout: float = 75) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    return {v: dep.wait_run(dag_id, r, max(deadline - time.monotonic(), 1)) for v, r in runs.items()}


def job_ids(dep: Deployment, dag_id: str, runs: dict[str, str], timeout: float = 90) -> dict[str, str]:
    ids = {}
    for vendor, run_id in runs.items():
        dep.wait_task_state(dag_id, run_id, "submit", "success", timeout)
        ids[vendor] = str(dep.xcom(dag_id, run_id, "submit"))
    return ids


def test_sensor_waits_in_the_triggerer_and_succeeds(deployment: Deployment, vendor_emulator: VendorEmulator) -> None:
    dep, emu = deployment, vendor_emulator
    for vendor in VENDORS:
        emu.set_next_scenario(vendor, Scenario(steps=4))
    runs = start_runs(dep, DEFERRABLE)
    states = wait_runs(dep, DEFERRABLE, runs)
    assert states == dict.fromkeys(VENDORS, "success")
    ids = job_ids(dep, DEFERRABLE, runs)
    for vendor, run_id in runs.items():
        job = ids[vendor]
        assert dep.task_state(DEFERRABLE, run_id, "wait") == "success"
        sensor_xcom = dep.xcom(DEFERRABLE, run_id, "wait")
        pulled = dep.xcom(DEFERRABLE, run_id, "downstream")
        assert pulled["type"] == "dict", pulled
        assert pulled["value"] == sensor_xcom
        assert pulled["value"]["state"] == "succeeded"
        assert pulled["value"]["job_id"] == job
        assert pulled["value"]["vendor"] == VENDOR_NAMES[vendor]
        dep.trigger_log_text(DEFERRABLE, run_id, "wait", f"job {job}: running", f"job {job}: succeeded")
        # the worker resumed the task after the trigger: a worker attempt log exists too
        assert (dep.task_log_dir(DEFERRABLE, run_id, "wait") / "attempt=1.log").exists()
        calls = job_calls(emu, job)
        assert len(submit_calls(calls)) == 1, calls
        assert cancel_calls(calls) == [], calls
        assert emu.job(vendor, job).state == "succeeded"


needs_3_3 = pytest.mark.skipif(
    not AIRFLOW_V_3_3_PLUS, reason="templates rendered in the triggerer and trigger on_kill are Airflow 3.3"
)


@needs_3_3
def test_finish_in_triggerer_uses_no_worker(deployment: Deployment, vendor_emulator: VendorEmulator) -> None:
    """``finish_in_triggerer=True``: the task starts in the triggerer and ends there (TaskSuccessEvent).

    What downstream pulls in this mode: Airflow stores the event's XCom with ``json.dumps``, so
    ``xcom_pull`` returns the progress dict as a JSON *string* (``type == "str"``).
    """
    dep, emu = deployment, vendor_emulator
    for vendor in VENDORS:
        emu.set_next_scenario(vendor, Scenario(steps=4))
    runs = start_runs(dep, IN_TRIGGERER)
    states = wait_runs(dep, IN_TRIGGERER, runs)
    assert states == dict.fromkeys(VENDORS, "success")
    ids = job_ids(dep, IN_TRIGGERER, runs)
    for vendor, run_id in runs.items():
        job = ids[vendor]
        log_dir = dep.task_log_dir(IN_TRIGGERER, run_id, "wait")
        assert dep.task_state(IN_TRIGGERER, run_id, "wait") == "success"
        trigger_logs = dep.trigger_logs(IN_TRIGGERER, run_id, "wait")
        assert trigger_logs, f"no trigger log in {log_dir}: {sorted(p.name for p in log_dir.glob('*'))}"
        dep.trigger_log_text(IN_TRIGGERER, run_id, "wait", f"job {job}: succeeded", f"job {job}: running")
        # no worker ever ran the sensor: only the trigger log is there
        assert sorted(p.name for p in log_dir.iterdir()) == [p.name for p in trigger_logs]
        assert not (log_dir / "attempt=1.log").exists()
        pulled = dep.xcom(IN_TRIGGERER, run_id, "downstream")
        assert pulled["type"] == "str", pulled
        value = json.loads(pulled["value"])
        assert value["state"] == "succeeded"
        assert value["job_id"] == job
        assert value["vendor"] == VENDOR_NAMES[vendor]
        calls = job_calls(emu, job)
        assert len(submit_calls(calls)) == 1, calls
        assert cancel_calls(calls) == [], calls


@needs_3_3
def test_killing_a_deferred_task_cancels_the_remote_job(
    deployment: Deployment, vendor_emulator: VendorEmulator
) -> None:
    """A sensor asked to own its job (``cancel_on_kill=True``) cancels it when a user kills the task.

    (A Clear is not tested here: on this machine the cleared sensor's new try had deferred again before the
    triggerer ran the old wait's on_kill, and a task deferred again cannot be told from one another triggerer
    took over: the job was left, as the README says.)"""
    kill = "mark failed"
    dep, emu = deployment, vendor_emulator
    emu.set_next_scenario("olconnect", Scenario(steps=100000))
    runs = start_runs(dep, CANCEL_ON_KILL, ("olconnect",))
    run_id = runs["olconnect"]
    job = job_ids(dep, CANCEL_ON_KILL, runs)["olconnect"]
    dep.wait_task_state(CANCEL_ON_KILL, run_id, "wait", "deferred", timeout=90)
    # the trigger is polling: more progress calls arrive after the deferral
    seen = len(progress_calls(job_calls(emu, job)))
    wait_for("the trigger to poll", lambda: len(progress_calls(job_calls(emu, job))) >= seen + 2, 60)
    if kill == "mark failed":
        dep.mark_failed(CANCEL_ON_KILL, run_id, "wait")
    else:
        response = dep.client.post(
            f"/dags/{CANCEL_ON_KILL}/clearTaskInstances",
            json={"dry_run": False, "task_ids": ["wait"], "dag_run_id": run_id, "only_failed": False},
        )
        assert response.status_code == 200, response.text
    cancel_path = f"/rest/serverengine/workflow/print/cancel/{job}"
    wait_for(
        "the trigger's on_kill to cancel the job",
        lambda: any(c.method == "POST" and c.path == cancel_path for c in emu.calls),
        40,
    )
    time.sleep(3)  # a second cancel would come now, if any
    cancels = [c for c in emu.calls if c.method == "POST" and c.path == cancel_path]
    assert len(cancels) == 1, cancels
    assert cancels[0].status == 204
    assert emu.job("olconnect", job).cancelled
    assert len(submit_calls(job_calls(emu, job))) == 1
    dep.trigger_log_text(
        CANCEL_ON_KILL,
        run_id,
        "wait",
        "Trigger cancelled by user action, invoking on_kill",
        f"job {job}: cancelled (the task was killed)",
    )
    if kill == "mark failed":
        assert dep.wait_run(CANCEL_ON_KILL, run_id, 60) == "failed"
        assert dep.task_state(CANCEL_ON_KILL, run_id, "wait") == "failed"
        assert dep.task_state(CANCEL_ON_KILL, run_id, "downstream") == "upstream_failed"


@needs_3_3
def test_a_wait_taken_over_by_another_triggerer_keeps_its_job(
    deployment: Deployment, vendor_emulator: VendorEmulator
) -> None:
    """A triggerer whose heartbeat is late by more than ``[triggerer] triggerer_health_check_threshold`` is taken
    for dead while it still runs: another triggerer takes its triggers, and Airflow 3.3.2 stops them on the late
    one through the user-kill path, ``on_kill`` included (apache/airflow#73454). A wait that owns its job must
    not cancel it there: the other triggerer is waiting on it. The triggerer is made late as Airflow's own
    watchdog makes one late: its runner (the process the triggers run in) stops answering for longer than
    ``[triggerer] runner_health_check_threshold``, and the triggerer stops heartbeating until it answers again."""
    dep, emu = deployment, vendor_emulator
    dep.stop("triggerer")
    dep.start("triggerer", name="triggerer-late", env={"AIRFLOW__TRIGGERER__RUNNER_HEALTH_CHECK_THRESHOLD": "2"})
    try:
        emu.set_next_scenario("olconnect", Scenario(steps=100000))  # runs until told to end
        runs = start_runs(dep, CANCEL_ON_KILL, ("olconnect",))
        run_id = runs["olconnect"]
        job = job_ids(dep, CANCEL_ON_KILL, runs)["olconnect"]
        dep.wait_task_state(CANCEL_ON_KILL, run_id, "wait", "deferred", timeout=90)
        seen = len(progress_calls(job_calls(emu, job)))
        wait_for("the trigger to poll", lambda: len(progress_calls(job_calls(emu, job))) >= seen + 2, 60)
        dep.start("triggerer", name="triggerer-2")
        (runner,) = dep.children("triggerer-late")
        os.kill(runner, signal.SIGSTOP)
        try:
            wait_for(
                "the other triggerer to take the wait over",
                lambda: len(dep.trigger_logs(CANCEL_ON_KILL, run_id, "wait")) == 2,
                90,
            )
        finally:
            os.kill(runner, signal.SIGCONT)

        def late_copy_stopped() -> str | None:
            texts = [p.read_text(errors="replace") for p in dep.trigger_logs(CANCEL_ON_KILL, run_id, "wait")]
            return next((t for t in texts if "Trigger cancelled by user action, invoking on_kill" in t), None)

        late_log = wait_for("the late triggerer to stop its copy of the wait, as if killed", late_copy_stopped, 60)
        assert f"OL Connect job {job}: not cancelled" in late_log, late_log[-2000:]
        assert emu.job("olconnect", job).state == "running"
        emu.finish_jobs("olconnect", [job])
        assert dep.wait_run(CANCEL_ON_KILL, run_id, 90) == "success", dep.log_tails()
        calls = job_calls(emu, job)
        assert cancel_calls(calls) == [], calls
        assert len(submit_calls(calls)) == 1, calls
        assert dep.task_instance(CANCEL_ON_KILL, run_id, "wait")["try_number"] == 1
    finally:
        dep.stop("triggerer-2")
        dep.stop("triggerer-late")
        dep.start("triggerer")  # as the other tests expect: one triggerer


@needs_3_3
def test_killing_a_waiting_sensor_leaves_the_job_it_does_not_own(
    deployment: Deployment, vendor_emulator: VendorEmulator
) -> None:
    """By default a sensor owns nothing: "mark failed" on it must not cancel the upstream task's job."""
    dep, emu = deployment, vendor_emulator
    emu.set_next_scenario("olconnect", Scenario(steps=100000))
    runs = start_runs(dep, DEFERRABLE, ("olconnect",))
    run_id = runs["olconnect"]
    job = job_ids(dep, DEFERRABLE, runs)["olconnect"]
    dep.wait_task_state(DEFERRABLE, run_id, "wait", "deferred", timeout=90)
    seen = len(progress_calls(job_calls(emu, job)))
    wait_for("the trigger to poll", lambda: len(progress_calls(job_calls(emu, job))) >= seen + 2, 60)
    dep.mark_failed(DEFERRABLE, run_id, "wait")
    assert dep.wait_run(DEFERRABLE, run_id, 60) == "failed"
    time.sleep(5)  # Airflow has reaped the trigger; a cancel would have come by now
    text = "".join(p.read_text(errors="replace") for p in dep.trigger_logs(DEFERRABLE, run_id, "wait"))
    assert cancel_calls(job_calls(emu, job)) == [], text[-2000:]
    assert not emu.job("olconnect", job).cancelled
    assert emu.job("olconnect", job).state == "running"


def test_killing_a_poking_task_cancels_the_remote_job(deployment: Deployment, vendor_emulator: VendorEmulator) -> None:
    """Poke mode waits on a worker. Marking the task failed makes Airflow SIGTERM the task process (the
    supervisor's heartbeat is refused), and the sensor's own ``on_kill`` cancels the job: on every version."""
    dep, emu = deployment, vendor_emulator
    emu.set_next_scenario("itwin", Scenario(steps=100000))
    runs = start_runs(dep, POKE, ("itwin",))
    run_id = runs["itwin"]
    job = job_ids(dep, POKE, runs)["itwin"]
    dep.wait_task_state(POKE, run_id, "wait", "running", timeout=60)
    seen = len(progress_calls(job_calls(emu, job)))
    wait_for("the sensor to poke", lambda: len(progress_calls(job_calls(emu, job))) >= seen + 2, 60)
    assert cancel_calls(job_calls(emu, job)) == []
    dep.mark_failed(POKE, run_id, "wait")
    wait_for("the sensor's on_kill to cancel the job", lambda: cancel_calls(job_calls(emu, job)), 60)
    assert dep.wait_run(POKE, run_id, 60) == "failed"
    cancels = cancel_calls(job_calls(emu, job))
    assert len(cancels) == 1, cancels
    assert emu.job("itwin", job).state == "cancelled"
    assert dep.task_state(POKE, run_id, "wait") == "failed"
    assert len(submit_calls(job_calls(emu, job))) == 1
    log = dep.task_log_dir(POKE, run_id, "wait") / "attempt=1.log"
    text = log.read_text(errors="replace")
    assert f"iTwin job {job} cancelled: the task was killed" in text, text[-2000:]


def test_triggerer_restart_mid_wait_completes_without_new_submit_or_cancel(
    deployment: Deployment, vendor_emulator: VendorEmulator
) -> None:
    dep, emu = deployment, vendor_emulator
    for vendor in VENDORS:
        emu.set_next_scenario(vendor, Scenario(duration=25))
    runs = start_runs(dep, DEFERRABLE)
    ids = job_ids(dep, DEFERRABLE, runs)
    for run_id in runs.values():
        dep.wait_task_state(DEFERRABLE, run_id, "wait", "deferred", timeout=60)
    before = {v: len(progress_calls(job_calls(emu, j))) for v, j in ids.items()}

    def all_polling() -> bool:
        return all(len(progress_calls(job_calls(emu, j))) >= before[v] + 2 for v, j in ids.items())

    wait_for("every trigger to poll", all_polling, 30)
    for vendor, job in ids.items():
        assert emu.job(vendor, job).state == "running", f"{vendor} job finished before the restart"
    restarted_at = time.time()
    dep.restart("triggerer")
    states = wait_runs(dep, DEFERRABLE, runs, timeout=120)
    assert states == dict.fromkeys(VENDORS, "success"), states
    for vendor, job in ids.items():
        calls = job_calls(emu, job)
        assert len(submit_calls(calls)) == 1, calls
        assert cancel_calls(calls) == [], calls
        assert not emu.job(vendor, job).cancelled
        assert emu.job(vendor, job).state == "succeeded"
        # the new triggerer picked the wait up again
        assert [c for c in progress_calls(calls) if c.ts > restarted_at], calls
        # one trigger log per triggerer that ran the trigger (attempt=1.log.trigger.<triggerer job id>.log)
        trigger_logs = dep.trigger_logs(DEFERRABLE, runs[vendor], "wait")
        assert len(trigger_logs) == 2, trigger_logs
        text = dep.trigger_log_text(DEFERRABLE, runs[vendor], "wait", f"job {job}: succeeded")
        assert "on_kill" not in text, text[-2000:]
        pulled: Any = dep.xcom(DEFERRABLE, runs[vendor], "downstream")
        assert pulled["type"] == "dict", pulled
        assert pulled["value"]["state"] == "succeeded", pulled


FETCH_TASKS = {
    "example_olconnect_print": ("olconnect", "submit", "fetch"),
    "example_scriptx_print_pdf": ("scriptx", "print", "download"),
    "example_itwin_reality_analysis": ("itwin", "submit", "download_outputs"),
    "example_itwin_reality_analysis_v2": ("itwin", "submit", "download_outputs"),
}


def test_example_dags_run_as_users_run_them(deployment: Deployment, vendor_emulator: VendorEmulator, tmp_path) -> None:
    """The shipped examples, triggered over the REST API: end states, XComs, and the files they wrote."""
    dep, emu = deployment, vendor_emulator
    runs = {}
    for dag_id, (vendor, _, _) in FETCH_TASKS.items():
        emu.set_next_scenario(vendor, Scenario(steps=3, result_size=100_000))
        runs[dag_id] = dep.trigger_run(dag_id, {"results": f"file://{tmp_path}"})
    for dag_id, run_id in runs.items():
        assert dep.wait_run(dag_id, run_id, 120) == "success", dag_id
    for dag_id, (vendor, submit_task, fetch_task) in FETCH_TASKS.items():
        job = str(dep.xcom(dag_id, runs[dag_id], submit_task))
        stored = dep.xcom(dag_id, runs[dag_id], fetch_task)
        items = stored if isinstance(stored, list) else [stored]
        assert len(items) == 1, stored
        path = tmp_path.joinpath(items[0]["uri"].removeprefix(f"file://{tmp_path}/"))
        assert path.is_file(), items
        assert path.stat().st_size == items[0]["bytes"] == 100_000
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == items[0]["sha256"] == emu.result_sha256(vendor, job, 0)
        assert len(submit_calls(job_calls(emu, job))) == 1
    leftovers = [p.name for p in tmp_path.rglob(".*")]  # no staging folder or hidden part left
    assert not leftovers, leftovers


def test_mapped_submits_each_wait_on_their_own_job(
    deployment: Deployment, vendor_emulator: VendorEmulator, tmp_path
) -> None:
    """Mapped submit (waiting in the triggerer) → mapped fetch: every map index keeps its own job."""
    dep, emu = deployment, vendor_emulator
    emu.set_default_scenario("scriptx", Scenario(steps=3, result_size=10_000))
    run_id = dep.trigger_run(MAPPED, {"out": str(tmp_path)})
    try:
        assert dep.wait_run(MAPPED, run_id, 150) == "success"
    finally:
        emu.set_default_scenario("scriptx", Scenario())
    jobs = {i: dep.xcom(MAPPED, run_id, "print", map_index=i) for i in range(3)}
    assert all(isinstance(j, str) for j in jobs.values()), jobs
    assert len(set(jobs.values())) == 3, jobs
    for index, job in jobs.items():
        assert dep.xcom(MAPPED, run_id, "print", key="progress", map_index=index)["job_id"] == job
        stored = dep.xcom(MAPPED, run_id, "fetch", map_index=index)
        item = stored[0] if isinstance(stored, list) else stored
        path = tmp_path.joinpath(item["uri"].removeprefix(f"file://{tmp_path}/"))
        assert path.parent == tmp_path / str(index)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == emu.result_sha256("scriptx", job, 0)
        assert len(submit_calls(job_calls(emu, job))) == 1


def token_calls(emu: VendorEmulator, since: float) -> list[Call]:
    return [c for c in emu.calls if c.ts > since and c.path.endswith(("/connect/token", "/authentication/login"))]


@pytest.mark.skipif(
    AIRFLOW_V_3_3_PLUS,
    reason="on Airflow 3.3 the topology's short form (tests/test_topology.py) kills a triggerer among two, with "
    "Celery workers on PostgreSQL, and checks the same",
)
def test_a_killed_triggerer_hands_its_waits_to_another(deployment: Deployment, vendor_emulator: VendorEmulator) -> None:
    """Two triggerers; the one running the waits dies (SIGKILL). The other takes them over: each wait ends
    with exactly one event, nothing is cancelled or submitted again, and tokens are not asked for in a storm."""
    dep, emu = deployment, vendor_emulator
    dep.start("triggerer", name="triggerer-2")
    try:
        for vendor in VENDORS:
            emu.set_next_scenario(vendor, Scenario(duration=45))
        runs = start_runs(dep, DEFERRABLE)
        ids = job_ids(dep, DEFERRABLE, runs)
        for run_id in runs.values():
            dep.wait_task_state(DEFERRABLE, run_id, "wait", "deferred", timeout=90)
        before = {v: len(progress_calls(job_calls(emu, j))) for v, j in ids.items()}
        wait_for(
            "every trigger to poll",
            lambda: all(len(progress_calls(job_calls(emu, j))) > before[v] for v, j in ids.items()),
            60,
        )
        killed_at = time.time()
        dep.kill("triggerer")
        states = wait_runs(dep, DEFERRABLE, runs, timeout=150)
        assert states == dict.fromkeys(VENDORS, "success"), states
        for vendor, job in ids.items():
            calls = job_calls(emu, job)
            assert len(submit_calls(calls)) == 1, calls
            assert cancel_calls(calls) == [], calls
            assert emu.job(vendor, job).state == "succeeded"
            dep.trigger_log_text(DEFERRABLE, runs[vendor], "wait", "Trigger fired event")  # written, maybe late
            texts = [p.read_text(errors="replace") for p in dep.trigger_logs(DEFERRABLE, runs[vendor], "wait")]
            assert sum(t.count("Trigger fired event") for t in texts) == 1, texts
            assert not any("on_kill" in t for t in texts), texts
            assert dep.task_instance(DEFERRABLE, runs[vendor], "wait")["try_number"] == 1
        # the surviving triggerer asks each token-using connection for a token once at most: olconnect_default
        # and itwin_default for the waits, itwin_reality_analysis for the event example's asset watcher (a
        # watcher runs on one triggerer; it may have been on the killed one)
        tokens = token_calls(emu, killed_at)
        assert len(tokens) <= 3, tokens
    finally:
        dep.start("triggerer")  # back to one triggerer for whatever runs next
        dep.stop("triggerer-2")
