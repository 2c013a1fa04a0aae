#!/usr/bin/env python3
"""Simulated worker nodes for the growth curves (bench/growth.py): many idle nodes from one process.

    python bench/nodesim.py redis://127.0.0.1:PORT/0 --first 0 --nodes 50 [--children 2]
                            [--seconds 60] [--namespace bench] [--no-sweep] [--no-children]

Each simulated node does what an idle `qdeploy worker -c CHILDREN` node asks of Redis, at the
rates the real one does, with qdeploy's own objects wherever the master does the work:

* the master, every `HEARTBEAT_EVERY` (2 s, the beats of the nodes spread evenly over it): the
  real `Broker.heartbeat` (with an info dict shaped like `Master.state()`'s), the real
  `NodeLease.renew` and the real dead-node sweep `Broker.recover_dead`, in that order, as
  `Master.beat` does; the node's real `ControlServer`, subscribed on its own connection, whose
  socket sits in this process's selector exactly as in the master's, answering `ping`, `stats`...
* each child's idle consumer loop: the reserve script then `BLMOVE` with the consumer's
  `poll_interval` (0.1 s) timeout, again and again. These commands are the bytes qdeploy's own
  `Broker.reserve`/`Broker.wait` build for that consumer (captured once per consumer, after one
  real reserve that registers it, as a child's first call does) and are replayed on one
  connection per consumer from a selector: the same commands at the same rate, without a
  thread per child.

SIGUSR1 takes one kind of load away, so that the caller can measure what each costs Redis: the
first stops the dead-node sweeps (the beats go on), the second stops the idle consumer loops too
(each finishes the command in flight), leaving the masters' beats, leases and control servers.

It prints one line `ready` once every node holds its lease, has beaten once and listens, and at the end
(after `--seconds`, or on SIGTERM) one JSON line of what it did (beats, sweeps, reserves, waits,
control requests answered, errors, CPU seconds), so the caller can check the rates were real.
Bad arguments: exit 2, the reason on the last line of stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time
from types import SimpleNamespace

from floor import address  # the same redis://host:port parsing as the floor's

from qdeploy.core.broker import SWEEP_EVERY, Broker
from qdeploy.core.connection import pack
from qdeploy.ops.control import ControlServer
from qdeploy.worker.lease import NodeLease
from qdeploy.worker.master import HEARTBEAT_EVERY

POLL_INTERVAL = 0.1  # qdeploy.worker.child.Consumer's default, which the worker's children use
VISIBILITY_TIMEOUT = 30.0  # App.visibility_timeout's default: the heartbeat's TTL
MAX_NODES = 500


class Recorder:
    """Stands in for `Broker.fast` for one call: keeps the command instead of sending it."""

    def __init__(self):
        self.sent: list[tuple] = []

    def evalsha(self, script, *args, **options):  # spin=, durable=...: how to wait, not what is sent
        self.sent.append(("EVALSHA", script.sha, *args))

    def command(self, *args, **options):
        self.sent.append(args)


def captured(broker: Broker, call) -> bytes:
    """The bytes `call(broker)` sends on the hot path, packed as qdeploy packs them."""
    real, broker.fast = broker.fast, Recorder()
    try:
        call(broker)
        (args,) = broker.fast.sent
    finally:
        broker.fast = real
    return pack(args)


def parse_reply(buf: bytes, at: int = 0):
    """One RESP2 reply from buf[at:] -> (value, end) or None when incomplete. Errors are
    returned as `RuntimeError` values, not raised."""
    end = buf.find(b"\r\n", at)
    if end < 0:
        return None
    kind, rest = buf[at:at + 1], buf[at + 1:end]
    if kind in (b"+", b":"):
        return rest, end + 2
    if kind == b"-":
        return RuntimeError(rest.decode(errors="replace")), end + 2
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None, end + 2
        if len(buf) < end + 2 + n + 2:
            return None
        return buf[end + 2:end + 2 + n], end + 2 + n + 2
    if kind == b"*":
        n = int(rest)
        items, pos = [], end + 2
        for _ in range(max(n, 0)):
            got = parse_reply(buf, pos)
            if got is None:
                return None
            items.append(got[0])
            pos = got[1]
        return (None if n < 0 else items), pos
    raise ValueError(f"not a RESP reply: {buf[at:at + 20]!r}")


class IdleChild:
    """One child's idle consumer: reserve, BLMOVE with a timeout, again (replayed bytes)."""

    def __init__(self, where, reserve: bytes, wait: bytes, stats: dict):
        self.sock = socket.create_connection(where)
        self.sock.setblocking(False)
        self.reserve, self.wait, self.stats = reserve, wait, stats
        self.buf, self.sent = b"", wait  # the command whose reply is awaited

    def send(self) -> None:
        """The consumer loop's next command: after a reserve found nothing, wait; after a wait
        timed out, reserve again (Consumer.run: `self._step(queues) or self._wait(queues[0])`)."""
        self.sent = self.wait if self.sent is self.reserve else self.reserve
        self.sock.sendall(self.sent)  # a few hundred bytes into an empty socket buffer
        self.stats["reserves" if self.sent is self.reserve else "waits"] += 1

    def readable(self, polling: bool = True) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("redis closed a consumer connection")
        self.buf += data
        got = parse_reply(self.buf)
        if got is None:
            return
        value, end = got
        self.buf = self.buf[end:]
        if isinstance(value, RuntimeError):
            self.stats["errors"] += 1
            self.stats["last_error"] = str(value)[:200]
        elif value is not None:
            self.stats["claimed"] += 1  # a task id: the queue is meant to stay empty
        if polling:
            self.send()


