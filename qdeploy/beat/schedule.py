"""Schedule maths for ``qdeploy beat``: crontab and interval schedules.

Pure logic, no I/O. Every schedule answers ``next_after(dt)``: the first fire
time strictly after the aware datetime ``dt``.

* ``crontab`` follows Celery's semantics. A time matches when *every* field
  matches: when both ``day_of_month`` and ``day_of_week`` are restricted, both
  must match (Celery ANDs them; classic Vixie cron ORs them, so ``0 0 13 * fri``
  here means "Friday the 13th", not "the 13th and every Friday").
  Crontabs are evaluated on the wall clock of their timezone (UTC by default).
* DST policy. A wall time skipped by a forward jump (02:30 on the spring-forward
  day) fires once, at the first valid instant after the gap (the jump itself,
  03:00 local), like Vixie cron; several skipped slots collapse into that one
  fire. A wall time that happens twice (01:30 on the fall-back day) fires
  once, on its first occurrence (``fold=0``).
* ``every`` is elapsed time, not wall clock: ``every('1h')`` after 01:30 EDT on
  the fall-back day is 01:30 EST.
* ``solar(event, lat, lon)`` (Celery's; ``qdeploy.beat.solar``, needs the ``solar`` extra)
  fires at sunrise, sunset, the twilights or solar noon; its events are UTC instants.
"""
from __future__ import annotations

import difflib
import os
from abc import ABC, abstractmethod
from bisect import bisect_left
from calendar import monthrange, weekday
from collections.abc import Mapping
from datetime import MAXYEAR, datetime, timedelta, tzinfo
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from qdeploy.beat.fields import (  # noqa: F401 - parse_field/format_interval are public here too
    DURATION,
    MAX_INTERVAL,
    MAX_MONTH_DAYS,
    SEQUENCES,
    UTC,
    FieldSpec,
    format_interval,
    parse_field,
    parse_interval,
)


