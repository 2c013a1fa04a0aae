"""The protocol on Redis Cluster: `Broker`'s verbs over one hash slot per queue.

`Broker(url)` returns a ClusterBroker for `redis+cluster://` / `rediss+cluster://` URLs (or a
cluster client), so producers, consumers, the master, beat and the ops commands use it without
knowing. docs/protocol.md, "Redis Cluster", is the contract; in short:

* Every key one queue's scripts touch carries the queue's hash tag (`ClusterKeys.of(queue)`:
  `{ns:q}:q`, `:eta`, `:msg`, `:dlv`, `:inflight:<cid>`, `:consumers`, `:dead`, `:revoked`,
  `:rate`, `:uniq`, `:out`...), so queues spread over the shards while each queue's reserve,
  ack, retry, dead-letter and requeue stay one atomic script, declared keys only.
* What crosses slots is done here, in an order that loses nothing:
  - results (`ns:r:<id>`, their own slot) are written *before* the ack (as with a separate
    result backend); RECEIVED is not written (it would cost a round trip per task);
  - follow-ups: those that stay in the acked message's queue (a chain step or callback to the
    same queue, freeing its unique key) run inside the ack script; the others (another queue, a
    chord) are written to the queue's outbox by the same script, then delivered to their slots
    (each message at most once: `cluster_publish_once.lua`) and the entry cleared. A deliverer
    that dies leaves the entry; the recovery sweep of any live worker delivers it after
    `stale_after` seconds;
  - priority across queues (`-Q a,b`) is one script per queue in order; a queue found empty is
    not tried again for PRIORITY_RECHECK (0.1 s) before the next message of a lower one is
    acked and reserved in one script (the idle wait's poll interval, so a higher-priority
    message waits at most that long behind lower ones, as lower ones do on one server);
  - recovery, revoke, fleet views iterate `ns:queues`, the set of every queue ever used.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable

from qdeploy.core.broker import Broker, Reserved, heartbeat_value, lua
from qdeploy.core.connection import BROKER_DOWN, RedisError, ping_cluster, text
from qdeploy.core.keys import ClusterKeys, QueueKeys

log = logging.getLogger("qdeploy.broker")
ONCE_KEEP = 86400  # seconds a delivered outbox message is remembered (a later delivery of it is dropped)
PRIORITY_RECHECK = 0.1  # seconds a queue found empty is not tried again before a lower one's ack+reserve
OUTBOX_BATCH = 100  # outbox entries a sweep takes over at once, per queue


def parse_ops(argv: list | None) -> list[list]:
    """workflow.encode_ops' flat list (count first) as one list per operation."""
    if not argv:
        return []
    out, pos = [], 1
    for _ in range(int(argv[0])):
        kind = argv[pos]
        size = {"m": 5, "u": 3}.get(kind) or (3 + int(argv[pos + 2]) if kind == "c" else
                                             6 + int(argv[pos + 5]) if kind == "p" else 0)
        if not size:
            raise ValueError(f"unknown follow-up op {kind!r}")
        out.append([text(a) if isinstance(a, bytes) else a for a in argv[pos:pos + size]])
        pos += size
    return out


def split_ops(ops: list[list], queue: str | None) -> tuple[list, list[list]]:
    """(inline ARGV, remote ops): what the ack script of `queue` carries out itself (messages for
    the same queue until the first op that must go elsewhere, so order holds: a chord is created
    before its header tasks; unique keys, which are the queue's), and what goes to its outbox."""
    inline: list = []
    remote: list[list] = []
    count = 0
    for op in ops:
        if op[0] == "u" and queue is not None:
            inline += op
        elif op[0] == "m" and op[2] == queue and not remote:
            inline += ["m", op[1], op[3], op[4]]
        else:
            remote.append(op)
            continue
        count += 1
    return ([str(count), *inline] if count else []), remote


