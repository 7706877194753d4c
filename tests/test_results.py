"""Results land whole, inside their destination, or not at all: hostile vendors and careless users, on local disks.

Each test runs FetchJobResultOperator against the emulators as real HTTP servers; the emulators serve
hostile names, gzip bodies and one-time downloads on request.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_jobprogress.core.errors import JobNotFoundError, ResultDestinationError, UnsafeResultNameError
from airflow_provider_jobprogress.result_names import NameBook, contained, disposition_name, extension
from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator

FAST = {"initial_delay": 0.01, "max_delay": 0.05, "jitter": 0, "attempts": 2}
ITWIN_SPEC = {"name": "j", "type": "objects2D", "inputs": [{"type": "photos", "id": "i"}], "outputs": ["objects2D"]}


def fetch(conn_id: str, job_id: str, destination: Any, **kwargs: Any) -> Any:
    from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator

    op = FetchJobResultOperator(
        task_id="fetch", conn_id=conn_id, job_id=job_id, destination=destination, request_retry=FAST, **kwargs
    )
    return op.execute({})


def finished_job(emulator: VendorEmulator, vendor: str, scenario: Scenario, spec: Any = None) -> str:
    """Submit a job that is finished after one progress read, and read it once."""
    from airflow_provider_jobprogress.hooks.itwin import ITwinHook
    from airflow_provider_jobprogress.hooks.olconnect import OLConnectHook
    from airflow_provider_jobprogress.hooks.scriptx import ScriptXHook

    emulator.set_next_scenario(vendor, scenario)
    if vendor == "itwin":
        hook: Any = ITwinHook()
        job_id = hook.submit(spec or ITWIN_SPEC)
    elif vendor == "olconnect":
        hook = OLConnectHook()
        job_id = hook.submit({"datamining": {"identifier": "a.csv"}})
    else:
        hook = ScriptXHook()
        job_id = hook.submit("https://example.invalid/a.pdf", device={"printToFileName": "a.pdf"})
    hook.get_progress(job_id)
    return str(job_id)


def everything_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def completed_downloads(emulator: VendorEmulator, vendor: str, job_id: str) -> int:
    return sum(1 for d in emulator.job(vendor, job_id).downloads if d.complete)


# -- the naming policy, pure -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../escaped", "leave"),
        ("a/../../b", "leave"),
        ("..", "leave"),
        ("/etc/passwd", "absolute"),
        ("\\\\server\\share\\x", "absolute"),
        ("C:\\out\\x.pdf", "absolute"),
        ("C:x.pdf", "absolute"),
        ("", "empty"),
        ("./", "names no file"),
        ("a\x00b", "control"),
        ("x" * 256, "longer"),
    ],
)
def test_an_unsafe_vendor_name_is_refused_naming_vendor_job_and_name(name: str, why: str) -> None:
    with pytest.raises(UnsafeResultNameError, match=why) as caught:
        contained("iTwin", "job-1", name)
    assert str(caught.value).startswith("iTwin job job-1: result name ")
    assert repr(name)[:30] in str(caught.value)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("objects2D/output/part_1.bin", "objects2D/output/part_1.bin"),
        ("a\\b\\c.pdf", "a/b/c.pdf"),
        ("a/./b//c", "a/b/c"),
        ("a/../b", "b"),
    ],
)
def test_a_safe_vendor_name_is_normalised(name: str, safe: str) -> None:
    assert contained("iTwin", "j", name) == safe


def test_colliding_names_get_distinct_deterministic_names() -> None:
    book = NameBook()
    claimed = [book.claim(n) for n in ("out.pdf", "OUT.pdf", "out-2.pdf", "out.pdf", "a", "a/b", "dir/x", "dir")]
    assert claimed == ["out.pdf", "OUT-2.pdf", "out-2-2.pdf", "out-3.pdf", "a", "a-2/b", "dir/x", "dir-2"]


def test_names_say_what_the_file_is() -> None:
    assert disposition_name('attachment; filename="report.pdf"') == "report.pdf"
    assert disposition_name("attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf") == "résumé.pdf"
    assert disposition_name('attachment; filename="../../etc/x.pdf"') == "x.pdf"
    assert disposition_name('attachment; filename=".."') is None
    assert extension("application/pdf") == ".pdf"
    assert extension("application/octet-stream", b"%PDF-1.7\n") == ".pdf"
    assert extension("application/octet-stream", b"\x00\x01") == ".bin"
    assert extension("text/plain; charset=utf-8") == ".txt"


# -- 1. vendor names never steer writes outside the destination --------------------------------------


@pytest.mark.parametrize("output", ["../../escaped", "absolute"])
def test_itwin_output_type_cannot_leave_the_destination(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, output: str
) -> None:
    dest = tmp_path / "a" / "b" / "dest"
    output = str(tmp_path / "outside") if output == "absolute" else output
    job_id = finished_job(emulator, "itwin", Scenario(steps=0), {**ITWIN_SPEC, "outputs": [output]})
    with pytest.raises(UnsafeResultNameError, match=r"iTwin job .*: result name"):
        fetch("itwin_default", job_id, f"file://{dest}/")
    assert everything_under(tmp_path) == [], "nothing written, inside or outside the destination"
    assert emulator.job("itwin", job_id).downloads == (), "refused before the first download"


def test_blob_names_that_climb_out_are_refused(airflow_db: Path, emulator: VendorEmulator, tmp_path: Path) -> None:
    job_id = finished_job(emulator, "itwin", Scenario(steps=0, outputs=2, names=("ok.bin", "../../../x.bin")))
    with pytest.raises(UnsafeResultNameError, match=r"'objects2D/\.\./\.\./\.\./x\.bin'"):
        fetch("itwin_default", job_id, f"file://{tmp_path}/dest/")
    assert everything_under(tmp_path) == []


def test_olconnect_spool_path_ending_in_dotdot_is_refused(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, names=("C:\\out\\a.pdf", "C:\\out\\..")))
    with pytest.raises(UnsafeResultNameError, match="OL Connect job"):
        fetch("olconnect_default", job_id, f"file://{tmp_path}/dest/")
    assert everything_under(tmp_path) == []


def test_hostile_scriptx_job_identifier_cannot_name_a_file_outside(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    # No Content-Disposition: the job id would name the file.
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0, job_id="../x", names=("",)))
    assert job_id == "../x"
    with pytest.raises(UnsafeResultNameError, match=r"ScriptX.Services job \.\./x: result name '\.\./x\.bin'"):
        fetch("scriptx_default", job_id, f"file://{tmp_path}/dest/")
    assert everything_under(tmp_path) == []
    assert completed_downloads(emulator, "scriptx", job_id) == 0, "the one-time PDF is still there to fetch"


def test_hostile_scriptx_job_identifier_is_refused_before_the_download_opens(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    # Opening a one-time download may collect it, so the job id that could name the file is checked first,
    # even when the download would have named it: the PDF stays fetchable to a file destination.
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0, job_id="../y"))
    with pytest.raises(UnsafeResultNameError, match=r"'\.\./y\.bin'"):
        fetch("scriptx_default", job_id, f"file://{tmp_path}/dest/")
    assert emulator.count("GET", "/printPdf/download/") == 0
    stored = fetch("scriptx_default", job_id, f"file://{tmp_path}/y.pdf")
    assert everything_under(tmp_path) == ["y.pdf"]
    assert stored[0]["sha256"] == emulator.result_sha256("scriptx", job_id)


@pytest.mark.parametrize("offered", ["r" * 300 + ".pdf", "statement\t1.pdf"], ids=["long", "tab"])
def test_an_unusable_offered_name_falls_back_to_the_job_id_and_keeps_the_one_time_pdf(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, offered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # ScriptX names its one-time PDF in Content-Disposition, known only once the download is open: a name that
    # cannot be used is a suggestion to drop (warned about), never a refusal after the PDF was collected.
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0, names=(offered,)))
    stored = fetch("scriptx_default", job_id, f"file://{tmp_path}/dest/")
    assert [s["name"] for s in stored] == [f"{job_id}.pdf"]
    assert everything_under(tmp_path) == sorted(["dest", "dest/_SUCCESS", f"dest/{job_id}.pdf"])
    assert (
        stored[0]["sha256"] == sha256(tmp_path / "dest" / f"{job_id}.pdf") == emulator.result_sha256("scriptx", job_id)
    )
    assert stored[0]["source"] == offered, "XCom still says what the vendor called it"
    warned = [line for line in capsys.readouterr().out.splitlines() if "cannot be used" in line]
    assert len(warned) == 1, warned
    assert "warn" in warned[0]
    assert f"ScriptX.Services job {job_id}" in warned[0]


def test_an_offered_name_taken_by_a_folder_falls_back_and_a_listed_one_is_refused_before_the_download(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    (dest / "a.pdf").mkdir(parents=True)  # a folder where the offered name would put the file
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0, names=("a.pdf",)))
    stored = fetch("scriptx_default", job_id, f"file://{dest}/")
    assert [s["name"] for s in stored] == [f"{job_id}.pdf"]
    assert stored[0]["sha256"] == emulator.result_sha256("scriptx", job_id)
    # A name the vendor lists before the download is no suggestion: a folder in its place refuses the fetch
    # before any result byte is requested.
    (dest / "out_1.pdf").mkdir()
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=100))
    with pytest.raises(ResultDestinationError, match=r"out_1\.pdf is an existing folder"):
        fetch("olconnect_default", job_id, f"file://{dest}/")
    assert emulator.job("olconnect", job_id).downloads == (), "no result byte was requested"


def test_hostile_olconnect_operation_id_cannot_name_a_file_outside(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, job_id="../op"))
    with pytest.raises(UnsafeResultNameError, match=r"OL Connect job \.\./op"):
        fetch("olconnect_default", job_id, f"file://{tmp_path}/dest/")
    assert everything_under(tmp_path) == []


# -- 2. a one-time result is never collected into a destination that cannot keep it ------------------


@pytest.mark.parametrize("where", ["proc", "under_a_file"])
def test_bad_destination_fails_before_the_one_time_pdf_is_collected(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, where: str
) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    bad = "file:///proc/nope/x.pdf" if where == "proc" else f"file://{tmp_path}/a_file/x.pdf"
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0))
    with pytest.raises(ResultDestinationError, match=rf"ScriptX.Services job {job_id}: destination"):
        fetch("scriptx_default", job_id, bad)
    assert emulator.count("GET", "/printPdf/download/") == 0, "no result byte was requested"
    stored = fetch("scriptx_default", job_id, f"file://{tmp_path}/good/x.pdf")
    assert stored[0]["sha256"] == sha256(tmp_path / "good" / "x.pdf") == emulator.result_sha256("scriptx", job_id)


def test_xcom_refuses_the_one_time_pdf_before_collecting_it(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    from airflow_provider_jobprogress.core.errors import ResultNotForXComError

    # ScriptX serves the PDF once (a whole download is "Collected"); its adapter says it is application/pdf,
    # which XCom never takes: refused from that, before the download opens.
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0))
    with pytest.raises(ResultNotForXComError, match=r"application/pdf"):
        fetch("scriptx_default", job_id, None)
    assert emulator.count("GET", "/printPdf/download/") == 0, "no result byte was requested"
    stored = fetch("scriptx_default", job_id, f"file://{tmp_path}/a.pdf")
    assert stored[0]["sha256"] == sha256(tmp_path / "a.pdf") == emulator.result_sha256("scriptx", job_id)


def test_s3_destination_without_s3fs_is_refused_at_parse_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator

    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if the [s3] extra were not installed
    with pytest.raises(ResultDestinationError, match=r"needs the s3fs package.*\[s3\]"):
        FetchJobResultOperator(task_id="f", conn_id="scriptx_default", job_id="j", destination="s3://b/k.pdf")


def test_templated_s3_destination_without_s3fs_fails_before_the_download(
    airflow_db: Path, emulator: VendorEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator

    job_id = finished_job(emulator, "scriptx", Scenario(steps=0))
    op = FetchJobResultOperator(
        task_id="f", conn_id="scriptx_default", job_id=job_id, destination="{{ params.out }}", request_retry=FAST
    )
    op.destination = "s3://bucket/x.pdf"  # what rendering the template gave
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(ResultDestinationError, match="needs the s3fs package"):
        op.execute({})
    assert emulator.count("GET", "/printPdf/download/") == 0


# -- 3. gzip and deflate answers arrive intact ------------------------------------------------------


@pytest.mark.parametrize("vendor", ["olconnect", "itwin", "scriptx"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_download_arrives_intact(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, vendor: str, encoding: str
) -> None:
    size = 300_000
    job_id = finished_job(emulator, vendor, Scenario(steps=0, result_size=size, content_encoding=encoding))
    stored = fetch(f"{vendor}_default", job_id, f"file://{tmp_path}/out/")
    path = Path(stored[0]["uri"].removeprefix("file://"))
    assert stored[0]["bytes"] == size == path.stat().st_size
    assert sha256(path) == stored[0]["sha256"] == emulator.result_sha256(vendor, job_id)


def test_a_cut_compressed_download_fails_retryable_with_nothing_written(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    from airflow_provider_jobprogress.core.errors import VendorUnavailableError

    job_id = finished_job(
        emulator, "olconnect", Scenario(steps=0, result_size=200_000, content_encoding="gzip", drop_download_at=50_000)
    )
    with pytest.raises(VendorUnavailableError):
        fetch("olconnect_default", job_id, f"file://{tmp_path}/out/")
    assert everything_under(tmp_path) == []


# -- 4. no file silently lost or misplaced ----------------------------------------------------------


def test_spool_files_with_the_same_name_stay_two_files_and_xcom_says_which(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    paths = ("C:\\a\\out.pdf", "C:\\b\\out.pdf")
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=5000, names=paths))
    stored = fetch("olconnect_default", job_id, f"file://{tmp_path}/dest/")
    assert everything_under(tmp_path) == ["dest", "dest/_SUCCESS", "dest/out-2.pdf", "dest/out.pdf"]
    assert [(s["name"], s["source"]) for s in stored] == [("out.pdf", paths[0]), ("out-2.pdf", paths[1])]
    for index, item in enumerate(stored):
        assert sha256(tmp_path / "dest" / item["name"]) == emulator.result_sha256("olconnect", job_id, index)


def test_an_existing_folder_without_trailing_slash_receives_the_file_inside(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    (tmp_path / "dest").mkdir()
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0))
    stored = fetch("scriptx_default", job_id, f"file://{tmp_path}/dest")
    assert everything_under(tmp_path) == ["dest", "dest/_SUCCESS", "dest/a.pdf"]
    assert stored[0]["uri"] == f"file://{tmp_path}/dest/a.pdf"


def test_an_object_storage_path_with_trailing_slash_is_a_folder(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    from airflow.sdk import ObjectStoragePath

    job_id = finished_job(emulator, "scriptx", Scenario(steps=0))
    fetch("scriptx_default", job_id, ObjectStoragePath(f"file://{tmp_path}/new/"))
    assert everything_under(tmp_path) == ["new", "new/_SUCCESS", "new/a.pdf"]


def test_xcom_is_a_list_of_files_whatever_the_number_of_parts(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0))
    stored = fetch("scriptx_default", job_id, f"file://{tmp_path}/one.pdf")
    assert isinstance(stored, list)
    assert set(stored[0]) == {"uri", "name", "source", "bytes", "sha256", "content_type", "metadata"}
    assert stored[0]["name"] == "one.pdf"
    assert stored[0]["source"] == "a.pdf", "the vendor's own name for it"


def test_an_unnamed_result_is_named_by_job_id_and_content_not_dot_out(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0))
    stored = fetch("olconnect_default", job_id, f"file://{tmp_path}/")
    assert stored[0]["name"] == f"{job_id}.bin"


# -- 5. all parts final or none; what a killed try left is cleaned by the retry -----------------------


def test_a_failure_at_the_second_of_three_files_leaves_nothing(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    (dest / "out_2.pdf").mkdir(parents=True)  # the 2nd spool file's place is taken by a folder
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=3, result_size=5000))
    with pytest.raises(ResultDestinationError, match=r"out_2\.pdf"):
        fetch("olconnect_default", job_id, f"file://{dest}/")
    assert everything_under(tmp_path) == ["dest", "dest/out_2.pdf"], "no final file and no temporary left"


def test_a_rename_failing_midway_undoes_the_others_and_keeps_what_was_there(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "out_1.pdf").write_bytes(b"yesterday's file")
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=3, result_size=5000))
    real_replace, calls = os.replace, []

    def failing_second(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_second)
    with pytest.raises(ResultDestinationError, match="none was kept"):
        fetch("olconnect_default", job_id, f"file://{dest}/")
    assert everything_under(tmp_path) == ["dest", "dest/out_1.pdf"]
    assert (dest / "out_1.pdf").read_bytes() == b"yesterday's file"


def manifest(folder: Path, marker: str = "_SUCCESS") -> Any:
    return json.loads((folder / marker).read_text())


def test_a_folder_result_is_marked_whole_by_a_manifest_renamed_in_last(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dest"
    real_replace, placed = os.replace, []

    def recording(src: Any, dst: Any) -> None:
        placed.append(Path(dst).relative_to(tmp_path).as_posix())
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording)
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=5000))
    stored = fetch("olconnect_default", job_id, f"file://{dest}/")
    assert placed == ["dest/out_1.pdf", "dest/out_2.pdf", "dest/_SUCCESS"]
    assert manifest(dest) == {
        "version": 1,
        "vendor": "OL Connect",
        "job_id": job_id,
        "files": [
            {"name": s["name"], "bytes": s["bytes"], "sha256": s["sha256"], "content_type": s["content_type"]}
            for s in stored
        ],
    }


def test_a_refetch_replaces_the_marker_and_a_failed_one_restores_it(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dest"
    first = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=4000))
    fetch("olconnect_default", first, f"file://{dest}/")
    yesterdays = (dest / "_SUCCESS").read_bytes()
    second = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=5000))
    with monkeypatch.context() as failing:
        real_replace = os.replace

        def out_2_fails(src: Any, dst: Any) -> None:
            if Path(dst).name == "out_2.pdf" and Path(src).suffix == ".part":
                raise OSError(28, "No space left on device")
            real_replace(src, dst)

        failing.setattr(os, "replace", out_2_fails)
        with pytest.raises(ResultDestinationError, match="none was kept"):
            fetch("olconnect_default", second, f"file://{dest}/")
    assert (dest / "_SUCCESS").read_bytes() == yesterdays, "the folder is yesterday's whole result again"
    assert [f["sha256"] for f in manifest(dest)["files"]] == [sha256(dest / n) for n in ("out_1.pdf", "out_2.pdf")]
    fetch("olconnect_default", second, f"file://{dest}/")
    assert manifest(dest)["job_id"] == second
    assert [f["sha256"] for f in manifest(dest)["files"]] == [sha256(dest / n) for n in ("out_1.pdf", "out_2.pdf")]


def test_a_vendor_file_named_like_the_marker_gets_another_name(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    names = ("C:\\out\\_success", "C:\\out\\b.pdf")
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=3000, names=names))
    stored = fetch("olconnect_default", job_id, f"file://{tmp_path}/dest/")
    assert [s["name"] for s in stored] == ["_success-2", "b.pdf"]
    assert manifest(tmp_path / "dest")["job_id"] == job_id


@pytest.mark.parametrize("marker", ["_DONE-3", None])  # mapped fetches into one folder: one marker each, or none
def test_the_marker_can_be_named_per_fetch_or_left_out(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, marker: str | None
) -> None:
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=3000))
    stored = fetch("olconnect_default", job_id, f"file://{tmp_path}/dest/", success_marker=marker)
    files = ["dest", *sorted(f"dest/{s['name']}" for s in stored)]
    assert everything_under(tmp_path) == sorted([*files, "dest/_DONE-3"] if marker else files)


def test_a_marker_name_that_is_not_a_plain_file_name_is_refused_at_parse_time() -> None:
    from airflow_provider_jobprogress.core.errors import ConfigurationError
    from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator

    with pytest.raises(ConfigurationError, match="success_marker"):
        FetchJobResultOperator(task_id="f", conn_id="olconnect_default", job_id="j", success_marker="../_SUCCESS")


KILLED_FETCH = """
import os, sys
from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
FetchJobResultOperator(task_id="f", conn_id="olconnect_default", job_id=sys.argv[1], destination=sys.argv[2],
                       chunk_size=64 * 1024).execute({})
