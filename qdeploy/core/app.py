"""The producer-side API: `App` (Celery's `Celery`), `@app.task`, `send_task`, `load_app()`.

    app = App("proj", broker="redis://127.0.0.1:6379/0")    # or Celery('proj', broker=..., backend=...)

    @app.task(max_retries=5, retry_backoff=True, autoretry_for=(IOError,))
    def fetch(url): ...

    fetch.delay("https://example.org").get(timeout=10)

Tasks are `qdeploy.core.task.Task` subclasses (base class, hooks, `self.request`); messages are
built and sent by `qdeploy.core.producer`; workflows live in `qdeploy.core.canvas`.
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qdeploy import defaults
from qdeploy.core import message, producer, results
from qdeploy.core.broker import Broker, result_ttl_of
from qdeploy.core.config import Conf, ConfigurationError, check_transport
from qdeploy.core.connection import connect
from qdeploy.core.results import AsyncResult, Results
from qdeploy.core.signals import Signal
from qdeploy.core.task import (  # noqa: F401 - re-exported: their historical home
    MaxRetriesExceededError,
    Request,
    Retry,
    SoftTimeLimitExceeded,
    Task,
    TimeLimitExceeded,
    backoff,
    make_task,
    parse_rate,
)
from qdeploy.core.urls import BrokerURL, BrokerURLError

TaskType = Task  # for annotations inside App, where `Task` is the property
PING_TASK = "qdeploy.ping"
STARMAP_TASK = "qdeploy.starmap"
timestamp = producer.timestamp
_apps: list[weakref.ref] = []  # the apps of this process, newest last (Celery's current app)


def _ping() -> str:
    return "pong"


def current_app() -> App | None:
    """The newest App of this process (the one a worker loaded), as Celery's `current_app`."""
    while _apps:
        app = _apps[-1]()
        if app is not None:
            return app
        _apps.pop()
    return None


def all_apps() -> list[App]:
    """Every live App of this process, oldest first (each once)."""
    seen: dict[int, App] = {}
    for ref in list(_apps):
        app = ref()
        if app is not None:
            seen.setdefault(id(app), app)
    return list(seen.values())


def _result_backend(value: Any, where: str) -> str | None:
    """`backend=` / `result_backend=`: a Redis URL (maybe another server than the broker)."""
    if value is None:
        return None
    try:
        return BrokerURL.parse(value).url
    except BrokerURLError as exc:
        raise ValueError(f"{where}: qdeploy keeps results in Redis only; expected a redis://, rediss://, "
                         f"unix://, sentinel:// or sentinels:// URL (or none: results stay in the broker's "
                         f"Redis), got {str(exc).partition(': ')[2] or exc}") from None


