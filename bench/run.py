#!/usr/bin/env python3
"""qdeploy vs Celery, RQ and Dramatiq: the same workloads, one private Redis, one run.

    python bench/run.py                 # every workload, 3 repeats (medians), ~15 min on 2 cores
    python bench/run.py --quick         # 1 small repeat of everything, ~2-3 min
    python bench/run.py --only drain,enqueue --systems qdeploy,celery
    python bench/run.py --growth        # how cost grows: the curves of bench/growth.py, ~40 min
    python bench/run.py --cluster       # Redis Cluster next to one server, this tree next to HEAD (bench/cluster.py)

Peers are measured when installed (`pip install .[bench]`). Writes bench/results.json and the
table in bench/README.md (unless --no-write). See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import growth  # noqa: E402
from benchlib import BENCH_DIR, Records, RedisServer, Worker, median, percentile, verify  # noqa: E402

WORKLOADS = ["drain", "mtpc1", "mtpc10", "enqueue", "startup", "latency", "memory", "render"]
PROBE = 10**9  # task indices >= PROBE are warm-up probes, not part of a measurement


class Bench:
    def __init__(self, args, redis: RedisServer, systems):
        self.args, self.redis, self.systems = args, redis, systems
        self.logs = Path(tempfile.mkdtemp(prefix="qdeploy-bench-logs-"))
        self.results: dict = {w: {s.key: {"runs": []} for s in systems} for w in WORKLOADS}

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def n_for(self, system, n: int) -> int:
        return n if system.key == "qdeploy" or system.reference else min(n, self.args.peer_tasks)

    # -- helpers ------------------------------------------------------------------------------
    def start_worker(self, system, mtpc, records, tag: str) -> Worker | None:
        argv = system.worker_argv(self.redis.url, mtpc)
        if argv is None:
            return None
        env = benchlib.base_env(self.redis.url, records)
        return Worker(argv, env, self.logs / f"{system.key}-{tag}.log")

    def warm_up(self, worker: Worker, system, records: Records, count: int = 4) -> bool:
        """Wait until the worker runs tasks (both processes usually): probes, then clear."""
        system.enqueue_one(range(PROBE, PROBE + count))
        ok = records.wait_for(count, 30)
        if not ok:
            self.log(f"  {system.key}: worker not running tasks after 30 s:\n{worker.tail()}")
        time.sleep(0.3)  # let the consumers go idle
        return ok

    # -- workloads ----------------------------------------------------------------------------
    def drain(self, system, workload: str, mtpc, n: int) -> dict | None:
        if system.worker_argv(self.redis.url, mtpc) is None:
            return None
        n = self.n_for(system, n)
        self.redis.flush()
        records = Records()
        system.enqueue_batch(range(n))
        t0 = time.time()
        worker = self.start_worker(system, mtpc, records, workload)
        try:
            finished = records.wait_for(n, self.args.cap)
            if not finished:  # keep what it did in the cap; let the last line land
                time.sleep(0.2)
        finally:
            worker.stop()
            time.sleep(0.1)
        runs = {i: t for i, t in records.read().items() if i < n}
        records.cleanup()
        check = verify(runs, n)
        if not finished:  # stopped at the cap: losses cannot be judged, duplicates can
            check.update(lost=None, exactly_once=None if not check["duplicates"] else False)
        done = sum(len(t) for t in runs.values())
        rate = benchlib.drain_rate(runs)
        starts = [t for ts in runs.values() for t in ts]
        out = {"n": n, "done": done, "capped": not finished, "rate": rate,
               "wall": (max(starts) - t0) if starts else None, **check}
        if done == 0:
            out["error"] = worker.tail()
        flag = "" if check["exactly_once"] is not False else f"  NOT exactly once: {check}"
        self.log(f"  {workload:7} {system.key:12} {rate:9.0f} tasks/s  ({done}/{n}"
                 f"{', capped at %gs' % self.args.cap if not finished else ''}){flag}")
        return out

    def enqueue(self, system) -> dict:
        out = {}
        for how, n in (("one", self.n_for(system, self.args.enqueue_one)),
                       ("batch", self.n_for(system, self.args.enqueue_batch))):
            self.redis.flush()
            call = system.enqueue_one if how == "one" else system.enqueue_batch
            start = time.perf_counter()
            call(range(n))
            elapsed = time.perf_counter() - start
            out[how] = n / elapsed
            out[f"n_{how}"] = n
        self.redis.flush()
        self.log(f"  enqueue {system.key:12} one by one {out['one']:8.0f}/s   batched {out['batch']:8.0f}/s")
        return out

    def startup(self, system) -> dict | None:
        if system.worker_argv(self.redis.url, None) is None:
            return None
        self.redis.flush()
        records = Records()
        system.enqueue_one([0])
        t0 = time.time()
        worker = self.start_worker(system, None, records, "startup")
        try:
            ok = records.wait_for(1, 30, poll=0.002)
        finally:
            worker.stop()
        runs = records.read()
        records.cleanup()
        if not ok:
            self.log(f"  startup {system.key}: no task done in 30 s\n{worker.tail()}")
            return {"error": "no task done in 30 s"}
        first = min(runs[0]) - t0
        self.log(f"  startup {system.key:12} first task {first:6.3f} s after the worker was started")
        return {"first_task_s": first}

    def latency(self, system, with_memory: bool) -> dict | None:
        if system.worker_argv(self.redis.url, None) is None:
            return None
        self.redis.flush()
        records = Records()
        worker = self.start_worker(system, None, records, "latency")
        try:
            if not self.warm_up(worker, system, records):
                return {"error": "worker did not start"}
            n, rate = self.args.latency_tasks, self.args.latency_rate
            sent: dict[int, float] = {}
            start = time.perf_counter()
            for i in range(n):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent[i] = time.time()
                system.enqueue_one([i])
            records.wait_for(n + 4, 30)
            mem = benchlib.memory(worker.pid) if with_memory else None
        finally:
            worker.stop()
        runs = {i: t for i, t in records.read().items() if i < PROBE}
        records.cleanup()
        lat = [(min(runs[i]) - sent[i]) * 1000 for i in sent if i in runs]
        out = {"n": n, "rate": rate, "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
               "max_ms": max(lat) if lat else None, **verify(runs, n)}
        if mem:
            out["memory"] = mem
        self.log(f"  latency {system.key:12} p50 {out['p50_ms']:7.2f} ms  p99 {out['p99_ms']:7.2f} ms"
                 + (f"   master RSS {mem.get('master_rss_mib', 0):.1f} MiB, child USS "
                    f"{mem.get('child_uss_mib') or 0:.1f} MiB x{mem.get('children')}" if mem else ""))
        return out

    def render(self) -> dict:
        with tempfile.TemporaryDirectory(prefix="qdeploy-bench-render-") as tmp:
            env = dict(os.environ)
            env.pop("QDEPLOY_CONFIG", None)
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "qdeploy", "render", "--nodes", "100", "--out",
                                   os.path.join(tmp, "out")], cwd=tmp, env=env, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            files = sum(len(f) for _, _, f in os.walk(os.path.join(tmp, "out")))
        if proc.returncode != 0:
            self.log(f"  render failed: {proc.stderr[-500:]}")
            return {"error": proc.stderr[-500:]}
        self.log(f"  render  --nodes 100: {elapsed:.3f} s, {files} files")
        return {"seconds": elapsed, "files": files}

    # -- the run ------------------------------------------------------------------------------
    def run(self, only: list[str]) -> None:
        """Workload by workload, every system back to back, so that the ratios compare measurements
        taken seconds apart on a shared machine whose load drifts; the order of the systems is
        reversed every other repeat, so neither end of a workload is always measured first."""
        a = self.args
        for rep in range(a.repeats):
            self.log(f"repeat {rep + 1}/{a.repeats} (load average {os.getloadavg()[0]:.2f})")
            systems = self.systems if rep % 2 == 0 else self.systems[::-1]
            for workload in ("drain", "mtpc1", "mtpc10", "enqueue", "startup", "latency"):
                # a start is ~0.2 s and its wall time moves most with the load: several per
                # repeat, the systems taking turns (reversed every round)
                rounds = a.starts if workload == "startup" else 1
                for system in (s for r in range(rounds) for s in (systems if r % 2 == 0 else systems[::-1])):
                    for name, job in self.jobs(system, workload, only):
                        try:
                            result = job()
                        except Exception as exc:  # noqa: BLE001 - one broken peer must not end the run
                            self.log(f"  {name} {system.key}: {type(exc).__name__}: {exc}")
                            result = {"error": f"{type(exc).__name__}: {exc}"}
                        if result is not None:
                            self.results[name][system.key]["runs"].append(result)
            if "render" in only:
                self.results["render"]["qdeploy"]["runs"].append(self.render())
        self.summarise()

    def jobs(self, system, workload: str, only: list[str]) -> list:
        a = self.args
        drains = {"drain": (None, a.tasks), "mtpc1": (1, a.mtpc1_tasks), "mtpc10": (10, a.tasks)}
        if workload in drains:
            if workload not in only:
                return []
            mtpc, n = drains[workload]
            return [(workload, lambda: self.drain(system, workload, mtpc, n))]
        if system.reference:
            return []  # a reference is measured in the drains only
        if workload == "enqueue" and "enqueue" in only:
            first = next(s for s in self.systems if s.family == system.family)
            if system is not first:
                return []  # variants of one family share their producer's numbers (measured with the first)
            return [("enqueue", lambda: self.enqueue(system))]
        if workload == "startup" and "startup" in only:
            return [("startup", lambda: self.startup(system))]
        if workload == "latency" and ("latency" in only or "memory" in only):
            return [("latency", lambda: self.latency(system, "memory" in only))]
        return []

    def summarise(self) -> None:
        def med(workload, key, field, sub=None):
            runs = self.results[workload].get(key, {}).get("runs", [])
            values = [(r.get(sub) or {}).get(field) if sub else r.get(field) for r in runs if "error" not in r]
            return median(values)

        for s in self.systems:
            k = s.key
            self.results["drain"][k]["median"] = med("drain", k, "rate")
            self.results["mtpc1"][k]["median"] = med("mtpc1", k, "rate")
            self.results["mtpc10"][k]["median"] = med("mtpc10", k, "rate")
            self.results["enqueue"][k]["median"] = {"one": med("enqueue", k, "one"), "batch": med("enqueue", k, "batch")}
            self.results["startup"][k]["median"] = med("startup", k, "first_task_s")
            self.results["latency"][k]["median"] = {"p50_ms": med("latency", k, "p50_ms"), "p99_ms": med("latency", k, "p99_ms")}
            self.results["memory"][k]["median"] = {
                "master_rss_mib": med("latency", k, "master_rss_mib", "memory"),
                "child_uss_mib": med("latency", k, "child_uss_mib", "memory")}
        self.results["render"]["qdeploy"]["median"] = med("render", "qdeploy", "seconds")
        for s in self.systems:  # variants of one family share their producer's numbers
            if not self.results["enqueue"][s.key]["runs"]:
                for o in self.systems:
                    if o.family == s.family and self.results["enqueue"][o.key]["runs"]:
                        self.results["enqueue"][s.key]["median"] = self.results["enqueue"][o.key]["median"]


# -- the table -----------------------------------------------------------------------------------
ROWS = [  # (label, workload, getter, unit, higher is better)
    ("drain {tasks} no-op tasks, 2 processes (tasks/s)", "drain", lambda m: m, "rate", True),
    ("max-tasks-per-child=1, {mtpc1_tasks} tasks (tasks/s)", "mtpc1", lambda m: m, "rate", True),
    ("max-tasks-per-child=10, {tasks} tasks (tasks/s)", "mtpc10", lambda m: m, "rate", True),
    ("enqueue one by one, 1 client (tasks/s)", "enqueue", lambda m: m and m.get("one"), "rate", True),
    ("enqueue batched, 1 client (tasks/s)", "enqueue", lambda m: m and m.get("batch"), "rate", True),
    ("worker start → first task done (s)", "startup", lambda m: m, "s", False),
    ("latency enqueue→start p50, {latency_tasks} at {latency_rate:g}/s (ms)", "latency", lambda m: m and m.get("p50_ms"), "ms", False),
    ("latency enqueue→start p99 (ms)", "latency", lambda m: m and m.get("p99_ms"), "ms", False),
    ("master RSS, idle after work (MiB)", "memory", lambda m: m and m.get("master_rss_mib"), "mib", False),
    ("per-child USS, idle after work (MiB)", "memory", lambda m: m and m.get("child_uss_mib"), "mib", False),
    ("`qdeploy render --nodes 100` (s)", "render", lambda m: m, "s", False),
]


def fmt(value, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "rate":
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if unit == "s":
        return f"{value:.3f}"
    if unit == "ms":
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return f"{value:.1f}"


def table(results: dict, systems, params: dict) -> str:
    peers = [s for s in systems if s.key != "qdeploy"]
    head = ["workload", "qdeploy"] + [s.key for s in peers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, workload, get, unit, higher in ROWS:
        if workload not in results:
            continue
        q = get(results[workload].get("qdeploy", {}).get("median"))
        cells = [label.format(**params), fmt(q, unit)]
        for s in peers:
            p = get(results[workload].get(s.key, {}).get("median"))
            if p is None:
                cells.append("—")
            elif q is None or not p:
                cells.append(fmt(p, unit))
            else:
                cells.append(f"{fmt(p, unit)} ({q / p:.2f}×)")
        if any(c != "—" for c in cells[1:]):
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """Issue 24's targets, every one a ratio of this run: (target, measured, met or None)."""
    def m(workload, key="qdeploy"):
        return results.get(workload, {}).get(key, {}).get("median")

    out = []
    for workload, name in (("drain", "drain, 2 processes"), ("mtpc1", "max-tasks-per-child=1"),
                           ("mtpc10", "max-tasks-per-child=10")):  # the floor: bench/floor.py without redis-py
        q, floor, with_redis = m(workload), m(workload, "floor"), m(workload, "floor+redis")
        extra = f", {q / with_redis:.2f}× floor+redis ({with_redis:,.0f}/s)" if q and with_redis else ""
        if q and floor:
            out.append((f"{name} ≥ 0.8× floor", f"{q / floor:.2f}× floor ({q:,.0f}/s vs {floor:,.0f}/s){extra}",
                        q >= 0.8 * floor))
        else:
            out.append((f"{name} ≥ 0.8× floor", "n/a (floor or qdeploy not measured)", None))
    peers = [k for k in _peer_keys(results) if k not in ("floor", "floor+redis")]
    for workload, get, name, bound, what in (
            ("startup", lambda v: v, "worker start → first task ≤ 0.8× the fastest peer", 0.8, "fastest"),
            ("memory", lambda v: v and v.get("master_rss_mib"), "master RSS, idle ≤ the smallest peer", 1.0, "smallest")):
        q = get(m(workload))
        values = {k: get(m(workload, k)) for k in peers}
        values = {k: v for k, v in values.items() if v}
        if not q or not values:
            out.append((name, "n/a (not measured)", None))
            continue
        best = min(values, key=values.__getitem__)
        out.append((name, f"{q / values[best]:.2f}× {best}, the {what} ({fmt_target(q, workload)} vs "
                          f"{fmt_target(values[best], workload)})", q <= bound * values[best]))
    for label, workload, get, unit, higher in ROWS:
        if workload == "startup" or (workload == "memory" and "master" in label):
            continue  # their own targets above
        q = get(m(workload))
        values = {k: get(m(workload, k)) for k in peers}
        values = {k: v for k, v in values.items() if v}
        if not q or not values:
            continue
        lead = {k: (q / v if higher else v / q) for k, v in values.items()}  # > 1: qdeploy ahead
        worst = min(lead, key=lead.__getitem__)
        short = label.split(" (")[0].replace(", {latency_tasks} at {latency_rate:g}/s", "").replace(
            " {tasks} no-op tasks", "").replace(", {mtpc1_tasks} tasks", "").replace(", {tasks} tasks", "")
        out.append((f"{short}: ahead of every peer", f"closest {worst}: qdeploy {fmt(q, unit)} vs {fmt(values[worst], unit)} "
                    f"({lead[worst]:.2f}× ahead)", lead[worst] > 1))
    return out


