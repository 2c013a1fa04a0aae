"""What a child tells its master for the task history (the tail of an `S` line, the `A` line),
and how the master reads it: bounded, ASCII, never trusted."""

from __future__ import annotations

import pytest

from qdeploy.core import message
from qdeploy.ops import history
from qdeploy.ops.history_writer import HistoryWriter
from qdeploy.worker.process import MAX_LINE, history_tail
from qdeploy.worker.state import MAX_CALL, MAX_EVENT, Child


def env(**kw) -> message.Envelope:
    kw.setdefault("queue", "default")
    return message.build(kw.pop("task", "app.t"), kw.pop("args", (1, "x")), kw.pop("kwargs", {"k": "v"}), **kw)


def test_tail_is_the_stored_fields():
    tail = history_tail(env(), True, MAX_LINE)
    assert tail.startswith(" 0\t\t\t\t\t\t")  # retries, no sent (no ETA: the master knows when it was due)
    assert tail.endswith('[[1,"x"],{"k":"v"}]') and tail.count("\t") == history.CHILD_FIELDS - 1
    with_eta = history_tail(env(eta=2e9, parent_id="p1", root_id="r1", group="g1"), False, MAX_LINE)
    fields = with_eta[1:].split("\t")
    assert fields[2] == "2000000000000000" and fields[3:6] == ["p1", "r1", "g1"] and fields[6] == ""


@pytest.mark.parametrize("args", [("x" * 10_000,), ("é\t\n\x00" * 2000,), tuple(range(3000))])
def test_tail_stays_short_and_ascii_whatever_the_arguments(args):
    line = "S " + "i" * 255 + " 0 cid default 0.0 " + "n" * 255
    tail = history_tail(env(args=args), True, MAX_LINE - len(line))
    assert len(line + tail) <= MAX_LINE < MAX_EVENT and tail.isascii()
    assert "\n" not in tail and tail.count("\t") == history.CHILD_FIELDS - 1
    assert tail.rpartition("\t")[2].startswith("~")  # too large to retry: shown only


def test_no_room_no_tail():
    assert history_tail(env(), True, 5) == ""


def test_master_reads_the_tail_and_the_arguments_line():
    child = Child(1, 1, ["cid"], None, None)
    tail = history_tail(env(task_id="t-1"), False, MAX_LINE)
    assert child.on_event(f"S t-1 0 cid default 0.01 app.t{tail}") is None
    task = child.tasks["t-1"]
    assert task.name == "app.t" and task.extra == tail[1:]
    assert child.on_event('A t-1 [[1],{}]') is None and task.call == "[[1],{}]"
    assert child.on_event("A t-unknown [[1],{}]").startswith("malformed task arguments")
    assert child.on_event("A t-1 " + "x" * (MAX_CALL + 1)).startswith("malformed task arguments")
    assert child.on_event("A t-1 " + "x" * MAX_EVENT).startswith("event of")  # refused before it is parsed
    assert task.call == "[[1],{}]"
    assert child.on_event("A t-1").startswith("malformed task arguments")


def test_writer_ignores_a_tail_of_the_wrong_shape():
    writer = HistoryWriter(None, "n@h", cap=10)
    child = Child(1, 1, ["cid"], None, None)
    child.on_event("S t-2 0 cid default 0.01 app.t a\tb")  # one tab where six are due
    writer.started(child, child.last_started)
    writer._queue()
    (_, _, value, _, _), = writer.queued[0][0]
    fields = value.split("\t")
    assert len(fields) == len(history.FIELDS) and fields[-7:] == [""] * 7
    assert fields[:3] == ["STARTED", "n@h", "app.t"]
