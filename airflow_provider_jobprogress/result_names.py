"""Naming result files: vendor names kept inside the destination, collisions made distinct, telling names.

Every name a vendor hands us (an iTwin output type or blob name, an OL Connect spool path, a
Content-Disposition file name, a job id) is untrusted. ``contained`` normalises it to a relative
POSIX path and refuses one that would leave the destination; ``NameBook`` gives colliding names
distinct, deterministic ones in the order the vendor listed them.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from email.message import Message

from airflow_provider_jobprogress.core.errors import UnsafeResultNameError

#: a Windows drive (``C:``, ``C:\\``) or UNC start (``\\\\server``): absolute on the vendor's side
_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:|[\\/]{2})")
#: ``mimetypes`` answers ``.bin`` for octet-stream and nothing for these; the names users expect
_EXTENSIONS = {
    "application/pdf": ".pdf",
    "application/octet-stream": ".bin",
    "text/plain": ".txt",
    "application/json": ".json",
    "application/xml": ".xml",
    "text/xml": ".xml",
    "application/zip": ".zip",
}
#: magic bytes of formats a vendor may serve as application/octet-stream (OL Connect's getResult does)
_MAGIC = ((b"%PDF-", ".pdf"), (b"PK\x03\x04", ".zip"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"))
#: a name component longer than this many UTF-8 bytes is refused by most filesystems (ext4, APFS, NTFS)
MAX_COMPONENT_BYTES = 255


def contained(vendor: str, job_id: str | None, name: str) -> str:
    """``name`` as a relative POSIX path that stays inside the destination, or ``UnsafeResultNameError``.

    Backslashes count as separators (vendors on Windows send them), ``.`` and empty components go,
    ``a/../b`` becomes ``b``; an absolute name, one that climbs above the destination, an empty one,
    or one with control characters is refused, naming the vendor, the job and the name.
    """

    def refuse(why: str) -> UnsafeResultNameError:
        return UnsafeResultNameError(vendor, job_id, f"result name {name!r} {why}; nothing was written")

    if not isinstance(name, str) or not name.strip():
        raise refuse("is empty")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise refuse("contains control characters")
    if name.startswith(("/", "\\")) or _WINDOWS_ABSOLUTE.match(name):
        raise refuse("is an absolute path")
    parts: list[str] = []
    for part in name.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise refuse("would leave the destination")
            parts.pop()
            continue
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise refuse(f"has a component longer than {MAX_COMPONENT_BYTES} bytes")
        parts.append(part)
    if not parts:
        raise refuse("names no file inside the destination")
    return "/".join(parts)


class NameBook:
    """Hands out distinct names: the first file keeps its name, a later one that collides gets ``-2``, ``-3``...

    Collisions are judged without regard to case (two files differing only in case would be one file on
    macOS, Windows and many mounted shares) and against folders: a file may not take the name of a folder
    another file lives in, nor live in a folder whose name a file took (the folder is numbered then).
    """

    def __init__(self) -> None:
        self._files: set[str] = set()
        self._folders: set[str] = set()

    def claim(self, name: str) -> str:
        """A name for ``name`` (already ``contained``) that no earlier claim has; deterministic in claim order."""
        claimed = self.name_for(name)
        parts = claimed.split("/")
        for i in range(1, len(parts)):
            self._folders.add("/".join(parts[:i]).casefold())
        self._files.add(claimed.casefold())
        return claimed

    def name_for(self, name: str) -> str:
        """The name ``claim`` would hand out for ``name``, without claiming it."""
        parts = name.split("/")
        for i, original in enumerate(parts):
            last, n = i == len(parts) - 1, 1
            while self._blocked("/".join(parts[: i + 1]).casefold(), last):
                n += 1
                parts[i] = _numbered(original, n)
        return "/".join(parts)

    def _blocked(self, key: str, last: bool) -> bool:
        return key in self._files or (last and key in self._folders)


def _numbered(base: str, n: int) -> str:
    stem, dot, ext = base.rpartition(".")
    return f"{stem}-{n}.{ext}" if dot and stem else f"{base}-{n}"


def disposition_name(header: str | None) -> str | None:
    """The file name of a ``Content-Disposition`` header (``filename*`` first, RFC 6266), last path part only."""
    if not header:
        return None
    message = Message()
    message["content-disposition"] = header
    name = message.get_filename()
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return base if base not in ("", ".", "..") else None


def extension(content_type: str, head: bytes = b"") -> str:
    """The file extension a content type (or, for octet-stream, the first bytes) says the file has."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("", "application/octet-stream", "binary/octet-stream"):
        for magic, ext in _MAGIC:
            if head.startswith(magic):
                return ext
    return _EXTENSIONS.get(kind) or mimetypes.guess_extension(kind) or ".bin"
