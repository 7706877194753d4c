"""Bringing results home: every file of a result lands whole, inside its destination, and a failed fetch
never leaves the destination with less than it had.

The destination is checked before any result byte is requested (``check_destination``, also at DAG
parse time), then created and proven writable (``ResultStore.prepare``) before a download starts, so
a result a vendor serves only once is never collected into a place that cannot keep it. Each file is
streamed into a place no reader sees (a hidden staging folder on a local disk, an uncompleted
multipart upload on S3, an uncommitted fsspec file elsewhere); they are shown only when every file
arrived complete, one after another, and a folder gets a manifest (``_SUCCESS``) last, so its readers
know when the result is whole. A failure before that leaves nothing of the fetch; a failure while the
files are shown undoes what the store can undo without removing anything the fetch did not add
(on a local disk: everything).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import errno
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from airflow_provider_jobprogress.core.errors import JobProgressError, ResultDestinationError

LOCAL_SCHEMES = frozenset({"file", "local"})
#: the extra of this package that brings a scheme's storage library
EXTRAS = {"s3": "s3", "s3a": "s3", "s3n": "s3", "gs": "gcs", "gcs": "gcs"}
_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.DOTALL)
#: the user:password of a URL in an error's text (an endpoint URL written with credentials), never repeated
_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s\"']+@")
#: S3 part size: small enough for flat memory, big enough for S3's 10,000-part limit up to 80 GB
S3_PART_SIZE = 8 << 20
#: the completion marker a folder result gets last (Spark's and Hadoop's name), holding the result's manifest
SUCCESS_MARKER = "_SUCCESS"
#: An upload is announced before it begins and recorded once S3 has named it (``S3Store``). An announcement left
#: without its record (a try killed in between) stands for the upload begun on its key within this window: S3
#: dates uploads to the second, on whichever host answered (the leeway before), and a create call with its
#: retries ends within minutes (the window after)
ANNOUNCED_UPLOAD = (datetime.timedelta(seconds=1), datetime.timedelta(minutes=5))
#: what ``os.link`` answers on mounts without hard links (gcsfuse, blobfuse, exFAT, some SMB shares)
NO_HARD_LINKS = frozenset({errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP})
#: an old marker bigger than this is not ours: removed before a commit, it is not put back after a failure
MAX_MARKER_BYTES = 1 << 20


@dataclass(frozen=True)
class StoredFile:
    """One file that landed at the destination: an item of a fetch's XCom (always a list of these)."""

    uri: str
    name: str
    source: str | None
    bytes: int
    sha256: str
    content_type: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "name": self.name,
            "source": self.source,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "content_type": self.content_type,
        }


# -- the destination, checked without touching storage ------------------------------------------------


@dataclass(frozen=True)
class DestinationSpec:
    """What a destination says before any storage is touched: its URI, scheme, and whether it names a folder."""

    uri: str
    scheme: str
    folder: bool

    @property
    def local(self) -> bool:
        return self.scheme in LOCAL_SCHEMES


def is_templated(value: Any) -> bool:
    """True for a value Airflow renders later (a Jinja string, an XComArg): it is checked at run time."""
    from airflow.sdk import XComArg

    if isinstance(value, str):
        return "{{" in value or "{%" in value
    return isinstance(value, XComArg)


