"""The Redis side of beat: the leader lock, last-run anchors, atomic dispatch, dynamic entries.

Keys (``ns`` = the app's namespace, as in docs/protocol.md):

    ns:beat:lock      hash    token, until (µs), holder: the leader lock (see below)
    ns:beat:last      hash    entry name -> anchor (µs since the epoch): slots up to it are done
    ns:beat:runs      hash    entry name -> JSON {slot, id, at, by, skipped} of the latest decision
    ns:beat:entries   hash    entry name -> JSON spec of a dynamic entry (`qdeploy schedule add`)
    ns:beat:disabled  set     names of disabled entries (static or dynamic)
    ns:beat:rev       string  bumped on every edit of the two above: a running beat reloads

**Lock.** One script acquires or renews: it succeeds when nobody holds the lock, when we hold
it, or when the holder's ``until`` has passed. ``until`` is measured on the Redis server's clock
(``TIME``) unless the caller passes its own (tests with a simulated clock). The key also gets a
``PEXPIRE`` of twice the TTL so that an abandoned lock never lingers. Release is a
compare-and-delete.

**Dispatch.** One script per due run, atomic: it checks that the caller still holds the lock
(fencing: a deposed leader cannot send), that the run's slot is later than the entry's anchor
(idempotent per (entry, slot): even two leaders at once cannot double-fire), then advances the
anchor, records the run and publishes the message exactly as ``Broker.publish`` does (body in
``ns:msg``, id on ``ns:q:<queue>`` or, with a future ETA, in ``ns:eta:<queue>``). A misfire
(skipped run) is the same script without a message.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

from qdeploy.core.broker import Broker

# KEYS: lock. ARGV: token, ttl_us, now_us|'', holder -> 0 = ours now, else µs until it expires
ACQUIRE = """
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local ttl = tonumber(ARGV[2])
local tok = redis.call('HGET', KEYS[1], 'token')
local untl = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if tok and tok ~= ARGV[1] and untl > now then return string.format('%.0f', untl - now) end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'until', string.format('%.0f', now + ttl), 'holder', ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(2 * ttl / 1000))
return 0
"""

# KEYS: lock. ARGV: token
RELEASE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lock, last, runs, msg, queue list, eta zset
# ARGV: token, name, slot_us, anchor_us, record JSON, id|'', body|'', eta|''
# -> 1 dispatched (or skip recorded), 0 slot already done, -1 not the lock holder
DISPATCH = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return -1 end
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '-1')
local slot, anchor = tonumber(ARGV[3]), tonumber(ARGV[4])
if last >= slot then return 0 end
if anchor < slot then anchor = slot end
redis.call('HSET', KEYS[2], ARGV[2], string.format('%.0f', anchor))
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[6], ARGV[7])
  if ARGV[8] ~= '' then
    redis.call('ZADD', KEYS[6], ARGV[8], ARGV[6])
  else
    redis.call('LPUSH', KEYS[5], ARGV[6])
  end
end
return 1
"""

# KEYS: lock, last. ARGV: token, name, anchor_us -> 1 set, 0 already anchored, -1 not holder
INIT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return -1 end
return redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3])
"""

DISPATCHED, ALREADY_DONE, NOT_LEADER = 1, 0, -1
_ID_NAMESPACE = uuid.UUID("6f1d3c1e-5b0a-4c47-9a57-2f7d6b1e8a10")


def to_us(dt: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact in Lua's doubles)."""
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    from datetime import timedelta

    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)


