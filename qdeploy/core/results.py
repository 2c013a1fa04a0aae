"""Task states, result records (JSON with a TTL in Redis), `AsyncResult` and `GroupResult`.

A record is `{"state", "result", "exc_type", "exc", "exc_module", "traceback", "reason", "task",
"worker", "retries", "date_done", "children", "parent_id"}` (the last ones only when set);
missing key = PENDING. Records expire after `result_ttl` seconds.
"""

from __future__ import annotations

import json
import sys
import time
import traceback as traceback_module
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from qdeploy.core.connection import hot_path, is_cluster
from qdeploy.core.keys import Keys

if TYPE_CHECKING:
    from qdeploy.core.app import App

PENDING, RECEIVED, STARTED, RETRY = "PENDING", "RECEIVED", "STARTED", "RETRY"
SUCCESS, FAILURE, REVOKED = "SUCCESS", "FAILURE", "REVOKED"
STATES = (PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED)
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})


class ResultError(Exception):
    """Base class of what `AsyncResult.get()` raises."""


class _Record:
    """`info["exc_type"]`: the failure's record fields, read like the record itself."""

    meta: dict

    def __getitem__(self, key: str):
        return self.meta[key]

    def get(self, key: str, default=None):
        return self.meta.get(key, default)

    def __contains__(self, key) -> bool:
        return key in self.meta


class TaskFailed(_Record, ResultError):
    """The task raised; `exc_type`, `exc` and `traceback` are the worker's strings. What
    `get()` raises is also an instance of the task's exception class when that class is
    loaded in this process (`except KeyError:` works as with Celery)."""

    def __init__(self, task_id: str, exc_type: str, exc: str, traceback: str | None, meta: dict | None = None):
        ResultError.__init__(self, f"task {task_id} failed: {exc_type}: {exc}")
        self.task_id, self.exc_type, self.exc, self.traceback = task_id, exc_type, exc, traceback
        self.meta = meta or {"state": FAILURE, "exc_type": exc_type, "exc": exc, "traceback": traceback}


class TaskRevoked(_Record, ResultError):
    def __init__(self, task_id: str, reason: str | None, meta: dict | None = None):
        ResultError.__init__(self, f"task {task_id} was revoked ({reason or 'revoked'})")
        self.task_id, self.reason = task_id, reason
        self.meta = meta or {"state": REVOKED, "reason": reason}


_REMOTE: dict[tuple[str, str], type | None] = {}


def failure(task_id: str, meta: dict) -> TaskFailed:
    """The exception a FAILURE record stands for: a TaskFailed that also is an instance of the
    task's own exception class, if that class is already loaded here (nothing is imported:
    the names come from Redis) and can be combined with it; a plain TaskFailed otherwise."""
    exc_type, module = str(meta.get("exc_type") or "Error"), meta.get("exc_module")
    args = (task_id, exc_type, str(meta.get("exc") or ""), meta.get("traceback"), meta)
    key = (str(module), exc_type)
    cls = _REMOTE.get(key) if module else None
    if module and key not in _REMOTE:
        if len(_REMOTE) > 1000:  # names come from Redis: a bounded cache
            _REMOTE.clear()
        cls = _remote_class(*key)
        if cls is not None or str(module) in sys.modules:  # not loaded (yet): look again next time
            _REMOTE[key] = cls
    if cls is not None:
        try:
            return cls(*args)
        except Exception:  # noqa: BLE001 - its __init__/__new__ wants other arguments
            _REMOTE[(str(module), exc_type)] = None
    return TaskFailed(*args)


def _remote_class(module: str, name: str) -> type | None:
    owner = sys.modules.get(module)
    original = getattr(owner, name, None) if owner is not None and name.isidentifier() else None
    if not (isinstance(original, type) and issubclass(original, BaseException)) or issubclass(original, ResultError):
        return None
    try:
        return type(name, (TaskFailed, original), {"__module__": module, "__qualname__": name,
                                                    "__str__": TaskFailed.__str__, "__init__": TaskFailed.__init__})
    except TypeError:  # e.g. an instance layout that cannot be combined (OSError's)
        return None


class ResultTimeout(ResultError, TimeoutError):
    pass


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def exc_text(exc: BaseException) -> str:
    """str(exc), or a fallback when the exception's `__str__` raises or returns a non-string."""
    try:
        text = str(exc)
        if not isinstance(text, str):
            raise TypeError("__str__ returned a non-string")
    except BaseException as err:  # noqa: BLE001 - user code
        text = f"<unprintable {type(exc).__name__}: str() raised {type(err).__name__}>"
    return text


