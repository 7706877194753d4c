"""``make topology``: the production topology and the full scenario (300 jobs), each check reported.

``python -m tests.topology [--short] [--keep]``: ``--short`` runs CI's form (about 60 jobs); ``--keep`` leaves
the home folder (logs, PostgreSQL's data) for a look afterwards. Exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from tests.topology.cluster import Topology
from tests.topology.scenario import Plan, report, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.topology", description=__doc__)
    parser.add_argument("--short", action="store_true", help="CI's short form (about 60 jobs) instead of 300")
    parser.add_argument("--keep", action="store_true", help="keep the home folder (logs, data) afterwards")
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout, `kill`) tears down as Ctrl-C does: left running, the Celery workers of a killed run
    # kept executing its tasks against a broker gone, beside the next run
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    plan = Plan.short() if args.short else Plan.full()
    started = time.monotonic()
    topo = Topology()
    print(f"== topology in {topo.home}: {plan.jobs} jobs", flush=True)
    try:
        with topo:
            print(f"== up after {time.monotonic() - started:.0f} s", flush=True)
            outcome = run(topo, plan)
    finally:
        if not args.keep:
            topo.remove()
    print(report(outcome))
    print(
        f"== {sum(c.ok for c in outcome.checks)} passed, {sum(not c.ok for c in outcome.checks)} failed "
        f"({time.monotonic() - started:.0f} s in all)"
    )
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
