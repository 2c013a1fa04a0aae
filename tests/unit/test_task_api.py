"""Celery's task API, pure logic (eager runs: no Redis): the constructor, Task classes, options,
hooks, self.request, serializers, naive ETAs, signals in Celery's order."""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta, timezone

import pytest

from qdeploy import App as Celery
from qdeploy import Task, signals
from qdeploy.core.results import AsyncResult
from qdeploy.core.task import ExceptionInfo

URL = "redis://127.0.0.1:1/0"


def make(**kw) -> Celery:
    return Celery("proj", broker=URL, **kw)


# -- the constructor -------------------------------------------------------------------------------
def test_celerys_constructor_backend_and_include():
    app = Celery(broker="redis://127.0.0.1:1/1", backend="redis://127.0.0.1:1/2", include=["celery_task.tasks"])
    assert app.main is None and app.result_backend == app.backend == "redis://127.0.0.1:1/2"
    assert app.include == ["celery_task.tasks"] and app.broker_url == "redis://127.0.0.1:1/1"
    assert Celery("proj", backend="sentinel://h1,h2/0?master=m").result_backend.startswith("sentinel://")


@pytest.mark.parametrize("backend", ["django-db", "rpc://", "amqp://guest@localhost//", "db+sqlite:///r.db",
                                     "cache+memcached://127.0.0.1:11211/", "redis+sentinel://h/0", 42])
def test_a_backend_that_is_not_a_redis_url_is_one_clear_line(backend):
    with pytest.raises(ValueError) as err:
        make(backend=backend)
    text = str(err.value)
    assert "qdeploy keeps results in Redis only" in text and "redis://" in text and "sentinel://" in text
    assert "\n" not in text


def test_backend_and_result_backend_are_one_setting():
    with pytest.raises(ValueError, match="same setting"):
        make(backend="redis://h/1", result_backend="redis://h/2")
    assert make(backend="redis://h/1", result_backend="redis://h/1").result_backend == "redis://h/1"
    app = make()
    app.configure(backend="redis://h/3")
    assert app.result_backend == "redis://h/3"
    with pytest.raises(ValueError, match="Redis only"):
        app.configure(result_backend="rpc://")


