"""Several beats against one private Redis, on a simulated clock: leader election, failover
after a killed leader, misfires, DST days, dynamic edits. Each due run is sent exactly once."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from qdeploy.core import message
from qdeploy.beat.scheduler import Beat
from qdeploy.beat.entry import dynamic_spec, load_entries
from qdeploy.beat.store import ALREADY_DONE, DISPATCHED, NOT_LEADER, BeatStore, run_id
from qdeploy.core.broker import Broker

UTC = timezone.utc
NY = ZoneInfo("America/New_York")


class SimClock:
    """Simulated time shared by every beat of a test (and by the leader lock)."""

    def __init__(self, start: datetime):
        self.t = start

    def now(self) -> datetime:
        return self.t

    def lock_time(self) -> float:
        return self.t.timestamp()

    def sleep(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


class Cluster:
    """N beat 'processes' on one clock; each wakes when its last tick said, or is dead."""

    def __init__(self, app, n: int, schedule: dict, start: datetime, tz=UTC, **kw):
        self.app, self.clock = app, SimClock(start)
        self.store = BeatStore(Broker(app.broker_url, app.namespace))
        static = load_entries(schedule, tz=tz, source="app")
        kw.setdefault("lock_timeout", 10.0)
        kw.setdefault("max_interval", 5.0)
        self.beats = [Beat(app, self.store, static=static, tz=tz, clock=self.clock, holder=f"b{i}", **kw)
                      for i in range(n)]
        self.wake = {b.holder: start for b in self.beats}
        self.dead: set[str] = set()
        self.leaders: list[tuple[datetime, str]] = []

    def leader(self) -> Beat | None:
        alive = [b for b in self.beats if b.is_leader and b.holder not in self.dead]
        assert len(alive) <= 1, "two beats believe they lead"
        return alive[0] if alive else None

    def kill(self, beat: Beat) -> None:
        self.dead.add(beat.holder)  # SIGKILL: no release, no more ticks

    def run_until(self, end: datetime) -> None:
        while self.clock.t < end:
            for b in self.beats:
                if b.holder not in self.dead and self.wake[b.holder] <= self.clock.t:
                    wait = b.tick()
                    self.wake[b.holder] = self.clock.t + timedelta(seconds=max(wait, 0.001))
                    if b.is_leader and (not self.leaders or self.leaders[-1][1] != b.holder):
                        self.leaders.append((self.clock.t, b.holder))
            self.leader()
            nxt = min(self.wake[h] for h in self.wake if h not in self.dead)
            self.clock.t = min(max(nxt, self.clock.t), end)

    def sent(self) -> list[message.Envelope]:
        """Every message beat sent: bodies by id, and the ids on the queue lists (no duplicates)."""
        client = self.store.client
        bodies = {k.decode(): message.decode(v) for k, v in client.hgetall(f"{self.app.namespace}:msg").items()}
        queued = [i.decode() for key in client.scan_iter(f"{self.app.namespace}:q:*") for i in client.lrange(key, 0, -1)]
        assert len(queued) == len(set(queued)), "an id was queued twice"
        assert set(queued) == set(bodies)
        return list(bodies.values())


def slots(schedule, after: datetime, until: datetime) -> list[datetime]:
    out, t = [], after
    while (t := schedule.next_after(t)) <= until:
        out.append(t)
    return out


def test_three_beats_one_leader_killed_twice_every_slot_sent_once(make_app):
    app = make_app()
    start = datetime(2025, 6, 2, 9, 0, 7, tzinfo=UTC)
    schedule = {
        "minutely": {"task": "t.cron", "schedule": "* * * * *", "args": [1]},
        "five": {"task": "t.cron5", "schedule": "*/5 * * * *", "options": {"queue": "periodic"}},
        "interval": {"task": "t.every", "schedule": "45s", "kwargs": {"k": "v"}},
    }
    c = Cluster(app, 3, schedule, start)
    c.run_until(start + timedelta(minutes=7, seconds=13))
    first = c.leader()
    c.kill(first)
    c.run_until(start + timedelta(minutes=19, seconds=40))
    second = c.leader()
    assert second is not None and second is not first
    c.kill(second)
    end = start + timedelta(minutes=30)
    c.run_until(end)
    assert len({h for _, h in c.leaders}) == 3, c.leaders

    sent = c.sent()
    entries = c.beats[0].entries
    for name, entry in entries.items():
        # lock_timeout (10 s) < every period: a failover delays a run but never merges two
        got = {env.id for env in sent if env.task == entry.task}
        assert got <= {run_id(app.namespace, name, s) for s in slots(entry.schedule, start, end)}, name
        # every slot older than the failover bound (lock_timeout + a follower's poll) was sent
        assert got >= {run_id(app.namespace, name, s) for s in slots(entry.schedule, start, end - timedelta(seconds=16))}
    assert all(env.queue == "periodic" for env in sent if env.task == "t.cron5")
    assert all(env.kwargs == {"k": "v"} for env in sent if env.task == "t.every")
    # the failover bound: nothing was sent later than lock_timeout + one follower poll after its slot
    runs = c.store.runs()
    assert all(not r["skipped"] for r in runs.values())


def test_failover_merges_missed_slots_of_a_short_interval_into_one_run(make_app):
    app = make_app()
    start = datetime(2025, 6, 2, 9, 0, 0, tzinfo=UTC)
    c = Cluster(app, 2, {"fast": {"task": "t.fast", "schedule": "1s"}}, start, lock_timeout=6.0,
                max_interval=0.5)
    c.run_until(start + timedelta(seconds=20))
    c.kill(c.leader())
    killed_at = c.clock.t
    c.run_until(start + timedelta(seconds=60))
    sent = c.sent()
    survivor = next(b.holder for b in c.beats if b.holder not in c.dead)
    assert c.store.runs()["fast"]["by"] == survivor
    # 60 s of 1 s slots, ~6 s lost in the failover but made up by ONE catch-up run
    assert 52 <= len(sent) <= 56, len(sent)
    assert len({e.id for e in sent}) == len(sent)
    takeover = [t for t, h in c.leaders if t > killed_at][0]
    assert (takeover - killed_at).total_seconds() <= 6.0 + 0.5 + 0.1


def test_misfire_beyond_grace_is_skipped_and_logged(make_app, caplog):
    app = make_app()
    start = datetime(2025, 6, 2, 9, 0, 30, tzinfo=UTC)
    c = Cluster(app, 1, {"hourly": {"task": "t.h", "schedule": "0 * * * *"},
                         "lenient": {"task": "t.l", "schedule": "0 * * * *", "misfire_grace": "2h"}},
                start, misfire_grace=60.0)
    c.run_until(start + timedelta(minutes=45))  # anchors set, nothing due yet
    c.kill(c.beats[0])
    later = Cluster(app, 1, {"hourly": {"task": "t.h", "schedule": "0 * * * *"},
                             "lenient": {"task": "t.l", "schedule": "0 * * * *", "misfire_grace": "2h"}},
                    start + timedelta(hours=1, minutes=20), misfire_grace=60.0)  # down over 10:00
    with caplog.at_level("INFO", "qdeploy.beat"):
        later.run_until(later.clock.t + timedelta(minutes=50))  # until 11:10
    tasks = sorted(e.task for e in later.sent())
    # hourly: 10:00 was 20 min late (> 60 s grace): skipped; 11:00 sent. lenient: 10:00 caught up, 11:00 sent.
    assert tasks == ["t.h", "t.l", "t.l"]
    assert "skipped hourly: missed its run at 2025-06-02T10:00:00+00:00 by more than the misfire grace (60s)" in caplog.text
    assert "catching up on missed slots" not in caplog.text  # one missed slot is simply late


@pytest.mark.parametrize("day", ["2025-03-09", "2025-11-02"])  # spring forward, fall back (New York)
def test_dst_days_neither_skip_nor_double_fire_through_the_beat_loop(make_app, day):
    app = make_app()
    start = datetime.fromisoformat(day).replace(tzinfo=NY) - timedelta(hours=2)
    schedule = {"half": {"task": "t.half", "schedule": "*/30 * * * *"},
                "night": {"task": "t.night", "schedule": "30 1,2 * * *"}}
    c = Cluster(app, 2, schedule, start.astimezone(UTC), tz=NY)
    end = start + timedelta(hours=8)
    c.run_until(start.astimezone(UTC) + timedelta(minutes=50))
    c.kill(c.leader())
    c.run_until(end.astimezone(UTC))
    sent = c.sent()
    for name, entry in c.beats[0].entries.items():
        expected = {run_id(app.namespace, name, s) for s in slots(entry.schedule, start, end - timedelta(seconds=1))}
        assert {e.id for e in sent if e.task == entry.task} == expected, name
    nights = len([e for e in sent if e.task == "t.night"])
    assert nights == 2  # 01:30 and 02:30 (or the jump to 03:00 for the skipped one), once each


def test_dynamic_entries_are_picked_up_edited_disabled_and_removed(make_app):
    app = make_app()
    start = datetime(2025, 6, 2, 9, 0, 0, tzinfo=UTC)
    c = Cluster(app, 2, {}, start, max_interval=2.0)
    c.run_until(start + timedelta(seconds=10))
    assert c.sent() == []
    c.store.put("dyn", dynamic_spec("dyn", "t.dyn", {"every": "10s"}, args=[7]))
    c.run_until(start + timedelta(seconds=10 + 2 + 50))
    n = len(c.sent())
    assert 4 <= n <= 5, n  # first run one period after it was seen, then every 10 s
    c.store.set_enabled("dyn", False)
    c.run_until(c.clock.t + timedelta(seconds=60))
    assert len(c.sent()) == n
    c.store.set_enabled("dyn", True)
    c.store.put("dyn", dynamic_spec("dyn", "t.dyn2", {"every": "20s"}), replace=True)
    c.run_until(c.clock.t + timedelta(seconds=65))
    new = [e for e in c.sent() if e.task == "t.dyn2"]
    assert 3 <= len(new) <= 4  # re-enabled: the missed slot within grace is caught up once, then every 20 s
    c.store.remove("dyn")
    before = len(c.sent())
    c.run_until(c.clock.t + timedelta(seconds=60))
    assert len(c.sent()) == before


def test_garbage_in_redis_is_logged_once_and_does_not_stop_the_others(make_app, caplog):
    app = make_app()
    start = datetime(2025, 6, 2, 9, 0, 0, tzinfo=UTC)
    c = Cluster(app, 1, {"ok": {"task": "t.ok", "schedule": "10s"}}, start)
    c.store.client.hset(c.store.keys.beat_entries, "bad", "{not json")
    c.store.client.hset(c.store.keys.beat_entries, "ok", dynamic_spec("ok", "t.other", {"every": "1s"}))
    c.store.client.incr(c.store.keys.beat_rev)
    with caplog.at_level("ERROR", "qdeploy.beat"):
        c.run_until(start + timedelta(seconds=35))
    assert {e.task for e in c.sent()} == {"t.ok"}
    assert caplog.text.count("redis schedule entry 'bad': stored value is not JSON") == 1
    assert "redis schedule entry 'ok' is ignored: the app defines an entry of that name" in caplog.text


def test_split_brain_cannot_double_fire_and_a_deposed_leader_cannot_send(make_app):
    app = make_app()
    store = BeatStore(Broker(app.broker_url, app.namespace))
    assert store.acquire("A", 10, "a", now=1000.0) == 0.0
    assert store.acquire("B", 10, "b", now=1005.0) == pytest.approx(5.0)  # A holds it 5 s more
    slot = datetime(2025, 1, 1, tzinfo=UTC)
    env = app.envelope("t.x", (), {}, task_id=run_id(app.namespace, "e", slot))
    record = {"at": 0.0}
    assert store.dispatch("A", "e", slot, slot, record, env, message.encode(env)) == DISPATCHED
    # a second process that still believes it is A (same token: a paused leader resuming) retries
    assert store.dispatch("A", "e", slot, slot, record, env, message.encode(env)) == ALREADY_DONE
    assert store.acquire("B", 10, "b", now=1011.0) == 0.0  # A expired: B takes over
    later = slot + timedelta(minutes=1)
    env2 = app.envelope("t.x", (), {}, task_id=run_id(app.namespace, "e", later))
    assert store.dispatch("A", "e", later, later, record, env2, message.encode(env2)) == NOT_LEADER
    assert store.dispatch("B", "e", later, later, record, env2, message.encode(env2)) == DISPATCHED
    assert store.client.llen(f"{app.namespace}:q:default") == 2
    assert not store.release("A") and store.release("B") and store.leader() == {}
