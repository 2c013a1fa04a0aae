"""The rendered init.d scripts, run for real: shellcheck, start-stop-daemon, pid files, readiness,
LSB status codes, warm stop with escalation, and the defaults-file ownership check."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from qdeploy.cli import main
from tests.conftest import GOLDEN
from tests.e2e.conftest import render_tree, stub_config

HOSTILE_ENV = {
    "SECRET_KEY": "a'b\"c$d`e\\f g%h",
    "MULTI_LINE": "line one\nline two; $(touch /tmp/qdeploy-pwned)",
    "LEADING_DASH": "-n -e",
    "EMPTY": "",
}


@pytest.mark.parametrize("case", ["default", "rich"])
def test_shellcheck_clean(case, tmp_path):
    args = ["--config", str(GOLDEN / "rich.toml")] if case == "rich" else ["--executable", "/usr/bin/qdeploy"]
    out = render_tree(tmp_path / "out", *args)
    scripts = sorted(str(p) for p in (out / "etc/init.d").iterdir())
    assert len(scripts) == 2
    result = subprocess.run(["shellcheck", "--shell=sh", "--severity=style", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_catches_a_broken_script(tmp_path):
    """The check above can fail: an unquoted expansion is reported."""
    bad = tmp_path / "bad"
    bad.write_text("#!/bin/sh\nrm -rf $1/tmp\n")
    assert subprocess.run(["shellcheck", "--shell=sh", str(bad)], capture_output=True).returncode != 0


@pytest.fixture
def deployment(root_only, world_dir, stub, write_config):
    """A tree rendered for user nobody, with directories under a scratch dir and the stub worker."""
    cfg = write_config(stub_config(world_dir, stub, nodes=["1", "2", "images"], extra_args=["--tag=it's $HOME `id`", ";"],
                                   env=HOSTILE_ENV, overrides="[node.images]\nconcurrency = 8\n"))
    out = render_tree(world_dir / "tree", "--config", str(cfg))
    explain = CliRunner().invoke(main, ["render", "--explain", "--json", "--config", str(cfg)])
    yield out, json.loads(explain.output), world_dir
    for service in ("qworker", "qbeat"):
        initd(out, service, "kill")


def initd(tree: Path, service: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    defaults = tree / "etc/default" / service
    environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "QDEPLOY_DEFAULTS": str(defaults),
               "QDEPLOY_CONFIG_FILE": str(tree / "etc/qdeploy/qdeploy.toml"), **env}
    return subprocess.run(
        ["/bin/sh", str(tree / "etc/init.d" / service), *args], capture_output=True, text=True, env=environ, timeout=120
    )


def pid_of(world: Path, name: str) -> int:
    return int((world / "run" / f"{name}.pid").read_text())


def test_start_status_stop_runs_the_explained_argv(deployment):
    tree, explain, world = deployment
    started = initd(tree, "qworker", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert started.stdout.count(": started (pid ") == 3
    for node in ("1", "2", "images"):
        record = json.loads((world / "records" / f"{node}.json").read_text())
        assert record["argv"] == explain[f"qworker@{node}"]["argv"]
        assert record["uid"] == 65534 and record["cwd"] == str(world / "work")
        for name, value in HOSTILE_ENV.items():
            assert record["env"][name] == value
        assert psutil.Process(pid_of(world, f"qworker-{node}")).cmdline()[2:] == record["argv"][1:]
    assert not Path("/tmp/qdeploy-pwned").exists()
    assert {p.name for p in (world / "log").iterdir()} == {"qworker-1.log", "qworker-2.log", "qworker-images.log"}
    assert (world / "run").stat().st_uid == 65534

    status = initd(tree, "qworker", "status")
    assert status.returncode == 0 and status.stdout.count(": running (pid ") == 3
    again = initd(tree, "qworker", "start")
    assert again.returncode == 0 and again.stdout.count("already running") == 3

    pids = [pid_of(world, f"qworker-{n}") for n in ("1", "2", "images")]
    stopped = initd(tree, "qworker", "stop")
    assert stopped.returncode == 0 and stopped.stdout.count(": stopped") == 3
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert not list((world / "run").glob("*.pid"))
    assert initd(tree, "qworker", "status").returncode == 3


def test_beat_script(deployment):
    tree, explain, world = deployment
    assert initd(tree, "qbeat", "start").returncode == 0
    record = json.loads((world / "records" / "beat.json").read_text())
    assert record["argv"] == explain["qbeat"]["argv"]
    assert initd(tree, "qbeat", "status").returncode == 0
    assert initd(tree, "qbeat", "stop").returncode == 0
    assert initd(tree, "qbeat", "status").returncode == 3


def test_single_node_reload_kill_and_lsb_codes(deployment):
    tree, _, world = deployment
    assert initd(tree, "qworker", "start", "2").returncode == 0
    assert not (world / "records" / "1.json").exists()
    status = initd(tree, "qworker", "status")
    assert status.returncode == 3 and "qworker 2: running" in status.stdout and "qworker 1: not running" in status.stdout
    assert initd(tree, "qworker", "status", "2").returncode == 0
    assert initd(tree, "qworker", "reload", "1").returncode == 7  # LSB: program is not running
    assert initd(tree, "qworker", "kill", "2").returncode == 0
    assert not (world / "run/qworker-2.pid").exists()
    assert initd(tree, "qworker", "status", "2").returncode == 3


def test_stop_escalates_to_kill_after_the_timeout(deployment):
    tree, _, world = deployment
    defaults = tree / "etc/default/qworker"
    defaults.write_text(defaults.read_text() + "STUB_IGNORE_TERM='1'\nQDEPLOY_STOP_TIMEOUT='1'\n")
    assert initd(tree, "qworker", "start", "1").returncode == 0
    pid = pid_of(world, "qworker-1")
    began = time.monotonic()
    stopped = initd(tree, "qworker", "stop", "1")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert time.monotonic() - began >= 1.0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_start_fails_loudly_when_the_worker_is_not_ready(deployment):
    tree, _, world = deployment
    defaults = tree / "etc/default/qworker"
    defaults.write_text(defaults.read_text() + "STUB_RECORD_DIR='/nonexistent'\nQDEPLOY_START_TIMEOUT='5'\n")
    result = initd(tree, "qworker", "start", "1")
    assert result.returncode != 0
    assert "qworker 1: failed to start" in result.stderr


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: os.chown(p, 65534, 0), "owned by uid 65534, not root (fix: chown root"),
        (lambda p: p.chmod(0o660), "group or world writable, mode 660 (fix: chmod go-w"),
        (lambda p: p.chmod(0o646), "group or world writable, mode 646 (fix: chmod go-w"),
    ],
)
@pytest.mark.parametrize("target", ["etc/default/qworker", "etc/qdeploy/qdeploy.toml"])
def test_refuses_unsafe_defaults_and_config_files(deployment, change, message, target):
    tree, _, world = deployment
    marker = world / "sourced"
    defaults = tree / "etc/default/qworker"
    defaults.write_text(defaults.read_text() + f"touch '{marker}'\n")
    change(tree / target)
    result = initd(tree, "qworker", "start")
    assert result.returncode == 4
    assert f"qworker: refusing to use {tree / target}: {message}" in result.stderr
    assert marker.exists() == target.endswith(".toml"), "an unsafe defaults file is never sourced"
    assert not list((world / "records").iterdir())


def test_start_needs_the_config_file(deployment):
    tree, _, world = deployment
    (tree / "etc/qdeploy/qdeploy.toml").unlink()
    result = initd(tree, "qworker", "start")
    assert result.returncode == 6 and "config file" in result.stderr and "not found" in result.stderr
    assert not list((world / "records").iterdir())


@pytest.mark.parametrize("args", [["start", "../../etc"], ["stop", "a;b"], ["status", "$(id)"]])
def test_rejects_hostile_node_names(deployment, args):
    tree, _, _ = deployment
    result = initd(tree, "qworker", *args)
    assert result.returncode == 2 and "invalid node name" in result.stderr


def test_usage(deployment):
    tree, _, _ = deployment
    result = initd(tree, "qworker", "frobnicate")
    assert result.returncode == 2 and result.stderr.startswith("Usage: /etc/init.d/qworker {start|stop|")
