"""The Celery-shaped API against a real (private) Redis, consumers run in-process."""

import time
from datetime import datetime, timedelta, timezone

import pytest

from qdeploy.core.app import SoftTimeLimitExceeded
from qdeploy.core.results import TaskFailed, TaskRevoked, ResultTimeout
from qdeploy.worker import Consumer
from tests.integration.conftest import drain, ns_keys


def test_delay_get_and_clean_keys(app, rclient, namespace):
    @app.task(name="add")
    def add(x, y):
        return x + y

    res = add.delay(2, 3)
    assert res.state == "PENDING" and not res.ready()
    drain(app, 1)
    assert res.get(timeout=5) == 5
    assert res.successful() and res.ready() and not res.failed() and res.result == 5
    assert ns_keys(rclient, namespace) == set(), "a finished message must leave nothing behind"


def test_received_then_started_states_are_reported(app):
    seen = {}

    @app.task(name="plain")
    def plain():
        return 1

    @app.task(name="tracked", bind=True, track_started=True)
    def tracked(self):
        seen["inside"] = app.AsyncResult(self.request.id).state
        return 2

    a, b = plain.delay(), tracked.delay()

    def on_start(task_id, name, started, limits, *_):
        seen[name] = app.AsyncResult(task_id).state

    drain(app, 2, on_task_start=on_start)
    assert seen == {"plain": "RECEIVED", "tracked": "STARTED", "inside": "STARTED"}
    assert (a.get(timeout=1), b.get(timeout=1)) == (1, 2)


def test_failure_traceback_and_propagate(app):
    @app.task(name="boom")
    def boom():
        return 1 / 0

    res = boom.delay()
    drain(app, 1)
    assert res.state == "FAILURE" and res.failed() and res.ready()
    assert "ZeroDivisionError" in res.traceback
    with pytest.raises(TaskFailed, match="ZeroDivisionError: division by zero"):
        res.get(timeout=1)
    assert isinstance(res.get(timeout=1, propagate=False), TaskFailed)


def test_get_times_out_and_forget_removes_the_record(app):
    @app.task(name="echo")
    def echo(x):
        return x

    res = echo.delay({"a": [1]})
    with pytest.raises(ResultTimeout):
        res.get(timeout=0.1)
    drain(app, 1)
    assert res.get(timeout=1) == {"a": [1]}
    app.AsyncResult(res.id).forget()
    assert app.AsyncResult(res.id).state == "PENDING"


def test_send_task_by_name_and_task_id(app):
    @app.task(name="proj.mul")
    def mul(x, y):
        return x * y

    res = app.send_task("proj.mul", [6, 7], task_id="my-id-1")
    assert res.id == "my-id-1"
    drain(app, 1)
    assert app.AsyncResult("my-id-1").get(timeout=1) == 42


def test_revoked_task_does_not_run(app):
    ran = []

    @app.task(name="r")
    def r():
        ran.append(1)

    res = r.delay()
    app.revoke(res.id)
    assert res.state == "REVOKED"
    drain(app, 1)
    assert ran == [] and res.state == "REVOKED"
    with pytest.raises(TaskRevoked):
        res.get(timeout=1)


def test_batch_enqueue_is_one_pipelined_transaction(app, rclient):
    @app.task(name="sq")
    def sq(x):
        return x * x

    def execs():
        return rclient.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)

    before = execs()
    results = sq.map(range(500))
    assert execs() - before == 1, "500 tasks must be sent in one MULTI/EXEC round trip"
    more = app.send_many([("sq", (i,), {}) for i in range(3)] + [(sq, (9,), {}, {"queue": "other"})])
    star = sq.starmap([(2,), (3,)])
    drain(app, 505)
    drain(app, 1, queues=["other"])
    assert [r.get(timeout=1) for r in results] == [x * x for x in range(500)]
    assert [r.get(timeout=1) for r in more + star] == [0, 1, 4, 81, 4, 9]


