"""Task states, result records (JSON with a TTL in Redis) and `AsyncResult`.

A record is `{"state", "result", "exc_type", "exc", "traceback", "reason", "task", "worker",
"retries", "date_done"}`; missing key = PENDING. Records expire after `result_ttl` seconds.
"""

from __future__ import annotations

import json
import time
import traceback as traceback_module
from typing import TYPE_CHECKING, Any

from qdeploy.core.keys import Keys

if TYPE_CHECKING:
    from qdeploy.core.app import App

PENDING, RECEIVED, STARTED, RETRY = "PENDING", "RECEIVED", "STARTED", "RETRY"
SUCCESS, FAILURE, REVOKED = "SUCCESS", "FAILURE", "REVOKED"
STATES = (PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED)
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})


class ResultError(Exception):
    """Base class of what `AsyncResult.get()` raises."""


class TaskFailed(ResultError):
    """The task raised; `exc_type`, `exc` and `traceback` are the worker's strings."""

    def __init__(self, task_id: str, exc_type: str, exc: str, traceback: str | None):
        super().__init__(f"task {task_id} failed: {exc_type}: {exc}")
        self.task_id, self.exc_type, self.exc, self.traceback = task_id, exc_type, exc, traceback


class TaskRevoked(ResultError):
    def __init__(self, task_id: str, reason: str | None):
        super().__init__(f"task {task_id} was revoked ({reason or 'revoked'})")
        self.task_id, self.reason = task_id, reason


class ResultTimeout(ResultError, TimeoutError):
    pass


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def describe(exc: BaseException) -> tuple[str, str, str]:
    """(type name, message, traceback) of an exception, whatever it does: an exception whose
    `__str__` or `__repr__` raises (or returns a non-string) gets a fallback text instead of
    taking down the process that reports it."""
    name = type(exc).__name__
    try:
        text = str(exc)
        if not isinstance(text, str):
            raise TypeError("__str__ returned a non-string")
    except BaseException as err:  # noqa: BLE001 - user code
        text = f"<unprintable {name}: str() raised {type(err).__name__}>"
    try:
        trace = "".join(traceback_module.format_exception(exc))
    except BaseException:  # noqa: BLE001 - the traceback module calls str(exc) too
        frames = "".join(traceback_module.format_tb(exc.__traceback__))
        trace = f"Traceback (most recent call last):\n{frames}{name}: {text}\n"
    return name, text, trace


def record(state: str, *, result: Any = None, exc_type: str | None = None, exc: str | None = None,
           traceback: str | None = None, reason: str | None = None, task: str | None = None,
           worker: str | None = None, retries: int = 0) -> str:
    """Encode one result record; raises TypeError if `result` is not JSON."""
    data = {"state": state, "result": result, "task": task, "worker": worker, "retries": retries,
            "date_done": time.time() if state in READY_STATES else None}
    if exc_type is not None:
        data.update(exc_type=exc_type, exc=exc, traceback=traceback)
    if reason is not None:
        data["reason"] = reason
    return _dumps(data)


class Results:
    """Reads and writes records. `colocated` means the broker's Lua scripts write them too."""

    def __init__(self, client, namespace: str, ttl: int, colocated: bool):
        self.client, self.keys, self.ttl, self.colocated = client, Keys(namespace), int(ttl), colocated

    def key(self, task_id: str) -> str:
        return self.keys.result(task_id)

    def get(self, task_id: str) -> dict | None:
        raw = self.client.get(self.key(task_id))
        return json.loads(raw) if raw else None

    def store(self, task_id: str, encoded: str) -> None:
        self.client.set(self.key(task_id), encoded, ex=self.ttl or None)  # 0: keep forever

    def forget(self, task_id: str) -> None:
        self.client.delete(self.key(task_id))


class AsyncResult:
    """A handle on one task's outcome, Celery-shaped."""

    def __init__(self, task_id: str, app: App):
        self.id = task_id
        self.app = app
        self._cache: dict | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} {self.state}>"

    def _meta(self) -> dict:
        if self._cache is not None:  # ready records never change again
            return self._cache
        meta = self.app.results.get(self.id) or {"state": PENDING}
        if meta["state"] in READY_STATES:
            self._cache = meta
        return meta

    @property
    def info(self) -> dict:
        return self._meta()

    @property
    def state(self) -> str:
        return self._meta()["state"]

    status = state

    def ready(self) -> bool:
        return self.state in READY_STATES

    def successful(self) -> bool:
        return self.state == SUCCESS

    def failed(self) -> bool:
        return self.state == FAILURE

    @property
    def result(self) -> Any:
        """The return value once SUCCESS; for FAILURE a TaskFailed; else None."""
        meta = self._meta()
        if meta["state"] == FAILURE:
            return TaskFailed(self.id, meta.get("exc_type", "Error"), meta.get("exc", ""),
                              meta.get("traceback"))
        return meta.get("result")

    @property
    def traceback(self) -> str | None:
        return self._meta().get("traceback")

    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float = 0.05) -> Any:
        """Wait until ready; return the value, or raise TaskFailed/TaskRevoked if `propagate`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while True:
            meta = self._meta()
            if meta["state"] in READY_STATES:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(f"task {self.id} not ready after {timeout}s (state {meta['state']})")
            time.sleep(delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, interval)
        if meta["state"] == SUCCESS or not propagate:
            return self.result
        if meta["state"] == REVOKED:
            raise TaskRevoked(self.id, meta.get("reason"))
        raise self.result

    def forget(self) -> None:
        self._cache = None
        self.app.results.forget(self.id)

    def revoke(self) -> None:
        self.app.revoke(self.id)
