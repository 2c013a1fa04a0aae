"""Control and inspection of live worker nodes over Redis: the server half that runs inside each
worker master, and the client half behind `qdeploy inspect/control`.

Transport (see docs/operations.md for the measurements):

    client   SET  ns:ctl:req:<id> <request JSON> PX <timeout>     the request, expiring with it
             PUBLISH ns:ctl <id>                                   wake every master at once
    master   (its pub/sub socket is in the master's selector: readable -> handled this turn)
             GET ns:ctl:req:<id>; gone -> expired, ignored (a node resumed after SIGSTOP never
             runs a stale `shutdown`); not addressed to it -> ignored
             RPUSH ns:ctl:reply:<id> <reply JSON>; EXPIRE 60
    client   BLPOP ns:ctl:reply:<id> until every expected node answered or the timeout

The master stays single-threaded: no thread, no blocking read. Only the request id travels on
the channel, so nothing a publisher writes there is parsed beyond a hex id; the request itself
is validated field by field, and a command is one of a fixed set.
"""

from __future__ import annotations

import json
import logging
import os
import re
import selectors
import time
import uuid
import weakref
from dataclasses import dataclass, field

from qdeploy.core.app import parse_rate
from qdeploy.core.connection import BROKER_DOWN, RedisError, redis_py_version, socket_of, subscriber
from qdeploy.generator.datatypes import NODE_NAME
from qdeploy.ops import fleet
from qdeploy.service.daemon import rss_kib

log = logging.getLogger("qdeploy.worker")

REQUEST_ID = re.compile(r"[0-9a-f]{32}")
DESTINATION = re.compile(rf"(?:{NODE_NAME.pattern})(@[A-Za-z0-9_.-]{{1,253}})?")  # NODE or NODE@HOST
TASK_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
INSPECT = ("active", "reserved", "scheduled", "stats", "registered", "queues")
CONTROL = ("ping", "shutdown", "pool-grow", "pool-shrink", "rate-limit", "revoke", "enable_events", "disable_events")
COMMANDS = frozenset(INSPECT + CONTROL)
MAX_REQUEST = 64 * 1024
REPLY_TTL = 60
MAX_DESTINATIONS = 100
RECONNECT_MAX = 30.0
_DOWN = BROKER_DOWN + (OSError,)


class ControlError(ValueError):
    """A request a node refuses (bad arguments): sent back as the reply's error."""


def check_destinations(values) -> list[str] | None:
    """`--destination` values (comma lists allowed) -> a list, or ValueError with one line."""
    if not values:
        return None
    out = []
    for value in values:
        for part in str(value).split(","):
            if not DESTINATION.fullmatch(part):
                shown = part if len(part) <= 40 and part.isprintable() else repr(part[:40]) + "..."
                raise ValueError(f"invalid destination {shown!r}: expected NODE or NODE@HOST "
                                 "(letters, digits and _ . - only)")
            out.append(part)
    if len(out) > MAX_DESTINATIONS:
        raise ValueError(f"too many destinations ({len(out)} > {MAX_DESTINATIONS})")
    return out


def addressed(destinations: list[str] | None, owner: str, node: str) -> bool:
    return destinations is None or owner in destinations or node in destinations


def parse_request(raw: bytes | str | None) -> dict:
    """Validate a stored request; ValueError says what is wrong."""
    if raw is None:
        raise ValueError("expired")
    if len(raw) > MAX_REQUEST:
        raise ValueError("request too large")
    req = json.loads(raw)
    if not isinstance(req, dict) or req.get("v") != 1:
        raise ValueError("not a v1 control request")
    if not isinstance(req.get("id"), str) or not REQUEST_ID.fullmatch(req["id"]):
        raise ValueError("bad request id")
    if req.get("cmd") not in COMMANDS:
        raise ValueError(f"unknown command {str(req.get('cmd'))[:40]!r}")
    if not isinstance(req.get("args", {}), dict):
        raise ValueError("args must be an object")
    dest = req.get("dest")
    if dest is not None and (not isinstance(dest, list) or len(dest) > MAX_DESTINATIONS
                             or not all(isinstance(d, str) and DESTINATION.fullmatch(d) for d in dest)):
        raise ValueError("bad destination list")
    return req


# -- the server, inside a worker master --------------------------------------------------------
_servers: weakref.WeakSet = weakref.WeakSet()


