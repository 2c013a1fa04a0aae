"""The task history in a real Redis: the store's script (indices, cap, merges), its search, and
the master-side writer (batches, a broker that is down, full or wrong)."""

from __future__ import annotations

import logging
import time

import pytest

from qdeploy.ops import history
from qdeploy.ops.history_search import MERGE_MAX, Query, QueryError, search
from qdeploy.ops.history_writer import HistoryWriter
from qdeploy.worker.state import Child, Task

NOW = time.time()


def rec(i: int, **kw) -> dict:
    base = {"id": f"{i:08d}-0000-4000-8000-000000000000", "name": f"app.t{i % 3}", "state": "SUCCESS",
            "node": f"w{i % 2}@host", "queue": "default", "pid": 100 + i, "started": NOW - 1000 + i,
            "done": NOW - 1000 + i + 0.5, "runtime": 0.5 + i / 1000, "retries": 0,
            "call": f'[[{i}],{{"user":"u{i}"}}]'}
    base.update(kw)
    return base


def consistent(store: history.HistoryStore) -> int:
    """Every index entry has its record, every record is in the time index and in exactly the
    combo its value says; the combo list names exactly the non-empty combos. Returns the count."""
    c, k = store.client, store.keys
    records = {i.decode(): v.decode() for i, v in c.hgetall(k.rec).items()}
    timed = {m.decode() for m in c.zrange(k.time, 0, -1)}
    assert timed == set(records)
    combos = {m.decode() for m in c.zrange(k.combos, 0, -1)}
    seen: dict[str, str] = {}
    for combo in combos:
        members = {m.decode() for m in c.zrange(k.combo(combo), 0, -1)}
        assert members, f"empty combo {combo!r} listed"
        for m in members:
            assert m not in seen, f"{m} in two combos"
            seen[m] = combo
    assert set(seen) == set(records)
    for task_id, value in records.items():
        assert "\t".join(value.split("\t")[:3]) == seen[task_id]
    assert {m.decode() for m in c.zrange(k.slow, 0, -1)} <= set(records)
    stray = [key.decode() for key in c.scan_iter(f"{k.combo('')}*")
             if key.decode()[len(k.combo('')):] not in combos]
    assert not stray, stray
    return len(records)


@pytest.fixture
def store(redis_server, namespace):
    return history.HistoryStore(redis_server.client(), namespace, cap=50)


def test_records_round_trip_and_hostile_fields(store):
    assert history.encode(rec(1, name="bad\tname")) is None  # a tab would shift every field
    assert history.encode(rec(1, exc="two\nlines")) is None
    assert history.encode(rec(1, started=float("nan"))) is None
    assert history.encode(rec(1, id="has space")) is None
    store.add([([history.encode(rec(1, exc="KeyError: <b>x</b>")), history.encode(rec(2, parent="p-1"))], [])])
    one = store.get(rec(1)["id"])
    assert one["name"] == "app.t1" and one["state"] == "SUCCESS" and one["node"] == "w1@host"
    assert one["exc"] == "KeyError: <b>x</b>" and history.call_of(one) == ([1], {"user": "u1"})
    assert abs(one["started"] - rec(1)["started"]) < 1e-5 and one["runtime"] == pytest.approx(0.501)
    assert store.get(rec(2)["id"])["parent"] == "p-1"
    # anything else anyone wrote into the hash is read with suspicion, never trusted
    c, k = store.client, store.keys
    c.hset(k.rec, "junk", "only\ttwo")
    c.hset(k.rec, "ctl", "SUCCESS\tw\tn\tq\tnot-a-pid\t-5\t\t1e400\tbell\x07\t\t[{]\t\t\t\t\t\tparent with space\t\t\t{not json")
    assert store.get("junk") is None
    odd = store.get("ctl")
    assert "pid" not in odd and "started" not in odd and "runtime" not in odd and "parent" not in odd
    assert odd["exc"] == "bell?" and "attempts" not in odd and "call" not in odd
    assert history.call_of({"call": "[1, 2]"}) is None and history.call_of({"call": "[" * 5000}) is None


def test_cap_trims_every_index(store):
    for start in range(0, 120, 30):
        store.add([([history.encode(rec(i)) for i in range(start, start + 30)], [])])
    assert consistent(store) == 50
    kept = {m.decode() for m in store.client.zrange(store.keys.time, 0, -1)}
    assert kept == {rec(i)["id"] for i in range(70, 120)}  # the newest 50
    assert store.client.zcard(store.keys.slow) <= history.SLOW_MAX


