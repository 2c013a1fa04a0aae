"""Workflows on a real Redis with in-process consumers: links, chains, groups, chords, chunks,
the same results as eager runs, and the exactly-once rules of the follow-up script."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from qdeploy import ChordError, chain, chord, group
from qdeploy.core import message, workflow
from qdeploy.ops import fleet
from qdeploy.worker import Consumer
from tests.integration.conftest import ns_keys


def define(app):
    """The tasks every test here uses, registered on `app`."""
    app.errors = []

    @app.task(name="c.add")
    def add(x, y):
        return x + y

    @app.task(name="c.mul")
    def mul(x, y):
        return x * y

    @app.task(name="c.tsum")
    def tsum(numbers):
        return sum(numbers)

    @app.task(name="c.boom")
    def boom(*args):
        raise KeyError("boom")

    @app.task(name="c.on_error")
    def on_error(request, exc, traceback):
        app.errors.append((request.id, type(exc).__name__, isinstance(exc, KeyError), "Traceback" in traceback))

    @app.task(name="c.old_errback")
    def old_errback(task_id):
        app.errors.append(("old", task_id))

    @app.task(name="c.quiet", ignore_result=True)
    def quiet(x):
        return x + 1

    return {name.split(".")[1]: task for name, task in app.tasks.items() if name.startswith("c.")}


@pytest.fixture
def tasks(app):
    return define(app)


def run_until(app, done, timeout: float = 20.0, consumers: int = 1) -> None:
    """In-process consumers (threads but the first) until `done()`."""
    deadline = time.monotonic() + timeout
    stop = lambda: done() or time.monotonic() > deadline  # noqa: E731
    made = [Consumer(app, ["default"], f"tc{i}", poll_interval=0.01) for i in range(consumers)]
    threads = [threading.Thread(target=c.run, kwargs={"should_stop": stop}) for c in made[1:]]
    for thread in threads:
        thread.start()
    made[0].run(should_stop=stop)
    for thread in threads:
        thread.join(10)
    assert done(), f"not done within {timeout}s"


def test_link_one_or_a_list_gets_the_result_first(app, tasks):
    res = tasks["add"].apply_async((2, 2), link=tasks["add"].s(16))
    many = tasks["add"].apply_async((1, 1), link=[tasks["add"].s(10), tasks["mul"].s(3)])
    run_until(app, lambda: len(many.children) == 2 and all(c.ready() for c in many.children) and res.children
              and res.children[0].ready())
    assert res.get(timeout=1) == 4 and [c.get(timeout=1) for c in res.children] == [20]
    assert [c.get(timeout=1) for c in many.children] == [12, 6]
    assert app.AsyncResult(many.children[0].id).meta["parent_id"] == many.id


def test_link_error_gets_request_exception_traceback_and_old_style_gets_the_id(app, tasks):
    res = tasks["boom"].apply_async((1,), link_error=[tasks["on_error"].s(), tasks["old_errback"].s()])
    run_until(app, lambda: len(app.errors) == 2)
    assert res.failed() and app.errors[0] == (res.id, "KeyError", True, True) and app.errors[1] == ("old", res.id)
    with pytest.raises(KeyError):  # get() raises the task's own exception class (it is loaded here)
        res.get(timeout=1)


def test_a_link_on_an_ignore_result_task_still_runs(app, tasks):
    res = tasks["quiet"].apply_async((1,), link=tasks["add"].s(100).set(task_id="after-quiet"))
    run_until(app, app.AsyncResult("after-quiet").ready)
    assert app.AsyncResult("after-quiet").get(timeout=1) == 102 and res.state == "PENDING"  # nothing stored for it


def test_a_callback_naming_an_unknown_task_is_dead_lettered_not_lost(app, tasks, caplog):
    from qdeploy.core.canvas import signature

    res = tasks["add"].apply_async((1, 2), link=signature("no.such.task", app=app))
    with caplog.at_level(logging.ERROR):
        run_until(app, lambda: bool(fleet.dead_letters(app.transport)))
    [dead] = fleet.dead_letters(app.transport)
    assert "unknown task 'no.such.task'" in dead["reason"] and res.get(timeout=1) == 3
    assert app.AsyncResult(res.children[0].id).state == "FAILURE"


def test_chain_and_pipe_results_and_parents(app, tasks, rclient, namespace):
    add, mul = tasks["add"], tasks["mul"]
    res = (add.s(1, 2) | add.s(3) | mul.s(10)).apply_async()
    assert res.parent.parent.parent is None
    run_until(app, res.ready)
    assert res.get(timeout=1) == 60 and res.parent.get(timeout=1) == 6 and res.parent.parent.get(timeout=1) == 3
    assert ns_keys(rclient, namespace) == set(), "a finished chain leaves nothing behind"


def test_group_result_api(app, tasks):
    g = group(tasks["add"].s(i, i) for i in range(20))()
    assert not g.ready() and g.completed_count() == 0 and g.waiting()
    run_until(app, g.ready)
    assert g.get(timeout=1) == [2 * i for i in range(20)] and g.successful() and g.completed_count() == 20
    assert app.GroupResult.restore(g.save().id).get(timeout=1) == g.get(timeout=1)
    g2 = group(tasks["add"].s(1, 1), tasks["boom"].s())()
    run_until(app, g2.ready)
    assert g2.failed() and g2.completed_count() == 1
    with pytest.raises(KeyError):
        g2.get(timeout=1)
    assert g2.get(timeout=1, propagate=False)[0] == 2


def test_group_revoke(app, tasks):
    g = group(tasks["add"].s(i, i) for i in range(3))()
    g.revoke()
    run_until(app, g.ready)
    assert [r.state for r in g.results] == ["REVOKED"] * 3 and not g.successful()


def test_chord_group_pipe_task_and_chunks(app, tasks, rclient, namespace):
    c = chord(tasks["add"].s(i, i) for i in range(10))(tasks["tsum"].s())
    gp = (group(tasks["mul"].s(i, 2) for i in range(5)) | tasks["tsum"].s()).apply_async()
    parts = tasks["add"].chunks(zip(range(10), range(10), strict=True), 4).apply_async()
    run_until(app, lambda: c.ready() and gp.ready() and parts.ready())
    assert c.get(timeout=1) == 90 and gp.get(timeout=1) == 20
    assert c.parent.get(timeout=1) == [2 * i for i in range(10)]
    assert parts.get(timeout=1) == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
    assert not [k for k in ns_keys(rclient, namespace) if ":chordr:" in k], "the counter is gone once the body ran"


def test_chord_whose_header_fails_fails_its_body_and_calls_its_link_error(app, tasks):
    body = tasks["tsum"].s()
    body.link_error(tasks["on_error"].s())
    res = chord([tasks["add"].s(1, 1), tasks["boom"].s()], body)()
    run_until(app, lambda: res.ready() and app.errors)
    with pytest.raises(ChordError, match=r"Dependency .* raised KeyError"):
        res.get(timeout=1)
    assert app.errors == [(res.id, "ChordError", False, True)]
    assert not app.transport.client.hexists(f"{app.namespace}:msg", res.id), "the body was never queued"


def test_a_chord_id_that_does_not_exist_keeps_the_result_and_says_so(app, tasks, caplog):
    env = app.envelope(tasks["add"], (1, 2), chord={"id": "no-such-chord", "body": "b1", "task": "c.tsum",
                                                     "errbacks": []})
    fleet.publish_raw(app.transport, "default", env.id, message.encode(env))
    with caplog.at_level(logging.WARNING):
        run_until(app, lambda: app.AsyncResult(env.id).ready())
    assert app.AsyncResult(env.id).get(timeout=1) == 3
    assert "reports to chord no-such-chord, which does not exist" in caplog.text
    assert app.AsyncResult("b1").state == "PENDING"


def test_bad_signatures_in_a_message_dead_letter_it_before_it_runs(app, tasks):
    runs = []

    @app.task(name="c.counted")
    def counted():
        runs.append(1)

    good = json.loads(message.encode(app.envelope("c.counted", ())))
    for i, callbacks in enumerate(([{"task": "c.add", "options": {"queue": "bad queue"}}], [{"task": 7}], "x",
                                   [{"task": "c.add", "options": {"link": [{"task": "c.add"}] * 3, "zzz": 1}}])):
        body = dict(good, id=f"bad-{i}", v=2, callbacks=callbacks)
        fleet.publish_raw(app.transport, "default", body["id"], json.dumps(body))
    run_until(app, lambda: len(fleet.dead_letters(app.transport)) == 4)
    assert runs == [] and all("malformed message: envelope" in d["reason"] for d in fleet.dead_letters(app.transport))


def test_a_huge_group_and_chord(app, tasks):
    n = 3000
    g = group(tasks["add"].s(i, 1) for i in range(n)).apply_async()
    c = chord((tasks["add"].s(i, 0) for i in range(n)), tasks["tsum"].s()).apply_async()
    run_until(app, lambda: c.ready(), timeout=60, consumers=2)
    assert g.get(timeout=5) == [i + 1 for i in range(n)] and c.get(timeout=1) == n * (n - 1) // 2


# -- the same results eagerly and for real ---------------------------------------------------------------
WORKFLOWS = {
    "task": lambda t: t["add"].s(2, 3),
    "chain": lambda t: t["add"].s(1, 2) | t["add"].s(3) | t["mul"].s(10),
    "group": lambda t: group(t["add"].s(i, i) for i in range(5)),
    "chord": lambda t: chord((t["add"].s(i, i) for i in range(5)), t["tsum"].s()),
    "chain with a group": lambda t: t["add"].s(1, 1) | group(t["add"].s(1), t["add"].s(2)) | t["tsum"].s(),
    "chord of chains": lambda t: chord([t["add"].s(1, 1) | t["mul"].s(10), t["add"].s(2, 2)], t["tsum"].s()),
    "chunks": lambda t: t["add"].chunks([(1, 2), (3, 4), (5, 6)], 2),
    "immutable body": lambda t: chord([t["add"].s(1, 1)], t["add"].si(5, 5)),
    "failing chain": lambda t: t["add"].s(1, 1) | t["boom"].s() | t["add"].s(5),
    "failing chord": lambda t: chord([t["add"].s(1, 1), t["boom"].s()], t["tsum"].s()),
}


def outcome(res):
    try:
        return ("ok", res.get(timeout=5))
    except Exception as exc:  # the same exception class both ways
        return ("error", [c.__name__ for c in type(exc).__mro__ if c.__module__ != "qdeploy.core.results"][0])


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_eager_and_real_runs_give_the_same_results(app, tasks, name):
    eager = outcome(WORKFLOWS[name](tasks).apply())
    res = WORKFLOWS[name](tasks).apply_async()
    failing = name.startswith("failing")
    run_until(app, lambda: res.ready() or (failing and _any_failed(res)))
    assert outcome(res) == eager and (eager[0] == "error") == failing


def _any_failed(res) -> bool:
    node = res
    while node is not None:
        if getattr(node, "failed", lambda: False)():
            return True
        node = getattr(node, "parent", None)
    return False


# -- exactly once ---------------------------------------------------------------------------------------
def test_a_repeated_ack_does_not_enqueue_the_next_step_twice(app, tasks):
    """The reply of an ack with its follow-ups is lost and the ack is sent again: the id is no
    longer in flight, so the follow-ups are not carried out again."""
    env = app.envelope(tasks["add"], (1, 2), chain=[dict(tasks["add"].s(3).set(task_id="step-2"))])
    fleet.publish_raw(app.transport, "default", env.id, message.encode(env))
    broker = app.connect_broker(retries=0)
    msg = broker.reserve("c1", "c1", ["default"])
    ops = workflow.encode_ops(app, workflow.after_success(app, env, 3))
    for _ in range(3):
        broker.reserve("c1", "c1", [], ack_id=msg.id, ops=ops)
    assert app.transport.client.llen(f"{app.namespace}:q:default") == 1
    run_until(app, lambda: app.AsyncResult("step-2").ready())
    assert app.AsyncResult("step-2").get(timeout=1) == 6


def test_a_redelivered_header_task_counts_once(app, tasks):
    planned = workflow.plan(chord([tasks["add"].s(1, 1), tasks["add"].s(2, 2)], tasks["tsum"].s()), app)
    app.transport.publish([], prelude=planned.chords[0].commands(app))  # the chord; its header tasks "ran"
    broker = app.connect_broker(retries=0)
    first, second = (app.envelope(c.task, c.args, **c.options) for c in planned.calls)
    part = workflow.encode_ops(app, workflow.after_success(app, first, 2))
    for _ in range(3):  # the same header task finishing three times (redeliveries)
        broker.carry_out("c1", part)
    assert not app.transport.client.hexists(f"{app.namespace}:msg", planned.result.id), "1 of 2 parts: no body yet"
    broker.carry_out("c1", workflow.encode_ops(app, workflow.after_success(app, second, 4)))
    broker.carry_out("c1", part)  # a late redelivery after the body went: nothing happens
    assert app.transport.client.llen(f"{app.namespace}:q:default") == 1
    run_until(app, planned.result.ready)
    assert planned.result.get(timeout=1) == 6


def test_the_last_parts_finishing_together_enqueue_the_body_once(app, tasks):
    """Many chords whose header tasks all finish at the same moment on 4 consumers."""
    results = [chord((tasks["add"].s(i, j) for j in range(4)), tasks["tsum"].s()).apply_async() for i in range(30)]
    run_until(app, lambda: all(r.ready() for r in results), timeout=60, consumers=4)
    assert [r.get(timeout=1) for r in results] == [4 * i + 6 for i in range(30)]
    assert app.transport.client.llen(f"{app.namespace}:q:default") == 0


def test_protocol_1_writes_v1_or_refuses(app, tasks):
    app.conf.task_protocol = 1
    env = app.envelope(tasks["add"], (1, 2), parent_id="p1")
    from qdeploy.core import producer

    assert '"v":1' in producer.encode(app, env)
    with pytest.raises(ValueError, match="needs envelope v2 .*callbacks.*task_protocol is 1"):
        tasks["add"].apply_async((1, 2), link=tasks["add"].s(1))
    with pytest.raises(ValueError, match="task_protocol = 3: expected 1 or 2"):
        app.conf.update(task_protocol=3)
    app.conf.task_protocol = 2
    assert chain(tasks["add"].s(1, 1), tasks["add"].s(1)).apply_async().parent is not None
