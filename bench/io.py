"""I/O-bound work: threads per child against prefork alone, Celery -P threads and Dramatiq.

    python bench/io.py [--tasks 400] [--seconds 0.05] [--threads 25]

Every system gets 2 processes and the same task, `io(i, seconds)`: sleep (an HTTP call, an SMTP
send) and record the run (benchlib). qdeploy prefork runs 2 tasks at a time; qdeploy with
`--threads T` runs 2 × T; Celery `-P threads -c 2T` and Dramatiq `-p 2 -t T` as many. The ideal
wall time is tasks × seconds / concurrency. Every qdeploy task must run exactly once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import Records, RedisServer, Worker, verify
from systems import _version


def systems(threads: int) -> list[tuple[str, list[str], str, int]]:
    """(label, worker argv with {url}, family, concurrency) for what is installed."""
    py = sys.executable
    rows = [
        ("qdeploy prefork -c 2", [py, "-m", "qdeploy", "worker", "-A", "bench_qdeploy:app", "-b", "{url}", "-c", "2",
                                  "--allow-root", "-l", "warning"], "qdeploy", 2),
        (f"qdeploy -c 2 --threads {threads}", [py, "-m", "qdeploy", "worker", "-A", "bench_qdeploy:app", "-b", "{url}",
                                               "-c", "2", "--threads", str(threads), "--allow-root", "-l", "warning"],
         "qdeploy", 2 * threads),
    ]
    if _version("celery"):
        rows.append((f"celery -P threads -c {2 * threads}", [py, "-m", "celery", "-A", "bench_celery", "worker", "-P",
                     "threads", "-c", str(2 * threads), "-l", "warning", "--without-gossip", "--without-mingle",
                     "--without-heartbeat"], "celery", 2 * threads))
    if _version("dramatiq"):
        rows.append((f"dramatiq -p 2 -t {threads}", [py, "-m", "dramatiq", "bench_dramatiq", "-p", "2", "-t",
                     str(threads)], "dramatiq", 2 * threads))
    return rows


def enqueue(family: str, n: int, seconds: float) -> None:
    if family == "qdeploy":
        from bench_qdeploy import app
        app.send_many([("bench.io", (i, seconds), {}) for i in range(n)])
    elif family == "celery":
        from bench_celery import io
        for i in range(n):
            io.apply_async((i, seconds))
    else:
        from bench_dramatiq import io
        for i in range(n):
            io.send(i, seconds)


def run_one(redis: RedisServer, label: str, argv: list[str], family: str, n: int, seconds: float, cap: float) -> dict:
    redis.flush()
    records = Records()
    enqueue(family, n, seconds)
    env = benchlib.base_env(redis.url, records)
    worker = Worker([a.replace("{url}", redis.url) for a in argv], env, Path(tempfile.gettempdir()) / f"qdeploy-bench-io-{family}.log")
    t0 = time.time()
    try:
        finished = records.wait_for(n, cap)
    finally:
        worker.stop()
    runs = records.read()
    records.cleanup()
    starts = [t for ts in runs.values() for t in ts]
    wall = (max(starts) + seconds - t0) if starts else None
    return {"label": label, "done": sum(len(t) for t in runs.values()), "finished": finished, "wall": wall,
            **verify(runs, n)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=25)
    ap.add_argument("--cap", type=float, default=30.0, help="stop a system after this many seconds")
    ap.add_argument("--qdeploy-only", action="store_true", help="skip the peers even when installed")
    args = ap.parse_args(argv)
    redis = RedisServer()
    os.environ["BENCH_REDIS_URL"] = redis.url  # before the bench_* modules are imported: they read it
    rows = []
    try:
        for label, worker_argv, family, concurrency in systems(args.threads):
            if args.qdeploy_only and family != "qdeploy":
                continue
            result = run_one(redis, label, worker_argv, family, args.tasks, args.seconds, args.cap)
            result["ideal"] = args.tasks * args.seconds / concurrency
            rows.append(result)
    finally:
        redis.stop()
    print(f"\n{args.tasks} tasks of {args.seconds * 1000:g} ms each (I/O-bound), 2 processes per system\n")
    print("| system | wall (s) | ideal (s) | tasks/s | exactly once |\n|---|---|---|---|---|")
    failed = False
    for r in rows:
        wall = f"{r['wall']:.2f}" if r["wall"] and r["finished"] else f"capped ({r['done']} done)"
        rate = f"{r['done'] / r['wall']:.0f}" if r["wall"] else "-"
        print(f"| {r['label']} | {wall} | {r['ideal']:.2f} | {rate} | {r['exactly_once']} |")
        failed |= r["label"].startswith("qdeploy") and r["exactly_once"] is False
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
