"""The task history: every task the worker masters saw run, kept in Redis with a size cap.

Flower keeps its task list in memory and loses it on restart (mher/flower#203, #1145); this one
lives in Redis, so a dashboard restart, a worker restart or a second dashboard see the same
history. It lives in `ops/` (not `core/`) because it is an operations read model: the worker
masters write it (`history_writer.HistoryWriter`, fed by the children's event lines, in one
round trip per ~200 ms batch) and the dashboard (and the Django admin) read it; no task, producer
or consumer ever touches it.

Layout: every key in one hash slot, tagged `{ns:hist}` (the same names on one server and on
Redis Cluster, where the history lives on the primary that serves that slot):

    {ns:hist}:rec          hash  id -> the record's FIELDS, tab-separated (state, node, name first)
    {ns:hist}:t            zset  id -> start time of its latest delivery       (newest first, time ranges)
    {ns:hist}:c:<combo>    zset  id -> start time, per "state<TAB>node<TAB>name" (a search merges them)
    {ns:hist}:combos       zset  the combos that have ids (score 0): names, nodes, states in the history
    {ns:hist}:slow         zset  id -> run time of the SLOW_MAX slowest finished tasks (slowest first)
    {ns:hist}:m:<minute>   hash  per-minute counts and run-time buckets (charts); expires after 2 days
    {ns:hist}:q            zset  queue depth samples by time (the dashboard writes them)
    {ns:hist}:audit        list  the dashboard's actions, newest first (capped)

One Lua script (`history.lua`) adds a batch and trims the oldest records beyond the cap from
every index, atomically. It declares the four fixed keys (`script_keys`: they pin the slot, so a
cluster client sends it to the right primary) and derives the per-combo and per-minute keys from
the slot's prefix, which Redis (7 too) allows for keys of the slot the declared keys hash to.
A record (`decode`): `id, name, state, queue, node, pid, sent, eta, due,
received, started, done, runtime, retries, exc, killed, parent, root, group, call` (the JSON text
`[args, kwargs]` as `history_args` says: of every task, of failed ones and of retried ones until
their next delivery (the default), or none, when it fits in ARGS_MAX bytes; `call_text`, the
start of it, when it does not) and `attempts` (earlier deliveries: retries, a child that died). It is
stored as tab-separated text, not JSON: the master builds a record for every task, and a JSON
encoder cost it more than the rest of its work per task together (bench/history_drain.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from qdeploy.core.message import TASK_ID

STATES = ("STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "PENDING")
OUTCOME_STATE = {"succeeded": "SUCCESS", "failed": "FAILURE", "retried": "RETRY", "revoked": "REVOKED"}
DEFAULT_MAX = 100_000
MINUTE_TTL = 2 * 86400  # per-minute chart data is kept two days
TRIM_MAX = 5000  # records one batch trims at most (a lowered cap converges over a few batches)
ARGS_MAX = 2048  # bytes of `[args, kwargs]` JSON kept per task (beyond: a cut repr, not retryable)
AUDIT_MAX = 1000
QUEUE_SAMPLES_KEEP = 2 * 86400
MAX_COMBOS = 100_000  # combos a search reads at most (states x nodes x names: far fewer in practice)
TAGS = ("state", "node", "name")  # a value's first three fields: its combo, the index it is in
# A record's value: these fields, tab-separated (none holds a tab or newline); the last seven are
# what a child's `S` line carries (qdeploy/worker/process.history_tail) and are passed on as sent.
# `due`: when the task became due (sent, or its ETA); `sent` is sent by a child for ETA tasks only.
FIELDS = (*TAGS, "queue", "pid", "started", "done", "runtime", "exc", "killed", "attempts", "due",
          "retries", "sent", "eta", "parent", "root", "group", "call")
CHILD_FIELDS = 7
_KINDS = {"pid": "int", "retries": "int", "started": "time", "done": "time", "sent": "time", "eta": "time",
          "due": "time", "runtime": "seconds", "parent": "id", "root": "id", "group": "id", "attempts": "json"}
_ATTEMPT_TIMES = ("started", "done", "runtime")
SLOW_MAX = 1_000  # the slowest tasks a run-time sort over the whole history pages through


# Read at import: a worker master imports this before it drops privileges, and writes the first
# record after (the service user may not be able to read the package).
_SOURCE = Path(__file__).with_name("history.lua").read_text()


def lua_source() -> str:
    return _SOURCE


def prefix(namespace: str) -> str:
    """What every history key of a namespace starts with: `{ns:hist}:`, one hash slot."""
    return f"{{{namespace}:hist}}:"


class HistoryKeys:
    """The history's key names in one namespace, all in the hash slot of `{ns:hist}`."""

    def __init__(self, namespace: str):
        self.ns = namespace
        self.prefix = p = prefix(namespace)
        self.rec, self.time, self.slow, self.combos = p + "rec", p + "t", p + "slow", p + "combos"
        self.queues, self.audit = p + "q", p + "audit"
        self._combo, self._minute = p + "c:", p + "m:"

    def combo(self, combo: str) -> str:
        """The sorted set of one "state<TAB>node<TAB>name"."""
        return self._combo + combo

    def minute(self, minute: int) -> str:
        return f"{self._minute}{minute}"


