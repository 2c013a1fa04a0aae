"""The beat service: send periodic tasks, from any number of beat processes, each run once.

Every beat runs the same loop (`Beat.tick`): reload dynamic entries when their revision changed,
take or renew the leader lock, and, only as the leader, send what is due. The Redis side
(lock, anchors, atomic dispatch) is `qdeploy.beat.store`; the schedule maths is
`qdeploy.beat.schedule`; the daemon boot (pid file, detach, privileges) is `qdeploy.beat.boot`.

Time comes from a clock object, so tests can run hours of simulated time in a second:

    clock.now()        aware datetime (UTC): what schedules are evaluated against
    clock.lock_time()  unix seconds for the lock, or None: let the Redis server's clock decide
    clock.sleep(s)     wait up to s seconds (the service clock wakes early on a signal)

Misfires: an entry whose slot passed while no beat was leading runs once if its latest missed
slot is at most `misfire_grace` old (0 = no limit), else the missed slots are skipped and logged
(`schedule.catch_up`). Several missed slots never pile up into several runs.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo

from qdeploy.beat.entry import Entry, EntryError, from_json
from qdeploy.beat.schedule import catch_up
from qdeploy.beat.store import ALREADY_DONE, NOT_LEADER, BeatStore, run_id
from qdeploy.core import message

log = logging.getLogger("qdeploy.beat")
UTC = UTC


class SystemClock:
    """The real clock; `sleep` returns early when `wakeup_fd` (a signal's wake-up pipe) is readable."""

    def __init__(self, wakeup_fd: int | None = None):
        self.selector = selectors.DefaultSelector()
        self.tickers: list[Callable[[], None]] = []  # called while sleeping (the metrics server's timeouts)
        if wakeup_fd is not None:
            self.selector.register(wakeup_fd, selectors.EVENT_READ)

    def now(self) -> datetime:
        return datetime.now(UTC)

    def lock_time(self) -> float | None:
        return None

    def sleep(self, seconds: float) -> None:
        """Sleep, serving the metrics server's sockets (their `data` is a callable) meanwhile;
        a signal (the wake-up fd) ends the sleep early, a scrape does not."""
        deadline = time.monotonic() + seconds
        while True:
            woke = False
            for key, mask in self.selector.select(max(0.0, deadline - time.monotonic())):
                if callable(key.data):
                    key.data(mask)
                    continue
                woke = True
                try:
                    while os.read(key.fd, 512):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
            for tick in self.tickers:
                tick()
            if woke or time.monotonic() >= deadline:
                return


class Beat:
    """One beat process's scheduler state; `tick()` does one round and says how long to sleep."""

    def __init__(self, app, store: BeatStore, *, static: dict[str, Entry], tz: tzinfo,
                 clock=None, lock_timeout: float = 30.0, max_interval: float = 5.0,
                 misfire_grace: float = 300.0, holder: str | None = None):
        self.app, self.store, self.static, self.tz = app, store, dict(static), tz
        self.clock = clock or SystemClock()
        self.lock_timeout, self.max_interval = lock_timeout, max_interval
        self.misfire_grace = misfire_grace
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.token = uuid.uuid4().hex
        self.is_leader = False
        self.revision: int | None = None
        self.entries: dict[str, Entry] = dict(static)
        self.disabled: set[str] = set()
        self.sent = 0
        self.runs: dict[str, int] = {}  # entry -> runs this process sent (qdeploy_beat_runs_total)
        self.next_runs: dict[str, datetime] = {}
        self._reported: set[str] = set()  # bad dynamic entries already logged

    # -- one round -------------------------------------------------------------------------------
    def tick(self) -> float:
        """Reload, lead, send what is due; returns the seconds until the next round."""
        self.refresh()
        left = self.lead()
        if not self.is_leader:
            return max(0.01, min(self.max_interval, left + 0.01))
        now = self.clock.now()
        wait = self.max_interval
        active = self.active()
        anchors = self.store.anchors([e.name for e in active])
        for entry in active:
            nxt = self.run_entry(entry, anchors[entry.name], now)
            if nxt is not None:
                self.next_runs[entry.name] = nxt
                wait = min(wait, (nxt - now).total_seconds())
            if not self.is_leader:
                break
        return max(0.0, min(wait, self.lock_timeout / 3))

    def active(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.enabled and e.name not in self.disabled]

    def lead(self) -> float:
        """Take or renew the lock; returns the seconds until a follower should try again."""
        left = self.store.acquire(self.token, self.lock_timeout, self.holder, self.clock.lock_time())
        if left == 0.0 and not self.is_leader:
            log.info("beat %s is now the leader (%d entries)", self.holder, len(self.active()))
        elif left and self.is_leader:
            log.warning("beat %s lost the leader lock; standing by", self.holder)
        self.is_leader = left == 0.0
        return left

    def resign(self) -> None:
        """Warm shutdown: give the lock up so another beat takes over at once."""
        if self.is_leader and self.store.release(self.token):
            log.info("beat %s released the leader lock", self.holder)
        self.is_leader = False

    # -- entries ---------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> bool:
        """Reload dynamic entries and the disabled set when their revision changed."""
        if not force and self.revision is not None and self.store.revision() == self.revision:
            return False
        revision, stored, disabled = self.store.load()
        entries = dict(self.static)
        for name, spec in stored.items():
            try:
                entry = from_json(name, spec, tz=self.tz)
            except EntryError as exc:
                self._report(f"bad:{revision}:{name}", "skipping %s", exc)
                continue
            if name in self.static:
                self._report(f"clash:{name}", "redis schedule entry %r is ignored: the %s defines an "
                             "entry of that name", name, self.static[name].source)
                continue
            entries[name] = entry
        if self.revision is not None:
            log.info("schedule changed (revision %d): %d entries, %d disabled", revision,
                     len(entries), len(disabled & set(entries)))
        self.revision, self.entries, self.disabled = revision, entries, disabled
        return True

    def replace_static(self, static: dict[str, Entry]) -> None:
        self.static = dict(static)
        self.refresh(force=True)

    def _report(self, key: str, fmt: str, *args) -> None:
        if key not in self._reported:
            self._reported.add(key)
            log.error(fmt, *args)

    # -- sending ---------------------------------------------------------------------------------
    def run_entry(self, entry: Entry, last: datetime | None, now: datetime) -> datetime | None:
        """Send `entry` if a slot after its anchor `last` is due (at most once); returns its next
        fire time."""
        if last is None:  # new entry: anchored now, first fire one period from now (as Celery)
            if self.store.init_anchor(self.token, entry.name, now) == NOT_LEADER:
                self.is_leader = False
            return entry.schedule.next_after(now)
        grace = self.misfire_grace if entry.misfire_grace is None else entry.misfire_grace
        due = catch_up(entry.schedule, last, now, grace or None)
        if due.slot is None:
            return due.next_run
        if due.run:
            single = entry.schedule.next_after(due.slot) > now
            self.send(entry, due.slot, due.slot if single else now, now, late=not single)
        else:
            self.skip(entry, due.slot, now, grace)
        return due.next_run

    def send(self, entry: Entry, slot: datetime, anchor: datetime, now: datetime, late: bool) -> bool:
        opts = dict(entry.options)
        expires = opts.pop("expires", None)
        env = self.app.envelope(entry.task, entry.args, entry.kwargs,
                                task_id=run_id(self.store.ns, entry.name, slot),
                                expires=None if expires is None else now + timedelta(seconds=expires),
                                **opts)
        record = {"slot": slot.isoformat(), "id": env.id, "at": now.timestamp(), "by": self.holder,
                  "skipped": False}
        result = self.store.dispatch(self.token, entry.name, slot, anchor, record, env, message.encode(env))
        if result == NOT_LEADER:
            self.is_leader = False
            log.warning("not sending %s (slot %s): this beat is no longer the leader", entry.name, _show(slot))
            return False
        if result == ALREADY_DONE:
            log.info("%s (slot %s) was already sent by another beat", entry.name, _show(slot))
            return False
        self.sent += 1
        self.runs[entry.name] = self.runs.get(entry.name, 0) + 1
        log.info("sent %s: %s[%s] to %s (slot %s%s)", entry.name, entry.task, env.id, env.queue,
                 _show(slot), ", catching up on missed slots" if late else "")
        return True

    def skip(self, entry: Entry, slot: datetime, now: datetime, grace: float) -> None:
        record = {"slot": slot.isoformat(), "id": None, "at": now.timestamp(), "by": self.holder,
                  "skipped": True}
        result = self.store.dispatch(self.token, entry.name, slot, now, record)
        if result == NOT_LEADER:
            self.is_leader = False
        elif result != ALREADY_DONE:
            log.warning("skipped %s: missed its run at %s by more than the misfire grace (%gs)",
                        entry.name, _show(slot), grace)

    # -- the service loop ------------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool], on_tick: Callable[[float], float] | None = None) -> None:
        """Tick until `should_stop()`; `on_tick(wait)` may shorten the wait (watchdog, status)."""
        while not should_stop():
            try:
                wait = self.tick()
            except Exception as exc:  # noqa: BLE001 - Redis down, ...: keep trying, never double-send
                if self.is_leader:
                    log.warning("beat round failed (%s: %s); retrying", type(exc).__name__, exc)
                else:
                    log.warning("cannot reach the broker (%s: %s); retrying", type(exc).__name__, exc)
                wait = min(1.0, self.max_interval)
            if on_tick is not None:
                wait = on_tick(wait)
            if not should_stop():
                self.clock.sleep(wait)

    def status(self) -> str:
        active = self.active()
        if not self.is_leader:
            return f"standby: {len(active)} entries"
        upcoming = sorted((t, n) for n, t in self.next_runs.items() if n in {e.name for e in active})
        head = f", next {upcoming[0][1]} at {_show(upcoming[0][0])}" if upcoming else ""
        return f"leader: {len(active)} entries, {self.sent} sent{head}"


def _show(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds" if dt.microsecond == 0 else "microseconds")
