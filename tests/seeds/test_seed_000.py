"""Seed 000 (shared/seeds/000_*.txt): the `celery_task` package layout (celery.py with broker,
backend and include; tasks.py; add_task.py; get_result.py), with only the import and URL lines
adapted (`from celery import Celery` -> `from qdeploy import Celery`; the seed's Redis URLs ->
databases 1 and 2 of the test's private Redis)."""

from __future__ import annotations

import os
import sys
import time

import pytest

CELERY_PY = '''
import os
from qdeploy import Celery  # the seed: from celery import Celery

broker = os.environ["SEED_BROKER"]    # the seed: 'redis://127.0.0.1:6379/1'
backend = os.environ["SEED_BACKEND"]  # the seed: 'redis://127.0.0.1:6379/2'
app = Celery(broker=broker, backend=backend, include=['celery_task.tasks'])
'''

TASKS_PY = '''
from .celery import app
import time
@app.task
def add(n, m):
    print(n)
    print(m)
    # time.sleep(10)
    print('n+m的结果：%s' % (n + m))
    return n + m

@app.task
def low(n, m):
    print(n)
    print(m)
    print('n-m的结果：%s' % (n - m))
    return n - m
'''

ADD_TASK_PY = '''
from celery_task import tasks

# 添加立即执行任务
t1 = tasks.add.delay(10, 20)
t2 = tasks.low.delay(100, 50)
print(t1.id)


# 添加延迟任务
from datetime import datetime, timedelta
def eta_second(second):
    ctime = datetime.now()
    utc_ctime = datetime.utcfromtimestamp(ctime.timestamp())
    time_delay = timedelta(seconds=second)
    return utc_ctime + time_delay

t3 = tasks.low.apply_async(args=(200, 50), eta=eta_second(10))
'''


def get_result(app, id):  # noqa: A002 - get_result.py, as a function (`async` is a keyword since 3.7: `res`)
    from qdeploy import AsyncResult  # the seed: from celery.result import AsyncResult

    res = AsyncResult(id=id, app=app)
    if res.successful():
        result = res.get()
        return result
    elif res.failed():
        return '任务失败'
    elif res.status == 'PENDING':
        return '任务等待中被执行'
    elif res.status == 'RETRY':
        return '任务异常后正在重试'
    elif res.status == 'STARTED':
        return '任务已经开始被执行'
    return res.status


@pytest.fixture
def project(tmp_path, monkeypatch, qdeploy_redis, qdeploy_namespace):
    package = tmp_path / "celery_task"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "celery.py").write_text(CELERY_PY)
    (package / "tasks.py").write_text(TASKS_PY)
    (tmp_path / "add_task.py").write_text(ADD_TASK_PY)
    base = qdeploy_redis.url.rsplit("/", 1)[0]
    monkeypatch.setenv("SEED_BROKER", f"{base}/1")
    monkeypatch.setenv("SEED_BACKEND", f"{base}/2")
    monkeypatch.setenv("TZ", "Asia/Shanghai")  # where the seed's author runs it
    time.tzset()
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "add_task" or m.startswith("celery_task")]:
        del sys.modules[name]
    monkeypatch.delenv("TZ")
    time.tzset()


