"""Small typed parsers for config values, kept apart from the runtime.

Each parser takes a raw value (from TOML, an environment variable or a CLI flag, so often a
string) and returns the typed value, or raises ``ValueError`` with a message that says what was
expected. The message never repeats the value: the caller names key and value once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from qdeploy.core.urls import BrokerURL, BrokerURLError, redact_text

Parser = Callable[[Any], Any]

# One limit for node names, used by the config, `qdeploy worker --node/-n` and `control -d`:
# systemd refuses unit names over 255 characters (`qworker@NAME.service`), and a node's name is
# part of every key, pid file and log file name that carries it.
NODE_NAME_MAX = 64
NODE_NAME = re.compile(rf"[A-Za-z0-9_.-]{{1,{NODE_NAME_MAX}}}")
NODE_NAME_RULE = f"1 to {NODE_NAME_MAX} letters, digits and _ . -"
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


# Directories never given to the services as workdir/log_dir/pid_dir/state_dir: tmpfiles.d would
# hand them to the service user (`d PATH 0750 qdeploy qdeploy` chowns an existing directory), the
# units would make them writable (`ReadWritePaths=`), logrotate would rotate `PATH/*.log`.
# SYSTEM_DIRS are refused themselves (their subdirectories are fine: /var/log/qdeploy, /srv/proj);
# SYSTEM_TREES with everything under them (the OS, the kernel, devices: nothing a service writes
# belongs there); a directory right under /home is somebody's home. docs/security.md explains each.
SYSTEM_DIRS = frozenset({
    "/", "/home", "/lost+found", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/snap",
    "/run", "/run/lock", "/run/log", "/run/shm", "/run/systemd", "/run/user",
    "/var", "/var/backups", "/var/cache", "/var/lib", "/var/local", "/var/lock", "/var/log", "/var/mail",
    "/var/opt", "/var/run", "/var/spool", "/var/tmp", "/var/cache/private", "/var/lib/private",
    "/var/log/journal", "/var/log/private", "/var/spool/cron",
})
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
                "/sys", "/usr")


def service_dir(value: Any) -> str:
    """A directory of the services' own (workdir, log_dir, pid_dir, state_dir): an absolute path
    that is not / or a system directory (SYSTEM_DIRS, SYSTEM_TREES, /home/USER)."""
    path = re.sub(r"/+", "/", absolute_path(value))
    parent, _, _ = path.rpartition("/")
    if path in SYSTEM_DIRS or parent == "/home" or any(path == t or path.startswith(t + "/") for t in SYSTEM_TREES):
        raise ValueError("expected a directory of the services' own such as /var/log/qdeploy, "
                         "not / or a system directory (see docs/security.md)")
    return path


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
        args = [text(v) for v in value]
    except ValueError:
        raise ValueError("expected a list of single-line strings") from None
    if any(redact_text(arg) != arg for arg in args):  # the unit files and supervisord's are 0644
        raise ValueError("expected no credentials (a URL's password belongs in `broker`, which only "
                         "0640 files hold)")
    return args


# What no environment value can carry: NUL (C strings), and what systemd refuses in an
# EnvironmentFile= (systemd.exec(5): Unicode noncharacters fail the whole file, so the unit would
# not start) or what is not text at all (lone surrogates).
ENV_UNREPRESENTABLE = re.compile(
    "[\0\ud800-\udfff\ufdd0-\ufdef" + "".join(f"{chr(p + 0xFFFE)}{chr(p + 0xFFFF)}" for p in range(0, 0x110000, 0x10000)) + "]"
)


def environment(value: Any) -> dict[str, str]:
    """A table of environment variables. Values may hold any text, even newlines: every
    rendered syntax quotes them. Only what no syntax can carry is refused (ENV_UNREPRESENTABLE)."""
    if not isinstance(value, dict):
        raise ValueError("expected a table of NAME = \"value\"")
    result = {}
    for name, val in value.items():
        if not ENV_NAME.fullmatch(name):
            raise ValueError(f"expected environment variable names like FOO_BAR, got {name!r}")
        if _is_int(val) or isinstance(val, float) or isinstance(val, bool):
            val = str(val).lower() if isinstance(val, bool) else str(val)
        if not isinstance(val, str):
            raise ValueError(f"expected a string value for {name}")
        if bad := ENV_UNREPRESENTABLE.search(val):
            raise ValueError(f"expected a value for {name} without U+{ord(bad[0]):04X} "
                             "(NUL, surrogates and Unicode noncharacters cannot be passed to a service)")
        result[name] = val
    return result


def nodes(value: Any) -> list[str]:
    """A node count (3 → nodes 1, 2, 3) or a list of node names."""
    if _is_int(value) or (isinstance(value, str) and value.strip().isdigit()):
        count = int(value)
        if not 1 <= count <= 1000:
            raise ValueError("expected a node count from 1 to 1000 or a list of node names")
        return [str(i) for i in range(1, count + 1)]
    names = string_list(pattern(NODE_NAME, f"names of {NODE_NAME_RULE}"), "node names")(value)
    return names


def broker_url(value: Any) -> str:
    """A broker URL, judged by the one parser every connection uses (`qdeploy.core.urls`)."""
    try:
        BrokerURL.parse(value)
    except BrokerURLError as exc:
        raise ValueError(exc.reason) from None
    return value
