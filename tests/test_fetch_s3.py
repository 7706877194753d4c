"""s3:// destinations against a real S3 API: moto's server on 127.0.0.1, through Airflow's ObjectStoragePath.

The destination is ``s3://moto_s3@<bucket>/...``: Airflow's amazon provider builds the s3fs filesystem
from the ``moto_s3`` connection (an ``aws`` connection whose extra ``endpoint_url`` points at moto).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_jobprogress.core.errors import UnsafeResultNameError, VendorUnavailableError
from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator
from tests.test_results import ITWIN_SPEC, fetch, finished_job

pytest.importorskip("s3fs", reason="the [s3] extra is not installed")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")

CONN_ID = "moto_s3"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    import boto3

    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": moto_url, "region_name": "us-east-1"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(connection))
    client = boto3.client(
        "s3",
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.bucket = f"results-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=client.bucket)
    return client


def objects(s3: Any) -> dict[str, int]:
    listed = s3.list_objects_v2(Bucket=s3.bucket).get("Contents") or []
    return {item["Key"]: item["Size"] for item in listed}


def unfinished_uploads(s3: Any) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads") or []]


def object_sha256(s3: Any, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=s3.bucket, Key=key)["Body"].iter_chunks(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def test_several_files_land_as_objects_and_nothing_else(airflow_db: Path, emulator: VendorEmulator, s3: Any) -> None:
    size = 9 << 20  # more than one 8 MiB part
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=3, result_size=size))
    stored = fetch("olconnect_default", job_id, f"s3://{CONN_ID}@{s3.bucket}/run/")
    landed = objects(s3)
    assert landed.pop("run/_SUCCESS") > 0, "the marker, last"
    assert landed == {"run/out_1.pdf": size, "run/out_2.pdf": size, "run/out_3.pdf": size}
    assert unfinished_uploads(s3) == []
    for index, item in enumerate(stored):
        assert item["uri"] == f"s3://{CONN_ID}@{s3.bucket}/run/out_{index + 1}.pdf"
        key = f"run/{item['name']}"
        assert object_sha256(s3, key) == item["sha256"] == emulator.result_sha256("olconnect", job_id, index)


def test_a_single_file_destination_is_the_object(airflow_db: Path, emulator: VendorEmulator, s3: Any) -> None:
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0))
    [stored] = fetch("scriptx_default", job_id, f"s3://{CONN_ID}@{s3.bucket}/pdf/statement.pdf")
    assert objects(s3) == {"pdf/statement.pdf": 2048}
    assert s3.head_object(Bucket=s3.bucket, Key="pdf/statement.pdf")["ContentType"] == "application/pdf"
    assert stored["sha256"] == emulator.result_sha256("scriptx", job_id)


def test_a_gzip_answer_lands_intact_on_s3(airflow_db: Path, emulator: VendorEmulator, s3: Any) -> None:
    job_id = finished_job(emulator, "itwin", Scenario(steps=0, result_size=500_000, content_encoding="gzip"))
    [stored] = fetch("itwin_default", job_id, f"s3://{CONN_ID}@{s3.bucket}/itwin/")
    assert set(objects(s3)) == {"itwin/objects2D/output/part_1.bin", "itwin/_SUCCESS"}
    assert object_sha256(s3, "itwin/objects2D/output/part_1.bin") == emulator.result_sha256("itwin", job_id)
    assert stored["bytes"] == 500_000


def test_a_name_that_climbs_out_writes_nothing_to_the_bucket(
    airflow_db: Path, emulator: VendorEmulator, s3: Any
) -> None:
    job_id = finished_job(emulator, "itwin", Scenario(steps=0), {**ITWIN_SPEC, "outputs": ["../../escaped"]})
    with pytest.raises(UnsafeResultNameError):
        fetch("itwin_default", job_id, f"s3://{CONN_ID}@{s3.bucket}/a/b/dest/")
    assert objects(s3) == {}
    assert unfinished_uploads(s3) == []


def test_an_interrupted_transfer_leaves_no_object_and_the_retry_lands_it(
    airflow_db: Path, emulator: VendorEmulator, s3: Any
) -> None:
    size = 12 << 20
    scenario = Scenario(steps=0, outputs=2, result_size=size, drop_download_at=10 << 20)
    job_id = finished_job(emulator, "olconnect", scenario)
    # The 1st download is cut at 10 MiB, after one 8 MiB part went up.
    with pytest.raises(VendorUnavailableError, match=r"cut short|ChunkedEncodingError|ProtocolError"):
        fetch("olconnect_default", job_id, f"s3://{CONN_ID}@{s3.bucket}/run/")
    assert objects(s3) == {}, "no partial object, visible or not"
    assert unfinished_uploads(s3) == [], "the multipart upload was aborted"
    stored = fetch("olconnect_default", job_id, f"s3://{CONN_ID}@{s3.bucket}/run/")
    assert set(objects(s3)) == {"run/out_1.pdf", "run/out_2.pdf", "run/_SUCCESS"}
    assert [s["sha256"] for s in stored] == [emulator.result_sha256("olconnect", job_id, i) for i in (0, 1)]


def fail_completion(monkeypatch: pytest.MonkeyPatch, at: int, before: Any = None) -> None:
    """S3 refuses the ``at``-th completion of this fetch (a 500 S3 kept answering); ``before`` runs first."""
    from airflow_provider_jobprogress.results import S3Store

    real_call, completed = S3Store._call, []

    def failing(self: S3Store, method: str, **kwargs: Any) -> Any:
        if method == "complete_multipart_upload" and not kwargs["Key"].rpartition("/")[2].startswith(".jobprogress"):
            completed.append(kwargs["Key"])
            if len(completed) == at:
                if before is not None:
                    before()
                raise self.refuse("S3 complete_multipart_upload failed (InternalError)")
        return real_call(self, method, **kwargs)

    monkeypatch.setattr(S3Store, "_call", failing)


def body(s3: Any, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=s3.bucket, Key=key)["Body"].read())


def test_a_failed_commit_removes_only_what_it_created_at_free_keys(
    airflow_db: Path, emulator: VendorEmulator, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_jobprogress.core.errors import ResultDestinationError

    s3.put_object(Bucket=s3.bucket, Key="run/out_1.pdf", Body=b"yesterday's 1")
    s3.put_object(Bucket=s3.bucket, Key="run/keep.txt", Body=b"not ours")
    fail_completion(monkeypatch, at=3)
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=3, result_size=4000))
    with pytest.raises(ResultDestinationError, match="InternalError"):
        fetch("olconnect_default", job_id, f"s3://{CONN_ID}@{s3.bucket}/run/")
    # out_1 replaced an object: S3 cannot bring yesterday's back, and deleting ours would leave less than
    # before, so the new version stays (whole: S3's promise is per object). out_2 took a free key: removed.
    assert objects(s3) == {"run/out_1.pdf": 4000, "run/keep.txt": 8}
    assert object_sha256(s3, "run/out_1.pdf") == emulator.result_sha256("olconnect", job_id, 0)
    assert unfinished_uploads(s3) == []


def test_a_failed_commit_keeps_an_object_another_writer_put_over_ours(
    airflow_db: Path, emulator: VendorEmulator, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_jobprogress.core.errors import ResultDestinationError

    def theirs() -> None:  # another writer replaces our just-completed out_1.pdf
        s3.put_object(Bucket=s3.bucket, Key="run/out_1.pdf", Body=b"theirs")

    fail_completion(monkeypatch, at=2, before=theirs)
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=4000))
    with pytest.raises(ResultDestinationError, match="InternalError"):
        fetch("olconnect_default", job_id, f"s3://{CONN_ID}@{s3.bucket}/run/")
    assert body(s3, "run/out_1.pdf") == b"theirs", "only our own object (by its ETag) may be removed"


def test_a_folder_result_is_marked_whole_by_a_manifest_written_last(
    airflow_db: Path, emulator: VendorEmulator, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_jobprogress.results import S3Store

    real_call, calls = S3Store._call, []

    def recording(self: S3Store, method: str, **kwargs: Any) -> Any:
        calls.append((method, kwargs.get("Key")))
        return real_call(self, method, **kwargs)

    monkeypatch.setattr(S3Store, "_call", recording)
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=4000))
    stored = fetch("olconnect_default", job_id, f"s3://{CONN_ID}@{s3.bucket}/run/")
    manifest = json.loads(body(s3, "run/_SUCCESS"))
    assert manifest["files"] == [
        {"name": s["name"], "bytes": s["bytes"], "sha256": s["sha256"], "content_type": s["content_type"]}
        for s in stored
    ]
    assert (manifest["vendor"], manifest["job_id"]) == ("OL Connect", job_id)
    completed = [key for method, key in calls if method == "complete_multipart_upload"]
    assert completed == ["run/out_1.pdf", "run/out_2.pdf", "run/_SUCCESS"], "the marker comes after every file"
    assert set(objects(s3)) == {"run/out_1.pdf", "run/out_2.pdf", "run/_SUCCESS"}


def test_a_single_file_destination_has_no_marker(airflow_db: Path, emulator: VendorEmulator, s3: Any) -> None:
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0))
    fetch("scriptx_default", job_id, f"s3://{CONN_ID}@{s3.bucket}/pdf/statement.pdf")
    assert set(objects(s3)) == {"pdf/statement.pdf"}, "one object is whole when it is there"


@pytest.mark.parametrize(("failing", "marker_kept"), [(1, True), (2, False)])
def test_a_refetch_into_a_marked_folder_never_leaves_a_marker_that_lies(
    airflow_db: Path,
    emulator: VendorEmulator,
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
    failing: int,
    marker_kept: bool,
) -> None:
    from airflow_provider_jobprogress.core.errors import ResultDestinationError

    destination = f"s3://{CONN_ID}@{s3.bucket}/run/"
    first = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=4000))
    fetch("olconnect_default", first, destination)
    yesterdays = body(s3, "run/_SUCCESS")
    second = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=5000))
    fail_completion(monkeypatch, at=failing)
    with pytest.raises(ResultDestinationError, match="InternalError"):
        fetch("olconnect_default", second, destination)
    if marker_kept:  # nothing changed: the folder is still yesterday's whole result
        assert objects(s3) == {"run/out_1.pdf": 4000, "run/out_2.pdf": 4000, "run/_SUCCESS": len(yesterdays)}
        assert body(s3, "run/_SUCCESS") == yesterdays
    else:  # out_1 is today's, out_2 yesterday's: no marker says this mix is whole
        assert objects(s3) == {"run/out_1.pdf": 5000, "run/out_2.pdf": 4000}
    assert unfinished_uploads(s3) == []


class ForeignUpload:
    """Another writer's multipart upload (another pipeline, another mapped fetch) begun before our fetch."""

    def __init__(self, s3: Any, key: str) -> None:
        self.s3, self.key = s3, key
        self.upload_id = s3.create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]

    def finish(self, body: bytes) -> None:
        """Its next part and its completion, after our fetch: both fail with NoSuchUpload if we aborted it."""
        part = self.s3.upload_part(
            Bucket=self.s3.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=1, Body=body
        )
        self.s3.complete_multipart_upload(
            Bucket=self.s3.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )


@pytest.mark.parametrize(
    ("destination", "theirs"),
    [
        ("run/", ["run/theirs.bin", "run/out_1.pdf"]),  # under our folder, even at the key we write
        ("", ["elsewhere/theirs.bin", "run/theirs.bin"]),  # the bucket root: every upload in the bucket
    ],
)
def test_other_writers_uploads_survive_our_fetch_and_complete_after_it(
    airflow_db: Path, emulator: VendorEmulator, s3: Any, destination: str, theirs: list[str]
) -> None:
    foreign = [ForeignUpload(s3, key) for key in theirs]
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=4000))
    fetch("olconnect_default", job_id, f"s3://{CONN_ID}@{s3.bucket}/{destination}")
    assert sorted(unfinished_uploads(s3)) == sorted(theirs), "ours are done, theirs are untouched"
    for upload in foreign:
        upload.finish(b"their bytes")
    assert unfinished_uploads(s3) == []
    for key in theirs:
        assert s3.get_object(Bucket=s3.bucket, Key=key)["Body"].read() == b"their bytes"


def test_two_mapped_fetches_into_one_folder_both_land(airflow_db: Path, emulator: VendorEmulator, s3: Any) -> None:
    from airflow_provider_jobprogress.results import check_destination, landing, open_store

    destination = f"s3://{CONN_ID}@{s3.bucket}/run/"
    first_job = finished_job(emulator, "olconnect", Scenario(steps=0, result_size=3000))
    second_job = finished_job(emulator, "olconnect", Scenario(steps=0, result_size=5000))
    spec = check_destination(destination, "OL Connect", first_job)
    first = open_store(spec, "OL Connect", first_job, several=False)
    # The first fetch has written its file and not yet completed it when the second one starts and ends.
    # Sharing a folder, each has a marker of its own (one _SUCCESS would be each other's to replace).
    with landing(first, marker="_SUCCESS-0"):
        first.write("first.pdf", [b"%PDF-first"], content_type="application/pdf", source=None)
        [second] = fetch("olconnect_default", second_job, destination, success_marker="_SUCCESS-1")
    assert set(objects(s3)) == {"run/first.pdf", f"run/{second['name']}", "run/_SUCCESS-0", "run/_SUCCESS-1"}
    assert json.loads(body(s3, "run/_SUCCESS-0"))["files"][0]["name"] == "first.pdf"
    assert json.loads(body(s3, "run/_SUCCESS-1"))["files"][0]["name"] == second["name"]
    assert unfinished_uploads(s3) == []


