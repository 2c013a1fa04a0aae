"""Signals, with Celery's names and arguments: `from qdeploy.signals import task_prerun`.

    @task_prerun.connect
    def log_start(sender=None, task_id=None, task=None, args=None, kwargs=None, **extra): ...

    @task_success.connect(sender="proj.tasks.add")   # only for that task (name or task object)
    def count(sender=None, result=None, **extra): ...

A receiver is called as `receiver(signal=<Signal>, sender=<sender>, **arguments)` and should take
`**kwargs` (arguments are added over time, as in Celery). A receiver that raises is logged with
its traceback and the others still run: `send` never raises (only `worker_process_init` stops a
child, by the caller's choice: it checks the returned exceptions). Receivers are held weakly by
default, as in Celery: connect a module-level function, or pass `weak=False`.

Where each is sent, and with which arguments, is documented in docs/from-celery.md; the worker
sends the child-side ones in every child (spares included) and the service-side ones in the
master.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger("qdeploy.signals")

_ANY = object()


def _sender_key(sender: Any) -> Any:
    """Senders compare by value when they are strings (task names), else by identity."""
    if sender is None:
        return _ANY
    if isinstance(sender, (str, bytes)):
        return sender
    return id(sender)


def _receiver_key(receiver: Callable) -> tuple:
    func = getattr(receiver, "__func__", None)
    return (id(receiver.__self__), id(func)) if func is not None else (id(receiver),)  # type: ignore[attr-defined]


class Signal:
    """An observer list: `connect` receivers, `send` to the ones whose sender filter matches."""

    def __init__(self, name: str, providing_args: tuple[str, ...] = ()):
        self.name, self.providing_args = name, tuple(providing_args)
        self._receivers: list[tuple[tuple, Any, Any]] = []  # (lookup key, sender key, ref or callable)
        self._lock = threading.RLock()  # a weakref callback may prune while this thread holds it

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"

    def connect(self, receiver: Callable | None = None, *, sender: Any = None, weak: bool = True,
                dispatch_uid: str | None = None):
        """Connect `receiver`; also a decorator, bare or with options (`@sig.connect(sender=x)`)."""
        if receiver is None:
            return lambda fn: self.connect(fn, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
        if not callable(receiver):
            raise TypeError(f"{self.name}: a receiver must be callable, not {type(receiver).__name__}")
        key = ((dispatch_uid,) if dispatch_uid else _receiver_key(receiver)) + (_sender_key(sender),)
        ref: Any = receiver
        if weak:
            ref = (weakref.WeakMethod(receiver, self._prune) if hasattr(receiver, "__func__")
                   else weakref.ref(receiver, self._prune))
        with self._lock:
            if not any(k == key for k, _, _ in self._receivers):
                self._receivers.append((key, _sender_key(sender), ref))
        return receiver

    def disconnect(self, receiver: Callable | None = None, *, sender: Any = None,
                   dispatch_uid: str | None = None) -> bool:
        key = ((dispatch_uid,) if dispatch_uid else _receiver_key(receiver)) + (_sender_key(sender),)  # type: ignore[arg-type]
        with self._lock:
            kept = [r for r in self._receivers if r[0] != key]
            removed, self._receivers = len(kept) != len(self._receivers), kept
        return removed

    def _prune(self, _ref=None) -> None:
        with self._lock:
            self._receivers = [r for r in self._receivers
                               if not isinstance(r[2], weakref.ReferenceType) or r[2]() is not None]

    def receivers_for(self, sender: Any) -> list[Callable]:
        keys = {_ANY, _sender_key(sender)}
        name = getattr(sender, "name", None)  # a task object also matches a filter by its name
        if isinstance(name, str):
            keys.add(name)
        out = []
        for _, wanted, ref in list(self._receivers):
            if wanted in keys:
                receiver = ref() if isinstance(ref, weakref.ReferenceType) else ref
                if receiver is not None:
                    out.append(receiver)
        return out

    @property
    def has_receivers(self) -> bool:
        return bool(self._receivers)

    def send(self, sender: Any = None, **arguments) -> list[tuple[Callable, Any]]:
        """Call every matching receiver; returns [(receiver, its result or the exception it raised)]."""
        if not self._receivers:  # the common case, on every task: nothing to do
            return []
        replies = []
        for receiver in self.receivers_for(sender):
            try:
                replies.append((receiver, receiver(signal=self, sender=sender, **arguments)))
            except Exception as exc:
                log.exception("signal %s: receiver %s raised %s", self.name,
                              getattr(receiver, "__qualname__", receiver), type(exc).__name__)
                replies.append((receiver, exc))
        return replies


def _signal(name: str, *args: str) -> Signal:
    return Signal(name, args)


# -- tasks (Celery's arguments) -----------------------------------------------------------------
before_task_publish = _signal("before_task_publish", "body", "exchange", "routing_key", "headers",
                              "properties", "declare", "retry_policy")
after_task_publish = _signal("after_task_publish", "body", "exchange", "routing_key", "headers")
task_received = _signal("task_received", "request")
task_prerun = _signal("task_prerun", "task_id", "task", "args", "kwargs")
task_postrun = _signal("task_postrun", "task_id", "task", "args", "kwargs", "retval", "state")
task_success = _signal("task_success", "result")
task_failure = _signal("task_failure", "task_id", "exception", "args", "kwargs", "traceback", "einfo")
task_retry = _signal("task_retry", "request", "reason", "einfo")
task_revoked = _signal("task_revoked", "request", "terminated", "signum", "expired")
task_unknown = _signal("task_unknown", "message", "exc", "name", "id")
task_rejected = _signal("task_rejected", "message", "exc")
# -- worker ---------------------------------------------------------------------------------------
worker_init = _signal("worker_init")
worker_ready = _signal("worker_ready")
worker_shutting_down = _signal("worker_shutting_down", "sig", "how", "exitcode")
worker_shutdown = _signal("worker_shutdown")
worker_process_init = _signal("worker_process_init")
worker_process_shutdown = _signal("worker_process_shutdown", "pid", "exitcode")
heartbeat_sent = _signal("heartbeat_sent")
# -- beat, logging ---------------------------------------------------------------------------------
beat_init = _signal("beat_init")
setup_logging = _signal("setup_logging", "loglevel", "logfile", "format", "colorize")
after_setup_logger = _signal("after_setup_logger", "logger", "loglevel", "logfile", "format", "colorize")
after_setup_task_logger = _signal("after_setup_task_logger", "logger", "loglevel", "logfile", "format",
                                  "colorize")

__all__ = ["Signal", *[name for name, value in dict(globals()).items() if isinstance(value, Signal)]]


def logging_configured(loglevel: str, logfile: str | None, fmt: str, after: bool = False) -> bool:
    """Celery's logging signals for a service's logging setup. Before (`after=False`): if
    `setup_logging` has receivers, they configure logging instead of qdeploy (True is returned).
    After: `after_setup_logger` (the root logger) and `after_setup_task_logger` ("qdeploy.task")."""
    level = logging.getLevelName(str(loglevel).upper())
    common = {"loglevel": level, "logfile": logfile, "format": fmt, "colorize": False}
    if not after:
        if not setup_logging.has_receivers:
            return False
        setup_logging.send(sender=None, **common)
        return True
    after_setup_logger.send(sender=None, logger=logging.getLogger(), **common)
    after_setup_task_logger.send(sender=None, logger=logging.getLogger("qdeploy.task"), **common)
    return False
