"""The topology scenario: many jobs through the example DAGs and a mapped DAG while parts of Airflow die.

While the jobs run: SIGKILL one triggerer; SIGKILL the Celery worker running a submit whose answer the vendor
holds back (the job started, its id not yet known) and the one running a fetch halfway through its download;
restart the scheduler; a user kills running waits through the REST API and Clears finished submit tasks; the
iTwin asset watcher runs throughout. Then every promise is checked from the emulators' own records, the
metadata database, S3 and the result folder: never from the provider's log lines.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_jobprogress.testing.emulators import Call, Scenario
from tests.deployment import wait_for
from tests.topology.cluster import HEALTH_CHECK_THRESHOLD, S3_CONN, Topology

#: the shipped examples the scenario triggers: dag id -> (vendor, submit task, wait task, fetch task)
EXAMPLES = {
    "example_olconnect_print": ("olconnect", "submit", "wait", "fetch"),
    "example_scriptx_print_pdf": ("scriptx", "print", "wait", "download"),
    "example_itwin_reality_analysis": ("itwin", "submit", "wait", "download_outputs"),
    "example_itwin_reality_analysis_v2": ("itwin", "submit", "wait", "download_outputs"),
}
MAPPED = "topology_jobs"
#: the DAGs whose fetches write into a folder, so each ends with a completion marker (the others write one file)
FOLDER_FETCHES = {
    "example_olconnect_print",
    "example_itwin_reality_analysis",
    "example_itwin_reality_analysis_v2",
    MAPPED,
}
WATCHER_DAG = "example_itwin_job_finished_events"
WATCHED_NAME = "Road signs nightly"
VENDORS = ("olconnect", "scriptx", "itwin")
TERMINAL = {"success", "failed"}
#: the triggerer running an asset watcher (its trigger is linked to an asset, not to a task instance)
WATCHER_TRIGGERER_SQL = (
    "SELECT t.triggerer_id FROM trigger t JOIN asset_watcher a ON a.trigger_id = t.id WHERE t.triggerer_id IS NOT NULL"
)


@dataclass(frozen=True)
class Plan:
    """How big the scenario is and what happens to it."""

    example_runs_per_dag: int
    mapped_runs: int
    #: per mapped run: OL Connect, ScriptX and iTwin jobs
    per_run: tuple[int, int, int]
    user_kills: int
    clears: int
    #: whether the triggerer killed may be the one running the asset watcher: the full run lets it (and so shows
    #: the watcher's crash window); CI's short form kills the other one, so that its checks do not depend on timing
    kill_watcher_triggerer: bool = True
    job_seconds: tuple[float, float] = (15.0, 30.0)
    timeout: float = 900.0
    seed: int = 20

    @property
    def jobs(self) -> int:
        examples, mapped = len(EXAMPLES) * self.example_runs_per_dag, self.mapped_runs * sum(self.per_run)
        return examples + mapped + self.user_kills + 2  # + the cut submit's and the cut fetch's

    @classmethod
    def full(cls) -> Plan:
        """300 jobs: 60 through the examples, 230 through the mapped DAG (2 of them cut), 10 killed by a user."""
        return cls(example_runs_per_dag=15, mapped_runs=4, per_run=(22, 12, 23), user_kills=10, clears=5, timeout=3600)

    @classmethod
    def short(cls) -> Plan:
        """About 60 jobs, one of each disaster: CI's form."""
        return cls(
            example_runs_per_dag=2,
            mapped_runs=2,
            per_run=(10, 6, 8),
            user_kills=1,
            clears=1,
            timeout=900,
            kill_watcher_triggerer=False,
        )


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


@dataclass(frozen=True)
class CutTry:
    """A task try a worker kill cut: its number, when it started and when it was killed (epoch seconds)."""

    number: int
    started: float
    killed: float


@dataclass
class Outcome:
    """What happened, for the checks and the figures."""

    plan: Plan
    started: float = field(default_factory=time.monotonic)
    wall_seconds: float = 0.0
    #: dag_id -> run ids triggered; expected run state per (dag, run)
    runs: dict[tuple[str, str], str] = field(default_factory=dict)
    #: the waits the killed triggerer held, with their try number then
    moved: dict[tuple[str, str, str, int], int] = field(default_factory=dict)
    worker_kills: list[tuple[str, str, float]] = field(default_factory=list)  # (what, worker, when)
    #: every task try a worker kill cut (the killed worker ran it then)
    cut_tries: dict[tuple[str, str, str, int], CutTry] = field(default_factory=dict)
    submit_cut_job: str | None = None
    #: the TriggererJob id of the triggerer killed, whether it ran the asset watcher, and when (epoch seconds)
    dead_triggerer: int | None = None
    watcher_killed_at: float | None = None
    #: every submit task's XCom job_id at the end
    job_ids: dict[tuple[str, str, str, int], Any] = field(default_factory=dict)
    fetch_cut_job: str | None = None
    user_killed: dict[tuple[str, str, str, int], str] = field(default_factory=dict)  # TI -> job id
    cleared: dict[tuple[str, str], str] = field(default_factory=dict)  # (dag, run) -> job id before the Clear
    events: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def note(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f} s] {text}"
        self.events.append(line)
        print(line, flush=True)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


# -- reading the database ------------------------------------------------------------------------------------


