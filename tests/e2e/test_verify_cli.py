"""`qdeploy verify` without a deployed host: the missing-testinfra message, the pytest command
line it builds, and a real run against this machine (no qdeploy config here: it must fail).
The run against a deployed host is in tests/e2e/test_ansible_converge.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from qdeploy.deploy import verify as verify_mod
from qdeploy.cli import main

BIN = Path(sys.executable).parent


def test_missing_testinfra_is_one_line_telling_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "testinfra" else real(name, *a))
    result = CliRunner().invoke(main, ["verify"])
    assert result.exit_code == 2
    assert result.output == "qdeploy: error: testinfra is not installed: pip install pytest-testinfra\n"


def test_pytest_arguments_isolate_the_run():
    args = verify_mod.pytest_args("ssh://admin@web1", "/etc/q.toml", sudo=True, workers=False, select="units")
    assert args[0].endswith("qdeploy/deploy/verify_suite.py") and Path(args[0]).is_file()
    assert "--hosts=ssh://admin@web1" in args and "--qdeploy-config=/etc/q.toml" in args
    assert {"--sudo", "--qdeploy-no-workers", "--noconftest", "no:cacheprovider"} <= set(args)
    assert args[args.index("-c") + 1] == "/dev/null" and args[args.index("-k") + 1] == "units"


def test_a_host_without_qdeploy_fails_every_check(tmp_path):
    result = subprocess.run([str(BIN / "qdeploy"), "verify", "--config", str(tmp_path / "none.toml")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "none.toml: no such file on the host" in result.stdout
    assert "11 errors" in result.stdout
    assert not (tmp_path / ".pytest_cache").exists()  # no cache written where it was run
