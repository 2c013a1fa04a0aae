"""Prometheus metrics of a worker node (and of beat), aggregated where they happen.

The master sees every task start and end on its children's pipes, so it counts them itself, in
plain Python (`NodeStats`): no multiprocess directory, and the numbers stay right across
recycling and crashes (a child's counts are the master's) and across HUP reloads (the stats go
with the re-exec'd image, `dump`/`load`). `/metrics` renders them with the maintained
`prometheus_client` (the optional extra `metrics`) through a custom collector; nothing in the
hot path imports it.

No label carries a task id or arguments: `task` is a task *name* a child reported (at most
MAX_TASK_NAMES distinct ones, the rest are counted as "other"), `queue` a queue name.
"""

from __future__ import annotations

import bisect
import json
import logging
import platform
import time
from typing import Any

from qdeploy import __version__
from qdeploy.core.connection import RedisError

log = logging.getLogger("qdeploy.worker")

# Prometheus' default buckets, stretched to the minutes tasks may take.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
OUTCOMES = ("succeeded", "failed", "retried")
EXIT_REASONS = ("max_tasks", "max_memory", "hard_memory", "time_limit", "crash", "killed")
QUEUE_STATES = ("ready", "in_flight", "scheduled", "dead")
MAX_TASK_NAMES = 500  # distinct task label values; a child cannot blow up the master's memory
QUEUE_CACHE = 1.0  # seconds the queue depths read from Redis are reused
DEAD_SCAN = 1000  # dead-letter records looked at per read


class Histogram:
    """Bucket counts (not cumulative), sum and count: what a Prometheus histogram needs."""

    __slots__ = ("counts", "total", "count")

    def __init__(self, counts: list[int] | None = None, total: float = 0.0, count: int = 0):
        self.counts = counts if counts is not None else [0] * (len(BUCKETS) + 1)
        self.total, self.count = total, count

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class NodeStats:
    """Everything the master counts. Plain data, so it survives a re-exec as JSON."""

    def __init__(self) -> None:
        self.tasks: dict[tuple[str, str, str], int] = {}  # (task, queue, outcome) -> count
        self.durations: dict[tuple[str, str], Histogram] = {}  # (task, queue)
        self.waits: dict[str, Histogram] = {}  # queue
        self.exits: dict[str, int] = dict.fromkeys(EXIT_REASONS, 0)
        self.reconnects = 0
        self.names: set[str] = set()

    def task_name(self, name: str) -> str:
        if name in self.names:
            return name
        if len(self.names) < MAX_TASK_NAMES:
            self.names.add(name)
            return name
        return "other"

    def started(self, queue: str, wait: float | None) -> None:
        if wait is not None:
            hist = self.waits.get(queue)
            if hist is None:
                hist = self.waits[queue] = Histogram()
            hist.observe(wait)

    def finished(self, name: str, queue: str, outcome: str, runtime: float | None) -> None:
        name = self.task_name(name)
        key = (name, queue, outcome)
        self.tasks[key] = self.tasks.get(key, 0) + 1
        if runtime is not None:
            hist = self.durations.get((name, queue))
            if hist is None:
                hist = self.durations[(name, queue)] = Histogram()
            hist.observe(runtime)

    def child_exit(self, reason: str) -> None:
        if reason in self.exits:
            self.exits[reason] += 1

    # -- across a re-exec (HUP) --------------------------------------------------------------
    def dump(self) -> str:
        return json.dumps({
            "tasks": [[*k, n] for k, n in self.tasks.items()],
            "durations": [[*k, h.counts, h.total, h.count] for k, h in self.durations.items()],
            "waits": [[q, h.counts, h.total, h.count] for q, h in self.waits.items()],
            "exits": self.exits, "reconnects": self.reconnects,
        })

    @classmethod
    def load(cls, raw: str | bytes) -> NodeStats:
        """The stats a previous image of this master dumped; anything unreadable starts from zero
        (it came from our own process, but a bad value must never stop a reload)."""
        stats = cls()
        try:
            data = json.loads(raw)
            for task, queue, outcome, n in data["tasks"]:
                stats.tasks[(str(task), str(queue), str(outcome))] = int(n)
                stats.names.add(str(task))
            for task, queue, counts, total, count in data["durations"]:
                stats.durations[(str(task), str(queue))] = _histogram(counts, total, count)
            for queue, counts, total, count in data["waits"]:
                stats.waits[str(queue)] = _histogram(counts, total, count)
            for reason, n in data["exits"].items():
                if reason in stats.exits:
                    stats.exits[reason] = int(n)
            stats.reconnects = int(data["reconnects"])
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("metrics: the previous image's counters are unreadable (%s); starting from zero", exc)
            return cls()
        return stats


