"""As root, `qdeploy worker --config FILE` refuses a config file that is not root-owned or is
group/world-writable (exit 77, one line), before it imports anything the file names.

(The init scripts refuse such a config or defaults file too: tests/e2e/test_initd.py. A worker asked
to run as root without --allow-root refuses: test_worker_daemon.test_root_is_refused_without_allow_root.)"""

from __future__ import annotations

import os

import pytest

from tests.integration.conftest import free_port, run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the check applies to root only")


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "qdeploy.toml"
    # An unreachable broker: a config that passes the check fails later with exit 3 instead.
    path.write_text(f'broker = "redis://:pw@127.0.0.1:{free_port()}/0"\napp = "tests.integration.tasks:app"\n')
    path.chmod(0o640)
    return path


def worker(path):
    return run_cli("worker", "--config", str(path), "--allow-root", "--pool", "solo", env={"QDEPLOY_CONFIG": ""})


@pytest.mark.parametrize("mode", [0o660, 0o646, 0o666, 0o620])
def test_writable_config_is_refused(config_file, mode):
    config_file.chmod(mode)
    result = worker(config_file)
    assert result.returncode == 77, result.stderr
    assert f"refusing config {config_file}: group/world-writable (mode {mode:04o})" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_config_not_owned_by_root_is_refused(config_file):
    os.chown(config_file, 65534, 0)
    result = worker(config_file)
    assert result.returncode == 77 and "owned by uid 65534, not root" in result.stderr, result.stderr


def test_root_owned_0640_config_passes_the_check(config_file):
    result = worker(config_file)
    assert result.returncode == 3 and "cannot reach broker" in result.stderr, result.stderr
