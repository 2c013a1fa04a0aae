"""`qdeploy multi` against real detached workers on the private Redis: start (with readiness),
node-specific options in the running argv, stopwait (and its escalation to KILL), rolling
restart, kill, and config mode exec'ing the rendered services' argv."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from qdeploy import App
from qdeploy.service.daemon import read_pid
from tests.integration.conftest import REPO, argv_of, gone, run_cli, wait_until


@pytest.fixture
def fleet(redis_server, namespace, tmp_path):
    """Run `qdeploy multi ...` with node files under tmp_path; kill whatever is left after."""
    env = {"QDEPLOY_NAMESPACE": namespace, "QDEPLOY_BROKER": redis_server.url}
    common = ["-A", "tests.integration.tasks:app", "--allow-root", "--pid-dir", str(tmp_path),
              "--log-dir", str(tmp_path), "--state-dir", str(tmp_path), "--workdir", str(tmp_path),
              f"--pidfile={tmp_path}/%n.pid", f"--logfile={tmp_path}/%n%I.log"]

    def run(action, *args, common_args=True, timeout=90):
        argv = ["multi", action, *args, *(common if common_args else [])]
        return run_cli(*argv, env=env, timeout=timeout)

    run.dir = tmp_path
    run.pid = lambda node: read_pid(tmp_path / f"{node}.pid")
    yield run
    for pidfile in tmp_path.glob("*.pid"):
        pid = read_pid(pidfile)
        if pid:
            for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                proc.kill()


@pytest.fixture
def tapp(redis_server, namespace):
    return App("itest", broker=redis_server.url, namespace=namespace)


def lines(result) -> dict[str, str]:
    return {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}


def test_start_comes_up_with_node_options_then_stopwait(fleet, tapp):
    result = fleet("start", "2", "-c", "1", "-c:2", "2", "-Q:2", "images,default")
    assert result.returncode == 0, result.stdout + result.stderr
    out = lines(result)
    assert "OK" in out["1"] and "started" in out["1"] and "started" in out["2"]
    masters = {n: psutil.Process(fleet.pid(n)) for n in ("1", "2")}
    argv2 = argv_of(masters["2"])
    assert argv2[argv2.index("-c") + 1] == "2" and argv2[argv2.index("-Q") + 1] == "images,default"
    argv1 = argv_of(masters["1"])
    assert argv1[argv1.index("-c") + 1] == "1" and "-Q" not in argv1
    assert "--detach" in argv1 and argv1[argv1.index("-n") + 1] == "1"
    # ready means ready: the children are there and consume
    assert len(masters["1"].children()) == 1 and len(masters["2"].children()) == 2
    pid = tapp.send_task("t.pid", queue="images").get(timeout=10)
    assert pid in {c.pid for c in masters["2"].children()}

    again = fleet("start", "2")
    assert again.returncode == 0 and again.stdout.count("already running") == 2

    stopped = fleet("stopwait", "2")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.count("stopped") == 2
    for proc in masters.values():
        assert gone(proc)
    assert not list(fleet.dir.glob("*.pid"))
    assert fleet("stopwait", "2").stdout.count("not running") == 2


def test_start_failure_is_reported_per_node(fleet):
    result = fleet("start", "2", "-A:2", "no.such.module:app")
    assert result.returncode == 1
    out = lines(result)
    assert "OK" in out["1"] and "started" in out["1"]
    assert "FAIL" in out["2"] and "cannot import app 'no.such.module:app'" in out["2"]
    assert fleet.pid("2") is None


def test_stopwait_escalates_to_kill(fleet, tapp, rclient, namespace):
    assert fleet("start", "1", "-c", "1").returncode == 0
    master = psutil.Process(fleet.pid("1"))
    child = master.children()[0]
    tapp.send_task("t.slow", [60, "stuck"])
    wait_until(lambda: rclient.get(f"{namespace}:test:runs:stuck"), 10, what="the task to start")
    started = time.monotonic()
    result = fleet("stopwait", "1", "--timeout", "1")
    assert result.returncode == 1
    assert "killed" in result.stdout and "SIGKILL" in result.stdout
    assert time.monotonic() - started < 10
    wait_until(lambda: gone(child), 5, what="child gone")
    assert gone(master)


def test_rolling_restart_keeps_a_node_up(fleet, tapp):
    assert fleet("start", "2", "-c", "1").returncode == 0
    before = {n: fleet.pid(n) for n in ("1", "2")}
    samples, done = [], threading.Event()

    def watch():
        while not done.is_set():
            samples.append((fleet.pid("1"), fleet.pid("2")))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = fleet("restart", "2", "--rolling")
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("restarted") == 2
    after = {n: fleet.pid(n) for n in ("1", "2")}
    assert all(after[n] and after[n] != before[n] for n in after)
    assert all(a or b for a, b in samples), "both nodes were down at the same time"
    assert any(a is None for a, _ in samples) and any(b is None for _, b in samples)
    assert isinstance(tapp.send_task("t.pid").get(timeout=10), int)


def test_kill_kills_master_and_children(fleet):
    assert fleet("start", "1", "-c", "2").returncode == 0
    master = psutil.Process(fleet.pid("1"))
    procs = [master, *master.children()]
    result = fleet("kill", "1")
    assert result.returncode == 0 and "killed" in result.stdout
    for proc in procs:
        assert gone(proc)


def test_config_mode_execs_the_rendered_argv(redis_server, namespace, tmp_path):
    config = tmp_path / "qdeploy.toml"
    config.write_text(f"""
app = "tests.integration.tasks:app"
broker = "{redis_server.url}"
executable = "{Path(sys.executable).parent / 'qdeploy'}"
config_path = "{config}"
workdir = "{tmp_path}"
pid_dir = "{tmp_path}/run"
log_dir = "{tmp_path}/log"
state_dir = "{tmp_path}/state"

[worker]
nodes = ["alpha", "beta"]
concurrency = 1
extra_args = ["--allow-root"]

[node.beta]
concurrency = 2
""")
    env = {"QDEPLOY_NAMESPACE": namespace, "PYTHONPATH": str(REPO)}
    explain = json.loads(run_cli("render", "--explain", "--json", "--config", str(config)).stdout)
    result = run_cli("multi", "start", "--config", str(config), env=env, timeout=90)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        for node, children in (("alpha", 1), ("beta", 2)):
            master = psutil.Process(read_pid(tmp_path / "run" / f"qworker-{node}.pid"))
            rendered = explain[f"qworker@{node}"]["argv"]
            cmdline = argv_of(master)
            start = cmdline.index(rendered[0])  # the script, after its interpreter (if any)
            assert cmdline[start:start + len(rendered)] == rendered
            assert len(master.children()) == children
    finally:
        stopped = run_cli("multi", "stopwait", "--config", str(config), "--timeout", "20", env=env, timeout=60)
    assert stopped.returncode == 0 and stopped.stdout.count("stopped") == 2
    assert (tmp_path / "log" / "qworker-beta.log").is_file()


def test_config_mode_refuses_a_missing_config_path(redis_server, tmp_path):
    config = tmp_path / "qdeploy.toml"
    config.write_text('config_path = "/nonexistent/qdeploy.toml"\n')
    result = run_cli("multi", "start", "--config", str(config))
    assert result.returncode == 2 and "config_path /nonexistent/qdeploy.toml" in result.stderr
    assert os.path.exists(config)
