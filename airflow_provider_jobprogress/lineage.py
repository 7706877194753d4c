"""What our tasks tell OpenLineage: one output dataset per stored file, and the vendor job as run facets.

Imported only from the operators' ``get_openlineage_facets_on_complete``, which OpenLineage's provider calls:
nothing else in the package imports this module, so the provider stays optional.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.openlineage.facet import (
    ExternalQueryRunFacet,
    OutputDataset,
    OutputStatisticsOutputDatasetFacet,
    RunFacet,
)
from airflow.providers.openlineage.extractors import OperatorLineage
from attrs import define

#: run facet key; custom facets carry their producer's prefix so they never collide with another's
VENDOR_JOB_FACET = "jobprogress_vendorJob"
#: fsspec's spellings of one storage, mapped to the scheme OpenLineage names it by
_SCHEMES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}
#: Azure's spellings; OpenLineage's names need the storage account, so only a URI that carries it maps
_AZURE = {"abfs": "abfss", "abfss": "abfss", "az": "abfss", "wasb": "wasbs", "wasbs": "wasbs"}


@define
class VendorJobRunFacet(RunFacet):
    """The vendor job a task's results came from. Connection id and type only: never a credential."""

    # camelCase, as OpenLineage spells facet fields
    vendor: str
    connType: str
    connId: str
    jobId: str


def dataset_name(uri: str) -> tuple[str, str]:
    """OpenLineage's (namespace, name) for a stored file, by its naming conventions.

    Local files: ``file`` and the absolute path (``file://host`` on a remote host). Object stores: the bucket is
    the namespace (``s3://bucket``, ``gs://bucket``), the key the name. Azure: ``abfss://container@account…``
    or ``wasbs://…`` when the URI carries the account; otherwise only the container is known. Airflow's
    connection id (``s3://aws_default@bucket/…``) names no data source and is left out.
    """
    if uri.startswith("/"):
        return "file", uri
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("file", "local"):
        host = parts.hostname or ""
        return (f"file://{host}" if host else "file"), parts.path
    user, _, host = parts.netloc.rpartition("@")
    if scheme in _AZURE and user and "." in host:
        # container@account.dfs.core.windows.net: both name the data source, as OpenLineage's abfss/wasbs do
        scheme, source = _AZURE[scheme], f"{user}@{host}"
    else:
        scheme, source = _SCHEMES.get(scheme, scheme), host  # a connection id before "@" is no data source
    return f"{scheme}://{source}", parts.path.lstrip("/")


def job_lineage(
    *, vendor: str, conn_type: str, conn_id: str, job_id: str, stored: Iterable[Mapping[str, Any]] = ()
) -> OperatorLineage[OutputDataset, RunFacet]:
    """The lineage of a task on one vendor job: the job, and a dataset per file the task stored (a fetch to
    storage; none for a submit or a result kept in XCom)."""
    outputs = []
    for item in stored:
        namespace, name = dataset_name(str(item["uri"]))
        statistics = OutputStatisticsOutputDatasetFacet(size=int(item["bytes"]), fileCount=1)
        outputs.append(OutputDataset(namespace=namespace, name=name, outputFacets={"outputStatistics": statistics}))
    return OperatorLineage(
        outputs=outputs,
        run_facets={
            VENDOR_JOB_FACET: VendorJobRunFacet(vendor=vendor, connType=conn_type, connId=conn_id, jobId=job_id),
            # the standard facet lineage tools already show for a job run elsewhere (as BigQuery's job id)
            "externalQuery": ExternalQueryRunFacet(externalQueryId=job_id, source=conn_type),
        },
    )
