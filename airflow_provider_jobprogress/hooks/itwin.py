"""Hook for Bentley iTwin reality-data jobs (connection type ``itwin``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping
from functools import partial
from typing import Any, ClassVar

from airflow_provider_jobprogress.core.errors import JobProgressError
from airflow_provider_jobprogress.hooks.base import JobProgressHook, ui_field_behaviour
from airflow_provider_jobprogress.vendors.itwin import ITwinApi, next_page_token


class ITwinHook(JobProgressHook[ITwinApi]):
    """Create, submit, follow, cancel and download reality-data jobs of the iTwin Platform.

    The connection holds the service app's client id (login) and secret (password) and extras ``api``
    (Bentley's current ``reality-analysis`` or ``reality-modeling``, both v2; the older v1
    ``realitydataanalysis``, the default, or ``realityconversion``), ``base_url``,
    ``auth_url`` (the token endpoint; ``token_url`` is read too), ``scope``, ``itwin_id``, ``verify`` and ``ca_bundle``.
    """

    conn_type: ClassVar[str] = "itwin"
    default_conn_name: ClassVar[str] = "itwin_default"
    hook_name: ClassVar[str] = "Bentley iTwin (reality data jobs)"
    api_class = ITwinApi
    #: Airflow below 3.2 reads only a hook's own method (3.2+ reads the provider info)
    get_ui_field_behaviour = classmethod(ui_field_behaviour)

    def submit(self, specification: Mapping[str, Any]) -> str:
        """Create the job and submit it; returns its id.

        If the submit step fails the created (unsubmitted) job is deleted, so nothing is left behind.
        """
        job_id = self.create_job(specification)
        try:
            self.submit_job(job_id)
        except JobProgressError:
            with contextlib.suppress(JobProgressError):
                self.session.run(self.api.delete_unsubmitted(job_id))
            raise
        return job_id

    def create_job(self, specification: Mapping[str, Any]) -> str:
        return self.session.run(self.api.create(specification))

    def submit_job(self, job_id: str) -> None:
        self.session.run(self.api.start(job_id))

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job's details (state, outputs, execution information)."""
        return self.session.run(self.api.details(job_id))

    def list_jobs(self, filter: str | None = None, *, top: int | None = None) -> list[dict[str, Any]]:
        """The jobs ``filter`` selects (``$filter``, e.g. ``"state eq 'Success'"``), every page followed.

        Without a filter, the connection's ``itwin_id`` is the filter (the API requires one). ``top`` is the
        page size the API is asked for.
        """
        return self.session.run(self.api.list_jobs(filter, top=top))

    async def alist_jobs(self, filter: str | None = None, *, top: int | None = None) -> list[dict[str, Any]]:
        """``list_jobs`` in the triggerer, on the connection's shared async session."""
        return [job async for page in self.alist_job_pages(filter, top=top) for job in page]

    async def alist_job_pages(
        self, filter: str | None = None, *, top: int | None = None
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The jobs ``filter`` selects, one page at a time: a week of jobs is many pages, and a caller that keeps
        only what it needs from each never holds them all. Each page is one call on the connection's shared
        session, so a secret rotated meanwhile is read again (as every async call does)."""
        token: str | None = None
        seen: set[str] = set()
        while True:
            page, token = await self._arun(
                partial(ITwinApi.list_jobs_page, filter=filter, top=top, continuation_token=token)
            )
            yield page
            token = next_page_token(token, seen, None, what="list jobs")
            if token is None:
                return
