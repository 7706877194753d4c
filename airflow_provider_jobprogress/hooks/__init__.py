"""Airflow hooks, one per vendor, on one generic base."""

from __future__ import annotations

import importlib
from typing import Any

#: connection type -> hook class path; how the generic sensor finds the vendor from the connection
HOOK_CLASS_BY_CONN_TYPE: dict[str, str] = {
    "olconnect": "airflow_provider_jobprogress.hooks.olconnect.OLConnectHook",
    "scriptx": "airflow_provider_jobprogress.hooks.scriptx.ScriptXHook",
    "itwin": "airflow_provider_jobprogress.hooks.itwin.ITwinHook",
}


def load_hook_class(path: str) -> Any:
    """Import a hook class from its dotted path (kept here: Airflow moved ``import_string`` between versions)."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)