def _peer_keys(results: dict) -> list[str]:
    keys: list[str] = []
    for per_system in results.values():
        keys += [k for k in per_system if k != "qdeploy" and k not in keys]
    return keys


def fmt_target(value: float, workload: str) -> str:
    return f"{value:.3f} s" if workload == "startup" else f"{value:.1f} MiB"


def machine_context(results: dict) -> str | None:
    """The run's Celery reference line: what Celery does on this machine in this run, beside what
    it did on the machine the first (absolute) targets were set on, so absolutes can be read."""
    drain, start = (results.get(w, {}).get("celery", {}).get("median") for w in ("drain", "startup"))
    if not drain or not start:
        return None
    return (f"Celery reference, this run: drains {drain:,.0f}/s and runs its first task {start:.3f} s after start "
            "(≈930/s and 0.45 s on the 2-core machine of the first targets).")


def exactly_once_summary(results: dict) -> list[str]:
    lines = []
    for workload in ("drain", "mtpc1", "mtpc10", "latency"):
        runs = results.get(workload, {}).get("qdeploy", {}).get("runs", [])
        bad = [r for r in runs if r.get("exactly_once") is False]
        capped = [r for r in runs if r.get("capped")]
        if runs:
            total = sum(r.get("done", r.get("ran", 0)) for r in runs)
            lines.append(f"{workload}: {len(runs)} run(s), {total} tasks ran, "
                         + (f"{len(capped)} run(s) stopped at the time cap (no duplicates; losses not judged), "
                            if capped else "")
                         + ("no task lost or run twice" if not bad else
                            f"NOT exactly once in {len(bad)} run(s): "
                            + "; ".join(f"lost {r.get('lost')}, duplicates {r.get('duplicates')}" for r in bad)))
    return lines


