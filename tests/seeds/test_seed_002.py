"""Seed 002 (shared/seeds/002_*.txt): the `wedo` package — `Celery('wedo')` +
`config_from_object('wedo.config')` with the old upper-case names (BROKER_URL,
CELERY_RESULT_BACKEND, CELERY_TASK_RESULT_EXPIRES, CELERY_TIMEZONE, CELERY_IMPORTS...), tasks and
a period_task module with `add_periodic_task` — and its commands: `-A NAME worker
--loglevel=INFO`, `--concurrency=4`, `-P threads`, `-P solo`, `-P eventlet`/`-P gevent` (one line
saying to use threads), and the "advanced" line `worker --without-gossip --without-mingle
--heartbeat-interval 60 -A tasks.cma.task -c 5 -E -Q cma_queue -l info -n cma.%h -Ofair`.
Only `celery` -> `qdeploy`, the import line and the Redis URL (the test's private server) change."""

from __future__ import annotations

import json
import sys

import psutil
import pytest

from tests.integration.conftest import wait_until
from tests.seeds.procs import QDEPLOY, Proc, clean_env, run

INIT_PY = '''
# celery 实例初始化
from qdeploy import Celery  # the seed: from celery import Celery
app = Celery('wedo')  # 创建 Celery 实例
app.config_from_object('wedo.config')
'''

CONFIG_PY = '''
import os
BROKER_URL = os.environ["SEED_BROKER"] # Broker配置，使用Redis作为消息中间件 (the seed: 'redis://10.8.238.2:6379/0')
CELERY_RESULT_BACKEND = os.environ["SEED_BROKER"] # BACKEND配置，这里使用redis
CELERY_RESULT_SERIALIZER = 'json' # 结果序列化方案
CELERY_TASK_RESULT_EXPIRES = 60 * 60 * 24 # 任务过期时间
CELERY_TIMEZONE='Asia/Shanghai'   # 时区配置
CELERY_IMPORTS = (     # 指定导入的任务模块,可以指定多个
    'wedo.tasks',
    'wedo.period_task'
)
'''

TASKS_PY = '''
from wedo import app


@app.task
def add(x, y):
    return x + y


@app.task
def to_string(x):
    return str(x)
'''

PERIOD_TASK_PY = '''
from wedo import app
from wedo.tasks import to_string


@app.on_after_configure.connect
def setup(sender, **kwargs):
    # 指定频率执行：sender.add_periodic_task(时间频率单位s, 任务函数, name='to_string')
    sender.add_periodic_task(1.0, to_string.s('tick'), name='to_string')
'''


@pytest.fixture
def wedo(tmp_path, make_server):
    (tmp_path / "wedo").mkdir()
    for name, text in (("__init__", INIT_PY), ("config", CONFIG_PY), ("tasks", TASKS_PY), ("period_task", PERIOD_TASK_PY)):
        (tmp_path / "wedo" / f"{name}.py").write_text(text)
    return tmp_path, clean_env(SEED_BROKER=make_server().url)


def _children(proc: Proc) -> list[psutil.Process]:
    return [c for c in psutil.Process(proc.proc.pid).children() if "child" in " ".join(c.cmdline())]


def _add(root, env) -> int:
    done = run([QDEPLOY, "-A", "wedo", "enqueue", "wedo.tasks.add", "2", "3", "--wait"], root, env)
    assert done.returncode == 0, done.stdout + done.stderr
    return int(done.stdout.splitlines()[-1].split()[1])


@pytest.mark.parametrize(("argv", "children", "threads"), [
    (["-A", "wedo", "worker", "--loglevel=INFO"], None, None),          # 启动1
    (["-A", "wedo", "worker", "--loglevel=info", "--concurrency=4"], 4, None),  # 启动2
    (["-A", "wedo", "worker", "-l", "info", "-P", "threads"], 1, True),  # 启动3: threads
    (["-A", "wedo", "worker", "-l", "info", "-P", "solo"], 0, None),     # 启动3: solo
])
def test_the_start_commands(wedo, argv, children, threads):
    root, env = wedo
    worker = Proc([QDEPLOY, *argv, "--allow-root"], root, env)
    try:
        if children == 0:
            worker.wait_for("(solo) consuming default")
        else:
            worker.wait_for("ready:")
        if children:
            wait_until(lambda: len(_children(worker)) == children, 15, what=f"{children} children")
        assert _add(root, env) == 5
    finally:
        assert worker.stop() == 0
    assert "config:" not in worker.output, "every setting of the seed's config is one qdeploy takes"


