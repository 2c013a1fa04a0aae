"""A node name belongs to one live master: a lease in Redis (`ns:node:<node@host>`).

Two workers started on one host without `-n` both call themselves `worker@HOST`; before the
lease, the second requeued the first's running task as "left by a previous run of this node",
and it ran twice. Now the second refuses to start (exit 73, naming the holder's pid and host).

The lease is taken at start, renewed with every heartbeat and released on a clean exit; it
expires after the visibility timeout. A holder that is gone can be taken over at once when it
was on this host (its pid is dead, or belongs to a process started at another time): that is a
restart after a crash or SIGKILL. A holder on another host is only known gone when its lease
expires. A HUP re-exec keeps its pid and start time, so it keeps its own lease.

A Redis that refuses writes for now (at `maxmemory` with `noeviction`, a read-only replica
during a failover) is waited out at start, with back-off and one log line: the node comes up
by itself when it takes writes again, as a running node does (docs/security.md).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from qdeploy.core.connection import RedisError, refused_for_now
from qdeploy.defaults import EX_CANTCREAT, EX_UNAVAILABLE
from qdeploy.service.daemon import DaemonError

log = logging.getLogger("qdeploy.worker")


def _started(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (/proc/PID/stat, field 22), or None
    when there is no such process. Only /proc/PID is read: units run with ProcSubset=pid, which
    hides /proc/stat (psutil's create_time needs it for the boot time)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


class NodeLease:
    def __init__(self, broker, owner: str, ttl: float):
        self.broker, self.owner, self.ttl_ms = broker, owner, max(1000, int(ttl * 1000))
        self.key = broker.keys.node(owner)
        self.pid, self.host = os.getpid(), socket.gethostname()
        self.token = f"{self.host}:{self.pid}:{_started(self.pid)}"
        self.value = json.dumps({"token": self.token, "pid": self.pid, "host": self.host,
                                 "started": _started(self.pid)})
        self._script = broker.script("node_lease")

    def _call(self, op: str, old: str = ""):
        return self._script(keys=[self.key], args=[self.token, self.value, self.ttl_ms, op, old])

    def take(self) -> None:
        """Take the node name, or raise DaemonError (exit 73) naming who holds it."""
        reply = self._take_when_writable()
        if reply == 1:
            return
        holder = _parse(reply)
        if self._gone(holder) and self._call("steal", reply.decode() if isinstance(reply, bytes) else reply) == 1:
            log.warning("node %s: took over the name from pid %s, which is gone", self.owner, holder.get("pid"))
            return
        raise DaemonError(
            f"node {self.owner} is already running (pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')}): stop it first, or give this worker another name with -n NAME@%h",
            EX_CANTCREAT)

    def _take_when_writable(self, first_wait: float = 0.5, longest_wait: float = 30.0):
        wait = first_wait
        while True:
            try:
                return self._call("take")
            except RedisError as exc:
                if not refused_for_now(exc):
                    raise DaemonError(f"cannot take the node name {self.owner}: {exc}", EX_UNAVAILABLE) from None
                if wait == first_wait:
                    log.warning("the broker refuses writes for now (%s): node %s waits for it, retrying "
                                "with back-off", str(exc).split(".")[0], self.owner)
            time.sleep(wait)
            wait = min(longest_wait, wait * 2)

    def renew(self) -> bool:
        """Extend the lease; False when another master holds the name now."""
        reply = self._call("renew")
        if reply == 1:
            return True
        holder = _parse(reply)
        log.critical("node %s: the name was taken over by pid %s on host %s while this master "
                     "(pid %d) was not renewing it", self.owner, holder.get("pid"), holder.get("host"), self.pid)
        return False

    def release_quietly(self) -> None:
        """Give the name up (a clean exit); if Redis is away, the lease expires by itself."""
        try:
            self._call("release")
        except RedisError as exc:
            log.warning("could not release the node name %s (%s): it expires by itself", self.owner, exc)

    def _gone(self, holder: dict) -> bool:
        """A holder on this host whose process is not running any more."""
        if holder.get("host") != self.host or not isinstance(holder.get("pid"), int):
            return False
        started = _started(holder["pid"])
        return started is None or holder.get("started") != started


def _parse(reply) -> dict:
    try:
        value = json.loads(reply)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