def check_destination(value: Any, vendor: str, job_id: str | None) -> DestinationSpec:
    """Check a destination (a URI string or an ``ObjectStoragePath``) without touching storage.

    Refused with ``ResultDestinationError``: anything but a string or ``ObjectStoragePath``, an empty or
    relative path (it would land in the worker's current folder), a scheme no installed filesystem serves,
    a scheme whose storage library is missing, an object store URI without a bucket.
    """

    def refuse(why: str) -> ResultDestinationError:
        return ResultDestinationError(vendor, job_id, f"destination {value!r} {why}")

    if isinstance(value, str):
        uri = value
    elif type(value).__name__ == "ObjectStoragePath":
        uri = _raw_uri(value)
    else:
        raise refuse(f"is a {type(value).__name__}; it must be a URI string or an ObjectStoragePath")
    if not uri.strip():
        raise refuse("is empty")
    match = _URI.match(uri)
    if match is None:
        if not uri.startswith("/"):
            raise refuse("is a relative path; it would be written into the worker's current folder")
        return DestinationSpec(uri, "file", uri.endswith("/"))
    scheme, rest = match["scheme"].lower(), match["rest"]
    if scheme in LOCAL_SCHEMES:
        if not rest.startswith("/"):
            raise refuse(f"is not an absolute path (write {scheme}:///absolute/path)")
        return DestinationSpec(uri, scheme, uri.endswith("/"))
    if not _has_filesystem(scheme):
        raise refuse(f"uses {scheme}://, which no installed Airflow filesystem serves")
    missing = _missing_library(scheme)
    if missing is not None:
        extra = EXTRAS.get(scheme)
        install = f"pip install 'airflow-provider-jobprogress[{extra}]'" if extra else f"pip install {missing}"
        raise refuse(f"needs the {missing} package, which is not installed ({install})")
    bucket = rest.rpartition("@")[2] if "@" in rest.split("/", 1)[0] else rest
    if not bucket.split("/", 1)[0]:
        raise refuse("names no bucket")
    return DestinationSpec(uri, scheme, uri.endswith("/"))


def _raw_uri(path: Any) -> str:
    """An ``ObjectStoragePath``'s URI with the trailing slash (meaning "folder") its ``str`` drops."""
    uri = str(path)
    for holder in (getattr(path, "__wrapped__", None), path):
        for attribute in ("_raw_urlpaths", "_raw_paths"):
            raw = getattr(holder, attribute, None)
            if isinstance(raw, list | tuple) and raw and str(raw[-1]).endswith("/") and not uri.endswith("/"):
                return uri + "/"
    return uri


def _has_filesystem(scheme: str) -> bool:
    from airflow.sdk.io.fs import has_fs

    return bool(has_fs(scheme))


def _missing_library(scheme: str) -> str | None:
    """The top-level package fsspec needs for ``scheme`` when it is not installed, else None."""
    from fsspec.registry import known_implementations

    known = known_implementations.get(scheme)
    if not known:
        return None
    package = str(known["class"]).split(".", 1)[0]
    return package if importlib.util.find_spec(package) is None else None


# -- stores: where the bytes go until every file is complete --------------------------------------------


