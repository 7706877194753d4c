"""The triggerer's transport: aiohttp sessions shared per connection, closed after their last wait, and
what a wait does when the vendor cannot be reached, keeps silent, or stops accepting the secret."""

from __future__ import annotations

import asyncio
import datetime
import gc
import ipaddress
import json
import os
import socket
import ssl
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from airflow_provider_jobprogress.core import JobProgressError, PollPolicy, RequestRetry, VendorUnavailableError
from airflow_provider_jobprogress.core.protocol import Request, TransportError, VendorApi
from airflow_provider_jobprogress.core.session import ASYNC_SESSIONS, AsyncSession
from airflow_provider_jobprogress.hooks import base as base_hook
from airflow_provider_jobprogress.hooks.base import JobProgressHook
from airflow_provider_jobprogress.hooks.itwin import ITwinHook
from airflow_provider_jobprogress.hooks.olconnect import OLConnectHook
from airflow_provider_jobprogress.hooks.scriptx import ScriptXHook
from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from airflow_provider_jobprogress.triggers.job_progress import JobProgressTrigger
from tests import triggerer_comms
from tests.triggerer_comms import Triggerer

triggerer = triggerer_comms.triggerer  # the fixture, used by name below

FAST_POLL = PollPolicy.fixed(0.05).to_dict()
FAST_RETRY = RequestRetry(initial_delay=0.01, max_delay=0.02, jitter=0, attempts=2, outage_tolerance=30).to_dict()
HOOKS: dict[str, type[JobProgressHook[Any]]] = {"olconnect": OLConnectHook, "scriptx": ScriptXHook, "itwin": ITwinHook}
HOOK_PATHS = {vendor: f"{hook.__module__}.{hook.__qualname__}" for vendor, hook in HOOKS.items()}
SECRET_NAMES = {"olconnect": "olconnect_password", "scriptx": "scriptx_license", "itwin": "itwin_client_secret"}
TOKEN_PATHS = {"olconnect": "/authentication/login", "itwin": "/connect/token"}
SPEC = {"name": "j", "type": "objects2D", "inputs": [{"type": "photos", "id": "i"}], "outputs": ["objects2D"]}


def submit(vendor: str, conn_id: str | None = None, count: int = 1) -> list[str]:
    """Submit ``count`` jobs with one sync hook (one login, one keep-alive connection)."""
    hook: Any = HOOKS[vendor](conn_id)
    try:
        if vendor == "olconnect":
            return [str(hook.submit({"datamining": {"identifier": "a.csv", "config": "dm"}})) for _ in range(count)]
        if vendor == "scriptx":
            return [str(hook.submit("https://example.invalid/a.pdf")) for _ in range(count)]
        return [str(hook.submit(SPEC)) for _ in range(count)]
    finally:
        hook.session.close()


def trigger(vendor: str, job_id: str, conn_id: str | None = None, **kwargs: Any) -> JobProgressTrigger:
    params: dict[str, Any] = {
        "hook_class_path": HOOK_PATHS[vendor],
        "conn_id": conn_id or f"{vendor}_default",
        "job_id": job_id,
        "poll_policy": FAST_POLL,
        "request_retry": FAST_RETRY,
    }
    params.update(kwargs)
    return JobProgressTrigger(**params)


async def statuses(trig: JobProgressTrigger) -> list[Any]:
    return [event.payload.get("status") async for event in trig.run()]


async def payloads(trig: JobProgressTrigger) -> list[dict[str, Any]]:
    return [dict(event.payload) async for event in trig.run()]