class Node:
    """One simulated node: its broker, lease, control server and idle children."""

    def __init__(self, url: str, namespace: str, index: int, children: int, selector):
        self.owner = f"sim{index}@benchhost"
        self.node = f"sim{index}"
        self.broker = Broker(url, namespace)
        self.lease = NodeLease(self.broker, self.owner, VISIBILITY_TIMEOUT)
        self.lease.take()
        self.started, self.stopping, self.ready, self.selector = time.time(), None, True, selector
        self.stats = SimpleNamespace(exits={})
        self.opts = SimpleNamespace(owner=self.owner, node=self.node, queues=["default"], app="bench_qdeploy:app",
                                    max_tasks_per_child=None, max_memory_per_child=None, time_limit=None,
                                    soft_time_limit=None, graceful_timeout=None)
        self.app = SimpleNamespace(tasks={})
        self.cids = [f"{self.owner}/{os.getpid()}.{index}.{k}" for k in range(children)]
        self.control = ControlServer(self)

    def idle_children(self, where, stats: dict) -> list[IdleChild]:
        out = []
        for cid in self.cids:
            self.broker.reserve(cid, self.owner, ["default"])  # registers it, as a child's first call does
            reserve = captured(self.broker, lambda b, c=cid: b.reserve(c, self.owner, ["default"]))
            wait = captured(self.broker, lambda b, c=cid: b.wait(c, "default", POLL_INTERVAL))
            out.append(IdleChild(where, reserve, wait, stats))
        return out

    def state(self) -> dict:
        return {"node": self.node, "owner": self.owner, "pid": os.getpid(), "pool": len(self.cids),
                "tasks_done": 0, "started": self.started, "queues": ["default"], "child_exits": {},
                "health": "ok", "events": False,
                "children": [{"pid": os.getpid(), "slot": k, "state": "idle", "tasks": [], "tasks_done": 0,
                              "cids": [cid]} for k, cid in enumerate(self.cids)]}

    def handle_term(self) -> None:
        self.stopping = "warm"

    def beat(self, sweep: bool, stats: dict) -> None:
        info = {k: v for k, v in self.state().items() if k != "children"}
        info["host"] = "benchhost"
        self.broker.heartbeat(self.owner, VISIBILITY_TIMEOUT, info)
        self.lease.renew()
        stats["beats"] += 1
        if sweep:
            self.broker.recover_dead(SWEEP_EVERY)  # as Master.beat
            stats["sweeps"] += 1


def simulate(args, where) -> dict:
    stats = {"nodes": args.nodes, "consumers": 0, "beats": 0, "sweeps": 0, "reserves": 0, "waits": 0,
             "claimed": 0, "control": 0, "errors": 0}
    selector = selectors.DefaultSelector()
    nodes = [Node(args.url, args.namespace, index, args.children, selector)
             for index in range(args.first, args.first + args.nodes)]
    children = [] if args.no_children else [c for n in nodes for c in n.idle_children(where, stats)]
    stopped: list[bool] = []
    phase: list[int] = []  # each SIGUSR1 drops one kind of load: 1 = no more sweeps, 2 = no more idle polling too
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    signal.signal(signal.SIGUSR1, lambda *_: phase.append(1))
    stats["consumers"] = len(children)
    for child in children:
        selector.register(child.sock, selectors.EVENT_READ, child)
    for node in nodes:  # a first beat each, as a master beats once it is up: `status` lists them all
        node.beat(False, stats)
    print("ready", flush=True)
    start = time.monotonic()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    due = [start + HEARTBEAT_EVERY * k / len(nodes) for k in range(len(nodes))]  # beats spread evenly
    for child in children:
        child.send()
    while not stopped and time.monotonic() - start < args.seconds:
        now = time.monotonic()
        for k, node in enumerate(nodes):
            if due[k] <= now:
                node.beat(not args.no_sweep and not phase, stats)
                due[k] += HEARTBEAT_EVERY
        timeout = max(0.0, min(min(due) - time.monotonic(), 0.05))
        for key, _ in selector.select(timeout):
            if isinstance(key.data, IdleChild):
                key.data.readable(polling=len(phase) < 2)
            elif isinstance(key.data, ControlServer):
                key.data.handle_readable()
                stats["control"] += 1
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    stats["elapsed"] = time.monotonic() - start
    stats["cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--first", type=int, default=0, help="index of the first node (names sim<index>@benchhost)")
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--children", type=int, default=2, help="idle children per node (consumers)")
    ap.add_argument("--seconds", type=float, default=60.0, help="stop after this long (bounded in time)")
    ap.add_argument("--namespace", default="bench")
    ap.add_argument("--no-sweep", action="store_true", help="beat without the dead-node sweep")
    ap.add_argument("--no-children", action="store_true", help="masters only, no idle consumer loops")
    args = ap.parse_args(argv)
    if not 1 <= args.nodes <= MAX_NODES or args.first < 0 or not 0 <= args.children <= 64:
        ap.error(f"expected 1 <= --nodes <= {MAX_NODES}, --first >= 0 and 0 <= --children <= 64")
    if not 0 < args.seconds <= 3600:
        ap.error("expected 0 < --seconds <= 3600")
    try:
        where = address(args.url)
        socket.create_connection(where, timeout=5).close()
    except (ValueError, OSError) as exc:
        print(f"nodesim: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(simulate(args, where)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
