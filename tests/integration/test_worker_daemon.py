"""The worker's daemon duties for real: privilege drop as root, pid files, --detach readiness,
log files (per child, JSON, reopened on USR2), refusing root, the systemd watchdog."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from qdeploy.service import daemon
from tests.integration.conftest import REPO, free_port, wait_until
from tests.integration.workers import runs


@pytest.fixture
def world(world_dir):
    return world_dir


def worker_cmd(redis_server, namespace, *args, env=None, cwd=None, timeout=30):
    environ = dict(os.environ, QDEPLOY_NAMESPACE=namespace, QDEPLOY_BROKER=redis_server.url, PYTHONPATH=str(REPO))
    environ.pop("NOTIFY_SOCKET", None)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "qdeploy", "worker", "-A", "tests.integration.tasks:app", *args],
                          env=environ, cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)


def test_privilege_drop_as_root(masters, tapp, world):
    if os.geteuid() != 0:
        pytest.fail("this test runs as root")
    dirs = {"log": world / "log", "run": world / "run", "state": world / "state"}
    m = masters("-c", "2", "--uid", "nobody", "--gid", "nogroup", "--log-dir", str(dirs["log"]),
                "--pid-dir", str(dirs["run"]), "--state-dir", str(dirs["state"]), "--workdir", str(world),
                "--logfile", str(dirs["log"] / "%n%I.log"), "--pidfile", str(dirs["run"] / "%n.pid"), root=True).ready()
    master = psutil.Process(m.pid)
    assert master.uids().real == 65534 and master.uids().effective == 65534 and master.gids().real == 65534
    for child in m.children():
        assert child.uids() == master.uids() and child.gids() == master.gids()
    assert tapp.send_task("t.pid").get(timeout=10) in {c.pid for c in m.children()}
    for path in dirs.values():
        assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534), path
    node = m.argv[m.argv.index("-n") + 1].partition("@")[0]
    logs = sorted(p.name for p in dirs["log"].iterdir())
    assert f"{node}.log" in logs and f"{node}-1.log" in logs and f"{node}-2.log" in logs, logs
    assert all(p.stat().st_uid == 65534 for p in dirs["log"].iterdir())
    pidfile = dirs["run"] / f"{node}.pid"
    assert int(pidfile.read_text()) == m.pid
    m.signal(signal.SIGTERM)
    assert m.wait() == 0
    assert not pidfile.exists(), "the pid file is removed on exit"


def test_root_is_refused_without_allow_root(redis_server, namespace):
    if os.geteuid() != 0:
        pytest.fail("this test runs as root")
    done = worker_cmd(redis_server, namespace, "--uid", "root")
    assert done.returncode == daemon.EX_NOPERM
    assert done.stderr.strip() == "qdeploy: error: refusing to run tasks as root: set user/group (--uid/--gid) or pass --allow-root"
    unknown = worker_cmd(redis_server, namespace, "--uid", "no-such-user-x")
    assert unknown.returncode == daemon.EX_NOPERM and "unknown user 'no-such-user-x'" in unknown.stderr


def test_live_pidfile_refuses_a_second_worker_and_stale_ones_are_taken(masters, redis_server, namespace, world):
    pidfile = world / "w.pid"
    m = masters("-c", "1", "--pidfile", str(pidfile)).ready()
    second = worker_cmd(redis_server, namespace, "--allow-root", "--pidfile", str(pidfile))
    assert second.returncode == 73
    assert second.stderr.strip() == f"qdeploy: error: pid file {pidfile} is held by a running process (pid {m.pid})"
    m.signal(signal.SIGTERM)
    m.wait()
    for stale in ("999999\n", f"{os.getpid()}\n", "garbage", ""):  # dead pid, a live unrelated pid, junk
        pidfile.write_text(stale)
        again = masters("-c", "1", "--pidfile", str(pidfile)).ready()
        assert int(pidfile.read_text()) == again.pid
        again.signal(signal.SIGTERM)
        assert again.wait() == 0


def test_detach_exits_0_only_once_ready(redis_server, namespace, world, tapp):
    pidfile = world / "d.pid"
    logfile = world / "d.log"
    began = time.monotonic()
    done = worker_cmd(redis_server, namespace, "--allow-root", "--detach", "-c", "2",
                      "--pidfile", str(pidfile), "--logfile", str(logfile), "--workdir", str(world))
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    pid = int(pidfile.read_text())
    try:
        proc = psutil.Process(pid)
        assert len(proc.children()) == 2, "ready means the children are up"
        assert proc.ppid() == 1 or proc.ppid() != os.getpid()
        assert os.getsid(pid) not in (os.getsid(0), pid), "a new session, and not its leader (double fork)"
        assert proc.cwd() == str(world)
        assert tapp.send_task("t.pid").get(timeout=10) in {c.pid for c in proc.children()}
        assert "ready: 2 children" in logfile.read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not psutil.pid_exists(pid), 15, what="the detached worker to stop")
    assert time.monotonic() - began < 30


def test_detach_reports_why_it_could_not_start(redis_server, namespace, world):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    done = worker_cmd(redis_server, namespace, "--allow-root", "--detach", "-b", dead,
                      "--logfile", str(world / "x.log"), "--pidfile", str(world / "x.pid"))
    assert done.returncode == 3
    assert done.stderr.strip().startswith(f"qdeploy: error: cannot reach broker {dead}")
    assert not (world / "x.pid").exists()


def test_detach_failure_after_the_fork_reaches_the_parent(redis_server, namespace, world):
    pidfile = world / "y.pid"
    done = worker_cmd(redis_server, namespace, "--allow-root", "--detach", "-c", "1", "--pidfile", str(pidfile),
                      "--logfile", str(world / "y.log"), env={"QDEPLOY_TEST_CHILD_BOOT_FAILS": "1"}, timeout=60)
    if pidfile.exists():  # a daemon that wrongly came up must not outlive the test
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert done.returncode == 3
    assert "children keep failing to start" in done.stderr


def test_detach_prints_a_childs_boot_error_with_its_exception(redis_server, namespace, world):
    """#18 item 10: the reason a child cannot start (here a worker_process_init receiver that
    raises) reaches the terminal of `--detach`, not only the master's log."""
    pidfile = world / "z.pid"
    done = worker_cmd(redis_server, namespace, "--allow-root", "--detach", "-c", "1", "--pidfile", str(pidfile),
                      "--logfile", str(world / "z.log"), "-A", "tests.integration.signal_tasks:app",
                      env={"QDEPLOY_TEST_PROCESS_INIT_FAILS": "1"}, timeout=60)
    if pidfile.exists():
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert done.returncode == 3
    assert "RuntimeError: db down" in done.stderr, done.stderr
    assert "RuntimeError: db down" in (world / "z.log").read_text()


