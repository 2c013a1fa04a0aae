"""Celery's `task_routes`: which queue a task goes to when neither the call (`queue=`) nor the
task (`@app.task(queue=...)`) says.

    app.conf.task_routes = {
        'feed.tasks.import_feed': {'queue': 'feeds'},      # a task name
        'media.*': 'media',                                # a glob pattern, a queue name
        re.compile(r'(video|image)\\.tasks\\..*'): {'queue': 'media'},
    }
    app.conf.task_routes = (route_task,)                   # def route_task(name, args, kwargs, options, task=None, **kw)
    app.conf.task_routes = ['proj.routers.route_task', {...}]

Routers are tried in order; the first that gives a queue wins (Celery's rule). A router result
is a queue name or a dict with `queue`; AMQP's `exchange`/`routing_key` alone are refused (there
are no exchanges here). Order of precedence for a send: `apply_async(queue=...)`, the task's
`queue`, the routes, `task_default_queue`.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
from collections.abc import Callable
from typing import Any

QUEUE = re.compile(r"[A-Za-z0-9_.:-]+")


class RouteError(ValueError):
    pass


def _queue_of(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        if "queue" not in value:
            keys = ", ".join(sorted(map(str, value))) or "nothing"
            raise RouteError(f"task_routes: {where} gives {keys} but no 'queue': qdeploy routes to queues only "
                             "(no exchanges or routing keys)")
        value = value["queue"]
        if isinstance(value, dict):  # Celery allows {'queue': Queue(...)}-like dicts with a name
            value = value.get("name")
    if not isinstance(value, str) or not QUEUE.fullmatch(value):
        raise RouteError(f"task_routes: {where} gives {value!r}, expected a queue name of letters, digits and _ . : -")
    return value


class MapRoute:
    """A dict of exact names, glob patterns and compiled regexes."""

    def __init__(self, table: dict):
        self.exact: dict[str, Any] = {}
        self.patterns: list[tuple[Any, Any]] = []
        for key, value in table.items():
            where = f"route {key!r}"
            _queue_of(value, where)  # checked now: a bad table is an error when it is set
            if isinstance(key, re.Pattern):
                self.patterns.append((key, value))
            elif isinstance(key, str) and any(c in key for c in "*?["):
                self.patterns.append((re.compile(fnmatch.translate(key)), value))
            elif isinstance(key, str):
                self.exact[key] = value
            else:
                raise RouteError(f"task_routes: key {key!r} must be a task name, a glob pattern or a re.compile()")

    def __call__(self, name, args, kwargs, options, task=None, **kw):
        if name in self.exact:
            return self.exact[name]
        for pattern, value in self.patterns:
            if pattern.match(name):
                return value
        return None


class Router:
    def __init__(self, routes: Any):
        if isinstance(routes, (dict, str)) or callable(routes):
            routes = [routes]
        self.routers: list[Any] = []
        for route in routes or ():
            if isinstance(route, dict):
                self.routers.append(MapRoute(route))
            elif isinstance(route, str) or callable(route):
                self.routers.append(route)  # a 'module.function' path is imported on first use
            else:
                raise RouteError(f"task_routes: {route!r} is neither a dict nor a router function")

    def _resolve(self, index: int) -> Callable:
        route = self.routers[index]
        if isinstance(route, str):
            module, sep, attr = route.partition(":")
            if not sep:
                module, _, attr = route.rpartition(".")
            try:
                route = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError, ValueError) as exc:
                raise RouteError(f"task_routes: cannot import router {self.routers[index]!r}: {exc}") from None
            if not callable(route):
                raise RouteError(f"task_routes: {self.routers[index]!r} is not callable")
            self.routers[index] = route
        return route

    def route(self, name: str, args, kwargs, options: dict, task=None) -> str | None:
        for index in range(len(self.routers)):
            router = self._resolve(index)
            value = router(name, args, kwargs, options, task=task)
            queue = _queue_of(value, f"router {getattr(router, '__name__', router)!r} for {name!r}")
            if queue:
                return queue
        return None
