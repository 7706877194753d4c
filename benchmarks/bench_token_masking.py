"""Benchmark: what renewed tokens cost each log line once they went through Airflow's secrets masker.

Airflow's masker keeps every pattern it is given (a set of escaped strings, in 3.1.8 and 3.3.2 alike, with no
way to remove one) and redacts every string of every log event with one regex joining them all, compiled
again at each new pattern. A triggerer's log lines are redacted by its supervisor process, whose masker
receives every secret the trigger runner masks; a token renewed every 15 minutes on ten connections gives
it about a thousand patterns a day. Each variant runs in its own subprocess (a fresh masker):

- **none**: ten connection secrets registered (a triggerer with ten connections), no token;
- **reference**: the same, then each of ``--renewals`` renewed tokens registered with Airflow's
  ``mask_secret``, as the provider did until issue 18;
- **ours**: the same, each token renewed by an ``AsyncSession`` made as a hook makes it (its login flow
  answers a new token without I/O): the session's own renewal path, whatever it registers.

Tokens are opaque (OL Connect: 43 URL-safe characters) or JWTs (iTwin: ``eyJ…``, ~900 characters; fewer
renewals by default, ``--jwt-renewals``: registering each costs the reference a compile of the whole regex,
which grows with every token, about 2 minutes for 300).
Measured in each subprocess: the patterns in the masker; the CPU per renewal (registering it); the CPU per
log line through the supervisor's own chain (``airflow.sdk.log.logging_processors(json_output=True)``,
Airflow's JWT redaction and secrets masker included, rendered to JSON and written to /dev/null) for a
trigger's progress line. Every number printed was measured in this run.

    .venv/bin/python benchmarks/bench_token_masking.py [--renewals 1000] [--jwt-renewals 300] [--lines 20000]
        [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

VARIANTS = ("none", "reference", "ours")
KINDS = ("opaque", "jwt")
CONNECTIONS = 10


def token(kind: str) -> str:
    if kind == "opaque":
        return secrets.token_urlsafe(32)

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    header = part({"alg": "RS256", "kid": "bentley-ims", "typ": "at+jwt"})
    claims = part(
        {
            "iss": "https://ims.bentley.com",
            "aud": ["itwin-platform"],
            "client_id": "service-app-" + secrets.token_hex(8),
            "scope": ["itwin-platform"],
            "exp": int(time.time()) + 3600,
            "jti": secrets.token_hex(16),
            "pad": secrets.token_urlsafe(300),
        }
    )
    return f"{header}.{claims}.{secrets.token_urlsafe(256)}"


def _patterns() -> int:
    try:
        from airflow.sdk.log import _secrets_masker  # type: ignore[attr-defined]
    except ImportError:  # Airflow < 3.3
        from airflow.sdk._shared.secrets_masker import _secrets_masker  # type: ignore[no-redef,attr-defined]
    return len(_secrets_masker().patterns)


def _renew_in_a_session(tokens: list[str]) -> None:
    """Renew a session's token once per value of ``tokens``, through ``AsyncSession._get_token``."""
    import asyncio

    from airflow_provider_jobprogress.core.protocol import Flow, Token, VendorApi
    from airflow_provider_jobprogress.core.session import AsyncSession

    issued = iter(tokens)

    class Issuer(VendorApi):
        vendor = "bench"

        @property
        def uses_token(self) -> bool:
            return True

        def login(self) -> Flow[Token]:
            return Token(next(issued), time.time() + 3600)
            yield  # a flow that sends nothing

    async def renew() -> None:
        session = AsyncSession(Issuer())  # as hooks.base makes it
        current = None
        for _ in tokens:
            current = await session._get_token(current)
        await session.aclose()

    asyncio.run(renew())


def worker(variant: str, kind: str, renewals: int, lines: int) -> dict[str, Any]:
    import structlog
    from airflow.sdk.log import logging_processors, mask_secret

    for _ in range(CONNECTIONS):
        mask_secret("connection-password-" + secrets.token_urlsafe(12))
    tokens = [token(kind) for _ in range(renewals if variant != "none" else 0)]
    started = time.process_time()
    if variant == "reference":
        for value in tokens:
            mask_secret(value)
    elif tokens:
        _renew_in_a_session(tokens)
    renewal_cpu = time.process_time() - started

    with open(os.devnull, "wb") as devnull:
        chain = list(logging_processors(json_output=True))
        log = structlog.wrap_logger(structlog.BytesLogger(devnull), processors=chain)
        job = "6f1c2a7e-3b1d-4f7a-9d2e-0a5b8c7d9e10"

        def line(i: int) -> None:
            log.info(
                "%s job %s: running %d%% step %s",
                "iTwin",
                job,
                i % 100,
                "Processing",
                logger="airflow_provider_jobprogress.triggers.job_progress.JobProgressTrigger",
                loc="job_progress.py:214",
            )

        for i in range(200):  # warm: caches, the regex's first use
            line(i)
        started = time.process_time()
        for i in range(lines):
            line(i)
        line_cpu = time.process_time() - started
    return {
        "variant": variant,
        "kind": kind,
        "renewals": len(tokens),
        "patterns": _patterns(),
        "us_per_line": line_cpu / lines * 1e6,
        "ms_per_renewal": renewal_cpu / len(tokens) * 1e3 if tokens else 0.0,
    }


def run_worker(variant: str, kind: str, renewals: int, lines: int, env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", variant, kind, str(renewals), str(lines)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{variant} {kind} failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [
        f"{args.renewals} opaque or {args.jwt_renewals} JWT renewals, {args.lines} lines per run, "
        f"median (min-max) of {args.repeats} runs",
        "",
        "| tokens | variant | renewals | patterns | µs CPU per log line | x none | ms CPU per renewal |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        base = statistics.median(r["us_per_line"] for r in rows if (r["kind"], r["variant"]) == (kind, "none"))
        for variant in VARIANTS:
            runs = [r for r in rows if (r["kind"], r["variant"]) == (kind, variant)]
            us = [r["us_per_line"] for r in runs]
            ms = [r["ms_per_renewal"] for r in runs]
            out.append(
                f"| {kind} | {variant} | {runs[0]['renewals']} | {runs[0]['patterns']} | {statistics.median(us):.1f} "
                f"({min(us):.1f}-{max(us):.1f}) | {statistics.median(us) / base:.2f} | "
                f"{statistics.median(ms):.3f} |"
            )
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        variant, kind, renewals, lines = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(worker(variant, kind, renewals, lines)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renewals", type=int, default=1000, help="opaque tokens renewed")
    parser.add_argument("--jwt-renewals", type=int, default=300, help="JWTs renewed")
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the raw measurements too")
    args = parser.parse_args()
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="jobprogress-bench-"))
    rows = []
    for _ in range(args.repeats):
        for kind in KINDS:
            for variant in VARIANTS:  # one after the other, each repeat: drift of the machine spreads evenly
                renewals = args.renewals if kind == "opaque" else args.jwt_renewals
                rows.append(run_worker(variant, kind, renewals, args.lines, env))
                print(f"{kind} {variant}: {rows[-1]}", file=sys.stderr)
    print(markdown(rows, args))
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
