"""Hostile or broken vendor answers, from real servers on 127.0.0.1: one typed event each, bounded memory, no stall.

Each server below is a small aiohttp app in its own thread and loop, standing in for one vendor: its logins
answer normally, its progress answers are hostile (an endless body, 50 MB, a body trickled byte by byte,
Retry-After values no one should obey to the letter). One ``JobProgressTrigger`` waits on it with a fast poll
policy while a ticker task on the trigger's loop measures how long the loop was busy between two ticks (the
loop thread's CPU time, so a loaded machine's scheduling is not counted as our stall) and how far the
process's memory grew. The servers count what they sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from airflow_provider_jobprogress.core import (
    PollPolicy,
    RequestRetry,
    ResponseTooLargeError,
    VendorUnavailableError,
    parse_retry_after,
)
from airflow_provider_jobprogress.core.protocol import MAX_ANSWER
from airflow_provider_jobprogress.core.session import ASYNC_SESSIONS, AsyncSession
from airflow_provider_jobprogress.hooks.itwin import ITwinHook
from airflow_provider_jobprogress.hooks.olconnect import OLConnectHook
from airflow_provider_jobprogress.hooks.scriptx import ScriptXHook
from airflow_provider_jobprogress.triggers.job_progress import JobProgressTrigger

VENDORS = ("olconnect", "scriptx", "itwin")
VENDOR_NAMES = {"olconnect": "OL Connect", "scriptx": "ScriptX.Services", "itwin": "iTwin"}
HOOK_PATHS = {
    vendor: f"{hook.__module__}.{hook.__qualname__}"
    for vendor, hook in (("olconnect", OLConnectHook), ("scriptx", ScriptXHook), ("itwin", ITwinHook))
}
CONTENT_TYPES = {"olconnect": "text/plain", "scriptx": "application/json", "itwin": "application/json"}
#: the test server's own token, checked to appear nowhere
TOKEN = "hostile-vendor-token-5f0c9e"
JOB = "job-1"
FAST_POLL = PollPolicy.fixed(0.05).to_dict()
#: a fast policy: two tries per call of 1 s at most each, pauses of 0.5 s at most, a short outage tolerance
RETRY = RequestRetry(
    attempts=2,
    initial_delay=0.2,
    max_delay=0.5,
    jitter=0,
    outage_tolerance=0.5,
    request_timeout=1.0,
    retry_after_limit=0.5,
).to_dict()
#: the loop may be busy this long at once, at most (CPU time of the loop's thread between two ticks)
MAX_STALL = 0.1
TICK = 0.01
#: the process may grow this much while a wait reads hostile answers (a 50 MB answer read whole grew it ~1 GB)
MAX_GROWTH = 100 << 20
#: past this the wait is stopped: today's code reads an endless answer until the machine runs out of memory
RSS_GUARD = 512 << 20
FIFTY_MB = 50_000_000


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


Answer = Callable[["HostileVendor", web.Request], Awaitable[web.StreamResponse]]


class HostileVendor:
    """One vendor's API on 127.0.0.1: a login answers with ``TOKEN``, every other call gets ``answer``."""

    def __init__(self, vendor: str, answer: Answer) -> None:
        self.vendor = vendor
        self.answer = answer
        #: calls answered by ``answer`` (logins not counted), and the body bytes written to them
        self.calls = 0
        self.sent = 0
        #: the client ports calls came from: one per TCP connection
        self.peers: set[int] = set()
        self.logins = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> HostileVendor:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/connect/token"):
            self.logins += 1
            issued = f"{TOKEN}-{self.logins}"  # a new token at each login, each holding TOKEN
            return web.json_response({"access_token": issued, "token_type": "Bearer", "expires_in": 3600})
        self.calls += 1
        self.peers.add(request.transport.get_extra_info("peername")[1] if request.transport else 0)
        try:
            return await self.answer(self, request)
        except (ConnectionError, asyncio.CancelledError):  # the client hung up, as it should
            return web.Response(status=499)

    def connection(self) -> str:
        """The Airflow connection (JSON) that points the vendor's hook here."""
        conn: dict[str, Any] = {"conn_type": self.vendor, "host": "127.0.0.1", "port": self.port, "schema": "http"}
        if self.vendor == "scriptx":
            conn["extra"] = {"variant": "on_premise"}
        if self.vendor == "itwin":
            base = f"http://127.0.0.1:{self.port}"
            conn = {
                "conn_type": "itwin",
                "login": "hostile-client",
                "password": "hostile-client-secret",
                "extra": {"base_url": base, "auth_url": f"{base}/connect/token"},
            }
        return json.dumps(conn)

    async def write(self, response: web.StreamResponse, data: bytes) -> None:
        await response.write(data)
        self.sent += len(data)


