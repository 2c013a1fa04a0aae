"""Signatures and workflows, pure logic and eager runs (no Redis): the JSON form, partial
arguments, options, hostile signatures, and chain/group/chord/chunks/link/link_error eagerly."""

from __future__ import annotations

import json

import pytest

from qdeploy import App, ChordError, Signature, chain, chord, chunks, group, signature
from qdeploy.core import message, sigform, workflow
from qdeploy.core.canvas import maybe_signature


@pytest.fixture
def app():
    app = App("canvas", broker="redis://127.0.0.1:1/0")

    @app.task(name="tasks.add")
    def add(x, y):
        return x + y

    @app.task(name="tasks.mul")
    def mul(x, y):
        return x * y

    @app.task(name="tasks.tsum")
    def tsum(numbers):
        return sum(numbers)

    @app.task(name="tasks.boom")
    def boom(*args):
        raise KeyError("boom")

    app.errors = []

    @app.task(name="tasks.on_error")
    def on_error(request, exc, traceback):
        app.errors.append((request.id, type(exc).__name__, str(exc), "Traceback" in (traceback or "")))
        return request.id

    @app.task(name="tasks.old_style_errback")
    def old_style(task_id):
        app.errors.append(("old", task_id))

    return app


def t(app, name):
    return app.tasks[f"tasks.{name}"]


# -- signatures --------------------------------------------------------------------------------------
def test_s_si_signature_and_qdeploy_signature(app):
    add = t(app, "add")
    assert repr(add.s(2, 2)) == "tasks.add(2, 2)" and repr(signature("tasks.add", args=(2, 2), countdown=10)) == "tasks.add(2, 2)"
    s = signature("tasks.add", args=(2, 2), countdown=10)
    assert s.task == s.name == "tasks.add" and s.args == [2, 2] and s.options == {"countdown": 10}
    assert add.si(1).immutable and not add.s(1).immutable and repr(add.si(1, 2)) == "tasks.add(1, 2)!"
    s2 = add.signature((2, 2), {"k": 1}, countdown=10)
    assert (s2.args, s2.kwargs, s2.options) == ([2, 2], {"k": 1}, {"countdown": 10})
    assert signature(dict(s2)) == s2 and signature(s2) == s2 and signature(s2) is not s2
    assert signature("tasks.add", (1, 2), {"z": 3}).kwargs == {"z": 3}


def test_set_clone_and_apply_async_overrides(app):
    add = t(app, "add")
    s = add.signature((2, 2), countdown=10)
    planned = workflow.plan(s.clone(), app, (), None, {"countdown": 1})
    assert planned.calls[0].options["countdown"] == 1  # "countdown is now 1"
    assert s.set(queue="hipri") is s and s.options == {"countdown": 10, "queue": "hipri"}
    c = s.clone(args=(5,), kwargs={"k": 1}, expires=3)
    assert c.args == [5, 2, 2] and c.kwargs == {"k": 1} and c.options["expires"] == 3 and s.args == [2, 2]
    assert c.app is app and c.type is add
    assert add.s(1)(2) == 3  # a signature is callable like its task: args go first
    with pytest.raises(TypeError, match="unknown apply_async option 'countdwn'.*countdown"):
        s.set(countdwn=1)
    with pytest.raises(ValueError, match="pickle"):
        add.s().set(serializer="pickle")


def test_partial_arguments_new_first_immutable_keeps_its_own(app):
    add = t(app, "add")
    a, k, _ = add.s(16)._merge((4,), {"x": 1})
    assert a == [4, 16] and k == {"x": 1}
    a, k, _ = add.si(1, 2)._merge((4,), {"x": 1})
    assert a == [1, 2] and k == {}


def test_a_signature_is_json_and_comes_back_the_same(app):
    add, mul, tsum = t(app, "add"), t(app, "mul"), t(app, "tsum")
    for sig in (add.s(1, 2).set(countdown=3, link=mul.s(2)), add.s(1) | mul.s(2) | add.s(3),
                group(add.s(i, i) for i in range(3)), chord([add.s(1, 1), add.s(2, 2)], tsum.s()),
                chain(group(add.s(1, 1)), tsum.s())):
        text = json.dumps(sig)
        back = Signature.from_dict(json.loads(text), app)
        assert back == sig and type(back) is type(sig) and json.dumps(back) == text


@pytest.mark.parametrize("bad, why", [
    ("tasks.add", "must be an object"),
    ({"task": "tasks.add", "args": {}, "kwargs": {}}, "args must be a list"),
    ({"task": "bad name", "args": []}, "invalid signature task name"),
    ({"task": "x", "sneaky": 1}, "unknown keys"),
    ({"task": "x", "options": {"countdwn": 1}}, "unknown option"),
    ({"task": "x", "options": {"queue": "no spaces"}}, "invalid queue"),
    ({"task": "x", "options": {"countdown": float("inf")}}, "finite number"),
    ({"task": "x", "options": {"task_id": "a b"}}, "invalid task_id"),
    ({"task": "x", "options": {"link": [{"task": 5}]}}, "must be a string"),
    ({"task": "x", "subtask_type": "map"}, "unknown signature type"),
    ({"task": "qdeploy.chain", "subtask_type": "chain", "kwargs": {"tasks": "x"}}, "a chain signature needs"),
    ({"task": "qdeploy.chord", "subtask_type": "chord", "kwargs": {"header": {"task": "x"}, "body": {"task": "y"}}},
     "header must be a group"),
    ({"task": "x", "immutable": "yes"}, "immutable"),
])
def test_hostile_signatures_are_refused_with_a_reason(app, bad, why):
    with pytest.raises((TypeError, ValueError), match=why):
        Signature.from_dict(bad, app) if isinstance(bad, dict) else sigform.check_signature(bad)


