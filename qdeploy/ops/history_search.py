"""Searching the task history (qdeploy/ops/history.py) from its indices, never by a full scan.

    Query(q="h.add", states=("FAILURE",), since=..., sort="-started", offset=0, limit=50)

`q` is a task id (exact: one HGET) or a part of a task name (case-insensitive); `node` a node
(`name@host`, or `name` for all its hosts); `states` any of history.STATES; `since`/`until`
unix times (of the start); `args` a part of the kept `[args, kwargs]` JSON (the dashboard allows
it with --show-args only). Sort: `-started` (newest first, the default), `started`, `-runtime`
(slowest first).

How: every record is in one "combo" sorted set (its state, node and name) besides the time
index, and the history keeps the list of combos. A search picks the combos its filters match
(names, nodes and states are few), counts them in the time window (ZCOUNT: the total is always
exact) and pages through them in sort order: one set with ZRANGE ... LIMIT, up to MERGE_MAX
merged here a chunk at a time, more than that by scanning the time index in Redis with the
same filter (history_match.lua, SCAN_CHUNK records per call). Argument text has no index: it is
matched in Redis too, over the sets the other filters leave, at most ARGS_BUDGET records per
search (`partial` says when it stopped there). A run-time sort reads and sorts up to MAX_GATHER
candidates itself; beyond, it pages through the SLOW_MAX slowest tasks of the whole history.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from dataclasses import dataclass, field
from importlib import resources

from qdeploy.core.message import TASK_ID
from qdeploy.ops.history import SLOW_MAX, STATES, HistoryStore, us

SORTS = ("-started", "started", "-runtime")
MAX_LIMIT = 200
MAX_OFFSET = 10_000
MAX_TEXT = 200  # characters of a search term
MERGE_MAX = 64  # combos merged here; more are scanned in Redis
CHUNK = 200  # ids fetched per set and round trip when merging
SCAN_CHUNK = 2000  # records history_match.lua looks at per call
SCAN_BUDGET = 200_000  # records a scanning search looks at, at most
ARGS_BUDGET = 50_000  # records an argument search looks at, at most
MAX_GATHER = 5_000  # candidates a run-time sort reads and sorts itself
COMBO_CACHE = 1.0  # seconds the list of combos is reused
RELATED_BUDGET = 20_000  # records a look for a task's children or group members reads, at most


class QueryError(ValueError):
    """A search that cannot be answered as asked: one line saying why."""


@dataclass(frozen=True)
class Query:
    q: str = ""
    node: str = ""
    states: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    args: str = ""
    sort: str = "-started"
    offset: int = 0
    limit: int = 50

    def __post_init__(self):
        for name in ("q", "node", "args"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
                raise QueryError(f"{name}: expected printable text of at most {MAX_TEXT} characters")
        if not isinstance(self.states, tuple) or len(self.states) > len(STATES):
            raise QueryError("state: too many states")
        bad = [s for s in self.states if s not in STATES]
        if bad:
            raise QueryError(f"state: {str(bad[0])[:40]!r} is not one of {', '.join(STATES)}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or not 0 <= value < 1e11):
                raise QueryError(f"{name}: expected a unix time")
        if self.sort not in SORTS:
            raise QueryError(f"sort: expected one of {', '.join(SORTS)}")
        if self.args and self.sort == "-runtime":
            raise QueryError("sort: an argument search is sorted by start time")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or not 0 <= self.offset <= MAX_OFFSET:
            raise QueryError(f"offset: expected an integer from 0 to {MAX_OFFSET}")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= MAX_LIMIT:
            raise QueryError(f"limit: expected an integer from 1 to {MAX_LIMIT}")

    @property
    def filtered(self) -> bool:
        return bool(self.q or self.node or self.states)


@dataclass
class Page:
    rows: list[dict]
    total: int
    exact: bool
    offset: int
    limit: int
    scanned: int = 0
    partial: bool = False
    took_ms: float = 0.0
    names: list[str] = field(default_factory=list)  # the task names a name term matched

    def as_dict(self) -> dict:
        return {"rows": self.rows, "total": self.total, "exact": self.exact, "offset": self.offset,
                "limit": self.limit, "scanned": self.scanned, "partial": self.partial,
                "took_ms": round(self.took_ms, 2), "names": self.names}


def search(store: HistoryStore, query: Query) -> Page:
    started = time.perf_counter()
    page = _search(store, query)
    page.took_ms = (time.perf_counter() - started) * 1000
    return page


def _search(store: HistoryStore, query: Query) -> Page:
    if query.q and TASK_ID.fullmatch(query.q):
        record = store.get(query.q)
        if record is not None:
            rows = [record] if _matches(record, query) and query.offset == 0 else []
            return Page(rows, len(rows), True, query.offset, query.limit)
    lo = us(query.since) if query.since is not None else "-inf"  # scores are whole microseconds
    hi = us(query.until) if query.until is not None else "+inf"
    if not query.filtered:
        if query.sort == "-runtime":
            return _slowest(store, query, None, lo, hi)
        if query.args:
            return _scan(store, query, store.keys.time, None, lo, hi, None)
        total = int(store.client.zcount(store.keys.time, lo, hi))
        ids = _range(store, store.keys.time, query.sort.startswith("-"), lo, hi, query.offset, query.limit)
        return Page(_rows(store, ids), total, True, query.offset, query.limit, scanned=len(ids))
    combos, names = _matching(store, query)
    if not combos:
        return Page([], 0, True, query.offset, query.limit, names=names)
    keys = [store.keys.combo("\t".join(c)) for c in combos]
    counts = _counts(store, keys, lo, hi)
    live = [(k, c, n) for k, c, n in zip(keys, combos, counts, strict=True) if n]
    total = sum(counts)
    filters = _filters(combos)
    if query.sort == "-runtime":
        if total <= MAX_GATHER:
            page = _gathered(store, query, [k for k, _, _ in live], lo, hi)
        else:
            page = _slowest(store, query, filters, lo, hi)
    elif query.args:
        driver = live[0][0] if len(live) == 1 else store.keys.time
        page = _scan(store, query, driver, filters if len(live) != 1 else None, lo, hi, None)
    elif not live:
        page = Page([], 0, True, query.offset, query.limit)
    elif len(live) == 1:
        ids = _range(store, live[0][0], query.sort.startswith("-"), lo, hi, query.offset, query.limit)
        page = Page(_rows(store, ids), total, True, query.offset, query.limit, scanned=len(ids))
    elif len(live) <= MERGE_MAX:
        ids = _merged(store, [k for k, _, _ in live], query.sort.startswith("-"), lo, hi, query.offset, query.limit)
        page = Page(_rows(store, ids), total, True, query.offset, query.limit, scanned=query.offset + len(ids))
    else:
        page = _scan(store, query, store.keys.time, filters, lo, hi, total)
    page.names = names
    return page


# -- which combos ------------------------------------------------------------------------------
_COMBOS: dict[int, tuple[float, list]] = {}


def combos_of(store: HistoryStore) -> list[tuple[str, str, str]]:
    """The history's combos, read at most once per COMBO_CACHE seconds per client."""
    now = time.monotonic()
    cached = _COMBOS.get(id(store.client))
    if cached is None or now - cached[0] > COMBO_CACHE or cached[1] is None:
        cached = _COMBOS[id(store.client)] = (now, store.combos())
    return cached[1]