@dataclass(eq=False)
class App:
    """A registry of tasks plus the connection settings they are sent with. Celery's
    constructor works: `App('proj', broker=..., backend=..., include=[...], task_cls=...)`."""

    main: str | None = None
    broker: str | None = None
    result_backend: str | None = None  # None: results live in the broker's Redis
    namespace: str = "qdeploy"
    result_ttl: int = 86400
    default_queue: str = "default"
    visibility_timeout: float = 30.0
    max_deliveries: int = 5
    dead_letter_max: int = 10000
    track_started: bool = False
    tasks: dict[str, TaskType] = field(default_factory=dict)
    conf: Conf = field(default_factory=lambda: Conf())
    backend: str | None = None  # Celery's name for result_backend
    include: list[str] = field(default_factory=list)  # modules the worker and beat import
    task_cls: Any = None  # the default base class of the app's tasks (app.Task)

    def __post_init__(self):
        self.result_ttl = result_ttl_of(self.result_ttl)
        backend = _result_backend(self.backend, "backend")
        result_backend = _result_backend(self.result_backend, "result_backend")
        if backend and result_backend and backend != result_backend:
            raise ValueError("backend= and result_backend= name the same setting: give one")
        self.result_backend = self.backend = result_backend or backend
        if isinstance(self.include, str) or not all(isinstance(m, str) for m in self.include):
            raise TypeError(f"include must be a list of module names, not {self.include!r}")
        self.include = list(self.include)
        if self.broker is not None:
            check_transport(self.broker, "broker=")
        self._broker: Broker | None = None
        self._results: Results | None = None
        self._task_base: type | None = None
        self._finalized = False
        self.router = None  # qdeploy.core.routing.Router, from task_routes
        self._task_defaults: dict[str, Any] = {}  # task.<attr> settings (task_acks_late...)
        self._autodiscover: list[tuple[Any, str]] = []
        self._fixups: list = []
        for key, arg, value in (("broker_url", "broker", self.broker), ("result_backend", "backend", self.result_backend),
                                ("include", "include", self.include or None)):
            if value is not None:
                self.conf._store(key, value, f"{type(self).__name__}({self.main or ''!r}, {arg}=...)")
        self.conf._bind(self)
        self.on_after_configure = Signal("on_after_configure", ("source",))
        self.on_after_finalize = Signal("on_after_finalize")
        self.task(name=PING_TASK)(_ping)  # every app answers it: `qdeploy verify`'s round trip
        from qdeploy.core.workflow import builtin_starmap

        self.task(name=STARMAP_TASK)(builtin_starmap(self))
        _apps.append(weakref.ref(self))
        from qdeploy.core.shared import bind_all

        bind_all(self)  # @shared_task functions declared before this app

    def __hash__(self):
        return id(self)

    def __repr__(self) -> str:
        return f"<App {self.main}:{self.namespace}>"

    def configure(self, **settings) -> App:
        """Change settings (e.g. the broker URL from `-b`) before anything connected."""
        for key, value in settings.items():
            if not hasattr(self, key) or key == "tasks":
                raise TypeError(f"unknown App setting {key!r}")
            if key in ("backend", "result_backend"):
                self.result_backend = self.backend = _result_backend(value, key)
                self.conf._store("result_backend", self.result_backend, f"app.configure({key}=...)")
                continue
            if key == "broker":
                check_transport(value, "broker")
                self.conf._store("broker_url", value, "app.configure(broker=...)")
            setattr(self, key, result_ttl_of(value) if key == "result_ttl" else value)
        self._broker = self._results = None
        return self

    # -- configuration (Celery's app.conf, config_from_object) --------------------------------
    def config_from_object(self, obj: Any, namespace: str | None = None, force: bool = False,
                           silent: bool = False) -> None:
        """Celery's: settings from a module (`'proj.celeryconfig'`), `'module:attr'`, Django's
        `'django.conf:settings'` (with `namespace='CELERY'`: its CELERY_* settings), a class or
        a dict. Each is checked now; a wrong one raises ConfigurationError (one line)."""
        from qdeploy.core import celery_settings as cs
        from qdeploy.core import config as config_mod

        where = obj if isinstance(obj, str) else f"config_from_object({type(obj).__name__})"
        if namespace is not None and (not isinstance(namespace, str) or not namespace.strip("_").isidentifier()):
            raise ConfigurationError(f"config_from_object({where!r}): namespace must be a name like 'CELERY', "
                                     f"not {namespace!r}")
        try:
            loaded = config_mod.load_object(obj)
            items = config_mod.items_of(loaded, namespace, where)
        except ConfigurationError:
            if silent:
                return
            raise
        prefix = f"{namespace.rstrip('_')}_" if namespace else ""
        for key, value in items.items():
            written = key if key.startswith(prefix) else prefix + key
            self.conf.set(key, value, f"{where}: {written}")
            if prefix and cs.canonical(key) is None:
                close = cs.suggestion(key)
                self.conf.add_note(key, f"{where}: {written} is not a Celery setting qdeploy knows"
                                   + (f" (did you mean {prefix}{close.upper()}?)" if close else "")
                                   + "; it is kept but unused")

    def _setting_changed(self, attr: str, value: Any, key: str) -> None:
        """app.conf changed an App attribute (qdeploy.core.celery_settings' `app.<attr>` targets)."""
        from qdeploy.core.config import result_store_url

        if attr == "broker":
            if value is not None:
                check_transport(value, "")
            self.broker = value
        elif attr == "result_backend":
            self.result_backend = self.backend = _result_backend(result_store_url(value), key)
        elif attr == "default_queue":
            self.default_queue = value
        elif attr == "routes":
            from qdeploy.core.routing import Router

            self.router = Router(value) if value else None
        elif attr == "result_ttl":
            self.result_ttl = result_ttl_of(int(value) if value else 0)
        elif attr == "track_started":
            self.track_started = bool(value)
            self._task_default_changed("track_started", bool(value))
        elif attr == "include":
            self.include += [m for m in value if m not in self.include]
        elif attr == "transport_options":
            if value.get("visibility_timeout"):
                self.visibility_timeout = float(value["visibility_timeout"])
        self._broker = self._results = None

    def _task_default_changed(self, attr: str, value: Any) -> None:
        if value is None:
            self._task_defaults.pop(attr, None)
        else:
            self._task_defaults[attr] = value
        for task in list(self.tasks.values()):
            self._apply_task_defaults(task, attr)

    def _apply_task_defaults(self, task: TaskType, only: str | None = None) -> None:
        """The app's task_* settings as defaults of `task`, unless its class sets the option."""

        own = task.__dict__.setdefault("_from_conf", set())
        classes = [c for c in type(task).__mro__ if c not in (Task, object)]
        for attr in [only] if only else list(self._task_defaults):
            if any(attr in vars(c) for c in classes) or (attr in task.__dict__ and attr not in own
                                                         and attr != "track_started"):
                continue  # the task (or its base class) says
            if attr in self._task_defaults:
                setattr(task, attr, self._task_defaults[attr])
                own.add(attr)
            elif attr in own:
                delattr(task, attr)
                own.discard(attr)
            if attr == "rate_limit":
                task.rate = parse_rate(task.rate_limit)

    def autodiscover_tasks(self, packages=None, related_name: str = "tasks", force: bool = False) -> None:
        """Celery's: import `<package>.<related_name>` for each package (a list, or a function
        giving one); with none, the packages of Django's INSTALLED_APPS. Done when the worker or
        beat loads the app (or now, with force=True). A package without the module is skipped."""
        if packages is not None and not callable(packages) and (
                isinstance(packages, str) or not all(isinstance(p, str) for p in packages)):
            raise TypeError(f"autodiscover_tasks takes a list of package names, not {packages!r}")
        if not isinstance(related_name, str) or not related_name.isidentifier():
            raise TypeError(f"related_name must be a module name such as 'tasks', not {related_name!r}")
        self._autodiscover.append((packages if packages is None or callable(packages) else list(packages),
                                   related_name))
        if force or self._finalized:
            self._import_related()

    def _import_related(self) -> None:
        from qdeploy.core import discovery

        for package, related_name in discovery.related_modules(self):
            try:
                discovery.import_related(package, related_name)
            except Exception as exc:  # noqa: BLE001 - the tasks module raising while importing
                raise AppImportError(f"cannot import {package}.{related_name} (autodiscover_tasks of app "
                                     f"{self.main!r}): {type(exc).__name__}: {exc}") from None

    def set_default(self) -> None:
        """Celery's: make this app the current one (what @shared_task tasks use)."""
        _apps.append(weakref.ref(self))

    def route(self, name: str, args=(), kwargs=None, options: dict | None = None, task=None) -> str | None:
        """The queue task_routes gives `name`, or None."""
        if self.router is None:
            return None
        return self.router.route(name, args, kwargs or {}, options or {}, task)

    # -- the task base class (Celery's app.Task) -------------------------------------------------
    @property
    def Task(self) -> type:
        """The base class of this app's tasks: `task_cls` (`app.Task = MyBase` sets it) bound to
        this app, so `class MyTask(app.Task)` knows its app."""
        if self._task_base is None:
            base = self.task_cls or Task
            if isinstance(base, str):
                module, _, name = base.partition(":")
                base = getattr(importlib.import_module(module), name or "Task")
            if not (isinstance(base, type) and issubclass(base, Task)):
                raise TypeError(f"app.Task must be a qdeploy Task subclass, not {base!r}")
            self._task_base = type(base.__name__, (base,), {"app": self, "__module__": base.__module__,
                                                            "__qualname__": base.__qualname__})
        return self._task_base

    @Task.setter
    def Task(self, base) -> None:
        self.task_cls, self._task_base = base, None

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
            return Results(broker.client, self.namespace, self.result_ttl, colocated=True, hot=broker.fast)
        return Results(connect(self.result_backend), self.namespace, self.result_ttl, False)

    @property
    def results(self) -> Results:
        if self._results is None:
            self._results = self.results_for(self.transport)
        return self._results

    # -- tasks -------------------------------------------------------------------------------
    def task(self, fn: Callable | None = None, **options):
        """`@app.task` or `@app.task(name=..., base=..., bind=True, queue=..., ...)`."""
        def register(func: Callable) -> TaskType:
            if isinstance(func, Task):
                raise TypeError(f"{func.name} is a task already: put @app.task last (outermost)")
            task = make_task(self, func, options.pop("base", None), **options)
            self.tasks[task.name] = task  # type: ignore[index]
            if self._task_defaults:
                self._apply_task_defaults(task)
            return task
        return register(fn) if fn is not None else register

    def register_task(self, task: TaskType | type) -> TaskType:
        """A class-based task (`class Add(app.Task): name = 'add'; def run(self, x, y)`)."""
        if isinstance(task, type):
            task = task()
        if not isinstance(task, Task):
            raise TypeError(f"register_task takes a Task, not {type(task).__name__}")
        if not hasattr(task, "_hooks"):  # a subclass whose __init__ did not call Task's
            Task.__init__(task)
        if not task.name:
            task.name = f"{type(task).__module__}.{type(task).__name__}"
        task.bind_app(self)
        self.tasks[task.name] = task
        if self._task_defaults:
            self._apply_task_defaults(task)
        return task

    def signature(self, name: str, args=None, kwargs=None, **options):
        from qdeploy.core.canvas import Signature

        return Signature(name, args, kwargs, options, app=self)

    def add_periodic_task(self, schedule, task: Any, args=(), kwargs=None, name: str | None = None,
                          **options) -> str:
        """Celery's `app.add_periodic_task(30.0, test.s('hello'), name=..., expires=...)`: an entry
        in `app.conf.beat_schedule` (validated when `qdeploy beat` starts); returns its name."""
        from qdeploy.core.canvas import Signature

        if isinstance(task, Signature):
            sig = task.clone(args, kwargs)
            args, kwargs, name = sig.args, sig.kwargs, name or repr(sig)  # Celery's default name
            options = {**{k: v for k, v in sig.options.items() if k != "task_id"}, **options}
            task = sig.task
        task_name = task.name if isinstance(task, Task) else task
        name = name or str(task_name)
        self.conf.beat_schedule[name] = {"task": task_name, "schedule": schedule, "args": list(args),
                                         "kwargs": dict(kwargs or {}), "options": options}
        return name

    def periodic_task(self, schedule, *, args=(), kwargs=None, name: str | None = None,
                      options: dict | None = None, **task_options):
        """`@app.periodic_task("5m", args=(1,))`: register the task and schedule it."""
        def register(fn: Callable) -> TaskType:
            task = self.task(**task_options)(fn)
            self.add_periodic_task(schedule, task, args, kwargs, name=name, **(options or {}))
            return task
        return register

    # -- start-up (worker, beat) -----------------------------------------------------------------
    def import_includes(self) -> None:
        """What Celery's worker and beat do at start: install the fixups (Django's), import the
        modules of `include=`/`imports` and those autodiscover_tasks() asked for."""
        from qdeploy.core import discovery

        if not self._fixups:
            try:
                self._fixups = discovery.install_fixups(self) or [None]
            except Exception as exc:  # noqa: BLE001 - django.setup() failing: bad settings, an app that raises
                raise AppImportError(f"app {self.main!r}: setting up Django failed: {type(exc).__name__}: {exc}") from None
        self._import_related()
        for module in self.include:
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - ImportError, or the module raising while importing
                raise AppImportError(f"cannot import {module!r} (in include= of app {self.main!r}): "
                                     f"{type(exc).__name__}: {exc}") from None

    def finalize(self) -> None:
        """Once: send `on_after_configure` then `on_after_finalize` (sender: this app), so their
        receivers (`sender.add_periodic_task(...)`) run before beat reads the schedule."""
        if self._finalized:
            return
        self._finalized = True
        self.on_after_configure.send(sender=self, source=self.conf)
        self.on_after_finalize.send(sender=self)

    # -- sending -----------------------------------------------------------------------------
    def envelope(self, task: TaskType | str, args=(), kwargs=None, **options) -> message.Envelope:
        """Build (without sending) the envelope `apply_async` would send."""
        return producer.build(self, task, args, kwargs, **options)

    # Enqueue many tasks in pipelined round trips: items are (task_or_name, args, kwargs) or
    # (task_or_name, args, kwargs, options). The function itself (every `delay` goes through it).
    send_many = producer.send_many

    def send_task(self, name: str, args=None, kwargs=None, **options) -> AsyncResult:
        """Send by name; the task need not be registered in this process."""
        if not isinstance(name, str):
            raise TypeError(f"send_task takes a task name, not {type(name).__name__}")
        return self.send_many([(name, args or (), kwargs or {}, options)])[0]

    def AsyncResult(self, task_id: str, **kwargs) -> AsyncResult:
        return AsyncResult(task_id, self, **kwargs)

    @property
    def GroupResult(self) -> type:
        """GroupResult bound to this app: `app.GroupResult(id, results)`, `.restore(id)`."""
        from qdeploy.core.groupresult import bound_to

        return bound_to(self)

    def revoke(self, task_id: str, terminate: bool = False) -> None:
        """Mark `task_id` so no consumer runs it; with `terminate`, the worker running it now
        kills the child that runs it (over the control channel)."""
        current = self.results.get(task_id)
        done = current is not None and current["state"] in results.READY_STATES
        rec = None if done else results.record(results.REVOKED, reason="revoked")
        self.transport.revoke(task_id, rec if self.results.colocated else None)
        if rec and not self.results.colocated:
            self.results.store(task_id, rec)
        if terminate and not done:
            from qdeploy.ops.control import Control  # operations, above core: only for terminate

            Control(self.transport).request("revoke", {"ids": [task_id], "terminate": True}, timeout=1.0)


class AppImportError(ValueError):
    """`module:attribute` does not name an importable qdeploy App; one line for the operator."""


def load_app(path: str) -> App:
    """Find the app `-A path` names as Celery does (`proj`, `proj.celery:app`, ...:
    qdeploy.core.discovery), import its `include=`/`imports`/autodiscovered modules and finalize
    it (on_after_configure / on_after_finalize)."""
    from qdeploy.core.discovery import AppNotFound, find_app

    try:
        app = find_app(path)
    except AppNotFound as exc:
        raise AppImportError(str(exc)) from None
    app.import_includes()
    _apps.append(weakref.ref(app))
    app.finalize()
    return app
