"""Hook for Upland OL Connect All-In-One operations (connection type ``olconnect``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from airflow_provider_jobprogress.hooks.base import JobProgressHook, ui_field_behaviour
from airflow_provider_jobprogress.vendors.olconnect import OLConnectApi


class OLConnectHook(JobProgressHook[OLConnectApi]):
    """Submit, follow, fetch and cancel All-In-One operations on an OL Connect server.

    The connection holds the server (host, port 9340, http/https), the user and password (no user:
    server security is off) and extras ``auth`` (``token``: log in once and send ``auth_token``;
    ``basic``: send the credentials on every call) and ``verify`` / ``ca_bundle`` (TLS).
    """

    conn_type: ClassVar[str] = "olconnect"
    default_conn_name: ClassVar[str] = "olconnect_default"
    hook_name: ClassVar[str] = "Upland OL Connect"
    api_class = OLConnectApi
    #: Airflow below 3.2 reads only a hook's own method (3.2+ reads the provider info)
    get_ui_field_behaviour = classmethod(ui_field_behaviour)

    def submit(self, configuration: Mapping[str, Any]) -> str:
        """Start an All-In-One operation from its JSON configuration; returns the operationId."""
        return self.session.run(self.api.submit(configuration))

    def get_result_text(self, operation_id: str) -> str:
        """getResultTxt: the produced entity id or the output file path(s), one per line."""
        return self.session.run(self.api.result_text(operation_id))
