"""The producer-side API: `App`, `@app.task`, `Task.delay/apply_async/map`, `send_task`.

    app = App("proj", broker="redis://127.0.0.1:6379/0")

    @app.task(max_retries=5, retry_backoff=True, autoretry_for=(IOError,))
    def fetch(url): ...

    fetch.delay("https://example.org").get(timeout=10)
"""

from __future__ import annotations

import importlib
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from qdeploy import defaults
from qdeploy.core import message, results
from qdeploy.core.broker import Broker, result_ttl_of
from qdeploy.core.connection import BROKER_DOWN, connect
from qdeploy.core.results import AsyncResult, Results

PING_TASK = "qdeploy.ping"


def _ping() -> str:
    return "pong"


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task when its soft time limit expires; the task may clean up."""


class TimeLimitExceeded(BaseException):
    """Raised when the hard limit expires (BaseException: `except Exception` won't swallow it)."""


class MaxRetriesExceededError(Exception):
    pass


class Retry(Exception):
    """Raised by `task.retry()`; the consumer acks this delivery and schedules the next one."""

    def __init__(self, exc: BaseException | None = None, countdown: float = 0.0):
        super().__init__(f"retry in {countdown:.3f}s" + (f": {results.describe(exc)[1]}" if exc else ""))
        self.exc, self.countdown = exc, countdown


@dataclass(slots=True)
class Request:
    """What a bound task sees as `self.request` while it runs."""

    id: str
    task: str
    args: list
    kwargs: dict
    retries: int = 0
    deliveries: int = 1
    queue: str = "default"
    eta: float | None = None
    origin: str = ""
    hostname: str = ""
    max_retries: int | None = None


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")


def parse_rate(rate: str | None) -> float | None:
    """'10/s', '100/m', '5/h' (or a bare number per second) -> tasks per second."""
    if rate is None:
        return None
    m = _RATE.match(str(rate))
    if not m:
        raise ValueError(f"rate_limit must look like '10/s', '100/m' or '5/h', got {rate!r}")
    return float(m.group(1)) / {"s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]


def backoff(retries: int, base: float, cap: float, jitter: bool) -> float:
    """Exponential backoff with "equal jitter": in [d/2, d] where d = min(cap, base * 2**retries)."""
    delay = min(cap, base * (2 ** retries))
    return delay / 2 + random.uniform(0, delay / 2) if jitter else delay


def _timestamp(value: datetime | float | None) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else value


class Task:
    """A registered function plus its options. Calling it runs it here, synchronously."""

    def __init__(self, app: App, fn: Callable, *, name: str | None = None,
                 queue: str | None = None, max_retries: int | None = 3,
                 retry_backoff: bool | float = False, retry_backoff_max: float = 600.0,
                 retry_jitter: bool = True, default_retry_delay: float = 3.0,
                 autoretry_for: tuple = (), time_limit: float | None = None,
                 soft_time_limit: float | None = None, acks_late: bool = True,
                 ignore_result: bool = False, rate_limit: str | None = None, bind: bool = False,
                 track_started: bool | None = None, expires: float | None = None):
        self.app, self.fn, self.bind = app, fn, bind
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.queue = queue
        self.max_retries, self.retry_backoff = max_retries, retry_backoff
        self.retry_backoff_max, self.retry_jitter = retry_backoff_max, retry_jitter
        self.default_retry_delay, self.autoretry_for = default_retry_delay, tuple(autoretry_for)
        self.time_limit, self.soft_time_limit = time_limit, soft_time_limit
        self.acks_late, self.ignore_result = acks_late, ignore_result
        self.rate_limit, self.rate = rate_limit, parse_rate(rate_limit)
        self.track_started = app.track_started if track_started is None else track_started
        self.expires = expires
        self._local = threading.local()  # a child with threads runs several requests at once
        self.__doc__, self.__name__ = fn.__doc__, getattr(fn, "__name__", self.name)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    @property
    def request(self) -> Request | None:
        """The request being run by this thread (set by the consumer while the task runs)."""
        return getattr(self._local, "request", None)

    @request.setter
    def request(self, value: Request | None) -> None:
        self._local.request = value

    def __call__(self, *args, **kwargs):
        return self.fn(self, *args, **kwargs) if self.bind else self.fn(*args, **kwargs)

    # -- producing ---------------------------------------------------------------------------
    def delay(self, *args, **kwargs) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def apply_async(self, args=None, kwargs=None, **options) -> AsyncResult:
        return self.app.send_many([(self, args or (), kwargs or {}, options)])[0]

    def map(self, items: Iterable) -> list[AsyncResult]:
        """One task per item, called with that item as its only argument; one pipeline."""
        return self.app.send_many((self, (item,), {}) for item in items)

    def starmap(self, items: Iterable) -> list[AsyncResult]:
        """One task per item, called with `*item`; one pipeline."""
        return self.app.send_many((self, tuple(item), {}) for item in items)

    # -- inside a running task ---------------------------------------------------------------
    def retry(self, exc: BaseException | None = None, countdown: float | None = None,
              max_retries: int | None = None) -> None:
        """Raise `Retry` so the consumer re-schedules this task; past max_retries re-raise
        `exc` (or MaxRetriesExceededError)."""
        req = self.request
        if req is None:
            raise RuntimeError(f"{self.name}.retry() called outside of a running task")
        limit = max_retries if max_retries is not None else (
            req.max_retries if req.max_retries is not None else self.max_retries)
        if limit is not None and req.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(f"{self.name}[{req.id}] exceeded max_retries={limit}")
        raise Retry(exc, self.retry_countdown(req.retries) if countdown is None else countdown)

    def retry_countdown(self, retries: int) -> float:
        if self.retry_backoff:
            base = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
            return backoff(retries, base, self.retry_backoff_max, self.retry_jitter)
        return self.default_retry_delay


@dataclass
class App:
    """A registry of tasks plus the connection settings they are sent with."""

    main: str
    broker: str | None = None
    result_backend: str | None = None  # None: results live in the broker's Redis
    namespace: str = "qdeploy"
    result_ttl: int = 86400
    default_queue: str = "default"
    visibility_timeout: float = 30.0
    max_deliveries: int = 5
    dead_letter_max: int = 10000
    track_started: bool = False
    tasks: dict[str, Task] = field(default_factory=dict)
    conf: Conf = field(default_factory=lambda: Conf())

    def __post_init__(self):
        self.result_ttl = result_ttl_of(self.result_ttl)
        self._broker: Broker | None = None
        self._results: Results | None = None
        self.task(name=PING_TASK)(_ping)  # every app answers it: `qdeploy verify`'s round trip

    def __hash__(self):
        return id(self)

    def configure(self, **settings) -> App:
        """Change settings (e.g. the broker URL from `-b`) before anything connected."""
        for key, value in settings.items():
            if not hasattr(self, key) or key == "tasks":
                raise TypeError(f"unknown App setting {key!r}")
            setattr(self, key, result_ttl_of(value) if key == "result_ttl" else value)
        self._broker = self._results = None
        return self

    # -- connections -------------------------------------------------------------------------
    @property
    def broker_url(self) -> str:
        """`broker=`, else $QDEPLOY_BROKER, else the default (qdeploy.defaults.broker_url)."""
        return defaults.broker_url(self.broker)

    def connect_broker(self, retries: int = 2, client=None) -> Broker:
        """A Broker with this app's settings (over `client`, if given)."""
        return Broker(self.broker_url, self.namespace, result_ttl=self.result_ttl, retries=retries,
                      dead_letter_max=self.dead_letter_max, client=client)

    @property
    def transport(self) -> Broker:
        """The producer's broker (lazily connected, shared)."""
        if self._broker is None:
            self._broker = self.connect_broker()
        return self._broker

    def results_for(self, broker: Broker) -> Results:
        if self.result_backend in (None, self.broker_url):
            return Results(broker.client, self.namespace, self.result_ttl, colocated=True)
        return Results(connect(self.result_backend), self.namespace, self.result_ttl, False)

    @property
    def results(self) -> Results:
        if self._results is None:
            self._results = self.results_for(self.transport)
        return self._results

    # -- tasks -------------------------------------------------------------------------------
    def task(self, fn: Callable | None = None, **options):
        """`@app.task` or `@app.task(name=..., queue=..., bind=True, ...)`."""
        def register(func: Callable) -> Task:
            task = Task(self, func, **options)
            self.tasks[task.name] = task
            return task
        return register(fn) if fn is not None else register

    def add_periodic_task(self, schedule, task: Task | str, args=(), kwargs=None,
                          name: str | None = None, **options) -> str:
        """Celery's `app.add_periodic_task(30.0, task, args=(1, 2), name=..., queue=...)`: an entry
        in `app.conf.beat_schedule` (validated when `qdeploy beat` starts); returns its name."""
        task_name = task.name if isinstance(task, Task) else task
        name = name or task_name
        self.conf.beat_schedule[name] = {"task": task_name, "schedule": schedule, "args": list(args),
                                         "kwargs": dict(kwargs or {}), "options": options}
        return name

    def periodic_task(self, schedule, *, args=(), kwargs=None, name: str | None = None,
                      options: dict | None = None, **task_options):
        """`@app.periodic_task("5m", args=(1,))`: register the task and schedule it."""
        def register(fn: Callable) -> Task:
            task = self.task(**task_options)(fn)
            self.add_periodic_task(schedule, task, args, kwargs, name=name, **(options or {}))
            return task
        return register

    def envelope(self, task: Task | str, args=(), kwargs=None, *, countdown: float | None = None,
                 eta=None, expires=None, queue: str | None = None, task_id: str | None = None,
                 max_retries: int | None = None, time_limit: float | None = None,
                 soft_time_limit: float | None = None, ignore_result: bool | None = None,
                 retries: int = 0) -> message.Envelope:
        """Build (without sending) the envelope `apply_async` would send."""
        known = task if isinstance(task, Task) else self.tasks.get(task)  # None: sent by name only
        name = known.name if known else task
        eta = _timestamp(eta)
        if countdown is not None:
            eta = time.time() + message.check_number("countdown", countdown)  # type: ignore[operator]
        expires = expires if expires is not None else (known.expires if known else None)
        if expires is not None:  # a datetime, or seconds from now (as in Celery)
            expires = _timestamp(expires) if isinstance(expires, datetime) else (
                time.time() + message.check_number("expires", expires))  # type: ignore[operator]
        limits = {}
        for key, value, default in (("hard", time_limit, "time_limit"),
                                    ("soft", soft_time_limit, "soft_time_limit")):
            value = value if value is not None else (getattr(known, default) if known else None)
            if value is not None:
                limits[key] = value
        return message.build(
            name, args, kwargs, task_id=task_id, eta=eta, expires=expires,  # type: ignore[arg-type]
            queue=queue or (known.queue if known else None) or self.default_queue,
            retries=retries, max_retries=max_retries, limits=limits,
            ignore_result=ignore_result if ignore_result is not None else (
                known.ignore_result if known else False))

    def send_many(self, calls: Iterable[tuple]) -> list[AsyncResult]:
        """Enqueue many tasks in pipelined round trips: items are (task_or_name, args, kwargs)
        or (task_or_name, args, kwargs, options)."""
        options_retry, items, out = None, [], []
        for call in calls:
            task, args, kwargs, *rest = call
            options = dict(rest[0]) if rest else {}
            retry, policy = options.pop("retry", True), options.pop("retry_policy", None)
            options_retry = (retry, policy)
            env = self.envelope(task, args, kwargs, **options)
            items.append((env.id, env.queue, env.eta, message.encode(env)))
            out.append(AsyncResult(env.id, self))
        retry, policy = options_retry or (True, None)
        self._publish(items, retry, policy or {})
        return out

    def _publish(self, items: list, retry: bool, policy: dict) -> None:
        attempts = int(policy.get("max_retries", 3)) if retry else 0
        interval = float(policy.get("interval_start", 0.0))
        for attempt in range(attempts + 1):
            try:
                return self.transport.publish(items)
            except BROKER_DOWN:
                if attempt == attempts:
                    raise
                time.sleep(interval)
                interval = min(interval + float(policy.get("interval_step", 0.2)),
                               float(policy.get("interval_max", 1.0)))

    def send_task(self, name: str, args=None, kwargs=None, **options) -> AsyncResult:
        """Send by name; the task need not be registered in this process."""
        return self.send_many([(name, args or (), kwargs or {}, options)])[0]

    def AsyncResult(self, task_id: str) -> AsyncResult:
        return AsyncResult(task_id, self)

    def revoke(self, task_id: str) -> None:
        """Mark `task_id` so no consumer runs it (a running task is not interrupted)."""
        current = self.results.get(task_id)
        done = current is not None and current["state"] in results.READY_STATES
        rec = None if done else results.record(results.REVOKED, reason="revoked")
        self.transport.revoke(task_id, rec if self.results.colocated else None)
        if rec and not self.results.colocated:
            self.results.store(task_id, rec)


class Conf:
    """Celery-style `app.conf`: `beat_schedule`, `timezone`, `enable_utc` (read by `qdeploy beat`);
    other attributes are kept but unused."""

    def __init__(self, **settings):
        self.beat_schedule: dict = {}
        self.timezone: str | None = None
        self.enable_utc: bool = True
        self.update(**settings)

    def update(self, mapping: dict | None = None, **settings) -> None:
        for key, value in {**(mapping or {}), **settings}.items():
            setattr(self, key, value)


class AppImportError(ValueError):
    """`module:attribute` does not name an importable qdeploy App; one line for the operator."""


def load_app(path: str) -> App:
    """Import `module:attribute` (attribute defaults to `app`) and check it is an App."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or the module itself raising while importing
        raise AppImportError(f"cannot import app {path!r}: {type(exc).__name__}: {exc}") from None
    app = getattr(module, attr or "app", None)
    if not isinstance(app, App):
        raise AppImportError(f"{path!r} is not a qdeploy App (expected 'module:attribute')")
    return app
