"""Reading one value a vendor or a user hands us, with an error that names it: a bounded repr for messages, a
percentage, a job id."""

from __future__ import annotations

import reprlib
from typing import Any

from airflow_provider_jobprogress.core.errors import (
    ConfigurationError,
    VendorResponseError,
)

_BRIEF = reprlib.Repr()  # keyword arguments only from Python 3.12
_BRIEF.maxlevel, _BRIEF.maxdict, _BRIEF.maxlist, _BRIEF.maxstring, _BRIEF.maxother = 3, 6, 6, 60, 60


def brief(value: Any, limit: int = 80) -> str:
    """A short repr of any vendor value for an error message: bounded in depth and length, never raising."""
    text = _BRIEF.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def percentage(value: Any, vendor: str, job_id: str | None, *, what: str) -> float | None:
    """A vendor's percentage as a float in 0..100; None when absent. NaN, infinities, values outside
    0..100 and non-numbers are a ``VendorResponseError``: a progress that cannot be shown is not one."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise VendorResponseError(vendor, job_id, f"{what}: percentage {brief(value)} is not a number")
    # Compared before float(): an integer of 400 digits overflows float(); NaN fails every comparison.
    if not 0 <= value <= 100:
        raise VendorResponseError(vendor, job_id, f"{what}: percentage {brief(value)} is not within 0-100")
    return float(value)


NOT_JOB_IDS = ("", ".", "..")


def check_job_id(job_id: object, subject: str) -> str:
    """The job id as text, or a ``ConfigurationError`` (before any call) for None, blank, ``.`` or ``..``, and for
    ids with line breaks or other control characters: no vendor hands those out, and they would forge log lines."""
    text = None if job_id is None else str(job_id)
    if text is None or text.strip() in NOT_JOB_IDS or not text.isprintable():
        raise ConfigurationError(
            subject, None, f"{brief(job_id)} is not a job id (set job_id to the id the vendor gave)", field="job_id"
        )
    return text
