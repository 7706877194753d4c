"""The one vocabulary every vendor is mapped into: job states and progress."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_jobprogress.core.errors import printable

#: the longest vendor message an event, an XCom or a log line carries (a vendor's error text can run to pages;
#: events land in the metadata database and in the triggerer's "Trigger fired event" line)
MAX_MESSAGE = 500


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

    ``raw`` is the vendor's own answer (parsed JSON or text), for code that reads a job in-process (the
    hook's ``get_progress``); readings from a listing (``Listing``) have none. ``to_dict`` gives the form that
    travels in trigger events and XCom: the facts only (no ``raw``: a vendor body can be large and can name
    people, such as the e-mail of the iTwin service app that started the job), with the message shortened to
    ``MAX_MESSAGE`` characters.
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
            parts.append(f"({short(self.message)})")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "job_id": self.job_id,
            "state": self.state.value,
            "percent": self.percent,
            "step": self.step,
            "message": None if self.message is None else short(self.message),
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
        )


@dataclass(frozen=True)
class Listing:
    """What one listing read of a connection's jobs found.

    ``jobs``: a reading per job id the vendor listed (running jobs; ended ones where an ended listing found
    them). ``complete``: every running job of the connection is in it (False when pages were left unread: then
    a job missing from it may still run). ``percentages``: the readings carry the job's percentage.

    Its readings carry no ``raw`` (nor do those of ``read_ended``): the poller keeps a listing for all its waits,
    and each wait its last reading; with the vendor's entries in them (an iTwin job's whole details) two
    listings' parsed answers stayed alive, 29 MiB of 202 MiB traced at 20,000 waits (``benchmarks/README.md``).
    """

    jobs: Mapping[str, JobProgress]
    complete: bool = True
    percentages: bool = True


def short(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line and at most ``limit`` characters (an ellipsis says something was cut).

    Only the start of ``text`` is read: a vendor's body can be megabytes, and this runs on the triggerer's loop.
    """
    window = 4 * limit + 64
    line = " ".join(text[:window].split())
    if len(line) > limit:
        return line[: limit - 1] + "…"
    return line + "…" if len(text) > window else line
