"""Celery's configuration and command line on real processes: `qdeploy -A proj worker -l INFO`
from a project directory with no PYTHONPATH, the app's settings used (and the unsupported ones
warned about at start), a conflict with the command line named, --autoscale growing and
shrinking a real pool, -B running a supervised beat, beat -s/-S, and every bad input a careless
user types: one line, non-zero exit."""

from __future__ import annotations

import signal
import textwrap
import time

import psutil
import pytest

from tests.integration.conftest import wait_until
from tests.seeds.procs import QDEPLOY, Proc, clean_env, run

CELERY_PY = """\
from qdeploy import Celery

app = Celery('proj')
app.config_from_object('proj.celeryconfig')
"""

CONFIG_PY = """\
import os
from datetime import timedelta

broker_url = os.environ['SEED_BROKER']
imports = ('proj.tasks',)
worker_concurrency = 2
task_default_queue = 'work'
CELERY_CACHE_BACKEND = 'django-cache'
broker_pool_limit = 10
beat_schedule = {'add-every-second': {'task': 'proj.tasks.add', 'schedule': timedelta(seconds=1), 'args': (2, 3)}}
"""

TASKS_PY = """\
import time

from proj.celery import app


@app.task
def add(x, y):
    return x + y


@app.task
def nap(seconds):
    time.sleep(seconds)
    return seconds
"""


def project(root, name="proj", celery=CELERY_PY, config=CONFIG_PY, tasks=TASKS_PY,
            init="from .celery import app as celery_app\n"):
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(init)
    (pkg / "celery.py").write_text(celery.replace("proj", name))
    (pkg / "celeryconfig.py").write_text(config)
    (pkg / "tasks.py").write_text(tasks.replace("proj", name))
    return root


@pytest.fixture
def redis_url(make_server):
    return make_server().url


@pytest.fixture
def env(redis_url):
    return clean_env(SEED_BROKER=redis_url)


def one_line_error(result, code: int, text: str) -> None:
    out = (result.stdout + result.stderr).strip()
    assert result.returncode == code, out
    assert len(out.splitlines()) == 1 and text in out, out


def test_worker_A_proj_from_the_project_directory_with_no_pythonpath(tmp_path, env):
    project(tmp_path)
    worker = Proc([QDEPLOY, "-A", "proj", "worker", "-l", "INFO", "--allow-root", "-n", "w1@%h"], tmp_path, env)
    try:
        worker.wait_for("ready: 2 children")  # worker_concurrency from the app's config
        done = run([QDEPLOY, "-A", "proj", "enqueue", "proj.tasks.add", "2", "3", "--wait"], tmp_path, env)
        assert done.returncode == 0 and done.stdout.splitlines()[-1] == "SUCCESS 5", done.stdout + done.stderr
        worker.wait_for("Task proj.tasks.add[")
        assert "queues work" in worker.output, "task_default_queue from the app's config"
    finally:
        assert worker.stop() == 0
    warnings = [line for line in worker.lines if "WARNING" in line and "config:" in line]
    assert len(warnings) == 2, warnings
    assert any("proj.celeryconfig: CELERY_CACHE_BACKEND is not supported by qdeploy" in w for w in warnings)
    assert any("proj.celeryconfig: broker_pool_limit is not supported" in w and "broker URL" in w for w in warnings)


def test_a_broker_given_twice_is_a_warning_naming_both_and_the_flag_wins(tmp_path, env, make_server):
    project(tmp_path)
    other = make_server().url
    worker = Proc([QDEPLOY, "worker", "-A", "proj", "-b", other, "-l", "info", "--allow-root", "-c", "1"], tmp_path, env)
    try:
        line = worker.wait_for("two broker URLs")
        assert f"{env['SEED_BROKER']} from proj.celeryconfig: broker_url and {other} from the command line (-b)" in line
        worker.wait_for("ready: 1 children")  # -c beats worker_concurrency, and says so
        assert "two values of worker concurrency: 2 from proj.celeryconfig: worker_concurrency" in worker.output
        done = run([QDEPLOY, "-A", "proj", "-b", other, "enqueue", "proj.tasks.add", "1", "1", "--wait"], tmp_path, env)
        assert done.stdout.splitlines()[-1] == "SUCCESS 2", done.stdout + done.stderr
    finally:
        worker.stop()


