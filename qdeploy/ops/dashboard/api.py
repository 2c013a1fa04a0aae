"""What the dashboard's pages read: JSON-able dicts built from Redis (and, for the workers page,
from the nodes themselves over the control channel). Nothing here changes anything.

Every value in these dicts may have come from anyone who can write to the Redis: the page
builds every cell with `textContent`, and this module only passes values through (cutting the
long ones). Arguments (`call`, a node's running tasks' args, a dead letter's body) leave the
server only with `--show-args`; results and exceptions always do.
"""

from __future__ import annotations

import json
import math
import threading
import time
from urllib.parse import parse_qs

from qdeploy.core.message import TASK_ID
from qdeploy.core.urls import redact
from qdeploy.ops import fleet, history
from qdeploy.ops.control import Control
from qdeploy.ops.history_search import MAX_LIMIT, MAX_OFFSET, Query, QueryError, referring, search

CACHE_SECONDS = 1.0  # several open pages cost Redis one snapshot per second, not one each
WORKERS_CACHE = 2.0
CONTROL_TIMEOUT = 0.8  # seconds the workers page waits for the nodes' replies
MAX_TEXT = 2000  # characters of one value sent to the page (results, exceptions, tracebacks: cut)
LIST_TEXT = 300
HOURS = (1, 3, 6, 24)
RELATED_MAX = 100  # children / group members linked from a task's page
GROUP_WINDOW = 300.0  # seconds before a task's start its group's other members are looked for
ROW_FIELDS = ("id", "name", "state", "queue", "node", "pid", "received", "started", "done", "runtime", "retries",
              "exc", "killed")
CONFIG_FIELDS = ("app", "pool", "max_tasks_per_child", "max_memory_per_child", "time_limit", "soft_time_limit",
                 "graceful_timeout", "events", "queues")
PARAMS = {"q", "node", "state", "since", "until", "args", "sort", "page", "per_page"}


class BadRequest(ValueError):
    """A request whose parameters cannot be answered: 400 and this one line."""


def cut(value, limit: int = MAX_TEXT):
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"... ({len(value) - limit} more characters)"
    return value


