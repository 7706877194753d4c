"""FetchJobResultOperator: a finished job's result into XCom (small text) or streamed into any storage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException, BaseOperator, ObjectStoragePath

from airflow_provider_jobprogress.core.errors import ResultNotForXComError, ResultNotReadyError, VendorUnavailableError
from airflow_provider_jobprogress.core.model import JobState
from airflow_provider_jobprogress.core.policies import RequestRetry
from airflow_provider_jobprogress.core.protocol import ResultPart
from airflow_provider_jobprogress.results import IncompleteDownloadError, stage_file, staging
from airflow_provider_jobprogress.waiting import JobWaitMixin

if TYPE_CHECKING:
    from airflow.sdk import XComArg

TEXT_TYPES = ("text/", "application/json", "application/xml")


class FetchJobResultOperator(JobWaitMixin, BaseOperator):
    """Bring a finished job's result home, for any vendor (the connection's type names it).

    - ``destination=None``: the result goes to XCom when it is text of at most ``max_xcom_bytes``
      (OL Connect entity ids and output paths come back as those values). Binary or larger results
      are refused with an error that says to set a destination.
    - ``destination`` (an ``ObjectStoragePath`` or URI such as ``file:///data/out/``, ``s3://conn@bucket/key``;
      templated): the result is streamed in ``chunk_size`` pieces to a temporary object beside the
      target and moved into place only when every file is complete and its size checked, so a failure
      never leaves a partial file. A result of several files (iTwin outputs; a destination ending
      in ``/``) is written under the destination as a directory. XCom gets, per file, ``uri``, ``bytes``,
      ``sha256``, ``content_type`` (a list for a directory destination), and ``metadata`` where the vendor
      said more about the result (OL Connect's ``data_set_id``, ``content_set_id``, ``job_set_id``).
    - Either way, that vendor metadata is also pushed as XCom key ``metadata`` (one dict).

    Not finished → ``ResultNotReadyError``; failed or cancelled → the task fails; result gone (404) →
    ``JobNotFoundError``; a download cut short → the task fails (retryable) with nothing written.
    """

    template_fields: Sequence[str] = ("job_id", "conn_id", "destination")
    ui_color = "#d8f3e0"

    def __init__(
        self,
        *,
        job_id: str | XComArg,
        conn_id: str,
        destination: str | ObjectStoragePath | XComArg | None = None,
        max_xcom_bytes: int = 48 * 1024,
        chunk_size: int = 1 << 20,
        request_retry: RequestRetry | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._init_waiting(poll_policy=None, request_retry=request_retry, cancel_on_kill=False, cancel_on_timeout=False)
        super().__init__(**kwargs)
        self.job_id = job_id
        self.conn_id = conn_id
        self.destination = destination
        self.max_xcom_bytes = max_xcom_bytes
        self.chunk_size = chunk_size

    def execute(self, context: Any) -> Any:
        job_id = str(self.job_id)
        progress = self._read(job_id)
        if progress.state in (JobState.QUEUED, JobState.RUNNING):
            raise ResultNotReadyError(progress.vendor, job_id, f"the job is {progress.state.value}, not finished")
        self._outcome(progress)  # failed / cancelled jobs fail the task here, with the vendor's message
        to_xcom = self.destination is None
        parts = self.hook.xcom_result_parts(job_id) if to_xcom else self.hook.result_parts(job_id)
        if not parts:
            raise AirflowFailException(f"{progress.vendor} job {job_id}: the job finished without any result")
        metadata = {key: value for part in parts for key, value in part.metadata.items()}
        if metadata:  # what the vendor said besides the bytes (OL Connect's set ids), for downstream tasks
            context["ti"].xcom_push(key="metadata", value=metadata)
        return self._to_xcom(job_id, parts) if to_xcom else self._to_storage(job_id, parts)

    # -- XCom ------------------------------------------------------------------------------------
    def _to_xcom(self, job_id: str, parts: list[ResultPart]) -> Any:
        values = [part.value if part.value is not None else self._small_text(job_id, part) for part in parts]
        interpreted = [self.hook.api.result_value(value) for value in values]
        return interpreted[0] if len(interpreted) == 1 else interpreted

    def _small_text(self, job_id: str, part: ResultPart) -> str:
        vendor = self.hook.vendor()
        limit = self.max_xcom_bytes
        body = bytearray()
        with self.hook.open_result(part, job_id) as answer:
            if answer.content_length is not None and answer.content_length > limit:
                raise self._too_big(job_id, part, f"{answer.content_length} bytes")
            for chunk in answer.chunks(min(self.chunk_size, limit + 1)):
                body += chunk
                if len(body) > limit:
                    raise self._too_big(job_id, part, f"more than {limit} bytes")
            content_type = answer.content_type
        text = _as_text(bytes(body), content_type)
        if text is None:
            raise ResultNotForXComError(vendor, job_id, f"result {part.name} is binary ({content_type})")
        return text

    def _too_big(self, job_id: str, part: ResultPart, size: str) -> ResultNotForXComError:
        return ResultNotForXComError(
            self.hook.vendor(), job_id, f"result {part.name} is {size}, over max_xcom_bytes={self.max_xcom_bytes}"
        )

    # -- storage ---------------------------------------------------------------------------------
    def _to_storage(self, job_id: str, parts: list[ResultPart]) -> Any:
        destination = self.destination
        root = destination if isinstance(destination, ObjectStoragePath) else ObjectStoragePath(str(destination))
        as_directory = len(parts) > 1 or str(destination).endswith("/")
        stored = []
        try:
            with staging() as staged:
                for part in parts:
                    target = root / part.name if as_directory else root
                    stored.append(self._stage(staged, job_id, part, target))
        except IncompleteDownloadError as exc:
            raise VendorUnavailableError(self.hook.vendor(), job_id, f"download cut short: {exc}") from None
        for item in stored:
            self.log.info(
                "%s job %s: result %s (%d bytes, sha256 %s)",
                self.hook.vendor(),
                job_id,
                item.uri,
                item.bytes,
                item.sha256,
            )
        result = [item.to_dict() for item in stored]
        for entry, part in zip(result, parts, strict=True):
            if part.metadata:
                entry["metadata"] = dict(part.metadata)
        return result if as_directory else result[0]

    def _stage(self, staged: list[Any], job_id: str, part: ResultPart, target: ObjectStoragePath) -> Any:
        if part.value is not None:
            data = part.value.encode()
            return stage_file(
                staged, target, [data], expected_size=len(data), content_type="text/plain", name=part.name
            )
        with self.hook.open_result(part, job_id) as answer:
            return stage_file(
                staged,
                target,
                answer.chunks(self.chunk_size),
                expected_size=answer.content_length,
                content_type=answer.content_type,
                name=part.name,
            )


def _as_text(body: bytes, content_type: str) -> str | None:
    """The body as text when it is text: a text content type, or UTF-8 without control bytes."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if content_type.startswith(TEXT_TYPES):
        return text
    if any(ord(ch) < 32 and ch not in "\r\n\t" for ch in text):
        return None
    return text
