"""Benchmark: one large iTwin output from real Azure Storage (Azurite): our streaming versus azure-storage-blob.

Decides whether the provider should download iTwin outputs with Azure's own client (parallel ranged reads,
its retries) as an ``[itwin]`` extra, or keep its own streaming. One Azurite serves all runs; each fetch runs
in its own subprocess (emulator in-process, its outputs uploaded to Azurite before the clock starts), so
peaks never mix:

- **ours**: ``FetchJobResultOperator(..., destination="file://...", chunk_size=1 MiB).execute({})``: one GET,
  streamed to a temporary file, size-checked, renamed.
- **azure**: ``BlobClient.from_blob_url(sas_url).download_blob(max_concurrency=4).readinto(file)``: Azure's
  client with 4 parallel ranged reads (4 MiB chunks), streamed to the file.
- **bentley**: what Bentley's SDK does (``data_handler.py``): ``download_blob(max_concurrency=16).readall()``,
  then the bytes written.

Peak RSS growth = ``ru_maxrss`` after the fetch minus after setup (high-water mark lowered first through
``/proc/self/clear_refs``); throughput = MiB / fetch seconds. Every file's sha256 is checked against what
the emulator generated. Everything reported is measured in this run.

    .venv/bin/python benchmarks/bench_blob_download.py [--mib 256] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_fetch_memory import MIB, _reset_peak, _sha256, _status_mib
from compare import cell, summarize

VARIANTS = ("ours", "azure", "bentley")
CHUNK_SIZE = 1 << 20


def worker(variant: str, mib: int, out_dir: Path, azurite_url: str) -> dict[str, Any]:
    """One fetch in this (fresh) process; returns what it measured."""
    import gc
    import time

    os.environ["AIRFLOW_HOME"] = str(out_dir / "airflow-home")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    # Every variant imports the same modules, so the baseline holds the same code.
    from azure.storage.blob import BlobClient

    from airflow_provider_jobprogress.hooks.itwin import ITwinHook
    from airflow_provider_jobprogress.operators.fetch_result import FetchJobResultOperator
    from airflow_provider_jobprogress.testing.azurite import AzureBlobStore, connection_string
    from airflow_provider_jobprogress.testing.emulators import Scenario, VendorEmulator

    size = mib * MIB
    target = out_dir / variant
    with VendorEmulator("127.0.0.1") as emu:
        emu.serve_blobs_from(AzureBlobStore(connection_string(azurite_url)))  # the parent's Azurite
        for conn_id, conn in emu.connections().items():
            os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = conn
        emu.set_next_scenario("itwin", Scenario(steps=0, result_size=size))
        hook = ITwinHook("itwin_reality_analysis")
        job_id = hook.submit(
            {"type": "Objects2D", "specifications": {"inputs": {"photos": "p"}, "outputs": ["objects2D"]}}
        )
        hook.get_progress(job_id)  # one poll completes a steps=0 job
        (part,) = hook.result_parts(job_id)  # read access: the output is uploaded to Azurite here, untimed
        assert part.request is not None
        blob_url = part.request.url
        hook.session.close()
        gc.collect()
        peak_reset = _reset_peak()
        baseline = _status_mib("VmRSS")
        started = time.perf_counter()
        if variant == "ours":
            operator = FetchJobResultOperator(
                task_id="fetch",
                conn_id="itwin_reality_analysis",
                job_id=job_id,
                destination=f"file://{target}",
                chunk_size=CHUNK_SIZE,
            )
            written = int(operator.execute({})["bytes"])
        elif variant == "azure":
            with target.open("wb") as sink:
                written = BlobClient.from_blob_url(blob_url).download_blob(max_concurrency=4).readinto(sink)
        else:
            data = BlobClient.from_blob_url(blob_url).download_blob(max_concurrency=16).readall()
            written = target.write_bytes(data)
            del data
        seconds = time.perf_counter() - started
        peak = _status_mib("VmHWM")
        expected = emu.result_sha256("itwin", job_id, 0)
    got = _sha256(target)
    target.unlink()
    if written != size or got != expected:
        raise SystemExit(f"{variant}: wrote {written} of {size} bytes, sha256 {got} != served {expected}")
    return {
        "variant": variant,
        "mib": mib,
        "baseline_mib": baseline,
        "growth_mib": peak - baseline,
        "seconds": seconds,
        "mib_per_s": mib / seconds,
        "sha256_ok": True,
        "peak_reset": peak_reset,
    }


def run_worker(variant: str, mib: int, out_dir: Path, azurite_url: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", variant, "--mib", str(mib), "--out", str(out_dir)]
    command += ["--azurite", azurite_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def markdown(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    keys = ("growth_mib", "mib_per_s", "seconds")
    against = {name: summarize({"ours": runs["ours"], "reference": runs[name]}, keys) for name in ("azure", "bentley")}
    rows = (("growth_mib", "peak RSS growth (MiB)", 1), ("mib_per_s", "throughput (MiB/s)", 1))
    lines = [
        f"one {args.mib} MiB iTwin output from Azurite to a local file, {args.repeats} repeats, each fetch in its "
        "own subprocess: median (min-max); sha256 checked in every run",
        "",
        "| metric | ours: FetchJobResultOperator, 1 MiB chunks | azure: download_blob(max_concurrency=4)"
        ".readinto(file) | bentley: download_blob(max_concurrency=16).readall() | azure / ours | bentley / ours |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, label, digits in rows:
        a, b = against["azure"][key], against["bentley"][key]
        lines.append(
            f"| {label} | {cell(a['ours'], digits)} | {cell(a['reference'], digits)} | "
            f"{cell(b['reference'], digits)} | {cell(a['ratio'], 2)}x | {cell(b['ratio'], 2)}x |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=256, help="size of the output in MiB (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three variants (default 3)")
    parser.add_argument("--json", action="store_true", help="print the raw measurements as JSON")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--azurite", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.mib, args.out, args.azurite)))
        return 0
    from airflow_provider_jobprogress.testing.azurite import Azurite

    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="jobprogress-bench-") as tmp, Azurite() as azurite:
        for repeat in range(args.repeats):
            # Rotate which variant goes first, so a drifting machine favours none.
            order = VARIANTS[repeat % 3 :] + VARIANTS[: repeat % 3]
            for variant in order:
                runs[variant].append(run_worker(variant, args.mib, Path(tmp), azurite.url))
                print(f"repeat {repeat + 1}/{args.repeats}: {runs[variant][-1]}", file=sys.stderr)
    if args.json:
        print(json.dumps({"args": vars(args), "runs": runs}, indent=2, default=str))
    else:
        print(markdown(runs, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
