"""Azurite, Microsoft's Azure Storage API server (npm ``azurite``), run on 127.0.0.1 for tests and benchmarks.

With :meth:`VendorEmulator.serve_blobs_from`, the iTwin emulator uploads job outputs to it and its read-access
and bucket answers carry Azurite's own SAS URLs: downloads then meet Azure's real SAS, listing and range
behaviour instead of the emulator's imitation. Needs Node.js and ``azurite`` (``make azurite`` installs it
under ``.tools/``), and ``azure-storage-blob`` (the ``test`` extra) to upload and sign.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

#: Azurite's well-known development account (published by Microsoft; not a secret)
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"Blob service successfully listens on (http://\S+)")


def connection_string(url: str) -> str:
    """The Azure connection string of an Azurite blob server at ``url`` (``http://127.0.0.1:PORT``)."""
    return f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};BlobEndpoint={url}/{ACCOUNT};"


def find_azurite() -> str | None:
    """The ``azurite-blob`` command: $AZURITE_BLOB, the repository's ``.tools`` install, or the PATH."""
    explicit = os.environ.get("AZURITE_BLOB")
    if explicit:
        return explicit
    local = ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    return shutil.which("azurite-blob")


class Azurite:
    """An Azurite blob server on a free port of 127.0.0.1, in memory; a context manager that stops it."""

    def __init__(self, command: str | None = None, *, start_timeout: float = 60.0) -> None:
        found = command or find_azurite()
        if found is None:
            raise FileNotFoundError("azurite-blob not found: run `make azurite` (needs Node.js and npm)")
        self.command = found
        self.start_timeout = start_timeout
        self.url = ""
        self._process: subprocess.Popen[str] | None = None
        self._workdir = tempfile.mkdtemp(prefix="jobprogress-azurite-")

    @property
    def account_url(self) -> str:
        return f"{self.url}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return connection_string(self.url)

    def start(self) -> Azurite:
        args = [
            self.command,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--disableTelemetry",
        ]
        # Its own process group, so stop() ends node and anything it started, and nothing else.
        self._process = subprocess.Popen(
            args,
            cwd=self._workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.url = self._wait_for_url()
        return self

    def _wait_for_url(self) -> str:
        assert self._process is not None
        assert self._process.stdout is not None
        found: list[str] = []
        seen: list[str] = []
        stdout = self._process.stdout
        ready = threading.Event()

        def read() -> None:
            for line in stdout:
                seen.append(line.rstrip())
                match = LISTENING.search(line)
                if match:
                    found.append(match.group(1))
                    break
            ready.set()  # listening, or the output ended (Azurite exited)
            # Keep draining so a chatty Azurite never blocks on a full pipe.
            for _ in stdout:
                pass

        threading.Thread(target=read, daemon=True, name="azurite-output").start()
        ready.wait(timeout=self.start_timeout)
        if not found:
            self.stop()
            raise RuntimeError(f"Azurite did not start within {self.start_timeout:g} s: {' | '.join(seen[-5:])}")
        return found[0]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def blob_store(self) -> AzureBlobStore:
        """The emulator's view of this server: upload outputs, hand out read+list SAS URLs."""
        return AzureBlobStore(self.connection_string)


class AzureBlobStore:
    """Outputs published to a real Azure Storage API (Azurite), with container SAS URLs like Bentley's."""

    def __init__(self, connection_string: str) -> None:
        from azure.storage.blob import BlobServiceClient

        self._service = BlobServiceClient.from_connection_string(connection_string)
        self._lock = threading.Lock()
        self._published: set[tuple[str, str]] = set()

    def publish(self, container: str, blobs: Mapping[str, tuple[int, Iterable[bytes]]], lifetime: float) -> str:
        """Upload the blobs not uploaded yet (streamed), and return a read+list SAS URL of the container."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        client = self._service.get_container_client(container)
        with self._lock:
            with contextlib.suppress(ResourceExistsError):
                client.create_container()
            for name, (size, chunks) in blobs.items():
                if (container, name) not in self._published:
                    source: Any = _Reader(iter(chunks))  # file-like: Azure's client reads it in blocks
                    client.upload_blob(name, source, length=size, overwrite=True, max_concurrency=2)
                    self._published.add((container, name))
        credential: Any = self._service.credential
        sas = generate_container_sas(
            account_name=credential.account_name,
            container_name=container,
            account_key=credential.account_key,
            permission=ContainerSasPermissions(read=True, list=True),
            expiry=datetime.now(UTC) + timedelta(seconds=lifetime),
        )
        return f"{client.url}?{sas}"


class _Reader:
    """A file-like view of a chunk iterator, so Azure's client streams an upload of any size."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data