def test_a_lowered_cap_converges_without_blocking(redis_server, namespace, monkeypatch):
    big = history.HistoryStore(redis_server.client(), namespace, cap=1000)
    big.add([([history.encode(rec(i)) for i in range(300)], [])])
    monkeypatch.setattr(history, "TRIM_MAX", 100)
    small = history.HistoryStore(redis_server.client(), namespace, cap=10)
    assert small.add([([history.encode(rec(1000))], [])])[0][1] == 100  # at most TRIM_MAX per batch
    for _ in range(3):
        small.add([([], [])])
    assert consistent(small) == 10


def test_updates_move_combos_and_keep_attempts(store):
    task = rec(7, state="STARTED", done=None, runtime=None)
    store.add([([history.encode(task)], [])])
    assert store.get(task["id"])["state"] == "STARTED"
    store.add([([history.encode(rec(7, call=None))], [])])  # its end: the same delivery
    done = store.get(task["id"])
    assert done["state"] == "SUCCESS" and "attempts" not in done and done["call"] == rec(7)["call"]
    store.add([([history.encode(rec(7, state="FAILURE", exc="ValueError: x"))], [])])
    retry = rec(7, node="w9@other", started=NOW, done=NOW + 1, runtime=1.0, retries=1, call=None)
    store.add([([history.encode(retry)], [])])
    again = store.get(task["id"])
    assert again["state"] == "SUCCESS" and again["node"] == "w9@other" and again["retries"] == 1
    assert [a["state"] for a in again["attempts"]] == ["FAILURE"]
    assert again["attempts"][0]["node"] == "w1@host" and again["attempts"][0]["exc"] == "ValueError: x"
    assert again["attempts"][0]["started"] == pytest.approx(rec(7)["started"], abs=1e-5)
    assert "call" not in again  # the failed delivery's arguments stay with it (history_args = failures)
    assert consistent(store) == 1


def test_a_retried_task_keeps_its_arguments_only_while_it_waits(store):
    """history_args = failures: the RETRY record has the arguments; the next delivery's records
    (STARTED, then SUCCESS) do not inherit them. A new delivery that sent its own keeps those."""
    assert history.FIELDS.index("call") + 1 == 19  # history.lua's PER_ATTEMPT names it by position
    retry = rec(1, state="RETRY", exc="Retry: attempt 1", runtime=None)
    store.add([([history.encode(retry)], [])])
    assert store.get(retry["id"])["call"] == retry["call"]  # while it waits for its retry: kept
    store.add([([history.encode(rec(1, state="STARTED", started=NOW, done=None, runtime=None, call=None))], [])])
    assert "call" not in store.get(retry["id"])
    store.add([([history.encode(rec(1, started=NOW, done=NOW + 0.5, retries=1, call=None))], [])])
    done = store.get(retry["id"])
    assert done["state"] == "SUCCESS" and "call" not in done and [a["state"] for a in done["attempts"]] == ["RETRY"]
    store.add([([history.encode(rec(3, state="RETRY", runtime=None))], [])])
    store.add([([history.encode(rec(3, started=NOW, done=NOW + 0.5, call='[["again"],{}]'))], [])])  # = all
    assert store.get(rec(3)["id"])["call"] == '[["again"],{}]'


def test_search_answers_from_the_indices(redis_server, namespace):
    s = history.HistoryStore(redis_server.client(), namespace, cap=10_000)
    rows = [rec(i, state="FAILURE" if i % 10 == 0 else "SUCCESS", runtime=i / 100) for i in range(300)]
    s.add([([history.encode(r) for r in rows], [])])
    newest = search(s, Query(limit=5))
    assert [r["id"] for r in newest.rows] == [rec(i)["id"] for i in (299, 298, 297, 296, 295)]
    assert newest.total == 300 and newest.exact
    assert [r["id"] for r in search(s, Query(sort="started", limit=2)).rows] == [rec(0)["id"], rec(1)["id"]]
    assert search(s, Query(q=rec(42)["id"])).rows[0]["pid"] == 142
    by_name = search(s, Query(q="T1", limit=200))  # case-insensitive, part of the name
    assert by_name.total == 100 and all(r["name"] == "app.t1" for r in by_name.rows)
    failed_w0 = search(s, Query(states=("FAILURE",), node="w0", limit=100))
    assert failed_w0.total == 30 and all(r["state"] == "FAILURE" and r["node"] == "w0@host" for r in failed_w0.rows)
    window = search(s, Query(since=NOW - 1000 + 100, until=NOW - 1000 + 109.5))
    assert window.total == 10 and {r["pid"] for r in window.rows} == set(range(200, 210))
    slowest = search(s, Query(sort="-runtime", limit=3))
    assert [r["pid"] for r in slowest.rows] == [399, 398, 397]
    filtered_slow = search(s, Query(q="t2", sort="-runtime", limit=2))
    assert [r["pid"] for r in filtered_slow.rows] == [399, 396]
    page2 = search(s, Query(offset=50, limit=50))
    assert page2.rows[0]["id"] == rec(249)["id"] and len(page2.rows) == 50
    args = search(s, Query(args='"u123"'))
    assert [r["pid"] for r in args.rows] == [223]
    assert search(s, Query(q="no-such-task")).total == 0
    assert search(s, Query(node="w7")).rows == []