def huge_body(vendor: str, size: int) -> bytes:
    """A well-formed answer of ``size`` bytes: as costly to parse as a body of that size can be."""
    if vendor == "olconnect":
        return (b"50 " * (size // 3 + 1))[:size]  # text: words to split
    head = {
        "scriptx": b'{"status": 2, "message": "printing", "pad": [',
        "itwin": b'{"progress": {"state": "Active", "percentage": 50}, "pad": [',
    }[vendor]
    count = (size - len(head) - 2) // 4
    return head + b"0.5," * count + b"0]}"


def endless() -> Answer:
    async def answer(server: HostileVendor, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPES[server.vendor]})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"5" * 65536
        while True:
            await server.write(response, chunk)

    return answer


def whole(body: bytes, status: int = 200, content_type: str | None = None) -> Answer:
    async def answer(server: HostileVendor, request: web.Request) -> web.StreamResponse:
        kind = content_type or CONTENT_TYPES[server.vendor]
        response = web.StreamResponse(status=status, headers={"Content-Type": kind})
        response.content_length = len(body)
        await response.prepare(request)
        view = memoryview(body)
        for start in range(0, len(body), 1 << 20):
            await server.write(response, bytes(view[start : start + (1 << 20)]))
        await response.write_eof()
        return response

    return answer


def trickle(every: float = 0.2) -> Answer:
    """A 200 whose body comes one byte at a time, for ever: each byte restarts a per-read timeout."""

    async def answer(server: HostileVendor, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPES[server.vendor]})
        response.enable_chunked_encoding()
        await response.prepare(request)
        while True:
            await server.write(response, b"5")
            await asyncio.sleep(every)

    return answer


def rate_limited(retry_after: str) -> Answer:
    async def answer(server: HostileVendor, request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, text="slow down", headers={"Retry-After": retry_after})

    return answer


@dataclass
class Watched:
    events: list[dict[str, Any]]
    #: the longest the loop was busy between two ticks (CPU seconds of its thread), and the same in wall time
    stall: float
    lag: float
    growth: int


async def watch(trigger: JobProgressTrigger, *, limit: float = 60.0) -> Watched:
    """Run ``trigger`` to its end while ticking on its loop; stop it if memory runs away or it takes ``limit``."""
    loop = asyncio.get_running_loop()
    base = rss()
    stall = lag = 0.0
    growth = 0
    run = asyncio.create_task(_events(trigger))
    started = loop.time()
    while not run.done():
        wall, cpu = loop.time(), time.thread_time()
        await asyncio.sleep(TICK)
        stall = max(stall, time.thread_time() - cpu)
        lag = max(lag, loop.time() - wall - TICK)
        growth = max(growth, rss() - base)
        if growth > RSS_GUARD or loop.time() - started > limit:
            run.cancel()
            await ASYNC_SESSIONS.aclose_all()
            pytest.fail(f"stopped after {loop.time() - started:.1f} s, the process {growth >> 20} MiB larger")
    return Watched(await run, stall, lag, growth)


async def _events(trigger: JobProgressTrigger) -> list[dict[str, Any]]:
    return [dict(event.payload) async for event in trigger.run()]


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, Answer], HostileVendor]]:
    servers: list[HostileVendor] = []

    def start(vendor: str, answer: Answer) -> HostileVendor:
        server = HostileVendor(vendor, answer).__enter__()
        servers.append(server)
        monkeypatch.setenv(f"AIRFLOW_CONN_HOSTILE_{vendor.upper()}", server.connection())
        return server

    yield start
    for server in servers:
        server.__exit__()


def trigger(vendor: str, **kwargs: Any) -> JobProgressTrigger:
    params: dict[str, Any] = {
        "hook_class_path": HOOK_PATHS[vendor],
        "conn_id": f"hostile_{vendor}",
        "job_id": JOB,
        "poll_policy": FAST_POLL,
        "request_retry": RETRY,
        "deadline": time.time() + 60,
    }
    params.update(kwargs)
    return JobProgressTrigger(**params)


