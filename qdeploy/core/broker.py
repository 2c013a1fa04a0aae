"""The Redis protocol: the verbs producers and consumers use, over the keys of `Keys` and the
Lua scripts in `qdeploy/core/lua/` (see docs/protocol.md for the whole story).

Every state change a consumer makes is one EVALSHA (atomic, one round trip), sent by the hot
path's own connection (`HotPath`). Read-only queries for operators (status, queues, dead
letters) live in `qdeploy.ops.fleet`. A Redis Cluster URL (`redis+cluster://`) gets a
`qdeploy.core.clusterbroker.ClusterBroker` instead (`Broker(url)` picks it): the same verbs over
one hash slot per queue.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from qdeploy.core.connection import BrokerURL, Client, Script, connect, hot_path, is_cluster, text
from qdeploy.core.keys import LUA_KEYS, Keys, lua_helpers

_INCLUDE = "-- include: "
LUA = Path(__file__).with_name("lua")  # read as a path: importlib.resources costs a worker ~2 MiB of imports
SWEEP_EVERY = 1.0  # seconds between two dead-node sweeps of the masters, fleet-wide (recover_dead)


@cache
def lua(name: str) -> str:
    """The source of script `name` (`qdeploy/core/lua/<name>.lua`), with its `-- include: X`
    lines replaced by X's source and, in front, the key helpers (`qdeploy.core.keys.lua_helpers`)
    it calls: only those, since Redis runs the whole chunk, helper definitions included, on
    every EVALSHA (a reserve defined 15 where it calls 6)."""
    body = _expanded(name)
    return lua_helpers(tuple(key for key in LUA_KEYS if f"k_{key}(" in body)) + body


@cache
def _expanded(name: str) -> str:
    lines = []
    for line in (LUA / f"{name}.lua").read_text().splitlines():
        head, _, included = line.partition(_INCLUDE)
        lines.append(_expanded(included.strip()).rstrip("\n") if included and not head.strip() else line)
    return "\n".join(lines) + "\n"


def result_ttl_of(value) -> int:
    """Seconds a result is kept: an integer >= 0, where 0 keeps it forever (Celery's
    `result_expires = 0`/None). A negative or non-integer value is refused."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
        raise ValueError(f"result_ttl must be a whole number of seconds >= 0 (0 = keep forever), not {value!r}")
    return int(value)


def heartbeat_value(info: dict | None) -> str:
    """What a heartbeat key holds: the owner's info and the time it was written."""
    return json.dumps(dict(info or {}, time=time.time()))


def pairs(reply) -> list[tuple]:
    """A hash's fields and values: HGETALL's flat reply (or the dict redis-py makes of it)."""
    if isinstance(reply, dict):
        return list(reply.items())
    return list(zip(reply[::2], reply[1::2], strict=True))


@dataclass(slots=True)
class Reserved:
    """One message handed to a consumer: its id, raw body (None if missing), delivery number."""

    id: str  # as text (undecodable bytes shown as escapes: see `raw_id`)
    body: bytes | None
    deliveries: int
    revoked: bool
    queue: str
    raw_id: bytes  # the id exactly as queued, which acks and dead-letters must name


