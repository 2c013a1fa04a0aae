"""Defaults and exit codes that more than one module needs, each defined once.

Exit codes (every command and service): 0 ok, 1 failed (a task failed, a node did not answer),
2 bad input or config, 3 broker unreachable (or children keep failing to start, so systemd's
restart limits take over), 4 timed out waiting, 73 pid file held / node identity held by a live
master (sysexits' EX_CANTCREAT), 77 privilege problem (EX_NOPERM).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

BROKER_URL = "redis://127.0.0.1:6379/0"
BROKER_ENV = "QDEPLOY_BROKER"
GRACEFUL_TIMEOUT = 60.0  # seconds a warm shutdown waits for running tasks
STOP_MARGIN = 15  # seconds a service manager waits beyond the graceful timeout before it kills
START_TIMEOUT = 30  # seconds init.d, `--detach` and `multi start` wait for a node's readiness

EX_OK, EX_FAILED, EX_USAGE, EX_UNAVAILABLE, EX_TIMEOUT = 0, 1, 2, 3, 4
EX_CANTCREAT, EX_NOPERM = 73, 77


def broker_url(own: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """The broker a producer uses — the one rule, documented in docs/protocol.md: the app's own
    (`App(broker=…)`, or `app.configure(broker=…)`), else `$QDEPLOY_BROKER`, else BROKER_URL.
    The services (worker, beat, the ops commands) start from the same variable through their
    config, where a flag or qdeploy.toml's `broker` wins over the app's own."""
    return own or environ.get(BROKER_ENV) or BROKER_URL
