#!/usr/bin/env python3
"""What the task history costs the drain: bench/run.py's drain, history off and on, in one run.

    python bench/history_drain.py                         # 6 rounds of 20000 tasks per variant
    python bench/history_drain.py --rounds 10 --tasks 20000
    python bench/history_drain.py --before-tree /tmp/qdeploy-before   # also a copy of the code before

Variants, alternated round by round (the order rotates, so drift on a shared machine spreads over
all of them): `off` (`QDEPLOY_HISTORY_MAX=0`: the child sends no history fields, the master's
writer does nothing), `on` (the default: every task recorded, below the cap), `trimming`
(`QDEPLOY_HISTORY_MAX=2000`: the history is full after 2000 tasks, so every batch also trims:
the steady state of a busy fleet), and with `--before-tree DIR` (a directory holding a `qdeploy`
package, e.g. from `git archive` of the commit before the history) `before`. The drain is
bench/run.py's: 20000 no-op tasks queued, then `qdeploy worker -c 2`; rate = tasks / (last start -
first start). Printed: each variant's rates and median, and the median of the per-round ratios
against `off` (and `before`): the target is a drain at most 2 % slower.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import BENCH_DIR, Records, RedisServer, Worker

VARIANTS = {"off": {"QDEPLOY_HISTORY_MAX": "0"}, "on": {}, "trimming": {"QDEPLOY_HISTORY_MAX": "2000"}}


def drain(redis: RedisServer, n: int, env_extra: dict, tree: str | None, cap: float, logs: Path, tag: str) -> float:
    import bench_qdeploy

    redis.flush()
    records = Records()
    bench_qdeploy.noop.map(range(n))
    env = benchlib.base_env(redis.url, records)
    env.pop("QDEPLOY_CONFIG", None)
    env.update(env_extra)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), tree])
    argv = [sys.executable, "-m", "qdeploy", "worker", "-A", "bench_qdeploy:app", "-b", redis.url, "-c", "2",
            "--allow-root", "-l", "warning"]
    worker = Worker(argv, env, logs / f"{tag}.log")
    try:
        if not records.wait_for(n, cap):
            print(f"  {tag}: capped at {cap:g}s:\n{worker.tail()}", file=sys.stderr)
    finally:
        worker.stop()
    runs = {i: t for i, t in records.read().items() if i < n}
    records.cleanup()
    check = benchlib.verify(runs, n)
    if not check["exactly_once"]:
        print(f"  {tag}: NOT exactly once: {check}", file=sys.stderr)
    return benchlib.drain_rate(runs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--cap", type=float, default=30.0, help="seconds a drain may take at most")
    ap.add_argument("--before-tree", default=None, help="a directory with the qdeploy package before the history")
    args = ap.parse_args(argv)
    variants = dict(VARIANTS)
    if args.before_tree:
        if not (Path(args.before_tree) / "qdeploy" / "__init__.py").is_file():
            ap.error(f"--before-tree {args.before_tree}: no qdeploy package there")
        variants["before"] = {}
    import compileall
    import tempfile

    import qdeploy

    for directory in (Path(qdeploy.__file__).parent, BENCH_DIR, *([Path(args.before_tree)] if args.before_tree else [])):
        compileall.compile_dir(str(directory), quiet=1, workers=1)
    redis = RedisServer()
    os.environ["BENCH_REDIS_URL"] = redis.url
    logs = Path(tempfile.mkdtemp(prefix="qdeploy-bench-history-"))
    rates: dict[str, list[float]] = {v: [] for v in variants}
    names = list(variants)
    print(f"machine: {os.cpu_count()} cpu(s), load {os.getloadavg()[0]:.2f}; {args.rounds} rounds x "
          f"{len(names)} variants x {args.tasks} tasks", file=sys.stderr)
    try:
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                tree = args.before_tree if name == "before" else None
                rate = drain(redis, args.tasks, variants[name], tree, args.cap, logs, f"{name}-{r}")
                rates[name].append(rate)
                print(f"  round {r + 1} {name:9} {rate:8.0f} tasks/s  (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
    finally:
        redis.stop()
    print()
    for name in names:
        values = rates[name]
        print(f"{name:9} median {statistics.median(values):7.0f} tasks/s   range {min(values):.0f}-{max(values):.0f}")
    for base in ("off", "before"):
        if base not in rates:
            continue
        for name in names:
            if name == base:
                continue
            ratios = [a / b for a, b in zip(rates[name], rates[base], strict=True) if b]
            print(f"{name} / {base}: per-round ratios {', '.join(f'{x:.3f}' for x in ratios)}; "
                  f"median {statistics.median(ratios):.3f}")
    time.sleep(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
