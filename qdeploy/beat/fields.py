"""Parsers for schedule values, kept apart from the schedule maths (qdeploy.beat.schedule): crontab
fields (`*/15`, `mon-fri`, `1-7,15-21`, ints, lists) and intervals (`30s`, `1h30m`, seconds,
`timedelta`), and for solar schedules degrees and event names. Every error is a ValueError that
names the value and what was expected."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from datetime import UTC, timedelta
from typing import Any, NamedTuple

UTC = UTC
FieldSpec = int | str | list | tuple | set | frozenset | range
SEQUENCES = (list, tuple, set, frozenset, range)

# ---- parsers: cron fields, intervals, timezones (no schedule logic here) ----

_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july",
           "august", "september", "october", "november", "december")
_DAY_NAMES = {k: i for i, d in enumerate(_DAYS) for k in (d, d[:3])}
_MONTH_NAMES = {k: i for i, m in enumerate(_MONTHS, 1) for k in (m, m[:3])}
MAX_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class _Field(NamedTuple):
    name: str
    lo: int
    hi: int  # largest literal accepted
    star_hi: int  # largest value '*' expands to (day_of_week 7 is an alias of 0)
    names: Mapping[str, int]
    expected: str


_FIELDS = {f.name: f for f in (
    _Field("minute", 0, 59, 59, {}, "0-59"),
    _Field("hour", 0, 23, 23, {}, "0-23"),
    _Field("day_of_week", 0, 7, 6, _DAY_NAMES, "0-7 with 0 or 7 = Sunday, or sun..sat"),
    _Field("day_of_month", 1, 31, 31, {}, "1-31"),
    _Field("month_of_year", 1, 12, 12, _MONTH_NAMES, "1-12 or jan..dec"),
)}
_PART = re.compile(r"(?:(\*)|([a-z0-9]+)(?:-([a-z0-9]+))?)(?:/([0-9]+))?", re.ASCII)
_SHAPES = "N, A-B, */S, A-B/S, N/S or a comma list of them"


def parse_field(name: str, spec: FieldSpec) -> frozenset[int]:
    """Expand one crontab field (``'*/15'``, ``'mon-fri'``, ``5``, ``[0, 30]``)."""
    field = _FIELDS[name]
    if isinstance(spec, bool):
        raise ValueError(f"{name} must be a number or a cron field string, got {spec!r}")
    if isinstance(spec, int):
        values = [_check(field, spec, str(spec))]
    elif isinstance(spec, str):
        values = _parse_text(field, spec)
    elif isinstance(spec, SEQUENCES):
        if not spec:
            raise ValueError(f"{name} is an empty list (expected {field.expected})")
        values = [v for item in spec for v in parse_field(name, item)]
    else:
        raise ValueError(f"{name} must be a number or a cron field string, got {spec!r}")
    result = frozenset(v % 7 if name == "day_of_week" else v for v in values)
    if not result:
        raise ValueError(f"{name} {spec!r} matches nothing")
    return result


def _parse_text(field: _Field, text: str) -> list[int]:
    spec = text.strip().lower()
    if not spec:
        raise ValueError(f"{field.name} is empty (expected {field.expected} or '*')")
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise ValueError(f"{field.name} {text!r} has an empty list item")
        m = _PART.fullmatch(part)
        if m is None:
            raise ValueError(f"bad {field.name} {part!r} (expected {_SHAPES})")
        star, first, last, step = m.groups()
        if star:
            seq = list(range(field.lo, field.star_hi + 1))
        else:
            a = _value(field, first)
            b = _value(field, last) if last is not None else (field.star_hi if step else a)
            # a reversed range wraps around, as in Celery: 'fri-mon', hour '22-2'
            seq = (list(range(a, b + 1)) if a <= b
                   else list(range(a, field.star_hi + 1)) + list(range(field.lo, b + 1)))
        if step is not None:
            stride = int(step) if len(step) <= 9 else 10**9  # int() refuses huge digit strings
            if stride < 1:
                raise ValueError(f"{field.name} step in {part!r} must be at least 1")
            seq = seq[::stride]
        out.extend(seq)
    return out


def _value(field: _Field, token: str) -> int:
    if token.isdigit():  # (-1 stands for "far too many digits": out of range either way)
        return _check(field, int(token) if len(token) <= 9 else -1, token)
    if token in field.names:
        return field.names[token]
    raise ValueError(f"unknown {field.name} {token!r} (expected {field.expected})")


def _check(field: _Field, value: int, token: str) -> int:
    if not field.lo <= value <= field.hi:
        raise ValueError(f"{field.name} {token!r} is out of range {field.lo}-{field.hi}")
    return value


MAX_INTERVAL = timedelta(days=36525)  # longer is a config mistake (and overflows datetimes)
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
DURATION = re.compile(rf"(?:{_NUMBER}\s*[wdhms]\s*)+|{_NUMBER}", re.ASCII)
DURATION_PART = re.compile(rf"({_NUMBER})\s*([wdhms])", re.ASCII)


def parse_interval(value: Any) -> timedelta:
    """``'30s'``, ``'5m'``, ``'1h30m'``, ``'2d'``, ``90``, ``2.5`` or a timedelta -> timedelta."""
    if isinstance(value, timedelta):
        interval = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        interval = _seconds(value, value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if not DURATION.fullmatch(text):
            raise ValueError(f"bad interval {value!r} (expected seconds or a duration "
                             f"like '30s', '5m', '1h30m', '2d')")
        parts = DURATION_PART.findall(text) or [(text, "s")]
        units = [u for _, u in parts]
        if len(set(units)) != len(units):
            raise ValueError(f"bad interval {value!r}: a unit is repeated")
        try:
            interval = sum((_seconds(float(n) * _UNITS[u], value) for n, u in parts), timedelta())
        except OverflowError:
            raise ValueError(f"interval {value!r} is too large") from None
    else:
        raise ValueError(f"interval must be seconds, a duration string or a timedelta, "
                         f"got {type(value).__name__} {value!r}")
    if interval <= timedelta(0):
        raise ValueError(f"interval {value!r} must be positive")
    if interval > MAX_INTERVAL:
        raise ValueError(f"interval {value!r} is too large (at most 100 years)")
    return interval


def _seconds(amount: float, original: Any) -> timedelta:
    if isinstance(amount, float) and not math.isfinite(amount):
        raise ValueError(f"interval {original!r} is not a finite number of seconds")
    try:
        return timedelta(seconds=amount)
    except OverflowError:
        raise ValueError(f"interval {original!r} is too large") from None


def format_interval(interval: timedelta) -> str:
    """The inverse of :func:`parse_interval`: ``timedelta(seconds=5400)`` -> ``'1h30m'``."""
    if interval.microseconds:
        return f"{interval.total_seconds():.6f}".rstrip("0") + "s"
    rest, parts = int(interval.total_seconds()), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


# ---- solar schedules (qdeploy.beat.solar): degrees and event names ----

def parse_degrees(name: str, value: Any, limit: float) -> float:
    """A latitude (``limit`` 90) or longitude (180) in decimal degrees, north and east positive."""
    expected = f"a number of degrees from -{limit:g} to {limit:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {expected}, got {type(value).__name__} {_short(value)}")
    try:
        degrees = float(value)
    except OverflowError:  # an int too large for a float
        degrees = math.inf
    if not math.isfinite(degrees) or not -limit <= degrees <= limit:
        raise ValueError(f"{name} {_short(value)} is out of range (expected {expected})")
    return degrees


def parse_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices``, exactly; a near miss gets "did you mean"."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {type(value).__name__} "
                         f"{_short(value)}")
    if value in choices:
        return value
    hint = difflib.get_close_matches(value.strip().lower(), choices, n=1) if len(value) <= 100 else []
    raise ValueError(f"unknown {name} {_short(value)}" + (
        f" (did you mean {hint[0]!r}?)" if hint else f" (expected one of: {', '.join(choices)})"))


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
