"""Provider metadata that Airflow discovers through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_jobprogress.core.protocol import VendorApi
from airflow_provider_jobprogress.vendors.itwin import ITwinApi
from airflow_provider_jobprogress.vendors.olconnect import OLConnectApi
from airflow_provider_jobprogress.vendors.scriptx import ScriptXApi

OL_CONNECT = "Upland OL Connect"
SCRIPTX = "MeadCo ScriptX.Services"
ITWIN = "Bentley iTwin"

# The generic trigger, sensor and fetch operator serve every vendor, so each integration lists them.
_TRIGGER = "airflow_provider_jobprogress.triggers.job_progress"
_GENERIC_SENSOR = "airflow_provider_jobprogress.sensors.job_progress"
_FETCH_OPERATOR = "airflow_provider_jobprogress.operators.fetch_result"


# The 3.3 UI turns each conn-fields entry into a form field: "label" becomes the field title,
# schema "default" becomes the initial value (and is written into Connection.extra on save),
# "enum" makes a dropdown (its "values_display" names each value), a boolean type makes a switch
# and format "password" masks the field.
def _tls_fields() -> dict[str, Any]:
    return {
        "verify": {
            "label": "Verify TLS",
            "description": (
                "Check the server's TLS certificate (https only). Off accepts any certificate: for a test server only."
            ),
            "schema": {"type": ["boolean", "null"], "default": True},
        },
        "ca_bundle": {
            "label": "CA bundle (path)",
            "description": (
                "Path of a PEM file of CA certificates to check the server against (a private CA), on every "
                "machine that runs tasks or the triggerer. Empty: the system's CAs. Used while Verify TLS is on."
            ),
            "schema": {"type": ["string", "null"]},
        },
    }


def _budget_fields(api: type[VendorApi], *, lists: str | None) -> dict[str, Any]:
    """The request budget (core.budget) and, where the vendor lists its jobs, the shared poller's switch."""
    per_minute, per_hour = api.default_requests_per_minute, api.default_requests_per_hour
    hourly = f"{per_hour:,.0f}" if per_hour else "none"
    fields: dict[str, Any] = {
        "requests_per_minute": {
            "label": "Requests per minute",
            "description": (
                f"Calls this connection may send per minute from each Airflow process (triggerer or worker), shared "
                f"by all its waits and tasks; a 429 pauses them all. Empty: {per_minute:,.0f}. With several "
                "triggerers, divide the vendor's limit among them."
            ),
            "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
        },
        "requests_per_hour": {
            "label": "Requests per hour",
            "description": f"As above, per hour, for vendors that also count per hour. Empty: {hourly}.",
            "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
        },
    }
    if lists is not None:
        fields["list_polling"] = {
            "label": "Read many waits with one listing",
            "description": (
                f"With three or more waits on this connection in a triggerer, read their jobs with {lists} once "
                "per cycle instead of one call per wait. Off: every wait reads its own job."
            ),
            "schema": {"type": ["boolean", "null"], "default": True},
        }
    return fields


def _olconnect_connection() -> dict[str, Any]:
    return {
        "connection-type": "olconnect",
        "hook-class-name": "airflow_provider_jobprogress.hooks.olconnect.OLConnectHook",
        "hook-name": "Upland OL Connect",
        "ui-field-behaviour": {
            "hidden-fields": [],
            "relabeling": {
                "host": "Server",
                "schema": "Protocol (http or https)",
                "login": "User (empty: server security off)",
                "password": "Password",
            },
            "placeholders": {
                "host": "olconnect.example.com",
                "port": "9340",
                "schema": "http",
                "login": "ol-admin",
            },
        },
        "conn-fields": {
            "auth": {
                "label": "Authentication",
                "description": (
                    "token: log in once and send the auth_token header on later calls; "
                    "basic: send Basic credentials on every call."
                ),
                "schema": {"type": ["string", "null"], "enum": ["token", "basic"], "default": "token"},
            },
            **_tls_fields(),
            **_budget_fields(OLConnectApi, lists="getOperations"),
        },
    }


def _scriptx_connection() -> dict[str, Any]:
    return {
        "connection-type": "scriptx",
        "hook-class-name": "airflow_provider_jobprogress.hooks.scriptx.ScriptXHook",
        "hook-name": "MeadCo ScriptX.Services",
        "ui-field-behaviour": {
            "hidden-fields": ["login"],
            "relabeling": {
                "host": "Server (empty: the variant's default)",
                "schema": "Protocol (http or https)",
                "port": "Port (optional)",
                "password": "License GUID",
            },
            "placeholders": {
                "host": "scriptxservices.meadroid.com",
                "schema": "https",
                "port": "443 for https, 41191 on a Windows PC",
                "password": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
            },
        },
        "conn-fields": {
            "variant": {
                "label": "Service variant",
                "description": (
                    "Which ScriptX.Services edition the server is. Server, Protocol and Port, when set, are the "
                    "address for any variant (an emulator or a proxy for the cloud, say). cloud: MeadCo's hosted "
                    "service, scriptxservices.meadroid.com over https by default; Test checks the license GUID. "
                    "on_premise: ScriptX.Services on your own server (set Server); Test reads its service "
                    "description. windows_pc: ScriptX.Services for Windows PC, 127.0.0.1:41191 over http by default."
                ),
                "schema": {
                    "type": ["string", "null"],
                    "enum": ["cloud", "on_premise", "windows_pc"],
                    "values_display": {
                        "cloud": "Cloud: MeadCo's hosted service, or at Server if set",
                        "on_premise": "On-Premise: your own server (set Server)",
                        "windows_pc": "Windows PC: ScriptX.Services for Windows PC",
                    },
                    "default": "cloud",
                },
            },
            "meadroid_path": {
                "label": "Licensed page URL (X-Meadroid-Path)",
                "description": (
                    "Sent as the X-Meadroid-Path header, as MeadCo's own client sends its page URL: a cloud "
                    "license is bound to the domains it was issued for, and the service checks this URL "
                    "against them. Set it to a URL on a licensed domain; empty sends no header."
                ),
                "schema": {"type": ["string", "null"]},
            },
            **_tls_fields(),
            **_budget_fields(ScriptXApi, lists=None),
        },
    }


