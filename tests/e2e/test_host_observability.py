"""Issue 21 on a booted Debian 12 (systemd as PID 1): journald priorities and SyslogIdentifier=,
and the watchdog — a node whose consumers are SIGSTOPped stops pinging WATCHDOG=1 and systemd
restarts it within WatchdogSec=, losing no task."""

from __future__ import annotations

import json
import time

import pytest

from qdeploy.deploy import package as package_mod
from tests.e2e.host import Host, build_app_wheel, build_package, qdeploy_cli
from tests.e2e.test_host_worker import children, enqueue, journal, main_pid, redis_url, result, start, wait_state

__all__ = ["redis_url"]  # the module-scoped private redis-server fixture, shared with test_host_worker

WATCHDOG = 6  # seconds: worker.watchdog -> WatchdogSec=6


@pytest.fixture(scope="module")
def world(tmp_path_factory, redis_url):
    work = tmp_path_factory.mktemp("observability-deb")
    app_wheel, app_src = build_app_wheel(work)
    own = package_mod.build_qdeploy_wheel(work / "own")
    config = work / "qdeploy.toml"
    config.write_text(f'app = "e2eapp.tasks:app"\nbroker = "{redis_url}"\n\n[worker]\nnodes = 1\nconcurrency = 2\n'
                      f'graceful_timeout = 10\nwatchdog = "{WATCHDOG}s"\nhealth_stuck_after = "2s"\n\n'
                      "[beat]\nenabled = false\n")
    deb = build_package(work / "deb", config, "--app-wheel", str(app_wheel), "--qdeploy-wheel", str(own))
    with Host.boot("qd-observe") as host:
        host.run(["dpkg", "-i", host.copy_in(deb)])
        yield {"host": host, "app_src": app_src, "broker": redis_url}


def state_of(world, task_id: str) -> str | None:
    res = qdeploy_cli("result", task_id, "-A", "e2eapp.tasks:app", "-b", world["broker"], "--json",
                      env={"PYTHONPATH": str(world["app_src"])}, check=False)
    try:
        return json.loads(res.stdout)["state"]
    except (ValueError, KeyError, TypeError):
        return None


@pytest.fixture
def host(world):
    host = world["host"]
    host.run("systemctl stop qworker@1; systemctl reset-failed qworker@1 2>/dev/null; true")
    return host


def test_unit_has_the_watchdog_and_an_identifier(host):
    unit = host.run(["systemctl", "cat", "qworker@1"]).stdout
    assert f"WatchdogSec={WATCHDOG}" in unit and "SyslogIdentifier=qworker-%i" in unit
    start(host)
    shown = host.systemctl("show", "-p", "WatchdogUSec", "-p", "SyslogIdentifier", "qworker@1").stdout.split()
    assert sorted(shown) == ["SyslogIdentifier=qworker-1", f"WatchdogUSec={WATCHDOG}s"], shown


def test_journalctl_priorities_show_only_errors(world, host):
    start(host)
    since = host.run(["date", "+%Y-%m-%d %H:%M:%S"]).stdout.strip()
    assert enqueue(world, "e2e.add", "2", "3", wait=True).splitlines()[-1] == "SUCCESS 5"
    failed = enqueue(world, "e2e.add", "text", "1")  # "text" + 1: TypeError in the task
    deadline = time.monotonic() + 20
    while state_of(world, failed) != "FAILURE":  # `qdeploy result` exits 1 for a failed task
        assert time.monotonic() < deadline, journal(host)
        time.sleep(0.2)

    def lines(*args: str) -> str:
        return host.run(["journalctl", "-u", "qworker@1", "--since", since, "--no-pager", "-o", "cat", *args]).stdout

    deadline = time.monotonic() + 10
    while "TypeError" not in lines("-p", "err") and time.monotonic() < deadline:
        time.sleep(0.3)
    errors = lines("-p", "err")
    assert f"[{failed}] raised unexpected" in errors and "TypeError" in errors, errors
    assert "Traceback (most recent call last)" in errors  # the traceback's lines keep the error priority
    assert "succeeded in" not in errors and " INFO/" not in errors, errors
    everything = lines()
    assert "succeeded in" in everything and "<6>" not in everything and "<3>" not in everything  # prefixes parsed
    tagged = host.run(["journalctl", "-t", "qworker-1", "--since", since, "--no-pager", "-o", "cat"]).stdout
    assert "succeeded in" in tagged  # SyslogIdentifier=qworker-%i


def test_sigstopped_consumers_get_the_node_restarted_by_the_watchdog(world, host):
    pid = start(host)
    assert host.systemctl("is-active", "qworker@1").stdout.strip() == "active"
    time.sleep(WATCHDOG + 1)  # an idle node keeps pinging: no restart
    assert main_pid(host) == pid and int(host.systemctl("show", "-p", "NRestarts", "--value", "qworker@1").stdout) == 0
    running = enqueue(world, "e2e.sleep", "4")
    wait_state(world, running, "STARTED")
    kids = children(host, pid)
    assert len(kids) == 2
    stopped_at = time.monotonic()
    host.run(["kill", "-STOP", *map(str, kids)])  # the consume path wedges: one mid-task, one idle
    waiting = enqueue(world, "e2e.add", "20", "22")  # sent while nothing consumes
    deadline = stopped_at + WATCHDOG + 20
    while time.monotonic() < deadline:
        new = main_pid(host)
        if new not in (0, pid) and host.systemctl("is-active", "qworker@1", check=False).stdout.strip() == "active":
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"qworker@1 was not restarted by its watchdog\n{journal(host)}")
    took = time.monotonic() - stopped_at
    assert took < WATCHDOG + 2 + 8, f"restart took {took:.1f}s"  # health beat (2 s) + WatchdogSec + restart
    assert int(host.systemctl("show", "-p", "NRestarts", "--value", "qworker@1").stdout) >= 1
    log = journal(host)
    assert "watchdog timeout" in log.lower() or "Watchdog timeout" in log, log
    assert "is stopped (SIGSTOP" in log
    assert result(world, waiting)["result"] == 42
    done = result(world, running, timeout=60)  # requeued by the restarted node: nothing lost
    assert done["state"] == "SUCCESS" and done["result"] == 4, done
