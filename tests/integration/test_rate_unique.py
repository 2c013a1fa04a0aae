"""Beyond Celery: `rate_limit` is fleet-wide (a token bucket in Redis, checked when reserving:
a limited task waits in Redis, not in a child), and unique sends (`unique_for=`)."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import drain, wait_until
from tests.integration.workflow_tasks import app as wapp

TASKS = "tests.integration.workflow_tasks:app"


def test_rate_limit_is_fleet_wide_and_waits_in_redis(masters, redis_server, namespace, rclient):
    wapp.configure(broker=redis_server.url, namespace=namespace)
    a = masters("-A", TASKS, "-c", "2").ready()
    b = masters("-A", TASKS, "-c", "1").ready()  # two nodes, three children: one limit
    sent = time.time()
    results = [wapp.tasks["w.limited"].delay(i) for i in range(5)]
    wait_until(lambda: rclient.zcard(f"{namespace}:eta:default") >= 3, 5, what="limited tasks parked in Redis")
    free = wapp.tasks["w.stamp"].delay()
    assert free.get(timeout=5) - sent < 0.4, "a child must not sit on a limited task: others run at once"
    assert sorted(r.get(timeout=20) for r in results) == list(range(5))
    starts = sorted(float(x) for x in rclient.lrange(f"{namespace}:test:limited", 0, -1))
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # 120/m: one every 0.5 s, whatever the number of children (a start comes up to a poll
    # interval, 0.1 s, after its slot; per child, 3 children would have run 3 at once)
    assert all(g >= 0.4 for g in gaps) and starts[-1] - starts[0] >= 1.9, gaps
    assert not rclient.hlen(f"{namespace}:rate:slots"), "every slot was used"
    for m in (a, b):
        m.signal(15)
        assert m.wait(30) == 0


@pytest.fixture
def add(app):
    @app.task(name="u.add")
    def add(x, y):
        return x + y

    @app.task(name="u.keyed", unique_for=30, unique_key=lambda args, kwargs: f"user-{kwargs['user']}")
    def keyed(user, note=""):
        return note

    @app.task(name="u.fails")
    def fails():
        raise ValueError("no")

    return add


def test_a_unique_send_returns_the_first_handle_while_it_is_queued_or_running(app, add, rclient, namespace):
    first = add.apply_async((2, 2), unique_for=60)
    again = add.apply_async((2, 2), unique_for=60)
    other = add.apply_async((2, 3), unique_for=60)
    assert again.id == first.id and other.id != first.id
    assert rclient.llen(f"{namespace}:q:default") == 2
    drain(app, 2)
    assert first.get(timeout=1) == 4
    after = add.apply_async((2, 2), unique_for=60)  # the first settled: its key was freed with its ack
    assert after.id != first.id
    drain(app, 1)
    assert not list(rclient.scan_iter(f"{namespace}:uniq:*"))


def test_unique_key_function_failures_and_expiry(app, add, rclient, namespace):
    keyed = app.tasks["u.keyed"]
    one = keyed.apply_async(kwargs={"user": 1, "note": "a"})
    assert keyed.apply_async(kwargs={"user": 1, "note": "b"}).id == one.id  # the key ignores note
    assert keyed.apply_async(kwargs={"user": 2}).id != one.id
    bad = app.tasks["u.fails"].apply_async(unique_for=60)
    drain(app, 3)
    assert bad.failed() and app.tasks["u.fails"].apply_async(unique_for=60).id != bad.id  # a failure frees it
    short = add.apply_async((9, 9), unique_for=0.2)
    time.sleep(0.3)  # never acked (no worker): the key expires with unique_for
    assert add.apply_async((9, 9), unique_for=0.2).id != short.id


@pytest.mark.parametrize("value, error", [(0, ValueError), (-1, ValueError), ("10", TypeError), (True, TypeError),
                                          (float("nan"), ValueError), (1e12, ValueError)])
def test_bad_unique_for_values_are_refused(app, add, value, error):
    with pytest.raises(error, match="unique_for"):
        add.apply_async((1, 1), unique_for=value)


def test_a_unique_key_function_returning_junk_is_refused(app):
    @app.task(name="u.junk", unique_for=5, unique_key=lambda args, kwargs: None)
    def junk():
        pass

    with pytest.raises(ValueError, match="unique_key must return a printable string"):
        junk.delay()