def resolve_timezone(name: str | tzinfo | None = None, *, enable_utc: bool = True) -> tzinfo:
    """The zone crontabs run in: ``name``; else UTC when ``enable_utc``; else the host's."""
    if isinstance(name, tzinfo):
        return name
    if name is not None and not isinstance(name, str):
        raise ValueError(f"timezone must be a name like 'Asia/Shanghai', got {name!r}")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown timezone {name!r} "
                             f"(expected an IANA name like 'Asia/Shanghai')") from None
    if enable_utc:
        return UTC
    key = os.environ.get("TZ", "").lstrip(":")
    try:
        if key:
            return ZoneInfo(key)
        with open("/etc/localtime", "rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return UTC


# ---- schedules ----

class Due(NamedTuple):
    due: bool
    next_run: datetime  # the next fire if the entry runs now (due) or is left alone


class CatchUp(NamedTuple):
    run: bool  # send the task once, now
    slot: datetime | None  # the missed slot being run, or the first one skipped
    next_run: datetime


class Schedule(ABC):
    @abstractmethod
    def next_after(self, dt: datetime) -> datetime:
        """The first fire time strictly after the aware datetime ``dt``."""

    @abstractmethod
    def first_slot_from(self, last_run: datetime, start: datetime) -> datetime:
        """The earliest fire time after ``last_run`` that is at or after ``start``."""

    def is_due(self, last_run: datetime | None, now: datetime) -> Due:
        """Is a run owed at ``now``? An entry with no ``last_run`` is anchored at
        ``now`` (like Celery): it first fires at ``next_after(now)``."""
        if last_run is not None and _utc(self.next_after(last_run)) <= _utc(now):
            return Due(True, self.next_after(now))
        return Due(False, self.next_after(now if last_run is None else last_run))


def catch_up(schedule: Schedule, last_run: datetime | None, now: datetime,
             grace: timedelta | float | None = None) -> CatchUp:
    """What beat does at ``now`` about slots missed since ``last_run``.

    Missed slots never pile up: the entry runs at most once. It runs when its
    most recent missed slot is at most ``grace`` old (always when ``grace`` is
    None); otherwise the slots are skipped. Either way the following fire is
    ``next_after(now)``.
    """
    if last_run is None:
        return CatchUp(False, None, schedule.next_after(now))
    if _utc(first := schedule.next_after(last_run)) > _utc(now):
        return CatchUp(False, None, first)
    slot = first
    if grace is not None:
        window = grace if isinstance(grace, timedelta) else timedelta(seconds=grace)
        if window < timedelta(0):
            raise ValueError(f"misfire grace {grace!r} must not be negative")
        slot = schedule.first_slot_from(last_run, _utc(now) - window)
    run = _utc(slot) <= _utc(now)
    return CatchUp(run, slot if run else first, schedule.next_after(now))


class every(Schedule):
    """An interval schedule: fires ``interval`` of elapsed time after the last run."""

    def __init__(self, interval: timedelta | float | str) -> None:
        self.interval = parse_interval(interval)

    def next_after(self, dt: datetime) -> datetime:
        return (_utc(dt) + self.interval).astimezone(dt.tzinfo)

    def first_slot_from(self, last_run: datetime, start: datetime) -> datetime:
        # slots are last_run + k * interval, k >= 1
        k = max(1, -((_utc(last_run) - _utc(start)) // self.interval))
        return (_utc(last_run) + k * self.interval).astimezone(last_run.tzinfo)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, every) and other.interval == self.interval

    def __hash__(self) -> int:
        return hash(("every", self.interval))

    def __repr__(self) -> str:
        return f"every({format_interval(self.interval)!r})"


_CRON_ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
                 "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
                 "@hourly": "0 * * * *"}
_MINUTE = timedelta(minutes=1)


class crontab(Schedule):
    """Celery's ``crontab(minute, hour, day_of_week, day_of_month, month_of_year)``."""

    def __init__(self, minute: FieldSpec = "*", hour: FieldSpec = "*",
                 day_of_week: FieldSpec = "*", day_of_month: FieldSpec = "*",
                 month_of_year: FieldSpec = "*", tz: str | tzinfo | None = None) -> None:
        specs = {"minute": minute, "hour": hour, "day_of_month": day_of_month,
                 "month_of_year": month_of_year, "day_of_week": day_of_week}
        sets = {name: parse_field(name, spec) for name, spec in specs.items()}
        self.minute, self.hour = sets["minute"], sets["hour"]
        self.day_of_week, self.day_of_month = sets["day_of_week"], sets["day_of_month"]
        self.month_of_year = sets["month_of_year"]
        self.tz = resolve_timezone(tz)
        self._text = " ".join(_spec_text(spec) for spec in specs.values())  # cron order
        self._sorted = tuple(tuple(sorted(s)) for s in (
            self.month_of_year, self.day_of_month, self.hour, self.minute))
        if not any(d <= MAX_MONTH_DAYS[m - 1] for m in self.month_of_year
                   for d in self.day_of_month):
            raise ValueError(f"day_of_month {_spec_text(day_of_month)!r} never occurs in "
                             f"month_of_year {_spec_text(month_of_year)!r}")

    @classmethod
    def from_string(cls, expr: str, tz: str | tzinfo | None = None) -> crontab:
        """A 5-field cron line (minute hour day-of-month month day-of-week) or an @alias."""
        if not isinstance(expr, str):
            raise ValueError(f"cron expression must be a string, got {expr!r}")
        text = expr.strip()
        if text.startswith("@"):
            if text.lower() not in _CRON_ALIASES:
                raise ValueError(f"unknown cron alias {expr!r} "
                                 f"(expected one of {', '.join(_CRON_ALIASES)})")
            text = _CRON_ALIASES[text.lower()]
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(f"cron expression {expr!r} has {len(fields)} fields; expected 5: "
                             f"minute hour day-of-month month day-of-week")
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year, tz=tz)

    def next_after(self, dt: datetime) -> datetime:
        start = _utc(dt)
        wall = start.astimezone(self.tz).replace(tzinfo=None, fold=0, second=0, microsecond=0)
        wall += _MINUTE
        while True:
            wall = self._next_wall(wall)
            instant = _wall_to_utc(wall, self.tz)
            if instant > start:  # both UTC: never an intra-zone (fold-blind) comparison
                return instant.astimezone(self.tz)
            wall += _MINUTE  # only while dt is in the repeated hour of a fall-back

    def first_slot_from(self, last_run: datetime, start: datetime) -> datetime:
        # crontab slots do not depend on the anchor: the first slot >= start
        return self.next_after(max(_utc(last_run), _utc(start) - timedelta(microseconds=1)))

    def _next_wall(self, wall: datetime) -> datetime:
        """The earliest matching naive wall time >= ``wall`` (whole minutes).

        Jumps field by field (month, day, hour, minute) rather than scanning
        minutes; the Gregorian calendar repeats every 400 years, so a schedule
        that has not fired by then never will.
        """
        months, days, hours, minutes = self._sorted
        y, mo, d, h, mi = wall.year, wall.month, wall.day, wall.hour, wall.minute
        last_year = min(y + 400, MAXYEAR)
        while y <= last_year:
            month = _ceil(months, mo)
            if month is None:
                y, mo, d, h, mi = y + 1, 1, 1, 0, 0
                continue
            if month != mo:
                mo, d, h, mi = month, 1, 0, 0
            day = _ceil(days, d)
            if day is None or day > monthrange(y, mo)[1]:
                mo, d, h, mi = mo + 1, 1, 0, 0
                continue
            if day != d:
                d, h, mi = day, 0, 0
            if (weekday(y, mo, d) + 1) % 7 not in self.day_of_week:  # cron: 0 = Sunday
                d, h, mi = d + 1, 0, 0
                continue
            hour = _ceil(hours, h)
            if hour is None:
                d, h, mi = d + 1, 0, 0
                continue
            if hour != h:
                h, mi = hour, 0
            minute = _ceil(minutes, mi)
            if minute is None:
                h, mi = h + 1, 0
                continue
            return datetime(y, mo, d, h, minute)
        raise ValueError(f"{self!r} does not fire between {wall:%Y} and {last_year}")

    def _key(self) -> tuple[Any, ...]:
        return (self.minute, self.hour, self.day_of_week, self.day_of_month,
                self.month_of_year, getattr(self.tz, "key", None) or str(self.tz))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, crontab) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"crontab.from_string({self._text!r}, tz={str(self.tz)!r})"