class Api:
    def __init__(self, app, broker, store: history.HistoryStore, *, show_args: bool, refresh: float,
                 schedule=None):
        self.app, self.broker, self.store = app, broker, store
        self.show_args, self.refresh, self.schedule = show_args, refresh, schedule
        self.control = Control(broker)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, object]] = {}

    def cached(self, key: str, seconds: float, build):
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and time.monotonic() - hit[0] < seconds:
                return hit[1]
        value = build()
        with self._lock:
            self._cache[key] = (time.monotonic(), value)
        return value

    # -- the pages ---------------------------------------------------------------------------
    def overview(self) -> dict:
        def build():
            return {"time": time.time(), "broker": redact(self.broker.url), "namespace": self.broker.ns,
                    "nodes": fleet.status(self.broker), "queues": fleet.queue_stats(self.broker),
                    "dead": fleet.dead_letter_count(self.broker), "history": self.store.count(),
                    "states": self.store.state_counts()}
        return self.cached("overview", CACHE_SECONDS, build)

    def tasks(self, raw_query: str) -> dict:
        query = parse_task_query(raw_query, self.show_args)
        try:
            page = search(self.store, query)
        except QueryError as exc:
            raise BadRequest(str(exc)) from None
        out = page.as_dict()
        out["rows"] = [self.row(r) for r in page.rows]
        out["page"] = query.offset // query.limit + 1
        out["per_page"] = query.limit
        return out

    def row(self, record: dict) -> dict:
        row = {k: cut(record.get(k), LIST_TEXT) for k in ROW_FIELDS if record.get(k) is not None}
        if self.show_args:
            row["call"] = cut(record.get("call") or record.get("call_text"), LIST_TEXT)
        return row

    def task(self, task_id: str) -> dict | None:
        if not TASK_ID.fullmatch(task_id):
            raise BadRequest("not a task id")
        record = self.store.get(task_id)
        result = self._result(task_id)
        if record is None and result is None:
            return None
        out: dict = {"id": task_id, "record": None, "result": None, "links": {}}
        if record is not None:
            shown = {k: cut(v) for k, v in record.items() if k not in ("call", "call_text")}
            if self.show_args:
                call = history.call_of(record)
                shown["args"], shown["kwargs"] = (call if call else (None, None))
                if call is None and record.get("call_text"):
                    shown["call_text"] = cut(record["call_text"])
            shown["retryable"] = record.get("state") == "FAILURE" and history.call_of(record) is not None
            out["record"] = shown
            out["timeline"] = timeline(record)
        if result is not None:
            out["result"] = {k: cut(result.get(k) if isinstance(result.get(k), (str, int, float, bool, type(None)))
                                    else json.dumps(result.get(k), default=str))
                             for k in ("state", "result", "exc_type", "exc", "traceback", "reason", "worker",
                                       "retries", "date_done", "parent_id") if k in result}
        out["links"] = self._links(task_id, record or {}, result or {})
        return out

    def _results_client(self):
        """(client, keys) of the result store: the app's backend, which may be another Redis."""
        results = getattr(self.app, "results", None)
        if results is not None:
            return results.client, results.keys
        return self.broker.client, self.broker.keys

    def _result(self, task_id: str) -> dict | None:
        client, keys = self._results_client()
        return _json_dict(client.get(keys.result(task_id)))

    def _links(self, task_id: str, record: dict, result: dict) -> dict:
        """Parent, root, group and children, each with its name and state when the history
        knows it (the ids came from Redis: only well-formed ids are linked). Children: the ids
        its result lists (tasks it sent) and the tasks of the history whose parent it is (a
        chain's next step, a chord's body); the group: its saved members, else the tasks of the
        history in the same group (looked for near this one's start: history_search.referring)."""
        ids: dict[str, list[str]] = {}
        for key in ("parent", "root"):
            value = record.get(key) or (result.get("parent_id") if key == "parent" else None)
            if isinstance(value, str) and TASK_ID.fullmatch(value) and value != task_id:
                ids[key] = [value]
        children = result.get("children")
        kids = [c for c in children[:100] if isinstance(c, str) and TASK_ID.fullmatch(c)] if isinstance(children, list) \
            else []
        started = record.get("started")
        if isinstance(started, float):
            for other in referring(self.store, task_id, started - 1.0, limit=RELATED_MAX):
                if other.get("parent") == task_id and other["id"] not in kids:
                    kids.append(other["id"])
        if kids:
            ids["children"] = kids[:RELATED_MAX]
        group = record.get("group")
        if isinstance(group, str) and TASK_ID.fullmatch(group):
            client, keys = self._results_client()
            members = _json_list(client.get(keys.group(group)))
            if not members and isinstance(started, float):
                members = [r["id"] for r in referring(self.store, group, started - GROUP_WINDOW, limit=RELATED_MAX)
                           if r.get("group") == group]
            ids["group"] = [m for m in members[:RELATED_MAX] if isinstance(m, str) and TASK_ID.fullmatch(m)]
            ids["group_id"] = [group]
        wanted = sorted({i for values in ids.values() for i in values})
        known = dict(zip(wanted, self.store.get_many(wanted), strict=True))
        return {kind: [{"id": i, "name": (known.get(i) or {}).get("name"), "state": (known.get(i) or {}).get("state")}
                       for i in values] for kind, values in ids.items()}

    def workers(self) -> dict:
        def build():
            stats = self.control.request("stats", timeout=CONTROL_TIMEOUT)
            active = self.control.request("active", timeout=CONTROL_TIMEOUT)
            failed = self._failed_by_node()
            rows = []
            for node in fleet.status(self.broker):
                owner = node["owner"]
                s = stats.replies.get(owner) or {}
                a = active.replies.get(owner) or {}
                info = s.get("result") if s.get("ok") and isinstance(s.get("result"), dict) else {}
                row = dict(node, failed=failed.get(owner, 0), answered=bool(s.get("ok")))
                row["child_exits"] = _counts(info.get("child_exits"))
                row["config"] = {k: info.get(k) for k in CONFIG_FIELDS if k in info}
                row["memory_kib"] = {"master": info.get("rss_kib"), "children": info.get("children_rss_kib")}
                row["health"] = info.get("health")
                row["busy"] = info.get("busy")
                children = (a.get("result") or {}).get("children") if a.get("ok") and isinstance(a.get("result"), dict) \
                    else None
                row["processes"], row["current"] = self._processes(children if isinstance(children, list) else [])
                rows.append(row)
            return {"time": time.time(), "nodes": rows, "no_reply": stats.missing}
        return self.cached("workers", WORKERS_CACHE, build)

    def _processes(self, children: list) -> tuple[list[dict], list[dict]]:
        """A node's children (what its master said over the control channel) and the tasks they
        run now, named from their messages (still in Redis: a running task is not acked yet)."""
        processes, running = [], []
        for c in children[:256]:
            if not isinstance(c, dict):
                continue
            tasks = [t for t in c.get("tasks") or [] if isinstance(t, str) and TASK_ID.fullmatch(t)][:16]
            processes.append({"pid": c.get("pid"), "slot": c.get("slot"), "state": cut(c.get("state"), 40),
                              "tasks_done": c.get("tasks_done"), "tasks": tasks})
            running += [(t, c.get("pid")) for t in tasks]
        bodies = fleet.bodies(self.broker, [t for t, _ in running]) if running else {}
        current = []
        for task_id, pid in running[:100]:
            try:
                env = json.loads(bodies.get(task_id) or b"{}")
            except ValueError:
                env = {}
            env = env if isinstance(env, dict) else {}
            row = {"id": task_id, "name": cut(env.get("task"), LIST_TEXT), "child": pid}
            if self.show_args:
                row["args"] = cut(json.dumps([env.get("args"), env.get("kwargs")], default=str), LIST_TEXT)
            current.append(row)
        return processes, current

    def _failed_by_node(self) -> dict[str, int]:
        combos = [c for c in self.store.combos() if c[0] == "FAILURE"]
        pipe = self.store.client.pipeline(transaction=False)
        for combo in combos:
            pipe.zcard(self.store.keys.combo("\t".join(combo)))
        out: dict[str, int] = {}
        for (_, node, _), n in zip(combos, pipe.execute() if combos else [], strict=True):
            out[node] = out.get(node, 0) + int(n)
        return out

    def queues(self, hours: float) -> dict:
        samples = self.store.queue_samples(time.time() - hours * 3600)
        return {"now": self.overview()["queues"], "samples": samples, "hours": hours}

    def charts(self, hours: float) -> dict:
        return chart_data(self.store, hours)

    def dead(self, limit: int = 100) -> dict:
        rows = fleet.dead_letter_list(self.broker, limit)
        return {"rows": [{k: cut(v, LIST_TEXT) for k, v in r.items()} for r in rows],
                "total": fleet.dead_letter_count(self.broker)}

    def audit(self) -> dict:
        return {"rows": [{k: cut(v, LIST_TEXT) for k, v in e.items()} for e in self.store.audit_log(100)]}

    def schedule_rows(self) -> dict:
        if self.schedule is None:
            return {"rows": [], "leader": None, "error": "no beat schedule here"}
        return self.schedule.rows(self.show_args)