def _matching(store: HistoryStore, query: Query) -> tuple[list[tuple[str, str, str]], list[str]]:
    needle = query.q.casefold()
    states = set(query.states)
    out, names = [], set()
    for combo in combos_of(store):
        state, node, name = combo
        if needle and needle not in name.casefold():
            continue
        if query.node and query.node != node and query.node != node.partition("@")[0]:
            continue
        names.add(name)
        if states and state not in states:
            continue
        out.append(combo)
    return out, sorted(names)


def _filters(combos: list[tuple[str, str, str]]) -> tuple[list[str], list[str], list[str]]:
    """The states, nodes and names of the combos: what history_match.lua keeps."""
    return (sorted({c[0] for c in combos}), sorted({c[1] for c in combos}), sorted({c[2] for c in combos}))


def _counts(store, keys: list[str], lo, hi) -> list[int]:
    pipe = store.client.pipeline(transaction=False)
    for key in keys:
        pipe.zcount(key, lo, hi)
    return [int(n) for n in pipe.execute()]


# -- paging ------------------------------------------------------------------------------------
def _range(store, key: str, descending: bool, lo, hi, offset: int, count: int) -> list[str]:
    if descending:
        raw = store.client.zrevrangebyscore(key, hi, lo, start=offset, num=count)
    else:
        raw = store.client.zrangebyscore(key, lo, hi, start=offset, num=count)
    return [r.decode("utf-8", "replace") for r in raw]