def assert_one_typed_event(got: Watched, vendor: str, status: str, error: str | None) -> dict[str, Any]:
    assert len(got.events) == 1, got.events
    [event] = got.events
    assert (event["status"], event["error"]) == (status, error), event["message"]
    assert event["message"].startswith(f"{VENDOR_NAMES[vendor]} job {JOB}"), event["message"]
    assert TOKEN not in json.dumps(event)
    assert got.stall < MAX_STALL, f"the loop was busy {got.stall * 1000:.0f} ms at once"
    assert got.growth < MAX_GROWTH, f"the process grew {got.growth >> 20} MiB"
    return event


#: each vendor's answer for a finished job
DONE = {
    "olconnect": b"done",
    "scriptx": json.dumps({"status": 6, "message": "done", "jobIdentifier": JOB}).encode(),
    "itwin": json.dumps({"progress": {"state": "Success", "percentage": 100}}).encode(),
}


@pytest.fixture(scope="module", autouse=True)
def imports_done() -> None:
    """The first wait in a process imports Airflow's connection machinery on the loop (~60 ms, once, Airflow's
    own import): done here, before anything is measured."""
    for vendor in VENDORS:
        with HostileVendor(vendor, whole(DONE[vendor])) as server, pytest.MonkeyPatch.context() as env:
            env.setenv(f"AIRFLOW_CONN_HOSTILE_{vendor.upper()}", server.connection())
            assert [e["status"] for e in asyncio.run(_events(trigger(vendor)))] == ["success"]


@pytest.fixture(autouse=True)
async def close_shared_sessions() -> Any:
    yield
    await ASYNC_SESSIONS.aclose_all()


@pytest.fixture(autouse=True)
def frozen_heap() -> Iterator[None]:
    """What the test process holds already is frozen (``gc.freeze``), before a test takes its times: a full
    collection over pytest's heap, hundreds of tests deep, took 230 ms on the loop (and 4 s here before a test
    began) and is not the wait's doing."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


# -- answers too large: read no further than the bound ------------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
async def test_an_endless_answer_is_refused_at_its_bound(
    hostile: Any, vendor: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server = hostile(vendor, endless())
    got = await watch(trigger(vendor))
    assert_one_typed_event(got, vendor, "error", "ResponseTooLargeError")
    assert server.sent < 32 << 20, f"{server.sent >> 20} MiB sent to a client that reads 64 KiB per try"
    assert TOKEN not in capsys.readouterr().out


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_50_mb_answer_is_refused_unread(hostile: Any, vendor: str) -> None:
    body = huge_body(vendor, FIFTY_MB)
    server = hostile(vendor, whole(body))
    got = await watch(trigger(vendor))
    event = assert_one_typed_event(got, vendor, "error", "ResponseTooLargeError")
    assert "50000000" in event["message"] or "larger than" in event["message"]
    assert server.sent < 32 << 20, f"{server.sent >> 20} MiB of 50 MB sent"


async def test_an_error_page_past_the_bound_is_cut_for_its_message_not_refused(hostile: Any) -> None:
    """A proxy's long 503 page says the vendor is unavailable, as a short one does: the wait rides it out."""
    page = b"<html><body>" + b"<p>Service Unavailable</p>" * 80_000 + b"</body></html>"
    server = hostile("scriptx", whole(page, status=503, content_type="text/html"))
    got = await watch(trigger("scriptx"))
    event = assert_one_typed_event(got, "scriptx", "error", "VendorUnavailableError")
    assert "HTTP 503" in event["message"]
    assert server.calls >= 4, "polled through the outage, each call tried twice"


@pytest.mark.parametrize("answer", ["endless", "50 MB"])
def test_a_worker_refuses_an_answer_past_its_bound_too(hostile: Any, answer: str) -> None:
    server = hostile("scriptx", endless() if answer == "endless" else whole(huge_body("scriptx", FIFTY_MB)))
    hook = ScriptXHook("hostile_scriptx", request_retry=RETRY)
    base = rss()
    try:
        with pytest.raises(ResponseTooLargeError, match="read no further"):
            hook.get_progress(JOB)
    finally:
        hook.session.close()
    assert rss() - base < MAX_GROWTH
    assert server.sent < 32 << 20, f"{server.sent >> 20} MiB sent"


def test_a_worker_keeps_its_connection_alive_across_bounded_reads(hostile: Any) -> None:
    status = json.dumps({"status": 5, "message": "printing", "jobIdentifier": JOB}).encode()
    server = hostile("scriptx", whole(status))
    hook = ScriptXHook("hostile_scriptx", request_retry=RETRY)
    try:
        readings = [hook.get_progress(JOB).step for _ in range(5)]
    finally:
        hook.session.close()
    assert readings == ["Printing"] * 5
    assert len(server.peers) == 1, f"{len(server.peers)} connections for 5 calls"


