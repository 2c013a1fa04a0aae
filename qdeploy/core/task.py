"""Celery's task API: the `Task` base class, `Request` (`self.request`), and the exceptions a
task meets (`Retry`, `SoftTimeLimitExceeded`, ...).

    class DebugTask(Task):                      # celery.Task
        def __call__(self, *args, **kwargs):
            print(f"TASK STARTING: {self.name}[{self.request.id}]")
            return self.run(*args, **kwargs)

    @app.task(base=DebugTask, bind=True, max_retries=5)
    def add(self, x, y): ...

`@app.task` makes a subclass of the base (`base=`, else `app.Task`) whose `run` is the function,
with the decorator's options as class attributes, and registers its one instance: `add` *is*
that instance, `add.__class__.mro()` is `[add, DebugTask, Task, object]` as in Celery.
"""

from __future__ import annotations

import difflib
import logging
import random
import re
import threading
import time
import traceback as traceback_module
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qdeploy.core.app import App
    from qdeploy.core.canvas import Signature
    from qdeploy.core.results import AsyncResult

log = logging.getLogger("qdeploy.task")


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task when its soft time limit expires; the task may clean up."""


class TimeLimitExceeded(BaseException):
    """Raised when the hard limit expires (BaseException: `except Exception` won't swallow it)."""


class MaxRetriesExceededError(Exception):
    pass


class Retry(Exception):
    """Raised by `task.retry()`; the consumer acks this delivery and schedules the next one."""

    def __init__(self, exc: BaseException | None = None, countdown: float = 0.0):
        from qdeploy.core.results import describe

        super().__init__(f"retry in {countdown:.3f}s" + (f": {describe(exc)[1]}" if exc else ""))
        self.exc, self.countdown = exc, countdown


class ExceptionInfo:
    """Celery's `einfo` (billiard's ExceptionInfo): `.type`, `.exception`, `.tb`, `.traceback`
    (the formatted text); `str(einfo)` is the traceback."""

    def __init__(self, exc: BaseException, traceback: str | None = None):
        from qdeploy.core.results import describe

        self.type, self.exception, self.tb = type(exc), exc, exc.__traceback__
        self.traceback = traceback if traceback is not None else describe(exc)[2]
        self.internal = False

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f"<ExceptionInfo: {self.exception!r}>"


@dataclass(slots=True)
class Request:
    """What a task sees as `self.request` while it runs (Celery's task Context). Called
    directly (not by a worker), a task sees an empty one: `called_directly` is True."""

    id: str | None
    task: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    retries: int = 0
    deliveries: int = 1
    queue: str = "default"
    eta: float | None = None
    origin: str = ""
    hostname: str = ""
    max_retries: int | None = None
    expires: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    headers: dict = field(default_factory=dict)
    callbacks: list | tuple = ()
    errbacks: list | tuple = ()
    chain: list | tuple = ()
    chord: dict | None = None
    timelimit: tuple = (None, None)  # (hard, soft) as Celery orders them
    ignore_result: bool = False
    is_eager: bool = False
    called_directly: bool = False
    children: list = field(default_factory=list)  # ids of the tasks it sent (result.children)

    @property
    def name(self) -> str:
        return self.task

    @property
    def correlation_id(self) -> str | None:
        return self.id

    @property
    def delivery_info(self) -> dict:
        return {"exchange": "", "routing_key": self.queue, "priority": None,
                "redelivered": self.deliveries > 1}

    def as_dict(self) -> dict:
        """The JSON form an error callback receives (see `ErrbackRequest`)."""
        return {"id": self.id, "task": self.task, "args": self.args, "kwargs": self.kwargs,
                "retries": self.retries, "queue": self.queue, "parent_id": self.parent_id,
                "root_id": self.root_id, "group": self.group, "hostname": self.hostname,
                "headers": self.headers}


_current = threading.local()  # the request this thread is running (Celery's current_task)


def current_request() -> Request | None:
    stack = getattr(_current, "stack", None)
    return stack[-1] if stack else None


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")


def parse_rate(rate: str | float | None) -> float | None:
    """'10/s', '100/m', '5/h' (or a bare number per second) -> tasks per second."""
    if rate is None:
        return None
    m = _RATE.match(str(rate))
    if not m or not float(m.group(1)) > 0:
        raise ValueError(f"rate_limit must look like '10/s', '100/m' or '5/h' (more than 0), got {rate!r}")
    return float(m.group(1)) / {"s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]


def backoff(retries: int, base: float, cap: float, jitter: bool) -> float:
    """Exponential backoff with "equal jitter": in [d/2, d] where d = min(cap, base * 2**retries)."""
    delay = min(cap, base * (2 ** retries))
    return delay / 2 + random.uniform(0, delay / 2) if jitter else delay


# Celery task options qdeploy accepts but does not act on, and why (a warning names them).
UNSUPPORTED = {
    "priority": "queues are FIFO; use a separate queue for urgent tasks",
    "reject_on_worker_lost": "a task whose child dies is always requeued (acks_late)",
    "typing": "arguments are always checked against the function's signature",
    "store_errors_even_if_ignored": "ignore_result=True stores nothing",
    "send_events": "task events come from the worker's master (issue 21)",
    "compression": "messages are not compressed",
    "throws": "every failure is logged with its traceback",
    "trail": "result.children is always kept",
    "resultrepr_maxsize": "the log line cuts results at 200 characters",
    "abstract": "any Task subclass can be a base",
}
SERIALIZERS = ("json",)


def check_serializer(value: Any, where: str = "serializer") -> None:
    if value is None or value in SERIALIZERS:
        return
    if value == "pickle":
        raise ValueError(f"{where}='pickle' is refused: qdeploy messages are JSON only, because "
                         "unpickling runs code chosen by whoever can write to Redis; pass "
                         "JSON-serialisable arguments (ids, not objects)")
    raise ValueError(f"{where}={value!r} is not supported: qdeploy messages are JSON only "
                     f"(serializer='json')")


_HOOKS = ("before_start", "on_success", "on_failure", "on_retry", "after_return")


class Task:
    """Celery's Task: subclass it for a base class (`base=`, `app.Task = ...`), or for a
    class-based task (`name` and `run`, registered with `app.register_task`)."""

    name: str | None = None
    app: App | None = None
    queue: str | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 3.0
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    retry_kwargs: dict = {}
    autoretry_for: tuple = ()
    time_limit: float | None = None
    soft_time_limit: float | None = None
    acks_late: bool = True
    ignore_result: bool = False
    rate_limit: str | None = None
    track_started: bool | None = None  # None: the app's setting
    expires: float | None = None
    serializer: str = "json"
    unique_for: float | None = None  # seconds: a duplicate send returns the first's handle
    unique_key: Callable | None = None  # (args, kwargs) -> key; default: the arguments
    bind: bool = False  # True: `run` receives the task as `self` (set by @app.task)
    fn: Callable | None = None  # the decorated function (None for class-based tasks)

    def __init__(self) -> None:
        self.rate = parse_rate(type(self).rate_limit)
        cls = type(self)
        # the hooks a class overrides: only those are called (a default hook costs nothing)
        self._hooks = frozenset(h for h in _HOOKS if getattr(cls, h) is not getattr(Task, h))
        self.custom_call = cls.__call__ is not Task.__call__

    def __repr__(self) -> str:
        return f"<@task: {self.name} of {self.app.main if self.app else None}>"

    def bind_app(self, app: App) -> None:
        type(self).app = app
        if self.track_started is None:
            self.track_started = app.track_started

    # -- running -----------------------------------------------------------------------------
    def run(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define run()")

    def __call__(self, *args, **kwargs):
        return self.run(*args, **kwargs)

    @property
    def request(self) -> Request:
        """The request this thread runs; an empty one (`called_directly`) outside a worker."""
        stack = getattr(_current, "stack", None)
        if stack:
            name = self.name
            for request in reversed(stack):  # the innermost request of this task (eager nesting)
                if request.task == name:
                    return request
        return Request(None, self.name or "", called_directly=True)

    @request.setter
    def request(self, value: Request | None) -> None:
        if value is None:
            self.pop_request()
        else:
            self.push_request(value)

    def push_request(self, request: Request) -> None:
        """One stack per thread (a child with threads runs several requests at once)."""
        try:
            _current.stack.append(request)
        except AttributeError:
            _current.stack = [request]

    def pop_request(self) -> None:
        stack = getattr(_current, "stack", None)
        if stack:
            stack.pop()

    # -- hooks (Celery's names and arguments) ----------------------------------------------------
    def before_start(self, task_id, args, kwargs) -> None:
        pass

    def on_success(self, retval, task_id, args, kwargs) -> None:
        pass

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        pass

    def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:
        pass

    def after_return(self, status, retval, task_id, args, kwargs, einfo) -> None:
        pass

    # -- producing ---------------------------------------------------------------------------
    def delay(self, *args, **kwargs) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def apply_async(self, args=None, kwargs=None, **options) -> AsyncResult:
        app = self._app()
        if app.conf.fast("task_always_eager", False):
            return self.apply(args, kwargs, **options)
        call = (self, args or (), kwargs or {})
        return app.send_many([(*call, options) if options else call])[0]

    def apply(self, args=None, kwargs=None, **options):
        """Run here and now (eager), as a worker would; returns an EagerResult."""
        from qdeploy.core.eager import apply

        return apply(self.signature(args, kwargs), (), None, options)

    def signature(self, args=None, kwargs=None, **options) -> Signature:
        from qdeploy.core.canvas import Signature

        return Signature(self.name, args, kwargs, options, app=self._app())

    subtask = signature

    def s(self, *args, **kwargs) -> Signature:
        return self.signature(args, kwargs)

    def si(self, *args, **kwargs) -> Signature:
        return self.signature(args, kwargs, immutable=True)

    def chunks(self, items, n: int):
        from qdeploy.core.canvas import chunks

        return chunks(self.s(), items, n)

    def map(self, items) -> list[AsyncResult]:
        """qdeploy's map: one message per item (called with that item); one pipeline. Celery's
        `map` builds one `xmap` task instead (see docs/from-celery.md)."""
        return self._app().send_many((self, (item,), {}) for item in items)

    def starmap(self, items) -> list[AsyncResult]:
        """One message per item, called with `*item`; one pipeline."""
        return self._app().send_many((self, tuple(item), {}) for item in items)

    def AsyncResult(self, task_id: str) -> AsyncResult:
        return self._app().AsyncResult(task_id)

    def _app(self) -> App:
        if self.app is None:
            raise RuntimeError(f"task {self.name!r} is not bound to an app (use @app.task or app.register_task)")
        return self.app

    # -- inside a running task ---------------------------------------------------------------
    def retry(self, exc: BaseException | None = None, countdown: float | None = None,
              max_retries: int | None = None, eta=None, **_options) -> None:
        """Raise `Retry` so the consumer re-schedules this task; past max_retries re-raise
        `exc` (or MaxRetriesExceededError)."""
        req = self.request
        if req.called_directly:
            raise RuntimeError(f"{self.name}.retry() called outside of a running task")
        limit = max_retries if max_retries is not None else (
            req.max_retries if req.max_retries is not None else self.max_retries)
        if limit is not None and req.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(f"{self.name}[{req.id}] exceeded max_retries={limit}")
        if eta is not None and countdown is None:
            from qdeploy.core.app import timestamp

            countdown = max(0.0, timestamp(eta, self._app()) - time.time())  # type: ignore[operator]
        raise Retry(exc, self.retry_countdown(req.retries) if countdown is None else countdown)

    def retry_countdown(self, retries: int) -> float:
        if "countdown" in self.retry_kwargs:
            return float(self.retry_kwargs["countdown"])
        if self.retry_backoff:
            base = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
            return backoff(retries, base, self.retry_backoff_max, self.retry_jitter)
        return self.default_retry_delay

    def retry_limit(self, request: Request) -> int | None:
        """How often this request may be retried: the message's, else retry_kwargs', else the task's."""
        if request.max_retries is not None:
            return request.max_retries
        return self.retry_kwargs.get("max_retries", self.max_retries)


_OPTIONS = frozenset({"name", "queue", "max_retries", "default_retry_delay", "retry_backoff", "retry_backoff_max",
                      "retry_jitter", "retry_kwargs", "autoretry_for", "time_limit", "soft_time_limit",
                      "acks_late", "ignore_result", "rate_limit", "track_started", "expires", "serializer",
                      "unique_for", "unique_key", "bind"})


def make_task(app: App, fn: Callable, base: type | None = None, **options) -> Task:
    """`@app.task(...)`: a subclass of `base` whose `run` is `fn`, with `options` as its class
    attributes; returns its instance, bound to `app` (not registered yet)."""
    base = base or app.Task
    if not (isinstance(base, type) and issubclass(base, Task)):
        raise TypeError(f"base must be a Task subclass, not {base!r}")
    if not callable(fn):
        raise TypeError(f"@app.task needs a function, not {type(fn).__name__}")
    check_serializer(options.get("serializer"))
    for name in list(options):
        if name in UNSUPPORTED:
            warnings.warn(f"task option {name}= is ignored by qdeploy: {UNSUPPORTED[name]}", stacklevel=3)
            options.pop(name)
        elif name not in _OPTIONS and not hasattr(base, name):
            close = difflib.get_close_matches(name, sorted(_OPTIONS), n=1)
            raise TypeError(f"unknown task option {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if "rate_limit" in options:
        parse_rate(options["rate_limit"])
    autoretry = options.get("autoretry_for")
    if autoretry is not None:
        options["autoretry_for"] = tuple(autoretry) if not isinstance(autoretry, type) else (autoretry,)
    if callable(options.get("unique_key")):  # a function given to the decorator: not a method
        options["unique_key"] = staticmethod(options["unique_key"])
    bind = bool(options.pop("bind", False))
    name = options.pop("name", None) or f"{fn.__module__}.{getattr(fn, '__qualname__', fn.__class__.__name__)}"
    attrs = {"name": name, "run": fn if bind else staticmethod(fn), "bind": bind, "fn": staticmethod(fn),
             "__doc__": fn.__doc__, "__module__": getattr(fn, "__module__", base.__module__),
             "__wrapped__": staticmethod(fn), "__qualname__": getattr(fn, "__name__", name), **options}
    cls = type(getattr(fn, "__name__", "task"), (base,), attrs)
    task = cls()
    task.bind_app(app)
    task.__name__ = getattr(fn, "__name__", name)
    return task


def run_function(task: Task) -> Callable:
    """What a worker calls: the task itself when its class overrides __call__ (which is then
    expected to call self.run), else `run` directly (Celery's shortcut)."""
    return task if task.custom_call else task.run


def call_hook(task: Task, hook: str, *args) -> None:
    """Call one of the task's hooks if its class defines it; a hook that raises is logged and
    changes nothing (the task's outcome stands, it is neither lost nor run again)."""
    if hook not in task._hooks:
        return
    try:
        getattr(task, hook)(*args)
    except BaseException as exc:  # noqa: BLE001 - user code; SystemExit too: it would end the child
        log.error("task %s: hook %s raised %s: %s (the task's outcome stands)\n%s", task.name, hook,
                  type(exc).__name__, exc, "".join(traceback_module.format_exception(exc)).rstrip())
