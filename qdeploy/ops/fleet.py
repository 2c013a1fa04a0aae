"""The fleet and its queues as Redis shows them, for `qdeploy status/queues/dead-letter/purge`,
`inspect` and the dashboard: who is online (heartbeats), queue depths, what is in flight, dead
letters, recent results.

Everything here reads, except the few writes an operator asks for (requeue or purge dead
letters, purge queues, store a raw message), which are one Lua script each
(`qdeploy/core/lua/`), so a message is never half-moved. Every key comes from `broker.keys`.

On Redis Cluster (`broker.cluster`) a queue's keys live in its own slot (`broker.keys.of(q)`):
the views iterate `ns:queues`, the set of every queue used, and read each queue's keys; a scan
(heartbeats, results) visits every primary; nothing here reads two slots in one command.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any


# -- reads ------------------------------------------------------------------------------------
# On one server every read goes over the broker's hot path (qdeploy's own connection): a master
# serving /metrics, or `qdeploy status`, never loads redis-py's client for them.
def _mget(broker, keys: list) -> list:
    """MGET, or on a cluster one per slot (redis-py's mget_nonatomic): keys of many slots."""
    if not keys:
        return []
    return broker.client.mget_nonatomic(keys) if broker.cluster else broker.fast.command("MGET", *keys)


def _scan(broker, match: str) -> Iterator[bytes]:
    """Every key matching `match`, page by page (on a cluster: on every primary, by redis-py's scan)."""
    if broker.cluster:
        return broker.client.scan_iter(match=match, count=1000)
    return broker.fast.scan(match)


def heartbeats(broker) -> dict[str, dict]:
    """Live heartbeats: owner -> the info its node last wrote (node, pid, pool, ...)."""
    prefix = broker.keys.prefix("heartbeat")
    keys = list(_scan(broker, f"{prefix}*"))
    out = {}
    for key, value in zip(keys, _mget(broker, keys), strict=True):
        if value is not None:
            try:
                info = json.loads(value)
            except ValueError:
                info = {}
            out[key.decode()[len(prefix):]] = info if isinstance(info, dict) else {}
    return out


def queue_names(broker) -> list[str]:
    """Every queue with ready or scheduled messages (on a cluster: every queue used)."""
    if broker.cluster:
        return broker.known_queues()
    names: set[str] = set()
    for kind in ("queue", "eta"):
        prefix = broker.keys.prefix(kind)
        names.update(k.decode()[len(prefix):] for k in _scan(broker, f"{prefix}*"))
    return sorted(names)


def queue_length(broker, queue: str) -> int:
    return int(broker.fast.command("LLEN", broker.keys.queue(queue)))


def scheduled(broker, queue: str) -> int:
    return int(broker.fast.command("ZCARD", broker.keys.eta(queue)))


def inflight(broker, cid: str) -> list[str]:
    if broker.cluster:
        return [x.decode() for q in broker.known_queues() for x in broker.client.lrange(broker.keys.of(q).inflight(cid), 0, -1)]
    return [x.decode() for x in broker.fast.command("LRANGE", broker.keys.inflight(cid), 0, -1)]


def _inflight_by_queue(broker) -> dict[str, dict[str, list[str]]]:
    """Cluster: queue -> consumer id -> ids it holds (from each queue's consumer registry)."""
    out: dict[str, dict[str, list[str]]] = {}
    for queue in broker.known_queues():
        qk = broker.keys.of(queue)
        cids = [c.decode() for c in broker.client.hkeys(qk.consumers)]
        pipe = broker.client.pipeline(transaction=False)
        for cid in cids:
            pipe.lrange(qk.inflight(cid), 0, -1)
        held = pipe.execute() if cids else []
        out[queue] = {cid: [i.decode() for i in ids] for cid, ids in zip(cids, held, strict=True) if ids}
    return out


def inflight_all(broker) -> dict[str, list[str]]:
    """consumer id -> ids it holds, for every consumer holding something."""
    if broker.cluster:
        merged: dict[str, list[str]] = {}
        for held in _inflight_by_queue(broker).values():
            for cid, ids in held.items():
                merged.setdefault(cid, []).extend(ids)
        return merged
    prefix = broker.keys.prefix("inflight")
    keys = list(_scan(broker, f"{prefix}*"))
    replies = broker.fast.pipeline([("LRANGE", key, 0, -1) for key in keys])
    return {k.decode()[len(prefix):]: [i.decode() for i in ids] for k, ids in zip(keys, replies, strict=True)}


def bodies(broker, ids: list[str]) -> dict[str, bytes | None]:
    if not ids:
        return {}
    if not broker.cluster:
        return dict(zip(ids, broker.fast.command("HMGET", broker.keys.msg, *ids), strict=True))
    found: dict[str, bytes | None] = dict.fromkeys(ids)
    for queue in broker.known_queues():  # a body lives in its queue's slot: look in each
        for task_id, body in zip(ids, broker.client.hmget(broker.keys.of(queue).msg, ids), strict=True):
            if body is not None:
                found[task_id] = body
    return found


def eta_entries(broker, queue: str, count: int = 100) -> list[tuple[str, float]]:
    return [(i.decode(), s) for i, s in broker.client.zrange(broker.keys.eta(queue), 0, count - 1, withscores=True)]


def _dead_raw(broker, count: int) -> list[bytes]:
    """The newest `count` raw dead-letter records (on a cluster: of every queue, newest first)."""
    if not broker.cluster:
        return broker.fast.command("LRANGE", broker.keys.dead, 0, count - 1)
    raws = [raw for q in broker.known_queues() for raw in broker.client.lrange(broker.keys.of(q).dead, 0, count - 1)]
    return sorted(raws, key=lambda raw: -(_field(raw, "time") or 0))[:count]


def dead_letters(broker, count: int = 100) -> list[dict]:
    """The newest dead-letter records. A record that is not JSON (or not UTF-8: an id pushed by
    hand) is shown with what can be read of it, never skipped and never fatal."""
    out = []
    for raw in _dead_raw(broker, count):
        try:
            record = json.loads(raw.decode("utf-8", "backslashreplace"))
        except ValueError:
            record = None
        out.append(record if isinstance(record, dict) else
                   {"id": None, "reason": f"unreadable dead-letter record {raw[:80]!r}"})
    return out


def dead_letter_count(broker) -> int:
    if broker.cluster:
        return sum(broker.client.llen(broker.keys.of(q).dead) for q in broker.known_queues())
    return int(broker.fast.command("LLEN", broker.keys.dead))


def result_records(broker, scan_limit: int = 2000) -> dict[str, dict]:
    """Up to `scan_limit` stored results (id -> record), for dashboards: a sample, not all."""
    prefix = broker.keys.prefix("result")
    keys = []
    for key in _scan(broker, f"{prefix}*"):
        keys.append(key)
        if len(keys) >= scan_limit:
            break
    out = {}
    for key, value in zip(keys, _mget(broker, keys), strict=True):
        try:
            out[key.decode()[len(prefix):]] = json.loads(value) if value else None
        except ValueError:
            continue
    return {k: v for k, v in out.items() if isinstance(v, dict)}


# -- the views ----------------------------------------------------------------------------------
def status(broker, now: float | None = None) -> list[dict]:
    """One row per online node (heartbeat not expired), masters and solo workers alike."""
    now = now or time.time()
    rows = []
    for owner, info in sorted(heartbeats(broker).items()):
        started = info.get("started")
        rows.append({
            "node": info.get("node") or owner.partition("@")[0], "owner": owner,
            "host": info.get("host") or owner.partition("@")[2], "pid": info.get("pid"),
            "pool": info.get("pool"), "kind": "prefork" if "pool" in info else "solo",
            "tasks_done": info.get("tasks_done"), "queues": info.get("queues") or [],
            "uptime": round(now - started, 1) if isinstance(started, (int, float)) else None,
            "last_seen": round(now - info["time"], 1) if isinstance(info.get("time"), (int, float)) else None,
        })
    return rows


def queue_stats(broker, dead_scan: int = 10000) -> list[dict]:
    """Per queue: ready, in-flight (reserved by a consumer, not acked), scheduled (ETA/retry
    countdown) and dead-lettered counts. Queues named by heartbeats appear even when empty."""
    names = set(queue_names(broker))
    for info in heartbeats(broker).values():
        names.update(q for q in info.get("queues") or [] if isinstance(q, str))
    if broker.cluster:
        return _cluster_queue_stats(broker, names)
    inflight: dict[str, int] = {}
    held = [i for ids in inflight_all(broker).values() for i in ids]
    for body in bodies(broker, held).values():
        queue = _field(body, "queue") or "?"
        inflight[queue] = inflight.get(queue, 0) + 1
    dead: dict[str, int] = {}
    for record in dead_letters(broker, dead_scan):
        queue = record.get("queue") or "?"
        dead[queue] = dead.get(queue, 0) + 1
    names.update(inflight, dead)
    ordered = sorted(names)
    counts = broker.fast.pipeline([command for name in ordered
                                   for command in (("LLEN", broker.keys.queue(name)), ("ZCARD", broker.keys.eta(name)))])
    return [{"queue": q, "ready": counts[2 * i], "in_flight": inflight.get(q, 0), "scheduled": counts[2 * i + 1],
             "dead": dead.get(q, 0)} for i, q in enumerate(ordered)]


def _cluster_queue_stats(broker, names: set[str]) -> list[dict]:
    held = _inflight_by_queue(broker)
    ordered = sorted(names | set(held))
    pipe = broker.client.pipeline(transaction=False)
    for name in ordered:
        qk = broker.keys.of(name)
        pipe.llen(qk.queue)
        pipe.zcard(qk.eta)
        pipe.llen(qk.dead)
    counts = pipe.execute() if ordered else []
    return [{"queue": q, "ready": counts[3 * i], "in_flight": sum(len(ids) for ids in held.get(q, {}).values()),
             "scheduled": counts[3 * i + 1], "dead": counts[3 * i + 2]} for i, q in enumerate(ordered)]


def dead_letter_list(broker, limit: int = 100) -> list[dict]:
    out = []
    for record in dead_letters(broker, limit):
        out.append({"id": record.get("id"), "queue": record.get("queue"), "task": _field(record.get("body"), "task"),
                    "reason": record.get("reason"), "consumer": record.get("consumer"), "time": record.get("time")})
    return out


def requeue_dead(broker, ids: list[str] | None) -> tuple[list[str], list[str]]:
    """Put dead letters back on their queue (all of them when `ids` is None). Returns (requeued,
    skipped): a record without a queue or body (malformed beyond repair) is skipped."""
    script = broker.script("cluster_requeue_dead" if broker.cluster else "requeue_dead")
    wanted = None if ids is None else set(ids)
    done, skipped = [], []
    for home, raw in _all_dead(broker):
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        task_id = record.get("id")
        if wanted is not None and task_id not in wanted:
            continue
        queue, body = record.get("queue"), record.get("body")
        if not isinstance(queue, str) or not isinstance(body, str) or not isinstance(task_id, str):
            skipped.append(str(task_id))
            continue
        if broker.cluster:  # back to the queue whose dead letters it was in (its own slot)
            qk = broker.keys.of(home)
            if script(keys=[qk.dead, qk.msg, qk.dlv, qk.queue], args=[raw, task_id, body]):
                broker.client.delete(broker.keys.result(task_id))
                done.append(task_id)
        elif script(keys=[broker.keys.dead, broker.keys.msg, broker.keys.dlv], args=[broker.ns, raw, task_id, queue, body]):
            done.append(task_id)
    if wanted is not None:
        skipped += sorted(wanted - set(done) - set(skipped))
    return done, skipped


def _all_dead(broker) -> list[tuple[str | None, bytes]]:
    if not broker.cluster:
        return [(None, raw) for raw in broker.client.lrange(broker.keys.dead, 0, -1)]
    return [(q, raw) for q in broker.known_queues() for raw in broker.client.lrange(broker.keys.of(q).dead, 0, -1)]


def purge_dead(broker) -> int:
    if broker.cluster:
        total = 0
        for queue in broker.known_queues():
            pipe = broker.client.pipeline(transaction=True)
            pipe.llen(broker.keys.of(queue).dead)
            pipe.delete(broker.keys.of(queue).dead)
            total += int(pipe.execute()[0])
        return total
    pipe = broker.client.pipeline(transaction=True)
    pipe.llen(broker.keys.dead)
    pipe.delete(broker.keys.dead)
    return int(pipe.execute()[0])


def purge(broker, queues: list[str]) -> dict[str, int]:
    """Drop every ready and scheduled message of `queues` (bodies included); in-flight messages
    are left to finish. Returns how many messages each queue lost."""
    if not queues:
        return {}
    script = broker.script("purge")
    k = broker.keys
    if broker.cluster:  # one script per queue: each in its own slot
        return {q: int(script(keys=[(qk := k.of(q)).msg, qk.dlv, qk.queue, qk.eta], args=[1])[0]) for q in queues}
    keys = [k.msg, k.dlv] + [k.queue(q) for q in queues] + [k.eta(q) for q in queues]
    return dict(zip(queues, (int(n) for n in script(keys=keys, args=[len(queues)])), strict=True))


def recent_tasks(broker, limit: int = 20, scan_limit: int = 2000) -> dict[str, list[dict]]:
    """The latest results (from a bounded sample of stored results) and the latest failures."""
    rows: list[dict[str, Any]] = []
    for task_id, rec in result_records(broker, scan_limit).items():
        when = rec.get("date_done") or rec.get("received")
        rows.append({"id": task_id, "task": rec.get("task"), "state": rec.get("state"), "worker": rec.get("worker"),
                     "time": when if isinstance(when, (int, float)) else 0,
                     "error": f"{rec.get('exc_type')}: {rec.get('exc')}" if rec.get("exc_type") else rec.get("reason")})
    rows.sort(key=lambda r: r["time"], reverse=True)
    failed = [r for r in rows if r["state"] in ("FAILURE", "REVOKED")]
    return {"recent": rows[:limit], "failed": failed[:limit]}


def publish_raw(broker, queue: str, task_id: str, body: bytes | str) -> None:
    """Store any bytes as a message (tests and repair tools; producers use `Broker.publish`)."""
    qk = broker.keys.of(queue)
    if broker.cluster:
        broker.register(queue)
    pipe = broker.client.pipeline(transaction=True)
    pipe.hset(qk.msg, task_id, body)
    pipe.lpush(qk.queue, task_id)
    pipe.execute()


def _field(body, name: str):
    try:
        value = json.loads(body) if body else None
    except (ValueError, TypeError):
        return None
    return value.get(name) if isinstance(value, dict) else None
