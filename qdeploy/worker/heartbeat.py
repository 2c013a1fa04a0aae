"""The heartbeat that vouches for consumers, and the sweep that recovers dead ones.

One `Heartbeat` per owner (a solo consumer, or a node's master) refreshes `ns:hb:<owner>` every
`ttl / 3` seconds from a daemon thread, so a long task on a live node is never stolen. Every
`ttl / 2` seconds (jittered) it also runs `broker.recover_dead()`, which requeues the in-flight
messages of consumers whose owner's heartbeat has expired: the visibility timeout *is* the TTL.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time

import redis

from qdeploy.core.broker import Broker

log = logging.getLogger("qdeploy.worker")


class Heartbeat:
    def __init__(self, broker: Broker, owner: str, ttl: float, *, sweep: bool = True):
        self.broker, self.owner, self.ttl, self.sweep = broker, owner, float(ttl), sweep
        self.info = {"host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        self.broker.heartbeat(self.owner, self.ttl, self.info)

    def start(self) -> None:
        """Beat once now (raising if Redis is down), then keep beating in a daemon thread."""
        self.beat()
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat:{self.owner}",
                                        daemon=True)
        self._thread.start()

    def recover(self) -> dict[str, int]:
        if not self.sweep:
            return {}
        recovered = self.broker.recover_dead()
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
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.debug("heartbeat failed: %s", exc)
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
            except (redis.ConnectionError, redis.TimeoutError):
                pass