def _close_in_child() -> None:
    """A forked child must not keep the master's subscription open (Redis would keep queueing
    messages for a reader that never reads)."""
    for server in list(_servers):
        server.forget()


os.register_at_fork(after_in_child=_close_in_child)


class ControlServer:
    """Subscribes to the control channel; its socket lives in the master's selector with this
    object as the data marker. `handle_readable` when it is readable, `tick` every loop turn
    (reconnects with backoff after Redis went away)."""

    def __init__(self, master):
        self.master = master
        self.keys = master.broker.keys
        self.pubsub = None
        self.fd: int | None = None
        self.retry_at = 0.0
        self.backoff = 0.5
        _servers.add(self)
        self.tick()

    # -- connection ------------------------------------------------------------------------------
    def tick(self) -> None:
        if self.pubsub is None and time.monotonic() >= self.retry_at:
            self._subscribe()

    def _subscribe(self) -> None:
        try:
            # subscribe confirmations are read and skipped below: an ignored one makes get_message
            # return None as if nothing were there, leaving a message behind it in the buffer
            pubsub = subscriber(self.master.broker.client)
            pubsub.subscribe(self.keys.control)
            sock = socket_of(pubsub.connection)  # what the selector watches
            if sock is None:
                pubsub.close()
                self.retry_at = float("inf")  # no retrying: this redis-py will not grow one
                log.error("control channel disabled: redis-py %s does not expose its connection's socket; "
                          "this node will not answer inspect/control", redis_py_version())
                return
            self.fd = sock.fileno()
            self.master.selector.register(self.fd, selectors.EVENT_READ, self)
            self.pubsub, self.backoff = pubsub, 0.5
        except _DOWN + (RedisError,) as exc:
            self.retry_at = time.monotonic() + self.backoff
            log.warning("control channel unavailable (%s): retrying in %.1fs", exc, self.backoff)
            self.backoff = min(self.backoff * 2, RECONNECT_MAX)

    def _drop(self) -> None:
        if self.fd is not None:
            try:
                self.master.selector.unregister(self.fd)
            except (KeyError, ValueError):
                pass
        if self.pubsub is not None:
            try:
                self.pubsub.close()
            except Exception as exc:  # noqa: BLE001 - a dead connection may fail to close cleanly
                log.debug("closing the control connection: %s", exc)
        self.pubsub = self.fd = None
        self.retry_at = time.monotonic() + self.backoff

    def forget(self) -> None:
        """In a forked child: close our copy of the socket without touching the connection."""
        sock = socket_of(getattr(self.pubsub, "connection", None))
        if sock is not None:
            try:
                os.close(sock.detach())
            except OSError:
                pass
        self.fd = None  # the objects stay referenced: collecting them here must not touch the socket

    # -- requests --------------------------------------------------------------------------------
    def handle_readable(self) -> None:
        try:
            while self.pubsub is not None:
                message = self.pubsub.get_message(timeout=0)
                if message is None:
                    break
                if message.get("type") == "message":
                    self.handle(message["data"])
        except _DOWN + (RedisError,) as exc:
            log.warning("control channel lost (%s): reconnecting", exc)
            self._drop()
            return
        self._track_socket()

    def _track_socket(self) -> None:
        """redis-py may reconnect a pub/sub connection by itself, closing the old socket: keep the
        selector in step before the master reuses that fd number for a child's pipe."""
        sock = socket_of(getattr(self.pubsub, "connection", None))
        fd = sock.fileno() if sock is not None else None
        if fd == self.fd:
            return
        if self.fd is not None:
            try:
                self.master.selector.unregister(self.fd)
            except (KeyError, ValueError):
                pass
        self.fd = fd
        if fd is None:
            self._drop()
        else:
            self.master.selector.register(fd, selectors.EVENT_READ, self)

    def handle(self, data: bytes | str) -> None:
        rid = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        if not REQUEST_ID.fullmatch(rid):
            return
        fast = self.master.broker.fast
        try:
            req = parse_request(fast.command("GET", self.keys.control_request(rid)))
        except ValueError as exc:
            if str(exc) != "expired":
                log.warning("ignoring control request %s: %s", rid, exc)
            return
        except _DOWN + (RedisError,) as exc:
            log.warning("cannot read control request %s: %s", rid, exc)
            return
        opts = self.master.opts
        if not addressed(req.get("dest"), opts.owner, opts.node):
            return
        try:
            reply = {"ok": True, "result": self.execute(req["cmd"], req.get("args") or {})}
        except ControlError as exc:
            reply = {"ok": False, "error": str(exc)}
        reply.update(owner=opts.owner, node=opts.node, cmd=req["cmd"])
        try:
            fast.transaction([("RPUSH", self.keys.control_reply(rid), json.dumps(reply, default=str)),
                              ("EXPIRE", self.keys.control_reply(rid), REPLY_TTL)])
        except _DOWN + (RedisError,) as exc:
            log.warning("cannot reply to control request %s: %s", rid, exc)
        if req["cmd"] == "shutdown" and reply["ok"]:
            log.info("shutdown requested over the control channel")
            self.master.handle_term()

    def execute(self, cmd: str, args: dict):
        m = self.master
        if cmd == "ping":
            return {"pong": True, "stopping": m.stopping, "ready": m.ready}
        if cmd in ("active", "reserved"):
            return {"children": m.state()["children"]}
        if cmd in ("scheduled", "queues"):
            return {"queues": list(m.opts.queues)}
        if cmd == "stats":
            return self.stats()
        if cmd == "registered":
            return {"tasks": {name: {"queue": t.queue, "rate_limit": t.rate_limit, "time_limit": t.time_limit,
                                     "soft_time_limit": t.soft_time_limit, "max_retries": t.max_retries}
                              for name, t in sorted(m.app.tasks.items())}}
        if cmd in ("pool-grow", "pool-shrink"):
            n = _count(args.get("n", 1))
            for _ in range(n):
                m.handle_ttin() if cmd == "pool-grow" else m.handle_ttou()
            return {"pool": m.target}
        if cmd == "rate-limit":
            return self.rate_limit(args.get("task"), args.get("rate"))
        if cmd == "revoke":
            return self.revoke(args.get("ids"), bool(args.get("terminate")))
        if cmd in ("enable_events", "disable_events"):
            return m.events.set(cmd == "enable_events", m)
        return {"shutdown": "warm"}  # shutdown: acted on once the reply is out

    def stats(self) -> dict:
        m = self.master
        state = m.state()
        children = state.pop("children")
        state.update(
            uptime=time.time() - m.started, stopping=m.stopping, ready=m.ready, children=len(children),
            busy=sum(c["state"] == "busy" for c in children), rss_kib=rss_kib(os.getpid()),
            children_rss_kib=sum(rss_kib(c["pid"]) for c in children),
            max_tasks_per_child=m.opts.max_tasks_per_child, max_memory_per_child=m.opts.max_memory_per_child,
            time_limit=m.opts.time_limit, soft_time_limit=m.opts.soft_time_limit,
            graceful_timeout=m.opts.graceful_timeout, app=m.opts.app,
            child_exits=dict(m.stats.exits),
        )
        return state

    def rate_limit(self, name, rate) -> dict:
        task = self.master.app.tasks.get(name) if isinstance(name, str) else None
        if task is None:
            raise ControlError(f"unknown task {str(name)[:80]!r}")
        text = None if rate in (None, "", "0", "none") else str(rate)
        try:
            per_second = parse_rate(text)
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        task.rate_limit, task.rate = text, per_second
        recycled = 0
        for child in list(self.master.children.values()):  # new children fork with the new limit
            if (child.serving or child.waiting) and not child.adopted:
                self.master.stop_child(child)
                recycled += 1
        return {"task": name, "rate_limit": text, "children_recycled": recycled}

    def revoke(self, ids, terminate: bool) -> dict:
        if not isinstance(ids, list) or not all(isinstance(i, str) and TASK_ID.fullmatch(i) for i in ids):
            raise ControlError("ids must be a list of task ids")
        running, killed = [], []
        for child in list(self.master.children.values()):
            hit = [i for i in child.tasks if i in ids]
            running += hit
            if hit and terminate:
                self.master.kill_child(child, "revoked")  # its task is requeued, then settled REVOKED
                killed += hit
                self.master.terminated.update(dict.fromkeys(hit))
                while len(self.master.terminated) > 1000:
                    self.master.terminated.pop(next(iter(self.master.terminated)))
            for task_id in hit:
                self.master.events.emit("task-revoked", uuid=task_id, name=child.tasks[task_id].name,
                                        terminated=terminate)
        return {"running": running, "terminated": killed}


