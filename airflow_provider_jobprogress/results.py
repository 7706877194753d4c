"""Bringing results home: stream a download to any ``ObjectStoragePath`` without a partial file, ever.

Each file is written to a hidden temporary object beside its target, checked against the size the
vendor announced, and moved into place only when every file of the result is complete. On any error
the temporaries are deleted and nothing appears at the destination.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StoredFile:
    """What landed at the destination: the XCom of a fetch to storage."""

    uri: str
    bytes: int
    sha256: str
    content_type: str
    name: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "content_type": self.content_type,
            "name": self.name,
        }


class IncompleteDownloadError(Exception):
    """The body ended before the announced Content-Length."""


@dataclass
class _Staged:
    temp: Any
    target: Any
    stored: StoredFile


def _temporary_beside(target: Any) -> Any:
    return target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.part"


def _write(temp: Any, chunks: Iterable[bytes], expected: int | None) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with temp.open("wb") as sink:
        for chunk in chunks:
            sink.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    if expected is not None and size != expected:
        raise IncompleteDownloadError(f"received {size} of {expected} announced bytes")
    return size, digest.hexdigest()


@contextlib.contextmanager
def staging() -> Iterator[list[_Staged]]:
    """Collect staged files; on success move them all into place, on error delete every temporary."""
    staged: list[_Staged] = []
    try:
        yield staged
    except BaseException:
        for item in staged:
            with contextlib.suppress(Exception):
                item.temp.unlink()
        raise
    for item in staged:
        item.temp.rename(item.target)


def stage_file(
    staged: list[_Staged],
    target: Any,
    chunks: Iterable[bytes],
    *,
    expected_size: int | None,
    content_type: str,
    name: str,
) -> StoredFile:
    """Write ``chunks`` to a temporary beside ``target`` and register it for the final move."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temporary_beside(target)
    item = _Staged(temp, target, StoredFile(str(target), 0, "", content_type, name))
    staged.append(item)  # registered first, so a failure mid-write still deletes the temporary
    size, sha = _write(temp, chunks, expected_size)
    item.stored = StoredFile(str(target), size, sha, content_type, name)
    return item.stored