def test_include_must_be_module_names_and_is_imported_by_load_app(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="include"):
        make(include="a.b")
    (tmp_path / "seedproj_app.py").write_text(
        "from qdeploy import App\napp = App('p', broker='redis://127.0.0.1:1/0', include=['seedproj_tasks'])\n")
    (tmp_path / "seedproj_tasks.py").write_text(
        "from seedproj_app import app\n@app.task(name='t.included')\ndef f():\n    return 1\n")
    (tmp_path / "seedproj_bad.py").write_text(
        "from qdeploy import App\napp = App('p', broker='redis://127.0.0.1:1/0', include=['no_such_module_x'])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from qdeploy.core.app import AppImportError, load_app

    app = load_app("seedproj_app:app")
    assert "t.included" in app.tasks
    with pytest.raises(AppImportError, match="no_such_module_x.*in include="):
        load_app("seedproj_bad:app")


# -- task classes ----------------------------------------------------------------------------------
def test_base_class_call_override_and_mro(capsys):
    app = make()

    class DebugTask(Task):
        def __call__(self, *args, **kwargs):
            print(f"TASK STARTING: {self.name}[{self.request.id}]")
            return self.run(*args, **kwargs)

    @app.task(base=DebugTask)
    def add2(x, y):
        return x + y

    assert type(add2).mro()[1:] == [DebugTask, Task, object]
    res = add2.apply((2, 3))
    assert res.get() == 5 and f"TASK STARTING: {add2.name}[{res.id}]" in capsys.readouterr().out
    assert add2(1, 1) == 2  # called directly: runs here, request id None
    assert "[None]" in capsys.readouterr().out


def test_app_task_sets_the_default_base_for_every_task_of_the_app():
    app = make()

    class MyBaseTask(Task):
        queue = "hipri"

    app.Task = MyBaseTask

    @app.task
    def add(x, y):
        return x + y

    assert isinstance(add, MyBaseTask) and add.queue == "hipri"
    assert app.envelope(add, (1, 2)).queue == "hipri"
    assert issubclass(app.Task, MyBaseTask) and app.Task.app is app

    class Subclassed(app.Task):  # class MyTask(app.Task): the base knows its app
        name = "cls.sub"

        def run(self, x):
            return x * 2

    task = app.register_task(Subclassed())
    assert app.tasks["cls.sub"] is task and task.apply((21,)).get() == 42 and task.app is app


def test_class_attributes_become_defaults_of_the_messages():
    app = make()

    class Base(Task):
        queue, time_limit, soft_time_limit, ignore_result = "q1", 30, 20, True
        max_retries, default_retry_delay, acks_late, rate_limit = 7, 1.5, False, "500/m"

    @app.task(base=Base, name="sum-of-two-numbers")
    def add(x, y):
        return x + y

    assert add.name == "sum-of-two-numbers" and app.tasks["sum-of-two-numbers"] is add
    env = app.envelope(add, (1, 2))
    assert (env.queue, env.limits, env.ignore_result) == ("q1", {"hard": 30, "soft": 20}, True)
    assert (add.max_retries, add.default_retry_delay, add.acks_late, add.rate) == (7, 1.5, False, 500 / 60)

    @app.task(base=Base, queue="q2", ignore_result=False)  # the decorator wins over the base
    def other():
        return 1

    env = app.envelope(other, ())
    assert env.queue == "q2" and env.ignore_result is False


def test_unknown_options_are_refused_and_unsupported_celery_ones_warned():
    app = make()
    with pytest.raises(TypeError, match="unknown task option 'max_retry'.*did you mean 'max_retries'"):
        app.task(max_retry=3)(lambda: 1)
    with pytest.warns(UserWarning, match="priority= is ignored"):
        app.task(priority=5, name="p")(lambda: 1)

    class WithCustom(Task):
        custom_setting = 1

    task = app.task(base=WithCustom, custom_setting=5, name="c")(lambda: 1)
    assert task.custom_setting == 5  # an attribute of the base may be set like Celery allows
    with pytest.raises(TypeError, match="base must be a Task subclass"):
        app.task(base=object)(lambda: 1)
    with pytest.raises(TypeError, match="put @app.task last"):
        app.task(app.task(name="twice")(lambda: 1))


def test_serializer_json_is_accepted_and_pickle_refused_with_why():
    app = make()
    assert app.task(serializer="json", name="j")(lambda: 1).serializer == "json"
    with pytest.raises(ValueError, match="pickle.*refused.*JSON only.*runs code"):
        app.task(serializer="pickle", name="p")(lambda: 1)
    with pytest.raises(ValueError, match="yaml.*JSON only"):
        app.task(serializer="yaml", name="y")(lambda: 1)
    task = app.task(name="ok")(lambda: 1)
    with pytest.raises(ValueError, match="pickle"):
        app.envelope(task, (), serializer="pickle")


def test_stacked_decorators_keep_the_function_signature():
    app = make()

    def decorator(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs) * 10
        return wrapper

    @app.task
    @decorator
    @decorator
    def add(x, y):
        return x + y

    assert add.apply((1, 2)).get() == 300 and add.__name__ == "add"


def test_bound_tasks_see_celerys_request_fields():
    app = make()
    seen = {}

    @app.task(bind=True, name="b.req")
    def req(self, x, y=0):
        r = self.request
        seen.update(id=r.id, args=r.args, kwargs=r.kwargs, retries=r.retries, eager=r.is_eager,
                    delivery=r.delivery_info, direct=r.called_directly, name=r.name, headers=r.headers,
                    parent=r.parent_id, root=r.root_id, hard=r.timelimit)
        return x

    res = req.apply((1,), {"y": 2}, headers={"trace": "abc"}, time_limit=9)
    assert seen["id"] == res.id and seen["args"] == [1] and seen["kwargs"] == {"y": 2}
    assert seen["eager"] is True and seen["direct"] is False and seen["name"] == "b.req"
    assert seen["delivery"]["routing_key"] == "default" and seen["headers"] == {"trace": "abc"}
    assert seen["hard"] == (9, None) and seen["parent"] is None
    assert req.request.called_directly and req.request.id is None  # outside a task


def test_subtasks_sent_from_a_task_carry_parent_and_root_ids():
    app = make()
    app.conf.task_always_eager = True
    ids = {}

    @app.task(bind=True, name="p.child")
    def child(self):
        ids["child"] = (self.request.id, self.request.parent_id, self.request.root_id)

    @app.task(bind=True, name="p.parent")
    def parent(self):
        ids["parent"] = self.request.id
        child.delay()

    parent.delay()
    assert ids["child"][1] == ids["parent"] == ids["child"][2]


# -- hooks -----------------------------------------------------------------------------------------
class Recording(Task):
    calls: list = []

    def before_start(self, task_id, args, kwargs):
        self.calls.append(("before_start", task_id, args, kwargs))

    def on_success(self, retval, task_id, args, kwargs):
        self.calls.append(("on_success", retval, task_id, args, kwargs))

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        self.calls.append(("on_failure", type(exc).__name__, task_id, isinstance(einfo, ExceptionInfo),
                           "KeyError" in str(einfo)))

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        self.calls.append(("on_retry", type(exc).__name__, task_id))

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        self.calls.append(("after_return", status, retval if status == "SUCCESS" else type(retval).__name__))


def test_hooks_get_celerys_arguments_in_celerys_order():
    app = make()
    Recording.calls = []

    @app.task(base=Recording, name="h.ok")
    def ok(x):
        return x * 2

    @app.task(base=Recording, name="h.bad")
    def bad():
        raise KeyError("k")

    @app.task(base=Recording, name="h.retry", bind=True, max_retries=1)
    def again(self):
        if self.request.retries == 0:
            raise self.retry(exc=OSError("later"), countdown=5)
        return "second"

    res = ok.apply((2,))
    assert Recording.calls == [("before_start", res.id, [2], {}), ("on_success", 4, res.id, [2], {}),
                               ("after_return", "SUCCESS", 4)]
    Recording.calls = []
    res = bad.apply()
    assert res.state == "FAILURE" and isinstance(res.result, KeyError)
    assert Recording.calls[1:] == [("on_failure", "KeyError", res.id, True, True), ("after_return", "FAILURE", "KeyError")]
    Recording.calls = []
    res = again.apply()
    assert res.get() == "second"
    assert [c[0] for c in Recording.calls] == ["before_start", "on_retry", "after_return", "before_start",
                                              "on_success", "after_return"]
    assert Recording.calls[1][1] == "OSError"


def test_a_raising_hook_is_logged_and_the_outcome_stands(caplog):
    app = make()
    runs = []

    class Broken(Task):
        def on_success(self, retval, task_id, args, kwargs):
            raise RuntimeError("hook broke")

        def after_return(self, *args):
            raise SystemExit(1)  # would end a worker's child: caught too

        def before_start(self, task_id, args, kwargs):
            raise ValueError("before broke")

    @app.task(base=Broken, name="h.broken")
    def fine():
        runs.append(1)
        return "ok"

    with caplog.at_level(logging.ERROR):
        res = fine.apply()
    assert res.get() == "ok" and res.state == "SUCCESS" and runs == [1]
    assert "hook on_success raised RuntimeError: hook broke (the task's outcome stands)" in caplog.text
    assert "hook after_return raised SystemExit" in caplog.text and "hook before_start raised ValueError" in caplog.text


# -- signals ---------------------------------------------------------------------------------------
def test_task_signals_fire_in_celerys_order_with_celerys_arguments():
    app = make()
    seen = []

    def rec(name):
        def receiver(sender=None, **kw):
            seen.append((name, getattr(sender, "name", sender), sorted(k for k in kw if k != "signal")))
        return receiver

    receivers = {name: rec(name) for name in ("task_prerun", "task_postrun", "task_success", "task_failure")}
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver, sender="s.ok" if name != "task_failure" else None)

    @app.task(name="s.ok")
    def ok():
        return 1

    @app.task(name="s.bad")
    def bad():
        raise ValueError("x")

    try:
        ok.apply()
        bad.apply()
    finally:
        for name, receiver in receivers.items():
            getattr(signals, name).disconnect(receiver, sender="s.ok" if name != "task_failure" else None)
    assert seen == [
        ("task_prerun", "s.ok", ["args", "kwargs", "task", "task_id"]),
        ("task_success", "s.ok", ["result"]),
        ("task_postrun", "s.ok", ["args", "kwargs", "retval", "state", "task", "task_id"]),
        ("task_failure", "s.bad", ["args", "einfo", "exception", "kwargs", "task_id", "traceback"]),
    ]


