"""Seed 004's commands (shared/seeds/004_*.txt, "celery常用指令", "工人指南", "定期任务", "优化", "并发"),
each with `celery` renamed to `qdeploy`, on real workers and beats: multi start/restart/stop/
stopwait w1 with %n/%I pid and log files; the 10-node multi line with -Q:1-3 / -Q:4,5 / -L:4,5
(shown, not started: 10 nodes); inspect active (--destination), control enable_events |
disable_events, events --dump, status; -n worker1@%h with --concurrency=10; worker -B; beat -s
FILE and --scheduler; the celeryconfig.py of "优化" (task_acks_late, worker_prefetch_multiplier);
`-P eventlet -c 1000` refused in one line."""

from __future__ import annotations

import json
import socket
import sys

import pytest

from tests.integration.conftest import wait_until
from tests.seeds.procs import QDEPLOY, Proc, clean_env, run

CELERY_PY = '''
from qdeploy import Celery  # the seed: from celery import Celery

app = Celery('proj')
app.config_from_object('proj.celeryconfig')
'''

CONFIG_PY = '''
import os
broker_url = os.environ["SEED_BROKER"]
imports = ['proj.tasks']
# celeryconfig.py文件，开启消息确认
task_acks_late = True
# 他真正的意思是让工作人员只保留与工作进程一样多的任务
worker_prefetch_multiplier = 1
beat_schedule = {
    'add-every-30-seconds': {
        'task': 'tasks.add',
        'schedule': 1.0,          # the seed: 30.0
        'args': (16, 16)
    },
}
'''

TASKS_PY = '''
import time

from proj.celery import app


@app.task(name='tasks.add')
def add(x, y):
    z = x + y
    print(z)
    return z


@app.task
def nap(seconds):
    time.sleep(seconds)
    return seconds
'''

HOST = socket.gethostname()


@pytest.fixture
def proj(tmp_path, make_server):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "__init__.py").write_text("")
    (tmp_path / "proj" / "celery.py").write_text(CELERY_PY)
    (tmp_path / "proj" / "celeryconfig.py").write_text(CONFIG_PY)
    (tmp_path / "proj" / "tasks.py").write_text(TASKS_PY)
    return tmp_path, clean_env(SEED_BROKER=make_server().url)


def test_worker_help_lists_celerys_options(proj):
    root, env = proj
    done = run([QDEPLOY, "worker", "--help"], root, env)
    assert done.returncode == 0
    for option in ("--loglevel", "--concurrency", "--hostname", "--autoscale", "--beat", "-E", "-O",
                   "--without-gossip", "--without-mingle", "--without-heartbeat", "--pool", "--queues"):
        assert option in done.stdout, option


