"""What a trigger may ask Airflow from inside the triggerer, answered as Airflow 3.3's triggerer answers it.

In the triggerer a trigger's requests (``RuntimeTaskInstance.get_task_states`` and the like) go through
``task_runner.SUPERVISOR_COMMS`` to the triggerer's supervisor, whose ``_handle_request`` answers them with
Airflow's request handlers (``airflow.sdk.execution_time.request_handlers``) on the execution API and the
metadata DB. Here the same handlers answer on Airflow's in-process execution API and the tests' metadata DB, in
which the task instances a trigger asks about are real rows.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import types
import uuid
from collections.abc import Callable
from typing import Any

import pytest

#: a task instance whose DAG run was deleted: asked about, Airflow finds no row
GONE = "gone"


class TriggererComms:
    """The triggerer supervisor's side of the comms, in this process.

    ``failures`` makes the next requests fail as the triggerer's comms fail them when the API server cannot
    answer (``AirflowRuntimeError`` carrying ``API_SERVER_ERROR``); ``hang`` holds every request until released;
    ``delay`` answers each after that many seconds (a loaded API server, requests queued in the triggerer).
    """

    def __init__(self) -> None:
        from airflow.sdk.execution_time.supervisor import InProcessTestSupervisor

        self.client = InProcessTestSupervisor._api_client()
        self.failures = 0
        self.hang = threading.Event()
        self.released = threading.Event()
        self.delay = 0.0
        self.asked: list[Any] = []

    def send(self, msg: Any) -> Any:
        """As ``TriggerCommsDecoder.send`` answers a sync SDK call made from a thread (``sync_to_async``)."""
        from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
        from airflow.sdk.execution_time import comms, request_handlers

        if isinstance(msg, comms.MaskSecret):  # a connection's secrets, masked as the triggerer masks them
            request_handlers.handle_mask_secret(msg)
            return None
        self.asked.append(msg)
        if self.hang.is_set():
            self.released.wait(60)
        if self.delay:
            time.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise AirflowRuntimeError(
                comms.ErrorResponse(error=ErrorType.API_SERVER_ERROR, detail={"status_code": 503})
            )
        handlers: dict[type, Callable[[Any, Any], Any]] = {
            comms.GetTaskStates: request_handlers.handle_get_task_states,
            comms.GetTICount: request_handlers.handle_get_ti_count,
        }
        return handlers[type(msg)](self.client, msg)[0]

    async def asend(self, msg: Any) -> Any:
        return await asyncio.to_thread(self.send, msg)


class Triggerer:
    """Task instances in the metadata DB, and the comms that answer a trigger's questions about them."""

    _runs = itertools.count()

    def __init__(self, comms: TriggererComms) -> None:
        self.comms = comms

    def task_instance(self, state: str | None, *, map_index: int = -1) -> Any:
        """A deferred task's instance as the triggerer hands it to the trigger (``trigger.task_instance``), its row
        in the DB in ``state`` (``GONE``: no row, as after its DAG run was deleted)."""
        from airflow.utils.session import create_session
        from sqlalchemy import text

        dag_id, task_id = "jp_trigger_kill", "wait"
        run_id = f"manual__{next(self._runs)}_{uuid.uuid4().hex[:8]}"
        ti_id = str(uuid.uuid4())
        with create_session() as session:
            session.execute(
                text(
                    "INSERT INTO dag_run (dag_id, run_id, run_type, run_after, state, clear_number) "
                    "VALUES (:dag_id, :run_id, 'manual', CURRENT_TIMESTAMP, 'running', 0)"
                ),
                {"dag_id": dag_id, "run_id": run_id},
            )
            if state != GONE:
                session.execute(
                    text(
                        "INSERT INTO task_instance (id, task_id, dag_id, run_id, map_index, try_number, pool, "
                        "pool_slots, state, max_tries, priority_weight, operator, custom_operator_name) VALUES "
                        "(:id, :task_id, :dag_id, :run_id, :map_index, 1, 'default_pool', 1, :state, 0, 1, "
                        "'OLConnectOperationSensor', 'OLConnectOperationSensor')"
                    ),
                    {
                        "id": ti_id,
                        "task_id": task_id,
                        "dag_id": dag_id,
                        "run_id": run_id,
                        "map_index": map_index,
                        "state": state,
                    },
                )
        return types.SimpleNamespace(
            id=ti_id, dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index, try_number=1
        )


@pytest.fixture
def triggerer(airflow_db: Any, monkeypatch: pytest.MonkeyPatch) -> Triggerer:
    """The triggerer's comms in place (``task_runner.SUPERVISOR_COMMS``), answering from the tests' metadata DB.

    Airflow 3.3 only: below it the triggerer never calls a trigger's on_kill (what these answers are for), and
    its SDK has no ``request_handlers`` to answer with."""
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_3_PLUS

    if not AIRFLOW_V_3_3_PLUS:
        pytest.skip("a trigger's on_kill, and what it asks Airflow, arrive in Airflow 3.3")
    from airflow.sdk.execution_time import task_runner

    comms = TriggererComms()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    found = Triggerer(comms)
    # The in-process API starts on its first call (seconds on a loaded machine): not inside an on_kill's budget.
    from airflow.sdk.execution_time.comms import GetTICount

    comms.send(GetTICount(dag_id="warm-up"))
    comms.asked.clear()
    return found
