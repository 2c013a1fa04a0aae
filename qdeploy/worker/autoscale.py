"""`--autoscale=MAX,MIN`: the master grows the pool while tasks wait and shrinks it when idle.

Once a second the master counts the node's demand: the tasks its children run plus the tasks
ready in its queues (one LLEN per queue, one round trip). In children (each runs `threads`
tasks at once) that is the size the pool wants, kept between MIN and MAX. Hysteresis, as in
Celery's autoscaler: the pool grows at once, but shrinks only once the demand has stayed below
its size for `keepalive` seconds (Celery's AUTOSCALE_KEEPALIVE, 30 s by default; the variable
of the same name changes it), and never sooner than `keepalive` after it last grew, so a queue
that empties between two bursts does not fork and retire children over and over. Shrinking
stops the children above the new size as a warm shutdown does: they finish their tasks first.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

KEEPALIVE = 30.0
CHECK_EVERY = 1.0


def keepalive_from_env() -> float:
    raw = os.environ.get("AUTOSCALE_KEEPALIVE", "")
    try:
        value = float(raw) if raw else KEEPALIVE
    except ValueError:
        return KEEPALIVE
    return value if math.isfinite(value) and value >= 0 else KEEPALIVE


@dataclass
class Autoscaler:
    high: int  # MAX children
    low: int  # MIN children
    keepalive: float = KEEPALIVE
    below_since: float | None = None  # when the demand fell below the pool's size
    last_grown: float = -math.inf

    def wanted(self, backlog: int, running: int, threads: int) -> int:
        """Children for this demand, between MIN and MAX."""
        demand = backlog + running
        return max(self.low, min(self.high, math.ceil(demand / max(threads, 1))))

    def decide(self, now: float, size: int, backlog: int, running: int, threads: int = 1) -> int:
        """The pool's new size (`size` if unchanged)."""
        want = self.wanted(backlog, running, threads)
        if size < self.low or want > size:
            self.below_since = None
            self.last_grown = now
            return max(want, self.low)
        if size > self.high:
            return self.high
        if want == size:
            self.below_since = None
            return size
        if self.below_since is None:
            self.below_since = now
            return size
        if now - self.below_since >= self.keepalive and now - self.last_grown >= self.keepalive:
            self.below_since = None
            return want
        return size


def backlog(broker, queues: list[str]) -> int:
    """Tasks ready in `queues` (not those waiting for their ETA), in one round trip."""
    return sum(int(n or 0) for n in broker.fast.pipeline([("LLEN", broker.keys.queue(queue)) for queue in queues]))
