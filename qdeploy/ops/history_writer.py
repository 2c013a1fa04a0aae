"""The master's side of the task history: what its children's event lines say, written in batches.

The master calls `started` (an `S` line), `finished` (a `D` line, or a task it killed at its
hard time limit), `lost` (a child died with the task: requeued, or revoked --terminate) and
`flush` on every turn of its loop; `due_in` joins the selector's timeout. Nothing reaches Redis
before `flush`, which writes every FLUSH_EVERY seconds at most, one round trip per batch (one
EVALSHA of `history.lua`). A task that starts and ends within a batch is one record, written
once.

Cheap per task, because the master does it for every task: `started` keeps a reference to the
`Task` the event line made (`worker/state.py`, which a `D` line then completes in place), and
the record is built at flush time as tab-separated text (history.FIELDS), the child's fields
passed on as it sent them (readers check every field: history.decode). Sent with qdeploy's own
RESP packing on a connection of its own (HotPath; on Redis Cluster ClusterHotPath, which sends
the script to the primary of the history's slot, `{ns:hist}`, that its declared keys name).

The writer never blocks or kills the master: its connection has a short timeout and no retries;
a broker that is down, or full (OOM, a read-only replica), keeps the batch and tries again with
back-off (0.5 s doubling to 30 s). What waits for Redis is bounded (MAX_QUEUED records): beyond,
the oldest batch is dropped and counted (one warning per outage, one line when it writes again).
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from collections import deque

from qdeploy.core.connection import BROKER_DOWN, HotPath, RedisError, ResponseError, Script, connect, refused_for_now
from qdeploy.ops import history
from qdeploy.ops.metrics import BUCKETS, MAX_TASK_NAMES

log = logging.getLogger("qdeploy.worker")

FLUSH_EVERY = 0.2  # seconds a record may wait in the master before it is written
MAX_BATCH = 2000  # records per EVALSHA (more wait for the next turn, which comes at once)
MAX_QUEUED = 20_000  # records kept while Redis cannot take them; beyond, the oldest batch goes
MAX_OPEN = 10_000  # tasks written as STARTED whose end is still to come (a node runs far fewer)
MAX_ATTEMPTS = 20
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
TIMEOUT = 1.0  # seconds a history write may take before it counts as failed
_DOWN = BROKER_DOWN + (OSError,)
_STATE = history.OUTCOME_STATE
_TAIL = "\t" * (history.CHILD_FIELDS - 1)  # the fields of a child that sent none
_FINAL = frozenset({"SUCCESS", "FAILURE", "RETRY"})  # states of a delivery that ran to its end


class HistoryWriter:
    def __init__(self, broker, owner: str, cap: int = history.DEFAULT_MAX, args: str = "failures"):
        self.broker, self.owner, self.cap, self.keep_args = broker, owner, cap, args != "none"
        self.args_mode = args  # the S line may carry every task's arguments (for events): kept as this says
        self.enabled = cap > 0
        self.pending: dict[str, tuple] = {}  # id -> (Task, child pid): written at the next flush
        self.open: dict[str, tuple] = {}  # written as STARTED, their end still to come
        self.ends: dict[str, tuple] = {}  # id -> (state, exc, killed, unix time): the master's own verdicts
        self.earlier: dict[str, list[dict]] = {}  # id -> deliveries that ended within this batch
        self.queued: deque[tuple[list, list]] = deque()  # (records, increments) Redis has not taken yet
        self.queued_records = 0
        self.next_flush = 0.0
        self.retry_at = 0.0
        self.backoff = BACKOFF_MIN
        self.failing = False
        self.dropped = 0
        self.written = 0
        self.names: set[str] = set()  # task names in the per-minute counters (bounded like metrics')
        self.floor = -1  # run time (us) a task must beat to enter the slowest set (history.lua says)
        self._hot: HotPath | None = None
        self._script: Script | None = None

    # -- what the master saw -----------------------------------------------------------------
    def started(self, child, task) -> None:
        if not self.enabled:
            return
        pending = self.pending
        if not pending:
            self.next_flush = time.monotonic() + FLUSH_EVERY
        before = pending.get(task.id)
        if before is not None:  # the same id again within one batch: a retry, a redelivery
            self._earlier(task.id, before)
        pending[task.id] = (task, child.pid)

    def finished(self, child, task, killed: str = "") -> None:
        """A `D` line (the Task is already complete: state.py filled it in), or the master's
        own verdict on a task it killed (`killed`: why)."""
        if not self.enabled:
            return
        if killed:
            self.ends[task.id] = ("FAILURE", task.detail, killed, time.time())
        self._keep(child, task)

    def keep_call(self, task) -> None:
        """A task the master is about to fail (its hard time limit): its child never sent its
        arguments, so they are read from its envelope, still in Redis until the master acks it."""
        if not self.enabled or not self.keep_args or task.call:
            return
        try:
            msgs = self.broker.keys.of(task.queue).msg  # its queue's (on Redis Cluster: in the queue's slot)
            raw = self._store().command("HGET", msgs, task.id)
            env = json.loads(raw) if raw else None
            if isinstance(env, dict) and isinstance(env.get("args"), list) and isinstance(env.get("kwargs"), dict):
                call = json.dumps([env["args"], env["kwargs"]], separators=(",", ":"), ensure_ascii=True)
                task.call = call if len(call) <= history.ARGS_MAX else "~" + call[:500]
        except (*_DOWN, RedisError, ValueError, TypeError, RecursionError) as exc:
            log.debug("history: arguments of %s not read: %s", task.id, exc)

    def lost(self, child, task, why: str, revoked: bool = False) -> None:
        """The child running `task` died before it ended: requeued (PENDING), or REVOKED when
        it was killed by `revoke --terminate`."""
        if not self.enabled:
            return
        exc = "Terminated: revoked" if revoked else f"WorkerLostError: {why}; requeued"
        self.ends[task.id] = ("REVOKED" if revoked else "PENDING", exc, why, time.time())
        self._keep(child, task)

    def _keep(self, child, task) -> None:
        if task.id in self.pending:
            return  # started in this batch: the same Task object, complete now
        entry = self.open.pop(task.id, None)
        if entry is None:  # started before this master image (HUP), or before the history was on
            entry = (task, child.pid if child is not None else 0)
        if not self.pending:
            self.next_flush = time.monotonic() + FLUSH_EVERY
        self.pending[task.id] = entry

    def _earlier(self, task_id: str, entry: tuple) -> None:
        task, pid = entry
        offset = time.time() - time.monotonic()
        state, exc, killed, done = self._end(task, offset)
        # times as text of whole microseconds, as history.lua keeps them (history.decode reads them)
        attempt = {"state": state, "node": self.owner, "pid": pid, "started": str(int((task.started + offset) * 1e6))}
        runtime = task.runtime if state in _FINAL else None
        for key, value in (("done", done), ("runtime", runtime), ("exc", exc), ("killed", killed)):
            if value:
                attempt[key] = str(int(value * 1e6)) if isinstance(value, float) else value
        self.earlier[task_id] = [*self.earlier.get(task_id, ()), attempt][-MAX_ATTEMPTS:]

    def _end(self, task, offset: float) -> tuple[str, str, str, float | None]:
        """(state, exception, killed, done time) of what the master saw of `task` so far."""
        end = self.ends.pop(task.id, None)
        if end is not None:
            return end
        state = _STATE.get(task.outcome)
        if state is None:  # not ended yet (or a child from before a reload that did not say)
            return "STARTED", "", "", None
        return state, task.detail, "", task.started + offset + (task.runtime or 0.0)

    # -- writing -----------------------------------------------------------------------------
    def due_in(self) -> float:
        """Seconds until `flush` has something to do (for the selector's timeout)."""
        if not self.enabled or not (self.pending or self.queued):
            return float("inf")
        at = self.next_flush if self.pending else self.retry_at
        return max(0.0, max(at, self.retry_at) - time.monotonic())

    def flush(self, force: bool = False) -> None:
        if not self.enabled or not (self.pending or self.queued):
            return
        now = time.monotonic()
        if not force and (now < self.next_flush or now < self.retry_at):
            return
        if self.pending:
            self._queue()
        if force and now < self.retry_at:
            return  # shutting down while Redis is failing: do not wait for it
        while self.queued:
            records, increments = self.queued[0]
            try:
                self._send(records, increments)
            except (*_DOWN, RedisError) as exc:
                self._failed(exc)
                return
            self.queued.popleft()
            self.queued_records -= len(records)
            self.written += len(records)
        self.backoff, self.retry_at = BACKOFF_MIN, 0.0
        if self.failing:
            log.info("history: writing again%s", f" ({self.dropped} record(s) were dropped)" if self.dropped else "")
            self.failing, self.dropped = False, 0

    def _store(self) -> HotPath:
        """The writer's own connection (a slow batch never holds up the master's heartbeat)."""
        if self._hot is None:
            self._hot = HotPath(connect(self.broker.url, retries=0, socket_timeout=TIMEOUT, connect_timeout=TIMEOUT))
            self._script = Script(self._hot, history.lua_source())
        return self._hot

    def _send(self, records: list, increments: list) -> None:
        hot = self._store()
        ns = self.broker.ns
        reply = hot.evalsha(self._script, 4, *history.script_keys(ns),
                            *history.script_args(ns, self.cap, records, increments, self.floor))
        try:
            self.floor = int(float(reply[2]))
        except (TypeError, ValueError, IndexError):
            self.floor = -1

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, ResponseError) and not refused_for_now(exc):
            # Redis will never take this batch (a key of the wrong type...): drop it, keep going.
            records, _ = self.queued.popleft()
            self.queued_records -= len(records)
            log.error("history: Redis refused a batch (%s); %d record(s) dropped", exc, len(records))
            return
        if not self.failing:
            log.warning("history: cannot write (%s: %s); keeping up to %d records and retrying",
                        type(exc).__name__, exc, MAX_QUEUED)
            self.failing = True
        self.retry_at = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        if isinstance(exc, _DOWN) and self._hot is not None:
            self._hot.close()  # a fresh connection next time

    def _queue(self) -> None:
        """This batch's record lines (history.encode's format, built here for speed: this runs
        for every task) and per-minute increments, queued for `_send`."""
        pending, self.pending = self.pending, {}
        offset = time.time() - time.monotonic()  # monotonic -> unix time, once per batch
        owner, opened, earlier = self.owner, self.open, self.earlier
        records: list = []
        counts: dict[tuple, int] = {}
        for task_id, entry in pending.items():
            task, pid = entry
            state, exc, killed, done = self._end(task, offset)
            started = int((task.started + offset) * 1e6)
            runtime = int(task.runtime * 1e6) if task.runtime is not None and state in _FINAL else None
            attempts = _json(earlier.pop(task_id)) if earlier and task_id in earlier else ""
            extra = task.extra if task.extra.count("\t") == history.CHILD_FIELDS - 1 else _TAIL
            if task.call and self.keep_args:  # a failure's arguments, from its A line
                extra = extra[:extra.rfind("\t") + 1] + task.call
            elif extra[-1:] != "\t" and (self.args_mode == "none"
                                         or (self.args_mode == "failures" and state not in ("FAILURE", "RETRY"))):
                extra = extra[:extra.rfind("\t") + 1]  # arguments the S line carried for the events only
            wait = task.wait
            combo = f"{state}\t{owner}\t{task.name or 'unknown'}"
            records.append((combo, task_id,
                            f"{combo}\t{task.queue}\t{pid}\t{started}\t{'' if done is None else int(done * 1e6)}\t"
                            f"{'' if runtime is None else runtime}\t{exc}\t{killed}\t{attempts}\t"
                            f"{'' if wait is None else started - int(wait * 1e6)}\t{extra}", started, runtime))
            if state == "STARTED":
                opened[task_id] = entry
                if len(opened) > MAX_OPEN:
                    opened.pop(next(iter(opened)))
            elif runtime is not None and done is not None:
                key = (int(done // 60), task.name, state, bisect.bisect_left(BUCKETS, task.runtime))
                counts[key] = counts.get(key, 0) + 1
        increments = self._increments(counts)
        for start in range(0, max(len(records), 1), MAX_BATCH):
            part = records[start:start + MAX_BATCH]
            self.queued.append((part, increments if start == 0 else []))
            self.queued_records += len(part)
        while self.queued_records > MAX_QUEUED and len(self.queued) > 1:
            gone = self.queued.popleft()
            self.queued_records -= len(gone[0])
            self.dropped += len(gone[0])

    def _increments(self, counts: dict) -> list[tuple]:
        """Per-minute counters: outcomes (all, and per task name) and run-time buckets per name
        (the charts' throughput, failures and percentiles). Names beyond MAX_TASK_NAMES: other."""
        fields: dict[tuple[int, str], int] = {}
        for (minute, name, state, bucket), n in counts.items():
            if name not in self.names:
                if len(self.names) < MAX_TASK_NAMES:
                    self.names.add(name)
                else:
                    name = "other"
            outcome = state.lower()
            for field in (outcome, f"{outcome}|{name}", f"b|{name}|{bucket}"):
                fields[(minute, field)] = fields.get((minute, field), 0) + n
        return [(minute, field, n) for (minute, field), n in fields.items()]


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False, default=str)
