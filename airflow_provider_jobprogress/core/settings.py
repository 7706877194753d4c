"""A connection's settings as the adapters read them (``ConnectionFields``): each wrong one a ``ConfigurationError``
naming its field, before any call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

from airflow_provider_jobprogress.core.errors import (
    ConfigurationError,
)
from airflow_provider_jobprogress.core.values import brief


@dataclass(frozen=True)
class ConnectionFields:
    """The parts of an Airflow connection a vendor adapter reads; built by the hooks, sync or async."""

    conn_id: str
    conn_type: str | None = None
    host: str | None = None
    port: int | None = None
    schema: str | None = None
    login: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def extra_bool_or_path(self, key: str, default: bool = True) -> bool | str:
        """Read a ``verify``-style extra: a boolean, its text ("true", "false"...), or a CA bundle path."""
        value = self.extra.get(key)
        if value is None:  # absent, or saved empty by the connection form
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip()
        if text.lower() in ("true", "1", "yes", "on", ""):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        return text

    # -- settings, each wrong one a ConfigurationError naming its field ------------------------------
    def problem(self, vendor: str, field: str, message: str) -> ConfigurationError:
        return ConfigurationError(vendor, None, message, conn_id=self.conn_id, field=field)

    def choice(self, vendor: str, field: str, options: tuple[str, ...], default: str) -> str:
        """An extra that names one of ``options``, read whatever its case and surrounding blanks."""
        raw = self.extra.get(field)
        value = default if raw is None or str(raw).strip() == "" else str(raw).strip().lower()
        if value not in options:
            raise self.problem(vendor, field, f"{brief(raw)} is not one of {', '.join(options)}")
        return value

    def extra_url(self, vendor: str, field: str, default: str, *, also: str | None = None) -> str:
        """An extra holding an absolute http(s) URL (``also``: an older name for the same extra)."""
        raw = self.extra.get(field)
        if (raw is None or str(raw).strip() == "") and also is not None:
            raw, field = self.extra.get(also), also
        if raw is None or str(raw).strip() == "":
            return default
        text = str(raw).strip()
        parts = _split(text)
        if parts is None or parts.scheme not in HTTP_SCHEMES or not parts.hostname:
            raise self.problem(vendor, field, f"{brief(text)} is not an http:// or https:// URL with a host")
        if parts.port is None and _port_text(parts) is not None:
            raise self.problem(vendor, field, f"{brief(text)} has a port that is not a number from 1 to 65535")
        return text

    def service_url(self, vendor: str, *, default_host: str, default_scheme: str, default_port: int | None) -> str:
        """The base URL from host, schema and port: a host name (``h`` or ``h:port``), or a whole URL in host.

        A path belongs in a whole URL (``http://h/prefix``): ``h/rest`` in host would make a URL like
        ``http://h/rest:9340``. A port in host and a different one in the port field, or a schema other
        than http or https, cannot be meant.
        """
        host = (self.host or default_host).strip().rstrip("/")
        schema = (self.schema or "").strip().lower() or None
        if schema is not None and schema not in HTTP_SCHEMES:
            raise self.problem(vendor, "schema", f"{brief(self.schema)} is not http or https")
        if "://" in host:
            parts = _split(host)
            if parts is None or parts.scheme not in HTTP_SCHEMES or not parts.hostname:
                raise self.problem(vendor, "host", f"{brief(host)} is not an http:// or https:// URL with a host")
            if schema is not None and schema != parts.scheme:
                raise self.problem(vendor, "schema", f"{schema!r} contradicts the scheme of host {brief(host)}")
        else:
            parts = _split(f"//{host}")
            if parts is None or not parts.hostname or parts.path or parts.query or parts.fragment:
                raise self.problem(
                    vendor, "host", f"{brief(host)} is not a host name (put a path in a whole URL: http://host/path)"
                )
        port_text = _port_text(parts)
        if port_text is not None and parts.port is None:
            raise self.problem(vendor, "host", f"{brief(host)} has a port that is not a number from 1 to 65535")
        if self.port is not None and not 0 < self.port < 65536:
            raise self.problem(vendor, "port", f"{self.port} is not a port number from 1 to 65535")
        if self.port is not None and parts.port is not None and self.port != parts.port:
            raise self.problem(vendor, "port", f"{self.port} contradicts the port in host {brief(host)}")
        if "://" in host:
            return host if self.port is None or parts.port is not None else _with_port(parts, self.port)
        scheme = schema or default_scheme
        port = parts.port or self.port or default_port
        return f"{scheme}://{parts.netloc}" if parts.port or not port else f"{scheme}://{parts.netloc}:{port}"

    def positive_number(self, vendor: str, field: str, default: float) -> float:
        """An extra holding a number above zero (a JSON number or its text); ``default`` when absent or empty."""
        raw = self.extra.get(field)
        if raw is None or str(raw).strip() == "":
            return default
        try:
            value = float(str(raw).strip()) if not isinstance(raw, bool) else float("nan")
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise self.problem(vendor, field, f"{brief(raw)} is not a number above zero")
        return value

    def tls_verify(self) -> bool | str:
        """The TLS check as requests takes it (``core.session`` turns a bundle path into aiohttp's SSL context):
        True, False, or the path of a CA bundle.

        The form saves ``verify`` as a switch (a JSON boolean) and the bundle in its own field, ``ca_bundle``;
        connections saved before keep ``verify`` as text, a bundle path included, and are read as they were.
        """
        verify = self.extra_bool_or_path("verify")
        bundle = str(self.extra.get("ca_bundle") or "").strip()
        return bundle if verify is True and bundle else verify


HTTP_SCHEMES = ("http", "https")


def _split(text: str) -> SplitResult | None:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return None
    if any(c.isspace() for c in text):
        return None
    return parts


def _port_text(parts: SplitResult) -> str | None:
    """What follows the host's colon, if anything (an IPv6 literal's colons are inside its brackets)."""
    netloc = parts.netloc.rpartition("@")[2]
    _, colon, tail = netloc.rpartition(":")
    return tail if colon and "]" not in tail else None


def _with_port(parts: SplitResult, port: int) -> str:
    netloc = f"{parts.netloc}:{port}"
    return parts._replace(netloc=netloc).geturl()
