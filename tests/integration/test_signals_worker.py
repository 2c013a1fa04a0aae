"""Celery's signals in a real `qdeploy worker`: task signals in Celery's order, the worker's in
the master, worker_process_init/shutdown in every child (spares and recycled ones included), a
failing worker_process_init stops the children with its reason in the master's log, and
before_task_publish receivers' headers reach the task."""

from __future__ import annotations

import json
import signal

from qdeploy import signals
from tests.integration.conftest import wait_until
from tests.integration.signal_tasks import app as sapp

TASKS = "tests.integration.signal_tasks:app"


def seen(rclient, namespace) -> list:
    return [json.loads(x) for x in rclient.lrange(f"{namespace}:test:signals", 0, -1)]


def producer(redis_server, namespace):
    sapp.configure(broker=redis_server.url, namespace=namespace)
    return sapp


def test_task_and_worker_signals_in_celerys_order(masters, redis_server, namespace, rclient):
    app = producer(redis_server, namespace)
    m = masters("-A", TASKS, "-c", "1").ready()
    rclient.delete(f"{namespace}:test:signals")  # the producer side's own (none) and boot noise aside
    ok = app.tasks["s.ok"].delay(1)
    assert ok.get(timeout=10) == 1
    bad = app.tasks["s.bad"].delay()
    wait_until(bad.ready, 10, what="s.bad")
    assert app.tasks["s.again"].delay().get(timeout=10) == "second"
    app.send_task("s.nobody", ())
    wait_until(lambda: any(e[0] == "task_unknown" for e in seen(rclient, namespace)), 10, what="task_unknown")
    wait_until(lambda: any(e[0] == "heartbeat_sent" for e in seen(rclient, namespace)), 10, what="heartbeat_sent")
    m.signal(signal.SIGTERM)
    assert m.wait(30) == 0
    events = seen(rclient, namespace)
    tasks = [(e[0], e[2]) for e in events if e[0].startswith("task_")]
    assert tasks == [
        ("task_received", "s.ok"), ("task_prerun", "s.ok"), ("task_success", "s.ok"), ("task_postrun", ["s.ok", "SUCCESS"]),
        ("task_received", "s.bad"), ("task_prerun", "s.bad"), ("task_failure", "s.bad"),
        ("task_postrun", ["s.bad", "FAILURE"]),
        ("task_received", "s.again"), ("task_prerun", "s.again"), ("task_retry", "s.again"),
        ("task_postrun", ["s.again", "RETRY"]),
        ("task_received", "s.again"), ("task_prerun", "s.again"), ("task_success", "s.again"),
        ("task_postrun", ["s.again", "SUCCESS"]),
        ("task_unknown", None),
    ]
    task_pids = {e[1] for e in events if e[0] == "task_prerun"}
    assert m.pid not in task_pids
    master = [e[0] for e in events if e[1] == m.pid and e[0] != "heartbeat_sent"]
    assert master == ["worker_shutting_down", "worker_shutdown"]  # init/ready came before the delete
    assert [e[2] for e in events if e[0] == "worker_shutting_down"] == ["Warm"]
    assert {e[1] for e in events if e[0] == "worker_process_shutdown"} == task_pids


def test_worker_init_and_ready_come_from_the_master_before_any_task(masters, redis_server, namespace, rclient):
    app = producer(redis_server, namespace)
    m = masters("-A", TASKS, "-c", "1").ready()
    assert app.tasks["s.ok"].delay(2).get(timeout=10) == 2
    events = seen(rclient, namespace)
    names = [e[0] for e in events if e[0] != "heartbeat_sent"]
    assert names.index("worker_init") < names.index("worker_process_init") < names.index("task_prerun")
    assert names.index("worker_ready") < names.index("task_prerun")
    assert {e[1] for e in events if e[0] in ("worker_init", "worker_ready", "after_setup_logger")} == {m.pid}
    m.signal(signal.SIGTERM)
    assert m.wait(30) == 0


def test_worker_process_init_and_shutdown_run_in_every_child_spares_and_recycled_ones(
        masters, redis_server, namespace, rclient):
    app = producer(redis_server, namespace)
    m = masters("-A", TASKS, "-c", "1", "--max-tasks-per-child", "2", "--max-tasks-jitter", "0").ready()
    pids = [app.tasks["s.pid"].delay().get(timeout=10) for _ in range(6)]
    m.signal(signal.SIGTERM)
    assert m.wait(30) == 0
    events = seen(rclient, namespace)
    inits = [e[1] for e in events if e[0] == "worker_process_init"]
    shutdowns = {e[1]: e[2] for e in events if e[0] == "worker_process_shutdown"}
    assert len(set(pids)) == 3 and set(pids) <= set(inits)  # recycled every 2 tasks
    assert len(inits) == len(set(inits)) >= 4, "a spare that never served must have had its init too"
    assert set(shutdowns) == set(inits) and set(shutdowns.values()) == {0}
    for pid in set(pids):  # init before the child's first task
        order = [e[0] for e in events if e[1] == pid]
        assert order.index("worker_process_init") < order.index("task_prerun")
        assert order[-1] == "worker_process_shutdown"


def test_a_failing_worker_process_init_stops_the_children_and_the_master_says_why(masters, redis_server, namespace):
    m = masters("-A", TASKS, "-c", "1", env={"QDEPLOY_TEST_PROCESS_INIT_FAILS": "1"})
    assert m.wait(60) == 3  # the children keep failing to start: the node gives up
    out = m.output()
    assert "worker_process_init failed: record_worker_process_init raised RuntimeError: db down" in out
    assert "children keep failing to start" in out


def test_before_task_publish_headers_reach_the_task(masters, redis_server, namespace):
    app = producer(redis_server, namespace)
    published = []

    def add_trace(sender=None, headers=None, body=None, **kw):
        headers["trace_id"] = "t-1"
        published.append(("before", sender, headers["id"], body[0]))

    def after(sender=None, headers=None, routing_key=None, **kw):
        published.append(("after", sender, headers["id"], routing_key))

    signals.before_task_publish.connect(add_trace)
    signals.after_task_publish.connect(after)
    try:
        m = masters("-A", TASKS, "-c", "1").ready()
        res = app.tasks["s.headers"].delay()
        assert res.get(timeout=10) == {"trace_id": "t-1"}
    finally:
        signals.before_task_publish.disconnect(add_trace)
        signals.after_task_publish.disconnect(after)
    assert published == [("before", "s.headers", res.id, []), ("after", "s.headers", res.id, "default")]
    m.signal(signal.SIGTERM)
    assert m.wait(30) == 0


def test_task_revoked_and_task_rejected(masters, redis_server, namespace, rclient):
    from qdeploy.ops import fleet

    app = producer(redis_server, namespace)
    revoked = app.tasks["s.ok"].apply_async((1,), countdown=1)
    app.revoke(revoked.id)
    fleet.publish_raw(app.transport, "default", "junk-1", "not json")
    m = masters("-A", TASKS, "-c", "1").ready()
    wait_until(lambda: {"task_revoked", "task_rejected"} <= {e[0] for e in seen(rclient, namespace)}, 15,
               what="task_revoked and task_rejected")
    events = seen(rclient, namespace)
    assert [e[2] for e in events if e[0] == "task_revoked"] == ["s.ok"]
    assert not [e for e in events if e[0] == "task_prerun"], "neither of them ran"
    m.signal(signal.SIGTERM)
    assert m.wait(30) == 0
