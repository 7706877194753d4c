"""Benchmark: peak memory of fetching one large result with FetchJobResultOperator versus reading it whole.

Ours streams a ScriptX PDF to a ``file://`` destination with ``FetchJobResultOperator(...).execute({})``
(1 MiB chunks); the reference downloads the same kind of result with ``requests.get(url).content`` and
writes it. Each fetch runs in its own subprocess, so peaks never mix: the peak RSS growth is
``ru_maxrss`` after the fetch minus ``ru_maxrss`` after the imports, the emulator start and the job
submission in that subprocess (with the high-water mark first lowered to the current RSS through
``/proc/self/clear_refs``, so an import-time transient cannot hide the growth). The emulator serves
from inside each subprocess in 64 KiB chunks, the same for both. Every written file is checked against
the sha256 the emulator served. Everything reported is measured in this run.

    .venv/bin/python benchmarks/bench_fetch_memory.py [--mib 256] [--repeats 3] [--json]
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

from compare import Summary, cell, summarize

VARIANTS = ("ours", "reference")
CHUNK_SIZE = 1 << 20
MIB = 1 << 20


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def _max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak() -> bool:
    """Lower the process's RSS high-water mark to its current RSS (Linux 4.0+), so a transient peak of the
    imports cannot hide the fetch's growth below it; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def worker(variant: str, mib: int, out_dir: Path) -> dict[str, Any]:
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
        baseline = _max_rss_mib()
        started = time.perf_counter()
        if variant == "ours":
            operator = FetchJobResultOperator(
                task_id="fetch",
                conn_id="scriptx_default",
                job_id=token,
                destination=f"file://{target}",
                chunk_size=CHUNK_SIZE,
            )
            [stored] = operator.execute({})
            written = int(stored["bytes"])
        else:
            url = f"{emu.url}/api/v1/printPdf/download/{token}"
            answer = requests.get(url, timeout=(10, 600))
            answer.raise_for_status()
            body = answer.content
            written = target.write_bytes(body)
            del body, answer
        seconds = time.perf_counter() - started
        peak = _max_rss_mib()
        expected = emu.result_sha256("scriptx", token, 0)
    got = _sha256(target)
    target.unlink()
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


def run_worker(variant: str, mib: int, out_dir: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", variant, "--mib", str(mib), "--out", str(out_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def markdown(summary: Summary, args: argparse.Namespace) -> str:
    rows = (
        ("growth_mib", "peak RSS growth (MiB)", 1),
        ("mib_per_s", "throughput (MiB/s)", 1),
        ("seconds", "fetch time (s)", 2),
        ("baseline_mib", "baseline RSS after imports (MiB)", 1),
    )
    lines = [
        f"one {args.mib} MiB ScriptX result to a local file, {args.repeats} repeats, "
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
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.mib, args.out)))
        return 0
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="jobprogress-bench-") as tmp:
        for repeat in range(args.repeats):
            # Alternate which variant goes first, so a drifting machine favours neither.
            order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                runs[variant].append(run_worker(variant, args.mib, Path(tmp)))
                print(f"repeat {repeat + 1}/{args.repeats}: {runs[variant][-1]}", file=sys.stderr)
    summary = summarize(runs, ("growth_mib", "mib_per_s", "seconds", "baseline_mib"))
    if args.json:
        print(json.dumps({"args": vars(args), "runs": runs, "summary": summary}, indent=2, default=str))
    else:
        print(markdown(summary, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
