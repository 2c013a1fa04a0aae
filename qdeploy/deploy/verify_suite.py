"""The checks of `qdeploy verify`: a testinfra suite, run by `qdeploy.deploy.verify.run()` through
pytest against `--hosts`. Every expectation comes from the host's own config, and the files
from `qdeploy render` of that config — nothing here restates a template.

Each check collects everything wrong it finds and fails once, naming all of it.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time

import pytest

from qdeploy.generator import config as config_mod
from qdeploy.generator import render as render_mod
from qdeploy.generator.render import SECRET

HEARTBEAT_WAIT = 20.0  # seconds a freshly started node may take to show its heartbeat


@pytest.fixture(scope="module")
def cfg(host, request) -> config_mod.Config:
    path = request.config.getoption("--qdeploy-config")
    file = host.file(path)
    if not file.exists:
        pytest.fail(f"{path}: no such file on the host (is qdeploy deployed? --config)")
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as tmp:
        tmp.write(file.content_string)
        tmp.flush()
        try:
            return config_mod.load(tmp.name, environ={})
        except config_mod.ConfigError as exc:
            pytest.fail(f"{path}: {str(exc).replace(tmp.name, path)}")


@pytest.fixture(scope="module")
def workers(request) -> bool:
    return not request.config.getoption("--qdeploy-no-workers")


@pytest.fixture(scope="module")
def systemd(host) -> bool:
    return host.file("/run/systemd/system").is_directory


@pytest.fixture(scope="module")
def units(cfg, workers) -> list[str]:
    """The service units this host should run."""
    names = [f"qworker@{n}.service" for n in cfg.nodes] if workers else []
    return names + (["qbeat.service"] if cfg["beat.enabled"] else [])


def _need_systemd(systemd: bool) -> None:
    if not systemd:
        pytest.skip("not a systemd host (no /run/systemd/system)")


def test_user_and_group(host, cfg):
    user, group = host.user(cfg["user"]), host.group(cfg["group"])
    assert group.exists, f"group {cfg['group']} does not exist"
    assert user.exists, f"user {cfg['user']} does not exist"
    problems = []
    if user.group != cfg["group"]:
        problems.append(f"primary group {user.group}, expected {cfg['group']}")
    if user.uid == 0:
        problems.append("uid 0")
    if not user.shell.endswith(("nologin", "false")):
        problems.append(f"login shell {user.shell}")
    assert not problems, f"user {cfg['user']}: " + "; ".join(problems)


def test_directories(host, cfg):
    """Owner, group and mode of each directory the rendered tmpfiles.d entry creates."""
    problems = []
    for path, mode, owner, group in _tmpfiles_dirs(cfg):
        d = host.file(path)
        if not d.is_directory:
            problems.append(f"{path}: missing")
        elif (d.mode, d.user, d.group) != (mode, owner, group):
            problems.append(f"{path}: {d.mode:04o} {d.user}:{d.group}, expected {mode:04o} {owner}:{group}")
    assert not problems, "; ".join(problems)


def test_config_file(host, cfg, request):
    path = request.config.getoption("--qdeploy-config")
    f = host.file(path)
    assert (f.mode, f.user, f.group) == (0o640, "root", cfg["group"]), \
        f"{path}: {f.mode:04o} {f.user}:{f.group}, expected 0640 root:{cfg['group']}"


def test_rendered_files_are_up_to_date(host, cfg, request):
    """`qdeploy render --check` on the host: every file as its config renders it, and the
    secret ones (0640) readable by the service group only."""
    path = request.config.getoption("--qdeploy-config")
    check = host.run(f"{shlex.quote(cfg['executable'])} render --config {shlex.quote(path)} --root / --check")
    assert check.rc == 0, f"rendered files differ from {path} (run qdeploy render --root /):\n" \
                          f"{check.stdout}{check.stderr}"
    problems = []
    for file in render_mod.render(cfg):
        if file.mode == SECRET:
            f = host.file("/" + file.path)
            if (f.user, f.group) != ("root", cfg["group"]):
                problems.append(f"/{file.path}: {f.user}:{f.group}, expected root:{cfg['group']}")
    assert not problems, "; ".join(problems)


def test_units_enabled_and_running(host, cfg, units, workers, systemd):
    _need_systemd(systemd)
    problems = []
    for unit in (["qworker.target"] if workers else []) + (["qbeat.service"] if cfg["beat.enabled"] else []):
        state = host.run(f"systemctl is-enabled {unit}").stdout.strip()
        if state != "enabled":
            problems.append(f"{unit} is {state or 'not found'}, not enabled")
    for unit in units:
        state = host.run(f"systemctl is-active {unit}").stdout.strip()
        if state != "active":
            problems.append(f"{unit} is {state}")
    assert not problems, "; ".join(problems)


def test_systemd_analyze_verify(host, units, systemd):
    _need_systemd(systemd)
    result = host.run("systemd-analyze verify " + " ".join(units + ["qworker.target"]))
    assert result.rc == 0 and not result.stderr.strip(), f"systemd-analyze verify: {result.stderr}{result.stdout}"


def test_processes_run_as_the_service_user(host, cfg, units, systemd):
    """Every process of every unit (the masters and every child running tasks): never root.
    `ps -o unit` reads each process's systemd unit from its cgroup (v1 or v2 alike)."""
    _need_systemd(systemd)
    problems = []
    found = {unit: [] for unit in units}
    for line in host.check_output("ps -e -o unit:80=,user:32=,pid=,args=").splitlines():
        unit, user, pid, args = (line.split(None, 3) + [""])[:4]
        if unit in found:
            found[unit].append(pid)
            if user != cfg["user"]:
                problems.append(f"{unit}: pid {pid} runs as {user}: {args}")
    problems += [f"{unit}: no process" for unit, pids in found.items() if not pids]
    assert not problems, "; ".join(problems)


