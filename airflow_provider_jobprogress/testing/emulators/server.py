"""One threaded HTTP server hosting the three vendor APIs, the control API and the call log."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from . import itwin, olconnect, scriptx
from .model import (
    VENDORS,
    Call,
    EmulatorState,
    JobRecord,
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
VENDOR_ROUTES: tuple[tuple[str, tuple[str, ...], VendorHandler], ...] = (
    (olconnect.VENDOR, olconnect.PREFIXES, olconnect.handle),
    (scriptx.VENDOR, scriptx.PREFIXES, scriptx.handle),
    (itwin.VENDOR, itwin.PREFIXES, itwin.handle),
)


def _vendor_of(path: str) -> tuple[str, VendorHandler] | None:
    for vendor, prefixes, handler in VENDOR_ROUTES:
        if any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes):
            return vendor, handler
    return None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Many tests start emulators back to back; a fresh port each time, never a lingering one.
    allow_reuse_address = False
    # socketserver's default listen backlog is 5: a burst of new connections (hundreds of waits starting at
    # once) overflows it and Linux answers with resets. A real vendor server accepts them.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], emulator: VendorEmulator) -> None:
        self.emulator = emulator
        self.open_connections = 0
        self.accepted_connections = 0
        self._count_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that closes or resets its connection is normal (pools do, at shutdown): no traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Counted here and in shutdown_request: tests check that clients leave no connection open.
        with self._count_lock:
            self.open_connections += 1
            self.accepted_connections += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            with self._count_lock:
                self.open_connections -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real servers; every answer has a Content-Length
    server_version = "JobProgressEmulator/1.0"
    # Headers and body leave in two writes; with Nagle on, the second waits for the client's delayed ACK
    # (40 ms on Linux) on every answer of a kept-alive connection.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes every request line (query strings included, so SAS signatures) to stderr.
        return

    @property
    def _emulator(self) -> VendorEmulator:
        return cast(_HTTPServer, self.server).emulator

    def _serve(self) -> None:
        request = self._read_request()
        emulator = self._emulator
        target = _vendor_of(request.path)
        vendor = None if target is None else target[0]
        try:
            reply = self._answer(request, emulator, target)
        except ScenarioError as exc:
            reply = Reply.text(400, f"emulator: invalid scenario: {exc}")
        except Exception:
            log.exception("emulator failed on %s %s", request.method, request.path)
            reply = Reply.text(500, "emulator internal error")
        # Record before answering: a client that has its answer must find its call in the log.
        if not request.path.startswith(CONTROL) or _DONE_PATH.fullmatch(request.path):
            peer = f"{self.client_address[0]}:{self.client_address[1]}"
            call = Call(request.method, request.path, reply.status, vendor, reply.job_id, time.time(), peer)
            emulator.state.record(call)
        self._write(reply)
        log.debug("%s %s -> %s", request.method, request.path, reply.status)

    def _answer(self, request: Request, emulator: VendorEmulator, target: tuple[str, VendorHandler] | None) -> Reply:
        if request.path == CONTROL or request.path.startswith(CONTROL + "/"):
            return emulator.control(request)
        if target is None:
            return Reply.text(404, "Not Found")
        return target[1](request, emulator.state)

    def _read_request(self) -> Request:
        parts = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        return Request(
            method=self.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=headers,
            body=self._read_body(headers),
        )

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _write(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        length = reply.length if reply.stream is not None else len(reply.body)
        if reply.status != 204:  # RFC 9110: a 204 carries no Content-Length
            self.send_header("Content-Length", str(length))
        try:
            if reply.stream is None:
                # Head and body of a small answer in one write: two segments cost the client a second wakeup,
                # read and parse per answer, which is what a benchmark of many polls would measure.
                head: list[bytes] = self._headers_buffer  # type: ignore[attr-defined]  # http.server's, since 3.3
                head.extend([b"\r\n", reply.body])
                self.flush_headers()
            else:
                self.end_headers()
                self._stream(reply)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _stream(self, reply: Reply) -> None:
        """Write the stream chunk by chunk, hashing what went out; cut the connection at drop_after."""
        assert reply.stream is not None
        limit = reply.length if reply.drop_after is None else min(reply.drop_after, reply.length)
        sent = 0
        sha = hashlib.sha256()
        recorded = False
        try:
            for chunk in reply.stream:
                piece = chunk[: limit - sent]
                sha.update(piece)
                if sent + len(piece) >= limit and reply.on_sent is not None:
                    # Record before the last bytes leave: a client that has them must find the record.
                    reply.on_sent(sha.hexdigest(), limit, limit == reply.length)
                    recorded = True
                self.wfile.write(piece)
                sent += len(piece)
                if sent >= limit:
                    break
        finally:
            if not recorded and reply.on_sent is not None:
                reply.on_sent(sha.hexdigest(), sent, sent == reply.length)
        if sent != reply.length:
            self._abort()

    def _abort(self) -> None:
        # Content-Length promised more: closing now is exactly what a dropped connection looks like.
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


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
    ) -> None:
        """``secrets`` overrides the accepted credentials (olconnect_password, scriptx_license,
        itwin_client_secret), e.g. with distinctive values a test then searches logs for."""
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
            token_ttl=token_ttl, olconnect_security=olconnect_security, retention=retention, secrets=accepted
        )
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> VendorEmulator:
        if self._server is not None:
            return self
        self._server = _HTTPServer((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self.state.base_url = self.url
        # A short poll interval makes stop() quick: tests start and stop an emulator each.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"vendor-emulator-{self.port}"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

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

    def expire_tokens(self) -> None:
        """Every OL Connect and iTwin token issued so far is expired from now on."""
        self.state.expire_tokens()

    def reset(self) -> None:
        self.state.reset()

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

    def stats(self) -> dict[str, int]:
        """Counters for benchmarks and tests: open and accepted connections, recorded calls."""
        server = self._server
        return {
            "open_connections": 0 if server is None else server.open_connections,
            "accepted_connections": 0 if server is None else server.accepted_connections,
            "calls": len(self.state.calls),
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
        """Airflow connection JSON per default connection id, pointing at this emulator."""
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
        it = {
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
        return {
            f"{name}_default": json.dumps(conn) for name, conn in (("olconnect", ol), ("scriptx", sx), ("itwin", it))
        }

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
