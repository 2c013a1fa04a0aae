"""Node names, selectors and `%n %h %d %p %i %I` expansion (Celery `multi` vocabulary).

A selector picks nodes the way `celery multi` does for `-c:2 8` or `-Q:1-3 images`: a node
name, a 1-based index, an index range `1-3`, or a comma list of those. A range applies to the
nodes that exist (`2-5` of three nodes picks 2 and 3), as in Celery; a part that picks no node
at all is an error.

Two expansions, with Celery's two meanings of the same letters:

* `expand` is the worker's (Celery's `node_format`): `%p` the full node name `name@host`, `%h`
  the host name, `%n` the node name, `%d` the host's domain, `%i`/`%I` the pool process index.
* `expand_multi` is `multi`'s (Celery's `build_expander`), applied once per node before the
  worker sees the value: `%h` and `%p` the full node name, `%n`/`%N` the node name, `%d` the
  host; `%i`, `%I` and `%%` are left for the worker, which expands them per process.
"""

from __future__ import annotations

import re
import socket

_RANGE = re.compile(r"([0-9]+)-([0-9]+)")


def select(selector: str, names: list[str]) -> list[str]:
    """Return the nodes `selector` picks, in node order; ValueError if a part picks none."""
    picked: set[str] = set()
    for part in str(selector).split(","):
        part = part.strip()
        if part in names:
            picked.add(part)
        elif part.isascii() and part.isdigit() and 1 <= int(part) <= len(names):
            picked.add(names[int(part) - 1])
        elif (match := _RANGE.fullmatch(part)) and 1 <= int(match[1]) <= int(match[2]) and int(match[1]) <= len(names):
            picked.update(names[int(match[1]) - 1 : min(int(match[2]), len(names))])
        elif match and not 1 <= int(match[1]) <= int(match[2]):
            raise ValueError(f"selector {part!r}: a range runs from a first node index (1 or more) up to a last one")
        else:
            raise ValueError(f"selector {part!r} matches no node (nodes: {' '.join(names)})")
    return [name for name in names if name in picked]


def expand(template: str, node: str, hostname: str | None = None, index: int | None = None) -> str:
    """The worker's expansion: `%n` (node), `%h` (host name), `%d` (the host's domain), `%p`
    (`node@host`), `%i` (child index) and `%I` (`-index`), both nothing in the master, and `%%`.
    Unknown specifiers are left alone."""
    host = hostname or socket.gethostname()
    values = {
        "n": node,
        "h": host,
        "d": host.partition(".")[2],
        "p": f"{node}@{host}",
        "i": "" if index is None else str(index),
        "I": "" if index is None else f"-{index}",
        "%": "%",
    }
    return re.sub(r"%([nhdpiI%])", lambda m: values[m[1]], template)


def expand_multi(template: str, node: str, hostname: str | None = None) -> str:
    """`multi`'s expansion of a per-node value (`--pidfile`, `--logfile`, `expand TEMPLATE`):
    `%h` and `%p` the full node name `node@host`, `%n`/`%N` the node name, `%d` the host. `%i`,
    `%I` (the pool process index: only a worker process has one) and `%%` stay as they are, for
    the worker to expand; so do unknown specifiers."""
    host = hostname or socket.gethostname()
    values = {"n": node, "N": node, "h": f"{node}@{host}", "p": f"{node}@{host}", "d": host}
    return re.sub(r"%(%|[nNhpd])", lambda m: values.get(m[1], m[0]), template)
