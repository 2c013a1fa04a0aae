"""The ops commands find the config the way `worker` does: --config FILE, else $QDEPLOY_CONFIG,
./qdeploy.toml, /etc/qdeploy/qdeploy.toml; -A/-b (and $QDEPLOY_APP/$QDEPLOY_BROKER) win over it.

The /etc case runs for real in a private mount namespace (an overlay over /etc), so a host
with only /etc/qdeploy/qdeploy.toml is exactly what `qdeploy status` sees; the real /etc is
never written."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, free_port
from tests.integration.workers import Master

APP = "tests.integration.tasks:app"
OPS = [["status"], ["inspect", "stats"], ["control", "ping"], ["queues"], ["dead-letter", "list"],
       ["dead-letter", "requeue", "--all"], ["dead-letter", "purge", "--yes"], ["purge", "--yes"],
       ["enqueue", "t.pid", "--force"], ["result", "x"], ["dashboard", "--port", "1"]]


def clean_env(**extra) -> dict:
    """The environment of a host: no QDEPLOY_* at all (the tasks' app then uses namespace
    "qdeploy"), PYTHONPATH only so that the config's app imports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QDEPLOY_")}
    return dict(env, PYTHONPATH=str(REPO), **extra)


def cli(*args, cwd=REPO, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qdeploy", *args], cwd=cwd, env=clean_env(**env),
                          capture_output=True, text=True, timeout=30)


def test_status_with_only_the_system_config_finds_the_workers(make_server, tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("this test needs root and unshare (util-linux) for a private mount namespace")
    assert not Path("/etc/qdeploy/qdeploy.toml").exists(), "a real /etc/qdeploy/qdeploy.toml would be shadowed"
    server = make_server(password="Etc-Only-Pw")
    worker = Master(server.url, "qdeploy", tmp_path, "--allow-root", "-c", "1").ready()  # namespace "qdeploy"
    try:
        config = tmp_path / "system.toml"
        config.write_text(f'app = "{APP}"\nbroker = "{server.url}"\n')
        empty = tmp_path / "cwd"
        empty.mkdir()
        upper, work = tmp_path / "upper", tmp_path / "work"
        upper.mkdir(), work.mkdir()
        script = (f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc"
                  f" && mkdir -p /etc/qdeploy && cp {config} /etc/qdeploy/qdeploy.toml"
                  f" && cd {empty} && exec {shlex.quote(sys.executable)} -m qdeploy status --json")
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                              env=clean_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        owners = [row["owner"] for row in json.loads(proc.stdout)]
        assert any(o.startswith(worker.argv[worker.argv.index("-n") + 1].partition("@")[0]) for o in owners), owners
        assert "Etc-Only-Pw" not in proc.stdout + proc.stderr
    finally:
        worker.signal(15)
        worker.wait(30)
    assert not Path("/etc/qdeploy").exists(), "the real /etc was not touched"


def test_config_flags_and_environment_precedence(redis_server, tmp_path, namespace, masters):
    """--config beats $QDEPLOY_CONFIG, which beats ./qdeploy.toml; -b/-A beat every config;
    $QDEPLOY_BROKER beats the file (as for `worker`)."""
    m = masters("-c", "1").ready()
    node = m.argv[m.argv.index("-n") + 1]
    good, dead = redis_server.url, f"redis://127.0.0.1:{free_port()}/0"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "qdeploy.toml").write_text(f'app = "{APP}"\nbroker = "{dead}"\n')
    (tmp_path / "env.toml").write_text(f'app = "{APP}"\nbroker = "{dead}"\n')
    (tmp_path / "flag.toml").write_text(f'app = "{APP}"\nbroker = "{good}"\n')
    (tmp_path / "noapp.toml").write_text(f'app = "no.such.module:app"\nbroker = "{good}"\n')

    def status(*args, **env):
        proc = cli("status", "--json", *args, cwd=cwd, QDEPLOY_NAMESPACE=namespace, **env)
        found = proc.returncode == 0 and any(r["owner"] == node for r in json.loads(proc.stdout))
        return proc.returncode, found, proc.stderr

    assert status()[:2] == (3, False), "./qdeploy.toml is read (its broker is dead)"
    assert status(QDEPLOY_CONFIG=str(tmp_path / "flag.toml"))[:2] == (0, True), "$QDEPLOY_CONFIG beats ./qdeploy.toml"
    assert status("--config", str(tmp_path / "flag.toml"), QDEPLOY_CONFIG=str(tmp_path / "env.toml"))[:2] == (0, True), \
        "--config beats $QDEPLOY_CONFIG"
    assert status("-b", good)[:2] == (0, True), "-b beats the config's broker"
    assert status(QDEPLOY_BROKER=good)[:2] == (0, True), "$QDEPLOY_BROKER beats the config's broker"
    assert status("--config", str(tmp_path / "flag.toml"), "-b", dead)[:2] == (3, False), "-b beats --config"
    code, _, err = status("--config", str(tmp_path / "noapp.toml"))
    assert code == 2 and "cannot import app 'no.such.module:app'" in err, "the config's app is used"
    assert status("--config", str(tmp_path / "noapp.toml"), "-A", APP)[:2] == (0, True), "-A beats the config's app"
    assert status("--config", str(tmp_path / "noapp.toml"), QDEPLOY_APP=APP)[:2] == (0, True), "so does $QDEPLOY_APP"


@pytest.mark.parametrize("args", OPS, ids=lambda a: "-".join(a[:2]))
def test_every_ops_command_reads_the_config(args, tmp_path):
    """One helper behind all of them: a missing --config is exit 2, a bad file is exit 2 with the
    config's one line, and the config's broker is the one they use."""
    missing = cli(*args, "--config", str(tmp_path / "missing.toml"))
    assert missing.returncode == 2 and missing.stderr.strip().endswith("missing.toml: config file not found (from --config)"), \
        missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("brokr = 'redis://h/0'\n")
    proc = cli(*args, "--config", str(bad))
    assert proc.returncode == 2 and "unknown key 'brokr' (did you mean 'broker'?)" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    dead = tmp_path / "dead.toml"
    dead.write_text(f'broker = "redis://127.0.0.1:{free_port()}/0"\n')
    proc = cli(*args, QDEPLOY_CONFIG=str(dead), QDEPLOY_NAMESPACE="tns")
    assert proc.returncode == 3 and "127.0.0.1" in proc.stderr, proc.stderr
