"""Seed 004 (shared/seeds/004_*.txt), its application, task, calling, canvas and periodic-task
sections: each code example as the seed writes it, with only the import and app lines adapted
(`from celery import ...` -> `from qdeploy import ...`; the app is pointed at the test's Redis by
qdeploy.testing's `qdeploy_use`), run for real by a worker (`qdeploy_worker`).

Helpers the seed uses without defining them (User, decorator1/2, something_raising,
other_task, kwargs, test) are defined here. Not here: the `shared_task` example (issue 20)."""

from __future__ import annotations

import functools
import time
from datetime import datetime, timedelta

import pytest

from qdeploy import App as Celery  # the seed: from celery import Celery
from qdeploy import Task  # the seed: from celery import Task
from qdeploy import signature  # the seed: from celery import signature
from qdeploy.beat.entry import load_entries
from qdeploy.beat.schedule import crontab  # the seed: from celery.schedules import crontab

app = Celery("proj")  # the seed: app = Celery(...); pointed at the test Redis by the fixture below
printed: list[str] = []


@pytest.fixture
def qdeploy_app(qdeploy_use):
    printed.clear()
    return qdeploy_use(app)


def print(*args):  # noqa: A001 - the seed's tasks print: keep what they print for the asserts
    printed.append(" ".join(map(str, args)))


# -- ★应用 (the application: base classes) ------------------------------------------------------------
class DebugTask(Task):
    # 指定队列
    # queue = 'hipri'

    def __call__(self, *args, **kwargs):
        print('TASK STARTING: {0.name}[{0.request.id}]'.format(self))
        return self.run(*args, **kwargs)


@app.task(base=DebugTask)
def add2(x, y):
    return x + y


@app.task(queue='hipri')
# 指定队列执行
def hello(to):
    return 'hello {0}'.format(to)


def test_base_debug_task_and_a_queue_option(qdeploy_app, qdeploy_worker):
    res = add2.delay(2, 3)
    assert res.get(timeout=10) == 5 and f"TASK STARTING: {add2.name}[{res.id}]" in printed
    assert hello.queue == "hipri" and qdeploy_app.envelope(hello, ("x",)).queue == "hipri"
    assert hello.apply(("world",)).get() == "hello world"


def test_changing_the_default_task_class():
    other = Celery()  # >>> app = Celery()

    class MyBaseTask(Task):
        queue = 'hipri'

    other.Task = MyBaseTask
    assert issubclass(other.Task, MyBaseTask)

    @other.task
    def add(x, y):
        return x + y

    assert repr(add).startswith("<@task: ") and add.name.endswith(".add")
    mro = add.__class__.mro()
    assert mro[0] is type(add) and MyBaseTask in mro and mro[-2:] == [Task, object]
    assert add.queue == "hipri" and add.apply((1, 2)).get() == 3


# -- ★任务 (tasks) ---------------------------------------------------------------------------------------
class User:
    class objects:  # noqa: N801 - the Django manager the seed calls
        created: list = []  # noqa: RUF012

        @classmethod
        def create(cls, **fields):
            cls.created.append(fields)


@app.task
def create_user(username, password):
    User.objects.create(username=username, password=password)


@app.task(serializer='json', name="seed.create_user_json")
def create_user_json(username, password):  # the seed's second create_user: @app.task(serializer='json')
    User.objects.create(username=username, password=password)


def test_tasks_from_any_callable_and_with_serializer_json(qdeploy_app, qdeploy_worker):
    User.objects.created.clear()
    create_user.delay("ann", "pw1").get(timeout=10)
    create_user_json.delay("bob", "pw2").get(timeout=10)
    assert User.objects.created == [{"username": "ann", "password": "pw1"}, {"username": "bob", "password": "pw2"}]


def decorator1(fn):
    @functools.wraps(fn)
    def wrapped(x, y):
        return fn(x, y) + 1
    return wrapped


def decorator2(fn):
    @functools.wraps(fn)
    def wrapped(x, y):
        return fn(x, y) * 10
    return wrapped


# 多个装饰器时需要排最后一层
@app.task(name="seed.decorated_add")
@decorator2
@decorator1
def decorated_add(x, y):  # the seed's `add` under its stacked decorators
    return x + y


def test_stacked_decorators_with_app_task_last(qdeploy_app, qdeploy_worker):
    assert decorated_add.delay(1, 2).get(timeout=10) == 40


attempts: list[int] = []


def something_raising():
    attempts.append(1)
    raise OSError("flaky")


# 绑定回调，可以使用self
@app.task(bind=True, default_retry_delay=30 * 60, name="seed.retrying_add")  # 先设置三十分钟重试延迟
def retrying_add(self, x, y):
    try:
        something_raising()
    except Exception as exc:
        # 自定义重试延迟,覆盖设置为60s
        raise self.retry(exc=exc, countdown=60)


def test_bind_and_retry_with_countdown(qdeploy_app, qdeploy_worker, qdeploy_redis):
    assert retrying_add.default_retry_delay == 1800
    res = retrying_add.delay(1, 2)
    from tests.integration.conftest import wait_until

    wait_until(lambda: res.state == "RETRY", 10, what="the retry")
    due = qdeploy_app.transport.client.zscore(f"{qdeploy_app.namespace}:eta:default", res.id)
    assert due == pytest.approx(time.time() + 60, abs=5) and res.retries == 1


class MyTask(Task):  # the seed: class MyTask(celery.Task)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        print('{0!r} failed: {1!r}'.format(task_id, exc))


@app.task(base=MyTask, name="seed.failing_add")
def failing_add(x, y):  # the seed's add that raises KeyError
    raise KeyError()


