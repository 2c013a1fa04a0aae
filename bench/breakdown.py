#!/usr/bin/env python3
"""Where the time and the memory go, for the rows of bench/run.py that miss their targets.

    python bench/breakdown.py cpu [--workloads drain,mtpc1,mtpc10] [--tasks 10000] [--mtpc1-tasks 1500]
    python bench/breakdown.py perf [--workload mtpc1] [--systems qdeploy,floor,floor+redis]   # kernel/user, by kind
    python bench/breakdown.py spy [--workload drain] [--seconds 6]          # py-spy, per function
    python bench/breakdown.py startup [--repeats 5] [--no-callgrind]         # start -> first task, imports
    python bench/breakdown.py rss                                            # the idle master's memory, by package

* cpu: qdeploy and the fork floor (bench/floor.py, with and without redis-py) drain the same
  tasks on a private redis-server; CPU (user + system) and minor page faults per task of the
  master (floor: its parent), of all its children (reaped ones through the parent's cutime and
  cminflt, live ones from /proc; the floor reports its own rusage with --stats), of
  redis-server (`INFO cpu`), and the Redis commands per task (`INFO commandstats`). Measured
  from a warm, idle worker: the tasks are enqueued after it ran its warm-up tasks.
* perf: `perf record -a -g` while the workload drains; the samples of the worker's processes
  (the master, and every pid that recorded a task) sorted into kinds by their kernel call chain:
  fork (page tables copied), exit (address space torn down), page faults, other system calls,
  the Python interpreter. `-a` because a per-process perf misses the children's exits.
* spy: py-spy (the `bench` extra) samples the master and its children during a drain; prints
  the functions with the most samples, inclusive, per process kind.
* startup: the wall time from starting the worker command to its first task, for qdeploy and
  Dramatiq (the fastest peer); `-X importtime` per package; and the instructions executed by the
  imports of each process on the way (valgrind --tool=callgrind: repeatable whatever the load).
* rss: the idle master's smaps_rollup, then its modules (from `-X importtime`) imported one by one
  in a fresh interpreter, with RSS and anonymous memory added per package; beside Dramatiq's.

Everything runs on its own private redis-server (never 127.0.0.1:6379). bench/phases.py does the
same per function of the worker (probes around the consumer loop, the child's boot and the
master's steps).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import BENCH_DIR, Records, RedisServer, Worker

TICK = os.sysconf("SC_CLK_TCK")
PROBE = 10**9


def proc_stat(pid: int) -> dict | None:
    """utime/stime/cutime/cstime (s) and minflt/cminflt of one process, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = text[text.rindex(")") + 2:].split()  # fields from 3 (state) on
    g = lambda n: int(f[n - 3])  # noqa: E731 - field number as in proc(5)
    return {"cpu": (g(14) + g(15)) / TICK, "ccpu": (g(16) + g(17)) / TICK, "flt": g(10), "cflt": g(11)}


