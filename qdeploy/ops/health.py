"""Is a worker node healthy? Progress, not "the pid exists" (celery/celery#4079).

Two halves give the same answer:

* `verdict(master)` runs in the master (each heartbeat, and for `/healthz`): the broker has not
  been failing for longer than `health_reconnect_limit`; no serving child is stopped (SIGSTOP,
  a debugger); no idle child has gone `health_stuck_after` seconds without polling Redis (its
  consumer loop writes a beacon each turn, see worker/heartbeat.py `Beacons`); no task runs
  past its hard time limit by more than that. An idle node is healthy: idle consumers poll.
  The master writes the verdict into its heartbeat and sends systemd's WATCHDOG=1 only while
  it is "ok".
* `check(broker, owner)` runs in `qdeploy health`: the broker answers; the node's heartbeat
  exists (else: master gone); it is fresh (a stopped or wedged master stops beating); on this
  host its pid is alive; and the master's own verdict is "ok".
"""

from __future__ import annotations

import json
import time

from qdeploy.core.connection import BROKER_DOWN, RedisError

OK = "ok"
HEARTBEAT_EVERY = 2.0  # the master's beat (worker/master.py)
STALE_AFTER = 10.0  # seconds without a beat: the master is stopped or wedged
STOPPED_STATES = ("T", "t")  # /proc/<pid>/stat: stopped by a signal, or traced


def proc_state(pid: int) -> str:
    """One letter from /proc/<pid>/stat (R, S, D, T, Z...), or "" when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return ""
    return data[data.rfind(b")") + 2:][:1].decode("ascii", "replace")


def verdict(master, now: float | None = None) -> str:
    """"ok", or one line saying why this node is not healthy."""
    now = time.monotonic() if now is None else now
    opts = master.opts
    limit = opts.health_reconnect_limit
    if master.beat_failing_since and now - master.beat_failing_since > limit:
        return f"broker unreachable for {now - master.beat_failing_since:.0f}s (reconnecting; limit {limit:g}s)"
    stuck_after = opts.health_stuck_after
    for child in sorted(master.children.values(), key=lambda c: c.slot):
        if child.adopted or child.waiting or not child.up or not child.alive:
            continue  # finishing after a reload, a spare waiting for its slot, still booting
        if proc_state(child.pid) in STOPPED_STATES:
            return f"child {child.slot} (pid {child.pid}) is stopped (SIGSTOP or a debugger): it consumes nothing"
        if not stuck_after:
            continue
        for task in child.tasks.values():
            if task.deadline and now - task.deadline > stuck_after:
                return (f"child {child.slot} (pid {child.pid}) stuck: task {task.id} is {now - task.deadline:.0f}s "
                        "past its time limit")
        if not child.tasks and child.serving:
            polled = master.beacons.last(child.beacon) if child.beacon is not None else 0.0
            since = now - max(polled, child.idle_since)
            if since > stuck_after:
                return (f"child {child.slot} (pid {child.pid}) stuck: idle but has not polled Redis "
                        f"for {since:.0f}s (limit {stuck_after:g}s)")
    return OK


def check(broker, owner: str, host: str | None = None, now: float | None = None) -> str:
    """What `qdeploy health` says about node `owner` (node@host): "ok" or the reason."""
    import socket

    try:
        raw = broker.fast.command("GET", broker.keys.heartbeat(owner))
    except BROKER_DOWN + (RedisError, OSError) as exc:
        return f"broker unreachable: {exc}"
    if raw is None:
        return f"master gone: no heartbeat from {owner}"
    try:
        info = json.loads(raw)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        return f"heartbeat of {owner} is not a JSON object"
    now = time.time() if now is None else now
    beat = info.get("time")
    if not isinstance(beat, (int, float)) or isinstance(beat, bool):
        return f"heartbeat of {owner} has no time"
    age = now - beat
    if age > STALE_AFTER:
        return f"heartbeat stale: the master last beat {age:.0f}s ago (stopped or wedged)"
    pid = info.get("pid")
    here = (host or socket.gethostname()) == owner.partition("@")[2]
    if here and isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and proc_state(pid) in ("", "Z"):
        return f"master gone: pid {pid} is not running"
    if here and isinstance(pid, int) and pid > 0 and proc_state(pid) in STOPPED_STATES:
        return f"master (pid {pid}) is stopped (SIGSTOP or a debugger)"
    health = info.get("health")
    if health is None:
        return OK  # a solo worker, or a master older than health checks: beating is all we know
    if not isinstance(health, str):
        return f"heartbeat of {owner} has a malformed health field"
    return health if health == OK else "".join(c if c.isprintable() else "?" for c in health)[:300]


def http_answer(master) -> tuple[int, str, bytes]:
    """`/healthz`: 200 "ok", or 503 and the reason."""
    why = verdict(master)
    return (200 if why == OK else 503), "text/plain; charset=utf-8", (why + "\n").encode()
