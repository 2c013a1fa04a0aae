"""The chaos run: a stream of tasks through real `qdeploy worker` masters while faults are
injected, then an account of every task (lost, duplicated, and why).

Loopback only: a private redis-server (`--appendonly yes --appendfsync everysec`, as production
would run it) on a free port, N masters started as subprocesses, each with its own
NOTIFY_SOCKET. Used by the CI test (tests/chaos/test_chaos.py, ~75 s) and the soak
(`python -m tests.soak.run --minutes 10`).

Fault kinds (each verified to have really happened, not just attempted):

    kill_child     SIGKILL a random pool child              -> its master requeues its task at once
    kill_master    SIGKILL a master (children die by PDEATHSIG), start a replacement with the
                   same node name                            -> the replacement requeues at once
    stop_node      SIGSTOP a master and its children for visibility_timeout + 3 s, then SIGCONT
                                                             -> another node recovers its tasks
    restart_redis  SIGTERM redis-server (AOF flushed), start it again on the same port
    hup_storm      3 x SIGHUP to one master                  -> re-exec in place, children adopted
    ttin_ttou      3 x TTIN then 3 x TTOU to one master      -> the pool grows then shrinks back
    leak           a task leaking 120 MiB                    -> the child is recycled after it
    hang           a task stuck past its hard time limit     -> killed, FAILURE TimeLimitExceeded

On Redis Cluster (`ChaosRun(cluster=True)`: 3 primaries + 3 replicas, AOF on, from
tests/integration/cluster.py) `restart_redis` becomes

    failover       SIGKILL a primary (the queue's, every other time); its replica takes over; the
                   killed node is started again and rejoins as a replica -> workers follow

and the tasks record their runs in a *ledger* (a private single redis-server, $QDEPLOY_LEDGER), so
the accounting does not depend on the broker under test. A task lost by a failover is named as
lost by asynchronous replication when it was published to the killed primary in the seconds
before it died and is not on the promoted replica; anything else missing is a loss.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from qdeploy import App

REPO = Path(__file__).resolve().parents[2]
FAULT_KINDS = ("kill_child", "kill_master", "stop_node", "restart_redis", "hup_storm", "ttin_ttou",
               "leak", "hang")
CLUSTER_FAULT_KINDS = tuple("failover" if k == "restart_redis" else k for k in FAULT_KINDS)
REPLICATION_WINDOW = 2.0  # seconds before a failover in which a publish may be lost by async replication


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (redis.ConnectionError, redis.TimeoutError, psutil.Error):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class Redis:
    """A private redis-server with AOF on (everysec), restartable on the same port."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        argv = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.dir)]
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.client().ping(), 15, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes and fsyncs the AOF before exiting
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Notify:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET, drained by a thread as systemd
    would (a master writes STATUS every 2 s: a full socket buffer would block it in sendto)."""

    def __init__(self, directory: Path):
        self.path = str(directory / f"notify-{time.monotonic_ns()}")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.ready = threading.Event()
        self.closed = False
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while not self.closed:
            try:
                if b"READY=1" in self.sock.recv(4096):
                    self.ready.set()
            except TimeoutError:
                pass
            except OSError:
                return

    def wait_ready(self, timeout: float) -> None:
        if not self.ready.wait(timeout):
            raise AssertionError("no READY=1 from the master")

    def close(self) -> None:
        self.closed = True


class Node:
    """One `qdeploy worker` master (prefork) and its log file."""

    def __init__(self, run: ChaosRun, name: str):
        self.run, self.name = run, name
        self.log = run.dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.notify: Notify | None = None

    def start(self) -> None:
        if self.notify is not None:
            self.notify.close()
        self.notify = Notify(self.run.dir)
        env = dict(os.environ, QDEPLOY_NAMESPACE=self.run.ns, QDEPLOY_BROKER=self.run.url,
                   QDEPLOY_VISIBILITY_TIMEOUT=str(self.run.visibility), QDEPLOY_MAX_DELIVERIES="10",
                   NOTIFY_SOCKET=self.notify.path,
                   PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        env.pop("QDEPLOY_CONFIG", None)
        if self.run.cluster:  # the ledger
            env.update(QDEPLOY_LEDGER=self.run.ledger.url)
        argv = [sys.executable, "-m", "qdeploy", "worker", "-A", "tests.chaos.tasks:app", "--allow-root",
                "-n", f"{self.name}@chaos", "-c", str(self.run.concurrency), "-l", "info",
                "--max-memory-per-child", "100M", "--graceful-timeout", "30"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, env=env, cwd=self.run.dir, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.notify.wait_ready(30)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 40) -> int | None:
        if not self.alive:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return None


@dataclass
class Report:
    tasks: int = 0
    completed: int = 0
    lost: list[int] = field(default_factory=list)
    duplicated: dict[int, list[str]] = field(default_factory=dict)  # task -> ["pid:deliveries", ...]
    explained: Counter = field(default_factory=Counter)  # reason -> duplicated tasks
    faults: Counter = field(default_factory=Counter)  # verified injections by kind
    attempted: Counter = field(default_factory=Counter)
    producer_retries: int = 0
    dead_letters: list[dict] = field(default_factory=list)
    replication_lost: dict[int, str] = field(default_factory=dict)  # cluster: lost tasks, each named
    leftovers: dict[str, int] = field(default_factory=dict)  # queue/in-flight keys not empty at the end
    wall: float = 0.0
    kinds: tuple = FAULT_KINDS
    problems: list[str] = field(default_factory=list)  # failed fault verifications, unexpected exits

    def summary(self) -> str:
        lines = [
            f"chaos run: {self.tasks} tasks in {self.wall:.1f}s wall time",
            (f"  completed {self.completed}, lost {len(self.lost)}, duplicated {len(self.duplicated)} "
             f"({sum(len(v) - 1 for v in self.duplicated.values())} extra runs), "
             f"producer retries {self.producer_retries}, dead letters {len(self.dead_letters)}"),
            "  faults injected (verified/attempted): " + ", ".join(
                f"{k} {self.faults[k]}/{self.attempted[k]}" for k in self.kinds),
        ]
        lines += [f"  lost w{n}: {why}" for n, why in sorted(self.replication_lost.items())]
        if self.duplicated:
            lines.append("  duplicates explained: " + ", ".join(f"{k} {v}" for k, v in self.explained.most_common()))
        if self.lost:
            lines.append(f"  LOST: {self.lost[:20]}")
        if self.leftovers:
            lines.append(f"  LEFTOVERS: {self.leftovers}")
        for problem in self.problems:
            lines.append(f"  PROBLEM: {problem}")
        return "\n".join(lines)


class ChaosRun:
    def __init__(self, directory: Path | None = None, *, duration: float = 55.0, nodes: int = 3,
                 concurrency: int = 2, visibility: float = 5.0, rate: float = 12.0, seed: int | None = None,
                 log=print, cluster: bool = False):
        self.dir = Path(directory or tempfile.mkdtemp(prefix="qdeploy-chaos-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.duration, self.concurrency, self.visibility, self.rate = duration, concurrency, visibility, rate
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.log = log
        self.ns = f"chaos{os.getpid()}"
        self.cluster = cluster
        self.kinds = CLUSTER_FAULT_KINDS if cluster else FAULT_KINDS
        if cluster:
            from tests.integration.cluster import Cluster

            self.broker_cluster = Cluster(self.dir / "cluster", appendonly=True, node_timeout_ms=1000)
            self.ledger = Redis(self.dir / "ledger")
            self.url = self.broker_cluster.url
        else:
            self.redis = Redis(self.dir)
            self.url = self.redis.url
        self.nodes = [Node(self, f"n{i}") for i in range(1, nodes + 1)]
        self.report = Report(kinds=self.kinds)
        self.published: dict[int, float] = {}  # cluster: when each task's publish returned
        self.failovers: list[tuple[float, set[int]]] = []  # (when, the ports that were the queue's primary)
        self.sent = 0
        self.producing = threading.Event()
        self.faulted: dict[int, set[str]] = {}  # pid -> the faults that hit it (to explain duplicates)
        self.retried: set[int] = set()  # task numbers the producer had to send again
        self.hang_ids: list[str] = []
        self.leak_ids: list[str] = []
        self._lock = threading.Lock()

    # -- the run ---------------------------------------------------------------------------
    def execute(self) -> Report:
        started = time.monotonic()
        self.log(f"chaos: seed {self.seed}, dir {self.dir}, {len(self.nodes)} nodes x {self.concurrency}, "
                 f"visibility timeout {self.visibility:g}s, {self.duration:g}s of faults")
        try:
            if self.cluster:
                (self.dir / "ledger").mkdir(parents=True, exist_ok=True)
                self.ledger.start()
                self.broker_cluster.start()
            else:
                self.redis.start()
            self.app = App("chaos", broker=self.url, namespace=self.ns)
            for node in self.nodes:
                node.start()
            self.producing.set()
            producer = threading.Thread(target=self.produce, name="producer", daemon=True)
            producer.start()
            self.inject(started + self.duration)
            self.producing.clear()
            producer.join(30)
            self.settle()
            self.account()
        finally:
            for node in self.nodes:
                code = node.stop()
                if code not in (0, None) and node.proc is not None:
                    self.report.problems.append(f"{node.name} exited with {code} on TERM")
            if self.cluster:
                self.broker_cluster.stop()
                self.ledger.stop()
            else:
                self.redis.stop()
        self.report.wall = time.monotonic() - started
        return self.report

    def produce(self) -> None:
        while self.producing.is_set():
            number = self.sent
            task_id = f"w{number}"
            while True:
                try:
                    self.app.send_task("chaos.work", [number, round(self.rng.uniform(0.05, 0.5), 3)],
                                       task_id=task_id, retry=False)
                    break
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
                        redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError):
                    # The send may have been applied before the reply was lost: sending it again
                    # may run it twice (explained as "producer retry").
                    with self._lock:
                        self.report.producer_retries += 1
                        self.retried.add(number)
                    time.sleep(0.2)
            self.published[number] = time.time()
            self.sent += 1
            time.sleep(1.0 / self.rate)

    def inject(self, until: float) -> None:
        """Every fault kind at least once (the first round always completes), in a shuffled
        order with child kills in between; the soak repeats rounds until `until`."""
        plan: list[str] = []
        while not plan or time.monotonic() < until:
            kinds = [k for k in self.kinds if k != "kill_child"]
            self.rng.shuffle(kinds)
            for kind in kinds:
                if time.monotonic() >= until and len(plan) >= len(kinds):
                    return
                plan.append(kind)
                self.fault(kind)
                for _ in range(2):
                    time.sleep(self.rng.uniform(0.5, 1.5))
                    self.fault("kill_child")

    def fault(self, kind: str) -> None:
        self.report.attempted[kind] += 1
        began = time.monotonic()
        try:
            ok = getattr(self, f"fault_{kind}")()
        except (AssertionError, psutil.Error, OSError, redis.RedisError, subprocess.SubprocessError) as exc:
            ok = False
            self.report.problems.append(f"{kind}: {exc}")
        if ok:
            self.report.faults[kind] += 1
        self.log(f"  {time.strftime('%H:%M:%S')} {kind:<14} {'ok' if ok else 'NOT VERIFIED'} "
                 f"({time.monotonic() - began:.1f}s), {self.sent} sent")
        self.revive()

    def revive(self) -> None:
        """A master that died on its own (not one we killed) is a finding: record it, restart it."""
        for node in self.nodes:
            if not node.alive:
                self.report.problems.append(f"{node.name} (pid {node.proc.pid}) died unexpectedly "
                                            f"with {node.proc.returncode}: {node.text()[-300:]!r}")
                node.start()

    def hit(self, pid: int, kind: str) -> None:
        self.faulted.setdefault(pid, set()).add(kind)

    def pick(self) -> Node:
        return self.rng.choice([n for n in self.nodes if n.alive])

    # -- the faults: each returns True only when the effect was observed ---------------------
    def fault_kill_child(self) -> bool:
        node = self.pick()
        children = node.children()
        if not children:
            return False
        victim = self.rng.choice(children)
        self.hit(victim.pid, "kill_child")
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: victim.pid not in {c.pid for c in node.children()}, 10, "the master to reap the child")
        wait_until(lambda: len(node.children()) >= self.concurrency, 10, "a replacement child")
        return True

    def fault_kill_master(self) -> bool:
        node = self.pick()
        old = node.proc.pid
        for child in node.children():
            self.hit(child.pid, "kill_master")
        children = node.children()
        node.signal(signal.SIGKILL)
        node.proc.wait(10)
        psutil.wait_procs(children, timeout=10)  # PDEATHSIG takes them with the master
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), \
            "children outlived their master"
        node.start()
        return node.proc.pid != old

    def fault_stop_node(self) -> bool:
        node = self.pick()
        others = [n for n in self.nodes if n is not node and n.alive]
        before = sum(n.text().count("is dead (no heartbeat)") for n in others)
        procs = [psutil.Process(node.proc.pid), *node.children()]
        for proc in procs:
            self.hit(proc.pid, "stop_node")
            proc.suspend()
        time.sleep(self.visibility + 3)
        recovered = sum(n.text().count("is dead (no heartbeat)") for n in others) > before
        for proc in procs:
            proc.resume()
        assert recovered, f"no other node recovered {node.name}'s consumers after {self.visibility + 3:g}s"
        return True

    def fault_restart_redis(self) -> bool:
        marker = f"{self.ns}:chaos:marker"
        client = self.redis.client()
        client.incr(marker)
        expected = int(client.get(marker))
        old = self.redis.proc.pid
        self.redis.stop()
        time.sleep(1.0)
        self.redis.start()
        reloaded = int(self.redis.client().get(marker) or 0) == expected
        aof = self.redis.client().config_get("appendonly").get("appendonly") == "yes"
        assert reloaded and aof, f"redis came back without its data (reloaded={reloaded}, aof={aof})"
        return self.redis.proc.pid != old

    def fault_failover(self) -> bool:
        """Cluster: SIGKILL a primary (the queue's primary every other time, else another), wait
        until its replica is promoted and the cluster is ok, start the killed node again (it
        rejoins as a replica of its successor, so the next failover has a replica to promote)."""
        c = self.broker_cluster
        queue_primary = c.port_of_key(f"{{{self.ns}:default}}:q")
        others = [p for p in c.primary_ports() if p != queue_primary]
        victim = queue_primary if len(self.failovers) % 2 == 0 or not others else self.rng.choice(others)
        replica = c.replica_of(victim)
        c.kill(victim)
        self.failovers.append((time.time(), {victim} if victim == queue_primary else set()))
        c.wait_failover(victim, replica, timeout=30)
        c.restart_as_replica(victim)
        c.wait_healthy(30)
        return c.role(replica) == "master" and c.role(victim) == "slave"

    def fault_hup_storm(self) -> bool:
        node = self.pick()
        before = node.text().count("reloaded:")
        for _ in range(3):
            node.signal(signal.SIGHUP)
            time.sleep(0.15)
        wait_until(lambda: node.text().count("reloaded:") > before, 20, "the master to re-exec")
        wait_until(lambda: not node.alive or len([c for c in node.children() if c.status() != psutil.STATUS_ZOMBIE])
                   >= self.concurrency, 20, "a full pool after the reload")
        return node.alive

    def fault_ttin_ttou(self) -> bool:
        node = self.pick()
        for sig in (signal.SIGTTIN,) * 3:
            node.signal(sig)
            time.sleep(0.05)
        wait_until(lambda: len(node.children()) >= self.concurrency + 3, 15, "the pool to grow by 3")
        for sig in (signal.SIGTTOU,) * 3:
            node.signal(sig)
            time.sleep(0.05)
        wait_until(lambda: f"pool shrinks to {self.concurrency}" in node.text(), 10, "the pool to shrink")
        wait_until(lambda: len(node.children()) <= self.concurrency, 40, "extra children to finish and leave")
        return node.alive

    def fault_leak(self) -> bool:
        before = sum(n.text().count("max_memory_per_child") for n in self.nodes)
        result = self.app.send_task("chaos.leak", [120], retry=False)
        self.leak_ids.append(result.id)
        wait_until(lambda: sum(n.text().count("max_memory_per_child") for n in self.nodes) > before, 30,
                   "a child recycled for its memory")
        return True

    def fault_hang(self) -> bool:
        result = self.app.send_task("chaos.hang", time_limit=2.0, retry=False)
        self.hang_ids.append(result.id)
        record = wait_until(lambda: self.app.results.get(result.id) if (self.app.results.get(result.id) or {})
                            .get("state") == "FAILURE" else None, 30, "the hung task to be killed")
        assert record.get("exc_type") == "TimeLimitExceeded", record
        return True

    # -- the end -------------------------------------------------------------------------------
    def record_client(self):
        """Where the tasks' runs are recorded: the broker, or on a cluster the ledger."""
        return self.ledger.client() if self.cluster else self.redis.client()

    def broker_client(self):
        return self.broker_cluster.cluster_client() if self.cluster else self.redis.client()

    def settle(self) -> None:
        """Wait until every sent task completed and nothing is queued or in flight (on a cluster:
        or nothing completed for twice the visibility timeout, what is missing then is lost)."""
        client, broker = self.record_client(), self.broker_client()
        limit = 3 * self.visibility + 60
        quiet = {"last": -1, "since": time.monotonic()}

        def done() -> bool:
            completed = client.hlen(f"{self.ns}:chaos:done")
            if self.cluster and completed != quiet["last"]:
                quiet.update(last=completed, since=time.monotonic())
            if self.cluster and time.monotonic() - quiet["since"] > 2 * self.visibility + 5 \
                    and not self._leftovers(broker):
                return True
            return completed >= self.sent and not self._leftovers(broker)

        try:
            wait_until(done, limit, "every task to complete", interval=0.5)
        except AssertionError as exc:
            self.report.problems.append(str(exc))

    def _leftovers(self, client) -> dict[str, int]:
        out = {}
        tag = f"{{{self.ns}:"
        for key in client.scan_iter(f"{tag}*" if self.cluster else f"{self.ns}:*"):
            k = key.decode()
            if k.startswith((f"{self.ns}:q:", f"{self.ns}:inflight:", f"{self.ns}:eta:")) or (
                    k.startswith(tag) and (k.endswith(("}:q", "}:eta")) or "}:inflight:" in k)):
                size = client.llen(key) if client.type(key) == b"list" else client.zcard(key)
                if size:
                    out[k] = size
        return out

    def account(self) -> None:
        client, broker = self.record_client(), self.broker_client()
        r = self.report
        r.tasks = self.sent
        done = {int(k): int(v) for k, v in client.hgetall(f"{self.ns}:chaos:done").items()}
        r.completed = sum(1 for n in range(self.sent) if done.get(n))
        r.lost = [n for n in range(self.sent) if not done.get(n)]
        if self.cluster:  # name what async replication lost; the rest stays lost
            for n in list(r.lost):
                why = self._lost_by_failover(broker, n)
                if why:
                    r.lost.remove(n)
                    r.replication_lost[n] = why
        r.leftovers = self._leftovers(broker)
        dead = f"{{{self.ns}:default}}:dead" if self.cluster else f"{self.ns}:dead"
        r.dead_letters = [json.loads(d) for d in broker.lrange(dead, 0, -1)]
        for n, count in done.items():
            if count > 1:
                runs = [x.decode() for x in client.lrange(f"{self.ns}:chaos:runs:{n}", 0, -1)]
                r.duplicated[n] = runs
                r.explained[self.explain(n, runs)] += 1

    def _lost_by_failover(self, broker, number: int) -> str | None:
        at = self.published.get(number)
        for when, queue_primaries in self.failovers:
            if queue_primaries and at is not None and when - REPLICATION_WINDOW <= at <= when + 0.1 \
                    and not broker.hexists(f"{{{self.ns}:default}}:msg", f"w{number}"):
                return (f"lost by asynchronous replication: published to the queue's primary "
                        f"{(when - at) * 1000:.0f} ms before it was killed, not on the promoted replica")
        return None

    def explain(self, number: int, runs: list[str]) -> str:
        """Why a task ran more than once (at-least-once): the fault that hit one of its runs. A
        stopped node's run completes after its copy was recovered and run elsewhere; a child
        killed between its task's end and its ack has a finished task requeued."""
        hit = set().union(*(self.faulted.get(int(run.split(":")[0]), set()) for run in runs))
        for kind in ("stop_node", "kill_master", "kill_child"):  # the likeliest cause first
            if kind in hit:
                return f"a run on a process hit by {kind}"
        if self.cluster and any(qp for _, qp in self.failovers):
            return "a failover of its queue's primary: its ack or delivery count was lost with the old primary"
        if any(int(run.split(":")[1]) > 1 for run in runs):
            return "redelivered after its ack was lost (Redis restart / recovery)"
        if number in self.retried:
            return "sent twice by a producer retry"
        return "UNEXPLAINED"
