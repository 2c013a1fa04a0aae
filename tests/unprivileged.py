"""A real qdeploy that an unprivileged user (nobody) can run, for tests of what non-root
operators and services see.

The test interpreter usually lives where `nobody` cannot reach (a venv on a pyenv under /root),
so this copies the checkout's `qdeploy` package and its runtime dependencies into a directory
anyone can read, and runs it with an interpreter `nobody` can execute with its own standard
library: Debian's /usr/bin/python3, else the test's own. `bin/qdeploy` is an executable script
for launchers (init.d's start-stop-daemon, `multi`); `app.py` is a small app whose import can be
slowed down or made to fail through the environment.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPENDENCIES = ("click", "jinja2", "markupsafe", "psutil", "redis")
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

APP = '''"""The unprivileged tests' app: B2_SLOW_IMPORT=SECS delays its import, B2_FAIL_IMPORT=TEXT
writes TEXT to stderr and exits 5 while importing."""
import os
import sys
import time

if os.environ.get("B2_FAIL_IMPORT"):
    sys.stderr.write(os.environ["B2_FAIL_IMPORT"] + "\\n")
    sys.exit(5)
time.sleep(float(os.environ.get("B2_SLOW_IMPORT") or 0))

from qdeploy import App

app = App("b2", broker=os.environ.get("QDEPLOY_BROKER"), namespace=os.environ.get("QDEPLOY_NAMESPACE", "b2"))


@app.task(name="b2.add")
def add(a, b):
    return a + b


@app.task(name="b2.whoami")
def whoami():
    return [os.getuid(), os.getcwd()]
'''


@dataclass(frozen=True)
class Runtime:
    root: Path  # holds qdeploy, its dependencies and app.py
    python: str
    executable: Path  # bin/qdeploy

    def env(self, **extra: str) -> dict[str, str]:
        environ = {"PATH": PATH, "HOME": "/nonexistent", "LANG": "C.UTF-8", "PYTHONPATH": str(self.root),
                   "QDEPLOY_EXECUTABLE": str(self.executable)}
        environ.update(extra)
        return environ

    def run(self, *args: str, env: dict | None = None, cwd: str = "/", timeout: float = 60) -> subprocess.CompletedProcess:
        """`qdeploy ARGS` as user nobody (a real unprivileged process, no capabilities)."""
        return subprocess.run([*AS_NOBODY, self.python, "-m", "qdeploy", *args], env=self.env(**(env or {})),
                              cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _runs_as_nobody(python: str) -> bool:
    """`python` starts as nobody, with its own standard library (an interpreter whose prefix
    nobody cannot read may still start, with another Python's library: not that one)."""
    try:
        done = subprocess.run([*AS_NOBODY, python, "-I", "-c", "import os, sys; assert sys.version_info >= (3, 11); "
                               "print(os.path.realpath(os.__file__))"], capture_output=True, text=True, timeout=30, cwd="/")
        own = subprocess.run([python, "-I", "-c", "import os; print(os.path.realpath(os.__file__))"],
                             capture_output=True, text=True, timeout=30, cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout == own.stdout


def build(dest: Path) -> Runtime:
    if os.geteuid() != 0:
        pytest.fail("the unprivileged-user tests run as root (they switch to nobody with setpriv)")
    python = next((p for p in ("/usr/bin/python3", sys.executable) if os.path.exists(p) and _runs_as_nobody(p)), None)
    if python is None:
        pytest.fail(f"no Python >= 3.11 that user nobody can run ({sys.executable} is not reachable for it, "
                    "and /usr/bin/python3 is missing or older): apt-get install python3")
    dest.mkdir(parents=True, exist_ok=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "qdeploy", dest / "qdeploy", ignore=skip)
    for name in DEPENDENCIES:
        source = Path(importlib.import_module(name).__file__).parent
        shutil.copytree(source, dest / name, ignore=skip)
    (dest / "app.py").write_text(APP)
    exe = dest / "bin" / "qdeploy"
    exe.parent.mkdir()
    exe.write_text(f"#!{python}\nimport sys\nsys.path.insert(0, {str(dest)!r})\nfrom qdeploy.cli import main\nmain()\n")
    exe.chmod(0o755)
    subprocess.run([python, "-m", "compileall", "-q", str(dest)], check=False, capture_output=True)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    return Runtime(dest, python, exe)


@pytest.fixture(scope="session")
def nobody_runtime():
    root = Path(tempfile.mkdtemp(prefix="qdeploy-nobody-"))
    root.chmod(0o755)
    yield build(root / "rt")
    shutil.rmtree(root, ignore_errors=True)
