"""Deferrable sensors that wait on vendor jobs."""
