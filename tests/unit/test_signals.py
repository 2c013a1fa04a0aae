"""The Signal class (pure logic): connect forms, sender filters, weak receivers, failures."""

from __future__ import annotations

import gc

import pytest

from qdeploy import signals
from qdeploy.core.signals import Signal


def test_every_celery_signal_name_exists_and_is_the_same_object_in_both_modules():
    from qdeploy.core import signals as core

    names = ["before_task_publish", "after_task_publish", "task_received", "task_prerun", "task_postrun",
             "task_success", "task_failure", "task_retry", "task_revoked", "task_unknown", "task_rejected",
             "worker_init", "worker_ready", "worker_shutting_down", "worker_shutdown", "worker_process_init",
             "worker_process_shutdown", "heartbeat_sent", "beat_init", "setup_logging", "after_setup_logger",
             "after_setup_task_logger"]
    for name in names:
        assert isinstance(getattr(signals, name), Signal) and getattr(signals, name) is getattr(core, name)
        assert getattr(signals, name).name == name
    assert set(names) <= set(signals.__all__)


def test_connect_as_a_decorator_with_and_without_options_and_sender_filters():
    sig = Signal("s")
    seen = []

    @sig.connect
    def anything(sender=None, **kw):
        seen.append(("any", sender, kw))

    @sig.connect(sender="proj.add")
    def only_add(sender=None, **kw):
        seen.append(("add", sender))

    class Task:
        name = "proj.add"

    task = Task()

    @sig.connect(sender=task)
    def only_that_object(sender=None, **kw):
        seen.append(("object", sender))

    sig.send(sender="other", x=1)
    assert seen == [("any", "other", {"signal": sig, "x": 1})]
    seen.clear()
    sig.send(sender=task)  # by identity, and a task object also matches its name
    assert [s[0] for s in seen] == ["any", "add", "object"]
    assert sig.disconnect(only_add, sender="proj.add") and not sig.disconnect(only_add, sender="proj.add")


def test_a_raising_receiver_is_logged_and_the_others_still_run(caplog):
    sig = Signal("s")
    calls = []

    def bad(**kw):
        raise ValueError("boom")

    def good(**kw):
        calls.append(1)
        return "ok"

    sig.connect(bad, weak=False)
    sig.connect(good, weak=False)
    replies = sig.send(sender=None)
    assert calls == [1] and isinstance(replies[0][1], ValueError) and replies[1][1] == "ok"
    assert "signal s: receiver" in caplog.text and "boom" in caplog.text


def test_weak_receivers_go_away_and_strong_ones_stay_and_duplicates_are_ignored():
    sig = Signal("s")

    def make():
        def receiver(**kw):
            return 1
        return receiver

    sig.connect(make())  # nobody keeps it: collected
    gc.collect()
    assert sig.send() == []
    kept = make()
    sig.connect(kept, weak=False)
    sig.connect(kept, weak=False)
    sig.connect(kept, weak=False, dispatch_uid="u")
    sig.connect(make(), weak=False, dispatch_uid="u")  # same uid: ignored
    assert len(sig.send()) == 2

    class Holder:
        def method(self, **kw):
            return "m"

    holder = Holder()
    sig.connect(holder.method)  # a bound method, weakly: alive while its object is
    assert ("m" in [r for _, r in sig.send()])
    del holder
    gc.collect()
    assert "m" not in [r for _, r in sig.send()]
    with pytest.raises(TypeError, match="callable"):
        sig.connect(42)
