"""The periodic tasks as the dashboard shows them and changes them: the app's and the config's
entries (read once, at start: they change with a restart) and the dynamic ones in Redis, with
beat's store (qdeploy/beat/store.py) for what is disabled, what ran last and who leads."""

from __future__ import annotations

import json

from qdeploy.beat.entry import EntryError, check_name, from_json
from qdeploy.beat.store import BeatStore


class ScheduleError(ValueError):
    pass


def for_app(app, config_file: str | None) -> Schedule:
    """The schedule of `app` with the config's entries and timezone (the config `qdeploy beat`
    reads: --config, else the usual places). A config or an entry beat would refuse does not
    stop the dashboard: its schedule page says why, and shows the dynamic entries."""
    from qdeploy.beat.boot import BootError, static_entries
    from qdeploy.generator import config as config_mod

    try:
        cfg = config_mod.load(config_file, {})
        static, tz = static_entries(app, cfg)
    except (config_mod.ConfigError, BootError) as exc:
        return Schedule(app, app.transport, {}, None, error=f"static entries not loaded: {exc}")
    return Schedule(app, app.transport, static, tz)


class Schedule:
    def __init__(self, app, broker, static: dict, tz, error: str | None = None):
        self.app, self.static, self.tz, self.error = app, dict(static), tz, error
        self.store = BeatStore(broker)

    def entries(self) -> tuple[dict, set[str], list[dict]]:
        _, stored, disabled = self.store.load()
        entries, broken = dict(self.static), []
        for name, spec in stored.items():
            try:
                entries.setdefault(name, from_json(name, spec, tz=self.tz))
            except EntryError as exc:
                broken.append({"name": name[:200], "source": "redis", "error": str(exc)})
        return entries, disabled, broken

    def rows(self, show_args: bool) -> dict:
        entries, disabled, rows = self.entries()
        anchors = self.store.anchors(list(entries))
        try:
            runs = self.store.runs()
        except (ValueError, RecursionError):  # a last-run record someone wrote by hand
            runs = {}
        for name, e in sorted(entries.items()):
            anchor = anchors.get(name)
            try:
                nxt = e.schedule.next_after(anchor) if anchor else None
            except (ValueError, OverflowError):
                nxt = None
            last = runs.get(name) if isinstance(runs.get(name), dict) else None
            row = {"name": name, "source": e.source, "task": e.task, "schedule": e.describe(),
                   "enabled": e.enabled and name not in disabled, "next_run": nxt.timestamp() if nxt else None,
                   "last_run": {k: last.get(k) for k in ("slot", "id", "at", "skipped") if k in last} if last else None}
            if show_args:
                row["args"] = json.dumps([e.args, e.kwargs], default=str)[:300]
            rows.append(row)
        return {"rows": rows, "leader": self.store.leader().get("holder"), "error": self.error}

    def _entry(self, name):
        try:
            name = check_name(name)
        except EntryError as exc:
            raise ScheduleError(str(exc)) from None
        entries, _, _ = self.entries()
        if name not in entries:
            raise ScheduleError(f"no schedule entry {name!r}")
        return name, entries[name]

    def set_enabled(self, name, enabled: bool) -> dict:
        name, entry = self._entry(name)
        if enabled and not entry.enabled:
            raise ScheduleError(f"schedule entry {name!r} has enabled = false in the {entry.source}")
        self.store.set_enabled(name, enabled)
        return {"name": name, "enabled": enabled}

    def run_now(self, name) -> dict:
        """Send the entry's task now, as beat would at a slot (a run of its own: beat's
        schedule and its anchors are not touched)."""
        name, entry = self._entry(name)
        options = {k: v for k, v in entry.options.items() if k in ("queue", "expires", "time_limit",
                                                                 "soft_time_limit", "max_retries")}
        result = self.app.send_task(entry.task, list(entry.args), dict(entry.kwargs), **options)
        return {"name": name, "task": entry.task, "id": result.id}
