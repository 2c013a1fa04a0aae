"""init.d `start` with the real worker, run as nobody by the real start-stop-daemon
(`--notify-await`): a worker that fails at boot is reported within seconds, with its own reason
and a non-zero exit; a slow one is waited for (up to the start timeout, and no longer)."""

from __future__ import annotations

import glob
import grp
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import render_tree
from tests.integration.conftest import RedisServer, free_port, wait_until
from tests.unprivileged import nobody_runtime  # noqa: F401 - a fixture

FAST = 5.0  # "at once": the worker fails in well under a second; the start timeout is 30 s


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def node(root_only, world_dir, nobody_runtime, redis_url, write_config):
    """render(...) writes a config for one real worker node run as nobody and renders its tree."""
    tree = world_dir / "tree"
    config = world_dir / "conf" / "qdeploy.toml"  # where the services read it (config_path)

    def render(*, broker: str = redis_url, app: str = "app:app", env: dict | None = None, start_timeout=None) -> Path:
        environ = {"QDEPLOY_NAMESPACE": f"b2{time.monotonic_ns()}", "PYTHONPATH": str(nobody_runtime.root), **(env or {})}
        cfg = write_config(f"""
app = "{app}"
broker = "{broker}"
executable = "{nobody_runtime.executable}"
config_path = "{config}"
user = "nobody"
group = "nogroup"
workdir = "{world_dir}/work"
log_dir = "{world_dir}/log"
pid_dir = "{world_dir}/run"
state_dir = "{world_dir}/state"

[worker]
nodes = ["1"]
concurrency = 1

[beat]
enabled = false

[env]
{"".join(f"{k} = {json.dumps(v)}{chr(10)}" for k, v in environ.items())}""")
        shutil.rmtree(tree, ignore_errors=True)
        render_tree(tree, "--config", str(cfg))
        config.parent.mkdir(exist_ok=True)
        shutil.copyfile(tree / str(config).lstrip("/"), config)  # installed: root's, readable by the group
        os.chown(config, 0, grp.getgrnam("nogroup").gr_gid)
        config.chmod(0o640)
        if start_timeout is not None:
            defaults = tree / "etc/default/qworker"
            defaults.write_text(defaults.read_text() + f"QDEPLOY_START_TIMEOUT='{start_timeout}'\n")
        return tree

    render.world = world_dir
    yield render
    if (tree / "etc/init.d/qworker").exists():
        initd(tree, "kill")


def initd(tree: Path, *args: str) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "QDEPLOY_DEFAULTS": str(tree / "etc/default/qworker"),
               "QDEPLOY_CONFIG_FILE": str(tree.parent / "conf" / "qdeploy.toml")}
    return subprocess.run(["/bin/sh", str(tree / "etc/init.d/qworker"), *args], capture_output=True, text=True,
                          env=environ, timeout=120)


def timed_start(tree: Path) -> tuple[subprocess.CompletedProcess, float]:
    began = time.monotonic()
    result = initd(tree, "start")
    return result, time.monotonic() - began


def notify_dirs() -> set[str]:
    return set(glob.glob("/run/.s-s-d-notify.*"))


def test_a_worker_that_is_fine_starts_as_nobody(node):
    tree = node()
    result, _ = timed_start(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    pid = int((node.world / "run/qworker-1.pid").read_text())
    assert result.stdout.strip() == f"qworker 1: started (pid {pid})"
    master = psutil.Process(pid)
    assert master.uids().real == 65534 and master.children(), "ready means its child is up"
    assert initd(tree, "status").returncode == 0
    assert initd(tree, "stop").returncode == 0


@pytest.mark.parametrize("case", ["app cannot be imported", "redis is down", "app exits at import"])
def test_a_worker_that_fails_at_boot_is_reported_at_once_with_its_reason(node, case):
    before = notify_dirs()
    if case == "app cannot be imported":
        tree, reason = node(app="no_such_module_b2:app"), "cannot import app 'no_such_module_b2:app'"
    elif case == "redis is down":
        tree, reason = node(broker=f"redis://127.0.0.1:{free_port()}/0"), "cannot reach broker redis://127.0.0.1:"
    else:  # hostile text on stderr: control characters are dropped, nothing is interpreted
        tree = node(env={"B2_FAIL_IMPORT": "boom \x1b]0;owned\x07\x1b[2J $(id) `id` %s \\c\\n"})
        reason = "boom ]0;owned[2J $(id) `id` %s \\c\\n"
    log = node.world / "log/qworker-1.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text("an old line from an earlier run\n")
    result, took = timed_start(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert took < FAST, f"took {took:.1f}s: start waited for the timeout instead of the worker's exit"
    line = result.stderr.strip()
    assert line.startswith("qworker 1: failed to start: it exited before it was ready: "), line
    assert reason in line and line.endswith(f" (see {log})"), line
    assert "\x1b" not in line and "\x07" not in line and "old line" not in line
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert not (node.world / "run/qworker-1.pid").exists()
    assert initd(tree, "status").returncode == 3
    assert notify_dirs() <= before, "start-stop-daemon's notify socket directory was left behind"


def test_a_slow_worker_is_waited_for(node):
    tree = node(env={"B2_SLOW_IMPORT": "2"})
    result, took = timed_start(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert took >= 2 and "qworker 1: started (pid " in result.stdout
    assert initd(tree, "status").returncode == 0


def test_a_worker_slower_than_the_start_timeout_still_fails_after_it(node):
    tree = node(env={"B2_SLOW_IMPORT": "4"}, start_timeout=1)
    result, took = timed_start(tree)
    assert result.returncode == 1
    assert 1 <= took < 4, took
    assert "qworker 1: failed to start (exit 2)" in result.stderr
    assert "timed out waiting for a notification" in result.stderr  # start-stop-daemon's own word


def test_the_wait_follows_the_worker_not_a_stale_pid_file(node):
    """A pid file left by a dead earlier run names a dead pid: start must not take it for the
    new worker and report a failure."""
    tree = node(env={"B2_SLOW_IMPORT": "1"})
    (node.world / "run").mkdir(exist_ok=True)
    (node.world / "run/qworker-1.pid").write_text("999999\n")
    result, _ = timed_start(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    pid = int((node.world / "run/qworker-1.pid").read_text())
    assert pid != 999999 and psutil.pid_exists(pid)
    wait_until(lambda: psutil.Process(pid).children(), 10, what="the child")