def test_results_expire_after_result_ttl(make_app, rclient):
    app = make_app(result_ttl=1)

    @app.task(name="v")
    def v():
        return "x"

    res = v.delay()
    drain(app, 1)
    assert res.get(timeout=1) == "x"
    assert 0 < rclient.ttl(f"{app.namespace}:r:{res.id}") <= 1
    time.sleep(1.2)
    assert app.AsyncResult(res.id).state == "PENDING"


def test_ignore_result_stores_nothing(app, rclient):
    @app.task(name="quiet", ignore_result=True)
    def quiet():
        return 1

    res = quiet.delay()
    drain(app, 1)
    assert rclient.exists(f"{app.namespace}:r:{res.id}") == 0


def test_results_in_a_separate_backend(make_app, redis_server, rclient):
    app = make_app(result_backend=redis_server.url.replace("/0", "/1"))

    @app.task(name="sep")
    def sep():
        return "elsewhere"

    res = sep.delay()
    drain(app, 1)
    assert res.get(timeout=1) == "elsewhere"
    assert rclient.exists(f"{app.namespace}:r:{res.id}") == 0
    db1 = redis_server.client()
    db1.select(1)
    assert db1.exists(f"{app.namespace}:r:{res.id}") == 1


def test_only_json_is_sent(app):
    @app.task(name="j")
    def j(x):
        return x

    with pytest.raises(TypeError, match="JSON"):
        j.delay(object())


def test_non_json_return_value_is_a_failure(app):
    @app.task(name="bad_return")
    def bad_return():
        return {1, 2}

    res = bad_return.delay()
    drain(app, 1)
    assert res.state == "FAILURE" and "not JSON serializable" in res.info["exc"]


def test_eta_tasks_wait_in_redis_and_run_in_eta_order(app, rclient, namespace):
    order = []

    @app.task(name="o")
    def o(tag):
        order.append(tag)

    now = datetime.now(timezone.utc)
    o.apply_async(("c",), eta=now + timedelta(seconds=0.9))
    o.apply_async(("a",), countdown=0.3)
    o.apply_async(("b",), eta=(now + timedelta(seconds=0.6)).timestamp())
    o.delay("now")
    assert rclient.zcard(f"{namespace}:eta:default") == 3, "ETA tasks live in a Redis sorted set"
    assert rclient.llen(f"{namespace}:q:default") == 1
    drain(app, 4)
    assert order == ["now", "a", "b", "c"]


def test_expired_tasks_are_revoked_not_run(app):
    ran = []

    @app.task(name="e")
    def e():
        ran.append(1)

    stale = e.apply_async(expires=0.05)
    stale_dt = e.apply_async(expires=datetime.now(timezone.utc) + timedelta(seconds=0.05))
    fresh = e.apply_async(expires=60)
    time.sleep(0.1)
    drain(app, 3)
    assert len(ran) == 1 and fresh.successful()
    for res in (stale, stale_dt):
        assert res.state == "REVOKED" and res.info["reason"] == "expired"


def test_autoretry_with_exponential_backoff(app):
    attempts = []

    @app.task(name="flaky", autoretry_for=(ValueError,), retry_backoff=0.1, max_retries=3)
    def flaky():
        attempts.append(time.monotonic())
        if len(attempts) < 4:
            raise ValueError("not yet")
        return len(attempts)

    res = flaky.delay()
    drain(app, 1)
    assert res.state == "RETRY" and res.info["retries"] == 1
    drain(app, 3)
    assert res.get(timeout=1) == 4
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    # equal jitter: the n-th retry waits at least half of 0.1 * 2**n
    for n, gap in enumerate(gaps):
        assert gap >= 0.1 * 2 ** n / 2, gaps


def test_retries_give_up_after_max_retries(app):
    @app.task(name="never", autoretry_for=(KeyError,), retry_backoff=0.01, max_retries=2)
    def never():
        raise KeyError("gone")

    res = never.delay()
    drain(app, 3)
    assert res.state == "FAILURE" and res.info["exc_type"] == "KeyError" and res.info["retries"] == 2


