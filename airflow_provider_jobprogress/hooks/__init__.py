"""Airflow hooks, one per vendor, on one generic base."""