def _merged(store, keys: list[str], descending: bool, lo, hi, offset: int, limit: int) -> list[str]:
    """Ids offset..offset+limit of several sorted sets in one score order, fetched CHUNK (or the
    page, when smaller) at a time per set."""
    wanted = offset + limit
    chunk = min(CHUNK, wanted)
    positions = dict.fromkeys(keys, 0)
    buffers: dict[str, list] = {}
    done: set[str] = set()

    def refill(which: list[str]) -> None:
        pipe = store.client.pipeline(transaction=False)
        for key in which:
            if descending:
                pipe.zrevrangebyscore(key, hi, lo, start=positions[key], num=chunk, withscores=True)
            else:
                pipe.zrangebyscore(key, lo, hi, start=positions[key], num=chunk, withscores=True)
        for key, got in zip(which, pipe.execute(), strict=True):
            positions[key] += len(got)
            buffers[key] = [(-s if descending else s, m.decode("utf-8", "replace")) for m, s in reversed(got)]
            if len(got) < chunk:
                done.add(key)

    refill(keys)
    heap = [(*buffers[k].pop(), k) for k in keys if buffers[k]]
    heapq.heapify(heap)
    out: list[str] = []
    while heap and len(out) < wanted:
        _, member, key = heapq.heappop(heap)
        out.append(member)
        if not buffers[key] and key not in done:
            refill([key])
        if buffers[key]:
            heapq.heappush(heap, (*buffers[key].pop(), key))
    return out[offset:]


def _scan(store, query: Query, driver: str, filters, lo, hi, total: int | None) -> Page:
    """Page through `driver` in Redis (history_match.lua), keeping what passes `filters`
    and the argument text; `total` when the counts already know it."""
    descending = query.sort != "started"
    needle = as_stored(query.args)
    budget = ARGS_BUDGET if needle else SCAN_BUDGET
    states, nodes, names = filters or ([], [], [])
    # the time window is the driver's scores for the time index and for combo sets alike
    args_tail = ["", "", len(states), *states, len(nodes), *nodes, len(names), *names]
    wanted, scanned, exhausted = query.offset + query.limit, 0, False
    matched: list[str] = []
    script = _script(store)
    while len(matched) < wanted and scanned < budget:
        reply = script(keys=[store.keys.rec, driver],
                       args=[hi, lo, scanned, SCAN_CHUNK, "1" if descending else "0", needle, *args_tail])
        looked, hits = int(reply[0]), [m.decode("utf-8", "replace") for m in reply[1:]]
        scanned += looked
        matched += hits
        if looked < SCAN_CHUNK:
            exhausted = True
            break
    ids = matched[query.offset:wanted]
    rows = _rows(store, ids)
    if needle:  # the text matched the whole record: keep the rows whose arguments hold it
        rows = [r for r in rows if needle in _call_text(r)]
    if total is not None and not needle:
        return Page(rows, total, True, query.offset, query.limit, scanned=scanned)
    partial = not exhausted and len(matched) < wanted
    return Page(rows, len(matched), exhausted, query.offset, query.limit, scanned=scanned, partial=partial)


def _gathered(store, query: Query, keys: list[str], lo, hi) -> Page:
    """Every candidate (at most MAX_GATHER), sorted by run time here; finished tasks only."""
    pipe = store.client.pipeline(transaction=False)
    for key in keys:
        pipe.zrangebyscore(key, lo, hi)
    ids = list(dict.fromkeys(m.decode("utf-8", "replace") for got in pipe.execute() for m in got))
    pairs = [(r["runtime"], r["id"]) for r in _rows(store, ids) if isinstance(r.get("runtime"), float)]
    pairs.sort(reverse=True)
    chosen = [m for _, m in pairs[query.offset:query.offset + query.limit]]
    return Page(_rows(store, chosen), len(pairs), True, query.offset, query.limit, scanned=len(ids))


