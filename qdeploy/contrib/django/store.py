"""What the admin pages read and change, in Redis: no table, no migration, no copy.

* Results: the list (search by task id or name, filter by task, state and date) comes from the
  task history the worker masters keep (qdeploy/ops/history.py: indexed, capped, never a scan);
  a task's page shows its result record from the result store (`AsyncResult`: state, result,
  traceback, dates). A task id typed into the search box is also looked up in the result store,
  so a result the history no longer holds is still found.
* Periodic tasks: beat's schedule (qdeploy/beat/store.py): the app's and qdeploy.toml's entries
  (read-only here, but they can be disabled and run) and the dynamic ones, which the admin adds,
  edits and deletes. Running beats reload on every change (beat's `rev` key), within
  beat.max_interval.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from qdeploy.beat.entry import EntryError, check_name, from_json
from qdeploy.beat.store import BeatStore
from qdeploy.core.message import TASK_ID
from qdeploy.ops.history import STATES, HistoryStore
from qdeploy.ops.history_search import Query, QueryError, search

DATES = {"today": "Today", "7d": "Past 7 days", "30d": "Past 30 days"}
PER_PAGE = 50


class StoreError(ValueError):
    """Something the admin cannot do as asked: shown as a message, one line."""


def get_app():
    """The project's qdeploy App: settings.QDEPLOY_APP (what -A takes), else the current app
    (the one proj/__init__.py imports, as Celery's Django layout does)."""
    from django.conf import settings

    from qdeploy.core.app import current_app

    path = getattr(settings, "QDEPLOY_APP", None)
    if path:
        from qdeploy.core.discovery import find_app

        return find_app(path)
    app = current_app()
    if app is None:
        raise StoreError("no qdeploy App: import it in your project's __init__.py (from .celery import app as "
                         "celery_app) or set QDEPLOY_APP = 'proj.celery:app' in settings")
    return app


def task_names(app) -> list[str]:
    """The app's tasks, its include=/imports/autodiscover_tasks() modules imported first (as the
    worker does; django-celery-beat's admin does the same for its task list)."""
    from qdeploy.core.app import AppImportError

    try:
        app.import_includes()
    except AppImportError as exc:
        raise StoreError(str(exc)) from None
    return sorted(n for n in app.tasks if not n.startswith("qdeploy."))


# -- results ---------------------------------------------------------------------------------


@dataclass
class ResultPage:
    rows: list[dict]
    total: int
    page: int
    pages: int
    names: list[str]
    error: str | None = None


def since_of(date: str, now: float | None = None) -> float | None:
    now = time.time() if now is None else now
    if date == "today":
        local = time.localtime(now)
        return time.mktime((local.tm_year, local.tm_mon, local.tm_mday, 0, 0, 0, 0, 0, -1))
    if date == "7d":
        return now - 7 * 86400
    if date == "30d":
        return now - 30 * 86400
    return None


def results(app, q: str = "", task: str = "", state: str = "", date: str = "", page: int = 1) -> ResultPage:
    history = HistoryStore(app.transport.client, app.namespace)
    names = sorted(history.names())
    page = max(1, min(page, 10_000 // PER_PAGE))
    term = q.strip() or task
    try:
        query = Query(q=term, states=(state,) if state else (), since=since_of(date),
                      offset=(page - 1) * PER_PAGE, limit=PER_PAGE)
    except QueryError as exc:
        return ResultPage([], 0, 1, 1, names, error=str(exc))
    found = search(history, query)
    rows = [_row(r) for r in found.rows if not task or r.get("name") == task]
    total = found.total if not task or not q.strip() else len(rows)
    if not rows and q.strip() and TASK_ID.fullmatch(q.strip()) and page == 1:
        meta = app.AsyncResult(q.strip()).meta  # a result the history does not hold (any more)
        if meta.get("state") not in (None, "PENDING") or meta.get("date_done"):
            rows, total = [{"id": q.strip(), "name": meta.get("task") or "", "state": meta.get("state"),
                            "started": None, "done": moment(meta.get("date_done")), "runtime": None,
                            "node": meta.get("worker")}], 1
    return ResultPage(rows, total, page, max(1, -(-total // PER_PAGE)), names)


def _row(record: dict) -> dict:
    row = {k: record.get(k) for k in ("id", "name", "state", "queue", "node", "runtime", "retries", "exc")}
    row["started"], row["done"] = moment(record.get("started")), moment(record.get("done"))
    return row


def moment(value):
    """A unix time or an ISO 8601 text as an aware datetime (the admin shows it in TIME_ZONE)."""
    from datetime import UTC, datetime

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def result(app, task_id: str) -> dict:
    if not isinstance(task_id, str) or not TASK_ID.fullmatch(task_id):
        raise StoreError(f"{task_id[:60]!r} is not a task id")
    meta = dict(app.AsyncResult(task_id).meta)
    record = HistoryStore(app.transport.client, app.namespace).get(task_id) or {}
    if meta.get("state") in (None, "PENDING") and not record:
        raise StoreError(f"no result and no history for task {task_id}")
    return {"id": task_id, "meta": meta, "history": record, "date_done": moment(meta.get("date_done")),
            "started": moment(record.get("started")), "runtime": record.get("runtime"),
            "call": record.get("call") or record.get("call_text") or "",
            "result_json": json.dumps(meta.get("result"), indent=2, ensure_ascii=False, default=str),
            "traceback": meta.get("traceback") or "", "name": meta.get("task") or record.get("name") or ""}


# -- periodic tasks --------------------------------------------------------------------------


class Schedule:
    """Beat's schedule as the admin shows and changes it."""

    def __init__(self, app):
        from qdeploy.beat.boot import BootError, static_entries
        from qdeploy.generator import config as config_mod

        self.app, self.store, self.error = app, BeatStore(app.transport), None
        try:
            self.static, self.tz = static_entries(app, config_mod.load(None, {}))
        except (config_mod.ConfigError, BootError) as exc:
            self.static, self.tz, self.error = {}, None, f"the app's and qdeploy.toml's entries are not shown: {exc}"

    def entries(self) -> tuple[dict, dict, set[str], list[dict]]:
        """(entries by name, stored specs of the dynamic ones, disabled names, broken rows)."""
        _, stored, disabled = self.store.load()
        entries, specs, broken = dict(self.static), {}, []
        for name, raw in stored.items():
            try:
                entries.setdefault(name, from_json(name, raw, tz=self.tz))
                specs[name] = json.loads(raw)
            except (EntryError, ValueError) as exc:
                broken.append({"name": name[:200], "error": str(exc)})
        return entries, specs, disabled, broken

    def rows(self) -> tuple[list[dict], list[dict], str | None]:
        entries, specs, disabled, broken = self.entries()
        anchors, runs = self.store.anchors(list(entries)), self.store.runs()
        rows = []
        for name, entry in sorted(entries.items()):
            anchor = anchors.get(name)
            try:
                nxt = entry.schedule.next_after(anchor) if anchor else None
            except (ValueError, OverflowError):
                nxt = None
            last = runs.get(name) if isinstance(runs.get(name), dict) else {}
            rows.append({"name": name, "task": entry.task, "schedule": entry.describe(), "kind": kind_of(entry.schedule),
                         "source": entry.source, "enabled": entry.enabled and name not in disabled,
                         "editable": name in specs and name not in self.static,
                         "args": json.dumps([entry.args, entry.kwargs], default=str)[:200],
                         "next_run": nxt, "last_run": moment(last.get("at")), "last_id": last.get("id")})
        return rows, broken, self.store.leader().get("holder")

    def spec(self, name: str) -> dict | None:
        _, specs, disabled, _ = self.entries()
        spec = specs.get(name)
        if spec is not None:
            spec = dict(spec, enabled=name not in disabled and spec.get("enabled", True))
        return spec

    def _entry(self, name: str):
        try:
            name = check_name(name)
        except EntryError as exc:
            raise StoreError(str(exc)) from None
        entries, _, _, _ = self.entries()
        if name not in entries:
            raise StoreError(f"no periodic task {name!r}")
        return name, entries[name]

    def save(self, name: str, spec_json: str, *, replace: bool, enabled: bool) -> None:
        if name in self.static:
            raise StoreError(f"periodic task {name!r} is defined in the {self.static[name].source}; choose another name")
        if not self.store.put(name, spec_json, replace=replace):
            raise StoreError(f"periodic task {name!r} exists already")
        if not enabled:
            self.store.set_enabled(name, False)

    def delete(self, name: str) -> None:
        name, entry = self._entry(name)
        if entry.source != "redis":
            raise StoreError(f"periodic task {name!r} is defined in the {entry.source}: disable it instead")
        self.store.remove(name)

    def set_enabled(self, name: str, enabled: bool) -> None:
        name, entry = self._entry(name)
        if enabled and not entry.enabled:
            raise StoreError(f"periodic task {name!r} has enabled = false in the {entry.source}")
        self.store.set_enabled(name, enabled)

    def run_now(self, name: str) -> str:
        """Send the task now, as beat would (a run of its own: the schedule is not touched)."""
        name, entry = self._entry(name)
        options = {k: v for k, v in entry.options.items() if k in ("queue", "expires", "time_limit", "soft_time_limit",
                                                                 "max_retries", "ignore_result")}
        return self.app.send_task(entry.task, list(entry.args), dict(entry.kwargs), **options).id


def kind_of(schedule) -> str:
    from qdeploy.beat.schedule import every
    from qdeploy.beat.solar import solar

    return "interval" if isinstance(schedule, every) else "solar" if isinstance(schedule, solar) else "crontab"


__all__ = ["DATES", "STATES", "Schedule", "StoreError", "get_app", "result", "results"]