def describe(exc: BaseException) -> tuple[str, str, str]:
    """(type name, message, traceback) of an exception, whatever it does: an exception whose
    `__str__` or `__repr__` raises (or returns a non-string) gets a fallback text instead of
    taking down the process that reports it."""
    name, text = type(exc).__name__, exc_text(exc)
    try:
        trace = "".join(traceback_module.format_exception(exc))
    except BaseException:  # noqa: BLE001 - the traceback module calls str(exc) too
        frames = "".join(traceback_module.format_tb(exc.__traceback__))
        trace = f"Traceback (most recent call last):\n{frames}{name}: {text}\n"
    return name, text, trace


def record(state: str, *, result: Any = None, exc_type: str | None = None, exc: str | None = None,
           traceback: str | None = None, reason: str | None = None, task: str | None = None,
           worker: str | None = None, retries: int = 0, module: str | None = None,
           children: list | None = None, parent_id: str | None = None) -> str:
    """Encode one result record; raises TypeError if `result` is not JSON."""
    data = {"state": state, "result": result, "task": task, "worker": worker, "retries": retries,
            "date_done": time.time() if state in READY_STATES else None}
    if exc_type is not None:
        data.update(exc_type=exc_type, exc=exc, traceback=traceback)
        if module:
            data["exc_module"] = module
    if reason is not None:
        data["reason"] = reason
    if children:
        data["children"] = children
    if parent_id:
        data["parent_id"] = parent_id
    return _dumps(data)


class Results:
    """Reads and writes records. `colocated` means the broker's Lua scripts write them too.
    Over a hot path (the broker's own, when colocated): `delay(...).get()` and a worker's
    records never load redis-py's client."""

    def __init__(self, client, namespace: str, ttl: int, colocated: bool, hot=None):
        self.client, self.keys, self.ttl, self.colocated = client, Keys(namespace), int(ttl), colocated
        self._hot = hot

    @property
    def hot(self):
        if self._hot is None:
            self._hot = hot_path(self.client)
        return self._hot

    def key(self, task_id: str) -> str:
        return self.keys.result(task_id)

    def get(self, task_id: str) -> dict | None:
        raw = self.hot.command("GET", self.key(task_id))
        return json.loads(raw) if raw else None

    def get_many(self, task_ids: list[str], chunk: int = 1000) -> list[dict | None]:
        """Records of many ids, in order, in one MGET per `chunk` ids (a group of 100k results
        is read in 100 round trips, not 100k). On Redis Cluster each result has its own slot:
        redis-py's mget_nonatomic sends one MGET per slot, pipelined per node."""
        out: list[dict | None] = []
        mget = self.client.mget_nonatomic if is_cluster(self.client) else lambda keys: self.hot.command("MGET", *keys)
        for start in range(0, len(task_ids), chunk):
            keys = [self.key(t) for t in task_ids[start:start + chunk]]
            out += [json.loads(raw) if raw else None for raw in mget(keys)]
        return out

    def store(self, task_id: str, encoded: str) -> None:
        self.hot.command("SET", self.key(task_id), encoded, *(("EX", self.ttl) if self.ttl else ()))  # 0: keep forever

    def forget(self, task_id: str) -> None:
        self.hot.command("DEL", self.key(task_id))


def _app_or_current(app: App | None) -> App:
    if app is not None:
        return app
    from qdeploy.core.app import current_app

    found = current_app()
    if found is None:
        raise RuntimeError("AsyncResult needs an app: AsyncResult(id, app=app)")
    return found