def _histogram(counts, total, count) -> Histogram:
    if not isinstance(counts, list) or len(counts) != len(BUCKETS) + 1:
        raise ValueError("histogram of the wrong shape")
    return Histogram([int(c) for c in counts], float(total), int(count))


# -- the exposition (prometheus_client, imported only when serving) -------------------------------
def require_client() -> None:
    """Import prometheus_client (before the privilege drop: the service user may not read the
    venv's site-packages); ImportError with the fix when it is missing."""
    try:
        import prometheus_client
        import prometheus_client.core
        import prometheus_client.exposition  # noqa: F401
    except ImportError:
        raise ImportError("metrics_port needs prometheus_client: pip install 'qdeploy[metrics]'") from None


class QueueDepths:
    """`qdeploy_queue_messages` for some queues, read from Redis at most once a second."""

    def __init__(self, broker, queues: list[str]):
        self.broker, self.queues = broker, list(queues)
        self.at = 0.0
        self.rows: list[dict] = []

    def read(self) -> list[dict]:
        now = time.monotonic()
        if now - self.at >= QUEUE_CACHE:
            from qdeploy.ops import fleet

            try:
                wanted = set(self.queues)
                self.rows = [r for r in fleet.queue_stats(self.broker, dead_scan=DEAD_SCAN) if r["queue"] in wanted]
            except RedisError as exc:
                log.debug("metrics: cannot read queue depths (%s)", exc)
                self.rows = []
            self.at = now
        return self.rows


class WorkerCollector:
    """A prometheus_client collector over a live master's `NodeStats` and state."""

    def __init__(self, master):
        self.master = master
        self.depths = QueueDepths(master.broker, master.opts.queues)

    def describe(self) -> list:
        return []  # unchecked collector: no duplicate-name check against live data at registration

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m, stats = self.master, self.master.stats
        tasks = CounterMetricFamily("qdeploy_tasks", "Tasks finished by this node, by task name, queue and outcome.",
                                    labels=["task", "queue", "outcome"])
        for (task, queue, outcome), n in sorted(stats.tasks.items()):
            tasks.add_metric([task, queue, outcome], n)
        yield tasks
        duration = HistogramMetricFamily("qdeploy_task_duration_seconds", "Run time of finished tasks.",
                                         labels=["task", "queue"])
        for (task, queue), hist in sorted(stats.durations.items()):
            duration.add_metric([task, queue], hist.cumulative(), sum_value=hist.total)
        yield duration
        wait = HistogramMetricFamily("qdeploy_task_queue_wait_seconds",
                                     "Time from a task becoming due (sent, or its ETA) to its start.", labels=["queue"])
        for queue, hist in sorted(stats.waits.items()):
            wait.add_metric([queue], hist.cumulative(), sum_value=hist.total)
        yield wait
        yield GaugeMetricFamily("qdeploy_tasks_running", "Tasks running in this node's children now.",
                                value=sum(len(c.tasks) for c in m.children.values()))
        yield GaugeMetricFamily("qdeploy_pool_size", "Children this node keeps serving (its -c, after grow/shrink).",
                                value=m.target)
        exits = CounterMetricFamily("qdeploy_child_exits", "Children that exited, by reason.", labels=["reason"])
        for reason in EXIT_REASONS:
            exits.add_metric([reason], stats.exits[reason])
        yield exits
        yield CounterMetricFamily("qdeploy_broker_reconnects", "Times the master lost the broker and got it back.",
                                  value=stats.reconnects)
        depth = GaugeMetricFamily("qdeploy_queue_messages", "Messages of this node's queues in Redis, by state.",
                                  labels=["queue", "state"])
        for row in self.depths.read():
            for state in QUEUE_STATES:
                depth.add_metric([row["queue"], state], row[state])
        yield depth
        yield build_info(m.opts.node)


class BeatCollector:
    """beat's metrics: whether this process leads, and the runs it sent per entry."""

    def __init__(self, beat):
        self.beat = beat

    def describe(self) -> list:
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily("qdeploy_beat_is_leader", "1 while this beat holds the leader lock.",
                                value=1 if self.beat.is_leader else 0)
        runs = CounterMetricFamily("qdeploy_beat_runs", "Runs this beat sent, by schedule entry.", labels=["entry"])
        for entry, n in sorted(self.beat.runs.items()):
            runs.add_metric([entry], n)
        yield runs
        yield build_info("beat")


def build_info(node: str):
    from prometheus_client.core import GaugeMetricFamily

    info = GaugeMetricFamily("qdeploy_build_info", "qdeploy version and Python of this process (always 1).",
                             labels=["version", "python", "node"])
    info.add_metric([__version__, platform.python_version(), node], 1)
    return info


def registry_for(collector: Any):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(registry) -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST


# -- ports: one per node ----------------------------------------------------------------------
