"""Airflow provider that waits on long-running vendor jobs and brings their results home."""

__version__ = "0.1.0"
