"""Pure parts of the worker: the child state machine, max-tasks jitter, option resolution."""

from __future__ import annotations

import pytest

from qdeploy.generator import config
from qdeploy.worker import options
from qdeploy.worker.process import ChildLink
from qdeploy.worker.state import Child, IllegalTransition, State


def child() -> Child:
    return Child(pid=1, slot=1, cids=["n@h/1.1-t1", "n@h/1.1-t2"], events=None, control=None)


def test_state_machine_follows_the_events():
    c = child()
    assert c.state is State.STARTING and c.serving
    c.on_event("U")
    assert c.state is State.IDLE and c.up
    c.on_event("S a 5 n@h/1.1-t1")
    c.on_event("S b 0 n@h/1.1-t2")
    assert c.state is State.BUSY and c.tasks["a"].deadline is not None and c.tasks["b"].deadline is None
    assert c.tasks["b"].cid == "n@h/1.1-t2"
    c.on_event("D a")
    assert c.state is State.BUSY, "busy while any thread runs a task"
    c.on_event("D b")
    assert c.state is State.IDLE and c.tasks_done == 2
    c.on_event("R max_tasks_per_child 2 reached")
    assert c.state is State.RETIRING and not c.serving
    c.transition(State.EXITED)
    assert not c.alive


def test_a_spare_waits_then_serves():
    c = Child(pid=2, slot=1, cids=["n@h/1.2"], events=None, control=None, spare=True)
    assert c.waiting and not c.serving, "a spare does not count towards the pool"
    c.on_event("U")
    assert c.state is State.SPARE and c.waiting
    with pytest.raises(IllegalTransition):
        c.transition(State.BUSY)
    c.promote()
    assert c.state is State.IDLE and c.serving and not c.waiting
    c.on_event("P")
    assert c.wants_spare
    early = Child(pid=3, slot=1, cids=["n@h/1.3"], events=None, control=None, spare=True)
    early.promote()  # told to go before it said U: it serves once up
    early.on_event("U")
    assert early.state is State.IDLE and early.serving


def test_spares_are_asked_for_ten_tasks_ahead(isolated):
    for limit, spare_at in (("1", 0), ("10", 0), ("11", 1), ("1000", 990)):
        cfg = config.load(cli={"worker.max_tasks_per_child": limit}, environ={})
        assert ChildLink(0, 0, options.resolve(cfg, None, max_tasks_jitter=0.0), 1).spare_at == spare_at
    cfg = config.load(cli={}, environ={})
    assert ChildLink(0, 0, options.resolve(cfg, None), 1).spare_at is None, "no recycling, no spare"


def test_illegal_moves_are_refused():
    c = child()
    c.transition(State.STOPPING)
    with pytest.raises(IllegalTransition):
        c.transition(State.IDLE)
    c.transition(State.EXITED)
    with pytest.raises(IllegalTransition):
        c.transition(State.STARTING)


def test_max_tasks_jitter_spreads_limits(isolated):
    cfg = config.load(cli={"worker.max_tasks_per_child": "100"}, environ={})
    opts = options.resolve(cfg, None, max_tasks_jitter=0.2)
    limits = {ChildLink(0, 0, opts, 1).max_tasks for _ in range(200)}
    assert min(limits) >= 80 and max(limits) <= 120 and len(limits) > 10
    exact = options.resolve(cfg, None, max_tasks_jitter=0.0)
    assert {ChildLink(0, 0, exact, 1).max_tasks for _ in range(20)} == {100}


def test_threads_pool_is_one_child_of_n_threads(isolated):
    cfg = config.load(cli={"worker.pool": "threads", "worker.concurrency": "40"}, environ={})
    opts = options.resolve(cfg, None)
    assert (opts.pool, opts.concurrency, opts.threads) == ("prefork", 1, 40)
    cfg = config.load(cli={"worker.concurrency": "3", "worker.threads": "8"}, environ={})
    opts = options.resolve(cfg, None)
    assert (opts.pool, opts.concurrency, opts.threads) == ("prefork", 3, 8)


