"""A failover under load, and an account of every task: real `qdeploy worker` masters and a
producer thread run against a replicated broker (Redis Cluster or Sentinel); mid-run the primary
serving some queues is SIGKILLed, its replica takes over, and the run checks that producers and
workers follow the new topology without a restart, then accounts for every task sent:

* completed (the ledger, a private redis-server outside the broker, has its run),
* lost: each one must be *named*: published to the killed primary shortly before it died and
  absent from the promoted replica, i.e. lost by asynchronous replication (never with
  `wait_replicas=`),
* duplicated: each one explained (its queue's primary failed over: its ack, or its delivery
  count, went with the old primary; or the producer sent it twice after a lost reply).

Used by tests/integration/test_cluster_failover.py and test_sentinel_failover.py.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis

from qdeploy import App
from qdeploy.core.connection import RedisError
from tests.integration.conftest import RedisServer
from tests.integration.workers import Master

REPLICATION_WINDOW = 2.0  # seconds before the kill within which a publish may be lost by async replication
DEAD_LINE = re.compile(r"^\[(?P<at>[^\]]*?) \S+ (?P<sweeper>\d+)\] consumer (?P<cid>\S+) is dead \(no heartbeat[^)]*\)"
                       r".*?requeued (?P<moved>\d+)")


@dataclass
class Account:
    sent: int = 0
    completed: int = 0
    after_failover: int = 0  # tasks sent after the promotion that completed
    lost: dict[int, str] = field(default_factory=dict)  # task -> why (named)
    duplicated: dict[int, list[str]] = field(default_factory=dict)
    explained: Counter = field(default_factory=Counter)
    producer_errors: Counter = field(default_factory=Counter)
    failover_seconds: float = 0.0
    waits: int = 0  # WAIT commands the surviving primaries ran (wait_replicas=)
    problems: list[str] = field(default_factory=list)
    # "consumer X is dead" verdicts on a consumer of a master that never died (every master lives
    # through the run): a dead-node sweep that took a live node's heartbeat for expired
    false_deaths: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # what explains (or fails to) each unexplained duplicate

    def summary(self) -> str:
        lines = [f"failover run: {self.sent} sent, {self.completed} completed ({self.after_failover} sent after the "
                 f"failover), lost {len(self.lost)}, duplicated {len(self.duplicated)}; primary replaced in "
                 f"{self.failover_seconds:.1f}s; producer errors {dict(self.producer_errors)}"]
        lines += [f"  lost w{n}: {why}" for n, why in sorted(self.lost.items())]
        if self.duplicated:
            lines.append("  duplicates explained: " + ", ".join(f"{k} {v}" for k, v in self.explained.most_common()))
        lines += [f"  FALSE DEATH: {d}" for d in self.false_deaths]
        lines += [f"  {d}" for d in self.details]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


class Topology:
    """What a run needs of the broker: its URL, which primary serves a queue, how to kill it."""

    url: str

    def primary_of(self, queue: str, namespace: str) -> int:
        raise NotImplementedError

    def kill(self, port: int) -> int:
        """SIGKILL the primary on `port`; return the port of the replica that will take over."""
        raise NotImplementedError

    def wait_promoted(self, dead: int, replica: int) -> None:
        raise NotImplementedError

    def restart(self, port: int) -> None:
        """Start the killed primary again: it rejoins as a replica of its successor."""
        raise NotImplementedError

    def holds(self, namespace: str, queue: str, task_id: str) -> bool:
        """Is the message anywhere on the (new) primary: its body, its id queued or in flight."""
        raise NotImplementedError


class FailoverRun:
    def __init__(self, topology: Topology, tmp_path: Path, queues: list[str], *, namespace: str,
                 kill_queue: str, before: float = 4.0, after: float = 5.0, rate: float = 40.0,
                 nodes: int = 2, concurrency: int = 2, restart_killed: bool = False, countdown: float = 0.0,
                 log=print):
        self.topology, self.tmp, self.queues, self.ns = topology, tmp_path, queues, namespace
        self.kill_queue, self.before, self.after, self.rate = kill_queue, before, after, rate
        self.nodes, self.concurrency, self.log, self.restart_killed = nodes, concurrency, log, restart_killed
        self.countdown = countdown  # tasks wait this long in Redis (the ETA set) before they may run
        self.ledger = RedisServer(tmp_path / "ledger").start()
        self.published: dict[int, tuple[float, str]] = {}  # n -> (when the publish returned, queue)
        self.retried: set[int] = set()
        self.account = Account()
        self.producing = threading.Event()
        self.masters: list[Master] = []
        self.killed_queues: set[str] = set()
        self.killed_at = 0.0

    def execute(self) -> Account:
        env = {"QDEPLOY_LEDGER": self.ledger.url, "QDEPLOY_VISIBILITY_TIMEOUT": "5", "QDEPLOY_MAX_DELIVERIES": "10"}
        try:
            for i in range(self.nodes):  # the last -A wins: the ledger's tasks; logs to files (no pipe to fill)
                self.masters.append(Master(self.topology.url, self.ns, self.tmp, "--allow-root", "-c",
                                           str(self.concurrency), "-Q", ",".join(self.queues), "-A",
                                           "tests.integration.ledger_tasks:app", "--logfile",
                                           str(self.tmp / f"worker{i}.log"), env=env).ready())
            pids = [m.pid for m in self.masters]
            app = App("ledger", broker=self.topology.url, namespace=self.ns)
            producer = threading.Thread(target=self.produce, args=(app,), daemon=True)
            self.producing.set()
            producer.start()
            time.sleep(self.before)
            dead = self.topology.primary_of(self.kill_queue, self.ns)
            self.killed_queues = {q for q in self.queues if self.topology.primary_of(q, self.ns) == dead}
            replica = self.topology.kill(dead)
            killed_at = self.killed_at = time.time()  # kill() returns once the primary is dead
            self.topology.wait_promoted(dead, replica)
            promoted_at = time.time()
            self.account.failover_seconds = promoted_at - killed_at
            self.log(f"  killed primary {dead} at +{self.before:g}s, replica {replica} took over in "
                     f"{self.account.failover_seconds:.1f}s")
            if self.restart_killed:  # with wait_replicas=1 the new primary needs a replica again
                self.topology.restart(dead)
                self.log(f"  {dead} restarted: a replica of {replica} again after {time.time() - promoted_at:.1f}s")
            time.sleep(self.after)
            self.producing.clear()
            producer.join(30)
            self.settle()
            self.tally(promoted_at)
            self.sweeps([m.pid for m in self.masters])
            for master in self.masters:
                if master.proc.poll() is not None:
                    self.account.problems.append(f"master {master.pid} exited with {master.proc.returncode}")
            if [m.pid for m in self.masters] != pids:
                self.account.problems.append("a master was restarted")
        finally:
            for master in self.masters:
                if master.proc.poll() is None:
                    master.signal(signal.SIGTERM)
            for master in self.masters:
                try:
                    master.wait(40)
                except Exception:
                    master.proc.kill()
            self.ledger.stop()
        return self.account

    def produce(self, app: App) -> None:
        number = 0
        while self.producing.is_set():
            queue = self.queues[number % len(self.queues)]
            while True:
                try:
                    app.send_task("l.work", [number, 0.02, queue], task_id=f"w{number}", queue=queue, retry=False,
                                  countdown=self.countdown or None)
                    break
                except RedisError as exc:  # down, mid-failover, or not replicated in time
                    self.account.producer_errors[type(exc).__name__] += 1
                    self.retried.add(number)
                    time.sleep(0.1)
            self.published[number] = (time.time(), queue)
            number += 1
            self.account.sent = number
            time.sleep(1.0 / self.rate)

    def settle(self, timeout: float = 60.0, quiet: float = 10.0) -> None:
        """Until every task completed, or nothing completed for `quiet` seconds (twice the
        visibility timeout: a recovery would have run by then; what is missing then is lost)."""
        client = redis.Redis.from_url(self.ledger.url)
        deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
        while time.monotonic() < deadline:
            done = client.hlen("done")
            if done >= len(self.published):
                return
            if done != last:
                last, since = done, time.monotonic()
            elif time.monotonic() - since > quiet:
                return
            time.sleep(0.2)

    def tally(self, promoted_at: float) -> None:
        client = redis.Redis.from_url(self.ledger.url)
        done = {int(k): int(v) for k, v in client.hgetall("done").items()}
        account = self.account
        account.completed = sum(1 for n in self.published if done.get(n))
        account.after_failover = sum(1 for n, (at, _) in self.published.items() if at > promoted_at and done.get(n))
        killed_queues = self.killed_queues
        for n, (at, queue) in self.published.items():
            if done.get(n):
                continue
            if queue in killed_queues and self.killed_at - REPLICATION_WINDOW <= at <= self.killed_at + 0.1 \
                    and not self.topology.holds(self.ns, queue, f"w{n}"):
                account.lost[n] = (f"lost by asynchronous replication: published to the old primary of {queue} "
                                   f"{(self.killed_at - at) * 1000:.0f} ms before it was killed, not on the promoted "
                                   f"replica")
            else:
                account.lost[n] = f"UNEXPLAINED (queue {queue}, published at kill{at - self.killed_at:+.2f}s)"
        for n, count in done.items():
            if count > 1:
                runs = [r.decode() for r in client.lrange(f"runs:{n}", 0, -1)]
                account.duplicated[n] = runs
                queue = self.published.get(n, (0, "?"))[1]
                if queue in killed_queues:
                    why = ("its queue's primary failed over: the ack (or the delivery) was applied by the old "
                           "primary and lost with it, or its reply was lost and it was requeued")
                elif n in self.retried:
                    why = "sent twice by a producer retry after a lost reply"
                else:
                    why = "UNEXPLAINED"
                    account.details.append(f"UNEXPLAINED duplicate w{n} (queue {queue}, published at kill"
                                           f"{self.published.get(n, (self.killed_at, ''))[0] - self.killed_at:+.2f}s), "
                                           f"runs (pid:deliveries:queue) {runs}")
                    account.details += [f"    {line}" for line in self.log_lines(rf"\[w{n}\]|\bw{n}\b")]
                account.explained[why] += 1

    def log_lines(self, pattern: str) -> list[str]:
        """The worker log lines matching `pattern`, each prefixed with its log file's name."""
        found, regex = [], re.compile(pattern)
        for i in range(len(self.masters)):
            path = self.tmp / f"worker{i}.log"
            if path.exists():
                found += [f"worker{i}: {line}" for line in path.read_text(errors="replace").splitlines()
                          if regex.search(line)]
        return found

    def sweeps(self, live: list[int]) -> None:
        """Every master lives through the run, so a dead-node sweep that finds one of their
        consumers dead took a live node's heartbeat for expired (and requeued what it was running:
        duplicates on any queue, the killed shard's or not). Each such verdict is listed."""
        for line in self.log_lines(r"is dead \(no heartbeat"):
            match = DEAD_LINE.search(line.partition(": ")[2])
            if match is None:
                continue
            pid = match["cid"].rpartition("/")[2].partition(".")[0]
            if pid.isdigit() and int(pid) in live:
                self.account.false_deaths.append(
                    f"{match['at']} sweeper pid {match['sweeper']} found consumer {match['cid']} of live master "
                    f"{pid} dead (kill{self._at(match['at']):+.2f}s): requeued {match['moved']} task(s)")

    def _at(self, stamp: str) -> float:
        """A log line's time, relative to the kill (the log's local time)."""
        try:
            return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + float("0" + stamp[19:23]) \
                - self.killed_at
        except ValueError:
            return float("nan")
