"""The soak: the chaos run of tests/chaos for as long as you like.

    python -m tests.soak.run --minutes 10 [--nodes 3] [--concurrency 2] [--rate 15] [--seed N] [--cluster]

Every fault kind is injected in a shuffled order again and again (child kills in between); at the
end every task is accounted for. Exits 0 when nothing was lost, 1 otherwise. Loopback only: a
private redis-server on a free port, with AOF on (everysec); with --cluster a private Redis
Cluster (3 primaries + 3 replicas), where primaries fail over again and again instead of Redis
restarts, and a task lost by asynchronous replication is named (and not counted as a loss)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from tests.chaos.harness import ChaosRun


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.run", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rate", type=float, default=15.0, help="tasks sent per second")
    parser.add_argument("--visibility", type=float, default=5.0, help="visibility timeout, seconds")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--dir", type=Path, help="where logs and Redis files go (default: a temp dir)")
    parser.add_argument("--cluster", action="store_true", help="run against a private Redis Cluster")
    args = parser.parse_args(argv)
    run = ChaosRun(args.dir, duration=args.minutes * 60, nodes=args.nodes, concurrency=args.concurrency,
                   visibility=args.visibility, rate=args.rate, seed=args.seed,
                   log=lambda line: print(line, flush=True), cluster=args.cluster)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up (stop masters, Redis)
    report = run.execute()
    print(report.summary())
    failed = report.lost or report.leftovers or report.problems or "UNEXPLAINED" in report.explained
    print(f"logs: {run.dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
