"""`qdeploy verify`: prove that a deployed host is right, with a testinfra suite shipped in the
package (`qdeploy/deploy/verify_suite.py`), run through pytest.

testinfra and pytest are not runtime dependencies (the runtime needs only click, jinja2,
psutil and redis): `qdeploy verify` asks for `pip install pytest-testinfra` when they are missing.
The suite reads the host's own config (`/etc/qdeploy/qdeploy.toml`) and checks what it promises:
the user and group, directories with their owners and modes, the config's mode and group, the
rendered files up to date, units loaded, enabled and running, `systemd-analyze verify` clean,
every worker and beat process running as the service user (none as root), and every node
answering (its heartbeat in Redis, seen from the host itself).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

SUITE = Path(__file__).with_name("verify_suite.py")
MISSING = "testinfra is not installed: pip install pytest-testinfra"


class VerifyUnavailable(RuntimeError):
    pass


def check_available() -> None:
    for module in ("pytest", "testinfra"):
        if importlib.util.find_spec(module) is None:
            raise VerifyUnavailable(MISSING)


def pytest_args(hosts: str, config: str, sudo: bool = False, workers: bool = True,
                verbose: bool = False, select: str | None = None) -> list[str]:
    """The pytest command line of one verification run (no ini file, no cache, no conftest)."""
    args = [str(SUITE), f"--hosts={hosts}", f"--qdeploy-config={config}",
            "-c", os.devnull, "-p", "no:cacheprovider", "--noconftest", "-rfE",
            "--verbose" if verbose else "-q", "--tb=short" if verbose else "--tb=line"]
    if sudo:
        args.append("--sudo")
    if not workers:
        args.append("--qdeploy-no-workers")
    if select:
        args += ["-k", select]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        args += ["-p", "testinfra.plugin"]
    return args


class _Options:
    """A pytest plugin that only adds the suite's options."""

    @staticmethod
    def pytest_addoption(parser) -> None:
        group = parser.getgroup("qdeploy")
        group.addoption("--qdeploy-config", default="/etc/qdeploy/qdeploy.toml",
                        help="The config on the host under test.")
        group.addoption("--qdeploy-no-workers", action="store_true",
                        help="This host runs no worker nodes (beat only).")


def run(hosts: str = "local://", config: str = "/etc/qdeploy/qdeploy.toml", sudo: bool = False,
        workers: bool = True, verbose: bool = False, select: str | None = None) -> int:
    """Run the suite against `hosts` (testinfra's `local://`, `ssh://user@host`, ...); pytest's
    exit code: 0 all passed, 1 some check failed, 2+ could not run."""
    check_available()
    import pytest

    args = pytest_args(hosts, config, sudo, workers, verbose, select)
    with tempfile.TemporaryDirectory(prefix="qdeploy-verify-") as rootdir:
        # a private rootdir: no project ini, conftest or cache of the current directory applies
        return int(pytest.main([*args, f"--rootdir={rootdir}"], plugins=[_Options()]))