# -- eta and results -------------------------------------------------------------------------------
def test_naive_eta_datetimes_are_utc_aware_ones_as_given(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    import time as time_module

    time_module.tzset()
    try:
        app = make()
        task = app.task(name="e.t")(lambda: 1)
        naive = datetime.utcnow() + timedelta(seconds=10)
        env = app.envelope(task, (), eta=naive)
        assert env.eta == pytest.approx(time_module.time() + 10, abs=1), "read as local time (8 h early)"
        aware = datetime.now(timezone(timedelta(hours=8))) + timedelta(seconds=20)
        assert app.envelope(task, (), eta=aware).eta == pytest.approx(aware.timestamp())
        app.conf.enable_utc, app.conf.timezone = False, "Asia/Shanghai"  # seed 000's settings
        local = datetime.now() + timedelta(seconds=30)
        assert app.envelope(task, (), eta=local).eta == pytest.approx(time_module.time() + 30, abs=1)
        assert app.envelope(task, (), expires=local).expires == pytest.approx(time_module.time() + 30, abs=1)
        app.conf.timezone = "Mars/Olympus"
        with pytest.raises(ValueError, match="not a time zone name"):
            app.envelope(task, (), eta=local)
    finally:
        monkeypatch.delenv("TZ")
        time_module.tzset()


def test_async_result_takes_celerys_keywords_and_refuses_a_bad_id():
    app = make()
    res = AsyncResult(id="21325a40", app=app)
    assert res.id == res.task_id == "21325a40" and str(res) == "21325a40" and res == "21325a40"
    assert app.AsyncResult("x") == AsyncResult("x", app) and hash(app.AsyncResult("x")) == hash("x")
    for bad in (None, 5, ""):
        with pytest.raises(TypeError, match="task id"):
            AsyncResult(bad, app)


def test_apply_async_is_eager_with_task_always_eager_and_propagates_on_request():
    app = make()
    app.conf.task_always_eager = True

    @app.task(name="ae.add")
    def add(x, y):
        return x + y

    @app.task(name="ae.bad")
    def bad():
        raise KeyError("nope")

    assert add.delay(2, 3).get() == 5  # nothing connects to the (unreachable) broker
    res = bad.delay()
    assert res.failed() and isinstance(res.result, KeyError) and "KeyError" in res.traceback
    with pytest.raises(KeyError):
        res.get()
    assert res.get(propagate=False).args == ("nope",)
    app.conf.task_eager_propagates = True
    with pytest.raises(KeyError, match="nope"):
        bad.delay()
    with pytest.raises(KeyError):
        bad.apply(throw=True)
    app.conf.task_eager_propagates = False
    assert bad.apply(throw=False).failed()
