"""Quoting filters, one per target syntax. Every value that reaches a rendered file goes through one.

- `sh`: POSIX shell word, always single-quoted (also what systemd's EnvironmentFile= parses the
  same way, so one `/etc/default` file serves init.d, supervisord's `sh -c` and systemd).
- `systemd_arg`: one argument of `ExecStart=`.
- `supervisor_arg`: one word of a supervisord `command=` (shlex-split after %-expansion).
- `toml_value`: a TOML value for the effective config file.
"""

from __future__ import annotations

import shlex
from typing import Any

_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def sh(value: Any) -> str:
    """Single-quote for `sh` and systemd EnvironmentFile=; sourcing yields exactly `value`."""
    return "'" + str(value).replace("'", "'\\''") + "'"


def sh_words(values: list[str]) -> str:
    return " ".join(sh(v) for v in values)


def sh_join(values: list[str]) -> str:
    """Shell words, quoted only where needed (for a script inside another quoted string)."""
    return shlex.join(str(v) for v in values)


def _c_escape(value: str) -> str:
    return "".join(_C_ESCAPES.get(c, f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c) for c in value)


def systemd_arg(value: Any, specifiers: bool = False) -> str:
    """Quote one ExecStart= argument: C escapes inside double quotes, `%`→`%%`, `$`→`$$`.

    With ``specifiers=True`` the value is a template the author wrote (e.g. ``%i``), kept as is."""
    value = str(value)
    if specifiers:
        return value
    if value == ";":  # a lone semicolon separates commands; systemd documents `\;` for a literal one
        return "\\;"
    return '"' + _c_escape(value).replace("%", "%%").replace("$", "$$") + '"'


def systemd_argv(values: list[str]) -> str:
    return " ".join(systemd_arg(v) for v in values)


def supervisor_arg(value: Any) -> str:
    """One word of supervisord's `command=`: shlex-quoted, then `%` doubled (supervisord expands
    `%(name)s` before splitting). Newlines can't live in an INI value, so they are refused."""
    value = str(value)
    if "\n" in value or "\r" in value:
        raise ValueError("a supervisord command cannot contain a newline")
    return shlex.quote(value).replace("%", "%%")


def toml_string(value: str) -> str:
    return '"' + "".join(
        _C_ESCAPES.get(c, f"\\u{ord(c):04x}" if ord(c) < 32 or ord(c) == 127 else c) for c in value
    ) + '"'


def toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "_-" for c in key) else toml_string(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


FILTERS = {
    "sh": sh,
    "sh_words": sh_words,
    "sh_join": sh_join,
    "systemd_arg": systemd_arg,
    "systemd_argv": systemd_argv,
    "supervisor_arg": supervisor_arg,
    "toml": toml_value,
    "toml_key": toml_key,
}