def test_nesting_and_size_are_bounded():
    deep: dict = {"task": "x"}
    for _ in range(message.MAX_DEPTH + 2):
        deep = {"task": "x", "options": {"link": [deep]}}
    with pytest.raises(ValueError, match="nested more than"):
        sigform.check_signature(deep)
    wide = {"task": "qdeploy.group", "subtask_type": "group", "kwargs": {"tasks": [{"task": "x"}] * (sigform.MAX_NODES + 1)}}
    with pytest.raises(ValueError, match="more than 100000 signatures"):
        sigform.check_signature(wide)


def test_a_cycle_of_links_is_refused_at_the_producer(app):
    add = t(app, "add")
    s = add.s(1)
    s.link(s)
    with pytest.raises(ValueError, match="refers to itself"):
        add.apply_async((1,), link=s)
    with pytest.raises(TypeError, match="takes signatures: use add.s"):
        app.envelope(add, (1,), link=add)
    with pytest.raises(TypeError, match="expected a signature, got the task"):
        chain(add, add.s(1))


def test_unsupported_shapes_say_so(app):
    add, tsum = t(app, "add"), t(app, "tsum")
    with pytest.raises(ValueError, match="a group inside a group"):
        group(group(add.s(1, 1)), add.s(2, 2)).apply()
    with pytest.raises(ValueError, match="chord's body must be a task or a chain"):
        chord([add.s(1, 1)], group(tsum.s())).apply()
    with pytest.raises(TypeError, match="needs a body"):
        chord([add.s(1, 1)]).apply_async()
    with pytest.raises(ValueError, match="at least one task"):
        chain().apply()
    with pytest.raises(ValueError, match="positive chunk size"):
        chunks(add.s(), [(1, 2)], 0)


def test_or_builds_chains_and_chords(app):
    add, tsum = t(app, "add"), t(app, "tsum")
    c = add.s(1, 2) | add.s(3) | add.s(4)
    assert isinstance(c, chain) and len(c.tasks) == 3
    assert isinstance(group(add.s(1, 1)) | tsum.s(), chord)
    assert isinstance(c | (add.s(5) | add.s(6)), chain) and len((c | (add.s(5) | add.s(6))).tasks) == 5
    assert repr(c) == "tasks.add(1, 2) | tasks.add(3) | tasks.add(4)"
    assert maybe_signature(dict(add.s(1)), app) == add.s(1)


# -- eager workflows ---------------------------------------------------------------------------------
def test_eager_chain_group_chord_chunks(app):
    add, mul, tsum = t(app, "add"), t(app, "mul"), t(app, "tsum")
    res = (add.s(1, 2) | add.s(3) | mul.s(10)).apply()
    assert res.get() == 60 and res.parent.get() == 6 and res.parent.parent.get() == 3
    g = group(add.s(i, i) for i in range(10)).apply()
    assert g.get() == [i * 2 for i in range(10)] and g.ready() and g.completed_count() == 10 and len(g) == 10
    assert chord((add.s(i, i) for i in range(10)), tsum.s()).apply().get() == 90
    assert (group(add.s(i, i) for i in range(4)) | tsum.s()).apply().get() == 12
    assert chord([], tsum.s()).apply().get() == 0  # Celery: an empty header calls the body with []
    assert chord([add.s(1, 1)], add.si(5, 5)).apply().get() == 10  # an immutable body ignores the results
    parts = add.chunks(zip(range(10), range(10), strict=True), 3).apply()
    assert parts.get() == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]
    nested = (add.s(1, 1) | group(add.s(1), add.s(2)) | tsum.s()).apply()
    assert nested.get() == 7  # (2+1) + (2+2)
    header_chains = chord([add.s(1, 1) | mul.s(10), add.s(2, 2)], tsum.s()).apply()
    assert header_chains.get() == 24


def test_eager_links_and_error_callbacks(app):
    add, boom = t(app, "add"), t(app, "boom")
    res = add.apply((2, 2), link=[add.s(16), t(app, "mul").s(3)])
    assert res.get() == 4 and [c.get() for c in res.children] == [20, 12]
    res = boom.apply((1,), link_error=[t(app, "on_error").s(), t(app, "old_style_errback").s()])
    assert res.failed() and app.errors[0][:3] == (res.id, "KeyError", "task " + res.id + " failed: KeyError: 'boom'")
    assert app.errors[0][3] is True and app.errors[1] == ("old", res.id)
    assert isinstance(res.result, KeyError)


def test_eager_chord_whose_header_fails_runs_the_body_errback_not_the_body(app):
    add, boom, tsum = t(app, "add"), t(app, "boom"), t(app, "tsum")
    body = tsum.s()
    body.link_error(t(app, "on_error").s())
    res = chord([add.s(1, 1), boom.s()], body).apply()
    assert res.failed()
    with pytest.raises(ChordError, match="Dependency .* raised KeyError"):
        res.get()
    assert app.errors and app.errors[0][0] == res.id and app.errors[0][1] == "ChordError"


def test_eager_chain_stops_at_a_failure_and_get_raises_it(app):
    add, boom = t(app, "add"), t(app, "boom")
    res = (add.s(1, 1) | boom.s() | add.s(5)).apply()
    assert res.state == "PENDING" and res.parent.failed()
    with pytest.raises(KeyError):
        res.get(timeout=0.1)  # follow_parents: the failed step's error, not a timeout
