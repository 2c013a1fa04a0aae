"""Seed 001 (shared/seeds/001_*.txt): `app.conf.broker_url` / `app.conf.result_backend`, a
`celery_task.py` module with `add` and `cmd`, `celery -A tasks worker --loglevel=info`,
`celery -A celery_task worker -l debug`, then `add.delay(4,5)`, `t.get()`, `t.get(timeout=1)`,
`propagate=False`, `t.ready()`; and the proj/{__init__,celery,tasks}.py layout with
`celery -A proj worker -l info`. Only `celery` -> `qdeploy` and the import line change; the
Redis URL is the test's private server. An amqp:// broker_url (the seed's RabbitMQ line) is
refused in one line saying what to use."""

from __future__ import annotations

import pytest

from tests.seeds.procs import QDEPLOY, Proc, clean_env, run

CELERY_TASK_PY = '''
import os
import subprocess
import time

from qdeploy import Celery  # the seed: from celery import Celery

app = Celery('tasks')
app.conf.broker_url = os.environ["SEED_BROKER"]      # the seed: 'redis://localhost:6379/0'
app.conf.result_backend = os.environ["SEED_BROKER"]  # the seed: 'redis://localhost:6379/0'


@app.task
def add(x, y):
    time.sleep(float(os.environ.get("ADD_SLEEP", "0")))
    return x + y


@app.task
def cmd(command):
    return subprocess.run(command, shell=True, capture_output=True, text=True).stdout
'''

CLIENT = '''
import json, sys
sys.path.insert(0, ".")
from celery_task import add, cmd
from qdeploy.core.results import ResultTimeout
t1 = add.delay(4, 5)
out = {"id_looks_like": len(t1.id), "get": t1.get(timeout=15), "ready": t1.ready()}
slow = add.apply_async((1, 1), countdown=5)
try:
    slow.get(timeout=1)
except ResultTimeout as exc:
    out["timeout"] = type(exc).__name__
out["ready_before"] = slow.ready()
out["cmd"] = cmd.delay("echo hello").get(timeout=15)
print(json.dumps(out))
'''


@pytest.fixture
def world(tmp_path, make_server):
    (tmp_path / "celery_task.py").write_text(CELERY_TASK_PY)
    (tmp_path / "tasks.py").write_text("from celery_task import app, add, cmd  # noqa: F401\n")
    return tmp_path, clean_env(SEED_BROKER=make_server().url)


@pytest.mark.parametrize("argv", [["-A", "tasks", "worker", "--loglevel=info"],
                                  ["-A", "celery_task", "worker", "-l", "debug"]])
def test_start_a_worker_and_call_add_delay_from_a_python_shell(world, argv):
    root, env = world
    worker = Proc([QDEPLOY, *argv, "--allow-root", "-c", "1"], root, env)
    try:
        worker.wait_for("ready: 1 children")
        done = run([__import__("sys").executable, "-c", CLIENT], root, env)
        assert done.returncode == 0, done.stderr
        import json

        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out == {"id_looks_like": 36, "get": 9, "ready": True, "timeout": "ResultTimeout",
                       "ready_before": False, "cmd": "hello\n"}
    finally:
        assert worker.stop() == 0


def test_get_propagate_false_returns_the_exception_instead_of_raising(world):
    root, env = world
    (root / "celery_task.py").write_text(CELERY_TASK_PY + "\n\n@app.task\ndef fail():\n    raise KeyError('k')\n")
    worker = Proc([QDEPLOY, "-A", "celery_task", "worker", "-l", "info", "--allow-root", "-c", "1"], root, env)
    try:
        worker.wait_for("ready: 1 children")
        done = run([__import__("sys").executable, "-c", "import sys; sys.path.insert(0, '.')\n"
                    "from celery_task import fail\nr = fail.delay()\nv = r.get(timeout=15, propagate=False)\n"
                    "print(type(v).__name__, r.failed(), r.ready())"], root, env)
        assert done.stdout.split() == ["KeyError", "True", "True"], done.stdout + done.stderr
    finally:
        worker.stop()


PROJ_CELERY = '''
import os

from qdeploy import Celery  # the seed: from celery import Celery

app = Celery('proj', broker=os.environ["SEED_BROKER"], backend=os.environ["SEED_BROKER"], include=['proj.tasks'])
'''


def test_the_proj_layout_with_celery_A_proj_worker_l_info(world):
    root, env = world
    (root / "proj").mkdir()
    (root / "proj" / "__init__.py").write_text("")
    (root / "proj" / "celery.py").write_text(PROJ_CELERY)
    (root / "proj" / "tasks.py").write_text("from .celery import app\n\n@app.task\ndef add(x, y):\n    return x + y\n")
    worker = Proc([QDEPLOY, "-A", "proj", "worker", "-l", "info", "--allow-root", "-c", "1"], root, env)
    try:
        worker.wait_for("ready: 1 children")
        done = run([QDEPLOY, "-A", "proj", "enqueue", "proj.tasks.add", "4", "5", "--wait"], root, env)
        assert done.stdout.splitlines()[-1] == "SUCCESS 9", done.stdout + done.stderr
    finally:
        assert worker.stop() == 0


def test_the_rabbitmq_broker_url_is_one_line_saying_what_to_use(world):
    root, env = world
    (root / "rabbit.py").write_text("from qdeploy import Celery\napp = Celery('r')\n"
                                    "app.conf.broker_url = 'amqp://guest:guest@localhost:5672//'\n")
    done = run([QDEPLOY, "-A", "rabbit", "worker", "-l", "info"], root, env)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "qdeploy's broker is Redis; RabbitMQ (AMQP) is not supported: expected a URL starting with redis://" in done.stderr
    assert "guest:guest" not in done.stderr