def test_search_over_many_combos_scans_in_redis(redis_server, namespace):
    s = history.HistoryStore(redis_server.client(), namespace, cap=10_000)
    names = MERGE_MAX + 10
    s.add([([history.encode(rec(i, name=f"job.n{i % names}")) for i in range(3 * names)], [])])
    page = search(s, Query(q="job.", limit=20))
    assert page.total == 3 * names and page.exact and len(page.rows) == 20
    assert [r["pid"] for r in page.rows] == list(range(100 + 3 * names - 1, 100 + 3 * names - 21, -1))
    assert page.scanned >= 20


@pytest.mark.parametrize("bad", [
    dict(offset=-1), dict(offset=10_001), dict(limit=0), dict(limit=201), dict(limit=True),
    dict(states=("BOGUS",)), dict(since=float("nan")), dict(until=-5), dict(q="a\x00b"),
    dict(q="x" * 201), dict(node="\n"), dict(sort="name"), dict(args="x", sort="-runtime"),
])
def test_bad_queries_are_refused_with_one_line(bad):
    with pytest.raises(QueryError) as info:
        Query(**bad)
    assert "\n" not in str(info.value) and str(info.value).split(":")[0] in (
        "offset", "limit", "state", "since", "until", "q", "node", "sort")


class _Broker:
    def __init__(self, url, ns):
        self.url, self.ns = url, ns

        class K:
            msg = f"{ns}:msg"
        self.keys = K()


def _task(i: int, outcome="succeeded") -> Task:
    t = Task(f"{i:08d}-1111-4000-8000-000000000000", "cid", time.monotonic(), None, "app.w", "default", 0.01,
             extra="0\t\t\t\t\t\t")
    t.outcome, t.runtime = outcome, 0.002
    return t


def test_writer_batches_and_survives_a_broker_that_is_down(make_server, namespace, caplog):
    server = make_server()
    child = Child(4242, 1, ["cid"], None, None)
    writer = HistoryWriter(_Broker(server.url, namespace), "n1@host", cap=1000)
    for i in range(5):
        t = _task(i)
        writer.started(child, t)
        writer.finished(child, t)
    writer.flush()
    assert writer.written == 0  # not before FLUSH_EVERY: one round trip per batch
    assert 0 < writer.due_in() <= 0.2
    writer.flush(force=True)
    assert writer.written == 5
    store = history.HistoryStore(server.client(), namespace)
    assert store.count() == 5 and store.get(_task(3).id)["pid"] == 4242
    server.stop()
    caplog.set_level(logging.INFO, "qdeploy.worker")
    t0 = time.monotonic()
    for i in range(5, 9):
        t = _task(i)
        writer.started(child, t)
        writer.finished(child, t)
        writer.flush(force=True)
    assert time.monotonic() - t0 < 5  # never blocks the master: 1 s timeout, then back-off
    assert writer.queued_records == 4 and "history: cannot write" in caplog.text
    assert caplog.text.count("history: cannot write") == 1  # once per outage
    server.start()
    writer.retry_at = 0
    writer.flush(force=True)
    # (the restarted Redis lost the first five: it saves nothing) the four that waited are there
    assert writer.queued_records == 0 and store.count() == 4 and "history: writing again" in caplog.text