def test_what_a_killed_try_left_is_cleaned_by_its_retry_and_only_that(
    airflow_db: Path, emulator: VendorEmulator, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_jobprogress.results import S3Store

    size = 12 << 20
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, result_size=size, drop_download_at=10 << 20))
    destination = f"s3://{CONN_ID}@{s3.bucket}/run/"
    # A try killed with SIGKILL cleans nothing up: its multipart upload (one 8 MiB part sent) stays unfinished.
    with monkeypatch.context() as killed:
        killed.setattr(S3Store, "abort", lambda self: None)
        with pytest.raises(VendorUnavailableError):
            fetch("olconnect_default", job_id, destination)
    assert unfinished_uploads(s3) != [], "the killed try left its upload"
    foreign = ForeignUpload(s3, "run/theirs.bin")
    [stored] = fetch("olconnect_default", job_id, destination)
    assert unfinished_uploads(s3) == ["run/theirs.bin"], "the retry aborted what its killed try began, only that"
    assert set(objects(s3)) == {f"run/{stored['name']}", "run/_SUCCESS"}
    foreign.finish(b"their bytes")
    assert set(objects(s3)) == {f"run/{stored['name']}", "run/_SUCCESS", "run/theirs.bin"}


def test_a_try_killed_as_s3_named_its_upload_is_cleaned_by_its_retry(
    airflow_db: Path, emulator: VendorEmulator, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL between S3's answer to CreateMultipartUpload and anything after it (the topology's short form caught
    a worker there, writing a marker): the retry still knows that upload, because the fetch announced it first."""
    from airflow_provider_jobprogress.results import S3Store

    job_id = finished_job(emulator, "olconnect", Scenario(steps=0))
    destination = f"s3://{CONN_ID}@{s3.bucket}/run/"
    foreign = ForeignUpload(s3, "run/theirs.bin")
    real_call = S3Store._call

    class Killed(BaseException):
        """What the killed try sees of its own death: nothing runs after it, no cleanup either."""

    def dies_once_named(self: S3Store, method: str, **kwargs: Any) -> Any:
        answer = real_call(self, method, **kwargs)
        if method == "create_multipart_upload" and not kwargs["Key"].rpartition("/")[2].startswith(".jobprogress-"):
            raise Killed
        return answer

    with monkeypatch.context() as killed:
        killed.setattr(S3Store, "_call", dies_once_named)
        killed.setattr(S3Store, "abort", lambda self: None)
        with pytest.raises(Killed):
            fetch("olconnect_default", job_id, destination)
    ledger = [key for key in unfinished_uploads(s3) if key.startswith("run/.jobprogress-")]
    began = [key for key in unfinished_uploads(s3) if key not in ledger and key != "run/theirs.bin"]
    assert len(ledger) == 1, "its announcement, not yet followed by a record"
    assert ".announce-" in ledger[0]
    assert len(began) == 1, "and the upload S3 had begun for it"
    [stored] = fetch("olconnect_default", job_id, destination)
    assert unfinished_uploads(s3) == ["run/theirs.bin"], "the retry aborted what its killed try began, only that"
    assert set(objects(s3)) == {f"run/{stored['name']}", "run/_SUCCESS"}
    foreign.finish(b"their bytes")


MEASURED_FETCH = """
import gc, json, os, sys
from airflow_provider_jobprogress.hooks.olconnect import OLConnectHook
from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator

def status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

size, destination = int(sys.argv[1]), sys.argv[2]
with VendorEmulator() as emu:
    for conn_id, conn in emu.connections().items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = conn
    emu.set_next_scenario("olconnect", Scenario(steps=0, result_size=size))
    hook = OLConnectHook()
    job_id = hook.submit({"datamining": {"identifier": "a.csv"}})
    hook.get_progress(job_id)
    hook.session.close()
    op = FetchJobResultOperator(task_id="f", conn_id="olconnect_default", job_id=job_id, destination=destination)
    op.hook.session  # the connection and its session exist before the baseline, as on a worker
    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:  # VmHWM := VmRSS, so only the fetch can raise it
        refs.write("5")
    baseline = status_kib("VmRSS")
    result = op.execute({})
    peak = status_kib("VmHWM")
    stored = result[0] if isinstance(result, list) else result
    print(json.dumps({"growth_mib": (peak - baseline) / 1024, "stored": stored,
                      "served": emu.result_sha256("olconnect", job_id)}))
"""


def test_a_256_mib_result_streams_to_s3_in_flat_memory(
    airflow_db: Path, emulator: VendorEmulator, s3: Any, tmp_path: Path
) -> None:
    """A memory bound, not a timing: peak RSS growth of the fetching process stays under 64 MB.

    The fetch runs in its own process (moto, holding the object, stays in this one), measured as
    benchmarks/bench_fetch_memory.py does. The growth includes loading s3fs and botocore's S3 model on
    first use (~22 MiB here); the benchmark reports the growth with them loaded as well.
    """
    size = 256 << 20
    env = {**os.environ, "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"}
    destination = f"s3://{CONN_ID}@{s3.bucket}/big/result.bin"
    done = subprocess.run(
        [sys.executable, "-c", MEASURED_FETCH, str(size), destination],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["stored"]["bytes"] == size
    assert measured["stored"]["sha256"] == measured["served"]
    assert objects(s3) == {"big/result.bin": size}
    assert object_sha256(s3, "big/result.bin") == measured["served"]
    print(f"256 MiB to S3: peak RSS growth {measured['growth_mib']:.1f} MiB")
    assert measured["growth_mib"] <= 64 * 1e6 / 2**20, f"peak RSS grew {measured['growth_mib']:.1f} MiB"


@pytest.mark.parametrize("outcome", ["commit", "abort"])
def test_other_object_stores_commit_uncommitted_fsspec_files_together(s3: Any, outcome: str) -> None:
    """FsspecStore (gs://, abfs://...) on s3fs, the fsspec filesystem at hand: nothing shows before commit."""
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_jobprogress.results import FsspecStore

    path = ObjectStoragePath(f"s3://{CONN_ID}@{s3.bucket}/generic/")
    store = FsspecStore("v", "j", str(path), path.fs, path.path, folder=True)
    store.prepare()
    first = store.write("a.bin", [b"a" * (6 << 20)], content_type="application/octet-stream", source=None)
    store.write("b/c.txt", [b"hello"], content_type="text/plain", source=None)
    assert objects(s3) == {}, "nothing visible before the commit"
    if outcome == "commit":
        store.commit()
        assert objects(s3) == {"generic/a.bin": 6 << 20, "generic/b/c.txt": 5}
        assert object_sha256(s3, "generic/a.bin") == first.sha256
    else:
        store.abort()
        assert objects(s3) == {}
    assert unfinished_uploads(s3) == []


def test_other_object_stores_keep_what_a_failed_commit_replaced(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_jobprogress.core.errors import ResultDestinationError
    from airflow_provider_jobprogress.results import FsspecStore, landing

    s3.put_object(Bucket=s3.bucket, Key="generic/a.bin", Body=b"yesterday's a")
    path = ObjectStoragePath(f"s3://{CONN_ID}@{s3.bucket}/generic/")
    store = FsspecStore("v", "j", str(path), path.fs, path.path, folder=True)

    def broken_commit() -> None:
        raise OSError(5, "Input/output error")

    def land_three_failing_at_the_third() -> None:
        with landing(store):
            for name in ("a", "b", "c"):
                store.write(f"{name}.bin", [f"today's {name}".encode()], content_type="text/plain", source=None)
            monkeypatch.setattr(store._pending[2][1], "commit", broken_commit)

    with pytest.raises(ResultDestinationError, match="committing"):
        land_three_failing_at_the_third()
    # a.bin replaced a file: it stays, in its new version; b.bin took a free name: it went again
    assert objects(s3) == {"generic/a.bin": 9}
    assert body(s3, "generic/a.bin") == b"today's a"
    assert unfinished_uploads(s3) == []


def test_objects_on_s3_are_named_by_bucket_and_key_without_the_connection_id(
    airflow_db: Path,
    emulator: VendorEmulator,
    s3: Any,
) -> None:
    """OpenLineage's dataset names (tests/test_lineage.py has the rest), here where moto serves S3."""
    from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator

    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=4000))
    op = FetchJobResultOperator(
        task_id="fetch", conn_id="olconnect_default", job_id=job_id, destination=f"s3://{CONN_ID}@{s3.bucket}/run/"
    )
    stored = op.execute({})

    lineage = op.get_openlineage_facets_on_complete(None)

    assert sorted((d.namespace, d.name) for d in lineage.outputs) == [
        (f"s3://{s3.bucket}", key) for key in sorted(objects(s3)) if key != "run/_SUCCESS"
    ]
    assert len(lineage.outputs) == len(stored) == 2
    assert CONN_ID not in repr([(d.namespace, d.name) for d in lineage.outputs])


