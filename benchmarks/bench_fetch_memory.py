"""Benchmark: peak memory of fetching one large result with FetchJobResultOperator versus reading it whole.

Ours streams a ScriptX PDF to a ``file://`` destination (or, with ``--dest s3``, to an ``s3://``
destination on moto's S3 server started by this script on 127.0.0.1) with
``FetchJobResultOperator(...).execute({})`` (1 MiB chunks); the reference downloads the same kind of
result with ``requests.get(url).content`` and writes it (to S3 in one ``write_bytes``). Each fetch runs
in its own subprocess, so peaks never mix: the peak RSS growth is ``VmHWM`` after the fetch minus
``VmRSS`` after the imports, the emulator start and the job submission in that subprocess, with the
high-water mark first lowered to the current RSS through ``/proc/self/clear_refs`` (``ru_maxrss`` is not
lowered by it, so it cannot be used). The emulator serves from inside each subprocess in 64 KiB chunks,
the same for both. Every written file is checked against the sha256 the emulator served. Everything
reported is measured in this run.

    .venv/bin/python benchmarks/bench_fetch_memory.py [--mib 256] [--repeats 3] [--dest file|s3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from compare import Summary, cell, summarize

VARIANTS = ("ours", "reference")
S3_CONN, S3_BUCKET = "bench_s3", "jobprogress-bench"
CHUNK_SIZE = 1 << 20
MIB = 1 << 20


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def _reset_peak() -> bool:
    """Lower the process's RSS high-water mark to its current RSS (Linux 4.0+), so a transient peak of the
    imports cannot hide the fetch's growth below it; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _read_back(uri: str) -> str:
    from airflow.sdk import ObjectStoragePath

    digest = __import__("hashlib").sha256()
    with ObjectStoragePath(uri).open("rb") as source:
        for block in iter(lambda: source.read(MIB), b""):
            digest.update(block)
    return str(digest.hexdigest())


def worker(variant: str, mib: int, out_dir: Path, dest: str) -> dict[str, Any]:
    """One fetch in this (fresh) process; returns what it measured."""
    import gc
    import time

    # Airflow reads its configuration at import time: settle it before anything imports airflow.
    os.environ["AIRFLOW_HOME"] = str(out_dir / "airflow-home")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    # Both variants import the same modules, so the baseline holds the same code.
    import requests

    from airflow_provider_jobprogress.hooks.scriptx import ScriptXHook
    from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
    from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator

    size = mib * MIB
    target = out_dir / f"{variant}.pdf"
    uri = f"file://{target}" if dest == "file" else f"s3://{S3_CONN}@{S3_BUCKET}/{out_dir.name}/{variant}.pdf"
    if dest == "s3":  # the S3 filesystem is loaded before the baseline, as on a worker that wrote to S3 before
        from airflow.sdk import ObjectStoragePath

        ObjectStoragePath(uri).fs.ls(S3_BUCKET)
    with VendorEmulator("127.0.0.1") as emu:
        for conn_id, conn in emu.connections().items():
            os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = conn
        emu.set_next_scenario("scriptx", Scenario(steps=0, result_size=size))
        hook = ScriptXHook()
        token = hook.submit("https://example.invalid/big.pdf")
        hook.get_progress(token)  # one poll completes a steps=0 job, so both variants find it downloadable
        hook.session.close()
        gc.collect()
        peak_reset = _reset_peak()
        baseline = _status_mib("VmRSS")
        started = time.perf_counter()
        if variant == "ours":
            operator = FetchJobResultOperator(
                task_id="fetch",
                conn_id="scriptx_default",
                job_id=token,
                destination=uri,
                chunk_size=CHUNK_SIZE,
            )
            [stored] = operator.execute({})
            written = int(stored["bytes"])
        else:
            url = f"{emu.url}/api/v1/printPdf/download/{token}"
            answer = requests.get(url, timeout=(10, 600))
            answer.raise_for_status()
            body = answer.content
            if dest == "file":
                written = target.write_bytes(body)
            else:
                from airflow.sdk import ObjectStoragePath

                written = ObjectStoragePath(uri).write_bytes(body)
            del body, answer
        seconds = time.perf_counter() - started
        peak = _status_mib("VmHWM")
        expected = emu.result_sha256("scriptx", token, 0)
    if dest == "file":
        got = _sha256(target)
        target.unlink()
    else:
        got = _read_back(uri)
    if written != size or got != expected:
        raise SystemExit(f"{variant}: wrote {written} of {size} bytes, sha256 {got} != served {expected}")
    return {
        "variant": variant,
        "mib": mib,
        "baseline_mib": baseline,
        "peak_mib": peak,
        "growth_mib": peak - baseline,
        "seconds": seconds,
        "mib_per_s": mib / seconds,
        "sha256_ok": True,
        "peak_reset": peak_reset,
    }


def run_worker(variant: str, mib: int, out_dir: Path, dest: str, env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", variant, "--mib", str(mib), "--out", str(out_dir)]
    command += ["--dest", dest]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{variant} worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@contextlib.contextmanager
def _storage(dest: str) -> Iterator[dict[str, str]]:
    """The workers' environment; for S3, moto's server in this process and an ``aws`` connection to it."""
    env = dict(os.environ)
    if dest == "file":
        yield env
        return
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
        boto3.client("s3", endpoint_url=url, **keys).create_bucket(Bucket=S3_BUCKET)
        extra = {"endpoint_url": url, "region_name": "us-east-1"}
        connection = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
        env[f"AIRFLOW_CONN_{S3_CONN.upper()}"] = json.dumps(connection)
        yield env
    finally:
        server.stop()


def markdown(summary: Summary, args: argparse.Namespace) -> str:
    rows = (
        ("growth_mib", "peak RSS growth (MiB)", 1),
        ("mib_per_s", "throughput (MiB/s)", 1),
        ("seconds", "fetch time (s)", 2),
        ("baseline_mib", "baseline RSS after imports (MiB)", 1),
    )
    lines = [
        f"one {args.mib} MiB ScriptX result to {'a local file' if args.dest == 'file' else 'S3 (moto)'}, "
        f"{args.repeats} repeats, "
        "each fetch in its own subprocess: median (min-max); sha256 checked in every run",
        "",
        "| metric | ours: FetchJobResultOperator, 1 MiB chunks | reference: requests.get(url).content | "
        "reference / ours |",
        "| --- | --- | --- | --- |",
    ]
    for key, label, digits in rows:
        row = summary[key]
        lines.append(
            f"| {label} | {cell(row['ours'], digits)} | {cell(row['reference'], digits)} | {cell(row['ratio'], 2)}x |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=256, help="size of the result in MiB (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="ours/reference pairs to run (default 3)")
    parser.add_argument("--json", action="store_true", help="print the raw measurements and summary as JSON")
    parser.add_argument("--dest", choices=("file", "s3"), default="file", help="where results go (default file)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.mib, args.out, args.dest)))
        return 0
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="jobprogress-bench-") as tmp, _storage(args.dest) as env:
        for repeat in range(args.repeats):
            # Alternate which variant goes first, so a drifting machine favours neither.
            order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                runs[variant].append(run_worker(variant, args.mib, Path(tmp), args.dest, env))
                print(f"repeat {repeat + 1}/{args.repeats}: {runs[variant][-1]}", file=sys.stderr)
    summary = summarize(runs, ("growth_mib", "mib_per_s", "seconds", "baseline_mib"))
    if args.json:
        print(json.dumps({"args": vars(args), "runs": runs, "summary": summary}, indent=2, default=str))
    else:
        print(markdown(summary, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