BAD_APPS = {
    "no_config": (CELERY_PY.replace("proj.celeryconfig", "proj.nosuchconfig"),
                  "cannot import app 'no_config': ConfigurationError: config_from_object('no_config.nosuchconfig'): "
                  "cannot import 'no_config.nosuchconfig'"),
    "empty_ns": (CELERY_PY.replace("app.config_from_object('proj.celeryconfig')",
                                   "app.config_from_object('proj.celeryconfig', namespace='CELERY')"),
                 "no setting starts with CELERY_ (namespace='CELERY'); broker_url is there: did you mean CELERY_BROKER_URL?"),
    "wrong_type": (CELERY_PY + "app.conf.worker_concurrency = 'four'\n",
                   "ConfigurationError: app.conf.worker_concurrency = 'four': expected a whole number from 0 to 1024"),
    "amqp_app": (CELERY_PY + "app.conf.broker_url = 'amqp://guest:guest@localhost:5672//'\n",
                 "RabbitMQ (AMQP) is not supported: expected a URL starting with redis://"),
}


@pytest.mark.parametrize("name", sorted(BAD_APPS))
def test_an_app_whose_config_cannot_be_used_is_one_line_and_exit_2(tmp_path, env, name):
    celery, message = BAD_APPS[name]
    config = CONFIG_PY.replace("CELERY_CACHE_BACKEND = 'django-cache'\n", "") if name == "empty_ns" else CONFIG_PY
    project(tmp_path, name, celery=celery.replace("proj", name) if name != "empty_ns" else celery, config=config)
    for command in (["worker"], ["beat"], ["status"]):
        result = run([QDEPLOY, "-A", name, *command, "--allow-root"] if command != ["status"]
                     else [QDEPLOY, "-A", name, *command], tmp_path, env)
        one_line_error(result, 2, message)
        assert "guest:guest" not in result.stderr


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["-A", "nothing_here", "worker"], 2, "cannot import app 'nothing_here': ModuleNotFoundError"),
    (["-A", "two", "worker"], 2, "'two' holds 2 qdeploy Apps (two:first, two:second): name one"),
    (["-A", "two", "inspect", "active"], 2, "'two' holds 2 qdeploy Apps"),
    (["-A", "proj", "worker", "--autoscale=1,5"], 2, "MAX (1) is below MIN (5)"),
    (["-A", "proj", "worker", "--autoscale=lots"], 2, "expected MAX,MIN as two whole numbers"),
    (["-A", "proj", "worker", "--autoscale=3,1", "-P", "solo"], 2, "--autoscale needs children"),
    (["-A", "proj", "worker", "-B", "-P", "solo"], 2, "-B runs beat as a child of the worker's master"),
    (["-A", "proj", "-b", "amqp://guest:guest@localhost:5672//", "worker"], 2, "RabbitMQ (AMQP) is not supported"),
    (["-A", "proj", "worker", "-b", "pyamqp://localhost//"], 2, "RabbitMQ (AMQP) is not supported"),
    (["-A", "proj", "worker", "-P", "eventlet", "-c", "1000"], 2, "no eventlet pool: use -P threads"),
    (["-A", "proj", "worker", "-P", "gevent"], 2, "no gevent pool: use -P threads"),
    (["-A", "proj", "worker", "-n", "w@%q"], 2, "unknown variable %q"),
    (["-A", "proj", "worker", "-l", "LOUD"], 2, "log_level"),
])
def test_bad_command_lines_are_one_line_and_non_zero(tmp_path, env, argv, code, message):
    project(tmp_path)
    (tmp_path / "two.py").write_text("from qdeploy import App\nfirst = App('a')\nsecond = App('b')\n")
    one_line_error(run([QDEPLOY, *argv], tmp_path, env), code, message)


def test_loglevel_is_case_insensitive_under_both_spellings(tmp_path, env):
    project(tmp_path)
    for flag in (["-l", "INFO"], ["--loglevel=DEBUG"], ["--loglevel", "Warning"]):
        worker = Proc([QDEPLOY, "worker", "-A", "proj", *flag, "--allow-root", "-c", "1"], tmp_path, env)
        try:
            if flag[-1] == "Warning":
                worker.wait_for("config:")
                wait_until(lambda w=worker: len(_children(w)) == 1, 15, what="the child")
                time.sleep(0.5)
                assert not [line for line in worker.lines if " INFO/" in line], worker.output
            else:
                worker.wait_for("ready: 1 children")
        finally:
            assert worker.stop() == 0


def _children(proc: Proc) -> list[psutil.Process]:
    out = []
    for child in psutil.Process(proc.proc.pid).children():
        try:
            if "child" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.Error:
            pass
    return out