def query(topo: Topology, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = topo.db()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


TI = tuple[str, str, str, int]  # dag, run, task, map index


def task_instances(topo: Topology) -> dict[TI, dict[str, Any]]:
    rows = query(
        topo,
        "SELECT ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.state, ti.try_number, ti.pid, ti.start_date, "
        "ti.end_date, ti.trigger_id, (SELECT MIN(h.start_date) FROM task_instance_history h WHERE h.dag_id = "
        "ti.dag_id AND h.run_id = ti.run_id AND h.task_id = ti.task_id AND h.map_index = ti.map_index) "
        "FROM task_instance ti",
    )
    # first_start: when its first try started (a retry's start_date is the retry's)
    keys = ("state", "try_number", "pid", "start_date", "end_date", "trigger_id", "first_start")
    return {(r[0], r[1], r[2], r[3]): dict(zip(keys, r[4:], strict=True)) for r in rows}


def xcoms(topo: Topology, key: str = "return_value") -> dict[TI, Any]:
    rows = query(topo, "SELECT dag_id, run_id, task_id, map_index, value FROM xcom WHERE key = %s", key)
    return {(r[0], r[1], r[2], r[3]): r[4] for r in rows}


def run_states(topo: Topology) -> dict[tuple[str, str], str]:
    return {(r[0], r[1]): r[2] for r in query(topo, "SELECT dag_id, run_id, state FROM dag_run")}


# -- reading the emulators -----------------------------------------------------------------------------------


def is_submit(call: Call) -> bool:
    """OL Connect submit, ScriptX print, iTwin create (v1 jobs start with a PATCH after it; v2 at once)."""
    return call.method == "POST" and call.path.endswith(("/print/submit", "/printPdf/print", "/jobs"))


def is_progress(call: Call) -> bool:
    """A progress read: OL Connect getProgress, ScriptX status, iTwin …/progress."""
    path = call.path.lower()
    return call.method == "GET" and ("getprogress" in path or "/status/" in path or path.endswith("/progress"))


def cancels_by_job(calls: list[Call]) -> Counter[str]:
    """OL Connect POST …/cancel/<id>, iTwin v2 DELETE, iTwin v1 PATCH beyond the one that started the job."""
    counted: Counter[str] = Counter()
    patches: Counter[str] = Counter()
    for call in calls:
        if call.job_id is None or call.status >= 400:
            continue
        if "cancel" in call.path or call.method == "DELETE":
            counted[call.job_id] += 1
        elif call.method == "PATCH":
            patches[call.job_id] += 1
            if patches[call.job_id] > 1:
                counted[call.job_id] += 1
    return counted


def emulator_jobs(topo: Topology) -> dict[str, Any]:
    """Every job the emulators hold, by id (with its vendor)."""
    state = topo.emulator.state
    with state.lock:
        return {job_id: job for (_, job_id), job in state.jobs.items()}


# -- the scenario --------------------------------------------------------------------------------------------


def durations(plan: Plan, rng: random.Random) -> Callable[[], float]:
    low, high = plan.job_seconds
    return lambda: round(rng.uniform(low, high), 1)


def trigger_everything(topo: Topology, out: Outcome, rng: random.Random) -> tuple[str, str]:
    """Every run at once; returns the mapped run holding the cut submit and fetch, and the run of user kills."""
    plan, dep, emu = out.plan, topo.dep, topo.emulator
    duration = durations(plan, rng)
    # ScriptX jobs cannot carry a scenario in their body: they all take this one
    emu.set_default_scenario("scriptx", Scenario(duration=sum(plan.job_seconds) / 2, result_size=64 * 1024))
    s3_results = f"s3://{S3_CONN}@{topo.bucket}/results"
    local_results = f"file://{topo.local_results}"
    # The waits a user kills, first so that they are deferred early: long jobs (surely running when killed), split
    # between the vendors that can cancel.
    long_job = Scenario(duration=1800.0).to_dict()
    kills = {
        "olconnect": [long_job] * ((plan.user_kills + 1) // 2),
        "scriptx": [],
        "itwin": [long_job] * (plan.user_kills // 2),
    }
    kill_run = dep.trigger_run(MAPPED, {"results": local_results, "jobs": kills})
    out.runs[(MAPPED, kill_run)] = "failed"
    # The submit whose answer never arrives (its worker dies) and the fetch that dies halfway, in a run of their own
    # triggered early, so that neither waits behind the rest. Both windows are shorter than the client's 60 s read
    # timeout: the retry, which sends the same body, gets through.
    cut = {
        "olconnect": [Scenario(duration=plan.job_seconds[0], submit_delay=20.0).to_dict()],
        "scriptx": [],
        "itwin": [Scenario(duration=plan.job_seconds[0], result_size=4 << 20, download_stall=25.0).to_dict()],
    }
    cut_run = dep.trigger_run(MAPPED, {"results": f"s3://{S3_CONN}@{topo.bucket}/results", "jobs": cut})
    out.runs[(MAPPED, cut_run)] = "success"
    # the examples' jobs take the emulators' default scenario (their submit bodies are the examples' own)
    for vendor in ("olconnect", "itwin"):
        emu.set_default_scenario(vendor, Scenario(duration=sum(plan.job_seconds) / 2, result_size=64 * 1024))
    for n in range(plan.example_runs_per_dag):
        for dag_id in EXAMPLES:
            run = dep.trigger_run(dag_id, {"results": s3_results if n % 2 else local_results})
            out.runs[(dag_id, run)] = "success"
    for n in range(plan.mapped_runs):
        ol, sx, it = plan.per_run

        def scenario(**extra: Any) -> dict[str, Any]:
            return Scenario(duration=duration(), result_size=96 * 1024, **extra).to_dict()

        jobs: dict[str, list[dict[str, Any]]] = {
            "olconnect": [scenario() for _ in range(ol)],
            "scriptx": [{} for _ in range(sx)],
            "itwin": [scenario() for _ in range(it)],
        }
        run = dep.trigger_run(MAPPED, {"results": s3_results if n % 2 == 0 else local_results, "jobs": jobs})
        out.runs[(MAPPED, run)] = "success"
    out.note(f"triggered {len(out.runs)} runs, {plan.jobs} jobs")
    return cut_run, kill_run


def kill_worker_running(topo: Topology, out: Outcome, ti: TI, what: str) -> bool:
    info = task_instances(topo).get(ti)
    if info is None or info["state"] != "running":
        return False
    worker = topo.worker_running(info["pid"])
    if worker is None:
        return False
    # every try the kill cuts, read as close to the kill as can be (one reading of the process table)
    running = {key: ti_info for key, ti_info in task_instances(topo).items() if ti_info["state"] == "running"}
    parents = topo.process_parents()
    cut = {key: ti_info for key, ti_info in running.items() if topo.worker_running(ti_info["pid"], parents) == worker}
    topo.kill(worker)
    when = time.time()
    out.worker_kills.append((what, worker, when))
    out.cut_tries.update(
        {key: CutTry(ti_info["try_number"], ti_info["start_date"].timestamp(), when) for key, ti_info in cut.items()}
    )
    out.note(f"SIGKILL {worker} {what} ({ti[2]}[{ti[3]}]), cutting {len(cut)} task tries; a new {worker} starts")
    topo.start_worker(worker)
    return True


def pick_triggerer(topo: Topology, plan: Plan, least: int = 2) -> int | None:
    """The TriggererJob to kill: the one holding the most waits (at least ``least``), or, when the plan spares the
    asset watcher, the one not running it."""
    waits = dict(
        query(
            topo,
            "SELECT t.triggerer_id, count(*) FROM trigger t JOIN task_instance ti ON ti.trigger_id = t.id "
            "WHERE t.triggerer_id IS NOT NULL GROUP BY t.triggerer_id",
        )
    )
    candidates = set(topo.triggerer_jobs.values())
    if not plan.kill_watcher_triggerer:
        candidates -= {o for (o,) in query(topo, WATCHER_TRIGGERER_SQL)}
    ranked = sorted(candidates, key=lambda job: waits.get(job, 0), reverse=True)
    return ranked[0] if ranked and waits.get(ranked[0], 0) >= least else None


def moved_over(topo: Topology, out: Outcome, tis: dict[TI, dict[str, Any]], waits: list[TI]) -> bool:
    """Whether every one of ``waits`` has its trigger on a live triggerer (the killed one's are taken over once its
    heartbeat is older than [triggerer] triggerer_health_check_threshold)."""
    assignment = dict(query(topo, "SELECT id, triggerer_id FROM trigger"))
    owners = {assignment.get(tis[ti]["trigger_id"]) for ti in waits}
    return None not in owners and out.dead_triggerer not in owners


def running_there(topo: Topology, tis: dict[TI, dict[str, Any]], waits: list[TI]) -> bool:
    """Whether each of ``waits`` has started on the triggerer its trigger is assigned to: the DB assignment comes
    first, the start there only on that triggerer's next loop (seconds on a loaded host), and a kill in between
    reaches no on_kill (the full run saw 4 of 10 kills cancel nothing). Each triggerer logs ``trigger … starting``
    into the trigger log of the task, one file per triggerer job."""
    assignment = dict(query(topo, "SELECT id, triggerer_id FROM trigger"))
    for ti in waits:
        owner = assignment.get(tis[ti]["trigger_id"])
        log = task_log_folder(topo, ti) / f"attempt={tis[ti]['try_number']}.log.trigger.{owner}.log"
        if owner is None or not log.is_file() or " starting" not in log.read_text(errors="replace"):
            return False
    return True


def run(topo: Topology, plan: Plan) -> Outcome:
    out = Outcome(plan)
    dep = topo.dep
    rng = random.Random(plan.seed)
    dep.wait_ready([MAPPED, WATCHER_DAG, *EXAMPLES], timeout=300)
    cut_run, kill_run = trigger_everything(topo, out, rng)
    deadline = time.monotonic() + plan.timeout
    done: set[str] = set()
    scheduler_restart_after = time.monotonic() + 60
    while time.monotonic() < deadline:
        dep.check_alive()
        tis = task_instances(topo)
        jobs = emulator_jobs(topo)
        deferred = [k for k, v in tis.items() if v["state"] == "deferred"]
        # 1. the submit whose answer the vendor holds: its worker dies with the job started, its id unknown
        if "submit" not in done:
            held = [j for j in jobs.values() if j.scenario.submit_delay > 0]
            if held and kill_worker_running(topo, out, (MAPPED, cut_run, "olconnect_submit", 0), "mid-submit"):
                out.submit_cut_job = held[0].job_id
                done.add("submit")
        kill_tis = [k for k in tis if k[:2] == (MAPPED, kill_run) and k[2].endswith("_submit") and k[3] >= 0]
        # 2. a triggerer dies while it holds waits (the user-kill run's are deferred by then, so that their kill comes
        #    after it; a kill while the dead triggerer still holds them would reach no on_kill at all)
        if "triggerer" not in done and kill_tis and all(k in deferred for k in kill_tis):
            # two waits at least to move; later one will do (the short form's waits may all have ended by then)
            victim_job = pick_triggerer(topo, plan, least=2 if time.monotonic() - out.started < 240 else 1)
            if victim_job is not None:
                victim = {job: name for name, job in topo.triggerer_jobs.items()}[victim_job]
                on_victim = {t for (t,) in query(topo, "SELECT id FROM trigger WHERE triggerer_id = %s", victim_job)}
                ran_watcher = victim_job in {o for (o,) in query(topo, WATCHER_TRIGGERER_SQL)}
                topo.kill(victim)
                out.watcher_killed_at = time.time() if ran_watcher else None
                out.dead_triggerer = victim_job
                out.moved = {ti: info["try_number"] for ti, info in tis.items() if info["trigger_id"] in on_victim}
                waits = f"{len(out.moved)} waits, {len(deferred)} deferred"
                out.note(f"SIGKILL {victim} holding {len(on_victim)} triggers ({waits})")
                done.add("triggerer")
        # 3. the fetch that dies halfway through its download
        if "fetch" not in done:
            stalled = [j for j in jobs.values() if j.scenario.download_stall > 0 and j.downloads_started > 0]
            if stalled and kill_worker_running(topo, out, (MAPPED, cut_run, "itwin_fetch", 0), "mid-fetch"):
                out.fetch_cut_job = stalled[0].job_id
                done.add("fetch")
        # 4. the scheduler restarts
        if "scheduler" not in done and time.monotonic() > scheduler_restart_after:
            topo.restart("scheduler")
            out.note("scheduler restarted")
            done.add("scheduler")
        # 5. a user kills the waits of the long jobs, once they are on the surviving triggerer
        # (a kill while the dead triggerer still holds the trigger would reach no on_kill at all: see the README)
        if (
            "kill" not in done
            and "triggerer" in done
            and all(k in deferred for k in kill_tis)
            and moved_over(topo, out, tis, kill_tis)
            and running_there(topo, tis, kill_tis)
        ):
            job_ids = xcoms(topo, "job_id")
            for ti in kill_tis:
                out.user_killed[ti] = str(job_ids[ti])
                response = dep.client.patch(
                    f"/dags/{ti[0]}/dagRuns/{ti[1]}/taskInstances/{ti[2]}/{ti[3]}", json={"new_state": "failed"}
                )
                assert response.status_code == 200, response.text
            out.note(f"a user marked {len(kill_tis)} running waits failed")
            done.add("kill")
        # 6. a user Clears finished submit tasks: each must submit a new job
        if "clear" not in done:
            states = run_states(topo)
            # OL Connect runs: a Clear that re-attached (today's code) would still end well there, so only the Clear
            # check tells; a ScriptX PDF is served once, and the re-attached fetch would fail for want of it
            finished = [key for key in out.runs if key[0] == "example_olconnect_print" and states.get(key) == "success"]
            if len(finished) >= plan.clears:
                returned = xcoms(topo)
                for dag_id, run_id in finished[: plan.clears]:
                    submit = EXAMPLES[dag_id][1]
                    out.cleared[(dag_id, run_id)] = str(returned[(dag_id, run_id, submit, -1)])
                    response = dep.client.post(
                        f"/dags/{dag_id}/clearTaskInstances",
                        json={
                            "dry_run": False,
                            "dag_run_id": run_id,
                            "task_ids": [submit],
                            "include_downstream": True,
                            "only_failed": False,
                            "reset_dag_runs": True,
                        },
                    )
                    assert response.status_code == 200, response.text
                out.note(f"a user cleared {plan.clears} finished submit task(s) (and their downstream)")
                done.add("clear")
        states = run_states(topo)
        if done >= {"submit", "triggerer", "fetch", "scheduler", "kill", "clear"} and all(
            states.get(key) in TERMINAL for key in out.runs
        ):
            break
        time.sleep(1.0)
    else:
        out.note(f"TIMED OUT after {plan.timeout:g} s; done: {sorted(done)}")
    out.wall_seconds = time.monotonic() - out.started
    out.note(f"every run ended after {out.wall_seconds:.0f} s")
    settle_watcher(topo, out)
    check_all(topo, out)
    return out


def watched_succeeded(topo: Topology) -> set[str]:
    return {
        job_id
        for job_id, job in emulator_jobs(topo).items()
        if job.vendor == "itwin"
        and job.details.get("name") == WATCHED_NAME
        and job.state(time.monotonic()) == "succeeded"
    }


def asset_event_jobs(topo: Topology) -> list[str]:
    rows = query(topo, "SELECT extra FROM asset_event")
    return [str(((r[0] or {}).get("payload") or {}).get("job_id")) for r in rows]


def asset_event_firsts(topo: Topology) -> dict[str, float]:
    """Per job, when its first asset event was stored (epoch seconds)."""
    rows = query(topo, "SELECT extra, timestamp FROM asset_event ORDER BY timestamp")
    firsts: dict[str, float] = {}
    for extra, stamp in rows:
        firsts.setdefault(str(((extra or {}).get("payload") or {}).get("job_id")), stamp.timestamp())
    return firsts


#: the task of the watcher's example DAG that reads a finished job (its outputs)
WATCHER_FETCH = "download_outputs"


def asset_run_windows(topo: Topology) -> dict[str, list[tuple[float, float]]]:
    """Per job, when the fetch of a run its asset event triggered ran (the watcher's example downloads a finished
    job's outputs, reading the job first): from its first start to its last end. Only that task's window, not
    the run's: a second trigger's late reads would come right after the job's end, before it starts."""
    events = {
        r[0]: str(((r[1] or {}).get("payload") or {}).get("job_id"))
        for r in query(topo, "SELECT id, extra FROM asset_event")
    }
    rows = query(
        topo,
        "SELECT d.event_id, MIN(COALESCE(h.start_date, ti.start_date)), MAX(ti.end_date) FROM dagrun_asset_event d "
        "JOIN dag_run r ON r.id = d.dag_run_id JOIN task_instance ti ON ti.dag_id = r.dag_id AND ti.run_id = r.run_id "
        "LEFT JOIN task_instance_history h ON h.dag_id = ti.dag_id AND h.run_id = ti.run_id AND h.task_id = ti.task_id "
        "AND h.map_index = ti.map_index WHERE ti.task_id = %s GROUP BY d.event_id",
        WATCHER_FETCH,
    )
    windows: dict[str, list[tuple[float, float]]] = {}
    for event_id, first, last in rows:
        if event_id in events and first is not None:
            end = last.timestamp() if last is not None else math.inf
            windows.setdefault(events[event_id], []).append((first.timestamp(), end))
    return windows


def settle_watcher(topo: Topology, out: Outcome) -> None:
    """Give the watcher a few polls to report the last jobs, then the runs it started time to end."""
    with_timeout = 120.0
    try:
        wait_for(
            "the asset watcher to report every finished job",
            lambda: watched_succeeded(topo) <= set(asset_event_jobs(topo)),
            with_timeout,
        )
    except AssertionError as exc:
        out.note(str(exc))
    time.sleep(8)  # more polls: a second event for a job would come now

    def watcher_runs_done() -> bool:
        return all(state in TERMINAL for (dag, _), state in run_states(topo).items() if dag == WATCHER_DAG)

    try:
        wait_for("the watcher's runs to end", watcher_runs_done, with_timeout)
    except AssertionError as exc:
        out.note(str(exc))


# -- the checks ----------------------------------------------------------------------------------------------


def check_all(topo: Topology, out: Outcome) -> None:
    tis, returned, states = task_instances(topo), xcoms(topo), run_states(topo)
    jobs, calls = emulator_jobs(topo), topo.emulator.calls
    out.job_ids = xcoms(topo, "job_id")
    now = time.monotonic()
    for check in (
        check_runs(out, states, tis, returned, jobs, calls, now, last_errors(topo, tis)),
        check_submits(out, returned, jobs, calls),
        check_clears(out, returned, calls),
        check_triggerer(topo, out, tis),
        check_user_kills(topo, out, tis, jobs, calls, now),
        check_watcher(topo, out),
        check_results(topo, out, returned, jobs),
        check_secrets(topo),
    ):
        out.checks.append(check)
    out.figures = figures(topo, out, tis, returned, jobs)
    # the tasks that did not succeed in a run that should have say why (the report comes first, whatever this does)
    failed = [ti for ti, info in tis.items() if info["state"] not in WELL and expects_success(out, ti)]
    for ti in failed[:EVIDENCE_TASKS]:
        try:
            out.note(f"evidence: {failure_evidence(topo, ti)}")
        except Exception as exc:
            out.note(f"evidence: {'/'.join(map(str, ti))}: not read ({type(exc).__name__}: {exc})")


def waiting_tasks(tis: dict[TI, dict[str, Any]]) -> dict[TI, str]:
    """Every task that waited on a job, and the task whose XCom names that job."""
    waits = {}
    for ti in tis:
        dag, _, task, index = ti
        if dag in EXAMPLES and task == EXAMPLES[dag][2]:
            waits[ti] = EXAMPLES[dag][1]
        elif dag == MAPPED and task.endswith("_submit") and index >= 0:  # -1: an empty expansion, skipped
            waits[ti] = task
    return waits


def unsuccessful(tis: dict[TI, dict[str, Any]], dag: str, run: str) -> str:
    """A run's tasks that did not succeed, with their try: what to look for in the kept home's task logs."""
    return (
        ", ".join(
            f"{task}[{index}] {info['state']} try {info['try_number']}"
            for (d, r, task, index), info in sorted(tis.items())
            if (d, r) == (dag, run) and info["state"] not in ("success", "skipped")
        )
        or "every task succeeded or was skipped"
    )


#: how many failed tasks' evidence a report prints at most
EVIDENCE_TASKS = 10
#: the end states of a task that did not go wrong
WELL = ("success", "skipped")


def last_errors(topo: Topology, tis: dict[TI, dict[str, Any]]) -> dict[TI, str]:
    """Each failed task's last error line, from its last try's log ("" when it logged none or cannot be read)."""
    found = {}
    for ti, info in tis.items():
        if info["state"] != "failed":
            continue
        log = task_log_folder(topo, ti) / f"attempt={info['try_number']}.log"
        try:
            errors = [r for r in log_records(log) if str(r.get("level", "")).lower() in ("error", "critical")]
        except OSError:
            errors = []
        found[ti] = error_line(errors[-1]) if errors else ""
    return found


def expects_success(out: Outcome, ti: TI) -> bool:
    """Whether ``ti``'s run should succeed: one the scenario triggered for that, or one the asset watcher started."""
    return out.runs.get(ti[:2]) == "success" or ti[0] == WATCHER_DAG


def task_log_folder(topo: Topology, ti: TI) -> Path:
    """Where a task instance's logs are: its tries' ``attempt=N.log``, and each triggerer's trigger log beside."""
    dag_id, run_id, task_id, map_index = ti
    folder = topo.dep.task_logs / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return folder / f"map_index={map_index}" if map_index >= 0 else folder


def failure_evidence(topo: Topology, ti: TI) -> str:
    """Why a task failed, for a CI machine whose logs are gone afterwards: each try's last error line in its task
    log, and what the scheduler wrote of it (heartbeat timeouts, stuck in queued) in the ``log`` table."""
    folder = task_log_folder(topo, ti)
    said = []
    for log in sorted(folder.glob("attempt=*.log")):
        errors = [
            record for record in log_records(log) if str(record.get("level", "")).lower() in ("error", "critical")
        ]
        said.append(f"{log.name}: {error_line(errors[-1]) if errors else 'no error line'}")
    events = query(
        topo,
        "SELECT try_number, event, extra FROM log WHERE dag_id = %s AND run_id = %s AND task_id = %s "
        "AND map_index = %s AND event NOT IN ('running', 'success', 'deferred') ORDER BY dttm",
        *ti,
    )
    said += [f"log table, try {try_number}: {event} {str(extra or '')[:200]}" for try_number, event, extra in events]
    return f"{'/'.join(map(str, ti))}: " + " | ".join(said)


def log_records(log: Path) -> list[dict[str, Any]]:
    """A task or trigger log's JSON lines (Airflow 3 writes one object a line; anything else is left out)."""
    records = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def error_line(record: dict[str, Any]) -> str:
    """An error record's event, with the exception it carries (Airflow 3.3 moves a failed task's exception into
    ``error_detail``: its event says only "Task failed with exception")."""
    text = str(record.get("event", ""))
    detail = record.get("error_detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # structlog's: the raised one first
        text += f": {detail[0].get('exc_type')}: {detail[0].get('exc_value')}"
    return text[:400]


def collected_by_a_killed_try(
    out: Outcome,
    tis: dict[TI, dict[str, Any]],
    returned: dict[TI, Any],
    jobs: dict[str, Any],
    calls: list[Call],
    last_errors: dict[TI, str],
) -> dict[TI, str]:
    """ScriptX fetches whose PDF a try that a worker kill cut had already collected: ScriptX serves a PDF once, so
    the task fails, as it must (since 7fb368a at once, without retrying). A worker killed mid-fetch kills every
    task it runs; likely (not reproduced) what failed one mapped run in CI at b0ac230, every wait right and 74 of
    75 fetches done. Only on the evidence: the fetch's try was running on the killed worker when it was killed;
    every download of the PDF began while that try ran (after it started, before the kill) and one of them went
    out whole (the emulator's ``collected``; the killed worker's connection cannot finish one after it); the next
    try, the last, failed saying the output was already collected (``last_errors``: its log's last error)."""
    fetches = {(MAPPED, "scriptx_fetch"): "scriptx_submit"} | {
        (dag, names[3]): names[1] for dag, names in EXAMPLES.items() if names[0] == "scriptx"
    }
    lost = {}
    for ti, info in tis.items():
        dag, run, task, index = ti
        submit = fetches.get((dag, task))
        cut = out.cut_tries.get(ti)
        if submit is None or cut is None or info["state"] != "failed" or info["try_number"] != cut.number + 1:
            continue
        if "already collected" not in last_errors.get(ti, ""):
            continue
        job_id = str(returned.get((dag, run, submit, index)) or out.job_ids.get((dag, run, submit, index)))
        job = jobs.get(job_id)
        downloads = [c.ts for c in calls if c.job_id == job_id and "/download/" in c.path and c.status == 200]
        while_cut = bool(downloads) and cut.started <= min(downloads) and max(downloads) < cut.killed
        if job is not None and job.collected and while_cut:
            lost[ti] = f"{dag}/{run}/{task}[{index}] (job {job_id})"
    return lost


def check_runs(
    out: Outcome,
    states: dict[tuple[str, str], str],
    tis: dict[TI, dict[str, Any]],
    returned: dict[TI, Any],
    jobs: dict[str, Any],
    calls: list[Call],
    now: float,
    last_errors: dict[TI, str] | None = None,
) -> Check:
    # A run that lost a ScriptX PDF to a worker kill fails, as it must (collected_by_a_killed_try), when that is
    # all that went wrong in it: any other task that did not succeed there still fails the check.
    lost = collected_by_a_killed_try(out, tis, returned, jobs, calls, last_errors or {})
    excused = {
        key
        for key in {ti[:2] for ti in lost}
        if {ti for ti, info in tis.items() if ti[:2] == key and info["state"] not in ("success", "skipped")}
        <= set(lost)
    }
    expected = {
        **{key: "success" for key in states if key[0] == WATCHER_DAG},
        **out.runs,
        **{key: "failed" for key in excused},
    }
    wrong = [
        f"{dag}/{run} {states.get((dag, run))} (expected {want}: {unsuccessful(tis, dag, run)})"
        for (dag, run), want in expected.items()
        if states.get((dag, run)) != want
    ]
    for ti, submit in waiting_tasks(tis).items():
        if ti[:2] not in {k for k in out.runs}:
            continue
        job_id = returned.get((*ti[:2], submit, ti[3])) or out.job_ids.get((*ti[:2], submit, ti[3]))
        job = jobs.get(str(job_id)) if job_id else None
        truth = job.state(now) if job is not None else "no job"
        want = {"succeeded": "success", "cancelled": "failed", "failed": "failed"}.get(truth, "?")
        if tis[ti]["state"] != want:
            wrong.append(f"{'/'.join(map(str, ti))} is {tis[ti]['state']}, its job {job_id} {truth}")
    n = len(waiting_tasks(tis))
    said = wrong[:8] or [f"{len(out.runs)} runs, {n} waits"]
    if lost:
        said.append(f"failed, a try a worker kill cut had their ScriptX PDF: {sorted(lost.values())}")
    return Check("every task ends in its job's true state", not wrong, "; ".join(said))


#: seconds between a submit's answer and its task's record of the job id (XCom) that a worker kill may fall in
RECORD_WINDOW = 5.0


def check_submits(out: Outcome, returned: dict[TI, Any], jobs: dict[str, Any], calls: list[Call]) -> Check:
    """Jobs the vendors started == jobs a task ended up owning + the one whose answer a killed worker never read,
    and any other submit the same kill cut between its answer and its record: a SIGKILLed worker takes all its
    tasks (concurrency 8), and one of them answered within ``RECORD_WINDOW`` s before the kill has started a job
    no task can know (the window the README names; CI met one at 21:00:18, 0.1 s after the kill)."""
    submitted = Counter(c.job_id for c in calls if is_submit(c) and c.status < 400 and c.job_id)
    answered = {c.job_id: c.ts for c in calls if is_submit(c) and c.status < 400 and c.job_id}
    kills = [when for _, _, when in out.worker_kills]
    owned = {
        str(v)
        for (dag, _, task, _), v in returned.items()
        if (dag in EXAMPLES and task == EXAMPLES[dag][1]) or (dag == MAPPED and task.endswith("_submit"))
    }
    # a submit pushes its job id (XCom job_id) before it waits: a wait still running owns its job too
    owned |= {str(v) for v in out.job_ids.values()} | set(out.cleared.values())
    orphans = set(submitted) - owned
    twice = [j for j, n in submitted.items() if n > 1]
    expected_orphans = {out.submit_cut_job} if out.submit_cut_job else set()
    cut_too = {j for j in orphans - expected_orphans if any(-1.0 <= k - answered[j] <= RECORD_WINDOW for k in kills)}
    expected_orphans |= cut_too
    ok = not twice and orphans == expected_orphans
    orphan_states = {j: jobs[j].state(time.monotonic()) for j in orphans if j in jobs}
    detail = (
        f"{len(submitted)} jobs started for {len(owned)} owned; started twice: {twice}; "
        f"owned by no task: {sorted(orphans)} (expected only the cut submit {sorted(expected_orphans - cut_too)} "
        f"and submits the same kill cut {sorted(cut_too)}; states {orphan_states})"
    )
    return Check("each job submitted once per try that needed one", ok, detail)


def check_clears(out: Outcome, returned: dict[TI, Any], calls: list[Call]) -> Check:
    """A Clear of a finished submit task submits a new job, once (intended semantics, being changed now)."""
    submitted = Counter(c.job_id for c in calls if is_submit(c) and c.status < 400)
    problems = []
    for (dag, run), before in out.cleared.items():
        after = str(returned.get((dag, run, EXAMPLES[dag][1], -1)))
        if after == before:
            problems.append(f"{dag}/{run} kept job {before} (re-attached instead of submitting)")
        elif submitted.get(after) != 1:
            problems.append(f"{dag}/{run}: new job {after} submitted {submitted.get(after)} times")
    return Check(
        "a Clear of a finished submit submits one new job",
        bool(out.cleared) and not problems,
        "; ".join(problems) or f"{len(out.cleared)} cleared, each with a new job submitted once",
    )


def check_triggerer(topo: Topology, out: Outcome, tis: dict[TI, dict[str, Any]]) -> Check:
    """The killed triggerer's waits finished on the other: same try, success, and from the vendor's side one wait
    only: one submit, no cancel, and no progress read after the task resumed (a second trigger on the job would
    keep reading it). Airflow's own "Trigger fired event" lines cannot count events: a SIGKILLed triggerer loses
    the lines it had not flushed."""
    returned, job_ids, calls = xcoms(topo), xcoms(topo, "job_id"), topo.emulator.calls
    asset_runs = asset_run_windows(topo)
    moved = [ti for ti in out.moved if ti not in out.user_killed and ti[:2] not in out.cleared]
    problems = []
    for ti in moved:
        info, try_number = tis[ti], out.moved[ti]
        name = "/".join(map(str, ti))
        if info["state"] != "success" or info["try_number"] != try_number:
            problems.append(f"{name} {info['state']} try {info['try_number']} (was {try_number})")
            continue
        submit = EXAMPLES[ti[0]][1] if ti[0] in EXAMPLES else ti[2]
        job = str(returned.get((*ti[:2], submit, ti[3])) or job_ids.get((*ti[:2], submit, ti[3])))
        mine = [c for c in calls if c.job_id == job]
        # between the wait's end and its fetch's start nobody should read the job (the fetch reads it itself)
        fetch_task = EXAMPLES[ti[0]][3] if ti[0] in EXAMPLES else ti[2].replace("_submit", "_fetch")
        fetch = tis.get((*ti[:2], fetch_task, ti[3]))
        ended = info["end_date"].timestamp()
        # the fetch's first try (a worker killed mid-fetch makes a second): each try reads the job itself
        starts = [fetch[k] for k in ("first_start", "start_date") if fetch and fetch[k] is not None]
        until = min(starts).timestamp() if starts else ended + 30
        # a run the job's asset event triggered reads the job too (the watcher's example downloads its outputs)
        theirs = asset_runs.get(job, [])
        late = [
            c
            for c in mine
            if c.method == "GET"
            and ended < c.ts < until
            and is_progress(c)
            and not any(first <= c.ts <= last for first, last in theirs)
        ]
        if sum(is_submit(c) for c in mine) != 1 or cancels_by_job(mine) or late:
            problems.append(f"{name}: job {job} submits/cancels/reads after the end: {[c.path for c in late][:2]}")
    ok = bool(moved) and not problems
    return Check(
        "a killed triggerer's waits finish on the other, one event each",
        ok,
        "; ".join(problems[:8]) or f"{len(moved)} waits moved",
    )


def _trigger_logs(topo: Topology, ti: TI, try_number: int) -> list[Path]:
    """Airflow's trigger logs of one try, one per triggerer that ran it (it writes "Trigger fired event")."""
    dag, run, task, index = ti
    folder = topo.home / "logs" / f"dag_id={dag}" / f"run_id={run}" / f"task_id={task}"
    if index >= 0:
        folder = folder / f"map_index={index}"
    return sorted(folder.glob(f"attempt={try_number}.log.trigger.*.log"))


#: what a trigger log says about a kill: Airflow's own line and ours (cancelled, or why not)
KILL_WORDS = ("on_kill", "cancel on kill", "not cancelled", "cancelled job", "cancel")


def kill_evidence(topo: Topology, ti: TI) -> str:
    """What the killed wait's trigger logs (every triggerer's) say about its kill: a failed check explains itself
    on a CI machine whose logs are gone afterwards."""
    folder = task_log_folder(topo, ti)
    said = []
    for log in sorted(folder.glob("attempt=*.log.trigger.*.log")):
        for record in log_records(log):
            event = str(record.get("event", ""))
            if any(word in event.lower() for word in KILL_WORDS):
                said.append(f"[{log.name.rpartition('.trigger.')[2].removesuffix('.log')}] {event[:160]}")
    return " | ".join(said[-3:]) or "no trigger log line about the kill"


def check_user_kills(
    topo: Topology, out: Outcome, tis: Any, jobs: dict[str, Any], calls: list[Call], now: float
) -> Check:
    cancels = cancels_by_job(calls)
    killed = set(out.user_killed.values())
    problems = []
    if set(cancels) != killed:
        problems.append(
            f"cancelled {sorted(set(cancels) - killed)} no user killed; not cancelled {sorted(killed - set(cancels))}"
        )
        problems += [
            f"{'/'.join(map(str, ti))}: {kill_evidence(topo, ti)}"
            for ti, job in out.user_killed.items()
            if job not in cancels
        ][:4]
    problems += [f"{j} cancelled {n} times" for j, n in cancels.items() if n != 1]
    problems += [f"{j} is {jobs[j].state(now)}" for j in killed if j in jobs and jobs[j].state(now) != "cancelled"]
    problems += [
        f"{'/'.join(map(str, ti))} is {tis[ti]['state']}" for ti in out.user_killed if tis[ti]["state"] != "failed"
    ]
    ok = bool(killed) and not problems
    return Check(
        "a user's kill cancels exactly that remote job",
        ok,
        "; ".join(problems) or f"{len(killed)} killed, {len(killed)} cancels",
    )


def check_watcher(topo: Topology, out: Outcome) -> Check:
    """One asset event per watched job that succeeded. The watcher saves its watermark past an event only once
    Airflow can be taken to have stored it ([triggerer] triggerer_health_check_threshold): a job whose
    first event came that long or less before its triggerer was killed may fire again on the other (at least
    once), any other job once."""
    finished = watched_succeeded(topo)
    fired = Counter(asset_event_jobs(topo))
    firsts = asset_event_firsts(topo)
    killed = out.watcher_killed_at
    since = None if killed is None else killed - HEALTH_CHECK_THRESHOLD - 5  # 5 s: Airflow's write after the yield
    window = [j for j, n in fired.items() if n == 2 and since is not None and since <= firsts[j] <= (killed or 0)]
    twice = [j for j, n in fired.items() if n > 1 and j not in window]
    missing = finished - set(fired)
    extra = set(fired) - finished
    ok = bool(finished) and not twice and not missing and not extra
    detail = (
        f"{len(finished)} watched jobs succeeded, {sum(fired.values())} asset events; twice {twice}; "
        f"again after the kill (allowed) {len(window)}; missing {sorted(missing)[:5]}; not finished {sorted(extra)[:5]}"
    )
    return Check("the asset watcher fires once per finished job", ok, detail)


MARKER = "_SUCCESS"


def _check_marker(
    topo: Topology,
    items: list[dict[str, Any]],
    objects: dict[str, int],
    files: dict[str, int],
    listed_s3: set[str],
    listed_local: set[str],
    folder_fetch: bool,
) -> list[str]:
    """A fetch into a folder writes its completion marker last: a manifest listing the files its XCom lists.
    The marker is counted as listed (not a stray) only when it names exactly those files; a folder fetch without
    one is a problem."""
    s3_prefix, local_prefix = f"s3://{S3_CONN}@{topo.bucket}/", f"file://{topo.local_results}/"
    uris = [str(item["uri"]) for item in items]
    same_store = all(u.startswith(s3_prefix) for u in uris) or all(u.startswith(local_prefix) for u in uris)
    if not uris or not same_store:
        return []
    in_s3 = uris[0].startswith(s3_prefix)
    rels = [u.removeprefix(s3_prefix if in_s3 else local_prefix) for u in uris]
    present, listed = (objects, listed_s3) if in_s3 else (files, listed_local)
    # the destination folder: the deepest folder above every file that holds a marker
    parts = rels[0].split("/")[:-1]
    folder = None
    for depth in range(len(parts), 0, -1):
        candidate = "/".join(parts[:depth])
        if f"{candidate}/{MARKER}" in present and all(r.startswith(f"{candidate}/") for r in rels):
            folder = candidate
            break
    if folder is None:
        return [f"no completion marker above {uris[0]}"] if folder_fetch else []
    key = f"{folder}/{MARKER}"
    if in_s3:
        body = topo.s3().get_object(Bucket=topo.bucket, Key=key)["Body"].read()
    else:
        body = (topo.local_results / key).read_bytes()
    named = {(f["name"], f["bytes"], f["sha256"]) for f in json.loads(body)["files"]}
    expected = {(r.removeprefix(f"{folder}/"), i["bytes"], i["sha256"]) for r, i in zip(rels, items, strict=True)}
    if named != expected:
        return [f"{key}: the marker names {sorted(named)[:3]}, the XCom {sorted(expected)[:3]}"]
    listed.add(key)
    return []


def check_results(topo: Topology, out: Outcome, returned: dict[TI, Any], jobs: dict[str, Any]) -> Check:
    """Every fetch's files are whole and where its XCom says; nothing else in the bucket or the folder."""
    s3 = topo.s3()
    problems = []
    uploads = s3.list_multipart_uploads(Bucket=topo.bucket).get("Uploads") or []
    if uploads:
        problems.append(f"{len(uploads)} unfinished multipart uploads: {[u['Key'] for u in uploads][:3]}")
    objects: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=topo.bucket):
        objects.update({o["Key"]: o["Size"] for o in page.get("Contents") or []})
    files = {
        p.relative_to(topo.local_results).as_posix(): p.stat().st_size
        for p in topo.local_results.rglob("*")
        if p.is_file()
    }
    hidden = [p.name for p in topo.local_results.rglob(".*")]
    if hidden:
        problems.append(f"staging left in the result folder: {hidden[:3]}")
    listed_s3: set[str] = set()
    listed_local: set[str] = set()
    fetches = 0
    for (dag, _, task, _), stored in returned.items():
        if not (
            task.endswith("_fetch")
            or (dag in EXAMPLES and task == EXAMPLES[dag][3])
            or (dag == WATCHER_DAG and task == "download_outputs")
        ):
            continue
        fetches += 1
        items = stored if isinstance(stored, list) else [stored]
        problems += _check_marker(topo, items, objects, files, listed_s3, listed_local, dag in FOLDER_FETCHES)
        for item in items:
            uri = str(item["uri"])
            if uri.startswith(f"s3://{S3_CONN}@{topo.bucket}/"):
                key = uri.removeprefix(f"s3://{S3_CONN}@{topo.bucket}/")
                listed_s3.add(key)
                if objects.get(key) != item["bytes"]:
                    problems.append(f"{key}: {objects.get(key)} bytes in S3, XCom says {item['bytes']}")
                    continue
                digest = hashlib.sha256(s3.get_object(Bucket=topo.bucket, Key=key)["Body"].read()).hexdigest()
            elif uri.startswith(f"file://{topo.local_results}/"):
                rel = uri.removeprefix(f"file://{topo.local_results}/")
                listed_local.add(rel)
                path = topo.local_results / rel
                if not path.is_file() or path.stat().st_size != item["bytes"]:
                    problems.append(f"{rel}: missing or wrong size")
                    continue
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                continue  # the watcher's runs write to the example's default folder, outside this check
            if digest != item["sha256"]:
                problems.append(f"{uri}: sha256 differs from the XCom")
    strays = sorted(set(objects) - listed_s3) + sorted(set(files) - listed_local)
    # A Clear's new try fetches its new job's result beside the old one (a fetch never removes what it did not
    # write; the folder's marker names the new files only): the old job's files are no strays.
    replaced = [old for (dag, run), old in out.cleared.items() if old]
    strays = [s for s in strays if not any(old in s for old in replaced)]
    if strays:
        problems.append(f"{len(strays)} objects/files no fetch lists (partial or duplicate): {strays[:4]}")
    detail = "; ".join(problems[:6]) or f"{fetches} fetches: {len(objects)} S3 objects, {len(files)} files, all whole"
    return Check("no partial or duplicate result object", not problems, detail)


def check_secrets(topo: Topology) -> Check:
    state = topo.emulator.state
    with state.lock:
        tokens = [t for issued in state.tokens.values() for t in issued]
    needles = {**{name: value for name, value in topo.secrets.items()}, "aws_secret": topo.aws_secret}
    needles.update({f"token {n}": t for n, t in enumerate(tokens)})
    found = []
    scanned = 0
    for path in topo.log_files():
        if "postgres" in path.parts and "data" in path.parts:
            continue
        data = path.read_bytes()
        scanned += 1
        found += [
            f"{name} in {path.relative_to(topo.home)}" for name, value in needles.items() if value.encode() in data
        ]
    return Check(
        "no secret in any component's log",
        scanned > 0 and not found,
        "; ".join(found[:6]) or f"{scanned} logs, {len(needles)} secrets and tokens",
    )


def figures(
    topo: Topology, out: Outcome, tis: dict[TI, dict[str, Any]], returned: dict[TI, Any], jobs: dict[str, Any]
) -> dict[str, Any]:
    """Wall time, latency from a job's end to its waiting task's end (p50/p95), CPU seconds per component."""
    latencies = []
    for ti, submit in waiting_tasks(tis).items():
        info, job_id = tis[ti], returned.get((*ti[:2], submit, ti[3]))
        job = jobs.get(str(job_id)) if job_id else None
        if job is None or info["state"] != "success" or info["end_date"] is None or job.started is None:
            continue
        ended_mono = job.finished_at(time.monotonic())
        if ended_mono is None:
            continue
        latencies.append(info["end_date"].timestamp() - job.wall(ended_mono))
    cpu = topo.component_cpu()
    merged: dict[str, float] = defaultdict(float)
    for name, seconds in cpu.items():
        merged[name.rstrip("0123456789").rstrip("-") if name.startswith(("worker", "triggerer")) else name] += seconds
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else [float("nan")] * 19
    return {
        "jobs": len(jobs),
        "wall_seconds": round(out.wall_seconds),
        "latency_p50": round(statistics.median(latencies), 1) if latencies else None,
        "latency_p95": round(q[18], 1) if latencies else None,
        "waits_measured": len(latencies),
        "cpu_seconds": {k: round(v, 1) for k, v in sorted(merged.items())},
    }


def report(out: Outcome) -> str:
    lines = [c.line() for c in out.checks]
    f = out.figures
    lines.append(
        f"figures: {f.get('jobs')} jobs, wall {f.get('wall_seconds')} s, "
        f"job end -> task end p50 {f.get('latency_p50')} s, "
        f"p95 {f.get('latency_p95')} s ({f.get('waits_measured')} waits); CPU s per component {f.get('cpu_seconds')}"
    )
    return "\n".join(lines)
