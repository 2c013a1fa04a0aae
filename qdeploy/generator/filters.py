"""Quoting filters, one per target syntax. Every value that reaches a rendered file goes through one.

- `sh`: POSIX shell word, always single-quoted (init.d scripts, `sh -c` scripts).
- `env_value`: a value of the `/etc/default` files, which `sh` sources (init.d, supervisord's
  `sh -c '. FILE; exec ...'`) and systemd reads (`EnvironmentFile=`). The two parsers disagree on
  single quotes (systemd has no `'\\''`), so values are double-quoted with the four escapes both
  honour there.
- `systemd_arg`: one argument of `ExecStart=`.
- `supervisor_arg`: one word of a supervisord `command=` (shlex-split after %-expansion).
- `toml_value`: a TOML value for the effective config file.
"""

from __future__ import annotations

import shlex
from typing import Any

from qdeploy.generator.datatypes import ENV_UNREPRESENTABLE

_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def sh(value: Any) -> str:
    """Single-quote for `sh`: the shell reads back exactly `value` (systemd does not: `env_value`)."""
    return "'" + str(value).replace("'", "'\\''") + "'"


# Inside double quotes, POSIX sh and systemd's EnvironmentFile= parser (systemd.exec(5), "the
# same escapes as the shell": env-file.c) both turn exactly \\ \" \$ \` into the character and keep
# every other character literally: a backslash before anything else, newlines, `#`, `'`, spaces.
_ENV_ESCAPES = {"\\": "\\\\", '"': '\\"', "$": "\\$", "`": "\\`"}


def env_value(value: Any) -> str:
    """Double-quote a value for a file read both by `sh` (`.`) and by systemd `EnvironmentFile=`:
    each yields exactly `value`, any text but NUL (which no environment can hold)."""
    value = str(value)
    if bad := ENV_UNREPRESENTABLE.search(value):
        raise ValueError(f"an environment value cannot contain U+{ord(bad[0]):04X}")
    return '"' + "".join(_ENV_ESCAPES.get(c, c) for c in value) + '"'


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
    """One word of supervisord's `command=`, quoted for each layer supervisord reads it through:

    1. its INI parser ends a value at `;` or `#` after whitespace, even inside quotes: such a
       `;`/`#` gets an empty `''` in front, so it follows a quote instead (`'a '';b'`);
    2. it replaces every `%(here)s` with the file's directory before anything else: a `%` is
       never written right before `(` (`'%%''(here)s'`);
    3. it expands `%(name)s`: `%` is doubled;
    4. it splits the command with shlex: one single-quoted word, `'` as `'"'"'`.
    Newlines can't live in an INI value, so they are refused."""
    value = str(value)
    if "\n" in value or "\r" in value:
        raise ValueError("a supervisord command cannot contain a newline")
    out, prev = [], ""
    for c in value:
        piece = {"'": "'\"'\"'", "%": "%%"}.get(c, c)
        if (c in ";#" and prev.isspace()) or (c == "(" and prev == "%"):
            piece = "''" + piece
        out.append(piece)
        prev = c
    return "'" + "".join(out) + "'"


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
    "env_value": env_value,
    "sh_join": sh_join,
    "systemd_arg": systemd_arg,
    "systemd_argv": systemd_argv,
    "supervisor_arg": supervisor_arg,
    "toml": toml_value,
    "toml_key": toml_key,
}
