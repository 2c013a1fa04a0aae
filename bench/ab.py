"""Two qdeploy commits side by side in one run: drain and enqueue of plain no-op tasks.

    .venv/bin/python bench/ab.py --base 7c9c61c [--head WORKTREE] [--repeats 5] [--tasks 20000]

The base commit is built into a wheel from git history (`git archive`: the checkout is not
touched) and installed into a cache directory; the head is this checkout. Each repeat runs base
and head back to back (ABBA order, so a machine that slows down or speeds up during the run
weighs on both alike) on one private redis-server, every side in its own interpreter with its
own qdeploy on `sys.path`, and prints the medians and head/base ratios. The exactly-once check
of bench/run.py applies to every drain. Next to the rates it reports CPU time per task (the
worker's processes, and Redis's own), which a busy machine disturbs far less than wall time:
on a shared 2-core machine the rates of one side vary by ±30 % between repeats, the CPU per
task by a few per cent. This is how "within 5 %" claims in bench/README.md are
measured (a regression check, not a peer comparison: bench/run.py does those).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import breakdown
from benchlib import BENCH_DIR, REPO, Records, RedisServer, Worker, drain_rate, median, verify

CACHE = Path(os.environ.get("QDEPLOY_BENCH_CACHE", "/var/cache/qdeploy-bench"))

# Run inside a side's interpreter: enqueue N tasks one by one and N batched, print the rates.
ENQUEUE = """
import json, sys, time
import bench_qdeploy as b
n_one, n_batch = int(sys.argv[1]), int(sys.argv[2])
b.noop.delay(-1)  # connected, scripts loaded
t, c = time.perf_counter(), time.process_time(); [b.noop.delay(i) for i in range(n_one)]
one, one_cpu = n_one / (time.perf_counter() - t), (time.process_time() - c) / n_one
b.app.transport.client.flushall()
t, c = time.perf_counter(), time.process_time(); b.noop.map(range(n_batch))
batch, batch_cpu = n_batch / (time.perf_counter() - t), (time.process_time() - c) / n_batch
b.app.transport.client.flushall()
print(json.dumps({"one": one, "batch": batch, "one_cpu": one_cpu, "batch_cpu": batch_cpu}))
"""
FILL = "import sys, bench_qdeploy as b; b.noop.map(range(int(sys.argv[1])))"


def build_base(rev: str) -> Path:
    """The base commit's qdeploy, installed (no dependencies: they are this venv's) once per rev."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True)
    if sha.returncode != 0:
        raise SystemExit(f"ab: {rev!r} is not a commit of {REPO}")
    site = CACHE / f"qdeploy-{sha.stdout.strip()[:12]}"
    if (site / ".complete").is_file():
        return site
    with tempfile.TemporaryDirectory(prefix="qdeploy-ab-") as tmp:
        src, dist = Path(tmp) / "src", Path(tmp) / "dist"
        src.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha.stdout.strip()], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], check=True)
        [wheel] = dist.glob("qdeploy-*.whl")
        subprocess.run(["rm", "-rf", str(site)], check=True)
        subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(site)], check=True)
    (site / ".complete").write_text(rev)
    return site


