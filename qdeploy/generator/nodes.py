"""Node names, selectors and `%n %h %i %I` expansion (Celery `multi` vocabulary).

A selector picks nodes the way `celery multi` does for `-c:2 8` or `-Q:1-3 images`: a node
name, a 1-based index, an index range `1-3`, or a comma list of those.
"""

from __future__ import annotations

import re
import socket


_RANGE = re.compile(r"(\d+)-(\d+)")


def select(selector: str, names: list[str]) -> list[str]:
    """Return the nodes `selector` picks, in node order; ValueError if it picks none."""
    picked: set[str] = set()
    for part in str(selector).split(","):
        part = part.strip()
        if part in names:
            picked.add(part)
        elif part.isdigit() and 1 <= int(part) <= len(names):
            picked.add(names[int(part) - 1])
        elif (match := _RANGE.fullmatch(part)) and 1 <= int(match[1]) <= int(match[2]) <= len(names):
            picked.update(names[int(match[1]) - 1 : int(match[2])])
        else:
            raise ValueError(f"selector {part!r} matches no node (nodes: {' '.join(names)})")
    return [name for name in names if name in picked]


def expand(template: str, node: str, hostname: str | None = None, index: int | None = None) -> str:
    """Expand `%n` (node), `%h` (host name), `%i` (child index) and `%I` (`-index`, or nothing in
    the master), and `%%`. Unknown specifiers are left alone."""
    host = hostname or socket.gethostname()
    values = {
        "n": node,
        "h": host,
        "i": "" if index is None else str(index),
        "I": "" if index is None else f"-{index}",
        "%": "%",
    }
    return re.sub(r"%([nhiI%])", lambda m: values[m[1]], template)
