"""A worker started by an unprivileged user (nobody, via setpriv), for real, on the private Redis:
every path the boot touches (service directories, log file, pid file, the workdir --detach
enters) is checked before detaching, so a path it cannot use is one line on the terminal (which
path, what to do) and a non-zero exit — never a traceback, never "the worker exited before it was
ready" — and nothing is created when one of them is wrong. Missing directories the user may
create are created."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from qdeploy import App
from qdeploy.generator.settings import BY_KEY
from tests.integration.conftest import wait_until
from tests.unprivileged import AS_NOBODY, nobody_runtime  # noqa: F401 - a fixture

DEFAULT_WORKDIR = BY_KEY["workdir"].default  # not configured: --detach enters it
NOBODY = 65534


@pytest.fixture
def world(world_dir):
    """world_dir (root's, 0755): mine/ is nobody's, locked/ is root's and 0700."""
    (world_dir / "mine").mkdir()
    os.chown(world_dir / "mine", NOBODY, NOBODY)
    (world_dir / "locked").mkdir(mode=0o700)
    return world_dir


@pytest.fixture
def worker(nobody_runtime, redis_server, namespace, world):
    """Run `qdeploy worker ARGS -A app:app -b URL` (or `cmd`) as nobody; `hide_workdir=True` runs it where the
    default workdir cannot be entered (bind-mounted over by a root-only directory in a private
    mount namespace, when it exists on this machine; else it does not exist)."""
    started: list[Path] = []

    def run(*args: str, cmd: str = "worker", broker: str | None = None, hide_workdir: bool = False, timeout: float = 60):
        argv = [*AS_NOBODY, nobody_runtime.python, "-m", "qdeploy", cmd, *args, "-A", "app:app",
                "-b", broker or redis_server.url]
        if hide_workdir and os.path.isdir(DEFAULT_WORKDIR):
            argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                    'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(world / "locked"), DEFAULT_WORKDIR, *argv]
        done = subprocess.run(argv, env=nobody_runtime.env(QDEPLOY_NAMESPACE=namespace), cwd="/", capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        started.extend(world.rglob("*.pid"))
        return done

    yield run
    for pidfile in {*started, *world.rglob("*.pid")}:
        try:
            pid = int(pidfile.read_text())
            for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                proc.kill()
        except (OSError, ValueError, psutil.Error):
            pass


def one_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr and done.stdout == "", done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("qdeploy: error: "), lines[0]
    return lines[0].removeprefix("qdeploy: error: ")


def not_enterable() -> str:
    return "does not exist" if not os.path.isdir(DEFAULT_WORKDIR) else "is not searchable by user nobody"


def test_detach_without_a_workdir_it_can_enter_says_so_before_detaching(worker, world):
    done = worker("--detach", "-c", "1", "--pidfile", str(world / "mine/w.pid"), "--logfile",
                  str(world / "mine/logs/w.log"), hide_workdir=True)
    assert done.returncode == 2
    assert one_line(done) == (f"cannot enter workdir {DEFAULT_WORKDIR}: {DEFAULT_WORKDIR} {not_enterable()}; "
                              "pass --workdir DIR or set workdir in the config")
    assert list((world / "mine").iterdir()) == [], "nothing is created when a later path is wrong"

    configured = worker("--detach", "-c", "1", "--workdir", str(world / "locked"))
    assert configured.returncode == 2
    assert one_line(configured) == (f"cannot enter workdir {world / 'locked'}: Permission denied (user nobody); "
                                    "pass --workdir DIR or set workdir in the config")


def test_detach_as_nobody_creates_the_missing_dirs_it_may_and_comes_up(worker, world, redis_server, namespace):
    mine = world / "mine"
    done = worker("--detach", "-c", "1", "--workdir", str(mine), "--pidfile", str(mine / "run/a/w.pid"),
                  "--logfile", str(mine / "logs/%n%I.log"), "-n", "solo1")
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    pid = int((mine / "run/a/w.pid").read_text())
    try:
        master = psutil.Process(pid)
        assert master.uids().real == NOBODY and master.cwd() == str(mine)
        for path in (mine / "run", mine / "run/a", mine / "logs"):
            assert path.is_dir() and path.stat().st_uid == NOBODY, path
        assert {p.name for p in (mine / "logs").iterdir()} == {"solo1.log", "solo1-1.log"}
        app = App("b2", broker=redis_server.url, namespace=namespace)
        assert app.send_task("b2.whoami").get(timeout=10) == [NOBODY, str(mine)]
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not psutil.pid_exists(pid), 15, what="the worker to stop")


@pytest.mark.parametrize("args, message", [
    (["--logfile", "{w}/locked/w.log"],
     "cannot write log file {w}/locked/w.log: directory {w}/locked is not writable by user nobody; "
     "choose a --logfile in a directory user nobody can write"),
    (["--logfile", "{w}/new/w.log"],
     "cannot create directory {w}/new for log file {w}/new/w.log: {w} is not writable by user nobody; "
     "choose a --logfile in a directory user nobody can write"),
    (["--logfile", "{w}/locked/deeper/w.log"],
     "cannot write log file {w}/locked/deeper/w.log: {w}/locked is not searchable by user nobody; choose a --logfile"),
    (["--logfile", "{w}/mine/root.log"],
     "cannot write log file {w}/mine/root.log: {w}/mine/root.log is not writable by user nobody"),
    (["--logfile", "{w}/mine"], "cannot write log file {w}/mine: {w}/mine is a directory"),
    (["--pidfile", "{w}/mine/afile/w.pid"],
     "cannot write pid file {w}/mine/afile/w.pid: {w}/mine/afile is not a directory; "
     "choose a --pidfile in a directory user nobody can write"),
    (["--logfile", "{w}/mine/newlogs/w.log", "--pidfile", "{w}/locked/w.pid"],
     "cannot write pid file {w}/locked/w.pid: directory {w}/locked is not writable by user nobody"),
    (["--state-dir", "{w}/state"],
     "cannot create state_dir {w}/state: {w} is not writable by user nobody; "
     "pass --state-dir DIR (a directory user nobody may create or write)"),
    (["--log-dir", "{w}/mine/afile/log"],
     "cannot create log_dir {w}/mine/afile/log: {w}/mine/afile is not a directory; pass --log-dir DIR"),
])
def test_a_path_nobody_cannot_use_is_one_line_and_nothing_is_created(worker, world, args, message):
    (world / "mine/afile").write_text("")
    (world / "mine/root.log").write_text("")  # root's, 0644
    before = sorted(world.rglob("*"))
    done = worker("-c", "1", "--workdir", str(world / "mine"), *(a.replace("{w}", str(world)) for a in args))
    assert done.returncode == 73, done.stderr
    assert one_line(done).startswith(message.replace("{w}", str(world)))
    assert sorted(world.rglob("*")) == before, "a directory was created although the boot refused"


def test_default_service_dirs_a_user_may_not_create_are_not_needed(worker, world):
    """Not configured and not used (logs on stderr, no pid file): /var/log/qdeploy and the rest
    are the packaged service's; a user who is not root runs without them."""
    done = worker("--pool", "solo", "--workdir", str(world / "mine"), broker="redis://127.0.0.1:1/0")
    assert done.returncode == 3, done.stderr  # got past the paths, to the broker (which is down)
    assert one_line(done).startswith("cannot reach broker redis://127.0.0.1:1/0")


def test_multi_start_as_nobody_says_why_per_node_then_starts(worker, world):
    """Without --workdir the detached workers cannot enter the default one: each row says so
    (it used to say only "the worker exited before it was ready", with an empty log)."""
    mine = world / "mine"
    common = ["-c", "1", "--pid-dir", str(mine / "run"), "--log-dir", str(mine / "log")]
    done = worker("start", "2", *common, cmd="multi", hide_workdir=True)
    assert done.returncode == 1, done.stdout + done.stderr
    rows = done.stdout.splitlines()
    assert len(rows) == 2, done.stdout
    for node, row in zip("12", rows):
        assert row.split()[:3] == [node, "FAIL", "failed"], row
        assert f"cannot enter workdir {DEFAULT_WORKDIR}: {DEFAULT_WORKDIR} {not_enterable()}; pass --workdir DIR" in row
        assert f"(exit 2; log {mine}/log/qworker-{node}.log)" in row
    assert not (mine / "run").exists() and not (mine / "log").exists()

    common.append(f"--workdir={mine}")
    started = worker("start", "2", *common, cmd="multi")
    assert started.returncode == 0, started.stdout + started.stderr
    assert [row.split()[:3] for row in started.stdout.splitlines()] == [["1", "OK", "started"], ["2", "OK", "started"]]
    for node in "12":
        assert psutil.Process(int((mine / f"run/qworker-{node}.pid").read_text())).uids().real == NOBODY
    stopped = worker("stopwait", "2", *common, cmd="multi", timeout=90)
    assert stopped.returncode == 0 and stopped.stdout.count("stopped") == 2, stopped.stdout + stopped.stderr
