"""Fuzzing the two boundaries a hostile value crosses (issue 18): what a child writes to its
master's events pipe, and the options a producer passes to `apply_async`. No input makes the
master's bookkeeping raise; every option is either refused with TypeError/ValueError at once or
yields an envelope a worker accepts."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdeploy import App
from qdeploy.core import message
from qdeploy.worker.state import LEGAL, Child, State

EVENT_WORDS = st.sampled_from(["U", "P", "S", "D", "R", "E", "X", " ", "", "\n", "nan", "inf", "-1", "1e308",
                               "c1", "c2", "id-1", "\x00", "\xff", "é", "9" * 400])
LINES = st.lists(EVENT_WORDS, max_size=6).map(" ".join)


def child(spare: bool = False) -> Child:
    return Child(pid=1, slot=1, cids=["c1", "c2"], events=None, control=None, spare=spare)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.one_of(st.binary(max_size=300), LINES.map(lambda s: (s + "\n").encode())), max_size=30),
       spare=st.booleans())
def test_no_bytes_on_the_events_pipe_make_the_master_raise(chunks, spare):
    c = child(spare)
    for chunk in chunks:
        for line in c.lines(chunk):
            before = c.state
            why = c.on_event(line)
            assert why is None or isinstance(why, str) and "\n" not in why and len(why) < 700
            assert c.state is before or c.state in LEGAL[before]
    assert len(c.buffer) <= 4096 + 300
    for task in c.tasks.values():  # what the master later acts on is sane
        assert message.TASK_ID.fullmatch(task.id) and task.cid in c.cids
        assert task.deadline is None or math.isfinite(task.deadline)
    assert c.state is not State.EXITED


def test_a_well_formed_start_and_end_still_work():
    c = child()
    assert c.lines(b"U\nS id-1 2.5 c2\n") == ["U", "S id-1 2.5 c2"]
    for line in ("U", "S id-1 2.5 c2"):
        assert c.on_event(line) is None
    assert c.state is State.BUSY and c.tasks["id-1"].cid == "c2" and c.tasks["id-1"].deadline
    assert c.on_event("D id-1") is None and c.state is State.IDLE and c.tasks_done == 1
    assert c.on_event("S id-2 nan c1") == "time limit out of range nan"
    assert c.on_event("S id-2 1 c9").startswith("malformed task start")
    assert c.lines(b"x" * 5000) == ["x" * 5000] and c.on_event("x" * 5000) == "event of 5000 characters"


OPTION = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**12), st.floats(allow_nan=True),
                   st.text(max_size=40), st.lists(st.integers(), max_size=3), st.binary(max_size=5),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
OPTIONS = st.fixed_dictionaries({}, optional={
    name: OPTION for name in ("countdown", "eta", "expires", "queue", "task_id", "max_retries", "time_limit",
                              "soft_time_limit", "ignore_result", "retries")})

app = App("fuzz", broker="redis://127.0.0.1:1/0")


@app.task(name="f.t")
def t(*args, **kwargs):
    return args


@settings(max_examples=600)
@given(options=OPTIONS, args=st.one_of(st.lists(st.integers(), max_size=3), st.text(max_size=3), st.integers()))
def test_producer_options_are_refused_at_once_or_make_a_message_workers_accept(options, args):
    try:
        env = app.envelope(t, args, {}, **options)
    except (TypeError, ValueError) as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    try:
        body = message.encode(env)
    except TypeError:
        return  # arguments that are not JSON: refused at send time with a TypeError too
    decoded = message.decode(body)  # never MalformedMessage: the producer checked what the worker checks
    assert decoded.id == env.id and decoded.limits == env.limits and decoded.queue == env.queue