@pytest.mark.parametrize("pool", ["eventlet", "gevent"])
def test_eventlet_and_gevent_say_use_threads(wedo, pool):
    root, env = wedo
    done = run([QDEPLOY, "-A", "tasks", "worker", "-l", "info", "-P", pool], root, env)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert f"qdeploy has no {pool} pool: use -P threads" in done.stderr


def test_the_old_names_reach_the_app(wedo):
    root, env = wedo
    done = run([sys.executable, "-c", "import sys, json; sys.path.insert(0, '.')\nfrom qdeploy.core.app import load_app\n"
                "app = load_app('wedo')\nprint(json.dumps([app.result_ttl, app.conf.timezone, sorted(app.tasks),"
                " sorted(app.conf.beat_schedule)]))"], root, env)
    ttl, zone, tasks, schedule = json.loads(done.stdout.strip().splitlines()[-1])
    assert ttl == 86400 and zone == "Asia/Shanghai" and schedule == ["to_string"]
    assert {"wedo.tasks.add", "wedo.tasks.to_string"} <= set(tasks), "CELERY_IMPORTS imported them"


def test_add_periodic_task_runs_on_beat(wedo):
    root, env = wedo
    worker = Proc([QDEPLOY, "-A", "wedo", "worker", "-l", "info", "--allow-root", "-c", "1"], root, env)
    beat = Proc([QDEPLOY, "-A", "wedo", "beat", "-l", "info", "--allow-root"], root, env)
    try:
        beat.wait_for("timezone Asia/Shanghai")
        line = worker.wait_for("Task wedo.tasks.to_string[", 15)
        assert line.endswith(": 'tick'")
    finally:
        assert beat.stop() == 0
        assert worker.stop() == 0


def test_the_advanced_command_line(tmp_path, make_server):
    """celery worker --without-gossip --without-mingle --heartbeat-interval 60 -A tasks.cma.task
    -c 5 -E -Q cma_queue -l info -n cma.%%h -Ofair (%% is supervisord's escape: %h on a shell)."""
    (tmp_path / "tasks" / "cma").mkdir(parents=True)
    for package in ("tasks", "tasks/cma"):
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "tasks" / "cma" / "task.py").write_text(
        "import os\nfrom qdeploy import Celery\napp = Celery('cma', broker=os.environ['SEED_BROKER'])\n\n"
        "@app.task(queue='cma_queue')\ndef work(n):\n    return n * 2\n")
    env = clean_env(SEED_BROKER=make_server().url)
    import socket

    host = socket.gethostname()
    worker = Proc([QDEPLOY, "worker", "--without-gossip", "--without-mingle", "--heartbeat-interval", "60", "-A",
                   "tasks.cma.task", "-c", "5", "-E", "-Q", "cma_queue", "-l", "info", "-n", "cma.%h", "-Ofair",
                   "--allow-root"], tmp_path, env)
    events = Proc([QDEPLOY, "-A", "tasks.cma.task", "events", "--dump"], tmp_path, env)
    try:
        worker.wait_for(f"worker cma.{host}@{host} ready: 5 children")
        done = run([QDEPLOY, "-A", "tasks.cma.task", "enqueue", "tasks.cma.task.work", "21", "--wait"], tmp_path, env)
        assert done.stdout.splitlines()[-1] == "SUCCESS 42", done.stdout + done.stderr
        events.wait_for("task-succeeded", 15)  # -E: task events are on
        status = run([QDEPLOY, "-A", "tasks.cma.task", "status"], tmp_path, env)
        assert f"cma.{host}@{host}" in status.stdout
    finally:
        events.stop()
        assert worker.stop() == 0
    assert "queues cma_queue" in worker.output
