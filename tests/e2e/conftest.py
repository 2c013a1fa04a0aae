"""End-to-end fixtures: real init scripts, supervisord and systemd tools on rendered trees."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
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


def render_tree(out: Path, *args: str) -> Path:
    result = CliRunner().invoke(main, ["render", "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def world_dir():
    """A scratch directory the unprivileged service user (nobody) can traverse and write."""
    path = Path(tempfile.mkdtemp(prefix="qdeploy-e2e-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
