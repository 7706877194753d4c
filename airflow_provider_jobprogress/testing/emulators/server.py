"""One HTTP server (aiohttp.web, on a thread of its own): the three vendor APIs, the control API, the call log.

aiohttp.web rather than http.server's threads, by measurement: benchmarks/bench_triggers.py's reference
opens a connection per poll, and with a thread per connection the emulator spent more than a core and
set the machine's load average above 400 at 5,000 waits, so it measured the emulator, not the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from . import itwin, olconnect, scriptx
from .model import (
    ITWIN_PROGRESS_RETENTION,
    SERVER_ERRORS,
    VENDORS,
    Call,
    EmulatorState,
    Fault,
    Faults,
    JobRecord,
    Quota,
    QuotaRefusal,
    Reply,
    Request,
    Scenario,
    ScenarioError,
    check_vendor,
    result_chunks,
    sha256_of,
)

log = logging.getLogger(__name__)

CONTROL = "/_emulator"
VendorHandler = Callable[[Request, EmulatorState], Reply]


@dataclass(frozen=True)
class VendorRoute:
    """One vendor's API on this server: its paths, its answers, and how its quota counts and refuses."""

    vendor: str
    prefixes: tuple[str, ...]
    handle: VendorHandler
    #: who a call counts against in the vendor's quota (an OAuth client, "" for the whole server); None: uncounted
    quota_key: Callable[[Request, EmulatorState], str | None]
    #: the vendor's answer to a call past its quota
    over_quota: Callable[[QuotaRefusal], Reply]


VENDOR_ROUTES: tuple[VendorRoute, ...] = (
    VendorRoute(olconnect.VENDOR, olconnect.PREFIXES, olconnect.handle, olconnect.quota_key, olconnect.over_quota),
    VendorRoute(scriptx.VENDOR, scriptx.PREFIXES, scriptx.handle, scriptx.quota_key, scriptx.over_quota),
    VendorRoute(itwin.VENDOR, itwin.PREFIXES, itwin.handle, itwin.quota_key, itwin.over_quota),
)


def _vendor_of(path: str) -> VendorRoute | None:
    for target in VENDOR_ROUTES:
        if any(path == prefix or path.startswith(prefix + "/") for prefix in target.prefixes):
            return target
    return None


#: pending connections the listening socket holds: a burst of new connections (thousands of waits starting
#: at once) must not overflow it, or Linux answers with resets. A real vendor server accepts them.
BACKLOG = 1024
SERVER_HEADER = "JobProgressEmulator/1.0"


