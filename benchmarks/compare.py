"""What both benchmarks share: a median (min-max) spread, ours against the reference per repeat, table cells."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: metric -> {"ours" | "reference" | "ratio": {"median" | "min" | "max": value}}
Summary = dict[str, dict[str, dict[str, float]]]


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: Mapping[str, Sequence[Mapping[str, Any]]], keys: Iterable[str]) -> Summary:
    """``runs["ours"]`` and ``runs["reference"]``: one mapping of metric -> value per repeat, in repeat order."""
    summary: Summary = {}
    for key in keys:
        ours = [float(run[key]) for run in runs["ours"]]
        reference = [float(run[key]) for run in runs["reference"]]
        # Each repeat's pair ran back to back, so its ratio carries the least drift of the machine.
        ratios = [r / o if o > 0 else float("inf") for o, r in zip(ours, reference, strict=True)]
        summary[key] = {"ours": spread(ours), "reference": spread(reference), "ratio": spread(ratios)}
    return summary


def cell(stats: Mapping[str, float], digits: int) -> str:
    if stats["min"] == stats["max"]:
        return f"{stats['median']:.{digits}f}"
    return f"{stats['median']:.{digits}f} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"