def _json_dict(raw) -> dict | None:
    try:
        value = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _json_list(raw) -> list:
    try:
        value = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return []
    return value if isinstance(value, list) else []


def _counts(value) -> dict[str, int]:
    """A node's counters (they crossed the network: only name -> whole number is kept)."""
    if not isinstance(value, dict):
        return {}
    return {str(k)[:60]: v for k, v in list(value.items())[:50] if isinstance(v, int) and not isinstance(v, bool)}


def timeline(record: dict) -> list[dict]:
    """sent (or due) -> received -> started -> done of every delivery, oldest first."""
    events: list[dict] = []
    for attempt in record.get("attempts") or []:
        events.append({"what": "started", "time": attempt.get("started"), "node": attempt.get("node"),
                       "pid": attempt.get("pid")})
        if attempt.get("done"):
            events.append({"what": attempt.get("state", "").lower() or "ended", "time": attempt.get("done"),
                           "detail": cut(attempt.get("exc") or attempt.get("killed"), LIST_TEXT)})
    if record.get("sent"):
        events.insert(0, {"what": "sent", "time": record["sent"]})
    if record.get("eta"):
        events.append({"what": "due (ETA)", "time": record["eta"]})
    if record.get("received"):
        events.append({"what": "received", "time": record["received"], "node": record.get("node"),
                       "pid": record.get("pid")})
        events.append({"what": "started", "time": record.get("started"), "node": record.get("node"),
                       "pid": record.get("pid")})
    if record.get("done"):
        events.append({"what": str(record.get("state", "")).lower(), "time": record["done"],
                       "detail": cut(record.get("exc") or record.get("killed"), LIST_TEXT)})
    return sorted((e for e in events if isinstance(e.get("time"), float)), key=lambda e: e["time"])


