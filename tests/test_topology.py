"""The production topology's short form: PostgreSQL, Redis, CeleryExecutor, two workers, two triggerers.

About 60 jobs through the example DAGs and a mapped DAG while one triggerer and two Celery workers are
SIGKILLed (one mid-submit, one mid-fetch), the scheduler restarts, a user kills a wait and Clears a finished
submit; each promise is checked from the emulators' records, the database, S3 and the result folder (one test
per check). The full 300-job scenario is ``make topology``; the harness is in ``tests/topology/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_3_PLUS

from tests.topology.cluster import Topology
from tests.topology.scenario import Check, Outcome, Plan, report, run

pytestmark = [
    pytest.mark.topology,
    # a user's kill reaches the remote job through trigger on_kill (3.3), retries re-attach through 3.3's
    # task_state_store: below 3.3 the promises checked here do not exist, so the topology runs on 3.3 only
    pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="the topology checks Airflow 3.3's promises"),
]

CHECKS = (
    "every task ends in its job's true state",
    "each job submitted once per try that needed one",
    "a Clear of a finished submit submits one new job",
    "a killed triggerer's waits finish on the other, one event each",
    "a user's kill cancels exactly that remote job",
    "the asset watcher fires once per finished job",
    "no partial or duplicate result object",
    "no secret in any component's log",
)


@pytest.fixture(scope="module")
def outcome(request: pytest.FixtureRequest) -> Iterator[Outcome]:
    topo = Topology()
    failed_before = request.session.testsfailed
    try:
        with topo:
            result = run(topo, Plan.short())
        print(report(result))
        yield result
    finally:
        # a failed check's evidence (every component's log, the task and trigger logs, the database) stays
        keep = request.session.testsfailed > failed_before or bool(os.environ.get("JOBPROGRESS_KEEP_TOPOLOGY"))
        if keep:
            print(f"topology home kept for a look: {topo.home}")
        else:
            topo.remove()


def check(outcome: Outcome, name: str) -> Check:
    [found] = [c for c in outcome.checks if c.name == name]
    return found


@pytest.mark.parametrize("name", CHECKS, ids=lambda n: n.replace(" ", "_"))
def test_topology(outcome: Outcome, name: str) -> None:
    result = check(outcome, name)
    assert result.ok, result.detail