@pytest.mark.parametrize("vendor", VENDORS)
async def test_answers_just_under_the_bound_are_read_without_stalling_the_loop(hostile: Any, vendor: str) -> None:
    """The costliest answers that may be read: JSON numbers (ScriptX, iTwin, still running) and words (OL Connect,
    nonsense, so described in the error), each poll parsed on the loop within a few ms."""
    hostile(vendor, whole(huge_body(vendor, MAX_ANSWER - 1)))
    got = await watch(trigger(vendor, deadline=time.time() + 2))
    status, error = ("error", "VendorResponseError") if vendor == "olconnect" else ("timeout", None)
    assert_one_typed_event(got, vendor, status, error)


# -- small flaws in an answer that says clearly how the job stands -------------------------------------

FLAWED_DONE = {
    "olconnect": "\ufeffdone".encode(),  # a byte order mark before the verdict
    "scriptx": b'{"status": 6, "message": "printed on Dru\xffcker 3", "jobIdentifier": "job-1"}',  # not UTF-8
    "itwin": json.dumps({"progress": {"state": "Success", "percentage": "n/a"}}).encode(),  # an unreadable number
}


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_finished_job_with_a_flaw_in_its_answer_is_finished(hostile: Any, vendor: str) -> None:
    hostile(vendor, whole(FLAWED_DONE[vendor]))
    got = await watch(trigger(vendor))
    assert_one_typed_event(got, vendor, "success", None)


# -- a body trickled byte by byte: each request has a time limit ------------------------------------------


@pytest.mark.parametrize("deadline", ["60 s", "none"])
async def test_a_trickled_answer_ends_at_the_request_time_limit(hostile: Any, deadline: str) -> None:
    """Without a deadline (``finish_in_triggerer``) nothing else would ever end the wait."""
    hostile("scriptx", trickle())
    ends = {"deadline": time.time() + 60} if deadline == "60 s" else {"deadline": None, "finish_in_triggerer": True}
    got = await watch(trigger("scriptx", **ends), limit=20)
    event = assert_one_typed_event(got, "scriptx", "error", "VendorUnavailableError")
    assert "within 1 s" in event["message"], event["message"]


async def test_a_deadline_during_a_trickled_answer_is_the_waits_timeout_not_the_requests(hostile: Any) -> None:
    """The request's time limit takes back only its own cancellation: the wait's deadline still ends the wait."""
    hostile("scriptx", trickle())
    slow_tries = {**RETRY, "request_timeout": 30.0}
    got = await watch(trigger("scriptx", deadline=time.time() + 1.5, request_retry=slow_tries), limit=20)
    assert_one_typed_event(got, "scriptx", "timeout", None)


async def test_a_request_in_a_task_cancelled_before_still_ends_at_its_time_limit(hostile: Any) -> None:
    """``on_kill`` runs in a task Airflow has already cancelled (in the same task where ``wait_for`` does not
    make one, Python 3.12+): its cancel request must still end at its own time limit, as the typed error the
    kill logs, not as a CancelledError taken for someone else's."""
    hostile("scriptx", trickle())
    hook = ScriptXHook("hostile_scriptx", request_retry=RequestRetry(attempts=1, request_timeout=1.0))
    api = await hook._read_async_connection()
    session = AsyncSession(api, pool_size=1)

    async def killed_then_cleaning_up() -> BaseException | None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        # Airflow's cancellation, caught and not taken back: cancelling() stays 1, as in on_kill
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(5)
        try:
            await session.run(api.progress(JOB))
        except BaseException as exc:  # what the request ended with, handed to the test
            return exc
        return None

    try:
        error = await asyncio.wait_for(asyncio.ensure_future(killed_then_cleaning_up()), 20)
    finally:
        await session.aclose()
    assert isinstance(error, VendorUnavailableError), repr(error)
    assert "within 1 s" in str(error)


def test_a_worker_read_of_a_trickled_answer_ends_at_the_request_time_limit(hostile: Any) -> None:
    hostile("scriptx", trickle())
    hook = ScriptXHook("hostile_scriptx", request_retry=RETRY)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            hook.get_progress(JOB)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    started = time.monotonic()
    reader.start()
    reader.join(20)
    hook.session.close()
    assert not reader.is_alive(), f"still reading after {time.monotonic() - started:.0f} s"
    [error] = outcome
    assert isinstance(error, VendorUnavailableError), error
    assert "within 1 s" in str(error)


