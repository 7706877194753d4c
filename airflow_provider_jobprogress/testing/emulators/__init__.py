"""Local HTTP emulators of OL Connect, ScriptX.Services and iTwin for hook, trigger and DAG tests."""

from .model import Call, Download, Faults, JobRecord, Quota, Scenario, ScenarioError
from .server import VendorEmulator

__all__ = ["Call", "Download", "Faults", "JobRecord", "Quota", "Scenario", "ScenarioError", "VendorEmulator"]
