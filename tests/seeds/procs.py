"""Real `qdeploy` processes started the way a user starts them: the console script, from the
project's directory, with no PYTHONPATH. Their output is read line by line as they run, so a
test can wait for "ready" or a task's log line; every process is stopped at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

QDEPLOY = str(Path(sys.executable).parent / "qdeploy")


def clean_env(**extra: str) -> dict:
    """The environment of a user's shell: none of the test run's QDEPLOY_*/PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QDEPLOY_", "PYTHONPATH", "DJANGO_"))}
    env.update(extra)
    return env


class Proc:
    def __init__(self, argv: list[str], cwd, env: dict):
        self.argv = argv
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace")
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 20.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in list(self.lines) if text in line]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                time.sleep(0.2)  # the last lines
                found = [line for line in list(self.lines) if text in line]
                if len(found) >= count:
                    return found[count - 1]
                raise AssertionError(f"{self.argv[:4]} exited ({self.proc.returncode}) before {text!r}:\n{self.output[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout}s from {self.argv[:4]}:\n{self.output[-3000:]}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._reader.join(5)
        return code


def run(argv: list[str], cwd, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