def sockets_to(port: int) -> int:
    """This process's open TCP sockets whose peer is ``port`` on this host, read from /proc (not our bookkeeping)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    count += 1
    return count


def open_client_sessions() -> list[aiohttp.ClientSession]:
    gc.collect()
    # type(), not isinstance(): some of Airflow's lazy proxies import modules when asked for __class__.
    sessions = [obj for obj in gc.get_objects() if issubclass(type(obj), aiohttp.ClientSession)]
    return [session for session in sessions if not session.closed]


async def until(check: Any, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if check():
            return True
        await asyncio.sleep(0.02)
    return bool(check())


@pytest.fixture(autouse=True)
async def close_shared_sessions() -> AsyncIterator[None]:
    yield
    await ASYNC_SESSIONS.aclose_all()


# -- lifecycle ---------------------------------------------------------------------------------------


async def test_thousand_triggers_on_fifty_connections_leave_no_session_or_socket(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for vendor in HOOKS:
        emulator.set_default_scenario(vendor, Scenario(steps=2))
    defaults = emulator.connections()
    conns = []
    for i in range(50):
        vendor = sorted(HOOKS)[i % 3]
        conn_id = f"{vendor}_{i}"
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", defaults[f"{vendor}_default"])
        conns.append((vendor, conn_id))
    waits = [(vendor, conn_id, job_id) for vendor, conn_id in conns for job_id in submit(vendor, conn_id, 20)]
    assert len(waits) == 1000
    tokens_before = {vendor: emulator.count("POST", path) for vendor, path in TOKEN_PATHS.items()}

    got = await asyncio.gather(*(statuses(trigger(v, job_id, conn_id)) for v, conn_id, job_id in waits))

    assert all(events == ["success"] for events in got)
    assert ASYNC_SESSIONS.sessions() == []
    assert open_client_sessions() == []
    assert sockets_to(emulator.port) == 0
    assert await until(lambda: emulator.open_connections == 0), f"{emulator.open_connections} left open"
    for vendor, path in TOKEN_PATHS.items():
        logins = emulator.count("POST", path) - tokens_before[vendor]
        assert logins == sum(1 for v, _ in conns if v == vendor), f"{vendor}: one login per connection"


async def test_waits_with_different_retry_policies_share_one_session_and_token(emulator: VendorEmulator) -> None:
    emulator.set_default_scenario("itwin", Scenario(steps=4))
    jobs = submit("itwin", count=3)
    tokens_before = emulator.count("POST", "/connect/token")
    policies = [FAST_RETRY, {**FAST_RETRY, "attempts": 3}, {**FAST_RETRY, "max_delay": 0.05}]
    tasks = [
        asyncio.create_task(statuses(trigger("itwin", job, request_retry=p)))
        for job, p in zip(jobs, policies, strict=True)
    ]
    assert await until(lambda: emulator.count("GET", "/progress") >= 3)
    assert len(ASYNC_SESSIONS.sessions()) == 1
    assert [await task for task in tasks] == [["success"]] * 3
    assert emulator.count("POST", "/connect/token") - tokens_before == 1


async def test_a_later_wait_reuses_the_token_of_a_closed_session(emulator: VendorEmulator) -> None:
    emulator.set_default_scenario("itwin", Scenario(steps=1))
    first, second = submit("itwin", count=2)
    tokens_before = emulator.count("POST", "/connect/token")
    assert await statuses(trigger("itwin", first)) == ["success"]
    assert ASYNC_SESSIONS.sessions() == []
    assert await statuses(trigger("itwin", second)) == ["success"]
    assert emulator.count("POST", "/connect/token") - tokens_before == 1


async def test_a_killed_wait_gives_its_session_back_in_cleanup(emulator: VendorEmulator, triggerer: Triggerer) -> None:
    """The triggerer on a user's kill: the wait is cancelled, on_kill cancels the job, cleanup() follows."""
    emulator.set_next_scenario("olconnect", Scenario(steps=100))
    [job_id] = submit("olconnect")
    trig = trigger("olconnect", job_id)
    task = asyncio.create_task(statuses(trig))
    assert await until(lambda: emulator.count("GET", f"/getProgress/{job_id}") >= 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    trig.task_instance = triggerer.task_instance("failed")  # a user marked it failed
    await trig.on_kill()
    assert emulator.count("POST", f"/cancel/{job_id}") == 1
    await trig.cleanup()
    assert ASYNC_SESSIONS.sessions() == []
    assert open_client_sessions() == []


async def test_a_wait_stopped_by_a_triggerer_shutdown_gives_its_session_back_in_cleanup(
    emulator: VendorEmulator,
) -> None:
    emulator.set_next_scenario("olconnect", Scenario(steps=100))
    [job_id] = submit("olconnect")
    trig = trigger("olconnect", job_id)
    task = asyncio.create_task(statuses(trig))
    assert await until(lambda: emulator.count("GET", f"/getProgress/{job_id}") >= 1)
    task.cancel()  # a shutdown: no on_kill, and nothing is cancelled at the vendor
    with pytest.raises(asyncio.CancelledError):
        await task
    await trig.cleanup()
    assert emulator.count("POST", f"/cancel/{job_id}") == 0
    assert ASYNC_SESSIONS.sessions() == []
    assert open_client_sessions() == []


async def test_hook_as_async_context_manager_closes_its_session(emulator: VendorEmulator) -> None:
    [job_id] = submit("scriptx")
    async with ScriptXHook() as hook:
        await hook.aget_progress(job_id)
        assert len(ASYNC_SESSIONS.sessions()) == 1
    assert ASYNC_SESSIONS.sessions() == []
    assert sockets_to(emulator.port) == 0


def test_a_hundred_event_loops_leave_no_entry_no_loop_and_no_socket(emulator: VendorEmulator) -> None:
    """Each ``asyncio.run`` (as ``dag.test()`` runs each deferral) gets its own sessions, closed with its loop.

    One hook is reused across loops and never closed (its session belonged to a loop that is gone), another
    is made and closed in each loop: neither may keep a loop, a session or a socket alive afterwards.
    """
    emulator.set_default_scenario("itwin", Scenario(steps=1000))
    [job_id] = submit("itwin")
    reused = ITwinHook()
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def poll(hook: ITwinHook | None) -> str:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        if hook is not None:
            return (await hook.aget_progress(job_id)).state.value
        async with ITwinHook() as fresh:
            return (await fresh.aget_progress(job_id)).state.value

    states = {asyncio.run(poll(reused if i % 2 else None)) for i in range(100)}

    assert states == {"running"}
    del reused
    gc.collect()
    # asgiref's executor thread (connections are read through it) remembers the last loop that called into it
    alive = [loops.index(ref) for ref in loops if ref() is not None]
    assert len(alive) <= 1, f"closed loops {alive} still referenced"
    assert len(ASYNC_SESSIONS) == 0
    assert len(base_hook._CONNECTIONS) == 0
    assert open_client_sessions() == []
    assert sockets_to(emulator.port) == 0


def test_a_session_run_in_another_loop_is_a_typed_error() -> None:
    async def make() -> AsyncSession:
        session = AsyncSession(api())
        await session.aclose()
        return session

    session = asyncio.run(make())
    with pytest.raises(JobProgressError, match="another event loop"):
        asyncio.run(session.run(session.api.send(Request("GET", "http://127.0.0.1:9/x"), None, what="read")))


# -- a secret rotated while a wait runs ---------------------------------------------------------------


@pytest.mark.parametrize("vendor", sorted(HOOKS))
async def test_secret_rotated_mid_wait_the_wait_finishes(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch, vendor: str
) -> None:
    emulator.set_next_scenario(vendor, Scenario(steps=40))
    [job_id] = submit(vendor)
    task = asyncio.create_task(statuses(trigger(vendor, job_id)))
    assert await until(lambda: emulator.job(vendor, job_id).status_calls >= 2)

    emulator.set_secrets({SECRET_NAMES[vendor]: f"rotated-{vendor}-secret-1"})
    emulator.expire_tokens()
    monkeypatch.setenv(f"AIRFLOW_CONN_{vendor.upper()}_DEFAULT", emulator.connections()[f"{vendor}_default"])

    assert await task == ["success"]
    assert any(call.status == 401 for call in emulator.calls), "the old secret was refused on the way"
    assert ASYNC_SESSIONS.sessions() == []
    assert open_client_sessions() == []


async def test_a_burst_of_waits_reads_its_connection_once_and_once_more_after_a_rotation(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.common.compat.connection import get_async_connection as real_read

    reads: list[str] = []

    async def counted(conn_id: str, **kwargs: Any) -> Any:
        reads.append(conn_id)
        return await real_read(conn_id, **kwargs)

    monkeypatch.setattr("airflow_provider_jobprogress.hooks.base.get_async_connection", counted)
    emulator.set_default_scenario("itwin", Scenario(steps=40))
    jobs = submit("itwin", count=50)
    tasks = [asyncio.create_task(statuses(trigger("itwin", job_id))) for job_id in jobs]
    assert await until(lambda: all(emulator.job("itwin", j).status_calls >= 2 for j in jobs), 10)
    assert reads == ["itwin_default"], "one read for the whole burst"

    emulator.set_secrets({"itwin_client_secret": "rotated-itwin-secret-3"})
    emulator.expire_tokens()
    monkeypatch.setenv("AIRFLOW_CONN_ITWIN_DEFAULT", emulator.connections()["itwin_default"])

    assert [await task for task in tasks] == [["success"]] * 50
    assert reads == ["itwin_default"] * 2, "one more read for all the waits the rotation stopped"


async def test_secret_rotated_but_connection_not_updated_fails_after_one_reread(
    emulator: VendorEmulator,
) -> None:
    emulator.set_next_scenario("itwin", Scenario(steps=40))
    [job_id] = submit("itwin")
    task = asyncio.create_task(payloads(trigger("itwin", job_id)))
    assert await until(lambda: emulator.job("itwin", job_id).status_calls >= 2)
    tokens_before = emulator.count("POST", "/connect/token")
    emulator.set_secrets({"itwin_client_secret": "rotated-itwin-secret-2"})
    emulator.expire_tokens()

    got = await task
    assert [p["status"] for p in got] == ["error"]
    assert got[0]["error"] == "AuthenticationError"
    # One refused login: the re-read connection is unchanged, so nothing is tried again.
    assert emulator.count("POST", "/connect/token") - tokens_before == 1
    assert ASYNC_SESSIONS.sessions() == []


# -- what leaves, what does not: transport failures ---------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SilentServer:
    """Accepts connections and reads requests; answers nothing (``hang``) or closes after reading (``close``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            self.requests.append(data)
            if self.mode == "close":
                conn.close()
            else:
                self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


def api(retry_attempts: int = 3, verify: bool | str = True) -> VendorApi:
    return VendorApi(request_retry=RequestRetry(attempts=retry_attempts, initial_delay=0.01, jitter=0), verify=verify)


async def test_refused_connection_was_never_sent_so_even_a_submit_is_retried(closed_port: int) -> None:
    session = AsyncSession(api(), timeout=(1.0, 1.0))
    url = f"http://127.0.0.1:{closed_port}/jobs?sig=SAS-KEY-do-not-log"
    try:
        with pytest.raises(TransportError) as raised:
            await session._send(Request("POST", url, idempotent=False))
        assert raised.value.sent is False
        with pytest.raises(VendorUnavailableError) as failed:
            await session.run(session.api.send(Request("POST", url, idempotent=False), None, what="submit"))
    finally:
        await session.aclose()
    assert "3 tries" in str(failed.value)
    assert "SAS-KEY" not in str(failed.value)
    assert "SAS-KEY" not in str(raised.value)
    assert "Connection refused" in str(failed.value)


@pytest.mark.parametrize(("mode", "kind"), [("hang", "SocketTimeoutError"), ("close", "ServerDisconnectedError")])
async def test_no_answer_after_the_request_left_counts_as_sent(mode: str, kind: str) -> None:
    server = SilentServer(mode)
    session = AsyncSession(api(), timeout=(1.0, 0.3))
    url = f"http://127.0.0.1:{server.port}/jobs?sig=SAS-KEY-do-not-log"
    try:
        with pytest.raises(TransportError) as raised:
            await session._send(Request("GET", url))
        assert (raised.value.kind, raised.value.sent) == (kind, True)
        before = len(server.requests)
        with pytest.raises(VendorUnavailableError) as failed:
            await session.run(session.api.send(Request("POST", url, idempotent=False), None, what="submit"))
        assert await until(lambda: len(server.requests) > before)
    finally:
        await session.aclose()
        server.close()
    assert len(server.requests) == before + 1, "a submit that may have arrived is not sent again"
    assert "1 tries" in str(failed.value)
    assert "SAS-KEY" not in str(failed.value)


# -- TLS: verify is a bool or a CA bundle path ---------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 with a certificate from its own CA; yields (base URL, CA bundle path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobprogress test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert_path
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("verify", ["ca_path", False])
async def test_tls_with_a_ca_bundle_path_or_unverified(tls_server: tuple[str, Path], verify: Any) -> None:
    url, ca_path = tls_server
    session = AsyncSession(api(verify=str(ca_path) if verify == "ca_path" else verify))
    try:
        answer = await session._send(Request("GET", f"{url}/x"))
    finally:
        await session.aclose()
    assert (answer.status, answer.body) == (200, b"ok")


async def test_tls_unknown_ca_is_refused_before_anything_is_sent(tls_server: tuple[str, Path]) -> None:
    url, _ = tls_server
    session = AsyncSession(api(verify=True))
    try:
        with pytest.raises(TransportError) as raised:
            await session._send(Request("POST", f"{url}/x", idempotent=False))
    finally:
        await session.aclose()
    assert raised.value.sent is False
    assert "Certificate" in raised.value.kind
    # OpenSSL's reason, not os.strerror() of its error code ("Operation not permitted")
    assert "certificate verify failed" in raised.value.kind, raised.value.kind
    assert "Operation not permitted" not in raised.value.kind


async def test_a_name_that_does_not_resolve_says_so() -> None:
    try:
        socket.getaddrinfo("no-such-host.invalid", 80)
    except socket.gaierror as exc:
        reason = exc.strerror
    else:  # pragma: no cover - a resolver that answers for .invalid
        pytest.skip("this resolver answers for .invalid")
    session = AsyncSession(api())
    try:
        with pytest.raises(TransportError) as raised:
            await session._send(Request("GET", "http://no-such-host.invalid/x"))
    finally:
        await session.aclose()
    assert raised.value.sent is False
    assert reason is not None
    assert reason in raised.value.kind, raised.value.kind
    assert "Unknown error" not in raised.value.kind


async def test_a_missing_ca_bundle_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    session = AsyncSession(api(verify=str(missing)))
    try:
        with pytest.raises(JobProgressError) as raised:
            await session.run(session.api.send(Request("GET", "https://127.0.0.1:9/x"), None, what="read"))
    finally:
        await session.aclose()
    assert str(missing) in str(raised.value)
    assert "verify" in str(raised.value)


async def test_a_ca_bundle_is_read_off_the_event_loop(
    tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a file (a CA bundle on a slow or network disk) would stall every wait of the triggerer."""
    url, ca_path = tls_server
    loop_thread = threading.get_ident()
    readers: list[int] = []
    real = ssl.create_default_context

    def watched(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        readers.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", watched)
    session = AsyncSession(api(verify=str(ca_path)))
    try:
        answers = await asyncio.gather(*(session._send(Request("GET", f"{url}/x")) for _ in range(3)))
    finally:
        await session.aclose()
    assert [a.status for a in answers] == [200] * 3
    assert len(readers) == 1, "read once per session"
    assert loop_thread not in readers, "read on the event loop's thread"


def test_emulator_done_endpoint_is_404_while_running_then_200(emulator: VendorEmulator) -> None:
    import requests

    emulator.set_next_scenario("scriptx", Scenario(steps=2))
    [job_id] = submit("scriptx")
    done = f"{emulator.url}/_emulator/jobs/scriptx/{job_id}/done"
    assert requests.get(done, timeout=10).status_code == 404
    hook = ScriptXHook()
    while not hook.get_progress(job_id).is_terminal:
        pass
    answer = requests.get(done, timeout=10)
    assert answer.status_code == 200
    assert json.loads(answer.text)["state"] == "succeeded"
    assert requests.get(f"{emulator.url}/_emulator/jobs/scriptx/nope/done", timeout=10).status_code == 404
    assert emulator.count("GET", "/done") == 3, "done polls are in the call log, like vendor calls"


def test_emulator_secrets_rotate_over_http(emulator: VendorEmulator) -> None:
    import requests

    control = f"{emulator.url}/_emulator/secrets"
    assert requests.post(control, json={"scriptx_license": "new-license"}, timeout=10).status_code == 204
    assert json.loads(emulator.connections()["scriptx_default"])["password"] == "new-license"
    assert requests.post(control, json={"no_such_secret": "x"}, timeout=10).status_code == 400
    assert requests.post(control, json={"scriptx_license": ""}, timeout=10).status_code == 400


def test_emulator_stats_over_http_count_calls_and_open_connections(emulator: VendorEmulator) -> None:
    import requests

    with requests.Session() as http:  # one kept-alive connection for every call below
        for _ in range(3):
            assert http.get(f"{emulator.url}/_emulator/jobs/scriptx/nope/done", timeout=10).status_code == 404
        stats = http.get(f"{emulator.url}/_emulator/stats", timeout=10).json()
    counts = {"calls": stats["calls"], "open_connections": stats["open_connections"]}
    assert counts == {"calls": 3, "open_connections": 1}, "three logged calls, on the one connection still open"
    assert stats["vendors"]["scriptx"]["calls"] == 0, "the control API's calls are not the vendor's"
    assert len(emulator.calls) == 3, "the stats call itself is not logged"


def test_emulator_stops_while_a_client_holds_a_half_read_download(emulator: VendorEmulator) -> None:
    import base64

    emulator.set_next_scenario("scriptx", Scenario(steps=0, result_size=256 * 1024 * 1024))
    [token] = submit("scriptx")
    assert ScriptXHook().get_progress(token).is_terminal
    license_guid = json.loads(emulator.connections()["scriptx_default"])["password"]
    basic = base64.b64encode(f"{license_guid}:".encode()).decode()
    reader = socket.create_connection(("127.0.0.1", emulator.port))
    try:
        request = f"GET /api/v1/printPdf/download/{token} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\n\r\n"
        reader.sendall(request.encode())
        assert b" 200 " in reader.recv(1024)  # the answer started; the rest stays unread
        emulator.stop()  # must not wait for the download to drain
    finally:
        reader.close()


async def test_an_answered_request_keeps_nothing_of_its_task_alive(emulator: VendorEmulator) -> None:
    """A request's time limit is a timer on the loop; answered, the timer is cancelled, but asyncio keeps a cancelled
    timer (and the context it was made in) until its time comes. Made in the request's context, that timer held the
    request's task, and with it the task's result, for the whole time limit: each of the shared poller's listings
    (a task of its own, its snapshot the result) stayed in memory for minutes, 147 MB in a minute at 1,000 waits
    polling every second."""
    emulator.set_next_scenario("olconnect", Scenario(steps=100))
    hook = OLConnectHook("olconnect_default")
    job_id = hook.submit({"datamining": {"identifier": "a.csv", "config": "dm"}})

    class Result:
        """What a listing's task returns (its snapshot)."""

    results: list[weakref.ref[Result]] = []

    async def one() -> Result:
        await hook.aget_progress(job_id)
        result = Result()
        results.append(weakref.ref(result))
        return result

    # a wait's sleep, due before the requests' time limits: asyncio drops a cancelled timer at once only when it is
    # the next one due (in a triggerer thousands of waits' sleeps are)
    sleeping = asyncio.create_task(asyncio.sleep(5.0))
    try:
        for _ in range(5):
            await asyncio.create_task(one())
        await asyncio.sleep(0.1)  # the last task's wake-up handles run
        gc.collect()
        alive = [i for i, ref in enumerate(results) if ref() is not None]
        assert alive == [], "each task freed once answered"
    finally:
        sleeping.cancel()
        await hook.aclose()
        await ASYNC_SESSIONS.aclose_all()


async def test_a_flow_queued_for_its_turn_has_not_started(emulator: VendorEmulator) -> None:
    """Behind a short budget thousands of waits queue (20,000 mixed waits on the default budgets: 11,400 at once).
    A queued read holds its turn's place and nothing of its flow: not its generators, its request, its send (at
    20,000 waits those were a third of the triggerer's memory growth). Each flow starts when its first call's turn
    comes, and that call takes no second turn."""
    from airflow_provider_jobprogress.core.budget import RequestBudget

    job_id = submit("scriptx")[0]
    hook = ScriptXHook("scriptx_default")
    api = await hook._read_async_connection()
    now = [1000.0]
    budget = RequestBudget("scriptx_default", 60, clock=lambda: now[0])  # 1 a second, bursts of 5; time stands
    session = AsyncSession(api, budget=budget)
    started: list[int] = []

    def counted(index: int) -> Any:
        started.append(index)
        return (yield from api.poll(job_id))

    reads = [asyncio.ensure_future(session.run(counted(i), early_turn=True)) for i in range(8)]
    try:
        await asyncio.sleep(0.5)
        assert len(started) == 5, f"the burst's five started, the queued three not: {started}"
        now[0] += 10.0  # the budget's time moves on: the three take their turns (each within a second of its look)
        await asyncio.wait_for(asyncio.gather(*reads), 10)
    finally:
        for read in reads:
            read.cancel()
        await session.aclose()
    assert sorted(started) == list(range(8))
    assert budget.counts.calls == 8, "one turn a read"


async def test_an_optional_read_left_out_starts_nothing(emulator: VendorEmulator) -> None:
    """A listing that carries no percentage reads it only from a budget's spare half: on a Trial budget four of five
    such reads are left out, and each built its request before it was refused. Refused, it starts nothing."""
    from airflow_provider_jobprogress.core.budget import BudgetShort, RequestBudget

    job_id = submit("scriptx")[0]
    hook = ScriptXHook("scriptx_default")
    api = await hook._read_async_connection()
    budget = RequestBudget("scriptx_default", 60)  # bursts of 5, the spare half: 2 optional calls
    session = AsyncSession(api, budget=budget)
    started: list[int] = []

    def counted(index: int) -> Any:
        started.append(index)
        return (yield from api.poll(job_id))

    outcomes: list[str] = []
    try:
        for index in range(5):
            try:
                await session.run(counted(index), optional=True, early_turn=True)
                outcomes.append("sent")
            except BudgetShort:
                outcomes.append("left out")
    finally:
        await session.aclose()
    assert outcomes.count("sent") >= 1, outcomes
    assert outcomes.count("left out") >= 1, outcomes
    assert len(started) == outcomes.count("sent"), f"only the reads sent started: {outcomes}, {started}"


async def test_waits_on_one_connection_share_its_api_object_until_it_is_read_again(
    emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each wait has a hook of its own; thousands made one API object and session digest each from the same read of
    the connection. They share them now; a new read (an edited connection) makes new ones."""
    hooks = [OLConnectHook("olconnect_default", request_retry=FAST_RETRY) for _ in range(3)]
    first = [await hook._read_async_connection() for hook in hooks]
    assert first[0] is first[1] is first[2]
    other = OLConnectHook("olconnect_default", request_retry={"attempts": 1})
    assert await other._read_async_connection() is not first[0], "the same read, a retry policy of its own"
    assert other._async_api is not None
    assert other._async_api.request_retry.attempts == 1
    slower = OLConnectHook("olconnect_default", request_retry=FAST_RETRY, timeout=(5.0, 300.0))
    await slower._read_async_connection()
    assert slower._async_key != hooks[0]._async_key, "other timeouts, a session of their own"
    monkeypatch.setattr(base_hook, "CONNECTION_TTL", 0.0)
    again = await OLConnectHook("olconnect_default", request_retry=FAST_RETRY)._read_async_connection()
    assert again is not first[0], "a new read of the connection, a new API object"


async def test_a_call_a_vendor_does_not_make_takes_no_turn(emulator: VendorEmulator) -> None:
    """OL Connect reads ended operations one by one (its ``read_ended`` makes no call) and ScriptX has no listing
    (its ``list_running`` makes none): on a budget with no turn free they answer at once and spend nothing (a
    turn taken before every flow queued them behind every wait's read, holding the poller's listing)."""
    from airflow_provider_jobprogress.core.budget import BUDGETS
    from airflow_provider_jobprogress.core.model import JobProgress, JobState

    BUDGETS.clear()
    olconnect, scriptx = OLConnectHook("olconnect_default"), ScriptXHook("scriptx_default")
    try:
        await olconnect.asession()
        await scriptx.asession()
        budgets = [BUDGETS.find("olconnect_default"), BUDGETS.find("scriptx_default")]
        for budget in budgets:
            assert budget is not None
            while budget.try_acquire() == 0:  # every turn spent
                pass
        calls = [b.counts.calls for b in budgets if b is not None]
        running = JobProgress("OL Connect", "op-1", JobState.RUNNING)
        assert await asyncio.wait_for(olconnect.aread_ended({"op-1": running}), 0.5) == {}
        assert await asyncio.wait_for(scriptx.alist_running(), 0.5) is None
        assert [b.counts.calls for b in budgets if b is not None] == calls
    finally:
        await olconnect.aclose()
        await scriptx.aclose()
        BUDGETS.clear()