"""


def test_what_a_killed_try_left_is_cleaned_by_the_retry(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    size = 256 << 20
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, result_size=size))
    dest = tmp_path / "dest"
    env = {**os.environ, **{f"AIRFLOW_CONN_{k.upper()}": v for k, v in emulator.connections().items()}}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_FETCH, job_id, f"file://{dest}/"], env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(p.is_file() and p.stat().st_size > 0 for p in tmp_path.rglob("*")):
            assert proc.poll() is None, "the fetch ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert everything_under(tmp_path) != [], "the killed try left a partial file"
    stored = fetch("olconnect_default", job_id, f"file://{dest}/", chunk_size=1 << 20)
    assert everything_under(tmp_path) == sorted(["dest", "dest/_SUCCESS", f"dest/{stored[0]['name']}"])
    assert stored[0]["sha256"] == emulator.result_sha256("olconnect", job_id)


# -- 6. a destination that can never work is refused before any work ---------------------------------


@pytest.mark.parametrize(
    ("destination", "why"),
    [
        (5, "is a int"),
        ("", "is empty"),
        ("ftp://host/out/", "ftp://"),
        ("relative/out.pdf", "relative path"),
        ("file://relative/out.pdf", "not an absolute path"),
    ],
)
def test_a_destination_that_cannot_work_is_refused_at_parse_time(destination: Any, why: str) -> None:
    from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator

    with pytest.raises(ResultDestinationError, match=why):
        FetchJobResultOperator(task_id="f", conn_id="scriptx_default", job_id="j", destination=destination)


def test_a_templated_relative_destination_is_refused_before_any_vendor_call(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator

    monkeypatch.chdir(tmp_path)
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0))
    before = len(emulator.calls)
    op = FetchJobResultOperator(task_id="f", conn_id="scriptx_default", job_id=job_id, destination="{{ x }}")
    op.destination = "relative/out.pdf"
    with pytest.raises(ResultDestinationError, match="relative path"):
        op.execute({})
    assert everything_under(tmp_path) == []
    assert len(emulator.calls) == before, "no vendor call at all"


# -- 7. mounts without hard links, filesystems that show a file before it is committed -------------------


def refusing_links(refusal: int) -> Any:
    """``os.link`` as a mount without hard links answers it (gcsfuse, blobfuse, exFAT, some SMB mounts)."""

    def link(src: Any, dst: Any, **_: Any) -> None:
        raise OSError(refusal, os.strerror(refusal))

    return link


@pytest.mark.parametrize("refusal", [errno.EPERM, errno.EXDEV, errno.ENOTSUP])
def test_a_file_is_replaced_where_the_mount_refuses_hard_links(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: int
) -> None:
    monkeypatch.setattr(os, "link", refusing_links(refusal))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "out_1.pdf").write_bytes(b"yesterday's file")
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=2, result_size=5000))
    stored = fetch("olconnect_default", job_id, f"file://{dest}/")
    assert everything_under(tmp_path) == ["dest", "dest/_SUCCESS", "dest/out_1.pdf", "dest/out_2.pdf"]
    assert [sha256(dest / s["name"]) for s in stored] == [
        emulator.result_sha256("olconnect", job_id, i) for i in (0, 1)
    ]


def test_a_filesystem_that_shows_uncommitted_files_is_refused_by_name() -> None:
    import fsspec

    from airflow_provider_jobprogress.results import FsspecStore

    memory = fsspec.filesystem("memory")  # its files show as soon as they are closed, autocommit=False or not
    store = FsspecStore("iTwin", "job-1", "memory://results/out", memory, "/results/out", folder=True)
    with pytest.raises(ResultDestinationError, match=r"iTwin job job-1: .*MemoryFileSystem.*autocommit=False"):
        store.prepare()
    assert memory.find("/results") == [], "the probe that showed it is gone"


def test_without_hard_links_a_failed_commit_still_puts_every_replaced_file_back(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def out_3_fails(src: Any, dst: Any) -> None:
        if Path(dst).name == "out_3.pdf" and Path(src).suffix == ".part":
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "link", refusing_links(errno.EPERM))
    monkeypatch.setattr(os, "replace", out_3_fails)
    dest = tmp_path / "dest"
    dest.mkdir()
    for n in (1, 2, 3):
        (dest / f"out_{n}.pdf").write_bytes(f"yesterday's {n}".encode())
    job_id = finished_job(emulator, "olconnect", Scenario(steps=0, outputs=3, result_size=5000))
    with pytest.raises(ResultDestinationError, match="none was kept"):
        fetch("olconnect_default", job_id, f"file://{dest}/")
    assert everything_under(tmp_path) == ["dest", "dest/out_1.pdf", "dest/out_2.pdf", "dest/out_3.pdf"]
    assert [(dest / f"out_{n}.pdf").read_bytes() for n in (1, 2, 3)] == [f"yesterday's {n}".encode() for n in (1, 2, 3)]


def test_a_file_a_killed_try_renamed_aside_is_put_back_by_the_retry(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_jobprogress.results import LocalStore

    class Killed(BaseException):
        pass

    real_replace = os.replace

    def killed_before_the_new_file_is_in(src: Any, dst: Any) -> None:
        if Path(src).suffix == ".part":
            raise Killed
        real_replace(src, dst)

    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.pdf").write_bytes(b"yesterday's print")
    job_id = finished_job(emulator, "scriptx", Scenario(steps=0))
    with monkeypatch.context() as killed:
        killed.setattr(os, "link", refusing_links(errno.EXDEV))
        killed.setattr(os, "replace", killed_before_the_new_file_is_in)
        killed.setattr(LocalStore, "abort", lambda self: None)  # SIGKILL: no clean-up runs
        with pytest.raises(Killed):
            fetch("scriptx_default", job_id, f"file://{dest}/")
    assert not (dest / "a.pdf").exists(), "the old file is only in the staging folder now"
    # The killed try collected the one-time PDF: the retry fails at once, and yesterday's print is back in place.
    with pytest.raises(AirflowFailException, match="already collected"):
        fetch("scriptx_default", job_id, f"file://{dest}/")
    assert everything_under(tmp_path) == ["dest", "dest/a.pdf"]
    assert (dest / "a.pdf").read_bytes() == b"yesterday's print"


def test_a_scriptx_pdf_collected_before_fails_the_fetch_at_once(
    airflow_db: Path, emulator: VendorEmulator, tmp_path: Path
) -> None:
    """ScriptX serves a PDF once (its status then says 100 Collected): a fetch that finds it collected (an earlier
    try died past its download, or another reader took it) fails without a download and without retries, which
    could only fail the same way (a 404 retried: three tries in the topology's CI run)."""
    from airflow.providers.common.compat.sdk import AirflowFailException

    job_id = finished_job(emulator, "scriptx", Scenario(steps=0))
    fetch("scriptx_default", job_id, f"file://{tmp_path}/first/")
    downloads = emulator.count("GET", f"/download/{job_id}")
    with pytest.raises(AirflowFailException, match="already collected") as failed:
        fetch("scriptx_default", job_id, f"file://{tmp_path}/second/")
    assert str(failed.value).startswith(f"ScriptX.Services job {job_id}: "), "it names the vendor and the job"
    assert "submit the job again" in str(failed.value)
    assert isinstance(failed.value.__cause__, JobNotFoundError), "the typed error travels as its cause"
    assert emulator.count("GET", f"/download/{job_id}") == downloads, "no download tried"
    assert not (tmp_path / "second").exists()


def test_a_filesystem_that_keeps_uncommitted_files_unseen_is_taken(tmp_path: Path) -> None:
    import fsspec

    from airflow_provider_jobprogress.results import FsspecStore, landing

    local = fsspec.filesystem("file")  # its autocommit=False files wait in a temporary file until committed
    store = FsspecStore("iTwin", "job-1", f"file://{tmp_path}/out", local, f"{tmp_path}/out", folder=True)
    with landing(store):
        store.write("a.bin", [b"a"], content_type="application/octet-stream", source=None)
    assert everything_under(tmp_path) == ["out", "out/_SUCCESS", "out/a.bin"], "no probe left"
