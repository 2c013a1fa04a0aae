"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"
BIN = Path(sys.executable).parent


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No QDEPLOY_* variables, no ./qdeploy.toml, no /etc/qdeploy/qdeploy.toml: only what a test sets."""
    for name in list(os.environ):
        if name.startswith("QDEPLOY_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr("qdeploy.generator.config.SYSTEM_CONFIG", str(tmp_path / "no-such-system-config.toml"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write_config(tmp_path):
    def write(text: str, name: str = "qdeploy.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def world_dir():
    """A scratch directory the unprivileged service user (nobody) can traverse and write
    (pytest's own tmp dirs are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="qdeploy-world-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
