"""The rendered supervisord programs, loaded by a real supervisord.

supervisord runs in a private mount namespace where the rendered `etc/default` is bind-mounted
over `/etc/default`, so the programs source the rendered file at its real path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from qdeploy.cli import main
from tests.e2e.conftest import render_tree, stub_config

BIN = Path(sys.executable).parent
SECRET = "p@ss 'w\"rd $HOME `id` %(ENV_HOME)s\nsecond line"


@pytest.fixture(params=["beat", "no-beat"])
def supervisor(request, root_only, world_dir, stub, write_config):
    cfg = write_config(stub_config(world_dir, stub, nodes=["1", "2", "video.hd"], beat=request.param == "beat",
                                   extra_args=["--tag=50% it's", "%(program_name)s"], env={"SECRET": SECRET}))
    tree = render_tree(world_dir / "tree", "--config", str(cfg))
    for d in ("work", "log"):  # on a host, tmpfiles.d creates these
        (world_dir / d).mkdir()
        os.chown(world_dir / d, 65534, 65534)
    conf = world_dir / "supervisord.conf"
    conf.write_text(
        f"""
[unix_http_server]
file={world_dir}/supervisor.sock
[supervisord]
logfile={world_dir}/supervisord.log
pidfile={world_dir}/supervisord.pid
nodaemon=true
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{world_dir}/supervisor.sock
[include]
files={tree}/etc/supervisor/conf.d/*.conf
"""
    )
    script = f"mount --bind {tree}/etc/default /etc/default && exec {BIN}/supervisord -c {conf}"
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    explain = json.loads(CliRunner().invoke(main, ["render", "--explain", "--json", "--config", str(cfg)]).output)
    ctl = lambda *args: subprocess.run([str(BIN / "supervisorctl"), "-c", str(conf), *args], capture_output=True, text=True)  # noqa: E731
    yield ctl, explain, world_dir
    ctl("shutdown")
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_supervisord_loads_and_runs_every_program(supervisor):
    ctl, explain, world = supervisor
    names = ["qdeploy:qworker-1", "qdeploy:qworker-2", "qdeploy:qworker-video.hd"]
    if "qbeat" in explain:
        names.insert(0, "qdeploy:qbeat")

    def all_running():
        lines = ctl("status").stdout.splitlines()
        return sorted(line.split()[0] for line in lines if " RUNNING " in line) == names

    assert wait_for(all_running), ctl("status").stdout
    for instance, service in (("1", "qworker@1"), ("2", "qworker@2"), ("video.hd", "qworker@video.hd"), ("beat", "qbeat")):
        if service not in explain:
            assert not (world / "records" / f"{instance}.json").exists()
            continue
        record = json.loads((world / "records" / f"{instance}.json").read_text())
        assert record["argv"] == explain[service]["argv"], instance
        assert record["uid"] == 65534 and record["cwd"] == str(world / "work")
        assert record["env"]["SECRET"] == SECRET
    assert (world / "log" / "qworker-video.hd.log").exists()

    stopped = ctl("stop", "qdeploy:*")
    assert stopped.returncode == 0
    assert all(" STOPPED " in line for line in ctl("status").stdout.splitlines())
    assert ctl("start", "qdeploy:qworker-2").returncode == 0
    assert " RUNNING " in ctl("status", "qdeploy:qworker-2").stdout