class _Server:
    """The emulator's HTTP side: an aiohttp.web app on its own event loop in a daemon thread."""

    def __init__(self, emulator: VendorEmulator, host: str, port: int) -> None:
        self.emulator = emulator
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self.port = port
        self._thread = threading.Thread(target=self._run, args=(host, port), name="vendor-emulator", daemon=True)

    def start(self) -> int:
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise self._failure
        return self.port

    def _run(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._listen(host, port))
        except BaseException as exc:  # reported to start() in the caller's thread
            self._failure = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.close()

    async def _listen(self, host: str, port: int) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        # No access log: the default writes every request line (query strings, so SAS signatures included).
        # Stopping waits this long for answers still being written (a download its client abandoned).
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=BACKLOG)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    @property
    def open_connections(self) -> int:
        runner = self._runner
        server = None if runner is None else runner.server
        return 0 if server is None else len(server.connections)

    async def _serve(self, http: web.Request) -> web.StreamResponse:
        request = Request(
            method=http.method,
            # the path as sent, still percent-encoded (as the threaded server had it): a hostile id "..%2Fx"
            # must reach the handlers as one path segment, not be decoded and normalised away by aiohttp
            path=http.raw_path.partition("?")[0],
            query=dict(parse_qsl(http.query_string, keep_blank_values=True)),
            headers={name.lower(): value for name, value in http.headers.items()},
            body=await http.read(),
        )
        emulator = self.emulator
        target = _vendor_of(request.path)
        vendor = None if target is None else target.vendor
        fault, faults = emulator.state.fault() if target is not None else (None, None)
        if fault in ("outage", "reset"):
            # Recorded as status 0: the call reached the server and got no answer.
            emulator.state.record(Call(request.method, request.path, 0, vendor, None, time.time(), _peer(http)))
            _reset(http)
            return web.Response(status=500)  # never sent: the connection is gone
        try:
            if fault is not None and faults is not None:
                reply = _struck(fault, faults, emulator.state)
            else:
                reply = _answer(request, emulator, target)
        except ScenarioError as exc:
            reply = Reply.text(400, f"emulator: invalid scenario: {exc}")
        except Exception:
            log.exception("emulator failed on %s %s", request.method, request.path)
            reply = Reply.text(500, "emulator internal error")
        # Record before answering: a client that has its answer must find its call in the log.
        if not request.path.startswith(CONTROL) or _DONE_PATH.fullmatch(request.path):
            call = Call(request.method, request.path, reply.status, vendor, reply.job_id, time.time(), _peer(http))
            emulator.state.record(call)
        log.debug("%s %s -> %s", request.method, request.path, reply.status)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        headers = {"Server": SERVER_HEADER, **reply.headers}
        if reply.stream is None:
            if reply.status == 204:  # RFC 9110: a 204 carries no body and no Content-Length
                return web.Response(status=204, headers=headers)
            return web.Response(status=reply.status, body=reply.body, headers=headers)
        return await _stream(http, reply, headers)


def _peer(http: web.Request) -> str:
    peername = http.transport.get_extra_info("peername") if http.transport is not None else None
    return f"{peername[0]}:{peername[1]}" if peername else ""


def _reset(http: web.Request) -> None:
    """Drop the connection with a TCP reset (SO_LINGER 0), as a crashed server or a cut network does."""
    transport = http.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _struck(fault: Fault, faults: Faults, state: EmulatorState) -> Reply:
    """The answer of an overloaded vendor or of the proxy in front of it: no vendor body."""
    if fault == "rate_limited":
        reply = Reply.text(429, "Too Many Requests")
        reply.headers["Retry-After"] = str(faults.retry_after)
        return reply
    with state.lock:
        state.struck += 1
        status = SERVER_ERRORS[state.struck % len(SERVER_ERRORS)]
    return Reply.text(status, "Server Error")


def _answer(request: Request, emulator: VendorEmulator, target: VendorRoute | None) -> Reply:
    if request.path == CONTROL or request.path.startswith(CONTROL + "/"):
        return emulator.control(request)
    if target is None:
        return Reply.text(404, "Not Found")
    state = emulator.state
    if state.quotas[target.vendor]:  # read without the lock: no quota costs a call nothing
        who = target.quota_key(request, state)
        refusal = None if who is None else state.admit(target.vendor, who)
        if refusal is not None:
            return target.over_quota(refusal)
    return target.handle(request, state)


async def _stream(http: web.Request, reply: Reply, headers: dict[str, str]) -> web.StreamResponse:
    """Write the stream chunk by chunk, hashing what went out; cut the connection at drop_after."""
    assert reply.stream is not None
    response = web.StreamResponse(status=reply.status, headers=headers)
    response.content_length = reply.length
    limit = reply.length if reply.drop_after is None else min(reply.drop_after, reply.length)
    sent = 0
    sha = hashlib.sha256()
    recorded = False
    stall_at = reply.length // 2 if reply.stall else None
    try:
        await response.prepare(http)
        for chunk in reply.stream:
            piece = chunk[: limit - sent]
            if stall_at is not None and sent + len(piece) > stall_at:
                # the first half out (a chunk boundary at most past it), then the pause a worker can die in
                await response.write(piece)
                sha.update(piece)
                sent += len(piece)
                await asyncio.sleep(reply.stall)
                stall_at = None
                if sent >= limit:
                    break
                continue
            sha.update(piece)
            if sent + len(piece) >= limit and reply.on_sent is not None:
                # Record before the last bytes leave: a client that has them must find the record.
                reply.on_sent(sha.hexdigest(), limit, limit == reply.length)
                recorded = True
            await response.write(piece)
            sent += len(piece)
            if sent >= limit:
                break
    except ConnectionError:
        pass  # the client went away; what it got is recorded below
    finally:
        if not recorded and reply.on_sent is not None:
            reply.on_sent(sha.hexdigest(), sent, sent == reply.length)
    if sent != reply.length and http.transport is not None:
        # Content-Length promised more: closing now (after what was written) is what a dropped connection
        # looks like. aiohttp then finds the transport closed when it ends the response, and lets it be.
        http.transport.close()
    return response