def _children_cpu() -> float:
    """CPU seconds of every descendant reaped so far (a stopped worker's master and children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Side:
    def __init__(self, name: str, path: Path, redis: RedisServer):
        self.name, self.path, self.redis = name, path, redis

    def env(self, records: Records | None) -> dict:
        env = benchlib.base_env(self.redis.url, records)
        env["PYTHONPATH"] = os.pathsep.join([str(self.path), str(BENCH_DIR)])
        return env

    def python(self, code: str, *args: str) -> str:
        done = subprocess.run([sys.executable, "-c", code, *args], env=self.env(None), cwd=BENCH_DIR,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise SystemExit(f"ab: {self.name}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def drain(self, n: int, logs: Path) -> dict:
        self.redis.flush()
        self.python(FILL, str(n))
        records = Records()
        before, redis_before = _children_cpu(), self.redis.cpu_seconds()
        argv = [sys.executable, "-m", "qdeploy", "worker", "-A", "bench_qdeploy:app", "-b", self.redis.url,
                "-c", "2", "--allow-root", "-l", "warning"]
        worker = Worker(argv, self.env(records), logs / f"{self.name}.log")
        try:
            # the steady state, from the first task on (start-up excluded): master, children, Redis
            started = records.wait_for(1, 60, poll=0.002)
            first, counted = breakdown.snapshot(worker.pid, self.redis), records.count()
            finished = started and records.wait_for(n, 120, poll=0.01)
            last = breakdown.snapshot(worker.pid, self.redis)
        finally:
            worker.stop()
        worker_cpu, redis_cpu = _children_cpu() - before, self.redis.cpu_seconds() - redis_before
        runs = {i: t for i, t in records.read().items() if i < n}
        records.cleanup()
        if not finished:
            raise SystemExit(f"ab: {self.name}: the drain did not finish in 120 s\n{worker.tail()}")
        steady = {key: (last[key] - first[key]) / (n - counted) for key in ("master_cpu", "child_cpu", "redis_cpu")}
        # cores kept busy (master, children, Redis): below what the CPU per task allows, they waited
        steady["cores"] = sum(steady.values()) * (n - counted) / (last["t"] - first["t"])
        return {"rate": drain_rate(runs), "cpu": worker_cpu / n, "redis_cpu": redis_cpu / n,
                "steady": steady, **verify(runs, n)}

    def enqueue(self, n_one: int, n_batch: int) -> dict:
        self.redis.flush()
        return json.loads(self.python(ENQUEUE, str(n_one), str(n_batch)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the commit to compare against (any git revision)")
    ap.add_argument("--head", default=str(REPO), help="the tree whose qdeploy is the head (default: this checkout)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=20000, help="tasks per drain")
    ap.add_argument("--enqueue-one", type=int, default=5000)
    ap.add_argument("--enqueue-batch", type=int, default=50000)
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.tasks < 2 or args.enqueue_one < 1 or args.enqueue_batch < 1:
        ap.error("--repeats must be >= 1, --tasks >= 2, the enqueue sizes >= 1")
    head = Path(args.head).resolve()
    if not (head / "qdeploy" / "__init__.py").is_file():
        ap.error(f"--head {head}: no qdeploy package there")
    redis = RedisServer()
    logs = Path(tempfile.mkdtemp(prefix="qdeploy-ab-logs-"))
    sides = [Side("base", build_base(args.base), redis), Side("head", head, redis)]
    rows = (("drain", "drain -c 2", "/s"), ("one", "enqueue one", "/s"), ("batch", "enqueue batch", "/s"),
            ("cpu", "worker CPU/task", "us"), ("redis_cpu", "redis CPU/task", "us"),
            ("master_cpu", " master, steady", "us"), ("child_cpu", " children, steady", "us"),
            ("steady_redis", " redis, steady", "us"), ("cores", " cores busy, steady", ""),
            ("one_cpu", "CPU/enqueue one", "us"), ("batch_cpu", "CPU/enq. batch", "us"))
    got: dict[str, dict[str, list[float]]] = {s.name: {key: [] for key, _, _ in rows} for s in sides}
    try:
        for repeat in range(args.repeats):
            for side in sides if repeat % 2 == 0 else sides[::-1]:
                drained = side.drain(args.tasks, logs)
                if not drained["exactly_once"]:
                    raise SystemExit(f"ab: {side.name}: NOT exactly once: {drained}")
                enq = side.enqueue(args.enqueue_one, args.enqueue_batch)
                values = {"drain": drained["rate"], "cpu": drained["cpu"] * 1e6, "redis_cpu": drained["redis_cpu"] * 1e6,
                          "one": enq["one"], "batch": enq["batch"], "one_cpu": enq["one_cpu"] * 1e6,
                          "batch_cpu": enq["batch_cpu"] * 1e6, "master_cpu": drained["steady"]["master_cpu"] * 1e6,
                          "child_cpu": drained["steady"]["child_cpu"] * 1e6,
                          "steady_redis": drained["steady"]["redis_cpu"] * 1e6, "cores": drained["steady"]["cores"]}
                for key, value in values.items():
                    got[side.name][key].append(value)
                print(f"  {repeat + 1}/{args.repeats} {side.name}: drain {drained['rate']:7.0f}/s "
                      f"({values['cpu']:.0f} us CPU/task)  enqueue one {enq['one']:7.0f}/s  "
                      f"batched {enq['batch']:8.0f}/s", file=sys.stderr, flush=True)
    finally:
        redis.stop()
    print(f"base {args.base}, head {head}, {args.repeats} repeats, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'':20}{'base':>10}{'head':>10}{'head/base':>11}")
    for key, label, unit in rows:
        b, h = median(got["base"][key]), median(got["head"][key])
        digits = 1 if unit else 2
        print(f"{label + (f' ({unit})' if unit else ''):20}{b:10.{digits}f}{h:10.{digits}f}{h / b:11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
