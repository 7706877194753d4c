"""FetchJobResultOperator: a finished job's result into XCom (small text) or streamed into any storage."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException, BaseOperator, ObjectStoragePath

from airflow_provider_jobprogress.core.errors import (
    ConfigurationError,
    JobNotFoundError,
    ResultDestinationError,
    ResultNotForXComError,
    ResultNotReadyError,
    UnsafeResultNameError,
)
from airflow_provider_jobprogress.core.model import JobProgress, JobState
from airflow_provider_jobprogress.core.policies import RequestRetry
from airflow_provider_jobprogress.core.protocol import ResultPart
from airflow_provider_jobprogress.result_names import (
    MAX_COMPONENT_BYTES,
    NameBook,
    contained,
    disposition_name,
    extension,
)
from airflow_provider_jobprogress.results import (
    SUCCESS_MARKER,
    DestinationSpec,
    ResultStore,
    StoredFile,
    check_destination,
    is_templated,
    landing,
    open_store,
)
from airflow_provider_jobprogress.waiting import JobWaitMixin

if TYPE_CHECKING:
    from airflow.sdk import XComArg

TEXT_TYPES = ("text/", "application/json", "application/xml")


class FetchJobResultOperator(JobWaitMixin, BaseOperator):
    """Bring a finished job's result home, for any vendor (the connection's type names it).

    - ``destination=None``: the result goes to XCom when it is text of at most ``max_xcom_bytes``
      (OL Connect entity ids and output paths come back as those values). Binary or larger results
      are refused with an error that says to set a destination.
    - ``destination`` (an ``ObjectStoragePath`` or an absolute URI such as ``file:///data/out/``,
      ``s3://conn@bucket/key``; templated): checked before any result byte is requested (at parse time
      when it is not templated), created and proven writable before the download starts, and the result
      streamed in ``chunk_size`` pieces where no reader sees it until every file is complete; a failure
      never leaves the destination with less than it had (the README says what each store promises).
      A destination ending in ``/``, an existing folder, or a result of several files is a folder;
      vendor names are kept inside it (a name that would leave it is refused) and colliding names
      numbered. XCom is always a list with, per file, ``uri``, ``name``, ``source`` (the vendor's own
      name), ``bytes``, ``sha256``, ``content_type`` and ``metadata`` (what the vendor said about the
      result besides its bytes, such as OL Connect's ``data_set_id``, ``content_set_id``, ``job_set_id``;
      ``{}`` when nothing). A folder gets, last, ``success_marker`` (``_SUCCESS``): a JSON manifest of the
      result's files (name, bytes, sha256, content type), so readers know the result there is whole; give
      mapped fetches into one folder a marker each (``"_SUCCESS-{{ ti.map_index }}"``), or None for none.
    - Either way, vendor metadata is also pushed as XCom key ``metadata`` (one dict) when there is some.

    Not finished → ``ResultNotReadyError``; failed or cancelled → the task fails; a result its vendor serves once
    and already served (ScriptX's status 100 Collected) → the task fails without retry; result gone (404) →
    ``JobNotFoundError``; a download cut short → the task fails (retryable) with nothing written.
    """

    template_fields: Sequence[str] = ("job_id", "conn_id", "destination", "success_marker")
    ui_color = "#d8f3e0"

    def __init__(
        self,
        *,
        job_id: str | XComArg,
        conn_id: str,
        destination: str | ObjectStoragePath | XComArg | None = None,
        max_xcom_bytes: int = 48 * 1024,
        chunk_size: int = 1 << 20,
        success_marker: str | None = SUCCESS_MARKER,
        request_retry: RequestRetry | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._init_waiting(poll_policy=None, request_retry=request_retry, cancel_on_kill=False, cancel_on_timeout=False)
        super().__init__(**kwargs)
        self._check_job_id_at_parse(job_id)
        self.job_id = job_id
        self.conn_id = conn_id
        self.destination = destination
        self.max_xcom_bytes = max_xcom_bytes
        self.chunk_size = chunk_size
        self.success_marker = success_marker
        # what this try fetched, for OpenLineage (read in get_openlineage_facets_on_complete)
        self._fetched_job_id: str | None = None
        self._stored: list[dict[str, Any]] = []
        if destination is not None and not is_templated(destination):
            # At parse time: a destination that can never work must not wait for a job to finish first.
            check_destination(destination, f"{type(self).__name__} {self.task_id!r}", None)
        if not is_templated(success_marker):
            self._marker()

    def _marker(self) -> str | None:
        """``success_marker`` as rendered: None, or a plain file name (it lands in the destination folder)."""
        marker = self.success_marker
        if marker is None:
            return None
        if (
            not isinstance(marker, str)
            or marker.strip() in ("", ".", "..")
            or not marker.isprintable()
            or any(sep in marker for sep in "/\\")
            or len(marker.encode()) > MAX_COMPONENT_BYTES
        ):
            raise ConfigurationError(
                f"{type(self).__name__} {self.task_id!r}",
                None,
                f"{marker!r} is not a plain file name (set it to one, such as '_SUCCESS', or to None)",
                field="success_marker",
            )
        return marker

    def execute(self, context: Any) -> Any:
        job_id = self._rendered_job_id()
        spec = None
        if self.destination is not None:
            spec = check_destination(self.destination, self.hook.vendor(), job_id)
        marker = self._marker()
        progress = self._read(job_id)
        if progress.state in (JobState.QUEUED, JobState.RUNNING):
            raise ResultNotReadyError(progress.vendor, job_id, f"the job is {progress.state.value}, not finished")
        self._outcome(progress)  # failed / cancelled jobs fail the task here, with the vendor's message
        gone = self._gone(progress)
        if gone is not None and spec is None:
            self.log.error("%s", gone)
            raise gone
        self._fetched_job_id = job_id
        parts = self.hook.xcom_result_parts(job_id) if spec is None else self.hook.result_parts(job_id)
        if not parts:
            raise AirflowFailException(f"{progress.vendor} job {job_id}: the job finished without any result")
        metadata = {key: value for part in parts for key, value in part.metadata.items()}
        if metadata:  # what the vendor said besides the bytes (OL Connect's set ids), for downstream tasks
            context["ti"].xcom_push(key="metadata", value=metadata)
        if spec is None:
            return self._to_xcom(job_id, parts)
        self._stored = self._to_storage(job_id, spec, parts, marker, gone)
        return self._stored

    def _gone(self, progress: JobProgress) -> AirflowFailException | None:
        """The failure of a fetch whose result its vendor served once and has served (ScriptX's status 100
        Collected: an earlier try died past its download, or another reader took it): no retry could fetch it."""
        why = self.hook.api.result_gone(progress)
        if why is None:
            return None
        error = JobNotFoundError(
            progress.vendor, progress.job_id, why, hint="No retry can fetch it: submit the job again to have it"
        )
        failure = AirflowFailException(str(error))
        failure.__cause__ = error  # as ``raise failure from error`` would, where it is raised
        failure.__suppress_context__ = True
        return failure

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (``apache-airflow-providers-openlineage``, when installed) calls this after a success:
        an output dataset per stored file, and the vendor job as run facets. Imported here, so the provider
        stays optional."""
        from airflow_provider_jobprogress.lineage import job_lineage

        return job_lineage(
            vendor=self.hook.vendor(),
            conn_type=self.hook.conn_type,
            conn_id=self.conn_id,
            job_id=self._fetched_job_id or str(self.job_id),
            stored=self._stored,
        )

    # -- XCom ------------------------------------------------------------------------------------
    def _to_xcom(self, job_id: str, parts: list[ResultPart]) -> Any:
        # A refusal comes before any download: opening a one-time download (ScriptX's PDF) may collect it.
        # What the vendor declares before the first byte decides first; the answer's own type and size after.
        for part in parts:
            declared = (part.content_type or "").split(";")[0].strip().lower()
            if part.value is None and declared and not declared.startswith(TEXT_TYPES):
                raise ResultNotForXComError(
                    self.hook.vendor(),
                    job_id,
                    f"result {part.label} is {declared} (as the vendor declares it), not text; nothing was downloaded",
                )
        values = [part.value if part.value is not None else self._small_text(job_id, part) for part in parts]
        interpreted = [self.hook.api.result_value(value) for value in values]
        return interpreted[0] if len(interpreted) == 1 else interpreted

    def _small_text(self, job_id: str, part: ResultPart) -> str:
        vendor = self.hook.vendor()
        limit = self.max_xcom_bytes
        body = bytearray()
        with self.hook.open_result(part, job_id) as answer:
            if answer.content_length is not None and not answer.content_encoding and answer.content_length > limit:
                raise self._too_big(job_id, part, f"{answer.content_length} bytes")
            for chunk in answer.chunks(min(self.chunk_size, limit + 1)):
                body += chunk
                if len(body) > limit:
                    raise self._too_big(job_id, part, f"more than {limit} bytes")
            content_type = answer.content_type
        text = _as_text(bytes(body), content_type)
        if text is None:
            raise ResultNotForXComError(vendor, job_id, f"result {part.label} is binary ({content_type})")
        return text

    def _too_big(self, job_id: str, part: ResultPart, size: str) -> ResultNotForXComError:
        return ResultNotForXComError(
            self.hook.vendor(), job_id, f"result {part.label} is {size}, over max_xcom_bytes={self.max_xcom_bytes}"
        )

    # -- storage ---------------------------------------------------------------------------------
    def _to_storage(
        self,
        job_id: str,
        spec: DestinationSpec,
        parts: list[ResultPart],
        marker: str | None,
        gone: AirflowFailException | None = None,
    ) -> list[dict[str, Any]]:
        vendor = self.hook.vendor()
        store = open_store(spec, vendor, job_id, several=len(parts) > 1)
        # Every name the vendor listed, and the job id that names an unnamed file, is checked before the first
        # download: opening a one-time download may already collect it, so a refusal must come first.
        names = [self._vendor_name(store, job_id, part) for part in parts]
        book = NameBook()
        if store.folder and marker is not None:
            book.claim(marker)  # a vendor file of that name is numbered: the marker is ours
        stored: list[StoredFile] = []
        with landing(store, marker=marker):
            if gone is not None:  # raised once the store cleared what a killed try of this fetch left
                self.log.error("%s", gone)
                raise gone
            for part, name in zip(parts, names, strict=True):
                stored.append(self._land(store, book, job_id, part, name))
        for item in stored:
            self.log.info(
                "%s job %s: result %s (%d bytes, sha256 %s)", vendor, job_id, item.uri, item.bytes, item.sha256
            )
        return [{**item.to_dict(), "metadata": dict(part.metadata)} for item, part in zip(stored, parts, strict=True)]

    def _vendor_name(self, store: ResultStore, job_id: str, part: ResultPart) -> str | None:
        """A listed name, checked; None for a file the download will name (its job-id fallback checked now)."""
        if not store.folder:
            return None
        name = contained(self.hook.vendor(), job_id, part.name if part.name is not None else f"{job_id}.bin")
        store.check_name(name)
        return name if part.name is not None else None

    def _offered_name(
        self, store: ResultStore, book: NameBook, job_id: str, offered: str | None, content_type: str, head: bytes
    ) -> str:
        """The name of a file the vendor named only in its download (ScriptX's Content-Disposition), claimed.

        The download is open by now and may be the vendor's only one, so a refusal here would cost it: an
        offered name that cannot be used is only a suggestion, and the job id names the file instead
        (``{job_id}.bin`` was checked before the download opened, so only a race can refuse it)."""
        vendor = self.hook.vendor()
        last = f"{job_id}.bin"
        candidates = [name for name in (offered, f"{job_id}{extension(content_type, head)}") if name] + [last]
        refused: list[str] = []
        for candidate in candidates:
            try:
                name = contained(vendor, job_id, book.name_for(contained(vendor, job_id, candidate)))
                store.check_name(name)
            except (UnsafeResultNameError, ResultDestinationError) as exc:
                if candidate is last:
                    raise
                refused.append(exc.detail.removesuffix("; nothing was written"))
                continue
            if refused:
                self.log.warning(
                    "%s job %s: the name the vendor offered cannot be used, the result is named %r instead: %s",
                    vendor,
                    job_id,
                    name,
                    "; ".join(refused),
                )
            return book.claim(name)
        raise AssertionError("unreachable: the last candidate returns or raises")

    def _land(self, store: ResultStore, book: NameBook, job_id: str, part: ResultPart, name: str | None) -> StoredFile:
        vendor = self.hook.vendor()
        if part.value is not None:
            data = part.value.encode()
            final = book.claim(name or contained(vendor, job_id, f"{job_id}.txt")) if store.folder else None
            return store.write(final, [data], content_type="text/plain", source=part.source or part.name)
        with self.hook.open_result(part, job_id) as answer:
            offered = disposition_name(answer.headers.get("content-disposition"))
            chunks = answer.chunks(self.chunk_size)
            head = next(chunks, b"")
            final = None
            if store.folder:
                final = (
                    book.claim(name)
                    if name is not None
                    else self._offered_name(store, book, job_id, offered, answer.content_type, head)
                )
            return store.write(
                final,
                itertools.chain([head], chunks),
                content_type=answer.content_type,
                source=part.source or part.name or offered,
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