def test_bound_task_request_and_explicit_retry(app):
    seen = []

    @app.task(name="b", bind=True, max_retries=5)
    def b(self, x):
        seen.append((self.request.retries, self.request.deliveries, self.request.id))
        if self.request.retries < 2:
            self.retry(countdown=0)
        return x

    res = b.apply_async((7,), max_retries=2)
    drain(app, 3)
    assert res.get(timeout=1) == 7
    assert [s[:2] for s in seen] == [(0, 1), (1, 1), (2, 1)] and {s[2] for s in seen} == {res.id}


def test_explicit_retry_past_max_retries_raises_the_exception(app):
    @app.task(name="b2", bind=True, max_retries=1)
    def b2(self):
        self.retry(exc=OSError("disk"), countdown=0)

    res = b2.delay()
    drain(app, 2)
    assert res.state == "FAILURE" and res.info["exc_type"] == "OSError"


def test_soft_time_limit_is_raised_inside_the_task(app):
    @app.task(name="soft", soft_time_limit=0.2)
    def soft():
        try:
            time.sleep(5)
        except SoftTimeLimitExceeded:
            return "cleaned up"

    @app.task(name="hard", time_limit=0.2)
    def hard():
        try:
            time.sleep(5)
        except Exception:  # noqa: BLE001 - must NOT swallow the hard limit
            return "swallowed"

    s, h = soft.delay(), hard.delay()
    drain(app, 2)
    assert s.get(timeout=1) == "cleaned up"
    assert h.state == "FAILURE" and h.info["exc_type"] == "TimeLimitExceeded"


def test_acks_late_false_is_at_most_once(app, rclient, namespace):
    seen = {}

    @app.task(name="amo", acks_late=False, bind=True)
    def amo(self):
        seen["inflight"] = rclient.lrange(f"{namespace}:inflight:tc", 0, -1)
        seen["body"] = rclient.hexists(f"{namespace}:msg", self.request.id)

    @app.task(name="alo", bind=True)
    def alo(self):
        seen["alo_inflight"] = rclient.lrange(f"{namespace}:inflight:tc", 0, -1)

    a, b = amo.delay(), alo.delay()
    drain(app, 2)
    assert seen["inflight"] == [] and seen["body"] is False
    assert seen["alo_inflight"] == [b.id.encode()]
    assert a.successful() and b.successful()


def test_queues_are_consumed_in_priority_order(app):
    order = []

    @app.task(name="p")
    def p(tag):
        order.append(tag)

    for i in range(3):
        p.apply_async((f"low{i}",), queue="low")
    for i in range(2):
        p.apply_async((f"high{i}",), queue="high")
    drain(app, 5, queues=["high", "low"])
    assert order == ["high0", "high1", "low0", "low1", "low2"]


def test_rate_limit_spaces_out_starts(app):
    starts = []

    @app.task(name="rl", rate_limit="5/s")
    def rl():
        starts.append(time.monotonic())

    for _ in range(3):
        rl.delay()
    drain(app, 3)
    # the limit is applied where the message is reserved (in Redis, fleet-wide): a start comes a
    # few ms after its reservation, so starts may be that much closer than 1/rate
    assert all(b - a >= 0.17 for a, b in zip(starts, starts[1:])), starts


def test_hooks_report_start_and_done(app):
    events = []

    @app.task(name="h")
    def h(x):
        if x:
            raise RuntimeError("x")

    ok, bad = h.delay(0), h.delay(1)
    consumer = Consumer(app, ["default"], "hooks", poll_interval=0.01,
                        on_task_start=lambda *a: events.append(("start", a[0], a[1])),
                        on_task_done=lambda tid, name, state, rt, *_: events.append(("done", tid, state)))
    assert consumer.run(max_tasks=2) == 2
    assert events == [("start", ok.id, "h"), ("done", ok.id, "SUCCESS"),
                      ("start", bad.id, "h"), ("done", bad.id, "FAILURE")]


def test_consumer_default_limits_apply_when_the_message_has_none(app):
    @app.task(name="dl")
    def dl():
        try:
            time.sleep(5)
        except SoftTimeLimitExceeded:
            return "soft default"

    res = dl.delay()
    drain(app, 1, default_limits=(0.2, None))
    assert res.get(timeout=1) == "soft default"