def test_multi_start_restart_stop_stopwait_w1(proj):
    root, env = proj
    files = [f"--pidfile={root}/run/%n.pid", f"--logfile={root}/log/%n%I.log"]
    (root / "run").mkdir()
    (root / "log").mkdir()
    try:
        for action in ("start", "restart"):
            done = run([QDEPLOY, "multi", action, "w1", "-A", "proj", "-l", "INFO", *files, "--allow-root"], root, env, 90)
            assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr
            assert (root / "run" / "w1.pid").exists()
        sent = run([QDEPLOY, "-A", "proj", "enqueue", "tasks.add", "2", "2", "--wait"], root, env)
        assert sent.stdout.splitlines()[-1] == "SUCCESS 4"
        logs = {p.name: p.read_text() for p in (root / "log").iterdir()}
        assert "ready: 2 children" in logs["w1.log"], "%I: the master's file is w1.log, each child its own"
        assert any("Task tasks.add[" in text for name, text in logs.items() if name != "w1.log"), sorted(logs)
        done = run([QDEPLOY, "multi", "stop", "w1", "-A", "proj", "-l", "INFO", *files], root, env, 60)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(lambda: not (root / "run" / "w1.pid").exists(), 30, what="w1 to stop")
        run([QDEPLOY, "multi", "start", "w1", "-A", "proj", "-l", "INFO", *files, "--allow-root"], root, env, 90)
    finally:
        done = run([QDEPLOY, "multi", "stopwait", "w1", f"--pidfile={root}/run/%n.pid"], root, env, 90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (root / "run" / "w1.pid").exists()


def test_the_ten_node_multi_line_per_node_queues_and_log_levels(proj):
    """celery multi start 10 -A proj -l INFO -Q:1-3 images,video -Q:4,5 data -Q default -L:4,5 debug"""
    root, env = proj
    done = run([QDEPLOY, "multi", "show", "10", "-A", "proj", "-l", "INFO", "-Q:1-3", "images,video", "-Q:4,5", "data",
                "-Q", "default", "-L:4,5", "debug", "--json"], root, env)
    assert done.returncode == 0, done.stderr
    nodes = json.loads(done.stdout)
    assert sorted(nodes, key=int) == [str(n) for n in range(1, 11)]

    def value(node, flag):
        argv = nodes[node]["argv"]
        return argv[argv.index(flag) + 1] if flag in argv else None

    assert [value(str(n), "-Q") for n in range(1, 11)] == ["images,video"] * 3 + ["data"] * 2 + ["default"] * 5
    assert [value(str(n), "-L") for n in (3, 4, 5, 6)] == [None, "debug", "debug", None]
    assert all(value(str(n), "-A") == "proj" and value(str(n), "-l") == "INFO" for n in range(1, 11))


def test_inspect_control_events_and_status(proj):
    root, env = proj
    worker = Proc([QDEPLOY, "-A", "proj", "worker", "-l", "INFO", "--loglevel=INFO", "--concurrency=10",
                   "-n", "worker1@%h", "--allow-root"], root, env)
    try:
        worker.wait_for(f"worker worker1@{HOST} ready: 10 children")
        run([QDEPLOY, "-A", "proj", "enqueue", "proj.tasks.nap", "3"], root, env)
        wait_until(lambda: "proj.tasks.nap" in run([QDEPLOY, "-A", "proj", "inspect", "active"], root, env).stdout, 10,
                   interval=0.2, what="the task in inspect active")
        mine = run([QDEPLOY, "-A", "proj", "inspect", "active", f"--destination=worker1@{HOST}"], root, env)
        assert mine.returncode == 0 and "proj.tasks.nap" in mine.stdout
        other = run([QDEPLOY, "-A", "proj", "inspect", "active", "--destination=celery@example.com"], root, env)
        assert other.returncode == 1, other.stdout + other.stderr  # the seed's node does not exist here: said so
        on = run([QDEPLOY, "-A", "proj", "control", "enable_events"], root, env)
        assert on.returncode == 0, on.stdout + on.stderr
        events = Proc([QDEPLOY, "-A", "proj", "events", "--dump"], root, env)
        try:
            wait_until(lambda: events.lines or events.proc.poll() is None, 5)
            import time

            time.sleep(0.5)
            run([QDEPLOY, "-A", "proj", "enqueue", "tasks.add", "1", "2", "--wait"], root, env)
            events.wait_for("task-succeeded", 15)
        finally:
            events.stop()
        off = run([QDEPLOY, "-A", "proj", "control", "disable_events"], root, env)
        assert off.returncode == 0
        status = run([QDEPLOY, "-A", "proj", "status"], root, env)
        assert f"worker1@{HOST}" in status.stdout and status.returncode == 0
    finally:
        assert worker.stop() == 0
    assert "config:" not in worker.output, "task_acks_late and worker_prefetch_multiplier = 1 are qdeploy's own"


def test_worker_B_and_beat_s_and_scheduler(proj):
    root, env = proj
    worker = Proc([QDEPLOY, "-A", "proj", "worker", "-B", "--allow-root", "-c", "1"], root, env)
    try:
        worker.wait_for("Task tasks.add[", 20)  # beat inside the worker node sends add-every-30-seconds
        assert "beat child" in worker.output
    finally:
        assert worker.stop() == 0
    schedule = root / "home" / "celery" / "var" / "run" / "celerybeat-schedule"
    for extra in (["-s", str(schedule)], ["-l", "INFO", "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"]):
        beat = Proc([QDEPLOY, "-A", "proj", "beat", "--allow-root", *extra], root, env)
        try:
            beat.wait_for("config: -s" if extra[0] == "-s" else "config: -S", 15)
        finally:
            assert beat.stop() == 0
    assert not schedule.exists()


def test_eventlet_with_a_thousand_greenlets_says_use_threads(proj):
    root, env = proj
    done = run([QDEPLOY, "-A", "proj", "worker", "-P", "eventlet", "-c", "1000"], root, env)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "use -P threads" in done.stderr
    threads = Proc([QDEPLOY, "-A", "proj", "worker", "-P", "threads", "-c", "100", "--allow-root"], root, env)
    try:
        threads.wait_for("ready: 1 children")  # the thread pool: 100 threads in one supervised child
        assert run([QDEPLOY, "-A", "proj", "enqueue", "tasks.add", "5", "5", "--wait"], root, env).stdout.endswith("SUCCESS 10\n")
    finally:
        assert threads.stop() == 0
    assert sys.executable


def test_celery_A_proj_multi_start_worker1_the_group_option_form(proj):
    """$ celery -A proj multi start worker1 --pidfile=... --logfile=...: -A before the command."""
    root, env = proj
    done = run([QDEPLOY, "-A", "proj", "multi", "show", "worker1", f"--pidfile={root}/run/celery/%n.pid",
                f"--logfile={root}/log/celery/%n%I.log", "--json"], root, env)
    assert done.returncode == 0, done.stderr
    argv = json.loads(done.stdout)["worker1"]["argv"]
    assert argv[argv.index("--app") + 1] == "proj" and f"{root}/run/celery/worker1.pid" in argv