def _spec_text(spec: FieldSpec) -> str:
    if isinstance(spec, str):
        return "".join(spec.split()) or "''"
    if isinstance(spec, SEQUENCES):
        items = sorted(spec, key=str) if isinstance(spec, (set, frozenset)) else spec
        return ",".join(_spec_text(item) for item in items)
    return str(spec)


def _ceil(values: tuple[int, ...], x: int) -> int | None:
    i = bisect_left(values, x)
    return values[i] if i < len(values) else None


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, got naive {dt.isoformat()}")
    return dt.astimezone(UTC)


def _wall_to_utc(wall: datetime, tz: tzinfo) -> datetime:
    """The UTC instant of a naive wall time in ``tz``, by the module's DST policy:
    the first occurrence of a repeated time, and for a skipped time the first
    valid instant after the gap (the moment the clock jumps)."""
    guess = wall.replace(tzinfo=tz).astimezone(UTC)
    if guess.astimezone(tz).replace(tzinfo=None) == wall:
        return guess
    # wall is in a gap: its two readings (fold 0 and 1, PEP 495) straddle the jump
    lo, hi = sorted(int(wall.replace(tzinfo=tz, fold=f).timestamp()) for f in (0, 1))
    while hi - lo > 1:  # invariant: local(lo) < wall < local(hi)
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) > wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


# ---- config values -> schedules ----

_CRON_KEYS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
_UNIT_KEYS = ("weeks", "days", "hours", "minutes", "seconds")
_SOLAR_KEYS = ("lat", "lon")
_TABLE_KEYS = ("every", "cron", "solar", "timezone", *_CRON_KEYS, *_UNIT_KEYS, *_SOLAR_KEYS)
_EXPECTED = ("an interval like '30s', '5m', '1h30m' or seconds, a 5-field cron expression "
             "like '*/15 * * * *', an @alias like '@daily', or a table")