class ResultStore(ABC):
    """One fetch's writes to one destination: ``prepare``, ``write`` each file, then ``commit`` or ``abort``.

    ``write(None, ...)`` writes the destination itself (a single-file destination); ``write("a/b.pdf", ...)``
    a file under a folder destination (the name already made safe by ``result_names``). ``commit(marker)``
    makes the files visible in order and then, last, ``marker``: a manifest of them, so that readers of a
    folder know when the result is whole.
    """

    #: True: files go under the destination by name; False: the destination is the one file
    folder: bool

    def __init__(self, vendor: str, job_id: str, uri: str) -> None:
        self.vendor = vendor
        self.job_id = job_id
        self.uri = uri.rstrip("/")
        #: names this store's leftovers, so a retry of the same fetch finds what a killed try left
        self.key = hashlib.sha256(f"{vendor}\0{job_id}\0{self.uri}".encode()).hexdigest()[:16]
        #: what ``write`` took, in order: the manifest lists them
        self.stored: list[StoredFile] = []

    @abstractmethod
    def prepare(self) -> None:
        """Create the destination, prove it takes writes, and clear what a killed try of this fetch left."""

    def check_name(self, name: str) -> None:
        """Refuse (``ResultDestinationError``) a file name under a folder destination that this store can already
        tell cannot take a file, so the refusal comes before a download opens; nothing to tell by default."""
        return None

    def write(self, name: str | None, chunks: Iterable[bytes], *, content_type: str, source: str | None) -> StoredFile:
        """Stream ``chunks`` to a place no reader sees yet; the file as it will be once committed."""
        stored = self._stage(name, chunks, content_type=content_type, source=source)
        self.stored.append(stored)
        return stored

    @abstractmethod
    def _stage(self, name: str | None, chunks: Iterable[bytes], *, content_type: str, source: str | None) -> StoredFile:
        """``write`` for this store."""

    def commit(self, marker: str | None = None) -> None:
        """Make every written file visible, then ``marker`` (a folder's manifest), last. If one cannot be, undo
        what this try can undo (``abort``) and raise; an older file this try replaced is never removed."""
        if marker is not None:
            self.write(marker, [self.manifest()], content_type="application/json", source=None)
        self._publish(None if marker is None else self.stored[-1])

    @abstractmethod
    def _publish(self, marker: StoredFile | None) -> None:
        """``commit`` for this store: an old ``marker`` goes before the first file shows, the new one last."""

    @abstractmethod
    def abort(self) -> None:
        """Undo this fetch: unfinished files are dropped; of the files it made visible, what it can undo
        without leaving less than there was before is undone. Never raises."""

    def manifest(self) -> bytes:
        """The completion marker's content: the result's files, as XCom lists them, for readers to check."""
        files = [
            {"name": f.name, "bytes": f.bytes, "sha256": f.sha256, "content_type": f.content_type} for f in self.stored
        ]
        return json.dumps(
            {"version": 1, "vendor": self.vendor, "job_id": self.job_id, "files": files}, indent=2
        ).encode()

    def refuse(self, why: str) -> ResultDestinationError:
        return ResultDestinationError(self.vendor, self.job_id, f"destination {self.uri}: {why}")

    @contextlib.contextmanager
    def failing_as(self, what: str) -> Iterator[None]:
        """Any error of the storage library in the block (botocore's and gcsfs's are no ``OSError``: a lost
        connection, missing credentials, a refused parameter) as ``ResultDestinationError`` naming the job, the
        vendor and the destination, the library's own error kept as its cause."""
        try:
            yield
        except JobProgressError:
            raise
        except Exception as exc:
            raise self.refuse(f"{what} failed ({_os_reason(exc)})") from exc

    def file_uri(self, name: str | None) -> str:
        return self.uri if name is None else f"{self.uri}/{name}"


@contextlib.contextmanager
def landing(store: ResultStore, *, marker: str | None = SUCCESS_MARKER) -> Iterator[ResultStore]:
    """``prepare`` the store, let the caller write, then commit all files (and a folder's ``marker``), or abort
    on any error."""
    store.prepare()
    try:
        yield store
        store.commit(marker if store.folder else None)
    except BaseException:
        store.abort()
        raise