def test_workers_answer(host, cfg, workers):
    """Each node's heartbeat is in Redis, read from the host itself (its network, its broker URL)."""
    if not workers:
        pytest.skip("no worker nodes on this host (--no-workers)")
    hostname = host.check_output("hostname")
    expected = {f"{node}@{hostname}" for node in cfg.nodes}
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in cfg["env"].items())
    cmd = (f"env {env} {shlex.quote(cfg['executable'])} status --json -A {shlex.quote(cfg['app'])}"
           f" -b {shlex.quote(cfg['broker'])}")
    deadline = time.monotonic() + HEARTBEAT_WAIT
    while True:
        result = host.run(cmd)
        online = {row["owner"] for row in json.loads(result.stdout)} if result.stdout.strip().startswith("[") else set()
        if expected <= online or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert expected <= online, f"no heartbeat from {', '.join(sorted(expected - online))} " \
                               f"(online: {', '.join(sorted(online)) or 'none'}) {result.stderr.strip()}"


_NODES = ("import json, sys\n"
          "from qdeploy.core.connection import connect, nodes_of\n"
          "print(json.dumps(nodes_of(connect(sys.argv[1], retries=0, connect_timeout=3))))")


def test_broker_nodes_reachable(host, cfg):
    """Every node of the broker answers a TCP connect from the host itself: each host:port the URL
    names (the sentinels, the cluster nodes given), and the nodes the broker reports, asked with
    the host's own qdeploy (a cluster's every primary and replica, Sentinel's master and replicas:
    a worker needs every primary). A unix socket must be a socket."""
    from qdeploy.core.urls import BrokerURL, redact

    url = BrokerURL.parse(cfg["broker"])
    if url.topology == "unix":
        assert host.file(url.path).is_socket, f"broker socket {url.path}: not a socket on the host"
        return
    nodes = dict.fromkeys(url.hosts, "in the broker URL")
    problems = []
    if url.topology in ("cluster", "sentinel"):
        python = f"{cfg['executable'].rpartition('/')[0]}/python"
        found = host.run(f"{shlex.quote(python)} -c {shlex.quote(_NODES)} {shlex.quote(cfg['broker'])}")
        try:
            reported = json.loads(found.stdout) if found.rc == 0 else None
        except ValueError:
            reported = None
        if reported is None:
            problems.append(f"{redact(cfg['broker'])}: could not ask the broker for its nodes "
                            f"({(found.stderr.strip().splitlines() or ['no output'])[-1][:200]})")
        for h, p, role in reported or ():
            nodes.setdefault((h, p), f"a {role} the broker reports")
    for (h, p), why in sorted(nodes.items()):
        if not host.addr(h).port(p).is_reachable:
            problems.append(f"{h}:{p} ({why}) is not reachable")
    assert not problems, "broker: " + "; ".join(problems)


def test_pid_files_name_live_processes(host, cfg):
    """systemd needs no pid files; where init.d or `qdeploy multi` left some, none is stale."""
    listing = host.run(f"find {shlex.quote(cfg['pid_dir'])} -maxdepth 1 -name '*.pid' -type f")
    stale = []
    for path in listing.stdout.split():
        pid = host.file(path).content_string.strip()
        if not pid.isdigit() or not host.file(f"/proc/{pid}").exists:
            stale.append(f"{path} ({pid or 'empty'})")
    assert not stale, f"stale pid files: {', '.join(stale)}"


def test_task_round_trip(host, cfg, workers):
    """A task sent from the host through its broker comes back done: the built-in qdeploy.ping,
    on the first queue of the first node."""
    if not workers:
        pytest.skip("no worker nodes on this host (--no-workers)")
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in cfg["env"].items())
    queue = cfg.node(cfg.nodes[0])["queues"][0]
    cmd = (f"env {env} {shlex.quote(cfg['executable'])} enqueue qdeploy.ping --wait --timeout 30"
           f" -q {shlex.quote(queue)} -A {shlex.quote(cfg['app'])} -b {shlex.quote(cfg['broker'])}")
    result = host.run(cmd)
    assert result.rc == 0 and result.stdout.splitlines()[-1:] == ['SUCCESS "pong"'], \
        f"qdeploy.ping on queue {queue}: {result.stdout.strip()} {result.stderr.strip()}"


def _tmpfiles_dirs(cfg) -> list[tuple[str, int, str, str]]:
    found = [f for f in render_mod.render(cfg) if f.target == "tmpfiles"]
    tmpfiles = found[0] if found else None
    if tmpfiles is None:
        pytest.skip("the config does not render tmpfiles.d")
    dirs = []
    for line in tmpfiles.content.splitlines():
        fields = line.split()
        if fields and fields[0] == "d":
            dirs.append((fields[1], int(fields[2], 8), fields[3], fields[4]))
    return dirs