def test_json_logs_and_usr2_reopen(masters, world, tapp):
    log = world / "json.log"
    m = masters("-c", "1", "--logfile", str(log), "--log-format", "json").ready()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert any("ready" in line["message"] for line in lines) and all(line["pid"] for line in lines)
    log.rename(world / "json.log.1")
    m.signal(signal.SIGUSR2)
    wait_until(log.exists, 5, what="the log file to be reopened")
    m.signal(signal.SIGTERM)
    assert m.wait() == 0
    assert "warm shutdown" in log.read_text()


def test_watchdog_keepalives(masters):
    m = masters("-c", "1", env={"WATCHDOG_USEC": "2000000"}).ready()
    m.notify.wait_for("WATCHDOG=1", timeout=5)


def test_process_titles_show_node_and_task(masters, tapp, rclient, namespace):
    m = masters("-c", "1").ready()
    node = m.argv[m.argv.index("-n") + 1].partition("@")[0]
    title = " ".join(part for part in psutil.Process(m.pid).cmdline() if part)
    assert title.startswith(f"qdeploy worker {node} master: ") and f" -n {node}@test" in title
    res = tapp.send_task("t.slow", [1.5, "title"])
    wait_until(lambda: runs(rclient, namespace, "title") == 1, 10, what="the task to start")
    (child,) = m.children()
    assert " ".join(p for p in child.cmdline() if p) == f"qdeploy worker {node} child 1: t.slow[{res.id}]"


def test_notify_socket_is_not_inherited_by_tasks(masters, tapp):
    masters("-c", "1").ready()  # started with NOTIFY_SOCKET, or it could not have said READY=1
    assert tapp.send_task("t.env", ["NOTIFY_SOCKET"]).get(timeout=10) is None
    assert tapp.send_task("t.env", ["QDEPLOY_NAMESPACE"]).get(timeout=10) == tapp.namespace


def test_detach_and_privilege_drop_together(redis_server, namespace, world, tapp):
    """Celery's `--detach --uid` fails and still exits 0; here it works, or says why."""
    if os.geteuid() != 0:
        pytest.fail("this test runs as root")
    pidfile = world / "run" / "n.pid"
    done = worker_cmd(redis_server, namespace, "--detach", "--uid", "nobody", "--gid", "nogroup", "-c", "1",
                      "--pid-dir", str(world / "run"), "--log-dir", str(world / "log"), "--state-dir", str(world / "st"),
                      "--pidfile", str(pidfile), "--logfile", str(world / "log" / "n.log"), "--workdir", str(world))
    assert done.returncode == 0, done.stderr
    pid = int(pidfile.read_text())
    try:
        assert psutil.Process(pid).uids().effective == 65534
        assert tapp.send_task("t.pid").get(timeout=10) in {c.pid for c in psutil.Process(pid).children()}
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not psutil.pid_exists(pid), 15, what="the worker to stop")
    assert not pidfile.exists()
    refused = worker_cmd(redis_server, namespace, "--detach", "--uid", "no-such-user-y", "--logfile", str(world / "z.log"))
    assert refused.returncode == daemon.EX_NOPERM and "unknown user 'no-such-user-y'" in refused.stderr


def test_usr2_reopens_each_childs_own_log(masters, world, tapp):
    """logrotate renames the per-child files too: the master passes USR2 on, and each child
    reopens its own file (its handler, set right after the fork, only records: the child
    reopens at its next turn of the loop, within its poll interval when idle)."""
    m = masters("-c", "1", "--logfile", str(world / "w%I.log")).ready()
    child_log = world / "w-1.log"
    first = tapp.send_task("t.pid", ["too", "many", "args"])  # refused: logged by the child
    wait_until(lambda: child_log.exists() and first.id in child_log.read_text(), 10, what="the child's log line")
    child_log.rename(world / "w-1.log.1")
    m.signal(signal.SIGUSR2)
    wait_until(child_log.exists, 5, what="the child to reopen w-1.log")
    second = tapp.send_task("t.pid", ["too", "many", "args"])
    wait_until(lambda: second.id in child_log.read_text(), 10, what="the child to log into the new w-1.log")
    assert second.id not in (world / "w-1.log.1").read_text()
    m.signal(signal.SIGTERM)
    assert m.wait() == 0