def compile_bytecode() -> None:
    """Measure qdeploy as installed: pip and the .deb compile bytecode at install time, as they
    did for every peer. A source checkout run with PYTHONDONTWRITEBYTECODE=1 (as here) would
    otherwise compile every qdeploy module at each start: +50 ms on `first task`."""
    import compileall

    import qdeploy

    for directory in (Path(qdeploy.__file__).parent, BENCH_DIR):
        compileall.compile_dir(str(directory), quiet=1, workers=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 small repeat of everything (a smoke run)")
    ap.add_argument("--only", default=",".join(WORKLOADS), help=f"comma list of {','.join(WORKLOADS)}")
    ap.add_argument("--systems", default="", help="comma list (default: qdeploy and every installed peer)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--starts", type=int, default=None,
                    help="worker starts per repeat for the first-task row, the systems taking turns (default 5; --quick 1)")
    ap.add_argument("--tasks", type=int, default=None, help="drain size (default 20000)")
    ap.add_argument("--mtpc1-tasks", type=int, default=None, help="drain size with max-tasks-per-child=1 (default 2000)")
    ap.add_argument("--peer-tasks", type=int, default=None,
                    help="at most this many tasks per peer measurement (default 5000: peers are slower)")
    ap.add_argument("--cap", type=float, default=None, help="stop a drain after this many seconds (default 10)")
    ap.add_argument("--enqueue-one", type=int, default=None)
    ap.add_argument("--enqueue-batch", type=int, default=None)
    ap.add_argument("--latency-tasks", type=int, default=None)
    ap.add_argument("--latency-rate", type=float, default=50.0)
    ap.add_argument("--no-write", action="store_true", help="do not write results.json / README.md")
    ap.add_argument("--out", default=str(BENCH_DIR / "results.json"))
    growth.add_arguments(ap)
    ap.add_argument("--cluster", action="store_true",
                    help="bench/cluster.py: a 3-shard Redis Cluster next to one server, and this tree next to the "
                         "previous commit (drain, enqueue), in one run")
    args = ap.parse_args(argv)
    if args.cluster:
        import cluster  # bench/cluster.py

        return cluster.main(["--quick"] if args.quick else [])
    if args.growth:
        try:
            growth.check_arguments(args)
        except ValueError as exc:
            ap.error(str(exc))
        return run_growth(args)
    quick = args.quick
    defaults = dict(repeats=1 if quick else 3, starts=1 if quick else 5, tasks=2000 if quick else 20000,
                    mtpc1_tasks=300 if quick else 2000, peer_tasks=1000 if quick else 5000, cap=6.0 if quick else 10.0,
                    enqueue_one=1000 if quick else 10000, enqueue_batch=5000 if quick else 20000,
                    latency_tasks=50 if quick else 200)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workload(s) {sorted(unknown)}; choose from {','.join(WORKLOADS)}")

    compile_bytecode()
    redis = RedisServer()
    os.environ["BENCH_REDIS_URL"] = redis.url  # the bench_* modules read it when imported
    from systems import ALL

    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    systems = [s for s in ALL if (not wanted or s.key in wanted) and (s.key == "qdeploy" or s.available())]
    if not any(s.key == "qdeploy" for s in systems):
        systems.insert(0, ALL[0])
    info = benchlib.machine()
    info["redis"] = redis.version
    info["versions"] = {s.key: s.version() for s in systems}
    from systems import _version

    info["versions"]["redis-py"] = _version("redis")
    print(f"machine: {info['nproc']} cpu(s), {info['cpu']}, Python {info['python']}, redis-server {info['redis']}, "
          f"load {info['loadavg_start'][0]:.2f}", file=sys.stderr)
    print("systems: " + ", ".join(f"{s.key} {s.version()}" for s in systems), file=sys.stderr)
    bench = Bench(args, redis, systems)
    started = time.time()
    try:
        bench.run(only)
    finally:
        redis.stop()
        shutil.rmtree(bench.logs, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    info["duration_s"] = round(time.time() - started, 1)
    params = {k: getattr(args, k) for k in ("tasks", "mtpc1_tasks", "latency_tasks", "latency_rate", "peer_tasks", "cap", "repeats")}
    results = {w: bench.results[w] for w in only if w in bench.results}
    if "memory" in only and "latency" not in only:
        results["latency"] = bench.results["latency"]
    text = table(results, systems, params)
    checks = targets(results)
    context = machine_context(results)
    once = exactly_once_summary(results)
    print()
    print(text)
    print()
    for name, value, ok in checks:
        print(f"  {'MET   ' if ok else 'MISSED' if ok is False else 'n/a   '} {name}: {value}")
    if context:
        print(f"  {context}")
    for line in once:
        print(f"  exactly-once  {line}")
    if not args.no_write:
        doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "argv": sys.argv[1:], "quick": quick,
               "params": params, "machine": info, "results": results,
               "targets": [{"target": n, "value": v, "met": ok} for n, v, ok in checks], "context": context,
               "exactly_once": once, "table": text}
        Path(args.out).write_text(json.dumps(doc, indent=1, default=str) + "\n")
        update_readme(doc, systems)
        print(f"\nwrote {args.out} and bench/README.md", file=sys.stderr)
    bad = any("NOT exactly once" in line for line in once)
    return 1 if bad else 0


def run_growth(args) -> int:
    compile_bytecode()
    if any(name.startswith("bench_") for name in sys.modules):  # they read BENCH_REDIS_URL when imported
        raise SystemExit("run.py --growth: a bench_* module was imported before the private Redis existed")
    redis = RedisServer("--maxmemory", args.maxmemory, "--maxmemory-policy", "noeviction", "--maxclients", "4000")
    os.environ["BENCH_REDIS_URL"] = redis.url  # before any peer's module is imported (systems.available)
    from systems import ALL, _version

    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    systems = [s for s in ALL if not s.reference and (not wanted or s.key in wanted)
               and (s.key == "qdeploy" or s.available())]
    if not any(s.key == "qdeploy" for s in systems):
        systems.insert(0, ALL[0])
    info = benchlib.machine()
    info["versions"] = {s.family: _version(s.family) for s in systems}
    info["versions"]["redis-py"] = _version("redis")
    print(f"machine: {info['nproc']} cpu(s), {info['cpu']}, Python {info['python']}, "
          f"load {info['loadavg_start'][0]:.2f}", file=sys.stderr)
    info["redis"] = redis.version
    return growth.main(args, systems, info, redis)


def update_readme(doc: dict, systems) -> None:
    path = BENCH_DIR / "README.md"
    m = doc["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    p = doc["params"]
    block = [
        "<!-- results:start (written by bench/run.py) -->",
        f"Latest run: {doc['date']}{' (--quick)' if doc['quick'] else ''}, `python bench/run.py {' '.join(doc['argv'])}`".rstrip() + ".",
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, redis-server {m['redis']}; {versions}. "
        f"Load average {m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at the end "
        "(the machine is shared: read ratios, not absolutes).",
        f"Medians of {p['repeats']} repeat(s); peers drain at most {p['peer_tasks']} tasks and at most "
        f"{p['cap']:g} s per measurement (rates are steady-state, first to last task start). "
        "Cells for peers are `value (qdeploy / peer)`.",
        "",
        doc["table"],
        "",
        "Targets:",
        "",
    ]
    for t in doc["targets"]:
        mark = "met" if t["met"] else "**missed**" if t["met"] is False else "not measured"
        block.append(f"- {t['target']}: {t['value']} — {mark}")
    if doc.get("context"):
        block += ["", doc["context"]]
    block += ["", "Exactly-once check (qdeploy):", ""] + [f"- {line}" for line in doc["exactly_once"]]
    block.append("<!-- results:end -->")
    text = path.read_text() if path.exists() else "# Benchmarks\n\n<!-- results:start -->\n<!-- results:end -->\n"
    start, end = text.find("<!-- results:start"), text.find("<!-- results:end -->")
    if start < 0 or end < 0:
        text = text.rstrip() + "\n\n" + "\n".join(block) + "\n"
    else:
        text = text[:start] + "\n".join(block) + text[end + len("<!-- results:end -->"):]
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
