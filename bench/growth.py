"""How cost grows (issue 24): curves over sizes, next to the peers where they have the same thing.

    python bench/run.py --growth                        # every curve, the sizes below, ~40 min
    python bench/run.py --growth --quick                # small sizes, 1 repeat: a smoke run
    python bench/run.py --growth --curves nodes,render --node-counts 10,50,200

* memory: Redis `used_memory` delta per waiting no-op task, 10k / 100k / 1M queued, for qdeploy,
  Celery, RQ and Dramatiq (each family once: the variants share a producer), filled with each
  system's own producer code, batched (`Systems.fill`).
* eta: n tasks scheduled an hour ahead plus `--eta-due` tasks due now. qdeploy: a worker drains
  the due ones with the n still scheduled: master RSS after that (idle), Redis time per promoted
  task (`INFO commandstats` of the reserve script and BLMOVE, over the due count), drain rate.
  Celery: its worker takes the n ETA tasks into its own memory: master RSS once it holds them.
* nodes: simulated idle nodes (bench/nodesim.py, one process per 50), a window of Redis CPU
  (`INFO cpu` delta / wall) and commands/s, then `qdeploy status` and `qdeploy inspect stats`
  (fresh processes, and the same calls in-process); first, one real idle `qdeploy worker -c 2`
  beside one simulated node, as the calibration of the simulation.
* render: `qdeploy render --nodes N` wall time, a fresh process each time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import growth_report as report
from benchlib import BENCH_DIR, Records, RedisServer, Worker, verify

CURVES = ("memory", "eta", "nodes", "render")
SIZES = {"memory": "10k,100k,1M", "eta": "10k,100k,1M", "nodes": "10,50,200", "render": "10,100,1000"}
QUICK_SIZES = {"memory": "1k,3k,10k", "eta": "1k,2k,5k", "nodes": "2,5,10", "render": "2,10,50"}
LIMITS = {"memory": (100, 5_000_000), "eta": (100, 5_000_000), "nodes": (1, 400), "render": (1, 5000)}
FAR = 3000.0  # scheduled this far ahead: never due during a run (Celery's visibility timeout is 1 h)
NODES_PER_PROCESS = 50
HEARTBEAT_EVERY = 2.0  # qdeploy.worker.master.HEARTBEAT_EVERY (nodesim.py uses the real one)
NAMESPACE = "bench"  # bench_qdeploy's app: `qdeploy status -A bench_qdeploy:app` reads it


class Growth:
    def __init__(self, args, redis: RedisServer, systems):
        self.args, self.redis, self.systems = args, redis, systems
        self.logs = Path(tempfile.mkdtemp(prefix="qdeploy-bench-growth-"))
        self.curves: dict = {c: {} for c in CURVES}
        self.loads: list[float] = []
        self.notes: list[str] = []
        self.failed = False

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def settle(self) -> None:
        """Before a measurement: wait (bounded) for the 1-min load average to fall under --max-load."""
        deadline = time.monotonic() + self.args.load_wait
        while os.getloadavg()[0] > self.args.max_load and time.monotonic() < deadline:
            time.sleep(5)
        self.loads.append(os.getloadavg()[0])

    def add(self, curve: str, system: str, size: int, result: dict) -> None:
        self.curves[curve].setdefault(system, {}).setdefault(str(size), {"runs": []})["runs"].append(result)

    def worker(self, system, records: Records | None, tag: str) -> Worker:
        argv = system.worker_argv(self.redis.url, None)
        return Worker(argv, benchlib.base_env(self.redis.url, records), self.logs / f"{system.key}-{tag}.log")

    # -- memory per waiting task ------------------------------------------------------------------
    def fill(self, system, indices: range, eta: float | None = None) -> tuple[int, float, bool]:
        """Fill in chunks until done or --fill-cap seconds: (tasks sent, seconds, capped)."""
        start, sent, chunk = time.perf_counter(), 0, 20000
        for first in range(indices.start, indices.stop, chunk):
            if time.perf_counter() - start > self.args.fill_cap:
                return sent, time.perf_counter() - start, True
            part = range(first, min(first + chunk, indices.stop))
            system.fill(part, eta)
            sent += len(part)
        return sent, time.perf_counter() - start, False

    def memory(self, system, n: int) -> dict:
        self.redis.flush()
        before = self.redis.used_memory()
        sent, seconds, capped = self.fill(system, range(n))
        used = self.redis.used_memory() - before
        waiting = system.waiting(self.redis.client)
        self.redis.flush()
        out = {"n": n, "sent": sent, "waiting": waiting, "bytes": used, "fill_rate": sent / seconds if seconds else None,
               "per_task": used / waiting if waiting else None, "capped": capped}
        if waiting != sent:
            out["error"] = f"{sent} sent but {waiting} waiting"
        self.log(f"  memory  {system.family:9} {n:>9,}: {out['per_task'] or 0:7.1f} B/task, filled at "
                 f"{out['fill_rate'] or 0:8,.0f}/s{f' (capped at {sent})' if capped else ''}")
        return out

    # -- ETA ---------------------------------------------------------------------------------------
    def eta_qdeploy(self, system, n: int) -> dict:
        due, a = self.args.eta_due, self.args
        self.redis.flush()
        base = self.redis.used_memory()
        sent, seconds, capped = self.fill(system, range(due, due + n), time.time() + FAR)
        system.fill(range(due), time.time() + 0.2)
        scheduled_bytes = self.redis.used_memory() - base
        time.sleep(0.3)  # the due ones are due now
        client = self.redis.client
        client.config_resetstat()
        cpu0 = self.redis.cpu_seconds()
        records = Records()
        worker = self.worker(system, records, f"eta-{n}")
        try:
            done = records.wait_for(due, a.cap)
            cpu1 = self.redis.cpu_seconds()
            stats = client.info("commandstats")
            time.sleep(0.5)  # idle again: the memory of a worker holding nothing while n wait in Redis
            mem = benchlib.memory(worker.pid)
        finally:
            worker.stop()
        runs = records.read()
        records.cleanup()
        check = verify({i: t for i, t in runs.items() if i < due}, due)
        early = sum(1 for i in runs if i >= due)
        left = int(client.zcard("bench:eta:default"))
        self.redis.flush()
        script_us = sum(stats.get(f"cmdstat_{c}", {}).get("usec", 0) for c in ("evalsha", "blmove"))
        zset_us = sum(stats.get(f"cmdstat_{c}", {}).get("usec", 0) for c in ("zrangebyscore", "zrem"))  # inside it
        zrange = stats.get("cmdstat_zrangebyscore", {})
        out = {"n": n, "sent": sent, "due": due, "done": done, "rate": benchlib.drain_rate(runs),
               "redis_us_per_task": script_us / due, "zset_us_per_task": zset_us / due,
               "zrange_us_per_call": zrange.get("usec_per_call"), "zrange_calls": zrange.get("calls"),
               "reserve_calls": stats.get("cmdstat_evalsha", {}).get("calls"), "redis_cpu_us_per_task": (cpu1 - cpu0) * 1e6 / due,
               "master_rss_mib": mem.get("master_rss_mib"), "child_uss_mib": mem.get("child_uss_mib"),
               "scheduled_bytes_per_task": scheduled_bytes / (sent + due), "still_scheduled": left,
               "ran_early": early, "exactly_once": check["exactly_once"] and not early, "capped": capped}
        if not done or not check["exactly_once"] or early or left != sent:
            out["error"] = (f"{check['ran']} of {due} due tasks ran ({check['lost']} lost, {check['duplicates']} twice), "
                            f"{early} not due ran, {left} of {sent} still scheduled: {worker.tail(300)}")
        self.log(f"  eta     qdeploy   {n:>9,}: master RSS {out['master_rss_mib'] or 0:5.1f} MiB, "
                 f"{out['redis_us_per_task']:5.1f} µs/task in Redis ({out['zset_us_per_task']:.2f} in the ETA set), "
                 f"{out['rate']:6.0f} due tasks/s"
                 + (f"  ERROR {out['error'][:200]}" if "error" in out else ""))
        return out

    def eta_celery(self, system, n: int) -> dict:
        self.redis.flush()
        sent, seconds, capped = self.fill(system, range(n), time.time() + FAR)
        client = self.redis.client
        worker = self.worker(system, None, f"eta-{n}")
        start, last, steady, waiting = time.monotonic(), None, 0, sent
        poll = 0.5 if self.args.quick else 1.0
        try:
            while time.monotonic() - start < self.args.ingest_cap:  # until it holds them all and stops growing
                time.sleep(poll)
                mem = benchlib.memory(worker.pid)
                rss = mem.get("master_rss_mib")
                waiting = int(client.llen("celery"))
                steady = steady + 1 if waiting == 0 and last is not None and rss is not None and abs(rss - last) < 0.5 else 0
                last = rss
                if steady >= (2 if self.args.quick else 3) or not worker.alive():
                    break
            mem = benchlib.memory(worker.pid)
            waiting = int(client.llen("celery"))  # before it stops: a warm shutdown gives them back
        finally:
            worker.stop()
        self.redis.flush()
        held = sent - waiting
        out = {"n": n, "sent": sent, "held": held, "master_rss_mib": mem.get("master_rss_mib"),
               "child_uss_mib": mem.get("child_uss_mib"), "ingest_s": time.monotonic() - start,
               "capped": capped or waiting > 0}
        if mem.get("error") or not held:
            out["error"] = mem.get("error") or f"the worker took none of {sent}: {worker.tail(300)}"
        self.log(f"  eta     celery    {n:>9,}: master RSS {out['master_rss_mib'] or 0:7.1f} MiB holding {held:,} ETA tasks"
                 f" ({out['ingest_s']:.0f} s)")
        return out

    # -- many nodes --------------------------------------------------------------------------------
    def sims(self, count: int, seconds: float, *extra: str) -> list[subprocess.Popen]:
        env = benchlib.base_env(self.redis.url, None)
        procs = []
        for first in range(0, count, NODES_PER_PROCESS):
            argv = [sys.executable, str(BENCH_DIR / "nodesim.py"), self.redis.url, "--first", str(first),
                    "--nodes", str(min(NODES_PER_PROCESS, count - first)), "--seconds", str(seconds), *extra]
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True))
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                for p in procs:
                    p.kill()
                raise RuntimeError(f"nodesim did not start: {proc.stderr.read()[-400:]}")
        return procs

    def window(self, seconds: float) -> dict:
        """Redis CPU share and commands/s over `seconds`, and how much of it the dead-node sweeps
        are: in an idle fleet, EXISTS and HGETALL run only inside recover_dead.lua (one HGETALL of
        the consumers, one EXISTS per consumer, per sweep), so their calls and time are the sweeps'
        (their time without the Lua interpreter's own overhead around them)."""
        client = self.redis.client
        info0, stats0, t0 = client.info(), client.info("commandstats"), time.monotonic()
        time.sleep(seconds)
        info1, stats1, t1 = client.info(), client.info("commandstats"), time.monotonic()
        wall = t1 - t0
        cpu = sum(float(info1[k]) - float(info0[k]) for k in ("used_cpu_sys", "used_cpu_user"))
        commands = int(info1["total_commands_processed"]) - int(info0["total_commands_processed"])

        def delta(cmd: str, field: str) -> float:
            key = f"cmdstat_{cmd}"
            return float(stats1.get(key, {}).get(field, 0)) - float(stats0.get(key, {}).get(field, 0))

        sweep = ("exists", "hgetall")
        return {"cpu_pct": 100 * cpu / wall, "commands_per_s": commands / wall, "clients": info1["connected_clients"],
                "sweep_commands_per_s": sum(delta(c, "calls") for c in sweep) / wall,
                "sweep_pct": sum(delta(c, "usec") for c in sweep) / wall / 1e4,
                "scripts_per_s": delta("evalsha", "calls") / wall,
                "by_command": {k[len("cmdstat_"):]: {"calls_per_s": delta(k[len("cmdstat_"):], "calls") / wall,
                                                     "usec_per_s": delta(k[len("cmdstat_"):], "usec") / wall}
                               for k in stats1}}

    def cli(self, *argv: str) -> tuple[float, str]:
        env = benchlib.base_env(self.redis.url, None)
        env.pop("QDEPLOY_CONFIG", None)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "qdeploy", *argv, "-A", "bench_qdeploy:app", "-b", self.redis.url,
                               "--json"], env=env, capture_output=True, text=True, cwd=BENCH_DIR, timeout=120)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"qdeploy {' '.join(argv)} exited {proc.returncode}: {proc.stderr[-300:]} {proc.stdout[-300:]}")
        return elapsed, proc.stdout

    def nodes(self, count: int) -> list[dict]:
        """One fleet of `count` simulated nodes; --repeats windows and probes in it."""
        from qdeploy.core.broker import Broker

        a = self.args
        self.redis.flush()
        span = a.settle + a.repeats * (a.load_wait + a.window + 30) + 30  # stopped before that; never too early
        procs = self.sims(count, span)
        broker = Broker(self.redis.url, NAMESPACE)
        out = []
        try:
            time.sleep(a.settle)  # a beat period: the beats and sweeps of all nodes are spread over it
            for _ in range(a.repeats):
                self.settle()
                try:
                    run = self.probe_fleet(count, broker)
                except Exception as exc:  # noqa: BLE001 - this repeat failed; the others still count
                    run = {"error": f"{type(exc).__name__}: {exc}", "load": self.loads[-1]}
                    self.log(f"  nodes   {count:4}: {run['error'][:300]}")
                out.append(run)
            last = count == a.sizes["nodes"][-1]
            if a.decompose and (last or not a.quick) and out and "error" not in out[0]:  # --quick: the largest only
                out[0].update(self.decompose(procs, [r["cpu_pct"] for r in out if "cpu_pct" in r]))
        finally:
            sims = self.stop_sims(procs)
            broker.close()
        for run in out:
            run["sim"] = sims
        self.redis.flush()
        return out

    def decompose(self, procs, cpu: list[float]) -> dict:
        """Redis CPU by kind of load: stop the sweeps (nodesim's first SIGUSR1), a window; stop
        the idle consumer loops too (the second), a window. What is left is the masters' beats."""
        import signal
        import statistics

        windows = []
        for wait in (self.args.settle, 0.5):  # a beat period: every node has beaten without its sweep
            for proc in procs:
                proc.send_signal(signal.SIGUSR1)
            time.sleep(wait)
            windows.append(self.window(self.args.window)["cpu_pct"])
        total, no_sweeps, beats = statistics.median(cpu), windows[0], windows[1]
        self.log(f"          Redis CPU by kind: sweeps {total - no_sweeps:.1f} %, idle polling {no_sweeps - beats:.1f} %, "
                 f"beats, leases and control {beats:.1f} % of a core")
        return {"sweeps_cpu_pct": total - no_sweeps, "polling_cpu_pct": no_sweeps - beats, "beats_cpu_pct": beats}

    def probe_fleet(self, count: int, broker) -> dict:
        """One window of Redis CPU, then status / inspect stats / ping, CLI and in-process."""
        from qdeploy.ops import control, fleet

        run = self.window(self.args.window)
        run["status_s"], text = self.cli("status")
        online = len(json.loads(text))
        run["inspect_s"], text = self.cli("inspect", "stats", "-t", "5")
        replies = json.loads(text)
        answered = len(replies.get("replies", replies)) if isinstance(replies, dict) else len(replies)
        t = time.perf_counter()
        rows = fleet.status(broker)
        run["status_call_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        gathered = control.Control(broker).inspect("stats", timeout=5.0)
        run["inspect_call_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        pinged = control.Control(broker).request("ping", timeout=5.0)
        run["ping_call_ms"] = (time.perf_counter() - t) * 1000
        run.update(online=online, answered=answered, status_rows=len(rows), replies=len(gathered.replies),
                   pongs=len(pinged.replies), missing=len(gathered.missing), load=self.loads[-1])
        if online != count or answered != count or len(gathered.replies) != count or len(pinged.replies) != count:
            run["error"] = (f"{online} online, {answered} CLI replies, {len(gathered.replies)} replies, "
                            f"{len(pinged.replies)} pongs of {count} nodes")
        self.log(f"  nodes   {count:4}: Redis CPU {run['cpu_pct']:5.1f} %, {run['commands_per_s']:7,.0f} cmd/s "
                 f"({run['sweep_commands_per_s']:,.0f} in sweeps), "
                 f"status {run['status_s']:.3f} s ({run['status_call_ms']:.1f} ms in-process), inspect stats "
                 f"{run['inspect_s']:.3f} s ({run['inspect_call_ms']:.1f} ms), ping {run['ping_call_ms']:.1f} ms, "
                 f"{len(gathered.replies)}/{count} replied")
        return run

    def stop_sims(self, procs) -> dict:
        total: dict = {}
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                text, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                text, err = proc.communicate()
            try:
                got = json.loads(text.strip().splitlines()[-1])
            except (ValueError, IndexError):
                got = {"errors": 1, "last_error": err[-300:]}
            for key, value in got.items():
                if isinstance(value, (int, float)):
                    total[key] = total.get(key, 0) + value if key != "elapsed" else max(total.get(key, 0), value)
        return total

    def booted(self, worker: Worker) -> None:
        """Wait (bounded) until a real worker's heartbeat is in Redis, then --settle seconds."""
        deadline = time.monotonic() + 30
        while not self.redis.client.keys(f"{NAMESPACE}:hb:*") and time.monotonic() < deadline:
            if not worker.alive():
                raise RuntimeError(f"the calibration worker exited: {worker.tail(300)}")
            time.sleep(0.05)
        time.sleep(self.args.settle)

    def calibrate(self) -> dict:
        """One real idle `qdeploy worker -c 2` against one simulated node, same window each."""
        qd = next(s for s in self.systems if s.key == "qdeploy")
        out = {}
        for kind in ("real", "simulated"):
            self.redis.flush()
            if kind == "real":
                worker = self.worker(qd, None, "calibrate")
                self.booted(worker)
                out[kind] = self.window(self.args.window)
                worker.stop()
            else:
                procs = self.sims(1, self.args.window + 10)
                time.sleep(self.args.settle)
                out[kind] = self.window(self.args.window)
                self.stop_sims(procs)
        self.redis.flush()
        self.log(f"  nodes   calibration, one idle node: real worker {out['real']['commands_per_s']:.0f} cmd/s "
                 f"{out['real']['cpu_pct']:.2f} % Redis CPU; simulated {out['simulated']['commands_per_s']:.0f} cmd/s "
                 f"{out['simulated']['cpu_pct']:.2f} %")
        return out

    # -- render ------------------------------------------------------------------------------------
    def render(self, count: int) -> dict:
        with tempfile.TemporaryDirectory(prefix="qdeploy-bench-render-") as tmp:
            env = dict(os.environ)
            env.pop("QDEPLOY_CONFIG", None)
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "qdeploy", "render", "--nodes", str(count), "--out",
                                   os.path.join(tmp, "out")], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
            elapsed = time.perf_counter() - start
            files = sum(len(f) for _, _, f in os.walk(os.path.join(tmp, "out")))
        if proc.returncode != 0:
            return {"error": proc.stderr[-300:]}
        self.log(f"  render  --nodes {count}: {elapsed:.3f} s, {files} files")
        return {"seconds": elapsed, "files": files}

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> None:
        a, sizes = self.args, self.args.sizes
        families = {}
        for s in self.systems:  # one per family: variants share the producer
            families.setdefault(s.family, s)
        if "memory" in a.curves:
            for system in families.values():
                for n in sizes["memory"]:
                    for _ in range(a.memory_repeats):
                        self.settle()
                        self.guard("memory", system.key, n, lambda s=system, n=n: self.memory(s, n))
        if "eta" in a.curves:
            for system in (s for s in families.values() if s.fills_eta):
                for n in (m for m in sizes["eta"] if system.key == "qdeploy" or m <= a.peer_eta_max):
                    for _ in range(a.repeats if system.key == "qdeploy" else 1):
                        self.settle()
                        job = self.eta_qdeploy if system.key == "qdeploy" else self.eta_celery
                        self.guard("eta", system.key, n, lambda j=job, s=system, n=n: j(s, n))
        if "nodes" in a.curves:
            try:
                self.calibration = self.calibrate()
            except Exception as exc:  # noqa: BLE001 - the curve itself may still work
                self.log(f"  nodes calibration: {type(exc).__name__}: {exc}")
                self.notes.append(f"calibration failed: {type(exc).__name__}: {str(exc)[:300]}")
                self.redis.flush()
            for count in sizes["nodes"]:
                try:
                    runs = self.nodes(count)
                except Exception as exc:  # noqa: BLE001 - record it, go on with the next size
                    self.log(f"  nodes {count}: {type(exc).__name__}: {exc}")
                    runs = [{"error": f"{type(exc).__name__}: {exc}"}]
                for run in runs:
                    self.add("nodes", "qdeploy", count, run)
        if "render" in a.curves:
            for count in sizes["render"]:
                for _ in range(a.repeats):
                    self.settle()
                    self.guard("render", "qdeploy", count, lambda c=count: self.render(c))

    def guard(self, curve: str, key: str, size: int, job) -> None:
        try:
            result = job()
        except Exception as exc:  # noqa: BLE001 - one broken peer must not end the run
            self.log(f"  {curve} {key} {size}: {type(exc).__name__}: {exc}")
            result = {"error": f"{type(exc).__name__}: {exc}"}
            self.redis.flush()
        result.setdefault("load", self.loads[-1] if self.loads else None)
        self.add(curve, key, size, result)


def add_arguments(ap) -> None:
    g = ap.add_argument_group("growth curves (--growth)")
    g.add_argument("--growth", action="store_true", help="measure how cost grows (bench/growth.py) instead")
    g.add_argument("--curves", default=",".join(CURVES), help=f"comma list of {','.join(CURVES)}")
    for curve, flag in (("memory", "--memory-sizes"), ("eta", "--eta-sizes"), ("nodes", "--node-counts"),
                        ("render", "--render-nodes")):
        low, high = LIMITS[curve]
        g.add_argument(flag, default=None, help=f"sizes, e.g. {SIZES[curve]} (default; --quick: {QUICK_SIZES[curve]}; "
                       f"{low} to {high:,})")
    g.add_argument("--eta-due", type=int, default=None, help="due tasks drained beside the scheduled ones (2000)")
    g.add_argument("--window", type=float, default=None, help="seconds of Redis CPU per nodes measurement (10)")
    g.add_argument("--no-decompose", dest="decompose", action="store_false", help="skip the two extra windows per "
                   "fleet size that split Redis CPU into sweeps, idle polling and beats")
    g.add_argument("--settle", type=float, default=None, help="seconds a fleet runs before its first window "
                   f"(default {HEARTBEAT_EVERY + 0.5:g}: a beat period, so every node beat and swept in its phase; --quick: 1)")
    g.add_argument("--memory-repeats", type=int, default=1, help="repeats of each memory fill (deterministic: 1)")
    g.add_argument("--fill-cap", type=float, default=300.0, help="stop a fill after this many seconds (300)")
    g.add_argument("--peer-eta-max", type=int, default=100_000, help="Celery's ETA curve stops at this size (100k: its "
                   "worker takes ETA tasks in at a few hundred per second)")
    g.add_argument("--ingest-cap", type=float, default=180.0, help="wait at most this long for Celery to take its ETA "
                   "tasks (180)")
    g.add_argument("--maxmemory", default="6gb", help="the private redis-server's maxmemory (noeviction)")
    g.add_argument("--max-load", type=float, default=None, help="before each measurement wait for the 1-min load "
                   "average to fall below this (default: the CPU count)...")
    g.add_argument("--load-wait", type=float, default=None, help="...for at most this many seconds (60; --quick: 0)")
    g.add_argument("--no-reference", action="store_true", help="skip the Celery reference line (drain, first task)")
    g.add_argument("--growth-out", default=str(BENCH_DIR / "growth.json"), help="where the JSON goes")
    g.add_argument("--merge", action="store_true", help="keep the curves this run does not measure from --growth-out "
                   "(re-measure one curve); the README says which run measured which")
    g.add_argument("--growth-plot", default=str(BENCH_DIR / "growth.png"), help="where the PNG goes")
    g.add_argument("--growth-readme", default=str(BENCH_DIR / "README.md"), help="the README whose growth block is replaced")


def check_arguments(args) -> None:
    """Fill in the defaults (--quick: small ones) and check the growth options; ValueError says
    which option is wrong and what was expected, in one line."""
    curves = [c.strip() for c in str(args.curves).split(",") if c.strip()]
    unknown = sorted(set(curves) - set(CURVES))
    if unknown or not curves:
        raise ValueError(f"--curves: unknown curve(s) {unknown or curves}; choose from {','.join(CURVES)}")
    args.curves = [c for c in CURVES if c in curves]
    table = QUICK_SIZES if args.quick else SIZES
    args.sizes = {}
    for curve, attr, flag in (("memory", "memory_sizes", "--memory-sizes"), ("eta", "eta_sizes", "--eta-sizes"),
                              ("nodes", "node_counts", "--node-counts"), ("render", "render_nodes", "--render-nodes")):
        text = getattr(args, attr) or table[curve]
        args.sizes[curve] = report.parse_sizes(text, flag, *LIMITS[curve])
    defaults = {"repeats": 1 if args.quick else 3, "eta_due": 300 if args.quick else 2000,
                "window": 2.0 if args.quick else 10.0, "cap": 60.0, "max_load": float(os.cpu_count() or 1),
                "load_wait": 0.0 if args.quick else 60.0, "settle": 1.0 if args.quick else HEARTBEAT_EVERY + 0.5}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    bounds = [("--repeats", args.repeats, 1, 50), ("--memory-repeats", args.memory_repeats, 1, 50),
              ("--eta-due", args.eta_due, 1, 100_000), ("--window", args.window, 0.1, 600),
              ("--settle", args.settle, 0, 600),
              ("--fill-cap", args.fill_cap, 1, 86_400), ("--ingest-cap", args.ingest_cap, 1, 86_400),
              ("--peer-eta-max", args.peer_eta_max, 0, 5_000_000),
              ("--cap", args.cap, 1, 3600), ("--max-load", args.max_load, 0, 1000), ("--load-wait", args.load_wait, 0, 3600)]
    for flag, value, low, high in bounds:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or not low <= value <= high:
            raise ValueError(f"{flag}: expected a number from {low} to {high}, got {value!r}")
    if not re.fullmatch(r"[1-9][0-9]{0,5}(mb|gb)", str(args.maxmemory).lower()):
        raise ValueError(f"--maxmemory: expected a size like 512mb or 6gb, got {args.maxmemory!r}")


def reference(bench_run, redis: RedisServer, systems, args) -> str | None:
    """The run's Celery reference line (as bench/run.py prints it): Celery's drain and first task."""
    import argparse

    celery = next((s for s in systems if s.key == "celery"), None)
    if celery is None:
        return None
    n = 500 if args.quick else 2000
    ns = argparse.Namespace(peer_tasks=n, cap=10.0)
    bench = bench_run.Bench(ns, redis, [celery])
    results = {"drain": {"celery": {"median": (bench.drain(celery, "drain", None, n) or {}).get("rate")}},
               "startup": {"celery": {"median": (bench.startup(celery) or {}).get("first_task_s")}}}
    shutil.rmtree(bench.logs, ignore_errors=True)
    redis.flush()
    return bench_run.machine_context(results)


def load_summary(loads: list[float]) -> dict:
    return {"samples": loads, "min": min(loads), "max": max(loads), "median": sorted(loads)[len(loads) // 2],
            "n": len(loads)}


def main(args, systems, info, redis: RedisServer) -> int:
    """Run the curves (args from bench/run.py) on `redis` (private, stopped here), print the table,
    write growth.json, growth.png and the README block."""
    import run as bench_run

    growth = Growth(args, redis, systems)
    started = time.time()
    ref = None
    try:
        ref = reference(bench_run, redis, systems, args) if not args.no_reference else None
        growth.run()
    except Exception as exc:  # noqa: BLE001 - what was measured so far is still written
        import traceback

        traceback.print_exc()
        growth.notes.append(f"the run stopped early: {type(exc).__name__}: {str(exc)[:300]}")
        growth.failed = True
    finally:
        redis.stop()
        shutil.rmtree(growth.logs, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    info["duration_s"] = round(time.time() - started, 1)
    loads = growth.loads or [os.getloadavg()[0]]
    date = time.strftime("%Y-%m-%d %H:%M:%S %z")
    sizes = {c: args.sizes[c] for c in args.curves}
    curves = {c: growth.curves[c] for c in args.curves}
    calibration = getattr(growth, "calibration", None)
    runs = [{"date": date, "argv": sys.argv[1:], "curves": list(args.curves), "load": load_summary(loads)}]
    ref_date = date if ref else None
    if args.merge and Path(args.growth_out).exists():  # the curves not measured now: from the last run that did
        old = json.loads(Path(args.growth_out).read_text())
        kept = [c for c in CURVES if c not in curves and c in old.get("curves", {})]
        for c in kept:
            curves[c], sizes[c] = old["curves"][c], old["params"]["sizes"][c]
        old_runs = old.get("runs") or [{"date": old["date"], "argv": old["argv"], "curves": list(old["curves"]),
                                        "load": old["load"]}]
        runs = [dict(r, curves=[c for c in r["curves"] if c in kept]) for r in old_runs
                if any(c in kept for c in r["curves"])] + runs
        if not ref and old.get("reference"):  # say which run Celery's line comes from
            ref_date = str(old.get("reference_date") or old_runs[0]["date"])
            ref = old["reference"].replace("this run:", f"the run of {ref_date[:16]}:")
        if "nodes" not in args.curves:
            calibration = calibration or old.get("calibration")
    curves = {c: curves[c] for c in CURVES if c in curves}
    sizes = {c: sizes[c] for c in CURVES if c in sizes}
    loads = [x for r in runs for x in r["load"]["samples"]]
    text = report.table(curves, sizes)
    verdicts = report.verdicts(curves)
    notes = growth.notes
    if calibration:
        r, s = calibration["real"], calibration["simulated"]

        def rate(side: dict, cmd: str) -> float:
            return side.get("by_command", {}).get(cmd, {}).get("calls_per_s", 0.0)

        rest = [sum(rate(side, c) for c in ("exists", "hgetall", "set", "get")) for side in (r, s)]
        notes.append(f"calibration, one idle node for {args.window:g} s: a real `qdeploy worker -c 2` made "
                     f"{r['commands_per_s']:.0f} Redis commands/s ({r['cpu_pct']:.2f} % of a core), one simulated node "
                     f"{s['commands_per_s']:.0f}/s ({s['cpu_pct']:.2f} %); idle-loop BLMOVEs {rate(r, 'blmove'):.1f} vs "
                     f"{rate(s, 'blmove'):.1f}/s, beat commands (SET, GET, HGETALL, EXISTS) {rest[0]:.1f} vs {rest[1]:.1f}/s")
    for count, cell in sorted(curves.get("nodes", {}).get("qdeploy", {}).items(), key=lambda kv: int(kv[0])):
        sim = (cell["runs"][0] or {}).get("sim") if cell["runs"] else None
        if sim and sim.get("elapsed"):
            notes.append(f"{count} simulated nodes: {sim.get('beats', 0) / sim['elapsed']:.1f} beats/s (nominal "
                         f"{int(count) / 2:.1f}), {sim.get('reserves', 0) / sim['elapsed']:,.0f} idle reserves/s from "
                         f"{sim.get('consumers', 0)} consumers, {sim.get('errors', 0)} errors, simulators' CPU "
                         f"{100 * sim.get('cpu_s', 0) / sim['elapsed']:.0f} % of a core")
    print()
    print(text)
    print()
    for line in verdicts + notes:
        print(f"  {line}")
    if ref:
        print(f"  {ref}")
    if not args.no_write:
        doc = {"date": date, "argv": sys.argv[1:], "params": {
                   "sizes": sizes, "repeats": args.repeats, "memory_repeats": args.memory_repeats, "eta_due": args.eta_due,
                   "window": args.window}, "machine": info, "reference": ref, "reference_date": ref_date,
               "calibration": calibration,
               "load": load_summary(loads), "runs": runs,
               "curves": curves, "table": text, "verdicts": verdicts, "notes": notes}
        Path(args.growth_out).write_text(json.dumps(doc, indent=1, default=str) + "\n")
        m = info
        caption = (f"{m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, redis-server {m['redis']}; load average "
                   f"{doc['load']['min']:.2f}-{doc['load']['max']:.2f}; {doc['date']}. " + (ref or ""))
        plot, readme = Path(args.growth_plot), Path(args.growth_readme)
        if importlib.util.find_spec("matplotlib") is None:
            print("growth: matplotlib is not installed (pip install -e '.[bench]'): no plot written", file=sys.stderr)
            doc["plot"] = None
        else:
            report.plot(curves, sizes, plot, caption)
            doc["plot"] = os.path.relpath(plot, readme.parent)
        report.update_readme(readme, report.readme_block(doc))
        print(f"\nwrote {args.growth_out}, {plot if doc['plot'] else 'no plot'} and {readme}", file=sys.stderr)
    bad = any(r.get("exactly_once") is False for cell in curves.get("eta", {}).get("qdeploy", {}).values()
              for r in cell["runs"])
    return 1 if bad or growth.failed else 0