def test_broker_only_overrides_the_app_when_given(isolated):
    assert options.resolve(config.load(environ={}), None).broker is None
    given = config.load(environ={"QDEPLOY_BROKER": "redis://10.1.2.3:6379/1"})
    assert options.resolve(given, None).broker == "redis://10.1.2.3:6379/1"


def test_notifier_never_blocks_on_a_full_socket(tmp_path):
    import socket
    import time

    from qdeploy.service.sdnotify import SEND_TIMEOUT, Notifier

    path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)  # never read: its queue fills up
    notifier = Notifier({"NOTIFY_SOCKET": path})
    for sent in range(10_000):
        began = time.monotonic()
        if not notifier.status("x" * 1000):
            break
    else:
        raise AssertionError("the socket's queue never filled")
    assert sent > 0 and time.monotonic() - began < SEND_TIMEOUT + 1, "a full queue costs one timeout, then gives up"
    listener.close()


def _events_link(cli: dict):
    import os

    read, write = os.pipe2(os.O_NONBLOCK)
    opts = options.resolve(config.load(cli=cli, environ={}), None)
    link = ChildLink(write, -1, opts, 1)
    hooks = link.hooks("n@h#1")

    def pending() -> list[str]:
        try:
            return os.read(read, 65536).decode().splitlines()
        except BlockingIOError:
            return []
    return link, hooks, pending


def test_a_tasks_end_goes_with_the_next_start_or_before_the_child_waits(isolated):
    """One write (one wake-up of the master) per task: the D line waits for the next S, or for
    the consumer's `on_idle` (before it blocks on Redis), or for the child's last line."""
    link, hooks, pending = _events_link({"history_max": "0"})
    hooks["on_task_start"]("a", "t.x", 1.0, {})
    assert [line.split()[:2] for line in pending()] == [["S", "a"]]
    hooks["on_task_done"]("a", "t.x", "SUCCESS", 0.5)
    assert pending() == [], "held until the next line"
    hooks["on_task_start"]("b", "t.x", 2.0, {})
    got = pending()
    assert [line.split()[:2] for line in got] == [["D", "a"], ["S", "b"]], "one read: one write of both"
    hooks["on_task_done"]("b", "t.x", "FAILURE", 0.1, ValueError("no"))
    assert pending() == []
    hooks["on_idle"]()
    assert [line.split()[:3] for line in pending()] == [["D", "b", "failed"]]
    hooks["on_idle"]()
    assert pending() == [], "written once"
    hooks["on_task_start"]("c", "t.x", 3.0, {})
    hooks["on_task_done"]("c", "t.x", "SUCCESS", 0.1)
    pending()
    link.send("R stopped")  # the child's last line carries it
    assert [line.split()[:2] for line in pending()] == [["D", "c"], ["R", "stopped"]]


def test_a_task_with_a_hard_time_limit_reports_its_end_at_once(isolated):
    """The master enforces the hard limit: it must not see a finished task as still running."""
    link, hooks, pending = _events_link({"history_max": "0"})
    hooks["on_task_start"]("a", "t.x", 1.0, {"hard": 5.0})
    hooks["on_task_done"]("a", "t.x", "SUCCESS", 0.5)
    assert [line.split()[:2] for line in pending()] == [["S", "a"], ["D", "a"]]
    link, hooks, pending = _events_link({"history_max": "0", "worker.time_limit": "30"})
    hooks["on_task_start"]("a", "t.x", 1.0, {})
    hooks["on_task_done"]("a", "t.x", "SUCCESS", 0.5)
    assert [line.split()[:2] for line in pending()] == [["S", "a"], ["D", "a"]]
    link, hooks, pending = _events_link({"history_max": "0", "worker.threads": "2"})
    hooks["on_task_start"]("a", "t.x", 1.0, {})
    hooks["on_task_done"]("a", "t.x", "SUCCESS", 0.5)
    assert [line.split()[:2] for line in pending()] == [["S", "a"], ["D", "a"]], "threads: each line at once"
