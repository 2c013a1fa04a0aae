"""The Redis protocol: key layout, Lua scripts, and the verbs producers and consumers use.

Every state change a consumer makes is one EVALSHA (atomic, one round trip). Key layout, with
`ns` the namespace (default "qdeploy"); see docs/protocol.md for the full story:

    ns:msg                hash   id -> envelope JSON (the only copy of a message body)
    ns:q:<queue>          list   ids waiting to run (LPUSH in, taken from the right)
    ns:eta:<queue>        zset   ids not due yet, score = unix time they become due
    ns:inflight:<cid>     list   ids reserved by consumer <cid>, until acked
    ns:dlv                hash   id -> deliveries so far (reset by ack and retry)
    ns:consumers          hash   cid -> heartbeat owner (the node that vouches for it)
    ns:hb:<owner>         string heartbeat, expires after the visibility timeout
    ns:dead               list   dead-letter records (JSON, newest first, capped)
    ns:r:<id>             string result JSON, expires after result_ttl
    ns:revoked:<id>       string revocation mark, expires after result_ttl
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
from dataclasses import dataclass

import redis

from qdeploy.core.connection import connect, socket_of

SPIN = 100e-6  # how long `delay` polls for Redis's reply before it blocks (see Broker._await_reply)
SPIN_MISSES = 3  # replies in a row slower than SPIN that turn the polling off...
SPIN_BACKOFF = 100  # ...for this many calls

# Requeue every id in-flight for one consumer; a body without a readable queue is dead-lettered.
# Expects locals: ns, cid, inflight, msgs. Leaves `moved`.
_REQUEUE = """
local moved = 0
while true do
  local id = redis.call('RPOP', inflight)
  if not id then break end
  local body = redis.call('HGET', msgs, id)
  if body then
    local ok, env = pcall(cjson.decode, body)
    if ok and type(env) == 'table' and type(env['queue']) == 'string' then
      redis.call('RPUSH', ns .. ':q:' .. env['queue'], id)
    else
      redis.call('LPUSH', ns .. ':dead', cjson.encode({id = id, body = body, queue = false,
        reason = 'malformed message found in-flight of dead consumer ' .. cid}))
      redis.call('HDEL', msgs, id)
      redis.call('HDEL', ns .. ':dlv', id)
    end
    moved = moved + 1
  end
end
"""

# KEYS: inflight, msgs, dlv, queue lists..., eta zsets...
# ARGV: ns, ack_id|'', ack_result|'', result_ttl, nqueues, cid, owner, track('1'|'0'), claimed|'',
#       leave('1'|'')
# `claimed`: an id that BLMOVE already moved from the first queue into this consumer's in-flight
# list (the idle wait, see Broker.wait): it gets the same bookkeeping as an id LMOVEd here.
# An empty reserve registers the consumer, so an id BLMOVEd right after is always recoverable.
# `leave`: after the ack, requeue anything still held and unregister (a consumer's last call).
RESERVE = """
local ns, ttl = ARGV[1], tonumber(ARGV[4])
if ARGV[2] ~= '' then
  redis.call('LREM', KEYS[1], 1, ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  if ARGV[3] ~= '' then redis.call('SET', ns .. ':r:' .. ARGV[2], ARGV[3], 'EX', ttl) end
end
if ARGV[10] == '1' then
  local cid, inflight, msgs = ARGV[6], KEYS[1], KEYS[2]
""" + _REQUEUE + """
  redis.call('HDEL', ns .. ':consumers', cid)
  return false
end
local n = tonumber(ARGV[5])
if n == 0 then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function hit(id, i)
  redis.call('HSET', ns .. ':consumers', ARGV[6], ARGV[7])
  local body = redis.call('HGET', KEYS[2], id)
  local count = redis.call('HINCRBY', KEYS[3], id, 1)
  local revoked = redis.call('EXISTS', ns .. ':revoked:' .. id)
  if body and ARGV[8] == '1' then
    local ok, env = pcall(cjson.decode, body)
    if ok and type(env) == 'table' and env['ignore_result'] ~= true then
      redis.call('SET', ns .. ':r:' .. id, cjson.encode({state = 'RECEIVED', worker = ARGV[6],
        date_done = false, task = env['task'], received = now}), 'EX', ttl)
    end
  end
  return {id, body, count, revoked, i}
end
if ARGV[9] and ARGV[9] ~= '' then return hit(ARGV[9], 1) end
for i = 1, n do
  local q, z = KEYS[3 + i], KEYS[3 + n + i]
  local due = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 100)
  if #due > 0 then
    for _, id in ipairs(due) do redis.call('LPUSH', q, id) end
    redis.call('ZREM', z, unpack(due))
  end
  local id = redis.call('LMOVE', q, KEYS[1], 'RIGHT', 'LEFT')
  if id then return hit(id, i) end