def test_the_package_layout_add_task_and_get_result(project, qdeploy_namespace):
    from qdeploy.core.app import load_app
    from qdeploy.testing import ThreadWorker

    app = load_app("celery_task.celery:app")  # what `qdeploy worker -A celery_task.celery:app` loads
    app.configure(namespace=qdeploy_namespace)
    assert {"celery_task.tasks.add", "celery_task.tasks.low"} <= set(app.tasks)  # include= imported them
    assert app.result_backend.endswith("/2")
    import add_task  # the seed's add_task.py, as it is

    due = app.transport.client.zscore(f"{qdeploy_namespace}:eta:default", add_task.t3.id)
    assert due == pytest.approx(time.time() + 10, abs=2), "naive UTC eta in Asia/Shanghai: due in 10 s, not at once"
    assert get_result(app, add_task.t1.id) == "任务等待中被执行"
    worker = ThreadWorker(app)
    try:
        assert add_task.t1.get(timeout=10) == 30 and add_task.t2.get(timeout=10) == 50
    finally:
        worker.stop()
    assert get_result(app, add_task.t1.id) == 30
    assert app.transport.client.get(f"{qdeploy_namespace}:r:{add_task.t1.id}") is None, "results live in db 2"
    from qdeploy.core.connection import connect

    assert connect(os.environ["SEED_BACKEND"]).get(f"{qdeploy_namespace}:r:{add_task.t1.id}") is not None


# -- section 三: beat adds the tasks (timezone, enable_utc, beat_schedule), run by real services --

BEAT_CELERY_PY = '''
import os
from qdeploy import Celery  # the seed: from celery import Celery

broker = os.environ["SEED_BROKER"]    # the seed: 'redis://127.0.0.1:6379/1'
backend = os.environ["SEED_BACKEND"]  # the seed: 'redis://127.0.0.1:6379/2'
app = Celery(broker=broker, backend=backend, include=['celery_task.tasks'])


# 时区
app.conf.timezone = 'Asia/Shanghai'
# 是否使用UTC
app.conf.enable_utc = False

# 任务的定时配置
from datetime import timedelta
from qdeploy.schedules import crontab  # the seed: from celery.schedules import crontab
app.conf.beat_schedule = {
    'low-task': {
        'task': 'celery_task.tasks.low',
        'schedule': timedelta(seconds=3),
        # 'schedule': crontab(hour=8, day_of_week=1),  # 每周一早八点
        'args': (300, 150),
    }
}
'''


@pytest.fixture
def beat_project(tmp_path, make_server):
    from tests.seeds.procs import clean_env

    package = tmp_path / "celery_task"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "celery.py").write_text(BEAT_CELERY_PY)
    (package / "tasks.py").write_text(TASKS_PY)
    base = make_server().url.rsplit("/", 1)[0]
    return tmp_path, clean_env(SEED_BROKER=f"{base}/1", SEED_BACKEND=f"{base}/2")


def test_beat_section_sends_low_every_3s_and_the_worker_runs_it(beat_project):
    """`celery beat -A celery_task -l info` and `celery worker -A celery_task -l info`, renamed."""
    from tests.seeds.procs import QDEPLOY, Proc

    root, env = beat_project
    worker = Proc([QDEPLOY, "worker", "-A", "celery_task", "-l", "info", "--allow-root", "-c", "1"], root, env)
    beat = Proc([QDEPLOY, "beat", "-A", "celery_task", "-l", "info", "--allow-root"], root, env)
    try:
        beat.wait_for("timezone Asia/Shanghai")
        beat.wait_for("sent low-task: celery_task.tasks.low[", 15)
        line = worker.wait_for("Task celery_task.tasks.low[", 15)
        assert "succeeded" in line and line.endswith(": 150")
        worker.wait_for("n-m的结果：150")  # the task's print() reaches the log
        beat.wait_for("sent low-task", 15, count=2)  # and again 3 s later
    finally:
        assert beat.stop() == 0
        assert worker.stop() == 0


def test_the_windows_line_with_eventlet_says_what_to_use(beat_project):
    """`celery worker -A celery_task -l info -P eventlet`: no eventlet pool here; one line."""
    from tests.seeds.procs import QDEPLOY, run

    root, env = beat_project
    done = run([QDEPLOY, "worker", "-A", "celery_task", "-l", "info", "-P", "eventlet"], root, env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "qdeploy: error: -P eventlet: qdeploy has no eventlet pool: use -P threads -c N (N threads in one supervised "
        "child) for I/O-bound tasks, or prefork (the default) for CPU-bound ones"]
