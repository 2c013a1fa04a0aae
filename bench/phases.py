#!/usr/bin/env python3
"""Where a worker's CPU and page faults go, phase by phase, in the master and in each child.

    python bench/phases.py [--max-tasks-per-child 1] [--tasks 1000] [--top 30]

Runs `qdeploy worker -c 2` on a private redis-server over `--tasks` queued no-op tasks, with
probes around the functions a task and a recycled child go through (the consumer loop, the
reserve round trip, decoding, the tracer, the hooks that write S/D lines, the child's boot and
exit; in the master the loop's steps, fork, reading events, reaping). Nothing in qdeploy is
changed: the probes wrap the functions from outside, in this process, before the worker starts.

Each probe adds up, per function, calls, CPU (CLOCK_PROCESS_CPUTIME_ID) and minor page faults
(getrusage), inclusive and exclusive of the other probed functions it called. A child also
records what happened before its first probe (the interpreter resuming after fork(): at-fork
hooks) and, from the master's side, what its exit cost the kernel (its CPU as the parent reaps it
minus what it had used when it called os._exit). The probes cost ~1-2 µs and a few faults each,
so small phases read high; what they show is where the bulk is.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DIR_ENV = "BENCH_PHASES_DIR"

CHILD = [  # (module, attribute path): wrapped where the callers look them up
    ("qdeploy.worker.master", "child_main"),
    ("qdeploy.worker.process", "set_pdeathsig"),
    ("qdeploy.worker.process", "set_title"),
    ("qdeploy.worker.process", "restore_stdio"),
    ("qdeploy.worker.process", "process_init"),
    ("qdeploy.worker.process", "process_shutdown"),
    ("qdeploy.worker.process", "_consume"),
    ("qdeploy.worker.process", "ChildLink.send"),
    ("qdeploy.worker.process", "ChildLink.should_stop"),
    ("qdeploy.worker.process", "ChildLink.__init__"),
    ("qdeploy.service.logs", "child_started"),
    ("qdeploy.service.logs", "redirect_stdio"),
    ("qdeploy.worker.child", "Consumer.__init__"),
    ("qdeploy.worker.child", "Consumer.run"),
    ("qdeploy.worker.child", "Consumer._step"),
    ("qdeploy.worker.child", "Consumer._wait"),
    ("qdeploy.worker.child", "Consumer.handle"),
    ("qdeploy.worker.child", "Consumer.execute"),
    ("qdeploy.worker.child", "Consumer._conclude"),
    ("qdeploy.core.broker", "Broker.reserve"),
    ("qdeploy.core.broker", "Broker.wait"),
    ("qdeploy.core.message", "decode"),
    ("qdeploy.core.trace", "run"),
    ("qdeploy.core.trace", "request_for"),
    ("qdeploy.core.trace", "finish"),
    ("qdeploy.ops.tracing", "flush"),
    ("logging", "shutdown"),
]
MASTER = [
    ("qdeploy.worker.master", "Master.spawn_child"),
    ("qdeploy.worker.master", "Master.read_events"),
    ("qdeploy.worker.master", "Master.reap_children"),
    ("qdeploy.worker.master", "Master.child_exited"),
    ("qdeploy.worker.master", "Master.murder_children"),
    ("qdeploy.worker.master", "Master.manage_pool"),
    ("qdeploy.worker.master", "Master.beat"),
    ("qdeploy.worker.master", "Master.selector_wait"),
    ("qdeploy.worker.master", "Master.handle_signals"),
    ("qdeploy.worker.master", "Master.task_started"),
    ("qdeploy.worker.master", "Master.task_finished"),
    ("qdeploy.worker.master", "Master.promote"),
    ("qdeploy.worker.master", "Master._until_next_deadline"),
    ("qdeploy.worker.state", "Child.on_event"),
    ("qdeploy.ops.history_writer", "HistoryWriter.flush"),
    ("qdeploy.ops.history_writer", "HistoryWriter.started"),
    ("qdeploy.ops.history_writer", "HistoryWriter.finished"),
    ("selectors", "EpollSelector.select"),
]


# -- the probes (in the worker's processes) ------------------------------------------------------
class Probe:
    def __init__(self):
        self.reset()

    def reset(self):
        self.totals: dict = collections.defaultdict(lambda: [0, 0.0, 0, 0.0, 0])  # calls, cpu, flt, self cpu, self flt
        self.stack: list = []

    @staticmethod
    def now():
        return time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def wrap(self, name, fn):
        probe = self

        def wrapper(*args, **kwargs):
            cpu0, flt0 = probe.now()
            frame = [0.0, 0]  # what probed callees used
            probe.stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                cpu1, flt1 = probe.now()
                if probe.stack and probe.stack[-1] is frame:
                    probe.stack.pop()
                t = probe.totals[name]
                t[0] += 1
                t[1] += cpu1 - cpu0
                t[2] += flt1 - flt0
                t[3] += cpu1 - cpu0 - frame[0]
                t[4] += flt1 - flt0 - frame[1]
                if probe.stack:
                    probe.stack[-1][0] += cpu1 - cpu0
                    probe.stack[-1][1] += flt1 - flt0

        wrapper.__wrapped__ = fn
        return wrapper


PROBE = Probe()


def install() -> None:
    import importlib

    for module, path in CHILD + MASTER:
        mod = importlib.import_module(module)
        owner, _, attr = path.rpartition(".")
        target = getattr(mod, owner) if owner else mod
        setattr(target, attr, PROBE.wrap(f"{module.rsplit('.', 1)[-1]}.{path}", getattr(target, attr)))
    out = Path(os.environ[DIR_ENV])
    master_pid = os.getpid()
    real_fork, real_exit = os.fork, os._exit

    def fork():
        pid = real_fork()
        if pid == 0:
            cpu, flt = Probe.now()
            PROBE.reset()  # the master's frames are not the child's
            PROBE.totals["(fork -> first probe: at-fork hooks, interpreter)"] = [1, cpu, flt, cpu, flt]
        return pid

    def _exit(code):
        if os.getpid() != master_pid:
            cpu, flt = Probe.now()
            (out / f"child-{os.getpid()}.json").write_text(json.dumps({"cpu": cpu, "flt": flt, "totals": PROBE.totals}))
        real_exit(code)

    os.fork, os._exit = fork, _exit
    import atexit

    atexit.register(lambda: os.getpid() == master_pid and (out / "master.json").write_text(
        json.dumps({"cpu": Probe.now()[0], "flt": Probe.now()[1], "totals": PROBE.totals,
                    "children": usage_children()})))


def usage_children() -> dict:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"ru_utime": r.ru_utime, "ru_stime": r.ru_stime, "ru_minflt": r.ru_minflt}


def serve(argv: list[str]) -> int:
    install()
    from qdeploy.cli import main

    main(args=argv, prog_name="qdeploy")  # exits (click's standalone mode): atexit writes the master's part
    return 0


# -- the orchestrator -----------------------------------------------------------------------------
def run(args) -> int:
    import benchlib
    from benchlib import Records, RedisServer, Worker

    redis = RedisServer()
    os.environ["BENCH_REDIS_URL"] = redis.url
    from systems import ALL

    qd = ALL[0]
    out = Path(tempfile.mkdtemp(prefix="qdeploy-phases-"))
    records = Records()
    try:
        qd.enqueue_batch(range(args.tasks))
        env = dict(benchlib.base_env(redis.url, records), **{DIR_ENV: str(out)})
        argv = qd.worker_argv(redis.url, args.max_tasks_per_child)
        i = argv.index("worker")
        worker = Worker([sys.executable, str(Path(__file__).resolve()), "--serve", *argv[i:]], env, out / "worker.log")
        ok = records.wait_for(args.tasks, 300, poll=0.01)
        time.sleep(0.3)
        worker.stop(30)
        if not ok:
            raise SystemExit(f"only {records.count()} of {args.tasks} ran: {worker.tail()}")
        runs = records.read()
        check = benchlib.verify(runs, args.tasks)
    finally:
        records.cleanup()
        redis.stop()
    report(out, args, check, benchlib.drain_rate(runs))
    return 0


def report(out: Path, args, check: dict, rate: float) -> None:
    master = json.loads((out / "master.json").read_text())
    kids = [json.loads(p.read_text()) for p in out.glob("child-*.json")]
    n = args.tasks
    print(f"\n{len(kids)} children for {n} tasks (max-tasks-per-child={args.max_tasks_per_child}), {rate:,.0f} tasks/s "
          f"with the probes, exactly once: {check['exactly_once']}; load average {os.getloadavg()[0]:.2f}")
    kid_cpu = sum(k["cpu"] for k in kids)
    kid_flt = sum(k["flt"] for k in kids)
    reaped = master["children"]
    kernel_exit = reaped["ru_utime"] + reaped["ru_stime"] - kid_cpu
    print(f"children, per task: CPU {1e3 * kid_cpu / n:.3f} ms and {kid_flt / n:.0f} faults until os._exit; "
          f"after it (exit teardown, as the master reaps them) {1e3 * max(kernel_exit, 0) / n:.3f} ms, "
          f"{max(reaped['ru_minflt'] - kid_flt, 0) / n:.0f} faults")
    print(f"master, per task: CPU {1e3 * master['cpu'] / n:.3f} ms, {master['flt'] / n:.0f} faults (its whole life, "
          "start-up included)")
    for who, totals in (("children", merge(k["totals"] for k in kids)), ("master", master["totals"])):
        print(f"\n{who}: per task (inclusive / exclusive of the other probed functions)\n")
        print("| function | calls per task | CPU µs incl. | CPU µs excl. | faults incl. | faults excl. |")
        print("|---|---|---|---|---|---|")
        for name, (calls, cpu, flt, scpu, sflt) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:args.top]:
            print(f"| `{name}` | {calls / n:.2f} | {1e6 * cpu / n:.1f} | {1e6 * scpu / n:.1f} | {flt / n:.1f} | {sflt / n:.1f} |")


def merge(many) -> dict:
    out: dict = collections.defaultdict(lambda: [0, 0.0, 0, 0.0, 0])
    for totals in many:
        for name, values in totals.items():
            for k, v in enumerate(values):
                out[name][k] += v
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        return serve(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tasks-per-child", type=int, default=None)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args(argv)
    if args.tasks < 1 or (args.max_tasks_per_child is not None and args.max_tasks_per_child < 1):
        ap.error("expected --tasks >= 1 and --max-tasks-per-child >= 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
