"""Beat schedule entries: validate them wherever they come from, and serialise dynamic ones.

An entry comes from one of three places, and is validated the same way:

* the app: ``app.conf.beat_schedule = {"name": {"task": ..., "schedule": ...}}`` or
  ``app.add_periodic_task(...)`` / ``@app.periodic_task(...)``;
* the config file: ``[beat.schedule.NAME]`` tables (``task``, ``schedule``, ``args``...);
* Redis (``qdeploy schedule add``), stored as JSON, editable while beat runs.

Every problem is an :class:`EntryError` whose message is one line naming the entry and saying
what was expected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta, tzinfo
from typing import Any

from qdeploy.beat.schedule import Schedule, crontab, every, format_interval, parse_interval, parse_schedule
from qdeploy.beat.solar import solar
from qdeploy.defaults import EX_USAGE
from qdeploy.generator.datatypes import QUEUE_NAME

MAX_NAME = 200
MAX_SPEC = 64 * 1024  # a dynamic entry's JSON (args and kwargs included)
ENTRY_KEYS = ("task", "schedule", "args", "kwargs", "options", "misfire_grace", "enabled")
OPTION_KEYS = ("queue", "expires", "time_limit", "soft_time_limit", "ignore_result", "max_retries")
SOURCES = ("app", "config", "redis")


class EntryError(ValueError):
    """A bad schedule entry; one line naming it. Exit code 2 on the command line."""

    exit_code = EX_USAGE


@dataclass(frozen=True)
class Entry:
    name: str
    task: str
    schedule: Schedule
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # validated OPTION_KEYS
    misfire_grace: float | None = None  # None: the beat-wide setting
    enabled: bool = True
    source: str = "app"

    def describe(self) -> str:
        return describe(self.schedule)


def describe(schedule: Schedule) -> str:
    """A schedule as the text `qdeploy schedule add` accepts: '5m', a cron line (+ zone), or a
    solar event and its place ('sunset at 48.85, 2.35': --solar sunset --lat 48.85 --lon 2.35)."""
    if isinstance(schedule, solar):
        return str(schedule)
    if isinstance(schedule, every):
        return format_interval(schedule.interval)
    if isinstance(schedule, crontab):
        zone = getattr(schedule.tz, "key", None) or str(schedule.tz)
        return f"{schedule} ({zone})"
    return repr(schedule)


def check_name(name: Any) -> str:
    """Entry names are shown in logs and tables: printable, one line, at most 200 characters."""
    if not isinstance(name, str) or not name.strip():
        raise EntryError(f"schedule entry name {_show(name)} must be a non-empty string")
    if len(name) > MAX_NAME:
        raise EntryError(f"schedule entry name {_show(name)} is too long ({len(name)} characters; "
                         f"at most {MAX_NAME})")
    if not name.isprintable() or name != name.strip():
        raise EntryError(f"schedule entry name {_show(name)} must be printable text on one line, "
                         f"without leading or trailing spaces")
    return name


def parse_entry(name: Any, raw: Any, *, tz: tzinfo | str | None, source: str) -> Entry:
    """Validate one entry (a mapping like Celery's beat_schedule values) -> Entry."""
    name = check_name(name)
    where = f"{source} schedule entry {name!r}"
    if not isinstance(raw, Mapping):
        raise EntryError(f"{where}: expected a table with 'task' and 'schedule', got {_show(raw)}")
    unknown = [k for k in raw if k not in ENTRY_KEYS]
    if unknown:
        raise EntryError(f"{where}: unknown key {_show(unknown[0])} (expected: {', '.join(ENTRY_KEYS)})")
    for key in ("task", "schedule"):
        if key not in raw:
            raise EntryError(f"{where}: missing '{key}'")
    task = raw["task"]
    if not isinstance(task, str) or not task or len(task) > MAX_NAME or not task.isprintable():
        raise EntryError(f"{where}: task must be a task name like 'proj.tasks.add', got {_show(task)}")
    try:
        schedule = parse_schedule(raw["schedule"], timezone=tz)
    except ValueError as exc:
        raise EntryError(f"{where}: schedule: {exc}") from None
    args = raw.get("args", [])
    if not isinstance(args, (list, tuple)):
        raise EntryError(f"{where}: args must be a list, got {_show(args)}")
    kwargs = raw.get("kwargs", {})
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise EntryError(f"{where}: kwargs must be a table with string keys, got {_show(kwargs)}")
    try:
        json.dumps([list(args), dict(kwargs)], allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EntryError(f"{where}: args and kwargs must be JSON-serialisable ({exc})") from None
    grace = raw.get("misfire_grace")
    if grace is not None:
        try:
            grace = parse_interval(grace).total_seconds()
        except ValueError as exc:
            raise EntryError(f"{where}: misfire_grace: {exc}") from None
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise EntryError(f"{where}: enabled must be true or false, got {_show(enabled)}")
    return Entry(name, task, schedule, list(args), dict(kwargs), _options(where, raw.get("options", {})),
                 grace, enabled, source)


def _options(where: str, options: Any) -> dict:
    if not isinstance(options, Mapping):
        raise EntryError(f"{where}: options must be a table, got {_show(options)}")
    out = {}
    for key, value in options.items():
        if key not in OPTION_KEYS:
            raise EntryError(f"{where}: unknown option {_show(key)} (expected: {', '.join(OPTION_KEYS)})")
        if key == "queue":
            if not isinstance(value, str) or not QUEUE_NAME.fullmatch(value) or len(value) > MAX_NAME:
                raise EntryError(f"{where}: queue must be a queue name of letters, digits and _ . : -, "
                                 f"got {_show(value)}")
        elif key == "ignore_result":
            if not isinstance(value, bool):
                raise EntryError(f"{where}: ignore_result must be true or false, got {_show(value)}")
        elif key == "max_retries":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise EntryError(f"{where}: max_retries must be an integer >= 0, got {_show(value)}")
        else:  # expires, time limits: seconds
            if isinstance(value, timedelta):
                value = value.total_seconds()
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise EntryError(f"{where}: {key} must be a positive number of seconds, got {_show(value)}")
            value = float(value)
        out[key] = value
    return out


def load_entries(raw: Any, *, tz: tzinfo | str | None, source: str) -> dict[str, Entry]:
    """A whole beat_schedule mapping -> {name: Entry}; the first bad entry raises."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise EntryError(f"{source} beat schedule: expected a table of entries, got {_show(raw)}")
    return {name: parse_entry(name, spec, tz=tz, source=source) for name, spec in raw.items()}


# -- dynamic entries (Redis) ------------------------------------------------------------------

def dynamic_spec(name: str, task: str, schedule: Any, *, args=(), kwargs=None, queue: str | None = None,
                 expires: float | None = None, enabled: bool = True, tz: tzinfo | str | None = None) -> str:
    """Validate what `qdeploy schedule add` was given and return the JSON stored in Redis."""
    spec: dict[str, Any] = {"task": task, "schedule": schedule, "args": list(args),
                            "kwargs": dict(kwargs or {}), "enabled": enabled}
    options = {k: v for k, v in (("queue", queue), ("expires", expires)) if v is not None}
    if options:
        spec["options"] = options
    parse_entry(name, spec, tz=tz, source="redis")
    text = json.dumps(spec, separators=(",", ":"), ensure_ascii=False)
    if len(text) > MAX_SPEC:
        raise EntryError(f"redis schedule entry {name!r}: too large ({len(text)} bytes of JSON; "
                         f"at most {MAX_SPEC})")
    return text


def from_json(name: Any, text: bytes | str, *, tz: tzinfo | str | None) -> Entry:
    """A stored dynamic entry -> Entry (EntryError if someone stored garbage)."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if len(text) > MAX_SPEC:
        raise EntryError(f"redis schedule entry {_show(name)}: stored JSON is too large")
    try:
        raw = json.loads(text)
    except ValueError:
        raise EntryError(f"redis schedule entry {_show(name)}: stored value is not JSON") from None
    return parse_entry(name, raw, tz=tz, source="redis")


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
