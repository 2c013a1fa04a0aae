"""Real workers from the real package on a booted Debian 12 (systemd as PID 1, systemd-nspawn):
systemd units, the LSB init script and supervisord each run `qdeploy worker --config
/etc/qdeploy/qdeploy.toml --node N`; tasks are enqueued from outside the container with
`qdeploy enqueue` through a redis-server on the host's loopback (the container shares the
host's network)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pytest

from qdeploy.deploy import package as package_mod
from tests.e2e.host import Host, build_app_wheel, build_package, qdeploy_cli

GRACEFUL = 20  # worker.graceful_timeout: TimeoutStopSec = 35


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A private redis-server on the host's loopback, reachable from inside the container."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    workdir = tmp_path_factory.mktemp("redis")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() != "PONG":
        assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
        time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def world(tmp_path_factory, redis_url):
    """The app, its packages (v1, v2 and a --start build) and a booted host with v1 installed."""
    work = tmp_path_factory.mktemp("worker-debs")
    app_wheel, app_src = build_app_wheel(work)
    own = package_mod.build_qdeploy_wheel(work / "own")
    config = work / "qdeploy.toml"
    config.write_text(f'app = "e2eapp.tasks:app"\nbroker = "{redis_url}"\n\n[worker]\nnodes = 2\nconcurrency = 2\n'
                      f"graceful_timeout = {GRACEFUL}\n\n[beat]\nenabled = false\n")
    common = ["--app-wheel", str(app_wheel), "--qdeploy-wheel", str(own)]
    debs = [build_package(work / v, config, *common, "--pkg-version", v) for v in ("1.0", "2.0")]
    started = build_package(work / "start", config, *common, "--pkg-version", "3.0", "--start")
    with Host.boot("qd-worker") as host:
        host.debs = [host.copy_in(deb) for deb in (*debs, started)]
        host.run(["dpkg", "-i", host.debs[0]])
        yield {"host": host, "app_src": app_src, "broker": redis_url}


@pytest.fixture
def host(world):
    """The host with no worker running, however the previous test started one."""
    host = world["host"]
    host.run("systemctl stop qworker.target 'qworker@*.service'; "
             " systemctl reset-failed qworker@1 qworker@2 qworker.target 2>/dev/null;"
             " supervisorctl shutdown >/dev/null 2>&1; /etc/init.d/qworker stop >/dev/null 2>&1; true")
    return host


def enqueue(world, task: str, *args: str, wait: bool = False) -> str:
    extra = ["--wait", "--timeout", "30"] if wait else []
    result = qdeploy_cli("enqueue", task, *args, "-A", "e2eapp.tasks:app", "-b", world["broker"], *extra,
                         env={"PYTHONPATH": str(world["app_src"])}, check=False)
    assert result.returncode == 0, f"enqueue {task}: {result.stderr}\n{journal(world['host'])}"
    return result.stdout.strip()


def result(world, task_id: str, timeout: float = 30) -> dict:
    res = qdeploy_cli("result", task_id, "-A", "e2eapp.tasks:app", "-b", world["broker"], "--json", "--wait",
                      "--timeout", str(timeout), env={"PYTHONPATH": str(world["app_src"])}, check=False)
    assert res.returncode == 0, f"result {task_id}: {res.stderr}{res.stdout}\n{journal(world['host'])}"
    return json.loads(res.stdout)


def wait_state(world, task_id: str, state: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        res = qdeploy_cli("result", task_id, "-A", "e2eapp.tasks:app", "-b", world["broker"], "--json",
                          env={"PYTHONPATH": str(world["app_src"])}, check=False)
        if res.returncode == 0 and json.loads(res.stdout)["state"] == state:
            return
        assert time.monotonic() < deadline, f"task {task_id} never {state}: {res.stdout}\n{journal(world['host'])}"
        time.sleep(0.2)


def journal(host: Host, unit: str = "qworker@1.service") -> str:
    return host.run(["journalctl", "-u", unit, "-n", "40", "--no-pager"], check=False).stdout


def main_pid(host: Host, unit: str = "qworker@1") -> int:
    return int(host.systemctl("show", "-p", "MainPID", "--value", unit).stdout)


def children(host: Host, pid: int) -> list[int]:
    return [int(p) for p in host.run(["ps", "-o", "pid=", "--ppid", str(pid)], check=False).stdout.split()]


def users(host: Host, pids: list[int]) -> set[str]:
    return set(host.run(["ps", "-o", "user=", "-p", ",".join(map(str, pids))]).stdout.split())


def start(host: Host, unit: str = "qworker@1") -> int:
    run = host.systemctl("start", unit, check=False)
    assert run.returncode == 0, f"systemctl start {unit}: {run.stderr}\n{journal(host)}"
    return main_pid(host)


# -- systemd ---------------------------------------------------------------------------------

def test_systemd_node_runs_tasks_as_the_service_user(world, host):
    pid = start(host)  # Type=notify: returns once the worker said READY=1
    assert host.systemctl("is-active", "qworker@1").stdout.strip() == "active"
    out = enqueue(world, "e2e.add", "2", "3", wait=True)
    assert out.splitlines()[-1] == "SUCCESS 5"
    who = result(world, enqueue(world, "e2e.whoami"))["result"]
    assert who["user"] == "qdeploy" and who["cwd"] == "/var/lib/qdeploy"
    kids = children(host, pid)
    assert len(kids) == 2, host.run(["ps", "-ef"]).stdout  # concurrency = 2
    assert users(host, [pid, *kids]) == {"qdeploy"}
    # the hardening is on, and the worker works under it
    security = host.run(["systemd-analyze", "security", "--no-pager", "qworker@1.service"], check=False).stdout
    exposure = float(security.strip().splitlines()[-1].split(":")[1].split()[0])
    assert exposure <= 1.5, security[-2000:]


def test_target_starts_and_stops_every_node(world, host):
    start(host, "qworker.target")
    assert host.systemctl("is-active", "qworker@1", "qworker@2").stdout.split() == ["active", "active"]
    assert enqueue(world, "e2e.add", "1", "1", wait=True).splitlines()[-1] == "SUCCESS 2"
    host.systemctl("stop", "qworker.target")  # the nodes are PartOf= the target: stopped with it
    host.wait_for('test "$(systemctl is-active qworker@1 qworker@2 | sort -u)" = inactive', timeout=GRACEFUL,
                  what="both nodes inactive")


def test_reload_is_a_graceful_hup_that_keeps_the_main_pid(world, host):
    pid = start(host)
    before = set(children(host, pid))
    running = enqueue(world, "e2e.sleep", "3")
    wait_state(world, running, "STARTED")
    host.systemctl("reload", "qworker@1")  # ExecReload=/bin/kill -HUP $MAINPID
    deadline = time.monotonic() + 20
    while not (set(children(host, pid)) - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert main_pid(host) == pid and host.systemctl("is-active", "qworker@1").stdout.strip() == "active"
    assert set(children(host, pid)) - before, "no fresh children after HUP"
    assert result(world, running)["state"] == "SUCCESS"  # the old child finished its task
    assert enqueue(world, "e2e.add", "4", "4", wait=True).splitlines()[-1] == "SUCCESS 8"


def test_stop_is_a_warm_shutdown(world, host):
    start(host)
    running = enqueue(world, "e2e.sleep", "4")
    wait_state(world, running, "STARTED")
    began = time.monotonic()
    host.systemctl("stop", "qworker@1")
    took = time.monotonic() - began
    assert result(world, running, timeout=1)["result"] == 4  # finished before the stop returned
    assert 1 < took < GRACEFUL, f"stop took {took:.1f}s"
    assert host.systemctl("show", "-p", "Result", "--value", "qworker@1").stdout.strip() == "success"


def test_sigkill_restarts_the_node_and_loses_no_task(world, host):
    pid = start(host)
    running = enqueue(world, "e2e.sleep", "3")
    wait_state(world, running, "STARTED")
    host.systemctl("kill", "-s", "KILL", "qworker@1")  # master and children, mid-task
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = host.systemctl("is-active", "qworker@1", check=False).stdout.strip()
        if state == "active" and main_pid(host) not in (0, pid):
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"qworker@1 not restarted: {state}\n{journal(host)}")
    assert int(host.systemctl("show", "-p", "NRestarts", "--value", "qworker@1").stdout) >= 1
    done = result(world, running, timeout=60)  # requeued (at worst after the visibility timeout)
    assert done["state"] == "SUCCESS" and done["result"] == 3, done


def test_upgrade_restarts_running_workers(world, host):
    pid = start(host)
    host.run(["dpkg", "-i", world["host"].debs[1]])
    assert host.systemctl("is-active", "qworker@1").stdout.strip() == "active"
    assert main_pid(host) != pid, "the upgrade did not restart qworker@1"
    venv = host.run(["readlink", "/opt/qdeploy/venv"]).stdout.strip()
    assert venv.startswith("/opt/qdeploy/venvs/2.0-1-")
    assert enqueue(world, "e2e.add", "5", "5", wait=True).splitlines()[-1] == "SUCCESS 10"


# -- the same package, the other two launchers ---------------------------------------------------

def test_initd_script_runs_a_real_worker(world, host):
    start_ = host.run(["/etc/init.d/qworker", "start", "1"], check=False)
    assert start_.returncode == 0, start_.stdout + start_.stderr + host.run("cat /var/log/qdeploy/qworker-1.log", check=False).stdout
    assert "qworker 1: started" in start_.stdout
    status = host.run(["/etc/init.d/qworker", "status", "1"], check=False)
    assert status.returncode == 0 and "running" in status.stdout
    pid = int(host.read("/run/qdeploy/qworker-1.pid"))
    assert users(host, [pid, *children(host, pid)]) == {"qdeploy"}
    assert enqueue(world, "e2e.add", "3", "4", wait=True).splitlines()[-1] == "SUCCESS 7"
    stop = host.run(["/etc/init.d/qworker", "stop", "1"], check=False)
    assert stop.returncode == 0 and "qworker 1: stopped" in stop.stdout, stop.stdout + stop.stderr
    assert host.run(["/etc/init.d/qworker", "status", "1"], check=False).returncode == 3


def test_supervisord_runs_a_real_worker(world, host):
    host.run(["supervisord", "-c", "/etc/supervisor/supervisord.conf"])
    try:
        host.wait_for("supervisorctl status qdeploy:qworker-1 | grep -q RUNNING", timeout=30,
                      what="qdeploy:qworker-1 RUNNING")
        assert enqueue(world, "e2e.add", "6", "7", wait=True).splitlines()[-1] == "SUCCESS 13"
        who = result(world, enqueue(world, "e2e.whoami"))["result"]
        assert who["user"] == "qdeploy"
        stop = host.run(["supervisorctl", "stop", "qdeploy:qworker-1"], check=False)
        assert "stopped" in stop.stdout, stop.stdout
        assert "STOPPED" in host.run(["supervisorctl", "status", "qdeploy:qworker-1"], check=False).stdout
        start_ = host.run(["supervisorctl", "start", "qdeploy:qworker-1"], check=False)
        assert "started" in start_.stdout, start_.stdout + host.run("tail -20 /var/log/qdeploy/qworker-1.log", check=False).stdout
        assert "RUNNING" in host.run(["supervisorctl", "status", "qdeploy:qworker-1"], check=False).stdout
    finally:
        host.run("supervisorctl shutdown", check=False)


def test_start_option_starts_the_services_on_install(world, host):
    host.run(["dpkg", "-P", "qdeploy"])
    host.run(["dpkg", "-i", world["host"].debs[2]])  # built with --start
    try:
        assert host.systemctl("is-active", "qworker@1", "qworker@2").stdout.split() == ["active", "active"]
        assert enqueue(world, "e2e.add", "20", "22", wait=True).splitlines()[-1] == "SUCCESS 42"
        host.run(["dpkg", "-r", "qdeploy"])  # prerm stops them
        states = host.systemctl("is-active", "qworker@1", "qworker@2", check=False).stdout.split()
        assert states == ["inactive", "inactive"]
        assert not host.run("pgrep -u qdeploy", check=False).stdout
    finally:
        host.run(f"dpkg -i {world['host'].debs[0]} >/dev/null", check=False)