class ClusterBroker(Broker):
    cluster = True

    def __init__(self, url: str, namespace: str = "qdeploy", **kwargs):
        Broker.__init__(self, url, namespace, **kwargs)
        self.keys: ClusterKeys
        reg = self.client.register_script
        self._c_reserve, self._c_requeue = reg(lua("cluster_reserve")), reg(lua("cluster_requeue"))
        self._c_once, self._c_unique = reg(lua("cluster_publish_once")), reg(lua("cluster_publish_unique"))
        self._c_outbox, self._c_chord = reg(lua("cluster_outbox")), reg(lua("cluster_chord"))
        self._held: dict[bytes, tuple[str, str]] = {}  # id handed out -> (cid, queue), until settled
        self._recent: dict[str, str] = {}  # cid -> the queue of its last settled message
        self._cid_queues: dict[str, set[str]] = {}  # cid -> queues it reserved from in this process
        self._registered: set[str] = set()  # queues added to keys.queues by this process
        self._cstatic: dict[tuple, tuple[list, list]] = {}
        self._empty: dict[tuple[str, str], float] = {}  # (cid, queue) -> found empty, until (monotonic)
        self._delivered: dict[str, bytes] = {}  # queue -> an outbox entry delivered, cleared by the next call
        self.stale_after = 30.0  # outbox entries older than this are delivered by a sweep
        self._vouched: dict[str, list[str]] = {}  # owner -> the queues its last heartbeat was copied into

    @staticmethod
    def _keys(namespace: str) -> ClusterKeys:
        return ClusterKeys(namespace)

    def _register(self, source: str):
        """redis-py's cluster Script: it routes by the first key and follows MOVED itself."""
        return self.client.register_script(source)

    def ping(self) -> bool:
        """Every primary answers (after asking the cluster for its slot table again)."""
        return ping_cluster(self.client)

    # -- queues ---------------------------------------------------------------------------------
    def register(self, queue: str) -> None:
        """Add `queue` to the set of queues (once per process and queue)."""
        if queue not in self._registered:
            self.client.sadd(self.keys.queues, queue)
            self._registered.add(queue)

    def known_queues(self) -> list[str]:
        return sorted({text(q) for q in self.client.smembers(self.keys.queues)} | self._registered)

    def _queues_of(self, cid: str) -> list[str]:
        mine = self._cid_queues.get(cid)
        return sorted(mine) if mine else self.known_queues()

    # -- producer ---------------------------------------------------------------------------------
    def publish(self, items, chunk: int = 5000, prelude: list | tuple = ()) -> None:
        """As Broker.publish; one MULTI per queue (its bodies and ids: atomic per queue) and per
        chord (the prelude: before any of its header messages)."""
        items = list(items)
        now = time.time()
        for queue in {item[1] for item in items}:
            self.register(queue)
        if len(items) == 1 and not prelude:
            task_id, queue, eta, body = items[0]
            qk, later = self.keys.of(queue), eta is not None and eta > now
            self.fast.evalsha(self._publish_one, 2, qk.msg, qk.eta if later else qk.queue, task_id, body,
                              repr(float(eta)) if later else "", spin=True, durable="raise")
            return
        if prelude:
            self.fast.transaction(list(prelude), durable="raise")
        for start in range(0, len(items), chunk):
            by_queue: dict[str, tuple[list, list, list]] = {}
            for task_id, queue, eta, body in items[start:start + chunk]:
                bodies, ready, scheduled = by_queue.setdefault(queue, ([], [], []))
                bodies += (task_id, body)
                if eta is not None and eta > now:
                    scheduled.extend((repr(float(eta)), task_id))
                else:
                    ready.append(task_id)
            commands: list[tuple] = []
            for queue, (bodies, ready, scheduled) in by_queue.items():
                qk = self.keys.of(queue)
                commands.append(("HSET", qk.msg, *bodies))
                commands += [("LPUSH", qk.queue, *ready)] if ready else []
                commands += [("ZADD", qk.eta, *scheduled)] if scheduled else []
            if commands:
                self.fast.transaction(commands, durable="raise")

    def publish_unique(self, task_id: str, queue: str, eta: float | None, body: str, key: str,
                       seconds: float) -> str | None:
        """As Broker.publish_unique; the key is held in the queue's slot (unique per queue)."""
        self.register(queue)
        qk, later = self.keys.of(queue), eta is not None and eta > time.time()
        first = self.fast.evalsha(self._c_unique, 4, qk.msg, qk.eta if later else qk.queue, qk.unique,
                                  qk.unique_expiry, task_id, body, repr(float(eta)) if later and eta else "",
                                  repr(float(seconds)), key, durable="raise")
        return first.decode() if first else None

    def revoke(self, task_id: str, result: str | None) -> None:
        """The mark goes to every known queue's slot (a consumer checks its own queue's); the
        record to the result's slot."""
        if result:
            self._store(task_id, result, "raise")
        now = time.time()
        until = now + self.result_ttl if self.result_ttl else float("inf")
        pipe = self.client.pipeline(transaction=False)
        for queue in self.known_queues():
            qk = self.keys.of(queue)
            pipe.zremrangebyscore(qk.revoked, "-inf", now)
            pipe.zadd(qk.revoked, {task_id: until})
        pipe.execute()

    # -- consumer ---------------------------------------------------------------------------------
    def reserve(self, cid: str, owner: str, queues: list[str], *, ack_id: str | bytes | None = None,
                ack_result: str | None = None, track: bool = True, claimed: str | bytes | None = None,
                leave: bool = False, ops: list | None = None, rates: str = "") -> Reserved | None:
        """As Broker.reserve (track is ignored: RECEIVED is not written on a cluster)."""
        rest = list(queues)
        parsed = parse_ops(ops)
        if ack_id is not None or parsed:
            raw = (ack_id if isinstance(ack_id, bytes) else ack_id.encode()) if ack_id is not None else None
            home = self._settle(cid, raw) if raw is not None else self._recent.get(cid)
            if raw is not None and ack_result:
                self._store(raw.decode("utf-8", "backslashreplace"), ack_result)
            if home is None and raw is not None:
                home = self._find(cid, raw)
            inline, remote = split_ops(parsed, home)
            if home is None:  # nothing to ack in any queue: deliver what follows, if anything
                if remote:
                    self._deliver(remote)
            else:
                together = not leave and claimed is None and home in rest and self._empty_before(cid, rest, home)
                entry = (raw if raw is not None else uuid.uuid4().hex.encode()) if remote else b""
                reply = self._run(cid, owner, home, ack=raw or b"", reserve=together, entry=entry,
                                  payload=json.dumps(remote) if remote else "", inline=inline, rates=rates)
                if remote and (reply[0] or raw is None):
                    self._deliver(remote)
                    self._delivered[home] = entry  # cleared by the next script on this queue
                if together:
                    rest = rest[rest.index(home) + 1:]
                    if (msg := self._reserved(reply, cid, home)) is not None:
                        return msg
                    self._empty[(cid, home)] = time.monotonic() + PRIORITY_RECHECK
        if leave:
            self.requeue_consumer(cid, unregister=True)
            return None
        if claimed is not None and rest:
            msg = self._reserved(self._run(cid, owner, rest[0], reserve=True, claimed=claimed, rates=rates),
                                 cid, rest[0])
            return msg
        for queue in rest:
            if (msg := self._reserved(self._run(cid, owner, queue, reserve=True, rates=rates), cid, queue)) is not None:
                return msg
            self._empty[(cid, queue)] = time.monotonic() + PRIORITY_RECHECK
        return None

    def _empty_before(self, cid: str, queues: list[str], home: str) -> bool:
        """Was every queue before `home` found empty less than PRIORITY_RECHECK ago?"""
        now = time.monotonic()
        return all(self._empty.get((cid, q), 0.0) > now for q in queues[:queues.index(home)])

    def flush_delivered(self) -> None:
        """Clear the outbox entries delivered since the last script on their queue."""
        for queue, entry in list(self._delivered.items()):
            self._outbox_done(queue, entry)
            self._delivered.pop(queue, None)

    def _run(self, cid: str, owner: str, queue: str, *, ack: bytes = b"", reserve: bool = False,
             claimed: str | bytes | None = None, entry: bytes = b"", payload: str = "", inline: list | None = None,
             rates: str = ""):
        static = self._cstatic.get((cid, owner, queue))
        if static is None:
            self.register(queue)
            self._cid_queues.setdefault(cid, set()).add(queue)
            qk = self.keys.of(queue)
            keys = [qk.inflight(cid), qk.msg, qk.dlv, qk.queue, qk.eta, qk.consumers, qk.revoked, qk.rate,
                    qk.rate_slots, qk.unique, qk.unique_expiry, qk.outbox, qk.outbox_due]
            static = ([len(keys), *(k.encode() for k in keys)], [cid.encode(), owner.encode()])
            if len(self._cstatic) > 256:
                self._cstatic.clear()
            self._cstatic[(cid, owner, queue)] = static
        done = self._delivered.pop(queue, b"")
        try:
            return self.fast.evalsha(self._c_reserve, *static[0], ack, *static[1], b"1" if reserve else b"",
                                     claimed or b"", rates, entry, payload, done, *(inline or ()),
                                     durable="warn" if ack or entry or inline else "")
        except BaseException:
            if done and queue not in self._delivered:
                self._delivered[queue] = done  # not cleared: the next call tries again (a sweep would redeliver: once)
            raise

    def _reserved(self, reply, cid: str, queue: str) -> Reserved | None:
        if not reply or len(reply) < 3 or reply[1] is None:
            return None
        _, msg_id, body, count, revoked = reply
        self._held[msg_id] = (cid, queue)
        return Reserved(msg_id.decode("utf-8", "backslashreplace"), body, int(count), bool(revoked), queue, msg_id)

    def _settle(self, cid: str, raw: bytes) -> str | None:
        """The queue `raw` was reserved from (forgotten now: it is being settled)."""
        held = self._held.pop(raw, None)
        queue = held[1] if held else None
        if queue is not None:
            self._recent[cid] = queue
        return queue

    def _find(self, cid: str, raw: bytes) -> str | None:
        """Which of our queues holds `raw` in cid's in-flight list (an ack for a message this
        process did not reserve: the master acking a task it killed, a restarted consumer)."""
        for queue in self._queues_of(cid):
            if self._holds(queue, cid, raw):
                self._recent[cid] = queue
                return queue
        return None

    def _holds(self, queue: str, cid: str, raw: bytes) -> bool:
        return self.client.execute_command("LPOS", self.keys.of(queue).inflight(cid), raw) is not None

    def _store(self, task_id: str, record: str, durable: str = "warn") -> None:
        key = self.keys.result(task_id)
        args = ("SET", key, record, "EX", self.result_ttl) if self.result_ttl else ("SET", key, record)
        self.fast.command(*args, durable=durable)

    def wait(self, cid: str, queue: str, timeout: float) -> bytes | None:
        qk = self.keys.of(queue)
        return self.fast.command("BLMOVE", qk.queue, qk.inflight(cid), "RIGHT", "LEFT", timeout)

    def ack(self, cid: str, task_id: str, result: str | None = None, ops: list | None = None,
            queue: str | None = None) -> None:
        raw = task_id.encode() if isinstance(task_id, str) else task_id
        if raw not in self._held:  # not reserved by this process: the master acking a task it killed
            hinted = queue is not None and self._holds(queue, cid, raw)
            home = queue if hinted else self._find(cid, raw)
            if home is not None:
                self._held[raw] = (cid, home)
        self.reserve(cid, cid, [], ack_id=raw, ack_result=result, ops=ops)

    def body(self, task_id: str, queue: str | None = None) -> bytes | None:
        first = [queue] if queue else []
        for name in first + [q for q in self.known_queues() if q != queue]:  # the hint first, then all
            found = self.client.hget(self.keys.of(name).msg, task_id)
            if found is not None:
                return found  # type: ignore[return-value]
        return None

    def retry(self, cid: str, task_id: str, queue: str, body: str, eta: float | None,
              result: str | None = None) -> None:
        raw = task_id.encode() if isinstance(task_id, str) else task_id
        home = self._settle(cid, raw) or queue
        if result:
            self._store(raw.decode("utf-8", "backslashreplace"), result)
        qk = self.keys.of(home)
        self.fast.evalsha(self._retry, 4, qk.inflight(cid), qk.msg, qk.dlv, qk.eta if eta else qk.queue,
                          self.ns, task_id, body, repr(eta) if eta else "", "", self.result_ttl, durable="warn")

    def dead_letter(self, cid: str, task_id: str | bytes, body: bytes | None, reason: str, queue: str,
                    result: str | None = None) -> None:
        raw = task_id.encode() if isinstance(task_id, str) else task_id
        home = self._settle(cid, raw) or queue
        if result:
            self._store(raw.decode("utf-8", "backslashreplace"), result)
        content = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        record = json.dumps({"id": raw.decode("utf-8", "backslashreplace"), "queue": queue, "reason": reason,
                             "body": content, "consumer": cid, "time": time.time()})
        qk = self.keys.of(home)
        self.fast.evalsha(self._dead, 4, qk.inflight(cid), qk.msg, qk.dlv, qk.dead,
                          self.ns, task_id, record, "", self.result_ttl, self.dead_letter_max, durable="warn")

    def requeue_consumer(self, cid: str, *, unregister: bool = True) -> int:
        """As Broker.requeue_consumer, in each queue cid used here (or, for a consumer of another
        process, in every known queue): one script per queue."""
        if unregister:
            self.flush_delivered()
        moved = sum(self._requeue_in(queue, cid, unregister) for queue in self._queues_of(cid))
        for raw in [r for r, (c, _) in self._held.items() if c == cid]:
            del self._held[raw]
        return moved

    def _requeue_in(self, queue: str, cid: str | bytes, unregister: bool, owner: bytes = b"") -> int:
        """Requeue what `cid` holds in `queue`; with `owner` (a dead node's recovery) only while the
        registry names that owner and its heartbeat copy in this slot is gone (checked in the script).
        A cid and owner read from a registry are its raw bytes: the keys are built from them
        behind the queue's hash tag, and the script compares them byte for byte."""
        qk = self.keys.of(queue)
        raw = cid if isinstance(cid, bytes) else cid.encode()
        reply = self.fast.evalsha(self._c_requeue, 6, qk.inflight("").encode() + raw, qk.msg, qk.dlv, qk.queue,
                                  qk.consumers, qk.heartbeat("").encode() + owner, raw, "1" if unregister else "0",
                                  owner)
        for orphan in reply[1:]:
            self._orphan(qk, orphan, text(raw))
        return int(reply[0])

    def _orphan(self, qk: QueueKeys, raw: bytes, cid: str) -> None:
        """An id found in flight without a body: dropped if its result says it finished (a
        recovered copy of a task a stopped node ran and acked since), else dead-lettered."""
        shown = raw.decode("utf-8", "backslashreplace")
        record = self.client.get(self.keys.result(shown))
        try:
            finished = json.loads(record).get("state") in ("SUCCESS", "FAILURE", "REVOKED") if record else False
        except (ValueError, AttributeError):
            finished = False
        if not finished:
            self.client.lpush(qk.dead, json.dumps({"id": shown, "body": False, "queue": False, "reason":
                                                   f"no envelope stored for this id (found in-flight of consumer {cid})"}))

    def consumers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for queue in self.known_queues():
            out.update({text(c): text(o) for c, o in self.client.hgetall(self.keys.of(queue).consumers).items()})
        return out

    def heartbeat(self, owner: str, ttl: float, info: dict | None = None, queues: list[str] | None = None) -> None:
        """As Broker.heartbeat, and a copy of it (`{ns:q}:hb:<owner>`, same TTL) in the slot of
        every queue the owner's consumers use (`queues`, else those this process's consumers
        reserved from). `ns:hb:<owner>` lives in a slot of its own, usually on another shard than
        the queues: when that shard fails over, the promoted replica may hold an older copy of it
        (asynchronous replication lost the latest refreshes) that expires before the owner, which
        could not write during the failover, beats again. A sweep that trusted that one key found a
        live node dead and requeued the tasks it was running in queues on other, healthy shards:
        they ran twice. The sweep (recover_dead) takes an owner for dead only when no copy is left.

        Each key is written on its own, so a shard that is down does not keep the others from being
        refreshed; the keys that failed (their primary died) are sent again once, at once, on a
        fresh slot table (the next beat must not wait another period on a stale one), and the
        first error left is raised after every key was tried."""
        self.stale_after = max(1.0, float(ttl))
        if queues is None:
            queues = sorted({q for used in list(self._cid_queues.values()) for q in list(used)})  # another thread adds
        vouched = sorted({q for q in queues if isinstance(q, str) and q})
        self._vouched[owner] = vouched
        px = max(1, int(ttl * 1000))
        writes: list[Callable[[], object]] = [functools.partial(self.client.set, self.keys.heartbeat(owner),
                                                                heartbeat_value(info), px=px)]
        writes += [functools.partial(self.client.set, self.keys.of(q).heartbeat(owner), b"1", px=px) for q in vouched]
        failed = self._each(writes)
        if failed:
            try:
                ping_cluster(self.client)
            except (*BROKER_DOWN, RedisError):
                pass
            if failed := self._each([write for write, _ in failed]):
                raise failed[0][1]

    @staticmethod
    def _each(writes: list[Callable[[], object]]) -> list[tuple[Callable[[], object], RedisError]]:
        """Call each write; (write, error) for those that raised a Redis error."""
        failed = []
        for write in writes:
            try:
                write()
            except RedisError as exc:
                failed.append((write, exc))
        return failed

    def stop_heartbeat(self, owner: str) -> None:
        """Delete the heartbeat and its copies (each on its own; the first error is raised)."""
        keys = [self.keys.heartbeat(owner), *(self.keys.of(q).heartbeat(owner) for q in self._vouched.pop(owner, []))]
        if failed := self._each([functools.partial(self.client.delete, key) for key in keys]):
            raise failed[0][1]

    def recover_dead(self, every: float = 0.0) -> dict[str, int]:
        """As Broker.recover_dead, per queue: the registry of each queue read, every owner's
        heartbeat looked up, and for an owner whose `ns:hb:<owner>` is gone, its copies in the
        slots of the queues it is registered in (one left means it lives: see `heartbeat`); then
        one script per dead consumer and queue (which checks, atomically, that the registry still
        names that owner and that its copy in that slot is gone). Then every queue's outbox
        entries older than `stale_after` (their deliverer died) are delivered.

        Owners and consumer ids are the registries' raw bytes: a key is built from them behind
        the queue's own hash tag (so it stays in that slot whatever they hold), and the script
        compares them byte for byte."""
        if every > 0 and not self.client.set(self.keys.sweep, b"1", nx=True, px=max(1, int(every * 1000))):
            return {}  # swept within `every` by another master (Broker.recover_dead)
        queues = self.known_queues()
        if not queues:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            pipe.hgetall(self.keys.of(queue).consumers)
        registries = [reg if isinstance(reg, dict) else {} for reg in pipe.execute()]
        owners = sorted({o for reg in registries for o in reg.values() if isinstance(o, bytes)})
        alive: set[bytes] = set()
        if owners:
            pipe = self.client.pipeline(transaction=False)
            for owner in owners:
                pipe.exists(self.keys.heartbeat("").encode() + owner)
            alive = {owner for owner, there in zip(owners, pipe.execute(), strict=True) if there}
        suspects = sorted({(queue, owner) for queue, reg in zip(queues, registries, strict=True)
                           for owner in reg.values() if isinstance(owner, bytes) and owner not in alive})
        if suspects:
            pipe = self.client.pipeline(transaction=False)
            for queue, owner in suspects:
                pipe.exists(self.keys.of(queue).heartbeat("").encode() + owner)
            alive |= {owner for (_, owner), there in zip(suspects, pipe.execute(), strict=True) if there}
        out: dict[str, int] = {}
        for queue, registry in zip(queues, registries, strict=True):
            for cid, owner in registry.items():
                if isinstance(owner, bytes) and isinstance(cid, bytes) and owner not in alive:
                    moved = self._requeue_in(queue, cid, True, owner)
                    out[text(cid)] = out.get(text(cid), 0) + moved
        for queue in queues:
            self.sweep_outbox(queue)
        return out

    # -- follow-ups across slots ------------------------------------------------------------------
    def sweep_outbox(self, queue: str, older_than: float | None = None) -> int:
        """Deliver the outbox entries of `queue` nobody cleared for `older_than` seconds."""
        qk = self.keys.of(queue)
        reply = self.fast.evalsha(self._c_outbox, 2, qk.outbox, qk.outbox_due, "claim",
                                  older_than if older_than is not None else self.stale_after, OUTBOX_BATCH)
        done = 0
        for i in range(0, len(reply), 2):
            entry, payload = reply[i], reply[i + 1]
            try:
                ops = json.loads(payload)
            except ValueError:
                log.error("outbox entry %r of queue %s is not JSON: dropped", entry[:80], queue)
                self._outbox_done(queue, entry)
                continue
            self._deliver(ops)
            self._outbox_done(queue, entry)
            done += 1
        if done:
            log.warning("delivered %d follow-up(s) of queue %s whose deliverer did not (recovered outbox)", done, queue)
        return done

    def _outbox_done(self, queue: str, entry: bytes | str) -> None:
        qk = self.keys.of(queue)
        self.fast.evalsha(self._c_outbox, 2, qk.outbox, qk.outbox_due, "done", entry)

    def _deliver(self, ops: list[list]) -> None:
        """Carry out follow-ups in their own slots, each at most once (a repeat is harmless)."""
        for op in ops:
            kind = op[0]
            if kind == "m":
                self.publish_once(op[1], op[2], op[3], op[4])
            elif kind == "c":
                self._chord(op[1], "c", *op[2:])
            elif kind == "p":
                fired = self._chord(op[1], "p", *op[2:])
                if fired:
                    self._fire(op[1], fired)
            elif kind == "r":
                self._store(op[1], op[2])
            elif kind == "u":  # its queue is not known here (no message settled by this consumer)
                log.warning("unique key %r not freed: its queue is unknown here; it expires by itself", op[1][:80])
            else:
                raise ValueError(f"not a follow-up op to deliver: {kind!r}")

    def _chord(self, group_id: str, *args):
        return self.fast.evalsha(self._c_chord, 2, self.keys.chord(group_id), self.keys.chord_results(group_id),
                                 self.result_ttl, *args, durable="warn")

    def _fire(self, group_id: str, fired: bytes) -> None:
        self._deliver(json.loads(fired))
        self._chord(group_id, "sent")

    def publish_once(self, task_id: str, queue: str, eta: str, body: str) -> bool:
        """Store and queue one message unless this id was delivered here in the last ONCE_KEEP s."""
        self.register(queue)
        qk = self.keys.of(queue)
        return bool(self.fast.evalsha(self._c_once, 3, qk.msg, qk.eta if eta else qk.queue, qk.once,
                                      task_id, body, eta, ONCE_KEEP, durable="warn"))