def _itwin_connection() -> dict[str, Any]:
    return {
        "connection-type": "itwin",
        "hook-class-name": "airflow_provider_jobprogress.hooks.itwin.ITwinHook",
        "hook-name": "Bentley iTwin (reality data jobs)",
        "ui-field-behaviour": {
            "hidden-fields": ["host", "port", "schema"],
            "relabeling": {"login": "Client ID", "password": "Client secret"},
            "placeholders": {"login": "service-xxxxxxxxxxxxxxxxxxxx"},
        },
        "conn-fields": {
            "api": {
                "label": "Reality API",
                "description": (
                    "The iTwin API that runs the jobs this connection watches. Bentley's current APIs are "
                    "reality-analysis (Reality Analysis v2) and reality-modeling (v2); realitydataanalysis "
                    "(Reality Analysis v1, the default for existing connections) and realityconversion (v1) "
                    "are the older ones."
                ),
                "schema": {
                    "type": ["string", "null"],
                    "enum": ["realitydataanalysis", "realityconversion", "reality-modeling", "reality-analysis"],
                    "default": "realitydataanalysis",
                },
            },
            "base_url": {
                "label": "API base URL",
                "description": "Root of the iTwin Platform APIs.",
                "schema": {"type": ["string", "null"], "default": "https://api.bentley.com"},
            },
            "auth_url": {
                "label": "Token endpoint (IMS)",
                "description": (
                    "OAuth2 token endpoint for the client-credentials grant of a service app. "
                    "Named auth_url, not token_url: Airflow masks every extra whose key contains 'token'. "
                    "The older key token_url is still read."
                ),
                "schema": {"type": ["string", "null"], "default": "https://ims.bentley.com/connect/token"},
            },
            "scope": {
                "label": "OAuth scope",
                "description": "Scopes requested with the token, separated by spaces.",
                "schema": {"type": ["string", "null"], "default": "itwin-platform"},
            },
            "itwin_id": {
                "label": "iTwin ID",
                "description": "The iTwin that holds the jobs' reality data; needed to download outputs.",
                "schema": {"type": ["string", "null"]},
            },
            **_tls_fields(),
            **_budget_fields(ITwinApi, lists="GET …/jobs?$filter"),
        },
    }


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-jobprogress",
        "name": "Job Progress",
        "description": (
            "Deferrable sensors and operators that wait on long-running vendor jobs "
            "(Upland OL Connect, MeadCo ScriptX.Services, Bentley iTwin) and bring their results home."
        ),
        "integrations": [
            {
                "integration-name": OL_CONNECT,
                "external-doc-url": "https://help.uplandsoftware.com/objectiflune/en/olconnect-api/2025.2/Cookbook/REST_API_Reference/All-In-One_Service.html",
                "tags": ["service"],
            },
            {
                "integration-name": SCRIPTX,
                "external-doc-url": "https://support.meadroid.com/Developers/KnowledgeBank/TechnicalReference/ScriptXServices/WebServiceAPIReference/ServiceDescription/GET",
                "tags": ["service"],
            },
            {
                "integration-name": ITWIN,
                "external-doc-url": "https://developer.bentley.com/apis/realitydataanalysis/operations/jobs-progress",
                "tags": ["service"],
            },
        ],
        "hooks": [
            {"integration-name": OL_CONNECT, "python-modules": ["airflow_provider_jobprogress.hooks.olconnect"]},
            {"integration-name": SCRIPTX, "python-modules": ["airflow_provider_jobprogress.hooks.scriptx"]},
            {"integration-name": ITWIN, "python-modules": ["airflow_provider_jobprogress.hooks.itwin"]},
        ],
        "triggers": [
            {"integration-name": OL_CONNECT, "python-modules": [_TRIGGER]},
            {"integration-name": SCRIPTX, "python-modules": [_TRIGGER]},
            # the event trigger for asset watchers lists finished jobs: only iTwin's API can
            {
                "integration-name": ITWIN,
                "python-modules": [_TRIGGER, "airflow_provider_jobprogress.triggers.job_finished"],
            },
        ],
        "sensors": [
            {
                "integration-name": OL_CONNECT,
                "python-modules": [_GENERIC_SENSOR, "airflow_provider_jobprogress.sensors.olconnect"],
            },
            {
                "integration-name": SCRIPTX,
                "python-modules": [_GENERIC_SENSOR, "airflow_provider_jobprogress.sensors.scriptx"],
            },
            {
                "integration-name": ITWIN,
                "python-modules": [_GENERIC_SENSOR, "airflow_provider_jobprogress.sensors.itwin"],
            },
        ],
        "operators": [
            {
                "integration-name": OL_CONNECT,
                "python-modules": ["airflow_provider_jobprogress.operators.olconnect", _FETCH_OPERATOR],
            },
            {
                "integration-name": SCRIPTX,
                "python-modules": ["airflow_provider_jobprogress.operators.scriptx", _FETCH_OPERATOR],
            },
            {
                "integration-name": ITWIN,
                "python-modules": ["airflow_provider_jobprogress.operators.itwin", _FETCH_OPERATOR],
            },
        ],
        "connection-types": [_olconnect_connection(), _scriptx_connection(), _itwin_connection()],
    }
