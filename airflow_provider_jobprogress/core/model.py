"""The one vocabulary every vendor is mapped into: job states and progress."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_jobprogress.core.errors import printable


class JobState(enum.StrEnum):
    """Where a remote job stands, whatever the vendor calls it."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobProgress:
    """One reading of a job's progress.

    ``raw`` is the vendor's own answer (parsed JSON or text) so nothing the vendor said is lost;
    ``to_dict`` gives the JSON-able form that travels in trigger events and XCom.
    """

    vendor: str
    job_id: str
    state: JobState
    percent: float | None = None
    step: str | None = None
    message: str | None = None
    raw: Any = field(default=None, compare=False)

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    def changed_from(self, other: JobProgress | None) -> bool:
        """True when a person watching the job would see something new."""
        if other is None:
            return True
        return (self.state, self.percent, self.step) != (other.state, other.percent, other.step)

    def describe(self) -> str:
        parts = [f"{self.vendor} job {printable(self.job_id)}: {self.state.value}"]
        if self.percent is not None:
            parts.append(f"{self.percent:g}%")
        if self.step:
            parts.append(f"step {self.step}")
        if self.message:
            parts.append(f"({self.message})")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "job_id": self.job_id,
            "state": self.state.value,
            "percent": self.percent,
            "step": self.step,
            "message": self.message,
            "raw": _jsonable(self.raw),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobProgress:
        return cls(
            vendor=str(data["vendor"]),
            job_id=str(data["job_id"]),
            state=JobState(data["state"]),
            percent=data.get("percent"),
            step=data.get("step"),
            message=data.get("message"),
            raw=data.get("raw"),
        )


#: vendor answers nest a few levels; deeper parts travel as a placeholder, so no answer can make an event
#: (or an XCom) too deep to serialize
MAX_RAW_DEPTH = 32


def _jsonable(value: Any, depth: int = 0) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or Infinity
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if depth >= MAX_RAW_DEPTH and isinstance(value, dict | list | tuple):
        return "(nested too deep)"
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1) for v in value]
    return str(value)
