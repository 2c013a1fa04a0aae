"""qdeploy.testing, the pytest plugin, as a user's project meets it: loaded through its entry
point (no conftest import), a private Redis, the user's own app, a worker in threads and a real
worker subprocess; and one clear line when redis-server is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PROJ = '''
from qdeploy import App

app = App("proj")  # its broker does not matter: the tests point it at their own Redis

@app.task(name="proj.add")
def add(x, y):
    return x + y

@app.task(name="proj.slow", soft_time_limit=0.2)
def slow():
    import time
    from qdeploy import SoftTimeLimitExceeded
    try:
        time.sleep(5)
    except SoftTimeLimitExceeded:
        return "interrupted"
'''

CONFTEST = '''
import pytest
from proj import app as proj_app

@pytest.fixture
def qdeploy_app(qdeploy_use):
    return qdeploy_use(proj_app)
'''

TESTS = '''
from proj import add, slow
from qdeploy import chain

def test_add(qdeploy_app, qdeploy_worker):
    assert add.delay(2, 2).get(timeout=10) == 4
    assert chain(add.s(1, 1), add.s(3)).apply_async().get(timeout=10) == 5

def test_namespaces_differ(qdeploy_app, qdeploy_namespace):
    assert qdeploy_app.namespace == qdeploy_namespace

def test_time_limits_in_a_real_worker(qdeploy_app, qdeploy_worker_process):
    worker = qdeploy_worker_process("proj:app", "-c", "1")
    assert slow.delay().get(timeout=20) == "interrupted"
    assert worker.stop() == 0
'''


def write(tmp_path):
    for name, text in (("proj.py", PROJ), ("conftest.py", CONFTEST), ("test_proj.py", TESTS)):
        (tmp_path / name).write_text(textwrap.dedent(text))


def run(tmp_path, env):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)


def test_a_project_uses_the_plugin_through_its_entry_point(tmp_path):
    write(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QDEPLOY_", "PYTEST_"))}
    done = run(tmp_path, dict(env, PYTHONPATH=str(tmp_path)))
    assert done.returncode == 0 and "3 passed" in done.stdout, done.stdout + done.stderr


def test_without_redis_server_the_plugin_says_what_it_needs(tmp_path):
    write(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QDEPLOY_", "PYTEST_"))}
    done = run(tmp_path, dict(env, PYTHONPATH=str(tmp_path), PATH="/nonexistent"))
    assert done.returncode != 0
    assert "qdeploy.testing needs redis-server on PATH" in done.stdout