class _Digest:
    """Counts and hashes the bytes of one file as they pass."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        self.size += len(chunk)


class LocalStore(ResultStore):
    """A local (or mounted) folder: files are written into a hidden staging folder beside their targets and
    renamed into place at commit; a file they replace is kept aside until every rename succeeded."""

    def __init__(self, vendor: str, job_id: str, uri: str, target: Path, *, folder: bool) -> None:
        super().__init__(vendor, job_id, uri)
        self.folder = folder
        self.root = target if folder else target.parent
        self.target = None if folder else target
        self.staging = self.root / f".jobprogress-{self.key}.partial"
        self._created: list[Path] = []
        self._staged: list[tuple[Path, Path]] = []
        self._committed: list[tuple[Path, Path | None]] = []

    def prepare(self) -> None:
        try:
            self._make_folders(self.root)
            if self.staging.exists():  # a killed try of this very fetch left it
                self._put_back_what_a_killed_try_moved_aside()
                shutil.rmtree(self.staging)
            self.staging.mkdir()  # proves we may create files in the destination folder
        except OSError as exc:
            raise self.refuse(f"cannot be written ({_os_reason(exc)})") from None
        if self.target is not None and self.target.is_dir():
            raise self.refuse("is an existing folder; end the destination with / to write into it")

    def check_name(self, name: str) -> None:
        target = self.root / name
        if target.is_dir():
            raise self.refuse(f"{target} is an existing folder, where result file {name!r} belongs")
        for folder in target.relative_to(self.root).parents:
            if (self.root / folder).exists() and not (self.root / folder).is_dir():
                raise self.refuse(f"{self.root / folder} is a file, where the folder of result file {name!r} belongs")

    def _stage(self, name: str | None, chunks: Iterable[bytes], *, content_type: str, source: str | None) -> StoredFile:
        target = self.target if name is None else self.root / name
        assert target is not None
        if name is not None:
            self.check_name(name)
        temp = self.staging / f"{len(self._staged)}.part"
        self._staged.append((temp, target))
        digest = _Digest()
        try:
            with temp.open("wb") as sink:
                for chunk in chunks:
                    sink.write(chunk)
                    digest.update(chunk)
                sink.flush()
                os.fsync(sink.fileno())
        except OSError as exc:
            raise self.refuse(f"writing {target.name} failed ({_os_reason(exc)})") from None
        uri = self.file_uri(name)
        return StoredFile(uri, name or target.name, source, digest.size, digest.sha.hexdigest(), content_type)

    def _publish(self, marker: StoredFile | None) -> None:
        try:
            if marker is not None and (self.root / marker.name).is_file():
                # The old marker must not vouch for a folder being changed: it goes first, and comes back
                # with the files it describes if a rename fails.
                aside = self.staging / "marker.previous"
                os.replace(self.root / marker.name, aside)
                self._committed.append((self.root / marker.name, aside))
            for index, (temp, target) in enumerate(self._staged):
                self._make_folders(target.parent)
                backup = None
                if target.exists():
                    backup = self.staging / f"{index}.previous"
                    self._keep_aside(target, backup)
                    self._committed.append((target, backup))  # before the replace: a failure puts it back
                os.replace(temp, target)
                if backup is None:
                    self._committed.append((target, None))
        except OSError as exc:
            self.abort()
            raise self.refuse(f"moving the results into place failed, none was kept ({_os_reason(exc)})") from None
        shutil.rmtree(self.staging, ignore_errors=True)

    def _keep_aside(self, target: Path, backup: Path) -> None:
        """Keep the file ``target`` holds until the commit is through: a hard link to it, so it stays in place
        until the new file replaces it; on a mount without hard links, the file itself, renamed aside."""
        try:
            os.link(target, backup)
            return
        except OSError as exc:
            if exc.errno not in NO_HARD_LINKS:
                raise
        # Renamed aside, the old file is for a moment only in the staging folder: its place is written down
        # first, so that the retry of a try killed in that moment puts it back.
        backup.with_suffix(".place").write_text(target.relative_to(self.root).as_posix(), encoding="utf-8")
        os.replace(target, backup)

    def _put_back_what_a_killed_try_moved_aside(self) -> None:
        """Files a killed try renamed aside and did not replace yet go back to their place (never over a file)."""
        for place in self.staging.glob("*.place"):
            backup, target = place.with_suffix(".previous"), self.root / place.read_text(encoding="utf-8")
            if backup.exists() and not os.path.lexists(target):
                os.replace(backup, target)

    def abort(self) -> None:
        for target, backup in reversed(self._committed):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, target)
                else:
                    target.unlink()
        self._committed.clear()
        shutil.rmtree(self.staging, ignore_errors=True)
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: never what someone else put there
        self._created.clear()

    def _make_folders(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            path.mkdir()
            self._created.append(path)


class _ObjectStore(ResultStore):
    """An fsspec object store: S3's and fsspec's own per-object promise, and what a failed commit may undo.

    An object store makes each file visible whole or not at all, one at a time. A commit that fails midway
    removes the files it added at free names, and leaves those that replaced a file: the older one cannot
    be brought back, and removing the new one would leave less than there was. The folder's marker is taken
    away before the first file shows and put back if the failure left everything as it was.
    """

    def __init__(self, vendor: str, job_id: str, uri: str, fs: Any) -> None:
        super().__init__(vendor, job_id, uri)
        self.fs = fs
        #: a folder's old marker, taken away at commit: its path and bytes (None: too big to keep)
        self._old_marker: tuple[str, bytes | None] | None = None

    def _was_free(self, path: str) -> bool:
        """True only when the store says nothing is at ``path``; unknown (no read permission) counts as taken."""
        try:
            self.fs.invalidate_cache(path)
            self.fs.info(path)
        except FileNotFoundError:
            return True
        except Exception:
            return False
        return False

    def _take_marker_aside(self, path: str) -> None:
        if self._was_free(path):
            return
        kept = None
        with contextlib.suppress(Exception):  # unreadable: it is removed all the same, and not put back
            if int(self.fs.info(path).get("size") or 0) <= MAX_MARKER_BYTES:
                kept = bytes(self.fs.cat_file(path))
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise self.refuse(
                f"the marker {path.rpartition('/')[2]} of the result there cannot be removed before the new "
                f"result lands, so it would vouch for a mix ({_os_reason(exc)}); set success_marker=None to "
                "write no marker"
            ) from exc
        self._old_marker = (path, kept)

    def _put_marker_back(self, changed: bool) -> None:
        """The old marker again, when the failed commit left every file as it was."""
        old, self._old_marker = self._old_marker, None
        if old is not None and old[1] is not None and not changed:
            with contextlib.suppress(Exception):
                self._put_back(old[0], old[1])

    def _put_back(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)


@dataclass
class _Upload:
    key: str
    upload_id: str
    parts: list[dict[str, Any]]
    #: the upload id of its ledger entry, while there is one
    ledger: str | None = None


@dataclass(frozen=True)
class _Landed:
    """An object a commit completed: its key, its ETag, and whether its key was free before."""

    key: str
    etag: str | None
    created: bool


class S3Store(_ObjectStore):
    """An S3 bucket (s3fs): each file is one multipart upload, completed only when every file arrived whole.

    Until completion an upload is invisible: no reader, listing or bucket notification sees a partial
    object, and nothing is copied or deleted to "move" it. Each part carries its SHA-256, which S3 checks
    on receipt. A fetch touches only uploads it began itself, by a ledger of empty uploads under keys of
    this fetch's own (uploads are invisible and send no bucket event): each upload is *announced* before it
    begins (``<prefix>.jobprogress-<key>.announce-<hash of the object's key>``) and *recorded* once S3 has named
    it (``….upload-<hash of its upload id>``), then its announcement is dropped. A try killed with SIGKILL leaves
    its uploads and their ledger; the retry aborts each recorded upload, and for an announcement left without
    its record (a try killed as S3 named the upload) the upload begun on that key within ``ANNOUNCED_UPLOAD`` of
    it, then the ledger. Other writers' uploads under the same prefix are never touched (only one begun on the
    very key this fetch writes, within that window of a killed try, would be taken for ours: two writers of one
    object conflict anyway); what no retry clears is the bucket lifecycle rule's
    (``AbortIncompleteMultipartUpload``), as is an upload a create call's own silent retry left behind.

    A failed commit removes an object it completed at a free key only while it is still ours (a delete
    conditional on its ETag), so another writer's object put there since stays.
    """

    def __init__(self, vendor: str, job_id: str, uri: str, fs: Any, path: str, *, folder: bool) -> None:
        super().__init__(vendor, job_id, uri, fs)
        self.bucket, _, key = path.strip("/").partition("/")
        self.prefix = f"{key}/" if folder and key else key
        self.folder = folder
        #: keys only this fetch (this vendor job to this destination) writes: its probe and its ledger
        self.own = f"{self.prefix}.jobprogress-{self.key}."
        self.ledger = f"{self.own}upload-"
        self.announcements = f"{self.own}announce-"
        self._pending: list[_Upload] = []
        self._landed: list[_Landed] = []

    def _call(self, method: str, **kwargs: Any) -> Any:
        with self.failing_as(f"S3 {method}"):  # s3fs translates S3's answers, not botocore's own errors
            return self.fs.call_s3(method, Bucket=self.bucket, **kwargs)

    def prepare(self) -> None:
        self._clear_killed_try()
        # An upload started and aborted proves we may write here, and leaves no object and no event behind.
        probe = self._call("create_multipart_upload", Key=f"{self.own}probe")
        self._call("abort_multipart_upload", Key=probe["Key"], UploadId=probe["UploadId"])

    def _clear_killed_try(self) -> None:
        """Abort the uploads a killed try of this fetch left in its ledger, then the ledger (and a probe)."""
        leftovers = list(self._unfinished(self.own))
        recorded = {u["Key"] for u in leftovers if u["Key"].startswith(self.ledger)}
        announced = {u["Key"]: u["Initiated"] for u in leftovers if u["Key"].startswith(self.announcements)}
        before, after = ANNOUNCED_UPLOAD
        if recorded or announced:
            for upload in self._unfinished(self.prefix):
                since = announced.get(self._announcement_key(upload["Key"]))
                if self._ledger_key(upload["UploadId"]) in recorded or (
                    since is not None and since - before <= upload["Initiated"] <= since + after
                ):
                    self._call("abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"])
        for upload in leftovers:  # after the uploads they record: a try killed here leaves the ledger to retry
            self._call("abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"])

    def _ledger_key(self, upload_id: str) -> str:
        """The ledger entry of an upload: a fixed-length name (S3's ids are long, of no promised alphabet)."""
        return self.ledger + hashlib.sha256(upload_id.encode()).hexdigest()[:32]

    def _announcement_key(self, key: str) -> str:
        """The ledger entry announcing an upload to ``key`` (keys are up to 1 KiB)."""
        return self.announcements + hashlib.sha256(key.encode()).hexdigest()[:32]

    def _unfinished(self, prefix: str) -> Iterator[dict[str, Any]]:
        markers: dict[str, str] = {}
        while True:
            page = self._call("list_multipart_uploads", Prefix=prefix, **markers)
            yield from page.get("Uploads") or []
            if not page.get("IsTruncated"):
                return
            markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    def _record(self, upload: _Upload) -> None:
        ledger = self._call("create_multipart_upload", Key=self._ledger_key(upload.upload_id))
        upload.ledger = ledger["UploadId"]

    def _forget(self, upload: _Upload) -> None:
        """Drop the ledger entry of an upload completed or aborted; a failure only leaves it to the retry."""
        if upload.ledger is not None:
            with contextlib.suppress(Exception):
                self.fs.call_s3(
                    "abort_multipart_upload",
                    Bucket=self.bucket,
                    Key=self._ledger_key(upload.upload_id),
                    UploadId=upload.ledger,
                )
            upload.ledger = None

    def _stage(self, name: str | None, chunks: Iterable[bytes], *, content_type: str, source: str | None) -> StoredFile:
        key = self.prefix + name if name is not None else self.prefix
        # Announced first: a try killed as S3 names the upload has still left word of it. A create that fails
        # leaves its announcement too (an answer lost on the way may have begun an upload all the same).
        announcement = self._call("create_multipart_upload", Key=self._announcement_key(key))["UploadId"]
        created = self._call("create_multipart_upload", Key=key, ContentType=content_type, ChecksumAlgorithm="SHA256")
        upload = _Upload(key, created["UploadId"], [])
        self._pending.append(upload)  # registered first: a failure mid-stream aborts it
        self._record(upload)  # before any part, and before the announcement goes: the retry finds it exactly
        with contextlib.suppress(Exception):  # a failure leaves an announcement its record already covers
            self.fs.call_s3(
                "abort_multipart_upload", Bucket=self.bucket, Key=self._announcement_key(key), UploadId=announcement
            )
        digest = _Digest()
        # Each part is spooled to a temporary file and sent from it in small reads: holding a part as one
        # bytes object costs its size several times over (join, socket buffer, allocator high-water).
        with tempfile.TemporaryFile(prefix="jobprogress-part-") as part:
            part_digest = _Digest()
            for chunk in chunks:
                digest.update(chunk)
                part_digest.update(chunk)
                with self.failing_as("spooling a part to a temporary file"):
                    part.write(chunk)
                if part_digest.size >= S3_PART_SIZE:  # parts need not be equal, only >= 5 MiB but the last
                    self._upload_part(upload, part, part_digest)
                    part_digest = _Digest()
            if part_digest.size or not upload.parts:
                self._upload_part(upload, part, part_digest)
        return StoredFile(
            self.file_uri(name),
            name or PurePosixPath(key).name,
            source,
            digest.size,
            digest.sha.hexdigest(),
            content_type,
        )

    def _upload_part(self, upload: _Upload, part: IO[bytes], digest: _Digest) -> None:
        number = len(upload.parts) + 1
        checksum = base64.b64encode(digest.sha.digest()).decode()
        part.seek(0)
        answer = self._call(
            "upload_part",
            Key=upload.key,
            UploadId=upload.upload_id,
            PartNumber=number,
            Body=part,
            ContentLength=digest.size,
            ChecksumSHA256=checksum,
        )
        part.seek(0)
        part.truncate()
        upload.parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum})

    def _publish(self, marker: StoredFile | None) -> None:
        try:
            if marker is not None:
                self._take_marker_aside(f"{self.bucket}/{self.prefix}{marker.name}")
            while self._pending:
                upload = self._pending[0]
                created = self._was_free(f"{self.bucket}/{upload.key}")
                answer = self._call(
                    "complete_multipart_upload",
                    Key=upload.key,
                    UploadId=upload.upload_id,
                    MultipartUpload={"Parts": upload.parts},
                )
                self._landed.append(_Landed(upload.key, answer.get("ETag"), created))
                self._pending.pop(0)
                self._forget(upload)
        except ResultDestinationError:
            self.abort()
            raise
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache()

    def abort(self) -> None:
        changed = False
        for landed in reversed(self._landed):
            if not landed.created:
                changed = True  # it replaced an object: the new version stays, whole
                continue
            try:  # only while it is ours: If-Match on the ETag S3 gave it
                condition = {"IfMatch": landed.etag} if landed.etag else {}
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=landed.key, **condition)
            except Exception:
                changed = True  # another writer's object by now (412), or a delete refused: it stays
        for upload in self._pending:
            with contextlib.suppress(Exception):
                self.fs.call_s3("abort_multipart_upload", Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id)
                self._forget(upload)  # only once the upload is gone: else the retry still finds it
        self._landed.clear()
        self._pending.clear()
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache()
        self._put_marker_back(changed)

    def _put_back(self, path: str, data: bytes) -> None:
        # If-None-Match: a marker another writer put there meanwhile is theirs to keep
        key = path.removeprefix(f"{self.bucket}/")
        self.fs.call_s3("put_object", Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")


class FsspecStore(_ObjectStore):
    """Any other object store: fsspec files opened with ``autocommit=False`` are committed together at the end
    and discarded on failure (gcsfs and adlfs finish or cancel their uploads that way).

    Not every fsspec filesystem honours ``autocommit=False`` (many ignore it, and their files show as soon
    as they are closed): ``prepare`` proves it with a probe file, and refuses a filesystem that shows it.
    """

    def __init__(self, vendor: str, job_id: str, uri: str, fs: Any, path: str, *, folder: bool) -> None:
        super().__init__(vendor, job_id, uri, fs)
        self.path = path.rstrip("/")
        self.folder = folder
        self._pending: list[tuple[str, Any]] = []
        #: files committed: their path, and whether it was free before
        self._landed: list[tuple[str, bool]] = []

    def prepare(self) -> None:
        folder = self.path if self.folder else self.path.rsplit("/", 1)[0]
        with self.failing_as("creating it"):
            self.fs.makedirs(folder, exist_ok=True)
        self._prove_uncommitted_files_unseen(f"{folder}/.jobprogress-{self.key}.probe")

    def _prove_uncommitted_files_unseen(self, probe: str) -> None:
        """A probe file written with ``autocommit=False`` must not show until committed; discarded after."""
        kind = f"{type(self.fs).__name__} ({self.fs.protocol!r})"
        try:
            sink = self.fs.open(probe, "wb", autocommit=False)
            sink.write(b"probe")
            sink.close()
            self.fs.invalidate_cache(probe)
            shown = self.fs.exists(probe)
            sink.discard()
        except Exception as exc:  # TypeError: a filesystem that takes no autocommit at all
            raise self.refuse(f"cannot be written through {kind} ({_os_reason(exc)})") from exc
        if shown:
            with contextlib.suppress(Exception):
                self.fs.rm_file(probe)
            raise self.refuse(
                f"is served by {kind}, which shows a file opened with autocommit=False before it is committed: "
                "a result there could be seen half written and not taken back, so nothing is fetched to it"
            )

    def _stage(self, name: str | None, chunks: Iterable[bytes], *, content_type: str, source: str | None) -> StoredFile:
        path = self.path if name is None else f"{self.path}/{name}"
        digest = _Digest()
        # Only the store's own calls are wrapped: an error of the download (the chunks) stays the vendor's.
        with self.failing_as(f"writing {path}"):
            sink = self.fs.open(path, "wb", autocommit=False)
        self._pending.append((path, sink))
        for chunk in chunks:
            with self.failing_as(f"writing {path}"):
                sink.write(chunk)
            digest.update(chunk)
        with self.failing_as(f"writing {path}"):
            sink.close()
        name = name or path.rsplit("/", 1)[-1]
        uri = self.file_uri(name if self.folder else None)
        return StoredFile(uri, name, source, digest.size, digest.sha.hexdigest(), content_type)

    def _publish(self, marker: StoredFile | None) -> None:
        try:
            if marker is not None:
                self._take_marker_aside(f"{self.path}/{marker.name}")
            while self._pending:
                path, sink = self._pending[0]
                created = self._was_free(path)
                with self.failing_as("committing the results"):
                    sink.commit()
                self._landed.append((path, created))
                self._pending.pop(0)
        except ResultDestinationError:
            self.abort()
            raise

    def abort(self) -> None:
        changed = False
        for path, created in reversed(self._landed):
            if not created:
                changed = True  # it replaced a file: the new version stays, whole
                continue
            try:
                self.fs.rm_file(path)
            except Exception:
                changed = True
        for _, sink in self._pending:
            with contextlib.suppress(Exception):
                sink.discard()
        self._landed.clear()
        self._pending.clear()
        self._put_marker_back(changed)


def open_store(spec: DestinationSpec, vendor: str, job_id: str, *, several: bool) -> ResultStore:
    """The store for a checked destination. It is a folder when written with a trailing ``/``, when it
    already is one, or when the result has several files; otherwise the one result file itself."""
    if spec.local:
        local = Path(re.sub(r"^[A-Za-z]+://", "", spec.uri))
        folder = spec.folder or several or local.is_dir()
        return LocalStore(vendor, job_id, f"file://{local}".rstrip("/"), local, folder=folder)
    from airflow.sdk import ObjectStoragePath

    try:
        path = ObjectStoragePath(spec.uri)
        fs, inner = path.fs, path.path
        folder = spec.folder or several or bool(fs.isdir(inner))
    except Exception as exc:  # connection lookups, credentials, the filesystem's own import errors
        raise ResultDestinationError(
            vendor, job_id, f"destination {spec.uri} cannot be opened ({_os_reason(exc)})"
        ) from exc
    uri = str(path).rstrip("/")
    if type(fs).__name__ == "S3FileSystem":
        return S3Store(vendor, job_id, uri, fs, inner, folder=folder)
    return FsspecStore(vendor, job_id, uri, fs, inner, folder=folder)


def _os_reason(exc: BaseException) -> str:
    """What went wrong, for a message: the error's type and text, with any user:password of a URL in it
    (an endpoint URL written with credentials) blanked out."""
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    reason = _URL_CREDENTIALS.sub(r"\1***@", reason)
    return f"{type(exc).__name__}: {reason}"
