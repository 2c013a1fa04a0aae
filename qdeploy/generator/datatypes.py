"""Small typed parsers for config values, kept apart from the runtime.

Each parser takes a raw value (from TOML, an environment variable or a CLI flag, so often a
string) and returns the typed value, or raises ``ValueError`` with a message that says what was
expected. The message never repeats the value: the caller names key and value once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

Parser = Callable[[Any], Any]

NODE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
POSIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
IMPORT_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_.]*)?")
# A path that is safe to write literally into every rendered syntax: no whitespace, quotes,
# `$`, `%`, backslashes or control characters, and no `..` components.
SAFE_PATH = re.compile(r"/[A-Za-z0-9_.+@/-]*")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
SIZE = re.compile(r"(\d+)\s*([KMGT]?)(i?B)?", re.IGNORECASE)
SIZE_UNITS_KIB = {"": 1, "K": 1, "M": 1024, "G": 1024**2, "T": 1024**3}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(minimum: int = 0, maximum: int | None = None) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            value = int(value)
        if not _is_int(value):
            raise ValueError("expected an integer")
        if value < minimum or (maximum is not None and value > maximum):
            upper = "" if maximum is None else f" and <= {maximum}"
            raise ValueError(f"expected an integer >= {minimum}{upper}")
        return value

    return parse


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise ValueError("expected true or false")


def choice(*options: str) -> Parser:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def pattern(regex: re.Pattern[str], what: str) -> Parser:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or not regex.fullmatch(value):
            raise ValueError(f"expected {what}")
        return value

    return parse


def text(value: Any) -> str:
    """Any single-line string without control characters."""
    if not isinstance(value, str) or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("expected a single-line string")
    return value


def absolute_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("expected an absolute path")
    if not SAFE_PATH.fullmatch(value) or "/../" in value + "/" or "/./" in value + "/":
        raise ValueError("expected an absolute path of letters, digits and _ . + @ - / only")
    return value.rstrip("/") or "/"


def executable(value: Any) -> str:
    if value == "auto":
        return value
    return absolute_path(value)


def umask(value: Any) -> str:
    if _is_int(value):  # TOML has no octal strings by default; 0o027 arrives as 23
        value = format(value, "04o")
    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueError("expected an octal umask such as \"0027\"")
    return value.zfill(4)


def duration(value: Any) -> float:
    """Seconds as a number, or a string like "90", "1.5s", "5m", "1h30m"."""
    if _is_int(value) or isinstance(value, float):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        seconds = float(value)
    elif isinstance(value, str) and value and re.fullmatch(rf"(?:{DURATION_PART.pattern})+", value):
        seconds = sum(float(n) * DURATION_UNITS[u] for n, u in DURATION_PART.findall(value))
    else:
        raise ValueError("expected seconds or a duration such as \"30s\", \"5m\", \"1h30m\"")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError("expected a duration >= 0")
    return seconds


def size_kib(value: Any) -> int:
    """Memory size in KiB: an integer (KiB, as Celery's max_memory_per_child) or "512M", "2GiB"."""
    if _is_int(value):
        if value < 0:
            raise ValueError("expected a size >= 0")
        return value
    match = SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError("expected KiB as an integer or a size such as \"512M\", \"2GiB\"")
    number, unit, _ = match.groups()
    return int(number) * SIZE_UNITS_KIB[unit.upper()]


def string_list(item: Parser, what: str, allow_empty: bool = False) -> Parser:
    """A TOML array of strings, or a comma-separated string (as on the command line)."""

    def parse(value: Any) -> list[str]:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")] if value.strip() else []
        if not isinstance(value, list):
            raise ValueError(f"expected a list of {what}")
        if not value and not allow_empty:
            raise ValueError(f"expected at least one of {what}")
        try:
            parsed = [item(v) for v in value]
        except ValueError as exc:
            raise ValueError(f"expected a list of {what}: {exc}") from None
        if len(set(parsed)) != len(parsed):
            raise ValueError(f"expected a list of distinct {what}")
        return parsed

    return parse


def argv_list(value: Any) -> list[str]:
    """Extra command-line arguments: a list of single-line strings."""
    if not isinstance(value, list):
        raise ValueError("expected a list of strings, e.g. [\"--prefetch\", \"4\"]")
    try:
        return [text(v) for v in value]
    except ValueError:
        raise ValueError("expected a list of single-line strings") from None


def environment(value: Any) -> dict[str, str]:
    """A table of environment variables. Values may hold any text, even newlines: every
    rendered syntax quotes them. Only NUL is refused (no syntax can carry it)."""
    if not isinstance(value, dict):
        raise ValueError("expected a table of NAME = \"value\"")
    result = {}
    for name, val in value.items():
        if not ENV_NAME.fullmatch(name):
            raise ValueError(f"expected environment variable names like FOO_BAR, got {name!r}")
        if _is_int(val) or isinstance(val, float) or isinstance(val, bool):
            val = str(val).lower() if isinstance(val, bool) else str(val)
        if not isinstance(val, str) or "\0" in val:
            raise ValueError(f"expected a string value for {name}")
        result[name] = val
    return result


def nodes(value: Any) -> list[str]:
    """A node count (3 → nodes 1, 2, 3) or a list of node names."""
    if _is_int(value) or (isinstance(value, str) and value.strip().isdigit()):
        count = int(value)
        if not 1 <= count <= 1000:
            raise ValueError("expected a node count from 1 to 1000 or a list of node names")
        return [str(i) for i in range(1, count + 1)]
    names = string_list(pattern(NODE_NAME, "names of letters, digits and _ . -"), "node names")(value)
    return names


BROKER_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "sentinel")


def broker_url(value: Any) -> str:
    text(value)
    parts = urlsplit(value)
    if parts.scheme not in BROKER_SCHEMES:
        raise ValueError(f"expected a URL starting with one of {', '.join(s + '://' for s in BROKER_SCHEMES)}")
    if parts.scheme == "unix" and not parts.path.startswith("/"):
        raise ValueError("expected unix:///absolute/path.sock")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("expected a host, e.g. redis://127.0.0.1:6379/0")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("expected a port from 0 to 65535") from None
    return value