def _ids(child, key: str) -> list[str]:
    """The ids under `key` of one child in a node's reply (`Master.state()`'s shape). The reply
    crossed the network: anything but a list of strings counts as none."""
    value = child.get(key) if isinstance(child, dict) else None
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
        raise ControlError("n must be an integer from 1 to 64")
    return value


# -- the client ------------------------------------------------------------------------------
@dataclass
class Gathered:
    """What came back: replies by node owner, nodes that were expected but did not answer, and
    destinations that match no online node."""

    cmd: str
    replies: dict[str, dict] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    elapsed: float = 0.0


class Control:
    def __init__(self, broker):
        self.broker = broker
        self.client = broker.client
        self.keys = broker.keys

    def nodes(self) -> dict[str, dict]:
        """Online worker masters (owner -> heartbeat info); solo workers have no control channel."""
        return {o: i for o, i in fleet.heartbeats(self.broker).items() if "pool" in i}

    def request(self, cmd: str, args: dict | None = None, destination: list[str] | None = None,
                timeout: float = 1.0) -> Gathered:
        if cmd not in COMMANDS:
            raise ValueError(f"unknown command {cmd!r}")
        started = time.monotonic()
        online = self.nodes()
        expected = {o for o, info in online.items() if addressed(destination, o, str(info.get("node", "")))}
        unknown = [d for d in destination or [] if not any(d == o or d == str(i.get("node")) for o, i in online.items())]
        rid = uuid.uuid4().hex
        body = json.dumps({"v": 1, "id": rid, "cmd": cmd, "args": args or {}, "dest": destination})
        if getattr(self.broker, "cluster", False):  # no MULTI across slots (nor PUBLISH in one): in order
            self.client.set(self.keys.control_request(rid), body, px=max(1, int(timeout * 1000)))
            self.client.publish(self.keys.control, rid)
        else:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self.keys.control_request(rid), body, px=max(1, int(timeout * 1000)))
            pipe.publish(self.keys.control, rid)
            pipe.execute()
        gathered = Gathered(cmd, unknown=unknown)
        deadline = started + timeout
        while not expected or not expected <= gathered.replies.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            item = self.client.blpop([self.keys.control_reply(rid)], timeout=min(left, 5.0))
            if item is None:
                continue
            try:
                reply = json.loads(item[1])
                gathered.replies[str(reply["owner"])] = reply
            except (ValueError, KeyError, TypeError):
                continue
        self.client.delete(self.keys.control_request(rid), self.keys.control_reply(rid))
        gathered.missing = sorted(expected - gathered.replies.keys())
        gathered.elapsed = time.monotonic() - started
        return gathered

    # -- inspect: what the nodes say, completed from Redis --------------------------------------
    def inspect(self, what: str, destination=None, timeout: float = 1.0) -> Gathered:
        if what not in INSPECT:
            raise ValueError(f"unknown inspect command {what!r} (one of {', '.join(INSPECT)})")
        gathered = self.request(what, destination=destination, timeout=timeout)
        for reply in gathered.replies.values():
            if reply.get("ok") and what in ("active", "reserved", "scheduled"):
                try:  # the reply crossed the network: a node that sends nonsense is reported as such
                    reply["result"] = getattr(self, f"_{what}")(reply["result"])
                except (KeyError, TypeError, AttributeError, ValueError):
                    reply.update(ok=False, error=f"malformed {what} reply")
        return gathered

    def _active(self, result: dict) -> list[dict]:
        rows = [{"id": t, "child": c["pid"], "slot": c["slot"]} for c in result["children"] for t in _ids(c, "tasks")]
        return self._describe(rows)

    def _reserved(self, result: dict) -> list[dict]:
        rows = []
        for c in result["children"]:
            running = set(_ids(c, "tasks"))
            for task_id in [i for cid in _ids(c, "cids") for i in fleet.inflight(self.broker, cid)]:
                if task_id not in running:
                    rows.append({"id": task_id, "child": c["pid"], "slot": c["slot"]})
        return self._describe(rows)

    def _scheduled(self, result: dict) -> list[dict]:
        rows = [{"id": i, "queue": q, "eta": eta} for q in result["queues"] for i, eta in fleet.eta_entries(self.broker, q)]
        return self._describe(rows)

    def _describe(self, rows: list[dict]) -> list[dict]:
        bodies = fleet.bodies(self.broker, [r["id"] for r in rows])
        for row in rows:
            try:
                env = json.loads(bodies.get(row["id"]) or b"{}")
            except ValueError:
                env = {}
            row.update(task=env.get("task"), args=env.get("args"), kwargs=env.get("kwargs"))
        return rows