# -- every store error is typed, names the job, the vendor and the destination, and keeps its cause -------


def test_an_unreachable_s3_endpoint_is_a_typed_error_and_the_one_time_pdf_stays(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from botocore.exceptions import EndpointConnectionError

    from airflow_provider_jobprogress.core.errors import ResultDestinationError

    with socket.socket() as closed:  # a port nobody listens on once this socket is closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    secret = "s3cr3t-of-the-dead-endpoint"
    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": secret,
        "extra": {
            "endpoint_url": f"http://127.0.0.1:{port}",
            "region_name": "us-east-1",
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_DEAD_S3", json.dumps(connection))
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0))
    with pytest.raises(ResultDestinationError) as caught:
        fetch("scriptx_default", job_id, "s3://dead_s3@results/prints/")
    message = str(caught.value)
    assert message.startswith(f"ScriptX.Services job {job_id}: destination s3://dead_s3@results/prints")
    assert "EndpointConnectionError" in message
    assert secret not in message
    assert isinstance(caught.value.__cause__, EndpointConnectionError)
    assert emulator.count("GET", "/printPdf/download/") == 0, "refused before the one-time PDF was touched"
    [stored] = fetch("scriptx_default", job_id, f"file://{tmp_path}/a.pdf")
    assert stored["sha256"] == emulator.result_sha256("scriptx", job_id)