@pytest.mark.parametrize("batches", [1, 2, 3])
def test_a_retried_success_is_the_same_record_however_the_writer_batched_it(redis_server, namespace, batches):
    """The RETRY, the second start and the SUCCESS in one batch (folded into `attempts` by the
    writer) or in two or three (merged by history.lua): one final record, no arguments kept."""
    child = Child(4242, 1, ["cid"], None, None)
    writer = HistoryWriter(_Broker(redis_server.url, namespace), "n1@host", cap=1000, args="failures")
    first = _task(1, outcome="retried")
    first.detail, first.call = "Retry: attempt 1", '[["f1"],{}]'
    second = _task(1)
    second.started = first.started + 0.01
    writer.started(child, first)
    writer.finished(child, first)
    if batches > 1:  # the RETRY on its own
        writer.flush(force=True)
    writer.started(child, second)
    if batches > 2:  # the second start on its own too
        writer.flush(force=True)
    writer.finished(child, second)
    writer.flush(force=True)
    got = history.HistoryStore(redis_server.client(), namespace).get(first.id)
    assert got["state"] == "SUCCESS" and "call" not in got and got["pid"] == 4242
    assert [a["state"] for a in got["attempts"]] == ["RETRY"] and got["attempts"][0]["exc"] == "Retry: attempt 1"


def test_writer_bounds_what_waits_and_drops_the_oldest(make_server, namespace, monkeypatch, caplog):
    from qdeploy.ops import history_writer

    monkeypatch.setattr(history_writer, "MAX_QUEUED", 10)
    server = make_server()
    child = Child(1, 1, ["cid"], None, None)
    writer = HistoryWriter(_Broker(server.url, namespace), "n1@host", cap=1000)
    server.stop()
    for batch in range(6):
        for i in range(4):
            t = _task(batch * 10 + i)
            writer.started(child, t)
            writer.finished(child, t)
        writer.retry_at = 0
        writer.flush(force=True)
    assert writer.queued_records <= 12 and writer.dropped >= 12  # oldest batches went, memory bounded
    dropped = writer.dropped
    server.start()
    writer.retry_at = 0
    caplog.set_level(logging.INFO, "qdeploy.worker")
    writer.flush(force=True)
    store = history.HistoryStore(server.client(), namespace)
    assert store.count() == 24 - dropped and f"({dropped} record(s) were dropped)" in caplog.text
    assert store.get(_task(50).id) is not None and store.get(_task(0).id) is None  # the newest kept


def test_writer_waits_out_a_full_redis_and_drops_what_redis_never_takes(make_server, namespace, caplog):
    server = make_server("--maxmemory-policy", "noeviction")
    client = server.client()
    child = Child(1, 1, ["cid"], None, None)
    writer = HistoryWriter(_Broker(server.url, namespace), "n1@host", cap=100_000)
    client.set(f"{namespace}:fill", "y" * 4_000_000)
    client.config_set("maxmemory", "2mb")  # full: every write is refused (OOM)
    t = _task(1)
    writer.started(child, t)
    writer.finished(child, t)
    caplog.set_level(logging.INFO, "qdeploy.worker")
    writer.flush(force=True)
    assert writer.queued_records == 1 and "history: cannot write" in caplog.text  # OOM: kept, retried
    client.config_set("maxmemory", "0")
    writer.retry_at = 0
    writer.flush(force=True)
    assert writer.queued_records == 0 and history.HistoryStore(client, namespace).count() == 1
    client.set(history.HistoryKeys(namespace).time, "not a sorted set")  # a key of the wrong type
    t = _task(2)
    writer.started(child, t)
    writer.finished(child, t)
    writer.flush(force=True)
    assert writer.queued_records == 0 and "Redis refused a batch" in caplog.text  # dropped, master lives on


def test_disabled_writer_writes_nothing(redis_server, namespace):
    writer = HistoryWriter(_Broker(redis_server.url, namespace), "n1@host", cap=0)
    t = _task(1)
    writer.started(Child(1, 1, ["cid"], None, None), t)
    writer.finished(None, t)
    writer.flush(force=True)
    assert writer.due_in() == float("inf") and not list(redis_server.client().scan_iter(f"{{{namespace}:hist}}:*"))


def test_minute_counters_feed_the_charts(redis_server, namespace):
    child = Child(1, 1, ["cid"], None, None)
    writer = HistoryWriter(_Broker(redis_server.url, namespace), "n1@host", cap=1000)
    for i in range(6):
        t = _task(i, "failed" if i < 2 else "succeeded")
        writer.started(child, t)
        writer.finished(child, t)
    writer.flush(force=True)
    minute = int(time.time() // 60)
    rows = history.HistoryStore(redis_server.client(), namespace).minutes(minute - 1, minute)
    merged = {k: v for row in rows.values() for k, v in row.items()}
    assert merged["success"] == 4 and merged["failure"] == 2 and merged["failure|app.w"] == 2
    assert sum(v for k, v in merged.items() if k.startswith("b|app.w|")) == 6
    assert 0 < redis_server.client().ttl(history.HistoryKeys(namespace).minute(minute)) <= history.MINUTE_TTL