def children_of(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
            out += [int(x) for x in text.split()]
    except OSError:
        pass
    return out


def snapshot(pid: int, redis: RedisServer) -> dict:
    """The parent's own CPU/faults, and all its children's (reaped + live)."""
    me = proc_stat(pid) or {"cpu": 0, "ccpu": 0, "flt": 0, "cflt": 0}
    live = [s for s in (proc_stat(c) for c in children_of(pid)) if s]
    return {"t": time.monotonic(), "master_cpu": me["cpu"], "master_flt": me["flt"],
            "child_cpu": me["ccpu"] + sum(s["cpu"] for s in live), "child_flt": me["cflt"] + sum(s["flt"] for s in live),
            "redis_cpu": redis.cpu_seconds(), "commands": commands(redis)}


def commands(redis: RedisServer) -> dict[str, int]:
    return {k[len("cmdstat_"):]: int(v["calls"]) for k, v in redis.client.info("commandstats").items()}


def enqueue_cost(system, redis: RedisServer, n: int) -> float:
    """Redis CPU and commands of enqueueing n tasks with no worker (not the worker's)."""
    redis.flush()
    before, calls = redis.cpu_seconds(), commands(redis)
    system.enqueue_batch(range(n))
    cost, after = redis.cpu_seconds() - before, commands(redis)
    redis.flush()
    return cost, {k: v - calls.get(k, 0) for k, v in after.items()}


def measure_cpu(system, redis: RedisServer, mtpc: int | None, n: int, logs: Path) -> dict:
    """Per task: CPU and faults of the master, of its children and of redis-server."""
    enqueue, enqueue_calls = enqueue_cost(system, redis, n)
    info_calls = {"info": 2}  # the harness's own INFO calls between the two snapshots
    records = Records()
    argv = system.worker_argv(redis.url, mtpc)
    env = benchlib.base_env(redis.url, records)
    log = logs / f"{system.key}-{mtpc}.log"
    if system.reference:  # the floor exits once the queue is empty, and reports its own rusage
        system.enqueue_batch(range(n))
        redis0, calls0 = redis.cpu_seconds() - enqueue, commands(redis)
        worker = Worker(argv + ["--stats"], env, log)
        worker.proc.wait(120)
        redis1, calls1 = redis.cpu_seconds(), commands(redis)
        stats = json.loads(log.read_text().strip().splitlines()[-1].removeprefix("floor-stats "))
        before = {"master_cpu": stats["self0"]["cpu"], "master_flt": stats["self0"]["flt"], "child_cpu": 0.0,
                  "child_flt": 0, "redis_cpu": redis0, "commands": calls0}
        after = {"master_cpu": stats["self1"]["cpu"], "master_flt": stats["self1"]["flt"],
                 "child_cpu": stats["children"]["cpu"], "child_flt": stats["children"]["flt"], "redis_cpu": redis1,
                 "commands": calls1}
        enqueue_calls = {}  # enqueued before calls0
        done = True
    else:
        worker = Worker(argv, env, log)
        try:
            system.enqueue_one(range(PROBE, PROBE + 4))
            if not records.wait_for(4, 30):
                raise RuntimeError(f"{system.key} ran no warm-up task: {worker.tail()}")
            time.sleep(0.5)
            before = snapshot(worker.pid, redis)
            before["redis_cpu"] += enqueue  # the enqueue is not the worker's
            system.enqueue_batch(range(n))
            done = records.wait_for(n + 4, 120, poll=0.01)
            after = snapshot(worker.pid, redis)
        finally:
            worker.stop()
    runs = {i: t for i, t in records.read().items() if i < PROBE}
    records.cleanup()
    if not done:
        raise RuntimeError(f"{system.key}: {len(runs)} of {n} ran in 120 s")
    per = {k: (after[k] - before[k]) / n for k in ("master_cpu", "child_cpu", "redis_cpu", "master_flt", "child_flt")}
    per["rate"] = benchlib.drain_rate(runs)
    per["exactly_once"] = benchlib.verify(runs, n)["exactly_once"]
    calls = {k: (v - before["commands"].get(k, 0) - enqueue_calls.get(k, 0) - info_calls.get(k, 0)) / n
             for k, v in after["commands"].items()}
    per["commands"] = {k: v for k, v in calls.items() if v > 0.005}
    return per


def cmd_cpu(args) -> None:
    from systems import ALL

    wanted = {"qdeploy", "floor", "floor+redis"}
    systems = [s for s in ALL if s.key in wanted]
    redis = RedisServer()
    os.environ["BENCH_REDIS_URL"] = redis.url
    logs = Path(tempfile.mkdtemp(prefix="qdeploy-breakdown-"))
    rows = []
    try:
        for workload in args.workloads.split(","):
            mtpc = {"drain": None, "mtpc1": 1, "mtpc10": 10}[workload]
            n = args.mtpc1_tasks if workload == "mtpc1" else args.tasks
            for system in systems:
                reps = [measure_cpu(system, redis, mtpc, n, logs) for _ in range(args.repeats)]
                med = {k: statistics.median(r[k] for r in reps) for k in reps[0] if k not in ("exactly_once", "commands")}
                med["exactly_once"] = all(r["exactly_once"] for r in reps)
                med["commands"] = reps[len(reps) // 2]["commands"]
                rows.append((workload, system.key, med))
                print(f"  {workload:7} {system.key:12} {med['rate']:8.0f}/s  master {1e3 * med['master_cpu']:.3f} ms "
                      f"{med['master_flt']:6.0f} flt  children {1e3 * med['child_cpu']:.3f} ms {med['child_flt']:6.0f} flt  "
                      f"redis {1e3 * med['redis_cpu']:.3f} ms", file=sys.stderr, flush=True)
    finally:
        redis.stop()
        shutil.rmtree(logs, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.2f}; medians of {args.repeats}; per task:\n")
    print("| workload | system | tasks/s | master CPU (ms) | master faults | children CPU (ms) | children faults | "
          "redis CPU (ms) | total CPU (ms) | exactly once |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for workload, key, m in rows:
        total = m["master_cpu"] + m["child_cpu"] + m["redis_cpu"]
        print(f"| {workload} | {key} | {m['rate']:,.0f} | {1e3 * m['master_cpu']:.3f} | {m['master_flt']:.0f} | "
              f"{1e3 * m['child_cpu']:.3f} | {m['child_flt']:.0f} | {1e3 * m['redis_cpu']:.3f} | {1e3 * total:.3f} | "
              f"{m['exactly_once']} |")
    print("\nRedis commands per task (INFO commandstats; commands inside a script count on their own):\n")
    for workload, key, m in rows:
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(m["commands"].items(), key=lambda kv: -kv[1]))
        print(f"- {workload} {key}: {shown}")


# -- py-spy ---------------------------------------------------------------------------------------
def cmd_spy(args) -> None:
    from systems import ALL

    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed (pip install -e '.[bench]')")
    qd = ALL[0]
    redis = RedisServer()
    os.environ["BENCH_REDIS_URL"] = redis.url
    logs = Path(tempfile.mkdtemp(prefix="qdeploy-breakdown-"))
    mtpc = {"drain": None, "mtpc1": 1, "mtpc10": 10}[args.workload]
    out = logs / "spy.txt"
    try:
        records = Records()
        worker = Worker(qd.worker_argv(redis.url, mtpc), benchlib.base_env(redis.url, records), logs / "w.log")
        qd.enqueue_one(range(PROBE, PROBE + 4))
        records.wait_for(4, 30)
        qd.enqueue_batch(range(args.tasks))
        proc = subprocess.run([spy, "record", "--pid", str(worker.pid), "--subprocesses", "--rate", str(args.rate),
                               "--duration", str(int(args.seconds)), "--format", "raw", "--output", str(out),
                               "--nonblocking", *(["--idle"] if args.idle else [])], capture_output=True, text=True)
        worker.stop()
        records.cleanup()
        if proc.returncode != 0 or not out.exists():
            raise SystemExit(f"py-spy failed: {proc.stderr[-500:]}")
        summarise_spy(out.read_text(), worker.pid, args.top)
    finally:
        redis.stop()
        shutil.rmtree(logs, ignore_errors=True)


def summarise_spy(text: str, master: int, top: int) -> None:
    """py-spy raw (collapsed) stacks -> inclusive samples per function, per process kind."""
    inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    leaf: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        kind = "children" if any(f.startswith("child_main ") for f in frames) else "master"  # forked: master's frames below
        root = "child_main " if kind == "children" else "Master.run "
        at = next((k for k, f in enumerate(frames) if f.startswith(root)), None)
        frames = frames[at + 1:] if at is not None else frames  # the CLI, boot and (in a child) the master's frames
        names = [re.sub(r" \((.*?):\d+\)$", r" (\1)", f) for f in frames]
        totals[kind] += int(count)
        for name in set(names):
            inclusive[kind][name] += int(count)
        if names:
            leaf[kind][names[-1]] += int(count)
    for kind in ("master", "children"):
        total = totals[kind] or 1
        print(f"\n{kind}: {totals[kind]} samples")
        print("| inclusive % | self % | function |\n|---|---|---|")
        for name, count in inclusive[kind].most_common(top):
            print(f"| {100 * count / total:.1f} | {100 * leaf[kind][name] / total:.1f} | `{name}` |")


# -- start-up -------------------------------------------------------------------------------------
STARTUP_IMPORTS = [  # (label, statement): what each process imports before its first task
    ("bare interpreter", "pass"),
    ("redis-py, as qdeploy imports it (redis.asyncio deferred)",
     "import importlib.util as u, sys; s = u.spec_from_file_location('qi', sys.argv[1]); m = u.module_from_spec(s); "
     "s.loader.exec_module(m); m.defer_redis_asyncio(); import redis"),
    ("redis-py, plain", "import redis"),
    ("click", "import click"),
    ("qdeploy's package (`import qdeploy`: the App and what it needs, redis-py included)", "import qdeploy"),
    ("qdeploy worker master (all it imports)", "import qdeploy.cli, qdeploy.cli.worker, qdeploy.worker.boot, bench_qdeploy"),
    ("Dramatiq master (all it imports)", "import dramatiq.cli"),
    ("Dramatiq worker process (adds the broker and the app)", "import dramatiq.cli, bench_dramatiq"),
]


def callgrind(statement: str, env: dict) -> int | None:
    """Instructions executed by `python -c statement` (valgrind --tool=callgrind): repeatable,
    whatever the load of the machine."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        imports = str(Path(__file__).resolve().parents[1] / "qdeploy" / "_imports.py")
        proc = subprocess.run([valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", statement,
                               imports],
                              env=env, cwd=BENCH_DIR, capture_output=True, text=True, timeout=600)
        m = re.search(r"Collected : (\d+)", proc.stderr)
        return int(m.group(1)) if m else None


def cmd_startup(args) -> None:
    from systems import ALL

    redis = RedisServer()
    os.environ["BENCH_REDIS_URL"] = redis.url
    logs = Path(tempfile.mkdtemp(prefix="qdeploy-breakdown-"))
    systems = [s for s in ALL if s.key in ("qdeploy", "dramatiq-t1") and (s.key == "qdeploy" or s.available())]
    try:
        for system in systems:
            walls, imports = [], collections.defaultdict(list)
            for timed in (True, False):  # wall times without -X importtime, then the imports with it
                for _ in range(args.repeats):
                    redis.flush()
                    records = Records()
                    system.enqueue_one([0])
                    env = benchlib.base_env(redis.url, records)
                    if not timed:
                        env["PYTHONPROFILEIMPORTTIME"] = "1"
                    log = logs / f"{system.key}.log"
                    log.unlink(missing_ok=True)
                    t0 = time.time()
                    worker = Worker(system.worker_argv(redis.url, None), env, log)
                    ok = records.wait_for(1, 30, poll=0.002)
                    if timed:
                        walls.append(min(records.read()[0]) - t0 if ok else float("nan"))
                    worker.stop()
                    records.cleanup()
                    if timed:
                        continue
                    per_pkg: collections.Counter = collections.Counter()
                    for line in log.read_text(errors="replace").splitlines():
                        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
                        if m and m.group(3) == " ":  # top level: cumulative of what it pulled in
                            per_pkg[group_of(m.group(4))] += int(m.group(2))
                    for pkg, us in per_pkg.items():
                        imports[pkg].append(us / 1000)
            print(f"\n{system.key}: start -> first task {1e3 * statistics.median(walls):.0f} ms (median of {args.repeats}, "
                  f"min {1e3 * min(walls):.0f}); imports, cumulative ms by the package a top-level import belongs to, "
                  "every process on the way to the first task (-X importtime adds ~10-20 %):")
            for pkg, values in sorted(imports.items(), key=lambda kv: -statistics.median(kv[1]))[:args.top]:
                print(f"  {pkg:28} {statistics.median(values):7.1f}")
        bare = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - t)
        print(f"\n`python -c pass`: {1e3 * statistics.median(bare):.0f} ms")
        if not args.no_callgrind:
            env = benchlib.base_env(redis.url, None)
            print("\ninstructions executed (valgrind --tool=callgrind, millions; repeatable whatever the load):\n")
            print("| what | instructions (M) |\n|---|---|")
            for label, statement in STARTUP_IMPORTS:
                n = callgrind(statement, env)
                shown = statement if len(statement) < 80 else statement[:40] + " ... " + statement[-20:]
                print(f"| {label}: `{shown}` | {n / 1e6:,.0f} |" if n else f"| {label} | (valgrind failed) |", flush=True)
    finally:
        redis.stop()
        shutil.rmtree(logs, ignore_errors=True)


# -- memory ---------------------------------------------------------------------------------------
PROBE_RSS = r"""
import json, sys, importlib
def mem():
    out = {}
    for line in open("/proc/self/smaps_rollup"):
        k, _, v = line.partition(":")
        if k in ("Rss", "Anonymous", "Private_Clean", "Private_Dirty", "Shared_Clean"):
            out[k] = int(v.split()[0]) / 1024
    return out
rows = [("(interpreter)", mem())]
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception as exc:
        rows.append((name + " (failed: %s)" % exc, mem()))
        continue
    rows.append((name, mem()))
print(json.dumps(rows))
"""


def smaps(pid: int) -> dict[str, float]:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return {k: int(v.split()[0]) / 1024 for k, _, v in (ln.partition(":") for ln in text.splitlines()[1:])}


def imported_order(log: Path) -> list[str]:
    """Every module a process imported, in the order its import finished (`-X importtime`
    prints a module after what it pulled in): importing them in this order, each step runs one
    module's own body only."""
    out: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|( *)(\S+)", line)
        if m and m.group(2) not in out:
            out.append(m.group(2))
    return out


def group_of(name: str) -> str:
    top = name.split(".")[0]
    if top == "qdeploy":
        parts = name.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 else "qdeploy"
    if top == "redis" and ".asyncio" in name:
        return "redis.asyncio"
    if top in sys.stdlib_module_names or top.startswith("_"):
        return "(stdlib)"
    return top


def cmd_rss(args) -> None:
    from systems import ALL

    redis = RedisServer()
    os.environ["BENCH_REDIS_URL"] = redis.url
    logs = Path(tempfile.mkdtemp(prefix="qdeploy-breakdown-"))
    try:
        for system in [s for s in ALL if s.key in ("qdeploy", "dramatiq-t1") and (s.key == "qdeploy" or s.available())]:
            redis.flush()
            records = Records()
            env = benchlib.base_env(redis.url, records)
            plain = logs / f"{system.key}-plain.log"
            worker = Worker(system.worker_argv(redis.url, None), env, plain)
            system.enqueue_one(range(4))
            records.wait_for(4, 30)
            time.sleep(1.0)
            m = smaps(worker.pid)
            worker.stop()
            records.cleanup()
            print(f"\nidle {system.key} master: RSS {m['Rss']:.1f} MiB, anonymous {m['Anonymous']:.1f}, "
                  f"file-backed {m['Rss'] - m['Anonymous']:.1f}")
            records = Records()
            env = dict(benchlib.base_env(redis.url, records), PYTHONPROFILEIMPORTTIME="1")
            log = logs / f"{system.key}-imports.log"
            worker = Worker(system.worker_argv(redis.url, None), env, log)
            system.enqueue_one(range(4))
            records.wait_for(4, 30)
            time.sleep(0.5)
            worker.stop()
            records.cleanup()
            order = imported_order(log)
            proc = subprocess.run([sys.executable, "-c", PROBE_RSS, json.dumps(order)], env=benchlib.base_env(redis.url, None),
                                  cwd=BENCH_DIR, capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-500:])
            rows = json.loads(proc.stdout)
            grew: collections.Counter = collections.Counter()
            grew_rss: collections.Counter = collections.Counter()
            for (_, a), (name, b) in zip(rows, rows[1:], strict=False):
                grew[group_of(name)] += b["Anonymous"] - a["Anonymous"]
                grew_rss[group_of(name)] += b["Rss"] - a["Rss"]
            print(f"  its {len(order)} modules (master and children: -X importtime sees both), imported one by one "
                  f"in that order in a fresh interpreter: {rows[0][1]['Rss']:.1f} MiB RSS / {rows[0][1]['Anonymous']:.1f} "
                  f"anonymous before, {rows[-1][1]['Rss']:.1f} / {rows[-1][1]['Anonymous']:.1f} after. By package (MiB):")
            print("  | package | +anonymous | +RSS |\n  |---|---|---|")
            for name, anon in grew.most_common(args.top):
                print(f"  | `{name}` | {anon:+.2f} | {grew_rss[name]:+.2f} |")
    finally:
        redis.stop()
        shutil.rmtree(logs, ignore_errors=True)


# -- perf: kernel and user time by kind, per task ----------------------------------------------------
CATEGORIES = [  # (category, any of these functions in the call chain); the first that matches wins
    ("exit: tearing down the address space", ("exit_mmap", "do_exit", "do_group_exit", "mmput")),
    ("fork: copying page tables", ("copy_process", "dup_mmap", "copy_page_range", "kernel_clone")),
    ("page faults (copy-on-write, first touch)", ("exc_page_fault", "asm_exc_page_fault", "handle_mm_fault")),
    ("creating the record file (bench's own, every system)", ("do_sys_openat2", "ext4_create", "path_openat")),
    ("other system calls", ("entry_SYSCALL_64", "do_syscall_64")),
]


def categorize(chain: list[str], dso: str) -> str:
    for name, funcs in CATEGORIES:
        if any(f in funcs for f in chain):
            return name
    return "Python (interpreter, user space)" if "python" in dso or "libpython" in dso else "other user space"


def cmd_perf(args) -> None:
    from systems import ALL

    perf = shutil.which("perf")
    if perf is None:
        raise SystemExit("perf is not installed (apt-get install linux-perf)")
    mtpc = {"drain": None, "mtpc1": 1, "mtpc10": 10}[args.workload]
    redis = RedisServer()
    os.environ["BENCH_REDIS_URL"] = redis.url
    logs = Path(tempfile.mkdtemp(prefix="qdeploy-breakdown-"))
    try:
        for system in [s for s in ALL if s.key in args.systems.split(",")]:
            redis.flush()
            records = Records()
            system.enqueue_batch(range(args.tasks))
            argv = system.worker_argv(redis.url, mtpc)
            worker = Worker(argv + (["--stats"] if system.reference else []), benchlib.base_env(redis.url, records),
                            logs / "w.log")
            time.sleep(0.5)
            data = logs / "perf.data"
            before = records.count()
            subprocess.run([perf, "record", "-a", "-F", str(args.freq), "-g", "-o", str(data), "--", "sleep",
                            str(args.seconds)], capture_output=True, check=True)  # -a: -p would miss the children's exits
            done = records.count() - before
            master = worker.pid
            ours = {master} | set(records.by_pid())  # every process that ran a task
            worker.stop()
            records.cleanup()
            if done < 10:
                raise SystemExit(f"{system.key}: only {done} tasks ran while perf recorded (queue too short?)")
            text = subprocess.run([perf, "script", "-i", str(data), "-F", "comm,pid,ip,sym,dso"], capture_output=True,
                                  text=True, errors="replace").stdout
            totals: dict = collections.defaultdict(collections.Counter)
            for sample in text.split("\n\n"):
                lines = [ln for ln in sample.splitlines() if ln.strip()]
                if not lines:
                    continue
                head = lines[0].split()
                try:
                    pid = int(head[-1])
                except (ValueError, IndexError):
                    continue
                if pid not in ours:
                    continue
                chain = [ln.split()[1] if len(ln.split()) > 1 else "" for ln in lines[1:]]
                dso = lines[1].rsplit("(", 1)[-1] if len(lines) > 1 else ""
                totals["master" if pid == master else "children"][categorize(chain, dso)] += 1
            ms = 1000.0 / args.freq / done  # one sample, in ms per task
            print(f"\n{system.key}, {args.workload}: {done} tasks in {args.seconds:g} s while perf sampled the worker and "
                  f"its forks at {args.freq} Hz; CPU per task (ms) by kind, load average {os.getloadavg()[0]:.2f}:\n")
            print("| kind | master | children |\n|---|---|---|")
            kinds = sorted({k for c in totals.values() for k in c}, key=lambda k: -(totals["master"][k] + totals["children"][k]))
            for kind in kinds:
                print(f"| {kind} | {ms * totals['master'][kind]:.3f} | {ms * totals['children'][kind]:.3f} |")
            print(f"| **all** | {ms * sum(totals['master'].values()):.3f} | {ms * sum(totals['children'].values()):.3f} |")
    finally:
        redis.stop()
        shutil.rmtree(logs, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("cpu")
    p.add_argument("--workloads", default="drain,mtpc1,mtpc10")
    p.add_argument("--tasks", type=int, default=6000)
    p.add_argument("--mtpc1-tasks", type=int, default=1500)
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("spy")
    p.add_argument("--workload", default="drain", choices=["drain", "mtpc1", "mtpc10"])
    p.add_argument("--tasks", type=int, default=200000)
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--rate", type=int, default=500)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--idle", action="store_true", help="count samples of threads waiting in a system call too")
    p = sub.add_parser("startup")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--no-callgrind", action="store_true", help="skip the instruction counts (valgrind)")
    p = sub.add_parser("perf")
    p.add_argument("--workload", default="mtpc1", choices=["drain", "mtpc1", "mtpc10"])
    p.add_argument("--systems", default="qdeploy,floor,floor+redis")
    p.add_argument("--tasks", type=int, default=100000)
    p.add_argument("--seconds", type=float, default=4)
    p.add_argument("--freq", type=int, default=1999)
    p = sub.add_parser("rss")
    p.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    import run

    run.compile_bytecode()
    return {"cpu": cmd_cpu, "spy": cmd_spy, "startup": cmd_startup, "rss": cmd_rss, "perf": cmd_perf}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