def test_on_failure_of_a_custom_task_class(qdeploy_app, qdeploy_worker):
    res = failing_add.delay(1, 2)
    with pytest.raises(KeyError):
        res.get(timeout=10)
    assert f"{res.id!r} failed: KeyError()" in printed


# 给任务加个名字
@app.task(name='sum-of-two-numbers')
def named_add(x, y):
    return x + y


def test_a_task_name(qdeploy_app, qdeploy_worker):
    assert named_add.name == "sum-of-two-numbers"  # >add.name
    assert qdeploy_app.send_task("sum-of-two-numbers", (1, 1)).get(timeout=10) == 2


# -- ★调用任务 (calling tasks) -----------------------------------------------------------------------------
@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task
def other_task(x):
    return x * 100


# 错误回调
@app.task
def error_handler(request, exc, traceback):
    print('Task {0} raised exception: {1!r}\n{2!r}'.format(
          request.id, exc, traceback))


def test_link_a_callback(qdeploy_app, qdeploy_worker):
    res = add.apply_async((2, 2), link=add.s(16))
    assert res.get(timeout=10) == 4
    from tests.integration.conftest import wait_until

    wait_until(lambda: res.children and res.children[0].ready(), 10, what="the callback")
    assert res.children[0].get(timeout=1) == 20


def test_link_error_and_a_list_of_links(qdeploy_app, qdeploy_worker):
    ok = add.apply_async((2, 2), link_error=error_handler.s())
    assert ok.get(timeout=10) == 4
    bad = add.apply_async(("2", 2), link_error=error_handler.s())  # str + int: TypeError
    from tests.integration.conftest import wait_until

    wait_until(lambda: any(line.startswith(f"Task {bad.id} raised exception: ") for line in printed), 10,
               what="the error callback")
    [line] = [p for p in printed if p.startswith("Task ")]
    assert "TypeError" in line and "Traceback" in line  # called only for the failing one
    both = add.apply_async((2, 2), link=[add.s(16), other_task.s()])
    wait_until(lambda: len(both.children) == 2 and all(c.ready() for c in both.children), 10, what="both links")
    assert [c.get(timeout=1) for c in both.children] == [20, 400]  # in order, each with the parent's result


def test_countdown_eta_and_expires(qdeploy_app, qdeploy_worker):
    started = time.monotonic()
    result = add.apply_async((2, 2), countdown=3)
    assert result.get(timeout=10) == 4 and time.monotonic() - started >= 3  # at least 3 seconds
    tomorrow = datetime.utcnow() + timedelta(days=1)  # noqa: DTZ003 - the seed's spelling
    later = add.apply_async((2, 2), eta=tomorrow)
    due = qdeploy_app.transport.client.zscore(f"{qdeploy_app.namespace}:eta:default", later.id)
    assert due == pytest.approx(time.time() + 86400, abs=5)  # naive = UTC: tomorrow, wherever we are
    soon = add.apply_async((10, 10), expires=60)
    kwargs = {}
    also = add.apply_async((10, 10), kwargs,
                           expires=datetime.now() + timedelta(days=1))  # noqa: DTZ005
    assert soon.get(timeout=10) == also.get(timeout=10) == 20


def test_retry_policy_on_publish(qdeploy_app, qdeploy_worker):
    res = add.apply_async((2, 2), retry=True, retry_policy={
        'max_retries': 3,
        'interval_start': 0,
        'interval_step': 0.2,
        'interval_max': 0.2,
    })
    assert res.get(timeout=10) == 4


# -- 画布 (canvas) -------------------------------------------------------------------------------------------
def test_signatures_and_overriding_options(qdeploy_app, qdeploy_worker):
    assert repr(signature('tasks.add', args=(2, 2), countdown=10)) == "tasks.add(2, 2)"
    s = add.signature((2, 2), countdown=10)
    started = time.monotonic()
    res = s.apply_async(countdown=1)  # countdown is now 1
    assert res.get(timeout=10) == 4 and 1 <= time.monotonic() - started < 8


# -- ★定期任务 (periodic tasks, the "old" scheme) -----------------------------------------------------------
periodic = Celery()  # the seed: app = Celery()


@periodic.on_after_configure.connect
def setup_periodic_tasks(sender, **kwargs):
    # Calls test('hello') every 10 seconds.
    sender.add_periodic_task(10.0, test.s('hello'), name='add every 10')

    # Calls test('world') every 30 seconds
    sender.add_periodic_task(30.0, test.s('world'), expires=10)

    # Executes every Monday morning at 7:30 a.m.
    sender.add_periodic_task(
        crontab(hour=7, minute=30, day_of_week=1),
        test.s('Happy Mondays!'),
    )


@periodic.task
def test(arg):
    print(arg)


test.__test__ = False  # (not the seed's: pytest must not collect the task named `test`)


def test_on_after_configure_add_periodic_task():
    assert periodic.conf.beat_schedule == {}
    periodic.finalize()  # what `qdeploy beat` (and the worker) do when they load the app
    entries = load_entries(periodic.conf.beat_schedule, tz="UTC", source="app")
    assert set(entries) == {"add every 10", f"{test.name}('world')", f"{test.name}('Happy Mondays!')"}
    assert entries["add every 10"].args == ["hello"] and entries[f"{test.name}('world')"].options == {"expires": 10}
    assert entries[f"{test.name}('Happy Mondays!')"].args == ["Happy Mondays!"]
    periodic.finalize()  # once only
    assert len(periodic.conf.beat_schedule) == 3