def parse_schedule(value: Any, *, timezone: str | tzinfo | None = None) -> Schedule:
    """Turn a config value into a schedule; crontabs without their own
    ``timezone`` key are evaluated in ``timezone`` (UTC when None)."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, Mapping):
        return _from_table(value, timezone)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("@") or len(text.split()) > 1:
            return crontab.from_string(text, tz=timezone)
        if not DURATION.fullmatch(text.lower()):
            raise ValueError(f"bad schedule {value!r} (expected {_EXPECTED})")
        return every(text)
    if isinstance(value, (int, float, timedelta)) and not isinstance(value, bool):
        return every(value)
    raise ValueError(f"bad schedule {value!r} of type {type(value).__name__} "
                     f"(expected {_EXPECTED})")


def _from_table(table: Mapping[Any, Any], timezone: str | tzinfo | None) -> Schedule:
    for key in table:
        if key not in _TABLE_KEYS:
            hint = difflib.get_close_matches(str(key), _TABLE_KEYS, n=1)
            raise ValueError(f"unknown schedule key {key!r}" + (
                f" (did you mean {hint[0]!r}?)" if hint
                else f" (expected one of: {', '.join(_TABLE_KEYS)})"))
    kinds = [kind for kind, keys in (("every", ("every",)), ("cron", ("cron",)), ("solar", ("solar",)),
                                     ("crontab fields", _CRON_KEYS), ("interval units", _UNIT_KEYS))
             if any(k in table for k in keys)]
    if len(kinds) != 1:
        raise ValueError(f"a schedule table needs exactly one of 'every', 'cron', 'solar', crontab "
                         f"fields ({', '.join(_CRON_KEYS)}) or interval units ({', '.join(_UNIT_KEYS)}); "
                         f"got {' and '.join(kinds) or 'none'}")
    if kinds[0] == "solar":
        return _solar_table(table)
    if any(k in table for k in _SOLAR_KEYS):
        raise ValueError("'lat' and 'lon' apply to solar schedules only, e.g. "
                         "{ solar = \"sunset\", lat = 48.85, lon = 2.35 }")
    tz = table.get("timezone", timezone)
    if "timezone" in table and kinds[0] in ("every", "interval units"):
        raise ValueError("'timezone' applies to crontab schedules only; intervals are elapsed time")
    if kinds[0] == "every":
        return every(table["every"])
    if kinds[0] == "cron":
        return crontab.from_string(table["cron"], tz=tz)
    if kinds[0] == "crontab fields":
        return crontab(**{k: table[k] for k in _CRON_KEYS if k in table}, tz=tz)
    units = {k: table[k] for k in _UNIT_KEYS if k in table}
    for unit, amount in units.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise ValueError(f"schedule {unit} must be a number, got {amount!r}")
    try:
        total = timedelta(**units)
    except (OverflowError, ValueError):
        raise ValueError(f"interval {units} is not a usable duration") from None
    if total <= timedelta(0):
        raise ValueError(f"interval {units} must be positive")
    return every(total)


def _solar_table(table: Mapping[Any, Any]) -> Schedule:
    """``{ solar = "sunset", lat = 48.85, lon = 2.35 }``: the import waits for a solar entry."""
    from qdeploy.beat.solar import solar

    if "timezone" in table:
        raise ValueError("'timezone' does not apply to solar schedules: their events are instants")
    missing = [k for k in _SOLAR_KEYS if k not in table]
    if missing:
        raise ValueError(f"a solar schedule needs {' and '.join(repr(k) for k in missing)} "
                         f"(degrees, north and east positive), e.g. "
                         f"{{ solar = \"sunset\", lat = 48.85, lon = 2.35 }}")
    return solar(table["solar"], table["lat"], table["lon"])


def __getattr__(name: str) -> Any:
    """``from qdeploy.beat.schedule import solar`` (Celery: ``from celery.schedules import solar``),
    without importing the solar module (or astral) for everyone else."""
    if name == "solar":
        from qdeploy.beat.solar import solar
        return solar
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
