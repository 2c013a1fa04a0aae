"""`-n NAME@HOST` with Celery's host variables: `%h` the host name with its domain, `%n` the
host name alone, `%d` the domain, `%%` a literal %. (`%i`/`%I`, the process index, are for log
file names, not node names.) Without `@`, the text is the node's name (qdeploy's `-n 2`)."""

from __future__ import annotations

import re
import socket

_VAR = re.compile(r"%(.)")


def expand(text: str, hostname: str | None = None) -> str:
    full = hostname or socket.gethostname()
    short, _, domain = full.partition(".")
    values = {"h": full, "n": short, "d": domain, "%": "%"}

    def one(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise ValueError(f"unknown variable %{key} (expected %h, %n, %d or %%)")
        return values[key]

    return _VAR.sub(one, text)


def parse(text: str | None, hostname: str | None = None) -> tuple[str | None, str | None]:
    """(node name or None, host or None) of a -n value, its variables expanded."""
    if not text:
        return None, None
    if text.endswith("%"):
        raise ValueError("a lone % at the end (write %% for a %)")
    expanded = expand(text, hostname)
    name, sep, host = expanded.partition("@")
    if sep and not host:
        raise ValueError("nothing after @ (expected NAME@HOST, e.g. worker1@%h)")
    if host and not re.fullmatch(r"[A-Za-z0-9_.-]{1,253}", host):
        raise ValueError(f"host {host[:40]!r} must be letters, digits and _ . - (a host name)")
    return name or None, host or None
