"""A scripted driver for sans-I/O flows: answers each Request from a list, records Sleeps, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from airflow_provider_jobprogress.core.protocol import Flow, GetToken, Request, Response, Sleep, Token

TOKEN = Token("tok", None)
#: a flow that needs more instructions than this is looping
MAX_STEPS = 1000


def drive(
    flow: Flow[Any],
    replies: Iterable[Response | BaseException],
    *,
    token_asks: list[GetToken] | None = None,
    sleep_log: list[Sleep] | None = None,
) -> tuple[Any, list[Request], list[Sleep]]:
    """Run ``flow`` to its end; return (result, requests it sent, sleeps it asked for).

    Each ``Request`` takes the next reply: a ``Response`` is sent in, an exception is thrown in.
    ``GetToken`` is answered with ``TOKEN`` (and recorded in ``token_asks`` when given); pass ``sleep_log``
    to see the sleeps of a flow that raises. The test fails
    when the flow asks for a request that was not scripted or ends (returning or raising) with replies unused.
    """
    pending = list(replies)
    requests: list[Request] = []
    sleeps: list[Sleep] = sleep_log if sleep_log is not None else []
    reply: Any = None
    throw: BaseException | None = None
    try:
        for _ in range(MAX_STEPS):
            instruction = flow.throw(throw) if throw is not None else flow.send(reply)
            reply, throw = None, None
            if isinstance(instruction, Request):
                requests.append(instruction)
                if not pending:
                    pytest.fail(
                        f"flow sent unscripted request #{len(requests)}: {instruction.method} {instruction.url}"
                    )
                answer = pending.pop(0)
                if isinstance(answer, BaseException):
                    throw = answer
                else:
                    reply = answer
            elif isinstance(instruction, Sleep):
                sleeps.append(instruction)
            elif isinstance(instruction, GetToken):
                if token_asks is not None:
                    token_asks.append(instruction)
                reply = TOKEN
            else:
                pytest.fail(f"flow yielded an unknown instruction {instruction!r}")
        pytest.fail(f"flow did not finish within {MAX_STEPS} instructions")
    except StopIteration as stop:
        _check_all_used(pending)
        return stop.value, requests, sleeps
    except Exception:
        _check_all_used(pending)
        raise


def _check_all_used(pending: list[Response | BaseException]) -> None:
    if pending:
        pytest.fail(f"flow finished with {len(pending)} scripted replies unused: {pending!r}")
