"""The heartbeat that vouches for consumers, and the sweep that recovers dead ones.

One `Heartbeat` per owner (a solo consumer, or a node's master) refreshes `ns:hb:<owner>` every
`ttl / 3` seconds from a daemon thread, so a long task on a live node is never stolen. Every
`ttl / 2` seconds (jittered) it also runs `broker.recover_dead()`, which requeues the in-flight
messages of consumers whose owner's heartbeat has expired: the visibility timeout *is* the TTL.
On Redis Cluster the heartbeat is also copied into the slot of each queue the owner's consumers
use, and an owner is dead only when every copy is gone (ClusterBroker.heartbeat says why).
"""

from __future__ import annotations

import functools
import logging
import mmap  # at import: a service user may not read the interpreter's lib-dynload
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from qdeploy.core.broker import SWEEP_EVERY, Broker
from qdeploy.core.connection import BROKER_DOWN, RedisError

log = logging.getLogger("qdeploy.worker")


class Heartbeat:
    def __init__(self, broker: Broker, owner: str, ttl: float):
        self.broker, self.owner, self.ttl = broker, owner, float(ttl)
        self.lease: Any = None  # a NodeLease renewed with each beat (a solo worker's)...
        self.on_lost: Callable[[], object] | None = None  # ...and what to do when another process took the name
        self.info = {"host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        self.broker.heartbeat(self.owner, self.ttl, self.info)
        if self.lease is not None and not self.lease.renew() and self.on_lost is not None:
            self.on_lost()

    def start(self) -> None:
        """Beat once now (raising if Redis is down), then keep beating in a daemon thread."""
        self.beat()
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat:{self.owner}",
                                        daemon=True)
        self._thread.start()

    def recover(self) -> dict[str, int]:
        recovered = self.broker.recover_dead(SWEEP_EVERY)
        for cid, moved in recovered.items():
            log.warning("consumer %s is dead (no heartbeat for %.1fs): requeued %d message(s)",
                        cid, self.ttl, moved)
        return recovered

    def _run(self) -> None:
        next_sweep = time.monotonic() + self.ttl / 2
        while not self._stop.wait(self.ttl / 3):
            try:
                self.beat()
                if time.monotonic() >= next_sweep:
                    self.recover()
                    next_sweep = time.monotonic() + self.ttl / 2 * random.uniform(0.8, 1.2)
            except RedisError as exc:  # unreachable, or refusing writes: the next beat retries
                log.warning("heartbeat failed (%s: %s)", type(exc).__name__, exc)
            except Exception:  # never let the thread die silently
                log.exception("heartbeat error")

    def stop(self, *, forget: bool = True) -> None:
        """Stop beating; with `forget` delete the key so nobody waits a TTL to learn it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if forget:
            try:
                self.broker.stop_heartbeat(self.owner)
            except BROKER_DOWN:
                pass


class Beacons:
    """Shared memory (an anonymous MAP_SHARED mapping made by the master before it forks) where
    each child's consumer loop writes the monotonic time of its latest turn: the master sees an
    idle child that stopped polling (stuck, or SIGSTOPped) without a syscall or a pipe write
    per turn. Slots are reused round-robin by spawn number; a collision can only make a stuck
    child look alive for a while, never a live one look stuck."""

    SLOTS = 4096

    def __init__(self) -> None:
        self.map = mmap.mmap(-1, 8 * self.SLOTS)

    def slot_for(self, spawned: int) -> int:
        return spawned % self.SLOTS

    def mark(self, slot: int, when: float | None = None) -> None:
        struct.pack_into("d", self.map, 8 * slot, time.monotonic() if when is None else when)

    def marker(self, slot: int) -> Callable[[float], None]:
        """`mark(when)` for one slot, with nothing looked up per call (the consumer loop's turn)."""
        return functools.partial(struct.pack_into, "d", self.map, 8 * slot)

    def last(self, slot: int) -> float:
        return struct.unpack_from("d", self.map, 8 * slot)[0]
