"""Celery's `@shared_task`: a task declared without an app (a reusable app, Django's app1/tasks.py).

    from qdeploy import shared_task

    @shared_task
    def add(x, y):
        return x + y

The function is registered with every App of the process, those that exist and those created
later; `add` itself is a proxy for the task of the current app (`qdeploy.current_app()`: the
newest App, the one a worker loaded), so `add.delay(2, 2)` sends with that app's broker, as in
Celery. With no App at all, the first use makes a default one (broker from $QDEPLOY_BROKER).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_shared: list[tuple[Callable, dict]] = []
_lock = threading.Lock()


def shared_task(*args, **options):
    """`@shared_task` or `@shared_task(bind=True, name=..., base=..., ...)`."""
    def decorate(fn: Callable) -> SharedTask:
        from qdeploy.core.app import all_apps
        from qdeploy.core.task import Task

        if isinstance(fn, (Task, SharedTask)):
            raise TypeError("@shared_task is applied to a function: put it last (outermost)")
        if not callable(fn):
            raise TypeError(f"@shared_task needs a function, not {type(fn).__name__}")
        with _lock:
            _shared.append((fn, dict(options)))
        proxy = SharedTask(fn, options)
        for app in all_apps():
            register(app, fn, options)
        return proxy

    if len(args) == 1 and callable(args[0]) and not options:
        return decorate(args[0])
    if args:
        raise TypeError("@shared_task takes keyword options only, e.g. @shared_task(bind=True)")
    return decorate


def register(app, fn: Callable, options: dict):
    name = options.get("name") or f"{fn.__module__}.{getattr(fn, '__qualname__', fn.__class__.__name__)}"
    task = app.tasks.get(name)
    if task is not None and getattr(task, "fn", None) is fn:
        return task
    return app.task(**dict(options))(fn)


def bind_all(app) -> None:
    """A new App gets every shared task declared so far."""
    with _lock:
        declared = list(_shared)
    for fn, options in declared:
        register(app, fn, options)


class SharedTask:
    """The current app's task of a `@shared_task` function (attribute access and calls go to it)."""

    def __init__(self, fn: Callable, options: dict):
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_options", dict(options))
        object.__setattr__(self, "__wrapped__", fn)
        object.__setattr__(self, "__doc__", fn.__doc__)
        object.__setattr__(self, "__name__", getattr(fn, "__name__", "task"))
        object.__setattr__(self, "__module__", getattr(fn, "__module__", None))

    def _get_current_object(self):
        from qdeploy.core.app import App, current_app

        app = current_app() or App("default")
        return register(app, self._fn, self._options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get_current_object(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._get_current_object(), name, value)

    def __call__(self, *args, **kwargs):
        return self._get_current_object()(*args, **kwargs)

    def __repr__(self) -> str:
        return repr(self._get_current_object())