def botocore_errors() -> list[Any]:
    from botocore.exceptions import (
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        ParamValidationError,
    )

    return [
        ("list_multipart_uploads", EndpointConnectionError(endpoint_url="http://key:hidden@s3.example/b")),
        ("create_multipart_upload", NoCredentialsError()),
        ("upload_part", ConnectionClosedError(endpoint_url="http://s3.example/b")),
        ("complete_multipart_upload", ParamValidationError(report="Invalid type for parameter MultipartUpload")),
    ]


@pytest.mark.parametrize(("method", "error"), botocore_errors(), ids=lambda v: v if isinstance(v, str) else "")
def test_an_s3_error_at_any_step_is_typed_and_the_fetch_is_undone(
    s3: Any, monkeypatch: pytest.MonkeyPatch, method: str, error: Exception
) -> None:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_jobprogress.core.errors import ResultDestinationError
    from airflow_provider_jobprogress.results import S3Store, landing

    path = ObjectStoragePath(f"s3://{CONN_ID}@{s3.bucket}/run/")
    fs = path.fs
    real_call = fs.call_s3
    calls: list[str] = []

    def failing(name: str, **kwargs: Any) -> Any:
        calls.append(name)
        # the first create_multipart_upload is the probe's; fail the first file's own
        if name == method and (name != "create_multipart_upload" or calls.count(name) == 2):
            raise error
        return real_call(name, **kwargs)

    monkeypatch.setattr(fs, "call_s3", failing)
    store = S3Store("iTwin", "job-1", str(path), fs, path.path, folder=True)
    with pytest.raises(ResultDestinationError) as caught, landing(store):
        store.write("a.bin", [b"a" * 100], content_type="application/octet-stream", source=None)
    message = str(caught.value)
    assert message.startswith(f"iTwin job job-1: destination s3://{CONN_ID}@{s3.bucket}/run: S3 {method} failed")
    assert type(error).__name__ in message
    assert "hidden" not in message, "no credentials from an endpoint URL"
    assert caught.value.__cause__ is error
    assert objects(s3) == {}
    assert unfinished_uploads(s3) == [], "the fetch was undone"


@pytest.mark.parametrize("where", ["makedirs", "commit"])
def test_an_fsspec_store_error_is_typed(s3: Any, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    from airflow.sdk import ObjectStoragePath
    from botocore.exceptions import NoCredentialsError

    from airflow_provider_jobprogress.core.errors import ResultDestinationError
    from airflow_provider_jobprogress.results import FsspecStore, landing

    error = NoCredentialsError()

    def refused(*_: Any, **__: Any) -> None:
        raise error

    path = ObjectStoragePath(f"s3://{CONN_ID}@{s3.bucket}/generic/")
    store = FsspecStore("iTwin", "job-1", str(path), path.fs, path.path, folder=True)
    if where == "makedirs":
        monkeypatch.setattr(path.fs, "makedirs", refused)

    def land() -> None:
        with landing(store):
            store.write("a.bin", [b"a"], content_type="application/octet-stream", source=None)
            if where == "commit":
                monkeypatch.setattr(store._pending[0][1], "commit", refused)

    with pytest.raises(
        ResultDestinationError, match=r"^iTwin job job-1: destination s3://.*NoCredentialsError"
    ) as caught:
        land()
    assert caught.value.__cause__ is error
    assert objects(s3) == {}
    assert unfinished_uploads(s3) == []