async def test_the_time_limit_starts_when_the_request_has_a_connection(hostile: Any) -> None:
    """A wait for a free pooled connection is the pool's, not the vendor's: each try gets its whole second."""

    async def slow(server: HostileVendor, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.6)
        return web.Response(body=DONE["scriptx"], content_type="application/json")

    hostile("scriptx", slow)
    hook = ScriptXHook("hostile_scriptx", request_retry=RequestRetry(attempts=1, request_timeout=1.0))
    api = await hook._read_async_connection()
    session = AsyncSession(api, pool_size=1)
    try:
        two = await asyncio.gather(*(session.run(api.progress(JOB)) for _ in range(2)))
    finally:
        await session.aclose()
    assert [p.state.value for p in two] == ["succeeded", "succeeded"], "the second waited 0.6 s for the connection"


# -- Retry-After: never obeyed past a limit, never shorter than our own backoff -------------------------

#: a Retry-After date nobody should wait for
YEAR_9999 = "Fri, 31 Dec 9999 23:59:59 GMT"


@pytest.mark.parametrize("retry_after", ["86400", YEAR_9999])
async def test_a_pause_of_a_day_or_of_millennia_is_cut_to_the_limit_and_logged(
    hostile: Any, retry_after: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the limit at 0.5 s the wait asks again every half second (before: once, then slept as asked)."""
    server = hostile("itwin", rate_limited(retry_after))
    got = await watch(trigger("itwin", deadline=time.time() + 3))
    assert_one_typed_event(got, "itwin", "timeout", None)
    assert server.calls >= 3
    assert server.calls <= 8, f"{server.calls} calls in 3 s"
    asked = parse_retry_after(retry_after)
    logged = capsys.readouterr().out
    said = re.findall(r"asked for a pause of (\d+) s", logged)
    assert said, logged
    assert asked is not None
    assert abs(int(said[0]) - asked) < 60, "what the vendor asked for (an HTTP date counts from now)"
    assert TOKEN not in logged


@pytest.mark.parametrize("retry_after", ["0", "-5"])
async def test_a_pause_of_nothing_waits_the_policy_backoff(hostile: Any, retry_after: str) -> None:
    """Before: ten requests at once per poll, a poll every 50 ms (1,298 requests in 60 s in the issue's probe)."""
    server = hostile("olconnect", rate_limited(retry_after))
    got = await watch(trigger("olconnect", deadline=time.time() + 3))
    assert_one_typed_event(got, "olconnect", "timeout", None)
    # pauses of 0.2, 0.4, then 0.5 s (the policy's backoff): about eight calls in 3 s
    assert 3 <= server.calls <= 10, f"{server.calls} calls in 3 s"


# -- tokens: never in what the provider writes, and no pattern in Airflow's masker per renewal ------------


def echo_credentials() -> Answer:
    """A proxy's error page that shows the request's headers, the token among them."""

    async def answer(server: HostileVendor, request: web.Request) -> web.StreamResponse:
        shown = "\n".join(f"{name}: {value}" for name, value in request.headers.items())
        return web.Response(status=502, text=f"Bad Gateway. Your request:\n{shown}")

    return answer


async def test_a_token_a_vendor_echoes_is_in_no_event_and_no_log(
    hostile: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile("itwin", echo_credentials())
    got = await watch(trigger("itwin"))
    event = assert_one_typed_event(got, "itwin", "error", "VendorUnavailableError")
    assert "Bad Gateway" in event["message"]
    assert "Authorization: Bearer ***" in event["message"], event["message"]
    assert TOKEN not in capsys.readouterr().out


async def test_token_renewals_add_no_pattern_to_airflows_masker(hostile: Any) -> None:
    """Airflow's masker keeps every pattern for good and redacts every log line with all of them
    (benchmarks/bench_token_masking.py): a token renewed every 15 minutes must not cost each line more."""
    try:
        from airflow.sdk.log import _secrets_masker  # type: ignore[attr-defined]
    except ImportError:  # Airflow < 3.3
        from airflow.sdk._shared.secrets_masker import _secrets_masker  # type: ignore[no-redef,attr-defined]

    server = hostile("itwin", whole(DONE["itwin"]))
    async with ITwinHook("hostile_itwin", request_retry=RETRY) as hook:
        session = await hook.asession()  # reading the connection registers its secrets, once
        token = await session._get_token(None)
        before = len(_secrets_masker().patterns)
        for _ in range(300):
            token = await session._get_token(token)
    assert server.logins == 301
    assert len(_secrets_masker().patterns) == before