def test_autoscale_grows_the_pool_with_the_backlog_and_shrinks_it_after_the_keepalive(tmp_path, env):
    project(tmp_path)
    env = dict(env, AUTOSCALE_KEEPALIVE="2")
    worker = Proc([QDEPLOY, "-A", "proj", "worker", "--autoscale=3,1", "-l", "info", "--allow-root"], tmp_path, env)
    try:
        worker.wait_for("ready: 1 children")
        assert len(_children(worker)) == 1, "MIN children at start"
        sent = run([sys_python(), "-c", "import sys; sys.path.insert(0, '.')\nfrom proj.tasks import nap\n"
                    "ids = [nap.delay(2).id for _ in range(6)]\nprint(' '.join(ids))"], tmp_path, env)
        assert sent.returncode == 0, sent.stderr
        worker.wait_for("autoscale: 1 -> 3 children", 10)
        wait_until(lambda: len(_children(worker)) == 3, 10, what="three children")
        worker.wait_for("Task proj.tasks.nap[", 20, count=6)
        worker.wait_for("autoscale: 3 -> 1 children", 20)
        wait_until(lambda: len(_children(worker)) == 1, 20, what="back to one child")
    finally:
        assert worker.stop() == 0


def sys_python() -> str:
    import sys

    return sys.executable


def test_B_runs_a_supervised_beat_in_the_worker_node(tmp_path, env):
    project(tmp_path)
    (tmp_path / "qdeploy.toml").write_text("[beat]\nlock_timeout = 3\n")  # the killed leader's lock: 3 s, not 30
    worker = Proc([QDEPLOY, "-A", "proj", "worker", "-B", "-l", "INFO", "--allow-root", "-c", "1",
                   "-Q", "work"], tmp_path, env)
    try:
        worker.wait_for("beat child")
        worker.wait_for("Task proj.tasks.add[", 20, count=2)  # beat_schedule every second, run by the node
        beats = [c for c in psutil.Process(worker.proc.pid).children() if "beat" in " ".join(c.cmdline())]
        assert len(beats) == 1
        assert "s3cret" not in " ".join(beats[0].cmdline())
        beats[0].send_signal(signal.SIGKILL)
        worker.wait_for(f"beat child {beats[0].pid} exited (killed by signal 9); starting another")
        worker.wait_for("beat child", count=3)  # started, exited, started again
        again = wait_until(lambda: [c for c in psutil.Process(worker.proc.pid).children()
                                    if "beat" in " ".join(c.cmdline()) and c.pid != beats[0].pid], 10, what="a new beat")
        count = sum("Task proj.tasks.add[" in line for line in worker.lines)
        worker.wait_for("Task proj.tasks.add[", 20, count=count + 1)
    finally:
        assert worker.stop() == 0
    assert "stopped (exit code 0)" in worker.output
    assert not psutil.pid_exists(again[0].pid) or again[0].status() == psutil.STATUS_ZOMBIE


def test_beat_accepts_celerys_schedule_file_and_scheduler_with_a_note(tmp_path, env):
    project(tmp_path)
    beat = Proc([QDEPLOY, "-A", "proj", "beat", "-l", "INFO", "--allow-root", "-s", str(tmp_path / "celerybeat-schedule"),
                 "-S", "django_celery_beat.schedulers:DatabaseScheduler"], tmp_path, env)
    try:
        beat.wait_for("ready")
        assert "-s " + str(tmp_path / "celerybeat-schedule") + ": not used: beat keeps its state" in beat.output
        assert "the Django admin edits it" in beat.output
        assert not (tmp_path / "celerybeat-schedule").exists()
    finally:
        assert beat.stop() == 0
    other = Proc([QDEPLOY, "-A", "proj", "beat", "--allow-root", "-S", "myproj.MyScheduler"], tmp_path, env)
    try:
        other.wait_for("-S myproj.MyScheduler: not used")
    finally:
        other.stop()


def test_the_app_config_beats_nothing_but_the_defaults(tmp_path, env, write_config):
    """qdeploy.toml wins over the app's config: the one precedence rule, and it is said."""
    project(tmp_path)
    (tmp_path / "qdeploy.toml").write_text(textwrap.dedent("""
        [worker]
        concurrency = 1
        queues = ["work"]
    """))
    worker = Proc([QDEPLOY, "-A", "proj", "worker", "--allow-root"], tmp_path, env)
    try:
        worker.wait_for("ready: 1 children")
        assert "2 from proj.celeryconfig: worker_concurrency and 1 from qdeploy.toml" in worker.output
    finally:
        worker.stop()
    time.sleep(0)
