"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
import sys
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
    monkeypatch.setattr("qdeploy.config.SYSTEM_CONFIG", str(tmp_path / "no-such-system-config.toml"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write_config(tmp_path):
    def write(text: str, name: str = "qdeploy.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
