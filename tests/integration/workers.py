"""Real `qdeploy worker` masters for the integration tests, and a stand-in for systemd's notify
socket; the `masters` and `tapp` fixtures (tests/integration/conftest.py) use them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import psutil

from tests.integration.conftest import REPO


class Notify:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self):
        directory = tempfile.mkdtemp(prefix="qdeploy-notify-")
        os.chmod(directory, 0o755)  # a worker that dropped privileges must still reach it
        self.path = os.path.join(directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.messages: list[str] = []

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if text in message:
                    return message
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        raise AssertionError(f"no {text!r} from the worker; got {self.messages}")


class Master:
    def __init__(self, url, namespace, tmp_path, *args, env=None, notify=True):
        self.notify = Notify() if notify else None
        environ = dict(os.environ, QDEPLOY_NAMESPACE=namespace, QDEPLOY_BROKER=url, PYTHONPATH=str(REPO))
        environ.update(env or {})
        environ.pop("QDEPLOY_CONFIG", None)
        if self.notify:
            environ["NOTIFY_SOCKET"] = self.notify.path
        self.argv = [sys.executable, "-m", "qdeploy", "worker", "-A", "tests.integration.tasks:app", "-l", "info",
                     "-n", f"m{time.monotonic_ns()}@test", *args]
        self.proc = subprocess.Popen(self.argv, env=environ, cwd=tmp_path, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self) -> Master:
        self.notify.wait_for("READY=1")
        return self

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children()

    def serving(self) -> list[psutil.Process]:
        """Live children that are not spares (a spare's title ends in ": spare")."""
        def title(child: psutil.Process) -> str | None:
            try:
                return (child.cmdline() or [None])[0]  # a zombie has no command line
            except psutil.Error:
                return None
        return [c for c in self.children() if (t := title(c)) is not None and not t.endswith(": spare")]

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout=30) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.communicate(timeout=10)[0]


def runs(rclient, namespace, tag) -> int:
    return int(rclient.get(f"{namespace}:test:runs:{tag}") or 0)
