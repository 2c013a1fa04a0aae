"""End-to-end fixtures: real init scripts, supervisord and systemd tools on rendered trees."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from qdeploy.cli import main

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _isolated(isolated):
    return isolated


@pytest.fixture
def root_only():
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests run as root (start-stop-daemon --chuid, mount namespaces)")


def stub_config(world: Path, stub: Path, *, nodes: list[str], extra_args: list[str], env: dict[str, str],
                beat: bool = True, overrides: str = "") -> str:
    """A config that runs the stub worker as nobody, with every directory under `world`."""
    return f"""
executable = "{stub}"
user = "nobody"
group = "nogroup"
workdir = "{world}/work"
log_dir = "{world}/log"
pid_dir = "{world}/run"
state_dir = "{world}/state"

[worker]
nodes = {json.dumps(nodes)}
extra_args = {json.dumps(extra_args)}
{overrides}
[beat]
enabled = {"true" if beat else "false"}

[env]
STUB_RECORD_DIR = "{world}/records"
{"".join(f"{k} = {json.dumps(v)}{chr(10)}" for k, v in env.items())}"""


def render_tree(out: Path, *args: str) -> Path:
    result = CliRunner().invoke(main, ["render", "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def stub(world_dir) -> Path:
    """The stub worker as an executable any user can run."""
    exe = world_dir / "bin" / "qdeploy"
    exe.parent.mkdir()
    # Debian's own python: the test interpreter may live where `nobody` cannot reach (/root).
    exe.write_text("#!/usr/bin/python3\n" + (HERE / "stub_worker.py").read_text())
    exe.chmod(0o755)
    records = world_dir / "records"
    records.mkdir()
    records.chmod(0o777 | stat.S_ISVTX)
    return exe
