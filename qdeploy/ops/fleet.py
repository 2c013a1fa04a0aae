"""The fleet and its queues as Redis shows them, for `qdeploy status/queues/dead-letter/purge` and
the dashboard: who is online (heartbeats), queue depths, dead letters, recent results.

Reads go through `Broker`'s read-only helpers; the few writes an operator asks for (requeue or
purge dead letters, purge queues) are one Lua script each, so a message is never half-moved.
"""

from __future__ import annotations

import json
import time

# KEYS: dead, msgs, dlv. ARGV: ns, raw record, id, queue, body. 1 if requeued, 0 if already gone.
REQUEUE_DEAD = """
if redis.call('LREM', KEYS[1], 1, ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('DEL', ARGV[1] .. ':r:' .. ARGV[3])
redis.call('LPUSH', ARGV[1] .. ':q:' .. ARGV[4], ARGV[3])
return 1
"""

# KEYS: msgs, dlv, queue lists..., eta zsets... ARGV: n. Returns messages removed per queue.
PURGE = """
local n = tonumber(ARGV[1])
local out = {}
for i = 1, n do
  local ids = redis.call('LRANGE', KEYS[2 + i], 0, -1)
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2 + n + i], 0, -1)) do table.insert(ids, id) end
  for s = 1, #ids, 1000 do
    local chunk = {unpack(ids, s, math.min(s + 999, #ids))}
    redis.call('HDEL', KEYS[1], unpack(chunk))
    redis.call('HDEL', KEYS[2], unpack(chunk))
  end
  redis.call('DEL', KEYS[2 + i], KEYS[2 + n + i])
  out[i] = #ids
end
return out
"""


def status(broker, now: float | None = None) -> list[dict]:
    """One row per online node (heartbeat not expired), masters and solo workers alike."""
    now = now or time.time()
    rows = []
    for owner, info in sorted(broker.heartbeats().items()):
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
    names = set(broker.queue_names())
    for info in broker.heartbeats().values():
        names.update(q for q in info.get("queues") or [] if isinstance(q, str))
    inflight: dict[str, int] = {}
    held = [i for ids in broker.inflight_all().values() for i in ids]
    for body in broker.bodies(held).values():
        queue = _field(body, "queue") or "?"
        inflight[queue] = inflight.get(queue, 0) + 1
    dead: dict[str, int] = {}
    for record in broker.dead_letters(dead_scan):
        queue = record.get("queue") or "?"
        dead[queue] = dead.get(queue, 0) + 1
    names.update(inflight, dead)
    pipe = broker.client.pipeline(transaction=False)
    ordered = sorted(names)
    for name in ordered:
        pipe.llen(broker.queue_key(name))
        pipe.zcard(broker.eta_key(name))
    counts = pipe.execute() if ordered else []
    return [{"queue": q, "ready": counts[2 * i], "in_flight": inflight.get(q, 0), "scheduled": counts[2 * i + 1],
             "dead": dead.get(q, 0)} for i, q in enumerate(ordered)]


def dead_letter_list(broker, limit: int = 100) -> list[dict]:
    out = []
    for record in broker.dead_letters(limit):
        out.append({"id": record.get("id"), "queue": record.get("queue"), "task": _field(record.get("body"), "task"),
                    "reason": record.get("reason"), "consumer": record.get("consumer"), "time": record.get("time")})
    return out


def requeue_dead(broker, ids: list[str] | None) -> tuple[list[str], list[str]]:
    """Put dead letters back on their queue (all of them when `ids` is None). Returns (requeued,
    skipped): a record without a queue or body (malformed beyond repair) is skipped."""
    script = broker.client.register_script(REQUEUE_DEAD)
    wanted = None if ids is None else set(ids)
    done, skipped = [], []
    for raw in broker.client.lrange(broker.k_dead, 0, -1):
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
        if script(keys=[broker.k_dead, broker.k_msg, broker.k_dlv], args=[broker.ns, raw, task_id, queue, body]):
            done.append(task_id)
    if wanted is not None:
        skipped += sorted(wanted - set(done) - set(skipped))
    return done, skipped


def purge_dead(broker) -> int:
    pipe = broker.client.pipeline(transaction=True)
    pipe.llen(broker.k_dead)
    pipe.delete(broker.k_dead)
    return int(pipe.execute()[0])


def purge(broker, queues: list[str]) -> dict[str, int]:
    """Drop every ready and scheduled message of `queues` (bodies included); in-flight messages
    are left to finish. Returns how many messages each queue lost."""
    if not queues:
        return {}
    script = broker.client.register_script(PURGE)
    keys = [broker.k_msg, broker.k_dlv] + [broker.queue_key(q) for q in queues] + [broker.eta_key(q) for q in queues]
    return dict(zip(queues, (int(n) for n in script(keys=keys, args=[len(queues)]))))


def recent_tasks(broker, limit: int = 20, scan_limit: int = 2000) -> dict[str, list[dict]]:
    """The latest results (from a bounded sample of stored results) and the latest failures."""
    rows = []
    for task_id, rec in broker.result_records(scan_limit).items():
        when = rec.get("date_done") or rec.get("received")
        rows.append({"id": task_id, "task": rec.get("task"), "state": rec.get("state"), "worker": rec.get("worker"),
                     "time": when if isinstance(when, (int, float)) else 0,
                     "error": f"{rec.get('exc_type')}: {rec.get('exc')}" if rec.get("exc_type") else rec.get("reason")})
    rows.sort(key=lambda r: r["time"], reverse=True)
    failed = [r for r in rows if r["state"] in ("FAILURE", "REVOKED")]
    return {"recent": rows[:limit], "failed": failed[:limit]}


def _field(body, name: str):
    try:
        value = json.loads(body) if body else None
    except (ValueError, TypeError):
        return None
    return value.get(name) if isinstance(value, dict) else None
