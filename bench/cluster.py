#!/usr/bin/env python3
"""Redis Cluster next to one server, and this tree next to the previous commit, in one run.

    python bench/cluster.py               # 3 repeats (medians), ~4 min on 2 cores
    python bench/cluster.py --quick       # 1 small repeat, ~1 min
    python bench/run.py --cluster         # the same, from the main bench

Two parts, both on private servers on free ports (never 127.0.0.1:6379):

1. **No slower on one server.** The previous commit (`git archive HEAD`, installed into a temp
   dir with pip) and this working tree, alternately, on the same redis-server: drain (20000
   no-op tasks, `qdeploy worker -c 2`) and enqueue (one by one, and batched with `task.map`).
   The ratios this/previous are what issue 23 asks to stay within 5 %.
2. **Cluster next to one server.** A 3-shard cluster (3 primaries, no replicas: the single
   server has none either) and one redis-server, the same worker (`-c 2`, queues q0,q1,q2 on
   three shards), the same backlog: drain, enqueue one by one, a 2-step chain whose second step
   goes to another queue (on a cluster: through the outbox), one queue alone (one shard), and
   the Redis CPU each task costs (`INFO cpu` of every server, before and after).

Writes bench/cluster.json and prints the table that bench/README.md ("Redis Cluster") shows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import BENCH_DIR, REPO, Records, RedisServer, Worker, drain_rate, median, verify

QUEUES = ["q0", "q1", "q2"]  # on a 3-shard cluster with the namespace "bench": one per shard (checked)
CHILD = r'''
import json, sys, time
import bench_qdeploy as b
mode, n, queues = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
app, noop = b.app, b.noop
out = {}
noop.apply_async((-1,), queue="warmup")  # connect, load the script: not measured (and never run)
if mode in ("enqueue", "one"):
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        noop.apply_async((i,), queue=queues[i % len(queues)])
    out["one"] = n / (time.perf_counter() - start)
    out["one_cpu_us"] = (time.process_time() - cpu) / n * 1e6
if mode in ("enqueue", "batch"):
    start, cpu = time.perf_counter(), time.process_time()
    app.send_many([(noop, (i,), {}, {"queue": queues[i % len(queues)]}) for i in range(n)])
    out["batch"] = n / (time.perf_counter() - start)
    out["batch_cpu_us"] = (time.process_time() - cpu) / n * 1e6
if mode == "chain":
    from qdeploy import chain
    sigs = [chain(noop.si(i).set(queue=queues[0]), noop.si(n + i).set(queue=queues[1 % len(queues)]))
            for i in range(n)]
    for s in sigs:
        s.apply_async()
print(json.dumps(out))
'''


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def previous_site(commit: str) -> Path:
    """The commit's qdeploy, installed once per commit into a temp dir (as test_protocol_v2 does)."""
    site = Path(tempfile.gettempdir()) / f"qdeploy-bench-prev-{commit[:12]}"
    if (site / "qdeploy").is_dir():
        return site
    work = Path(tempfile.mkdtemp(prefix="qdeploy-bench-prev-build-"))
    src, dist = work / "src", work / "dist"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], check=True)
    [wheel] = dist.glob("qdeploy-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    return site


class Side:
    """One qdeploy: the working tree, or a commit installed in `site`."""

    def __init__(self, name: str, site: Path | None):
        self.name, self.site = name, site

    def env(self, url: str, records: Records | None) -> dict:
        env = dict(os.environ, BENCH_REDIS_URL=url, PYTHONUNBUFFERED="1", QDEPLOY_HISTORY_MAX="0")
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (self.site or REPO, BENCH_DIR))
        if records is not None:
            env["BENCH_RECORD_DIR"] = str(records.dir)
        return env

    def child(self, url: str, mode: str, n: int, queues: list[str]) -> dict:
        done = subprocess.run([sys.executable, "-c", CHILD, mode, str(n), ",".join(queues)], env=self.env(url, None),
                              capture_output=True, text=True, cwd=BENCH_DIR, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{self.name} {mode}: {done.stderr[-800:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def drain(self, url: str, n: int, queues: list[str], cap: float, logs: Path, tag: str,
              expected: int | None = None, cpu=lambda: 0.0) -> dict:
        """Start a worker on a backlog already there; tasks/s between first and last start."""
        records = Records()
        argv = [sys.executable, "-m", "qdeploy", "worker", "-A", "bench_qdeploy:app", "-b", url, "-c", "2",
                "-Q", ",".join(queues), "--allow-root", "-l", "warning"]
        before = cpu()
        worker = Worker(argv, self.env(url, records), logs / f"{self.name}-{tag}.log", cwd=BENCH_DIR)
        try:
            finished = records.wait_for(expected or n, cap)
            worker_cpu = tree_cpu(worker.pid)  # the master and its children, start-up included
        finally:
            worker.stop()
        used = cpu() - before
        runs = records.read()
        records.cleanup()
        check = verify(runs, expected or n)
        rate = drain_rate(runs)
        out = {"rate": rate, "done": sum(len(t) for t in runs.values()), "capped": not finished,
               "exactly_once": check["exactly_once"], "redis_cpu_us_per_task": used / max(1, expected or n) * 1e6,
               "worker_cpu_us_per_task": worker_cpu / max(1, expected or n) * 1e6}
        if not runs:
            out["error"] = worker.tail()
        log(f"  {tag:24} {self.name:9} {rate:9,.0f} tasks/s  ({out['done']}/{expected or n}"
            f"{', capped' if not finished else ''}{'' if check['exactly_once'] else ', NOT exactly once'})"
            f"  worker CPU {out['worker_cpu_us_per_task']:.0f} µs/task"
            + (f", Redis CPU {out['redis_cpu_us_per_task']:.1f} µs/task" if used else ""))
        return out


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process and its live children have used."""
    import psutil

    total = 0.0
    try:
        master = psutil.Process(pid)
        for proc in [master, *master.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def server_cpu(clients) -> float:
    total = 0.0
    for client in clients:
        info = client.info("cpu")
        total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total


def flush(clients) -> None:
    for client in clients:
        client.flushall()


# -- part 1: this tree vs the previous commit, one server --------------------------------------------
def single_server(args, logs: Path) -> dict:
    prev = Side("previous", previous_site(args.commit))
    this = Side("this", None)
    server = RedisServer()
    keys = ("drain", "drain_cpu_us", "one", "one_cpu_us", "batch", "batch_cpu_us")
    results: dict = {s: {k: [] for k in keys} for s in ("previous", "this")}
    try:
        for rep in range(args.repeats):
            log(f"one server, repeat {rep + 1}/{args.repeats} (load average {os.getloadavg()[0]:.2f})")
            order = (prev, this) if rep % 2 == 0 else (this, prev)  # alternate: drift cancels
            for side in order:
                server.flush()
                side.child(server.url, "batch", args.tasks, ["default"])
                got = side.drain(server.url, args.tasks, ["default"], args.cap, logs, "drain, one server")
                results[side.name]["drain"].append(got["rate"])
                results[side.name]["drain_cpu_us"].append(got["worker_cpu_us_per_task"])
            for _ in range(4):  # enqueue in short alternating rounds: the machine's load hits both alike
                for side in order:
                    server.flush()
                    rates = side.child(server.url, "enqueue", args.enqueue // 4, ["default"])
                    for key in ("one", "one_cpu_us", "batch", "batch_cpu_us"):
                        results[side.name][key].append(rates[key])
                    log(f"  {'enqueue':24} {side.name:9} one by one {rates['one']:8,.0f}/s "
                        f"({rates['one_cpu_us']:.0f} µs CPU)   batched {rates['batch']:8,.0f}/s "
                        f"({rates['batch_cpu_us']:.1f} µs CPU)")
    finally:
        server.stop()
    out = {s: {k: median(v) for k, v in r.items()} for s, r in results.items()}
    out["ratio"] = {k: out["this"][k] / out["previous"][k] for k in keys if out["this"][k] and out["previous"][k]}
    out["runs"] = results
    return out


# -- part 2: a 3-shard cluster next to one server --------------------------------------------------------
def cluster_vs_server(args, logs: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.integration.cluster import Cluster

    this = Side("this", None)
    server = RedisServer()
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="qdeploy-bench-cluster-")), primaries=3, replicas=0)
    results: dict = {}
    try:
        cluster.start()
        shards = {cluster.port_of_key(f"{{bench:{q}}}:q") for q in QUEUES}
        assert len(shards) == 3, f"queues {QUEUES} are not on three shards: {shards}"
        targets = {"one server": (server.url, [server.client]),
                   "3-shard cluster": (cluster.url, [cluster.client(p) for p in cluster.ports])}
        for rep in range(args.repeats):
            log(f"cluster vs one server, repeat {rep + 1}/{args.repeats} (load average {os.getloadavg()[0]:.2f})")
            for name, (url, clients) in targets.items():
                row = results.setdefault(name, {})
                cpu = lambda c=clients: server_cpu(c)  # noqa: E731
                for tag, queues in (("3 queues", QUEUES), ("1 queue", QUEUES[:1])):
                    flush(clients)
                    this.child(url, "batch", args.tasks, queues)
                    row.setdefault(f"drain {tag}", []).append(
                        this.drain(url, args.tasks, queues, args.cap, logs, f"drain {tag}, {name}", cpu=cpu))
                flush(clients)
                n = args.tasks // 4
                this.child(url, "chain", n, QUEUES)
                row.setdefault("chain", []).append(
                    this.drain(url, n, QUEUES, args.cap, logs, f"chain 2 queues, {name}", expected=2 * n, cpu=cpu))
                for mode in ("one", "batch"):  # the servers' CPU per published task, each way
                    flush(clients)
                    before = cpu()
                    rates = this.child(url, mode, args.enqueue, QUEUES)
                    row.setdefault(mode, []).append(rates[mode])
                    row.setdefault(f"{mode}_redis_cpu_us", []).append((cpu() - before) / args.enqueue * 1e6)
                log(f"  {'enqueue, ' + name:24} {'this':9} one by one {row['one'][-1]:8,.0f}/s "
                    f"(Redis {row['one_redis_cpu_us'][-1]:.1f} µs/task)   batched {row['batch'][-1]:8,.0f}/s "
                    f"(Redis {row['batch_redis_cpu_us'][-1]:.1f} µs/task)")
    finally:
        server.stop()
        cluster.stop()
    out: dict = {}
    for name, row in results.items():
        out[name] = {}
        for key, values in row.items():
            if key in ("one", "batch", "one_redis_cpu_us", "batch_redis_cpu_us"):
                out[name][key] = median(values)
            else:
                out[name][key] = {field: median([v[field] for v in values]) for field in
                                  ("rate", "redis_cpu_us_per_task", "worker_cpu_us_per_task")}
                out[name][key]["exactly_once"] = all(v["exactly_once"] for v in values)
    return out


def table(result: dict) -> str:
    single, both = result.get("single"), result.get("cluster")
    lines = []
    if single:
        lines += ["| one server | previous commit | this tree | this / previous |", "|---|---|---|---|"]
        for key, label in (("drain", f"drain {result['params']['tasks']} no-op tasks, 2 processes (tasks/s)"),
                           ("drain_cpu_us", "… worker CPU per task, master + children (µs)"),
                           ("one", "enqueue one by one (tasks/s)"), ("one_cpu_us", "… client CPU per `delay` (µs)"),
                           ("batch", "enqueue batched (tasks/s)"), ("batch_cpu_us", "… client CPU per task (µs)")):
            p, t = single["previous"][key], single["this"][key]
            shown = (lambda v: f"{v:,.0f}") if "cpu" not in key else (lambda v: f"{v:.1f}")
            lines.append(f"| {label} | {shown(p)} | {shown(t)} | {single['ratio'].get(key, 0):.3f} |")
        lines.append("")
    if both:
        s, c = both["one server"], both["3-shard cluster"]
        lines += ["| same worker (-c 2), same run | one server | 3-shard cluster | cluster / server |", "|---|---|---|---|"]
        for key, label in (("drain 3 queues", "drain, 3 queues (tasks/s)"),
                           ("drain 1 queue", "drain, 1 queue: one shard (tasks/s)"),
                           ("chain", "2-step chain, step 2 to another queue (tasks/s)")):
            for field, what, shown in (("rate", label, "{:,.0f}"),
                                       ("worker_cpu_us_per_task", "… worker CPU per task (µs)", "{:.0f}"),
                                       ("redis_cpu_us_per_task", "… Redis CPU per task, all servers (µs)", "{:.1f}")):
                one, many = s[key][field], c[key][field]
                lines.append(f"| {what} | {shown.format(one)} | {shown.format(many)} | {many / one:.2f} |")
        for key, label in (("one", "enqueue one by one, 3 queues (tasks/s)"),
                           ("one_redis_cpu_us", "… Redis CPU per `delay`, all servers (µs)"),
                           ("batch", "enqueue batched, 3 queues (tasks/s)"),
                           ("batch_redis_cpu_us", "… Redis CPU per task, all servers (µs)")):
            shown = "{:,.0f}" if "cpu" not in key else "{:.1f}"
            lines.append(f"| {label} | {shown.format(s[key])} | {shown.format(c[key])} | {c[key] / s[key]:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--tasks", type=int)
    ap.add_argument("--enqueue", type=int)
    ap.add_argument("--cap", type=float, default=60.0)
    ap.add_argument("--commit", default="HEAD", help="the previous commit to compare with (default HEAD)")
    ap.add_argument("--only", default="single,cluster", help="single, cluster or both")
    ap.add_argument("--out", default=str(BENCH_DIR / "cluster.json"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.tasks = args.tasks or (3000 if args.quick else 20000)
    args.enqueue = args.enqueue or (2000 if args.quick else 10000)
    args.commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", args.commit], capture_output=True, text=True,
                                 check=True).stdout.strip()
    logs = Path(tempfile.mkdtemp(prefix="qdeploy-bench-cluster-logs-"))
    started = time.time()
    result: dict = {"params": {"tasks": args.tasks, "enqueue": args.enqueue, "repeats": args.repeats,
                               "previous": args.commit, "nproc": os.cpu_count()}}
    only = args.only.split(",")
    if "single" in only:
        result["single"] = single_server(args, logs)
    if "cluster" in only:
        result["cluster"] = cluster_vs_server(args, logs)
    result["params"]["seconds"] = round(time.time() - started, 1)
    text = table(result)
    print(text)
    if not args.no_write:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    log(f"logs in {logs}; {result['params']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