class AsyncResult:
    """A handle on one task's outcome, with Celery's API: `get`, `ready`, `successful`,
    `failed`, `state`/`status`, `result`/`info`, `traceback`, `date_done`, `forget`, `revoke`,
    `parent` (set for the steps of a chain), `children` (the tasks it sent)."""

    def __init__(self, id: str, app: App | None = None, parent: AsyncResult | GroupResult | None = None,
                 task_name: str | None = None, backend=None):
        if not isinstance(id, str) or not id:
            raise TypeError(f"AsyncResult needs a task id string, not {id!r}")
        self.id = id
        self.app = app if app is not None else _app_or_current(None)
        self._parent = parent
        self._name = task_name
        self._cache: dict | None = None

    task_id = property(lambda self: self.id)

    @property
    def parent(self) -> AsyncResult | GroupResult | None:
        """The task that sent this one: set for the steps of a chain, else from the record."""
        if self._parent is None and self._cache is not None and isinstance(self._cache.get("parent_id"), str):
            self._parent = AsyncResult(self._cache["parent_id"], self.app)
        return self._parent

    @parent.setter
    def parent(self, value) -> None:
        self._parent = value

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __str__(self) -> str:
        return self.id

    def __eq__(self, other) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        return other == self.id if isinstance(other, str) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def _meta(self) -> dict:
        if self._cache is not None:  # ready records never change again
            return self._cache
        meta = self.app.results.get(self.id) or {"state": PENDING}
        self._seen(meta)
        return meta

    def _seen(self, meta: dict) -> None:
        if meta.get("state") in READY_STATES:
            self._cache = meta

    @property
    def meta(self) -> dict:
        """The record as stored (qdeploy's own; `info` is Celery's)."""
        return self._meta()

    @property
    def state(self) -> str:
        return self._meta()["state"]

    status = state

    @property
    def name(self) -> str | None:
        return self._name or self._meta().get("task")

    def ready(self) -> bool:
        return self.state in READY_STATES

    def successful(self) -> bool:
        return self.state == SUCCESS

    def failed(self) -> bool:
        return self.state == FAILURE

    @property
    def result(self) -> Any:
        """The return value once SUCCESS; for FAILURE the exception (a TaskFailed, an instance of
        the task's own exception class when it is loaded here); for REVOKED a TaskRevoked."""
        return self._value(self._meta())

    def _value(self, meta: dict) -> Any:
        state = meta["state"]
        if state == FAILURE:
            return failure(self.id, meta)
        if state == REVOKED:
            return TaskRevoked(self.id, meta.get("reason"), meta)
        if state == RETRY:
            return TaskFailed(self.id, "Retry", str(meta.get("reason") or ""), meta.get("traceback"), meta)
        if state in (RECEIVED, STARTED):
            return meta
        return meta.get("result")

    info = result

    @property
    def traceback(self) -> str | None:
        return self._meta().get("traceback")

    @property
    def date_done(self) -> datetime | None:
        done = self._meta().get("date_done")
        return datetime.fromtimestamp(done, UTC) if isinstance(done, (int, float)) else None

    @property
    def retries(self) -> int:
        return int(self._meta().get("retries") or 0)

    @property
    def children(self) -> list[AsyncResult]:
        return [AsyncResult(c, self.app, parent=self) for c in self._meta().get("children") or () if isinstance(c, str)]

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.05,
            follow_parents: bool = True, **_ignored) -> Any:
        """Wait until ready; return the value, or raise the task's error if `propagate`. With
        `follow_parents` (Celery's default) an earlier step of a chain that failed raises too."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        parents = self._parents() if follow_parents and propagate else []
        while True:
            meta = self._meta()
            if meta["state"] in READY_STATES:
                break
            for parent, pmeta in zip(parents, self.app.results.get_many([p.id for p in parents]), strict=True):
                if pmeta and pmeta.get("state") in (FAILURE, REVOKED):
                    parent._seen(pmeta)
                    parent.maybe_throw()
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(f"task {self.id} not ready after {timeout}s (state {meta['state']})")
            time.sleep(delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, interval)
        if meta["state"] == SUCCESS or not propagate:
            return self._value(meta)
        self.maybe_throw()

    wait = get

    def _parents(self) -> list[AsyncResult]:
        out: list[AsyncResult] = []
        node = self.parent
        while isinstance(node, AsyncResult) and len(out) < 10000:
            out.append(node)
            node = node.parent
        return out

    def maybe_throw(self, propagate: bool = True) -> None:
        meta = self._meta()
        if propagate and meta["state"] in (FAILURE, REVOKED):
            raise self._value(meta)

    def forget(self) -> None:
        self._cache = None
        self.app.results.forget(self.id)

    def revoke(self, terminate: bool = False, signal: Any = None, **_ignored) -> None:
        """Do not run it; with `terminate`, also stop it where it runs (the control channel
        kills the child running it, which is then replaced)."""
        self.app.revoke(self.id, terminate=terminate)

    def as_tuple(self) -> tuple:
        parent = self.parent.as_tuple() if isinstance(self.parent, AsyncResult) else None
        return ((self.id, parent), None)


from qdeploy.core.groupresult import GroupResult  # noqa: E402 - it builds on AsyncResult