class Broker:
    """The protocol's verbs over one client. Thread-safe (redis-py pools are; the hot path keeps
    one connection per thread). A forked child uses the Broker it inherited: `prepare_fork`
    hands it its connections."""

    cluster = False
    keys: Keys

    def __new__(cls, url: str, *args, client: Client | None = None, **kwargs):
        """A Redis Cluster URL (or client) gets the cluster protocol, whoever asks for a Broker."""
        if cls is Broker and (is_cluster(client) if client is not None else BrokerURL.parse(url).cluster):
            from qdeploy.core.clusterbroker import ClusterBroker

            return super().__new__(ClusterBroker)
        return super().__new__(cls)

    def __init__(self, url: str, namespace: str = "qdeploy", *, result_ttl: int = 86400,
                 retries: int = 2, dead_letter_max: int = 10000, client: Client | None = None):
        self.url = url
        self.keys = self._keys(namespace)
        self.ns = namespace
        self.result_ttl = result_ttl_of(result_ttl)
        self.dead_letter_max = dead_letter_max
        self.client = client if client is not None else connect(url, retries=retries)
        self.durability = BrokerURL.parse(url).wait  # (replicas, ms) for WAIT after publishes and acks
        self.fast = hot_path(self.client, self.durability)
        reg = self._register
        self._reserve, self._retry, self._dead = reg(lua("reserve")), reg(lua("retry")), reg(lua("dead_letter"))
        self._requeue, self._recover = reg(lua("requeue_consumer")), reg(lua("recover_dead"))
        self._publish_one, self._publish_unique = reg(lua("publish_one")), reg(lua("publish_unique"))
        self._static: dict[tuple, tuple[list, list]] = {}

    @staticmethod
    def _keys(namespace: str) -> Keys:
        return Keys(namespace)

    def _register(self, source: str):
        return Script(self.fast, source)

    def script(self, name: str):
        """A Script for `qdeploy/core/lua/<name>.lua` on the hot path (EVALSHA, EVAL on NOSCRIPT)."""
        return self._register(lua(name))

    def ping(self) -> bool:
        return self.fast.command("PING") in (b"PONG", True)

    # -- producer ----------------------------------------------------------------------------
    def publish(self, items, chunk: int = 5000, prelude: list | tuple = ()) -> None:
        """Store and queue (id, queue, eta, body) tuples: per chunk one MULTI with one HSET, one
        LPUSH per queue and one ZADD per queue with future ETAs, i.e. one round trip, atomic
        (a body is never queued without being stored) and order-preserving. `prelude`: commands
        that go first into the first chunk's MULTI (a chord's counter, before its header tasks)."""
        items = list(items)
        now, keys = time.time(), self.keys
        if len(items) == 1 and not prelude:  # `delay`: one EVALSHA, cheaper than MULTI/HSET/LPUSH/EXEC
            task_id, queue, eta, body = items[0]
            later = eta is not None and eta > now
            target = keys.eta(queue) if later else keys.queue(queue)
            self.fast.evalsha(self._publish_one, 2, keys.msg, target, task_id, body,
                              repr(float(eta)) if later else "", spin=True, durable="raise")
            return
        for start in range(0, max(len(items), 1), chunk):
            bodies: list = []
            ready: dict[str, list] = {}
            scheduled: dict[str, list] = {}
            for task_id, queue, eta, body in items[start:start + chunk]:
                bodies += (task_id, body)
                if eta is not None and eta > now:
                    scheduled.setdefault(queue, []).extend((repr(float(eta)), task_id))
                else:
                    ready.setdefault(queue, []).append(task_id)
            commands = list(prelude) if start == 0 else []
            commands += [("HSET", keys.msg, *bodies)] if bodies else []
            commands += [("LPUSH", keys.queue(queue), *ids) for queue, ids in ready.items()]
            commands += [("ZADD", keys.eta(queue), *pairs) for queue, pairs in scheduled.items()]
            if commands:
                self.fast.transaction(commands, durable="raise")

    def publish_unique(self, task_id: str, queue: str, eta: float | None, body: str, key: str,
                       seconds: float) -> str | None:
        """Publish one message unless the unique `key` is held (by a message still queued or
        running): then nothing is sent and the holder's id is returned."""
        keys = self.keys
        later = eta is not None and eta > time.time()
        first = self.fast.evalsha(self._publish_unique, 3, keys.msg, keys.eta(queue) if later else keys.queue(queue),
                                  keys.unique(key), task_id, body, repr(float(eta)) if later and eta is not None else "",
                                  repr(float(seconds)), durable="raise")
        return first.decode() if first else None

    def revoke(self, task_id: str, result: str | None) -> None:
        expiry = ("EX", self.result_ttl) if self.result_ttl else ()  # 0: keep forever
        self.fast.transaction([("SET", self.keys.revoked(task_id), 1, *expiry),
                               *([("SET", self.keys.result(task_id), result, *expiry)] if result else [])])

    # -- consumer ----------------------------------------------------------------------------
    def reserve(self, cid: str, owner: str, queues: list[str], *, ack_id: str | None = None,
                ack_result: str | None = None, track: bool = True,
                claimed: str | bytes | None = None, leave: bool = False, ops: list | None = None,
                rates: str = "") -> Reserved | None:
        """Ack `ack_id` (if given) then move the next due message into cid's in-flight list.

        Queues are tried in order (priority). Due ETA messages are promoted first. With an
        empty `queues` this is a plain ack. `claimed` is an id `wait()` already moved into the
        in-flight list: it gets the reservation bookkeeping (delivery count, RECEIVED...).
        `leave` (with empty `queues`): then give back anything still held and unregister.
        `ops`: follow-up operations (qdeploy.core.workflow.encode_ops) carried out with the ack.
        `rates`: the fleet-wide rate limits to apply when reserving (see `rate_table`).
        """
        static = self._static.get((cid, owner, tuple(queues), track))
        if static is None:  # the keys and constant arguments, encoded once per consumer
            k = self.keys
            keys = [k.inflight(cid), k.msg, k.dlv] + [k.queue(q) for q in queues] + [k.eta(q) for q in queues]
            static = ([len(keys)] + [key.encode() for key in keys] + [self.ns.encode()],
                      [str(self.result_ttl).encode(), str(len(queues)).encode(), cid.encode(),
                       owner.encode(), b"1" if track else b"0"])
            if len(self._static) > 64:
                self._static.clear()
            self._static[(cid, owner, tuple(queues), track)] = static
        reply = self.fast.evalsha(self._reserve, *static[0], ack_id or b"", ack_result or b"", *static[1],
                                  claimed or b"", b"1" if leave else b"", rates, *(ops or ()),
                                  durable="warn" if ack_id or ops else "")
        if not reply:
            return None
        msg_id, body, count, revoked, index = reply
        return Reserved(msg_id.decode("utf-8", "backslashreplace"), body, int(count), bool(revoked),
                        queues[int(index) - 1], msg_id)

    def wait(self, cid: str, queue: str, timeout: float) -> bytes | None:
        """Block up to `timeout` s until a message is ready in `queue`, moving its id straight
        into cid's in-flight list (atomic, so it is never lost); pass it to `reserve(claimed=)`.
        An idle consumer thus starts a new task within a round trip instead of polling."""
        return self.fast.command("BLMOVE", self.keys.queue(queue), self.keys.inflight(cid), "RIGHT", "LEFT", timeout)

    def open(self) -> None:
        """Connect this thread's hot-path connection now (a spare child, ahead of its first task)."""
        self.fast.open()

    def prepare_fork(self, connections: int) -> None:
        """The next forked child gets `connections` fresh connection objects (see HotPath)."""
        self.fast.prepare_fork(connections)

    def close(self) -> None:
        self.fast.close()

    def ack(self, cid: str, task_id: str, result: str | None = None, ops: list | None = None,
            queue: str | None = None) -> None:
        """Ack `task_id` (`queue`: the queue it was reserved from, when known: Redis Cluster
        needs it to find the message's slot; one server does not)."""
        self.reserve(cid, cid, [], ack_id=task_id, ack_result=result, ops=ops)

    def body(self, task_id: str, queue: str | None = None) -> bytes | None:
        """The stored envelope of `task_id` (None if gone)."""
        return self.fast.command("HGET", self.keys.msg, task_id)

    def carry_out(self, cid: str, ops: list) -> None:
        """Follow-up operations without an ack (a task acked before it ran: acks_late=False)."""
        self.reserve(cid, cid, [], ops=ops)

    def retry(self, cid: str, task_id: str, queue: str, body: str, eta: float | None,
              result: str | None = None) -> None:
        """Ack this delivery and store the next attempt (in the ETA set when eta is given)."""
        k = self.keys
        target = k.eta(queue) if eta else k.queue(queue)
        self._retry(keys=[k.inflight(cid), k.msg, k.dlv, target],
                    args=[self.ns, task_id, body, repr(eta) if eta else "", result or "", self.result_ttl])

    def dead_letter(self, cid: str, task_id: str | bytes, body: bytes | None, reason: str, queue: str,
                    result: str | None = None) -> None:
        """Move `task_id` (the id as queued: bytes for one that is not UTF-8) to the dead letters."""
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        shown = task_id.decode("utf-8", "backslashreplace") if isinstance(task_id, bytes) else task_id
        record = json.dumps({"id": shown, "queue": queue, "reason": reason, "body": text,
                             "consumer": cid, "time": time.time()})
        k = self.keys
        self._dead(keys=[k.inflight(cid), k.msg, k.dlv, k.dead],
                   args=[self.ns, task_id, record, result or "", self.result_ttl, self.dead_letter_max])

    def requeue_consumer(self, cid: str, *, unregister: bool = True) -> int:
        """Put everything `cid` holds back at the head of its queue. For a supervisor that has
        just reaped consumer `cid` (or a consumer restarting under the same identity)."""
        # on the consumer's own connection: a new child opens one connection, not two
        k = self.keys
        return int(self.fast.evalsha(self._requeue, 3, k.inflight(cid), k.msg, k.consumers,
                                     self.ns, cid, "1" if unregister else "0"))

    def unregister(self, cid: str) -> int:
        """Leave cleanly: requeue anything still held, forget the consumer."""
        return self.requeue_consumer(cid, unregister=True)

    def consumers(self) -> dict[str, str]:
        """Every registered consumer id -> the owner whose heartbeat vouches for it."""
        return {text(c): text(o) for c, o in pairs(self.fast.command("HGETALL", self.keys.consumers))}

    # -- liveness ----------------------------------------------------------------------------
    def heartbeat(self, owner: str, ttl: float, info: dict | None = None, queues: list[str] | None = None) -> None:
        """Vouch for every consumer registered under `owner` for the next `ttl` seconds. (`queues`,
        those the owner's consumers use, matter on Redis Cluster only: ClusterBroker.heartbeat.)"""
        self.fast.command("SET", self.keys.heartbeat(owner), heartbeat_value(info), "PX", max(1, int(ttl * 1000)))

    def stop_heartbeat(self, owner: str) -> None:
        self.fast.command("DEL", self.keys.heartbeat(owner))

    def recover_dead(self, every: float = 0.0) -> dict[str, int]:
        """Requeue the in-flight messages of every consumer whose owner's heartbeat expired.
        `every` (seconds): only if nobody swept within that time (the masters' periodic sweeps,
        SWEEP_EVERY: one per period fleet-wide); 0 sweeps now."""
        reply = self._recover(keys=[self.keys.consumers, self.keys.msg, self.keys.sweep],
                              args=[self.ns, max(0, int(every * 1000))])
        return {reply[i].decode(): int(reply[i + 1]) for i in range(0, len(reply), 2)}
