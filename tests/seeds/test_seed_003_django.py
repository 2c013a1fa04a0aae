"""Seed 003 (shared/seeds/003_*.txt, "Django使用Celery实现异步和定时任务功能"): the izone project —
its CELERY_* settings, izone/celery.py (`Celery('izone')`, `config_from_object('django.conf:settings',
namespace='CELERY')`, `autodiscover_tasks()`), izone/__init__.py, an app's tasks.py with
`@shared_task simple_task` — started with the seed's two commands, `celery -A izone worker -l info`
and `celery -A izone beat -l info` renamed; a periodic task "任务测试" added in the admin (Intervals
+ Periodic tasks in django-celery-beat; one form here) with the seed's arguments [1, 9]; the
worker logs its result, 10. The Django project: tests/contrib/djangoproj.py (name izone, app
easytask as in the seed's output)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from tests.contrib.djangoproj import environ, make_project, manage, migrate
from tests.seeds.procs import QDEPLOY, Proc

import django  # noqa: F401 - the test extra brings it: missing is an error, not a skip

ADD_IN_THE_ADMIN = """
import json
from django.contrib.auth.models import User
from django.test import Client
c = Client()
c.force_login(User.objects.get(username="admin"))
r = c.post("/admin/qdeploy/periodictask/add/", {"name": "任务测试", "task": "easytask.tasks.simple_task",
           "kind": "interval", "every": "1s", "args": "[1, 9]", "kwargs": "{}", "enabled": "on"})
print(json.dumps(r.status_code))
"""


def test_the_two_commands_and_a_periodic_task_added_in_the_admin(tmp_path, make_server):
    root = make_project(tmp_path / "izone-site", name="izone", app1="easytask")
    env = environ(make_server().url)
    migrate(root, env, admin_password="pw")
    worker = Proc([QDEPLOY, "-A", "izone", "worker", "-l", "info", "--allow-root", "-c", "1"], root, env)
    beat = Proc([QDEPLOY, "-A", "izone", "beat", "-l", "info", "--allow-root"], root, env)
    try:
        worker.wait_for("ready: 1 children")
        beat.wait_for("ready: 0 entries, timezone Australia/Tasmania")  # CELERY_TIMEZONE = TIME_ZONE
        added = manage(root, env, "shell", "-c", textwrap.dedent(ADD_IN_THE_ADMIN))
        assert json.loads(added.stdout.strip().splitlines()[-1]) == 302, added.stdout + added.stderr
        beat.wait_for("sent 任务测试: easytask.tasks.simple_task[", 15)  # no restart: "后台添加的任务是不需要重新启动的"
        line = worker.wait_for("Task easytask.tasks.simple_task[", 15)
        assert "succeeded" in line and line.endswith(": 10")
    finally:
        assert beat.stop() == 0
        assert worker.stop() == 0
    for service in (worker, beat):
        assert "CELERY_BEAT_SCHEDULER = 'django_celery_beat.schedulers:DatabaseScheduler' is ignored" in service.output
        assert "CELERY_CACHE_BACKEND is not supported by qdeploy" in service.output
    assert "ready: 1 children" in worker.output and "max_tasks_per_child" not in worker.output


def test_the_supervisord_programs_of_the_seed_run_the_same_commands(tmp_path, make_server):
    """[program:celery-worker] command=celery -A izone worker -l info, directory=the project: a real
    supervisord with the seed's two programs, `celery` replaced by qdeploy's executable."""
    import supervisor as supervisord  # the test extra brings it
    assert supervisord
    root = make_project(tmp_path / "izone", name="izone", app1="easytask")
    env = environ(make_server().url)
    migrate(root, env)
    (root / "log").mkdir()
    conf = tmp_path / "supervisord.conf"
    env_line = ",".join(f'{k}="{v}"' for k, v in (("SEED_BROKER", env["SEED_BROKER"]), ("PATH", env["PATH"])))
    conf.write_text(textwrap.dedent(f"""
        [supervisord]
        nodaemon=true
        logfile={tmp_path}/supervisord.log
        pidfile={tmp_path}/supervisord.pid
        [unix_http_server]
        file={tmp_path}/supervisor.sock
        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
        [supervisorctl]
        serverurl=unix://{tmp_path}/supervisor.sock

        [program:celery-worker]
        command={QDEPLOY} -A izone worker -l info --allow-root -c 1
        directory={root}
        environment={env_line}
        stdout_logfile=log/celery.worker.log
        stderr_logfile=log/celery.worker.log
        autostart=true
        autorestart=true
        startsecs=3
        stopwaitsecs=3
        priority=102

        [program:celery-beat]
        command={QDEPLOY} -A izone beat -l info --allow-root
        directory={root}
        environment={env_line}
        stdout_logfile=log/celery.beat.log
        stderr_logfile=log/celery.beat.log
        autostart=true
        autorestart=true
        startsecs=2
        stopwaitsecs=2
        priority=101
    """))
    added = manage(root, env, "qdeploy", "schedule", "add", "更新缓存", "easytask.tasks.add", "--every", "1s",
                   "--args", "[4, 5]")
    assert added.returncode == 0, added.stderr
    sup = Proc([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)], root, env)  # log/ is relative to it
    try:
        from tests.integration.conftest import wait_until

        log = root / "log" / "celery.worker.log"
        try:
            wait_until(lambda: log.exists() and "Task easytask.tasks.add[" in log.read_text(), 30, what="the log")
        except AssertionError:
            raise AssertionError(sup.output + (log.read_text() if log.exists() else "no log")) from None
        assert "succeeded" in log.read_text() and ": 9" in log.read_text()
        assert "sent 更新缓存" in (root / "log" / "celery.beat.log").read_text()
    finally:
        sup.stop(30)