_JOB_PATH = re.compile(f"{CONTROL}/jobs/([^/]+)/([^/]+)")
_DONE_PATH = re.compile(f"{CONTROL}/jobs/([^/]+)/([^/]+)/done")
_SHA_PATH = re.compile(f"{CONTROL}/jobs/([^/]+)/([^/]+)/result-sha256")


class VendorEmulator:
    """OL Connect, ScriptX.Services and iTwin emulated on one local HTTP server; a context manager.

    Credentials it accepts are the class constants below; they are test values, not secrets.
    """

    OLCONNECT_USER = olconnect.USER
    OLCONNECT_PASSWORD = olconnect.PASSWORD
    SCRIPTX_LICENSE = scriptx.LICENSE_GUID
    ITWIN_CLIENT_ID = itwin.CLIENT_ID
    ITWIN_CLIENT_SECRET = itwin.CLIENT_SECRET
    ITWIN_ID = itwin.ITWIN_ID
    CONN_TYPES = {"olconnect": "olconnect", "scriptx": "scriptx", "itwin": "itwin"}

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token_ttl: int = 3600,
        olconnect_security: bool = True,
        retention: float = 300.0,
        secrets: Mapping[str, str] | None = None,
        itwin_progress_retention: float = ITWIN_PROGRESS_RETENTION,
        quotas: Mapping[str, Quota | Sequence[Quota]] | None = None,
    ) -> None:
        """``secrets`` overrides the accepted credentials (olconnect_password, scriptx_license,
        itwin_client_secret), e.g. with distinctive values a test then searches logs for.

        ``retention``: seconds OL Connect keeps an ended operation for getProgress; ``itwin_progress_retention``:
        seconds a finished iTwin v1 job's progress stays readable (Bentley: 30 days; 0 answers 404
        ProgressNotFound from the end on, as a job read after those 30 days). ``quotas``: as ``set_quota``,
        per vendor."""
        self.host = host
        self.port = port
        accepted = {
            "olconnect_password": self.OLCONNECT_PASSWORD,
            "scriptx_license": self.SCRIPTX_LICENSE,
            "itwin_client_secret": self.ITWIN_CLIENT_SECRET,
        }
        unknown = set(secrets or {}) - set(accepted)
        if unknown:
            raise ValueError(f"unknown emulator secrets {sorted(unknown)}; known: {sorted(accepted)}")
        accepted.update(secrets or {})
        self.state = EmulatorState(
            token_ttl=token_ttl,
            olconnect_security=olconnect_security,
            retention=retention,
            secrets=accepted,
            itwin_progress_retention=itwin_progress_retention,
        )
        for vendor, limits in (quotas or {}).items():
            self.set_quota(vendor, *([limits] if isinstance(limits, Quota) else limits))
        self._server: _Server | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> VendorEmulator:
        if self._server is not None:
            return self
        server = _Server(self, self.host, self.port)
        self.port = server.start()
        self._server = server
        self.state.base_url = self.url
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> VendorEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- scenarios, tokens -----------------------------------------------------------------------
    def set_next_scenario(self, vendor: str, scenario: Scenario) -> None:
        """Queue `scenario` for the next job submitted to `vendor` (FIFO)."""
        self.state.queue_scenario(vendor, scenario)

    def set_default_scenario(self, vendor: str, scenario: Scenario) -> None:
        self.state.queue_scenario(vendor, scenario, default=True)

    def set_faults(self, faults: Faults) -> None:
        """Strike every vendor call with ``faults`` from now on (5xx, resets, 429 bursts, an outage);
        ``set_faults(Faults())`` ends them. Over HTTP: ``POST /_emulator/faults`` with the fields as JSON."""
        self.state.set_faults(faults)

    def set_quota(self, vendor: str, *limits: Quota) -> None:
        """Hold ``vendor``'s calls to ``limits`` from now on, to rehearse a vendor's (or your proxy's) limit; none
        removes the quota. Each ``Quota(calls, seconds)`` is a sliding window: at most ``calls`` calls in any
        ``seconds``; past it a 429 with ``Retry-After`` (seconds until the window frees a call) in the vendor's
        shape. iTwin counts per OAuth client, its API calls only (not the token endpoint, not blob downloads);
        OL Connect and ScriptX count every call to the server. Over HTTP: ``POST /_emulator/quota`` with
        ``{"vendor": …, "limits": [{"calls": 500, "seconds": 60}]}``. A reset empties the windows and keeps
        the quotas."""
        self.state.set_quota(vendor, limits)

    def serve_blobs_from(self, store: Any) -> None:
        """Serve iTwin outputs from ``store`` (``Azurite(...).blob_store()``: a real Azure Storage API) instead of
        this server's own blob endpoint; read-access and bucket answers then carry the store's SAS URLs."""
        self.state.blob_store = store

    def expire_tokens(self) -> None:
        """Every OL Connect and iTwin token issued so far is expired from now on."""
        self.state.expire_tokens()

    def reset(self) -> None:
        self.state.reset()

    def finish_jobs(self, vendor: str, job_ids: Sequence[str]) -> None:
        """End these submitted jobs now, all at one instant (same end time), as their scenarios end them.

        Jobs end on polls or after a duration otherwise; a test of "a job finished that nobody polls"
        (an event trigger listing jobs) needs them to end on their own, some at the very same time.
        """
        check_vendor(vendor)
        with self.state.lock:
            now = time.monotonic()
            jobs = [self.state.job(vendor, job_id) for job_id in job_ids]
            missing = [job_id for job_id, job in zip(job_ids, jobs, strict=True) if job is None or job.started is None]
            if missing:
                raise KeyError(f"{vendor} has no submitted job {missing!r}")
            for job in jobs:
                assert job is not None
                if job.finished_at(now) is None:
                    job.complete_now(now)

    def set_secrets(self, secrets: Mapping[str, str]) -> None:
        """Accept these credentials from now on, and no longer the ones they replace (a rotated secret).

        Names as in ``secrets=`` of the constructor. Tokens already issued stay valid until they expire
        (``expire_tokens`` ends them), as with the real vendors.
        """
        unknown = set(secrets) - set(self.state.secrets)
        if unknown:
            raise ValueError(f"unknown emulator secrets {sorted(unknown)}; known: {sorted(self.state.secrets)}")
        with self.state.lock:
            self.state.secrets.update(secrets)

    # -- observations ----------------------------------------------------------------------------
    @property
    def open_connections(self) -> int:
        """TCP connections the server holds open now (a client that closed all its sockets leaves 0)."""
        return 0 if self._server is None else self._server.open_connections

    def stats(self) -> dict[str, Any]:
        """Counters for benchmarks and tests: open connections, recorded calls; per vendor (``vendors``) its
        calls, those answered 429 (``rate_limited``: quota, fault bursts and scenarios alike) and those the
        quota refused (``over_quota``); and the ``quotas`` set (vendor -> list of {calls, seconds})."""
        with self.state.lock:
            calls = len(self.state.calls)
            quotas = {vendor: [quota.to_dict() for quota in limits] for vendor, limits in self.state.quotas.items()}
        return {
            "open_connections": self.open_connections,
            "calls": calls,
            "vendors": self.state.vendor_stats(),
            "quotas": quotas,
        }

    @property
    def calls(self) -> list[Call]:
        return self.state.snapshot_calls()

    def count(self, method: str, path_contains: str) -> int:
        return sum(1 for c in self.calls if c.method == method.upper() and path_contains in c.path)

    def job(self, vendor: str, job_id: str) -> JobRecord:
        check_vendor(vendor)
        with self.state.lock:
            job = self.state.job(vendor, job_id)
            if job is None:
                raise KeyError(f"{vendor} has no job {job_id!r}")
            return job.snapshot(time.monotonic())

    def result_bytes(self, vendor: str, job_id: str, index: int = 0) -> Iterator[bytes]:
        """What a download of result file `index` serves, chunk by chunk."""
        check_vendor(vendor)
        job = self.state.job(vendor, job_id)
        if job is None:
            raise KeyError(f"{vendor} has no job {job_id!r}")
        if not 0 <= index < job.result_count:
            raise IndexError(f"{vendor} job {job_id} has {job.result_count} result file(s), not index {index}")
        return result_chunks(job.job_id, index, job.scenario.result_size, job.result_prefix)

    def result_sha256(self, vendor: str, job_id: str, index: int = 0) -> str:
        return sha256_of(self.result_bytes(vendor, job_id, index))

    def connections(self) -> dict[str, str]:
        """Airflow connection JSON per default connection id (and ``itwin_reality_analysis``), pointing here."""
        ol = {
            "conn_type": self.CONN_TYPES["olconnect"],
            "host": self.host,
            "port": self.port,
            "schema": "http",
            "login": self.OLCONNECT_USER,
            "password": self.state.secret("olconnect_password"),
            "extra": {"auth": "token"},
        }
        sx = {
            "conn_type": self.CONN_TYPES["scriptx"],
            "host": self.host,
            "port": self.port,
            "schema": "http",
            "password": self.state.secret("scriptx_license"),
            "extra": {"variant": "cloud"},
        }
        it: dict[str, Any] = {
            "conn_type": self.CONN_TYPES["itwin"],
            "login": self.ITWIN_CLIENT_ID,
            "password": self.state.secret("itwin_client_secret"),
            "extra": {
                "api": "realitydataanalysis",
                "base_url": self.url,
                "auth_url": f"{self.url}/connect/token",
                "scope": itwin.SCOPE,
                "itwin_id": self.ITWIN_ID,
            },
        }
        conns = {
            f"{name}_default": json.dumps(conn) for name, conn in (("olconnect", ol), ("scriptx", sx), ("itwin", it))
        }
        # Bentley's current Reality Analysis (v2), beside the v1 default: what its example DAG uses.
        conns["itwin_reality_analysis"] = json.dumps({**it, "extra": {**it["extra"], "api": "reality-analysis"}})
        return conns

    # -- control API over HTTP -------------------------------------------------------------------
    def control(self, request: Request) -> Reply:
        """Answer /_emulator/*: the same controls as the Python API, for tests in other processes."""
        path, method = request.path, request.method
        if (method, path) == ("GET", f"{CONTROL}/calls"):
            # ?since=N: only the calls after the first N (a benchmark reads its own window, not the whole log)
            since = request.query.get("since", "0")
            if not since.isdigit():
                return Reply.json(400, {"error": "since must be a number of calls"})
            return Reply.json(200, [call.to_dict() for call in self.calls[int(since) :]])
        if (method, path) == ("GET", f"{CONTROL}/connections"):
            return Reply.json(200, self.connections())
        if (method, path) == ("POST", f"{CONTROL}/scenario"):
            return self._control_scenario(request)
        if (method, path) == ("POST", f"{CONTROL}/faults"):
            return self._control_faults(request)
        if (method, path) == ("POST", f"{CONTROL}/quota"):
            return self._control_quota(request)
        if (method, path) == ("POST", f"{CONTROL}/expire-tokens"):
            self.expire_tokens()
            return Reply.empty(204)
        if (method, path) == ("POST", f"{CONTROL}/reset"):
            self.reset()
            return Reply.empty(204)
        if (method, path) == ("POST", f"{CONTROL}/secrets"):
            return self._control_secrets(request)
        if (method, path) == ("GET", f"{CONTROL}/stats"):
            return Reply.json(200, self.stats())
        done = _DONE_PATH.fullmatch(path)
        if method == "GET" and done is not None:
            return self._done(*done.groups())
        if method == "GET":
            return self._control_job(request)
        return Reply.json(404, {"error": f"no control endpoint {method} {path}"})

    def _control_scenario(self, request: Request) -> Reply:
        try:
            body = request.json()
        except ValueError:
            return Reply.json(400, {"error": "body must be JSON"})
        if not isinstance(body, dict) or body.get("vendor") not in VENDORS:
            return Reply.json(400, {"error": f"vendor must be one of {list(VENDORS)}"})
        scenario = Scenario.from_dict(body.get("scenario") or {})
        self.state.queue_scenario(body["vendor"], scenario, default=bool(body.get("default")))
        return Reply.empty(204)

    def _control_faults(self, request: Request) -> Reply:
        try:
            body = request.json()
        except ValueError:
            return Reply.json(400, {"error": "body must be JSON"})
        self.set_faults(Faults.from_dict(body if body is not None else {}))
        return Reply.empty(204)

    def _control_quota(self, request: Request) -> Reply:
        try:
            body = request.json()
        except ValueError:
            return Reply.json(400, {"error": "body must be JSON"})
        if not isinstance(body, dict) or body.get("vendor") not in VENDORS or not isinstance(body.get("limits"), list):
            return Reply.json(400, {"error": f'body must be {{"vendor": one of {list(VENDORS)}, "limits": [...]}}'})
        try:
            limits = [Quota.from_dict(limit) for limit in body["limits"]]
        except ScenarioError as exc:
            return Reply.json(400, {"error": str(exc)})
        self.set_quota(body["vendor"], *limits)
        return Reply.empty(204)

    def _control_secrets(self, request: Request) -> Reply:
        try:
            body = request.json()
        except ValueError:
            return Reply.json(400, {"error": "body must be JSON"})
        if not isinstance(body, dict) or not all(isinstance(v, str) and v for v in body.values()):
            return Reply.json(400, {"error": "body must map secret names to non-empty strings"})
        try:
            self.set_secrets(body)
        except ValueError as exc:
            return Reply.json(400, {"error": str(exc)})
        return Reply.empty(204)

    def _done(self, vendor: str, job_id: str) -> Reply:
        """The generic "is it over" endpoint a plain HTTP sensor can poll: 404 while running, 200 when ended."""
        if vendor not in VENDORS:
            return Reply.json(404, {"error": f"vendor must be one of {list(VENDORS)}"}).for_job(job_id)
        with self.state.lock:
            job = self.state.job(vendor, job_id)
            state = None if job is None else job.state(time.monotonic())
        if state is None:
            return Reply.json(404, {"error": f"{vendor} has no job {job_id!r}"}).for_job(job_id)
        if state in ("unsubmitted", "running"):
            return Reply.json(404, {"state": state}).for_job(job_id)
        return Reply.json(200, {"state": state}).for_job(job_id)

    def _control_job(self, request: Request) -> Reply:
        sha = _SHA_PATH.fullmatch(request.path)
        match = sha or _JOB_PATH.fullmatch(request.path)
        if match is None or match.group(1) not in VENDORS:
            return Reply.json(404, {"error": f"no control endpoint GET {request.path}"})
        vendor, job_id = match.groups()
        try:
            if sha is None:
                return Reply.json(200, self.job(vendor, job_id).to_dict())
            index = int(request.query.get("index", "0"))
            return Reply.json(200, {"sha256": self.result_sha256(vendor, job_id, index)})
        except (KeyError, IndexError, ValueError) as exc:
            return Reply.json(404, {"error": str(exc)})
