"""The error hierarchy: every error names the vendor and the job, and never carries a secret."""

from __future__ import annotations


class JobProgressError(Exception):
    """Base of every error this provider raises.

    The message always starts with the vendor and the job id (or what was being done when there is
    no job yet) and ends with what to do next where there is something to do.
    """

    hint: str = ""

    def __init__(self, vendor: str, job_id: str | None, message: str, *, hint: str | None = None) -> None:
        self.vendor = vendor
        self.job_id = job_id
        self.detail = message
        if hint is not None:
            self.hint = hint
        super().__init__(self._compose())

    def _compose(self) -> str:
        subject = f"{self.vendor} job {printable(self.job_id)}" if self.job_id else self.vendor
        text = f"{subject}: {self.detail}"
        return f"{text}. {self.hint}" if self.hint else text

    def for_job(self, job_id: str) -> JobProgressError:
        """This error naming ``job_id``, when it was raised before the job was known (reading settings)."""
        if self.job_id:
            return self
        err = _rebuild(type(self), self.vendor, job_id, self.detail, self.hint, dict(self.__dict__, job_id=job_id))
        err.__traceback__ = self.__traceback__
        return err

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the typed error intact when it crosses process boundaries (pickling).
        return (_rebuild, (type(self), self.vendor, self.job_id, self.detail, self.hint, dict(self.__dict__)))


def printable(text: str) -> str:
    """``text`` as it may appear in a log line: as is, or its repr when it holds a line break or another
    control character (a job id with CRLF in it must not forge log lines)."""
    return text if text.isprintable() else repr(text)


def error_from_event(name: str | None, message: str) -> JobProgressError:
    """The typed error a trigger's error event names (by class name), carrying the event's message as is.

    Names that are not ours (an unplanned exception in the trigger) give the base ``JobProgressError``.
    """
    cls = next((c for c in _all_errors() if c.__name__ == name), JobProgressError)
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.vendor, err.job_id, err.detail, err.hint = "", None, message, ""
    return err


def _all_errors() -> list[type[JobProgressError]]:
    found, todo = [], [JobProgressError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def _rebuild(
    cls: type[JobProgressError], vendor: str, job_id: str | None, detail: str, hint: str, state: dict[str, object]
) -> JobProgressError:
    err = cls.__new__(cls)
    JobProgressError.__init__(err, vendor, job_id, detail, hint=hint)
    err.__dict__.update(state)
    return err


class AuthenticationError(JobProgressError):
    """The vendor refused our credentials or token (after one fresh login)."""

    hint = "Check the login, password, license or client credentials in the Airflow connection"


class JobNotFoundError(JobProgressError):
    """The vendor does not know this job (wrong id, or the vendor forgot it)."""

    hint = "Check the job id; finished jobs may have been dropped by the vendor"


class RateLimitedError(JobProgressError):
    """The vendor asked us to slow down (HTTP 429) for longer than we wait in one call."""

    def __init__(self, vendor: str, job_id: str | None, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(vendor, job_id, message, hint="Poll less often or raise the vendor quota")


class InvalidRequestError(JobProgressError):
    """The vendor rejected what we asked for (HTTP 400/422): the job specification or change is wrong."""


class VendorResponseError(JobProgressError):
    """The vendor answered something we cannot read (HTML page, empty body, unknown code, bad JSON)."""

    hint = "The server may be a proxy or a different API version; check the connection's host and API"


class ResponseTooLargeError(VendorResponseError):
    """The vendor's answer is far larger than such an answer can be (an endless or runaway body): it was not read
    past the bound. Read again like any unreadable answer while a wait polls (the next may be sane)."""

    hint = "The server may be a proxy or a different API version, or misbehaving; check the connection's host"


class VendorUnavailableError(JobProgressError):
    """The vendor could not be reached or kept failing (connection errors, timeouts, 5xx) after retries."""

    hint = "The server may be down or overloaded; the task can be retried"


class DeadlineExceededError(JobProgressError):
    """The wait's deadline passed during a call (in its retries, or a pause the vendor asked for)."""

    hint = "Raise the task's timeout, or poll less often"


class OperationNotSupportedError(JobProgressError):
    """The vendor API has no such operation (for example cancelling a ScriptX PDF job)."""


class ResultNotReadyError(JobProgressError):
    """The job has no result yet because it has not finished."""

    hint = "Wait for the job with a sensor before fetching its result"


class ResultNotForXComError(JobProgressError):
    """The result is binary or larger than the operator's ``max_xcom_bytes``: it belongs in storage."""

    hint = "Set destination= (a file://, s3://, gs://... path) to stream it to storage"


class JobFailedError(JobProgressError):
    """The job ended in the vendor's failed state."""


class JobCancelledError(JobProgressError):
    """The job ended cancelled or abandoned."""


class ResultDestinationError(JobProgressError):
    """The destination cannot take the result: not an absolute storage URI we can write, or writing there failed.

    Raised before any result byte is requested wherever the destination is known (at DAG parse time when it
    is not templated), so a result the vendor serves only once is never collected into a place that cannot
    keep it.
    """

    hint = (
        "Set destination= to an absolute URI the worker may write: file:///data/out/, "
        "s3://<aws conn id>@bucket/prefix/ (the [s3] extra), gs://... (the [gcs] extra)"
    )


class UnsafeResultNameError(JobProgressError):
    """A vendor-supplied result name is absolute, empty, or would leave the destination (``..``)."""

    hint = "The vendor named an output unsafely; nothing was written. Report the name to the vendor"


class ConfigurationError(JobProgressError, ValueError):
    """A connection or task setting is wrong: the message names the connection and the field to fix.

    Raised when settings are read (before any request) or when the first answer proves one wrong (https
    against a plain HTTP port). Never retried: trying again gives the same answer until someone edits the
    connection. Also a ``ValueError``, which these mistakes raised before it existed.
    """

    hint = "Fix it in the Airflow connection (or the task's arguments); retrying will not help"

    def __init__(
        self,
        vendor: str,
        job_id: str | None,
        message: str,
        *,
        conn_id: str | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.conn_id = conn_id
        self.field = field
        where = f"connection {conn_id!r}" if conn_id else ""
        if field:
            where = f"{where}, field {field!r}" if where else f"field {field!r}"
        super().__init__(vendor, job_id, f"configuration error in {where}: {message}" if where else message, hint=hint)