def parse_task_query(raw: str, show_args: bool) -> Query:
    """The tasks list's query string -> a Query; BadRequest with one line for anything else."""
    if len(raw) > 2000:
        raise BadRequest("query string too long")
    try:
        params = parse_qs(raw, keep_blank_values=True, strict_parsing=False, max_num_fields=40)
    except ValueError:
        raise BadRequest("too many parameters") from None
    unknown = sorted(set(params) - PARAMS)
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0][:40]!r}")
    for name, values in params.items():
        if name != "state" and len(values) > 1:
            raise BadRequest(f"{name} given more than once")

    def one(name: str) -> str:
        return params.get(name, [""])[0].strip()

    def number(name: str, low: float, high: float) -> float | None:
        text = one(name)
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise BadRequest(f"{name}: expected a number, not {text[:40]!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise BadRequest(f"{name}: expected a number from {low:g} to {high:g}")
        return value

    per_page = number("per_page", 1, MAX_LIMIT)
    page = number("page", 1, MAX_OFFSET + 1)
    limit = int(per_page) if per_page else 50
    if per_page is not None and per_page != int(per_page) or page is not None and page != int(page):
        raise BadRequest("page and per_page are whole numbers")
    offset = (int(page) - 1) * limit if page else 0
    if offset > MAX_OFFSET:
        raise BadRequest(f"page: at most {MAX_OFFSET // limit + 1} pages of {limit} (narrow the search)")
    args = one("args")
    if args and not show_args:
        raise BadRequest("args: arguments are hidden (start the dashboard with --show-args)")
    states = tuple(s.strip().upper() for v in params.get("state", []) for s in v.split(",") if s.strip())
    try:
        return Query(q=one("q"), node=one("node"), states=states, since=number("since", 0, 1e11),
                     until=number("until", 0, 1e11), args=args, sort=one("sort") or "-started",
                     offset=offset, limit=limit)
    except QueryError as exc:
        raise BadRequest(str(exc)) from None


def parse_hours(raw: str) -> float:
    params = parse_qs(raw[:200], max_num_fields=5) if raw else {}
    text = (params.get("hours") or ["1"])[0]
    try:
        hours = float(text)
    except ValueError:
        raise BadRequest("hours: expected one of " + ", ".join(map(str, HOURS))) from None
    if hours not in HOURS:
        raise BadRequest("hours: expected one of " + ", ".join(map(str, HOURS)))
    return hours


def chart_data(store: history.HistoryStore, hours: float) -> dict:
    """Per-minute throughput and failures, and run-time percentiles per task name, over the
    last `hours` (from the writers' per-minute counters: they outlive the history's cap)."""
    from qdeploy.ops.metrics import BUCKETS

    last = int(time.time() // 60)
    first = last - int(hours * 60) + 1
    minutes = store.minutes(first, last)
    series = []
    buckets: dict[str, list[int]] = {}
    for minute in range(first, last + 1):
        row = minutes.get(minute, {})
        series.append({"t": minute * 60, "success": row.get("success", 0), "failure": row.get("failure", 0),
                       "retry": row.get("retry", 0)})
        for field, n in row.items():
            if field.startswith("b|"):
                name, _, index = field[2:].rpartition("|")
                if index.isdigit() and int(index) <= len(BUCKETS):
                    buckets.setdefault(name, [0] * (len(BUCKETS) + 1))[int(index)] += n
    runtimes = []
    for name, counts in sorted(buckets.items(), key=lambda kv: -sum(kv[1]))[:30]:
        runtimes.append({"name": name, "count": sum(counts),
                         **{f"p{int(q * 100)}": percentile(counts, q) for q in (0.5, 0.9, 0.99)}})
    return {"hours": hours, "series": series, "runtimes": runtimes}


def percentile(counts: list[int], q: float) -> float | None:
    """The q-quantile of run times counted in metrics.BUCKETS (bucket i: up to BUCKETS[i]),
    interpolated within its bucket; the last (open) bucket reports its lower bound."""
    from qdeploy.ops.metrics import BUCKETS

    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            low = BUCKETS[i - 1] if i > 0 else 0.0
            if i >= len(BUCKETS):
                return low
            return low + (BUCKETS[i] - low) * (rank - seen) / n
        seen += n
    return BUCKETS[-1]