def us(seconds: float) -> int:
    """Seconds as the whole microseconds the history stores (scores and fields)."""
    return int(seconds * 1_000_000)


Row = tuple[str, str, str, int, int | None]  # (combo, id, value, score, runtime): one record for the script


def encode(record: dict) -> Row | None:
    """The script's row for one record given as a dict (times in seconds), or None for one
    that cannot be stored. The writer builds its rows itself, faster: this is for tools and
    tests, and documents the format (the value: FIELDS, tab-separated, times in microseconds)."""
    if any(not isinstance(record.get(k), str) or not record[k] or not _clean(record[k]) for k in TAGS):
        return None
    if not isinstance(record.get("id"), str) or not TASK_ID.fullmatch(record["id"]):
        return None
    values = []
    for name in FIELDS:
        value = record.get(name)
        if name == "call" and value is None and record.get("call_text"):
            value = "~" + str(record["call_text"])
        if value is None:
            values.append("")
        elif name == "attempts":
            values.append(json.dumps([_stored_attempt(a) for a in value], separators=(",", ":")))
        elif _KINDS.get(name) in ("time", "seconds"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                return None
            values.append(str(us(value)))
        else:
            text = str(value)
            if not _clean(text):
                return None
            values.append(text)
    runtime = record.get("runtime")
    return ("\t".join(values[:3]), record["id"], "\t".join(values), us(record["started"]),
            None if runtime is None else us(runtime))


def script_keys(ns: str) -> list[str]:
    """history.lua's KEYS: records, time index, slowest, combos (in the order the script reads them)."""
    p = prefix(ns)
    return [p + "rec", p + "t", p + "slow", p + "combos"]


def script_args(ns: str, cap: int, rows: list[Row], increments: list, floor: int = -1) -> list:
    """history.lua's ARGV for `rows` (sorted by combo here) and per-minute increments; `floor`:
    the run time (us) a task must beat to enter the full slowest set (the script's last reply)."""
    rows = sorted(rows, key=_combo_of)
    args: list = [prefix(ns), cap, TRIM_MAX, MINUTE_TTL, SLOW_MAX, len(rows)]
    for row in rows:
        args += (row[1], row[2])
    args += [row[3] for row in rows]
    groups: list = []
    for i, row in enumerate(rows, 1):
        if groups and groups[-3] == row[0]:
            groups[-1] += 1
        else:
            groups += [row[0], i, 1]
    args += [len(groups) // 3, *groups]
    slow = [(row[4], i) for i, row in enumerate(rows, 1) if row[4] is not None and row[4] > floor]
    args.append(len(slow))
    for runtime, i in slow:
        args += (runtime, i)
    args.append(len(increments))
    for item in increments:
        args += item
    return args


def _combo_of(row: Row) -> str:
    return row[0]


def _stored_attempt(attempt: dict) -> dict:
    return {k: str(us(v)) if k in _ATTEMPT_TIMES and isinstance(v, (int, float)) else v for k, v in attempt.items()}


def _clean(text: str) -> bool:
    return "\t" not in text and "\n" not in text and "\r" not in text


def _number(raw, limit: float = 1e17) -> int | None:
    """A whole number as stored (text, or an int from JSON), or None."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if 0 <= raw < limit else None
    if isinstance(raw, str) and raw.isdigit() and len(raw) <= 17:
        return int(raw)
    return None


def _printable(text: str) -> str:
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def decode(task_id, value: bytes | str | None) -> dict | None:
    """A stored record as a dict (times in seconds), or None for anything that is not one.
    The hash is open to every client of the Redis (and the fields after the tags came from a
    child): every field is checked here, one by one; one that is not what it should be is left
    out."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    parts = text.split("\t")
    if len(parts) < 3 or not all(parts[:3]):
        return None
    tid = task_id.decode("utf-8", "replace") if isinstance(task_id, bytes) else str(task_id)
    record: dict = {"id": tid}
    for name, raw in zip(FIELDS, parts, strict=False):
        if raw == "":
            continue
        kind = _KINDS.get(name, "text")
        if kind == "time" or kind == "seconds":
            number = _number(raw)
            if number is not None:
                record[name] = number / 1_000_000
        elif kind == "int":
            if raw.isdigit() and len(raw) <= 12:
                record[name] = int(raw)
        elif kind == "id":
            if TASK_ID.fullmatch(raw):
                record[name] = raw
        elif kind == "json":
            attempts = _attempts(raw)
            if attempts:
                record[name] = attempts
        else:
            record[name] = _printable(raw)
    call = record.pop("call", None)
    if isinstance(call, str):
        if call.startswith("["):
            record["call"] = call
        elif call.startswith("~"):
            record["call_text"] = call[1:]
    record.setdefault("received", record.get("started"))  # one moment in qdeploy: a child reserves what it runs
    if "sent" not in record and "eta" not in record and "due" in record:
        record["sent"] = record["due"]  # due = sent, for a task without an ETA
    return record


def _attempts(raw: str) -> list[dict]:
    try:
        items = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    out = []
    for item in items[:50] if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        attempt: dict = {}
        for key in ("state", "node", "exc", "killed"):
            value = item.get(key)
            if isinstance(value, str) and value:
                attempt[key] = _printable(value)
        pid = _number(item.get("pid"), 1 << 32)
        if pid is not None:
            attempt["pid"] = pid
        for key in _ATTEMPT_TIMES:
            number = _number(item.get(key))
            if number is not None:
                attempt[key] = number / 1_000_000
        if attempt.get("state"):
            out.append(attempt)
    return out


def call_of(record: dict) -> tuple[list, dict] | None:
    """(args, kwargs) kept with a record, or None (not kept, cut, or not well-formed)."""
    raw = record.get("call")
    if not isinstance(raw, str) or len(raw) > ARGS_MAX:
        return None
    try:
        call = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if isinstance(call, list) and len(call) == 2 and isinstance(call[0], list) and isinstance(call[1], dict):
        return call[0], call[1]
    return None


class HistoryStore:
    """Reads and writes of the history over one redis-py client."""

    def __init__(self, client, namespace: str, cap: int = DEFAULT_MAX):
        self.client, self.keys, self.cap = client, HistoryKeys(namespace), cap
        self._add = client.register_script(lua_source())

    # -- writes ------------------------------------------------------------------------------
    def add(self, batches: list[tuple[list[Row], list[tuple[int, str, int]]]]) -> list:
        """Store batches of (rows, per-minute increments): one EVALSHA each, all in one pipeline
        (one round trip; on Redis Cluster, whose pipelines take no scripts, one call each, sent
        to the primary of the history's slot). Returns each script's [added, trimmed, floor]."""
        from qdeploy.core.connection import is_cluster  # not at import: `history` is read without redis too

        keys = script_keys(self.keys.ns)
        if is_cluster(self.client):
            return [self._add(keys=keys, args=script_args(self.keys.ns, self.cap, rows, increments))
                    for rows, increments in batches]
        pipe = self.client.pipeline(transaction=False)
        for rows, increments in batches:
            self._add(keys=keys, args=script_args(self.keys.ns, self.cap, rows, increments), client=pipe)
        return pipe.execute()

    def audit(self, entry: dict) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(self.keys.audit, json.dumps(entry, default=str))
        pipe.ltrim(self.keys.audit, 0, AUDIT_MAX - 1)
        pipe.execute()

    def add_queue_sample(self, now: float, queues: list[dict], every: float) -> bool:
        """Record queue depths unless another reader did within `every` seconds (several
        dashboards sample once between them). Samples older than two days are dropped."""
        slot = math.floor(now / every) * every
        key = self.keys.queues
        if self.client.zcount(key, slot, "+inf"):
            return False
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(key, {json.dumps({"t": now, "q": queues}, separators=(",", ":")): now})
        pipe.zremrangebyscore(key, "-inf", now - QUEUE_SAMPLES_KEEP)
        pipe.execute()
        return True

    # -- reads -------------------------------------------------------------------------------
    def get(self, task_id: str) -> dict | None:
        return decode(task_id, self.client.hget(self.keys.rec, task_id))

    def get_many(self, ids: list[str]) -> list[dict | None]:
        return [decode(i, v) for i, v in zip(ids, self.client.hmget(self.keys.rec, ids), strict=True)] if ids else []

    def count(self) -> int:
        return int(self.client.zcard(self.keys.time))

    def combos(self, limit: int = MAX_COMBOS) -> list[tuple[str, str, str]]:
        """(state, node, name) of every combo the history holds (what names, nodes and states
        a search can match)."""
        out = []
        for raw in self.client.zrange(self.keys.combos, 0, limit - 1):
            parts = raw.decode("utf-8", "replace").split("\t")
            if len(parts) == 3 and all(parts):
                out.append((parts[0], parts[1], parts[2]))
        return out

    def names(self) -> list[str]:
        return sorted({name for _, _, name in self.combos()})

    def nodes(self) -> list[str]:
        return sorted({node for _, node, _ in self.combos()})

    def state_counts(self) -> dict[str, int]:
        combos = self.combos()
        pipe = self.client.pipeline(transaction=False)
        for combo in combos:
            pipe.zcard(self.keys.combo("\t".join(combo)))
        counts = dict.fromkeys(STATES, 0)
        for (state, _, _), n in zip(combos, pipe.execute(), strict=True):
            counts[state] = counts.get(state, 0) + int(n)
        return counts

    def minutes(self, first: int, last: int) -> dict[int, dict[str, int]]:
        """Per-minute counters (minute = unix time // 60) from `first` to `last` inclusive."""
        pipe = self.client.pipeline(transaction=False)
        span = range(first, last + 1)
        for minute in span:
            pipe.hgetall(self.keys.minute(minute))
        out: dict[int, dict[str, int]] = {}
        for minute, raw in zip(span, pipe.execute(), strict=True):
            row = {}
            for k, v in raw.items():
                try:
                    row[k.decode("utf-8", "replace")] = int(v)
                except ValueError:
                    continue
            out[minute] = row
        return out

    def queue_samples(self, since: float, limit: int = 5000) -> list[dict]:
        out = []
        for raw in self.client.zrangebyscore(self.keys.queues, since, "+inf", start=0, num=limit):
            try:
                sample = json.loads(raw)
            except ValueError:
                continue
            if isinstance(sample, dict) and isinstance(sample.get("t"), (int, float)) and isinstance(sample.get("q"), list):
                out.append(sample)
        return out

    def audit_log(self, limit: int = 50) -> list[dict]:
        out = []
        for raw in self.client.lrange(self.keys.audit, 0, limit - 1):
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out