end
redis.call('HSET', ns .. ':consumers', ARGV[6], ARGV[7])
return false
"""

# KEYS: msgs, target (eta zset if ARGV[3] ~= '' else queue list). ARGV: id, body, eta|''
PUBLISH_ONE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else redis.call('LPUSH', KEYS[2], ARGV[1]) end
return 1
"""

# KEYS: inflight, msgs, dlv, target (eta zset if ARGV[4] ~= '' else queue list)
# ARGV: ns, id, new body, eta|'', result|'', ttl
RETRY = """
redis.call('LREM', KEYS[1], 1, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[2])
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
else redis.call('LPUSH', KEYS[4], ARGV[2]) end
if ARGV[5] ~= '' then redis.call('SET', ARGV[1] .. ':r:' .. ARGV[2], ARGV[5], 'EX', ARGV[6]) end
return 1
"""

# KEYS: inflight, msgs, dlv, dead. ARGV: ns, id, record, result|'', ttl, maxlen
DEAD_LETTER = """
redis.call('LREM', KEYS[1], 1, ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('LPUSH', KEYS[4], ARGV[3])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
if ARGV[4] ~= '' then redis.call('SET', ARGV[1] .. ':r:' .. ARGV[2], ARGV[4], 'EX', ARGV[5]) end
return 1
"""

# KEYS: inflight, msgs, consumers. ARGV: ns, cid, unregister('1'|'0')
REQUEUE_CONSUMER = """
local ns, cid, inflight, msgs = ARGV[1], ARGV[2], KEYS[1], KEYS[2]
""" + _REQUEUE + """
if ARGV[3] == '1' then redis.call('HDEL', KEYS[3], cid) end
return moved
"""

# KEYS: consumers, msgs. ARGV: ns. Returns {cid, moved, cid, moved, ...} for dead consumers.
RECOVER_DEAD = """
local ns, msgs = ARGV[1], KEYS[2]
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local cid, owner = all[i], all[i + 1]
  if redis.call('EXISTS', ns .. ':hb:' .. owner) == 0 then
    local inflight = ns .. ':inflight:' .. cid
""" + _REQUEUE + """
    redis.call('HDEL', KEYS[1], cid)
    table.insert(out, cid)
    table.insert(out, moved)
  end
end
return out
"""


@dataclass(slots=True)
class Reserved:
    """One message handed to a consumer: its id, raw body (None if missing), delivery number."""

    id: str
    body: bytes | None
    deliveries: int
    revoked: bool
    queue: str