def run_id(namespace: str, name: str, slot: datetime) -> str:
    """The task id of one run: the same for every beat that computes the same (entry, slot)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{namespace}\0{name}\0{to_us(slot)}"))


class BeatStore:
    def __init__(self, broker: Broker):
        self.broker, self.client, ns = broker, broker.client, broker.ns
        self.ns = ns
        self.k_lock, self.k_last, self.k_runs = f"{ns}:beat:lock", f"{ns}:beat:last", f"{ns}:beat:runs"
        self.k_entries, self.k_disabled, self.k_rev = (f"{ns}:beat:entries", f"{ns}:beat:disabled",
                                                       f"{ns}:beat:rev")
        reg = self.client.register_script
        self._acquire, self._release = reg(ACQUIRE), reg(RELEASE)
        self._dispatch, self._init = reg(DISPATCH), reg(INIT)

    # -- the leader lock ----------------------------------------------------------------------
    def acquire(self, token: str, ttl: float, holder: str, now: float | None = None) -> float:
        """Take or renew the lock for `ttl` seconds: 0.0 when it is ours, else the seconds until
        the holder's lock expires. `now` (unix seconds) overrides the Redis server's clock."""
        now_us = "" if now is None else str(int(now * 1_000_000))
        left = self._acquire(keys=[self.k_lock], args=[token, int(ttl * 1_000_000), now_us, holder])
        return int(left) / 1_000_000

    def release(self, token: str) -> bool:
        return bool(self._release(keys=[self.k_lock], args=[token]))

    def leader(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self.k_lock).items()}

    # -- anchors and runs ---------------------------------------------------------------------
    def anchors(self, names: list[str]) -> dict[str, datetime | None]:
        if not names:
            return {}
        values = self.client.hmget(self.k_last, names)
        return {n: None if v is None else from_us(int(v)) for n, v in zip(names, values)}

    def init_anchor(self, token: str, name: str, anchor: datetime) -> int:
        return self._init(keys=[self.k_lock, self.k_last], args=[token, name, to_us(anchor)])

    def dispatch(self, token: str, name: str, slot: datetime, anchor: datetime, record: dict,
                 env=None, body: str = "") -> int:
        """Send one run (env + its encoded body) or, with env None, record a skipped slot."""
        queue = env.queue if env is not None else "-"
        eta = env.eta if env is not None and env.eta is not None and env.eta > record["at"] else None
        return self._dispatch(
            keys=[self.k_lock, self.k_last, self.k_runs, self.broker.k_msg,
                  self.broker.queue_key(queue), self.broker.eta_key(queue)],
            args=[token, name, to_us(slot), to_us(anchor), json.dumps(record),
                  env.id if env is not None else "", body, "" if eta is None else repr(eta)])

    def runs(self) -> dict[str, dict]:
        return {k.decode(): json.loads(v) for k, v in self.client.hgetall(self.k_runs).items()}

    # -- dynamic entries ----------------------------------------------------------------------
    def revision(self) -> int:
        return int(self.client.get(self.k_rev) or 0)

    def load(self) -> tuple[int, dict[str, bytes], set[str]]:
        """(revision, dynamic entries as stored, disabled names) in one round trip."""
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.k_rev)
        pipe.hgetall(self.k_entries)
        pipe.smembers(self.k_disabled)
        rev, entries, disabled = pipe.execute()
        return (int(rev or 0), {k.decode("utf-8", "replace"): v for k, v in entries.items()},
                {d.decode("utf-8", "replace") for d in disabled})

    def put(self, name: str, spec: str, replace: bool = False) -> bool:
        """Store a dynamic entry; False when it exists and `replace` is not set."""
        pipe = self.client.pipeline(transaction=True)
        (pipe.hset if replace else pipe.hsetnx)(self.k_entries, name, spec)
        pipe.srem(self.k_disabled, name)
        pipe.incr(self.k_rev)
        done = pipe.execute()[0]
        return bool(done) or replace

    def remove(self, name: str) -> bool:
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.k_entries, name)
        pipe.srem(self.k_disabled, name)
        pipe.hdel(self.k_last, name)
        pipe.hdel(self.k_runs, name)
        pipe.incr(self.k_rev)
        return bool(pipe.execute()[0])

    def set_enabled(self, name: str, enabled: bool) -> bool:
        """Enable or disable an entry; True if that changed something."""
        pipe = self.client.pipeline(transaction=True)
        (pipe.srem if enabled else pipe.sadd)(self.k_disabled, name)
        pipe.incr(self.k_rev)
        return bool(pipe.execute()[0])
