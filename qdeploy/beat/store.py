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
(skipped run) is the same script without a message. The scripts: `qdeploy/core/lua/beat_*.lua`.

**Redis Cluster.** Beat's keys carry one hash tag (``{ns:beat}:lock``...), so the lock, the
anchors and the runs stay in one slot and the lock, init and release scripts are unchanged. The
queue is in another slot: dispatch (``cluster_beat_dispatch.lua``) records the decision and
puts the run's message in beat's outbox (``{ns:beat}:out``) in the same script; the message is
then delivered to its queue at most once per run id (``cluster_publish_once.lua``: the id is
the same for every beat computing that run) and the entry cleared. A leader that dies between
the two leaves the entry: whoever holds the lock next delivers it (``deliver_outbox``, on every
acquire). So a run is still decided once, and sent once.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from qdeploy.core.broker import Broker
from qdeploy.core.connection import text

DISPATCHED, ALREADY_DONE, NOT_LEADER = 1, 0, -1
_ID_NAMESPACE = uuid.UUID("6f1d3c1e-5b0a-4c47-9a57-2f7d6b1e8a10")


def to_us(dt: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact in Lua's doubles)."""
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    from datetime import timedelta

    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def run_id(namespace: str, name: str, slot: datetime) -> str:
    """The task id of one run: the same for every beat that computes the same (entry, slot)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{namespace}\0{name}\0{to_us(slot)}"))


class BeatStore:
    keys: Any

    def __init__(self, broker: Broker):
        self.broker, self.client, self.keys, self.ns = broker, broker.client, broker.keys, broker.ns
        self._acquire, self._release = broker.script("beat_acquire"), broker.script("beat_release")
        self._dispatch, self._init = broker.script("beat_dispatch"), broker.script("beat_init")
        self.cluster = broker.cluster
        if self.cluster:
            self._dispatch = broker.script("cluster_beat_dispatch")

    # -- the leader lock ----------------------------------------------------------------------
    def acquire(self, token: str, ttl: float, holder: str, now: float | None = None) -> float:
        """Take or renew the lock for `ttl` seconds: 0.0 when it is ours, else the seconds until
        the holder's lock expires. `now` (unix seconds) overrides the Redis server's clock."""
        now_us = "" if now is None else str(int(now * 1_000_000))
        left = self._acquire(keys=[self.keys.beat_lock], args=[token, int(ttl * 1_000_000), now_us, holder])
        if self.cluster and not int(left):
            self.deliver_outbox()
        return int(left) / 1_000_000

    def release(self, token: str) -> bool:
        return bool(self._release(keys=[self.keys.beat_lock], args=[token]))

    def leader(self) -> dict[str, str]:
        return {text(k): text(v) for k, v in self.client.hgetall(self.keys.beat_lock).items()}

    # -- anchors and runs ---------------------------------------------------------------------
    def anchors(self, names: list[str]) -> dict[str, datetime | None]:
        if not names:
            return {}
        values = self.client.hmget(self.keys.beat_last, names)
        return {n: None if v is None else from_us(int(v)) for n, v in zip(names, values, strict=True)}

    def init_anchor(self, token: str, name: str, anchor: datetime) -> int:
        return self._init(keys=[self.keys.beat_lock, self.keys.beat_last], args=[token, name, to_us(anchor)])

    def dispatch(self, token: str, name: str, slot: datetime, anchor: datetime, record: dict,
                 env=None, body: str = "") -> int:
        """Send one run (env + its encoded body) or, with env None, record a skipped slot."""
        queue = env.queue if env is not None else "-"
        eta = env.eta if env is not None and env.eta is not None and env.eta > record["at"] else None
        if self.cluster:
            return self._dispatch_cluster(token, name, slot, anchor, record, env, body, eta)
        return self._dispatch(
            keys=[self.keys.beat_lock, self.keys.beat_last, self.keys.beat_runs, self.keys.msg,
                  self.keys.queue(queue), self.keys.eta(queue)],
            args=[token, name, to_us(slot), to_us(anchor), json.dumps(record),
                  env.id if env is not None else "", body, "" if eta is None else repr(eta)])

    def _dispatch_cluster(self, token: str, name: str, slot: datetime, anchor: datetime, record: dict, env,
                          body: str, eta: float | None) -> int:
        entry = json.dumps(["m", env.id, env.queue, "" if eta is None else repr(eta), body]) if env is not None else ""
        outcome = int(self._dispatch(
            keys=[self.keys.beat_lock, self.keys.beat_last, self.keys.beat_runs, self.keys.beat_outbox],
            args=[token, name, to_us(slot), to_us(anchor), json.dumps(record), env.id if env is not None else "", entry]))
        if outcome == DISPATCHED and env is not None:
            self._deliver(env.id, entry)
        return outcome

    def _deliver(self, run: str | bytes, entry: str | bytes) -> None:
        _, task_id, queue, eta, body = json.loads(entry)
        self.broker.publish_once(task_id, queue, eta, body)  # type: ignore[attr-defined]
        self.client.hdel(self.keys.beat_outbox, run)

    def deliver_outbox(self) -> int:
        """Cluster: deliver runs a previous leader decided but did not get to send."""
        left = self.client.hgetall(self.keys.beat_outbox)
        for run, entry in left.items():
            self._deliver(run, entry)
        return len(left)

    def runs(self) -> dict[str, dict]:
        return {text(k): json.loads(v) for k, v in self.client.hgetall(self.keys.beat_runs).items()}

    # -- dynamic entries ----------------------------------------------------------------------
    def revision(self) -> int:
        return int(self.client.get(self.keys.beat_rev) or 0)

    def load(self) -> tuple[int, dict[str, bytes], set[str]]:
        """(revision, dynamic entries as stored, disabled names) in one round trip."""
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.keys.beat_rev)
        pipe.hgetall(self.keys.beat_entries)
        pipe.smembers(self.keys.beat_disabled)
        rev, entries, disabled = pipe.execute()
        if isinstance(entries, list):  # a cluster's MULTI gives the replies as sent: HGETALL a flat list
            entries = dict(zip(entries[::2], entries[1::2], strict=True))
        return (int(rev or 0), {k.decode("utf-8", "replace"): v for k, v in entries.items()},
                {d.decode("utf-8", "replace") for d in disabled})

    def put(self, name: str, spec: str, replace: bool = False) -> bool:
        """Store a dynamic entry; False when it exists and `replace` is not set."""
        pipe = self.client.pipeline(transaction=True)
        (pipe.hset if replace else pipe.hsetnx)(self.keys.beat_entries, name, spec)
        pipe.srem(self.keys.beat_disabled, name)
        pipe.incr(self.keys.beat_rev)
        done = pipe.execute()[0]
        return bool(done) or replace

    def remove(self, name: str) -> bool:
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.keys.beat_entries, name)
        pipe.srem(self.keys.beat_disabled, name)
        pipe.hdel(self.keys.beat_last, name)
        pipe.hdel(self.keys.beat_runs, name)
        pipe.incr(self.keys.beat_rev)
        return bool(pipe.execute()[0])

    def set_enabled(self, name: str, enabled: bool) -> bool:
        """Enable or disable an entry; True if that changed something."""
        pipe = self.client.pipeline(transaction=True)
        (pipe.srem if enabled else pipe.sadd)(self.keys.beat_disabled, name)
        pipe.incr(self.keys.beat_rev)
        return bool(pipe.execute()[0])