def pack(args) -> bytes:
    """One command in the Redis protocol (RESP): what redis-py's `Connection.pack_command` does,
    for the argument types the hot paths send (bytes, str, int, float), at a fraction of its cost."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            arg = repr(arg).encode()
        elif not isinstance(arg, (bytes, bytearray, memoryview)):
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


class Broker:
    """Verbs over one Redis connection pool. Thread-safe (redis-py pools are)."""

    def __init__(self, url: str, namespace: str = "qdeploy", *, result_ttl: int = 86400,
                 retries: int = 2, dead_letter_max: int = 10000, client: redis.Redis | None = None):
        self.url = url
        self.ns = namespace
        self.result_ttl = int(result_ttl)
        self.dead_letter_max = dead_letter_max
        self.client = client if client is not None else connect(url, retries=retries)
        reg = self.client.register_script
        self._reserve, self._retry, self._dead = reg(RESERVE), reg(RETRY), reg(DEAD_LETTER)
        self._requeue, self._recover = reg(REQUEUE_CONSUMER), reg(RECOVER_DEAD)
        self._publish_one = reg(PUBLISH_ONE)
        self._static: dict[tuple, tuple[list, list]] = {}
        self._local = threading.local()  # per thread: the connection of `_command`
        self._spin_misses = self._spin_backoff = 0  # see `_await_reply`
        self._for_child: list = []  # unconnected connections for the next child (`prepare_fork`)
        self._for_child_by = 0  # ...and the pid that made them, which must not use them
        self._templates: list = []  # never connected here: each child uses its own copy
        # A plain pool's connections all go to one server; others (Sentinel) route per command.
        self._direct = type(self.client.connection_pool) is redis.ConnectionPool
        self.k_msg, self.k_dlv = f"{namespace}:msg", f"{namespace}:dlv"
        self.k_consumers, self.k_dead = f"{namespace}:consumers", f"{namespace}:dead"

    # -- key names ---------------------------------------------------------------------------
    def queue_key(self, queue: str) -> str:
        return f"{self.ns}:q:{queue}"

    def eta_key(self, queue: str) -> str:
        return f"{self.ns}:eta:{queue}"

    def inflight_key(self, cid: str) -> str:
        return f"{self.ns}:inflight:{cid}"

    def result_key(self, task_id: str) -> str:
        return f"{self.ns}:r:{task_id}"

    def ping(self) -> bool:
        return bool(self.client.ping())

    # -- producer ----------------------------------------------------------------------------
    def publish(self, items, chunk: int = 5000) -> None:
        """Store and queue (id, queue, eta, body) tuples: per chunk one MULTI with one HSET, one
        LPUSH per queue and one ZADD per queue with future ETAs, i.e. one round trip, atomic
        (a body is never queued without being stored) and order-preserving."""
        items = list(items)
        now = time.time()
        if len(items) == 1:  # `delay`: one EVALSHA, cheaper than MULTI/HSET/LPUSH/EXEC
            task_id, queue, eta, body = items[0]
            later = eta is not None and eta > now
            target = self.eta_key(queue) if later else self.queue_key(queue)
            self._eval(self._publish_one, 2, self.k_msg, target, task_id, body,
                       repr(float(eta)) if later else "", spin=True)
            return
        for start in range(0, len(items), chunk):
            bodies, ready, later = [], {}, {}
            for task_id, queue, eta, body in items[start:start + chunk]:
                bodies += (task_id, body)
                if eta is not None and eta > now:
                    later.setdefault(queue, []).extend((repr(float(eta)), task_id))
                else:
                    ready.setdefault(queue, []).append(task_id)
            commands = [("HSET", self.k_msg, *bodies)]
            commands += [("LPUSH", self.queue_key(queue), *ids) for queue, ids in ready.items()]
            commands += [("ZADD", self.eta_key(queue), *pairs) for queue, pairs in later.items()]
            self._transaction(commands)

    def revoke(self, task_id: str, result: str | None) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.set(f"{self.ns}:revoked:{task_id}", 1, ex=self.result_ttl)
        if result:
            pipe.set(self.result_key(task_id), result, ex=self.result_ttl)
        pipe.execute()

    # -- consumer ----------------------------------------------------------------------------
    def reserve(self, cid: str, owner: str, queues: list[str], *, ack_id: str | None = None,
                ack_result: str | None = None, track: bool = True,
                claimed: str | bytes | None = None, leave: bool = False) -> Reserved | None:
        """Ack `ack_id` (if given) then move the next due message into cid's in-flight list.

        Queues are tried in order (priority). Due ETA messages are promoted first. With an
        empty `queues` this is a plain ack. `claimed` is an id `wait()` already moved into the
        in-flight list: it gets the reservation bookkeeping (delivery count, RECEIVED...).
        `leave` (with empty `queues`): then give back anything still held and unregister.
        """
        static = self._static.get((cid, owner, tuple(queues), track))
        if static is None:  # the keys and constant arguments, encoded once per consumer
            keys = [self.inflight_key(cid), self.k_msg, self.k_dlv]
            keys += [self.queue_key(q) for q in queues] + [self.eta_key(q) for q in queues]
            static = ([len(keys)] + [k.encode() for k in keys] + [self.ns.encode()],
                      [str(self.result_ttl).encode(), str(len(queues)).encode(), cid.encode(),
                       owner.encode(), b"1" if track else b"0"])
            if len(self._static) > 64:
                self._static.clear()
            self._static[(cid, owner, tuple(queues), track)] = static
        reply = self._eval(self._reserve, *static[0], ack_id or b"", ack_result or b"", *static[1],
                           claimed or b"", b"1" if leave else b"")
        if not reply:
            return None
        msg_id, body, count, revoked, index = reply
        return Reserved(msg_id.decode(), body, int(count), bool(revoked), queues[int(index) - 1])

    def wait(self, cid: str, queue: str, timeout: float) -> bytes | None:
        """Block up to `timeout` s until a message is ready in `queue`, moving its id straight
        into cid's in-flight list (atomic, so it is never lost); pass it to `reserve(claimed=)`.
        An idle consumer thus starts a new task within a round trip instead of polling."""
        return self._command("BLMOVE", self.queue_key(queue), self.inflight_key(cid), "RIGHT", "LEFT", timeout)

    def _eval(self, script, *args, spin: bool = False):
        """EVALSHA for the hot paths; reloads the script when a restarted Redis lost its cache."""
        try:
            return self._command("EVALSHA", script.sha, *args, spin=spin)
        except redis.exceptions.NoScriptError:  # EVAL on the same connection caches it there
            return self._command("EVAL", script.script, *args, spin=spin)

    def _command(self, *args, spin: bool = False):
        """One command on this thread's own connection (see `_connection`); `spin`: the reply
        is expected at once (see `_await_reply`)."""
        if not self._direct:
            return self.client.execute_command(*args)
        packed = [pack(args)]

        def once(conn):
            conn.send_packed_command(packed)
            if spin:
                self._await_reply(conn)
            return conn.read_response()
        return self._round_trip(once)

    def _await_reply(self, conn) -> None:
        """Poll for the reply for up to SPIN before `read_response` blocks. A blocked thread
        lets its CPU go idle, and waking an idle vCPU costs ~60 µs on the VMs measured here:
        more than a local Redis takes to answer, and more CPU than the polling (a `delay` went
        from 6.8k/s to 14k/s, using 15 % less CPU per call). Replies that keep taking longer (a
        remote Redis) turn the polling off for the next SPIN_BACKOFF calls."""
        if self._spin_backoff:
            self._spin_backoff -= 1
            return
        sock = socket_of(conn)
        if sock is None:  # a redis-py that does not expose it: just block
            return
        deadline = time.perf_counter() + SPIN
        while not select.select((sock,), (), (), 0)[0]:
            if time.perf_counter() >= deadline:
                self._spin_misses += 1
                if self._spin_misses >= SPIN_MISSES:
                    self._spin_misses, self._spin_backoff = 0, SPIN_BACKOFF
                return
        self._spin_misses = 0

    def _transaction(self, commands: list[tuple]) -> list:
        """MULTI, `commands`, EXEC in one round trip; raises the first error a command got."""
        if not self._direct:
            pipe = self.client.pipeline(transaction=True)
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute()
        packed = [b"".join(map(pack, [("MULTI",), *commands, ("EXEC",)]))]

        def once(conn):
            conn.send_packed_command(packed)
            refused = []
            for _ in range(len(commands) + 1):  # +OK for MULTI, +QUEUED (or an error) per command
                try:
                    conn.read_response(disable_decoding=True)
                except redis.ResponseError as exc:
                    refused.append(exc)
            try:
                result = conn.read_response()
            except redis.ResponseError as exc:  # EXECABORT: a command was refused, nothing ran
                raise (refused or [exc])[0] from None
            for reply in result or ():  # errors at run time (WRONGTYPE...) come inside EXEC's reply
                if isinstance(reply, Exception):
                    raise reply
            return result
        return self._round_trip(once)

    def _round_trip(self, once):
        """Run `once(conn)` on this thread's connection, with the client's connection retries
        (a producer's stale connection after a Redis restart reconnects, as redis-py would;
        consumers have none and handle reconnects themselves). A connection whose state is
        unknown after an error is dropped; the next call opens a new one."""
        conn = self._connection()
        try:
            return conn.retry.call_with_retry(lambda: once(conn), lambda _error: conn.disconnect())
        except redis.ResponseError:
            raise  # a complete error reply: the connection is still in step
        except BaseException:
            conn.disconnect()
            raise

    def _connection(self):
        """This thread's connection, kept out of the pool: skips redis-py's per-command pool
        checkout, liveness probe (three syscalls), argument encoding and retry/observability
        layers, about half of the client-side cost of a task or of a `delay`. Only for plain
        pools: a Sentinel pool must route every command to the current master itself."""
        local, pid = self._local, os.getpid()
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != pid:
            conn = self._for_child.pop() if self._for_child and self._for_child_by != pid else self._new_connection()
            local.conn, local.pid = conn, pid
        return conn

    def _new_connection(self):
        """A connection configured like the pool's, but not counted by it: the pool's
        max_connections (100 in redis-py 8) is for its own checkouts, and a thread's connection
        is closed when the thread ends."""
        pool = self.client.connection_pool
        return pool.connection_class(**pool.connection_kwargs)

    def open(self) -> None:
        """Connect this thread's connection now, if it can (a spare child, ahead of its first
        task); a failure is left for the first command to meet and handle."""
        if self._direct:
            try:
                self._connection().connect()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass

    def prepare_fork(self, connections: int) -> None:
        """Hand the next forked child `connections` unconnected connection objects. Building
        one costs redis-py ~0.4 ms, and in a child ~230 copy-on-write page faults (about 1 ms
        of a recycled child's life). These are built once and never connected in this process,
        so every child gets a pristine copy of them through fork."""
        while len(self._templates) < connections:
            self._templates.append(self._new_connection())
        self._for_child, self._for_child_by = self._templates[:connections], os.getpid()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.disconnect()
            self._local.conn = None

    def ack(self, cid: str, task_id: str, result: str | None = None) -> None:
        self.reserve(cid, cid, [], ack_id=task_id, ack_result=result)

    def retry(self, cid: str, task_id: str, queue: str, body: str, eta: float | None,
              result: str | None = None) -> None:
        """Ack this delivery and store the next attempt (in the ETA set when eta is given)."""
        target = self.eta_key(queue) if eta else self.queue_key(queue)
        self._retry(keys=[self.inflight_key(cid), self.k_msg, self.k_dlv, target],
                    args=[self.ns, task_id, body, repr(eta) if eta else "", result or "",
                          self.result_ttl])

    def dead_letter(self, cid: str, task_id: str, body: bytes | None, reason: str, queue: str,
                    result: str | None = None) -> None:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        record = json.dumps({"id": task_id, "queue": queue, "reason": reason, "body": text,
                             "consumer": cid, "time": time.time()})
        self._dead(keys=[self.inflight_key(cid), self.k_msg, self.k_dlv, self.k_dead],
                   args=[self.ns, task_id, record, result or "", self.result_ttl,
                         self.dead_letter_max])

    def requeue_consumer(self, cid: str, *, unregister: bool = True) -> int:
        """Put everything `cid` holds back at the head of its queue. For a supervisor that has
        just reaped consumer `cid` (or a consumer restarting under the same identity)."""
        # on the consumer's own connection (`_command`): a new child opens one connection, not two
        return int(self._eval(self._requeue, 3, self.inflight_key(cid), self.k_msg, self.k_consumers,
                              self.ns, cid, "1" if unregister else "0"))

    def register(self, cid: str, owner: str) -> None:
        self.client.hset(self.k_consumers, cid, owner)

    def unregister(self, cid: str) -> int:
        """Leave cleanly: requeue anything still held, forget the consumer."""
        return self.requeue_consumer(cid, unregister=True)

    # -- liveness ----------------------------------------------------------------------------
    def heartbeat(self, owner: str, ttl: float, info: dict | None = None) -> None:
        """Vouch for every consumer registered under `owner` for the next `ttl` seconds."""
        value = json.dumps(dict(info or {}, time=time.time()))
        self.client.set(f"{self.ns}:hb:{owner}", value, px=max(1, int(ttl * 1000)))

    def stop_heartbeat(self, owner: str) -> None:
        self.client.delete(f"{self.ns}:hb:{owner}")

    def recover_dead(self) -> dict[str, int]:
        """Requeue the in-flight messages of every consumer whose owner's heartbeat expired."""
        reply = self._recover(keys=[self.k_consumers, self.k_msg], args=[self.ns])
        return {reply[i].decode(): int(reply[i + 1]) for i in range(0, len(reply), 2)}

    # -- inspection (operators, tests) -------------------------------------------------------
    def queue_length(self, queue: str) -> int:
        return self.client.llen(self.queue_key(queue))

    def scheduled(self, queue: str) -> int:
        return self.client.zcard(self.eta_key(queue))

    def inflight(self, cid: str) -> list[str]:
        return [x.decode() for x in self.client.lrange(self.inflight_key(cid), 0, -1)]

    def dead_letters(self, count: int = 100) -> list[dict]:
        return [json.loads(x) for x in self.client.lrange(self.k_dead, 0, count - 1)]

    def deliveries(self, task_id: str) -> int:
        return int(self.client.hget(self.k_dlv, task_id) or 0)

    def publish_raw(self, queue: str, task_id: str, body: bytes | str) -> None:
        """Store any bytes as a message (tests and repair tools; producers use `publish`)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.k_msg, task_id, body)
        pipe.lpush(self.queue_key(queue), task_id)
        pipe.execute()

    # -- fleet inspection (read-only: qdeploy status/inspect/queues, the dashboard) -------------
    def heartbeats(self) -> dict[str, dict]:
        """Live heartbeats: owner -> the info its node last wrote (node, pid, pool, ...)."""
        prefix = f"{self.ns}:hb:"
        keys = list(self.client.scan_iter(match=f"{prefix}*", count=1000))
        out = {}
        for key, value in zip(keys, self.client.mget(keys) if keys else []):
            if value is not None:
                try:
                    info = json.loads(value)
                except ValueError:
                    info = {}
                out[key.decode()[len(prefix):]] = info if isinstance(info, dict) else {}
        return out

    def queue_names(self) -> list[str]:
        """Every queue with ready or scheduled messages."""
        names = set()
        for kind in ("q", "eta"):
            prefix = f"{self.ns}:{kind}:"
            names.update(k.decode()[len(prefix):] for k in self.client.scan_iter(match=f"{prefix}*", count=1000))
        return sorted(names)

    def inflight_all(self) -> dict[str, list[str]]:
        """consumer id -> ids it holds, for every consumer holding something."""
        prefix = f"{self.ns}:inflight:"
        keys = list(self.client.scan_iter(match=f"{prefix}*", count=1000))
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.lrange(key, 0, -1)
        return {k.decode()[len(prefix):]: [i.decode() for i in ids] for k, ids in zip(keys, pipe.execute() if keys else [])}

    def bodies(self, ids: list[str]) -> dict[str, bytes | None]:
        return dict(zip(ids, self.client.hmget(self.k_msg, ids))) if ids else {}

    def eta_entries(self, queue: str, count: int = 100) -> list[tuple[str, float]]:
        return [(i.decode(), s) for i, s in self.client.zrange(self.eta_key(queue), 0, count - 1, withscores=True)]

    def dead_letter_count(self) -> int:
        return self.client.llen(self.k_dead)

    def result_records(self, scan_limit: int = 2000) -> dict[str, dict]:
        """Up to `scan_limit` stored results (id -> record), for dashboards: a sample, not all."""
        prefix = f"{self.ns}:r:"
        keys = []
        for key in self.client.scan_iter(match=f"{prefix}*", count=1000):
            keys.append(key)
            if len(keys) >= scan_limit:
                break
        out = {}
        for key, value in zip(keys, self.client.mget(keys) if keys else []):
            try:
                out[key.decode()[len(prefix):]] = json.loads(value) if value else None
            except ValueError:
                continue
        return {k: v for k, v in out.items() if isinstance(v, dict)}
