"""The systemd notify protocol (sd_notify(3)): READY, STATUS, RELOADING, STOPPING, WATCHDOG.

Every launcher that waits for readiness speaks it: systemd (Type=notify) and start-stop-daemon
(--notify-await). Without $NOTIFY_SOCKET every call is a no-op. The variable is removed from
the environment once read, so children and tasks never talk to the service manager.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import MutableMapping

SEND_TIMEOUT = 0.5  # seconds


class Notifier:
    def __init__(self, environ: MutableMapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.pop("NOTIFY_SOCKET", "")
        self.raw_address = address  # as given: a re-exec'ing master hands it on
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = _watchdog_usec(environ.pop("WATCHDOG_USEC", ""), environ.pop("WATCHDOG_PID", ""))
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    @property
    def watchdog_interval(self) -> float | None:
        """How often to send WATCHDOG=1: half the service's WatchdogSec, or None."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, **fields: object) -> bool:
        """Send KEY=value lines (keys upper-cased); True if a datagram went out."""
        if not self.address:
            return False
        payload = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # a manager that stops reading must not freeze the master (heartbeat, reaping)
                self._sock.settimeout(SEND_TIMEOUT)
            self._sock.sendto(payload, self.address)
            return True
        except OSError:
            return False  # the manager went away; never let notification break the worker

    def ready(self, status: str = "") -> bool:
        return self.send(ready=1, **({"status": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.send(status=text)

    def reloading(self) -> bool:
        return self.send(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> bool:
        return self.send(stopping=1)

    def watchdog(self) -> bool:
        return self.send(watchdog=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(usec: str, pid: str) -> int:
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return 0
    return int(usec)