def _slowest(store, query: Query, filters, lo, hi) -> Page:
    """Slowest first, from the SLOW_MAX slowest tasks of the whole history (`exact` False when
    filters or a window leave the answer to those)."""
    if filters is None and lo == "-inf" and hi == "+inf":
        total = int(store.client.zcard(store.keys.slow))
        ids = _range(store, store.keys.slow, True, "-inf", "+inf", query.offset, query.limit)
        return Page(_rows(store, ids), total, True, query.offset, query.limit, scanned=len(ids))
    states, nodes, names = filters or ([], [], [])
    since = "" if lo == "-inf" else str(lo)
    until = "" if hi == "+inf" else str(hi)
    wanted, scanned = query.offset + query.limit, 0
    matched: list[str] = []
    script = _script(store)
    while len(matched) < wanted and scanned < SLOW_MAX:
        reply = script(keys=[store.keys.rec, store.keys.slow],
                       args=["+inf", "-inf", scanned, SCAN_CHUNK, "1", "", since, until, len(states), *states,
                             len(nodes), *nodes, len(names), *names])
        looked = int(reply[0])
        scanned += looked
        matched += [m.decode("utf-8", "replace") for m in reply[1:]]
        if looked < SCAN_CHUNK:
            break
    ids = matched[query.offset:wanted]
    return Page(_rows(store, ids), len(matched), False, query.offset, query.limit, scanned=scanned)


_SCRIPTS: dict[int, object] = {}


def _script(store):
    script = _SCRIPTS.get(id(store.client))
    if script is None:
        source = resources.files("qdeploy.ops").joinpath("history_match.lua").read_text()
        script = _SCRIPTS[id(store.client)] = store.client.register_script(source)
    return script


def referring(store: HistoryStore, task_id: str, since: float, limit: int = 100,
              budget: int = RELATED_BUDGET) -> list[dict]:
    """Records that name `task_id` as their parent, root or group, among the `budget` records
    that started first from `since` on (a chain's next step, a chord's body and a group's
    members start near each other: the task detail page's links). In Redis, as a search's
    scan: history_match.lua with the id, between tabs, as the text."""
    script = _script(store)
    needle = f"\t{task_id}\t"
    found: list[str] = []
    scanned = 0
    while len(found) < limit and scanned < budget:
        reply = script(keys=[store.keys.rec, store.keys.time],
                       args=["+inf", us(since), scanned, SCAN_CHUNK, "0", needle, "", "", 0, 0, 0])
        looked = int(reply[0])
        scanned += looked
        found += [m.decode("utf-8", "replace") for m in reply[1:]]
        if looked < SCAN_CHUNK:
            break
    rows = _rows(store, [i for i in dict.fromkeys(found) if i != task_id][:limit])
    return [r for r in rows if task_id in (r.get("parent"), r.get("root"), r.get("group"))]


def as_stored(text: str) -> str:
    """A search text as it appears in the stored JSON of the arguments (which is ASCII: other
    characters are \\uXXXX escapes there)."""
    return text if text.isascii() else "".join(c if ord(c) < 128 else json.dumps(c)[1:-1] for c in text)


def _rows(store, ids: list[str]) -> list[dict]:
    return [r for r in store.get_many(ids) if r is not None]


def _call_text(record: dict) -> str:
    call = record.get("call")
    return call if isinstance(call, str) else str(record.get("call_text") or "")


def _matches(record: dict, query: Query) -> bool:
    if query.states and record.get("state") not in query.states:
        return False
    node = str(record.get("node") or "")
    if query.node and query.node not in (node, node.partition("@")[0]):
        return False
    started = record.get("started")
    if isinstance(started, (int, float)):
        if query.since is not None and started < query.since:
            return False
        if query.until is not None and started > query.until:
            return False
    if query.args and as_stored(query.args) not in _call_text(record):
        return False
    return True
