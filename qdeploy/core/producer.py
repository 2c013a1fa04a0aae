"""Building and sending messages: `apply_async`'s options -> an envelope -> Redis, with
Celery's `before_task_publish` / `after_task_publish` around it.

`App.envelope` and `App.send_many` are the public face of this module; canvas plans (chains,
chords) come here as calls plus `ChordInit`s, which are written in the same MULTI as the
first chunk of messages, so no header task can finish before its chord exists.
"""

from __future__ import annotations

import difflib
import time
import warnings
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from qdeploy.core import message, signals
from qdeploy.core.connection import BROKER_DOWN
from qdeploy.core.results import AsyncResult
from qdeploy.core.task import Task, check_serializer
from qdeploy.core.task import _current as _running
from qdeploy.core.unique import unique_key

if TYPE_CHECKING:
    from qdeploy.core.app import App
    from qdeploy.core.workflow import ChordInit

# Every option apply_async takes (and a signature may carry). The internal ones (chain, chord,
# group_id, group_index, parent_id, root_id, errback) are set by canvas and the worker.
OPTIONS = frozenset({
    "countdown", "eta", "expires", "queue", "task_id", "max_retries", "time_limit", "soft_time_limit",
    "ignore_result", "retries", "headers", "link", "link_error", "serializer", "retry", "retry_policy",
    "priority", "unique_for", "chain", "chord", "group_id", "group_index", "parent_id", "root_id",
    "errback", "immutable", "add_to_parent", "shadow",
})
IGNORED = {"priority": "queues are FIFO: send urgent tasks to their own queue",
           "shadow": "the log line shows the task's name"}
_NO_OPTIONS: dict = {}  # a call without options (never written to)
# The header names Celery's protocol 2 gives `before_task_publish` receivers.
HEADER_NAMES = frozenset({"lang", "task", "id", "eta", "expires", "group", "group_index", "retries",
                          "timelimit", "root_id", "parent_id", "origin", "ignore_result"})


def zone(app: App | None):
    """The time zone a naive datetime is read in: UTC (Celery's `enable_utc`, the default),
    else `app.conf.timezone` (or the local zone when that is unset)."""
    conf = app.conf if app is not None else None
    if conf is None or getattr(conf, "enable_utc", True):
        return UTC
    name = getattr(conf, "timezone", None)
    if not name:
        return None  # datetime.timestamp() reads a naive value as local time
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"app.conf.timezone {name!r} is not a time zone name such as 'Asia/Shanghai'") from None


def timestamp(value: datetime | float | None, app: App | None = None) -> float | None:
    """A datetime (aware, or naive in `zone(app)`) or a unix time -> a unix time."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            tz = zone(app)
            if tz is not None:
                value = value.replace(tzinfo=tz)
        return value.timestamp()
    return value


def check_option_names(options: dict) -> None:
    for name in options:
        if name not in OPTIONS:
            close = difflib.get_close_matches(str(name), sorted(OPTIONS), n=1)
            raise TypeError(f"unknown apply_async option {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))


def signature_list(value: Any, what: str, app: App | None) -> list:
    """link=/link_error=: one signature or a list of them -> a list of JSON signatures."""
    from qdeploy.core.canvas import Signature, to_json

    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if isinstance(item, Task):
            raise TypeError(f"{what}= takes signatures: use {str(item.name).rsplit('.', 1)[-1]}.s() (or .si()), not the task")
        if not isinstance(item, dict):
            raise TypeError(f"{what}= takes a signature or a list of them, not {type(item).__name__}")
        out.append(to_json(item if isinstance(item, Signature) else Signature.from_dict(item, app), app))
    return out


def build(app: App, task: Task | str, args=(), kwargs=None, *, countdown: float | None = None,
          eta=None, expires=None, queue: str | None = None, task_id: str | None = None,
          max_retries: int | None = None, time_limit: float | None = None,
          soft_time_limit: float | None = None, ignore_result: bool | None = None,
          retries: int = 0, headers: dict | None = None, link=None, link_error=None,
          serializer: str | None = None, chain: list | None = None, chord: dict | None = None,
          group_id: str | None = None, group_index: int | None = None, parent_id: str | None = None,
          root_id: str | None = None, errback: dict | None = None, unique: str | None = None,
          add_to_parent: bool = True, **ignored) -> message.Envelope:
    """Build (without sending) the envelope `apply_async` would send. (On every `delay`: the
    common case, a plain call, takes no detour through the v2 options.)"""
    if ignored:
        for option in ignored:
            if option in IGNORED:
                warnings.warn(f"apply_async option {option}= is ignored by qdeploy: {IGNORED[option]}", stacklevel=4)
            elif option not in ("retry", "retry_policy", "unique_for", "immutable"):
                check_option_names({option: None})
    if serializer is not None:
        check_serializer(serializer)
    known = task if isinstance(task, Task) else app.tasks.get(task)  # None: sent by name only
    name: Any = known.name if known else task
    if eta is not None:
        eta = timestamp(eta, app)
    if countdown is not None:
        eta = time.time() + message.check_number("countdown", countdown)  # type: ignore[operator]
    if expires is None and known is not None:
        expires = known.expires
    if expires is not None:  # a datetime, or seconds from now (as in Celery)
        expires = timestamp(expires, app) if isinstance(expires, datetime) else (
            time.time() + message.check_number("expires", expires))  # type: ignore[operator]
    if known is not None:
        time_limit = known.time_limit if time_limit is None else time_limit
        soft_time_limit = known.soft_time_limit if soft_time_limit is None else soft_time_limit
        ignore_result = known.ignore_result if ignore_result is None else ignore_result
    limits = {}
    if time_limit is not None:
        limits["hard"] = time_limit
    if soft_time_limit is not None:
        limits["soft"] = soft_time_limit
    stack = getattr(_running, "stack", None) if add_to_parent and parent_id is None else None
    parent = stack[-1] if stack else None  # the task this one is sent from, if any
    if parent is not None and parent.id is not None:
        parent_id, root_id = parent.id, root_id or parent.root_id or parent.id
    else:
        parent = None
    queue = (queue or (known.queue if known else None)  # the call, the task, then task_routes
             or (app.route(name, args, kwargs, {}, known) if getattr(app, "router", None) is not None else None)
             or app.default_queue)
    if not (headers or link is not None or link_error is not None or chain or chord or group_id or parent_id
            or root_id or errback or unique or group_index is not None):
        return message.build(name, args, kwargs, task_id=task_id, eta=eta, expires=expires, queue=queue,
                             retries=retries, max_retries=max_retries, limits=limits,
                             ignore_result=ignore_result if ignore_result is not None else False)
    if headers is not None and not isinstance(headers, dict):
        raise TypeError(f"headers must be a dict, not {type(headers).__name__}")
    env = message.build(
        name, args, kwargs, task_id=task_id, eta=eta, expires=expires, queue=queue,
        retries=retries, max_retries=max_retries, limits=limits,
        ignore_result=ignore_result if ignore_result is not None else False,
        headers=dict(headers) if headers else None, parent_id=parent_id, root_id=root_id,
        group=group_id, group_index=group_index, callbacks=signature_list(link, "link", app) or None,
        errbacks=signature_list(link_error, "link_error", app) or None, chain=chain or None,
        chord=chord, errback=errback, unique=unique)
    if parent is not None:
        parent.children.append(env.id)
    return env


def celery_headers(env: message.Envelope) -> dict:
    """What Celery's `before_task_publish` receivers find in `headers` (protocol 2 names)."""
    return {"lang": "py", "task": env.task, "id": env.id, "eta": env.eta, "expires": env.expires,
            "group": env.group, "group_index": env.group_index, "retries": env.retries,
            "timelimit": [env.limits.get("hard"), env.limits.get("soft")], "root_id": env.root_id,
            "parent_id": env.parent_id, "origin": env.origin, "ignore_result": env.ignore_result,
            **(env.headers or {})}


def encode(app: App, env: message.Envelope, protocol: int | None = None) -> str:
    protocol = protocol or app.conf.fast("task_protocol", 2)
    if protocol == 1:  # workers of the previous release still run: write v1 or refuse
        env.parent_id = env.root_id = None
    return message.encode(env, version=protocol)


def send_many(app: App, calls: Iterable[tuple], chords: list[ChordInit] | None = None) -> list[AsyncResult]:
    """Enqueue many tasks in pipelined round trips: items are (task_or_name, args, kwargs)
    or (task_or_name, args, kwargs, options). A unique send (`unique_for=`) is published on its
    own, in one script that first looks for a live duplicate."""
    retry, policy, items, out, envs = True, None, [], [], []
    publishing = signals.before_task_publish.has_receivers
    # the envelopes are kept for after_task_publish only: 20k of them alive until the end would
    # make the garbage collector's young-generation passes ~10 % of a batched send's cost
    published = signals.after_task_publish.has_receivers
    protocol = app.conf.fast("task_protocol", 2)
    for call in calls:
        task, args, kwargs, *rest = call
        if rest:
            options = dict(rest[0])
            retry, policy = options.pop("retry", True), options.pop("retry_policy", None)
            unique_for = options.pop("unique_for", None)
        else:  # Task.map, chunks...: nothing to copy or look up
            options, retry, policy, unique_for = _NO_OPTIONS, True, None, None
        if unique_for is None and isinstance(task, Task):
            unique_for = task.unique_for
        if unique_for is not None:
            options = {**options, "unique": unique_key(app, task, args, kwargs, unique_for)}
        env = build(app, task, args, kwargs, **options) if options else build(app, task, args, kwargs)
        if publishing:
            before_publish(env, policy)
        body = message.encode(env) if protocol != 1 else encode(app, env, 1)
        if env.unique is not None:
            first = app.transport.publish_unique(env.id, env.queue, env.eta, body, env.unique, unique_for)
            out.append(AsyncResult(first or env.id, app))
            if first is None and published:
                envs.append(env)
            continue
        items.append((env.id, env.queue, env.eta, body))
        if published:
            envs.append(env)
        out.append(AsyncResult(env.id, app))
    prelude = [command for chord in chords for command in chord.commands(app)] if chords else ()
    if items or prelude:
        publish(app, items, prelude, retry, policy or {})
    if published:  # a chord's body too: it is in Redis now, waiting
        for env in [*envs, *(chord.body for chord in chords or ())]:
            signals.after_task_publish.send(sender=env.task, body=(env.args, env.kwargs, _embed(env)),
                                            exchange="", routing_key=env.queue, headers=celery_headers(env))
    return out


def _embed(env: message.Envelope) -> dict:
    return {"callbacks": env.callbacks or None, "errbacks": env.errbacks or None,
            "chain": env.chain or None, "chord": env.chord}


def before_publish(env: message.Envelope, policy) -> None:
    """Receivers may add headers (tracing ids...): those travel in the message."""
    headers = celery_headers(env)
    signals.before_task_publish.send(sender=env.task, body=(env.args, env.kwargs, _embed(env)), exchange="",
                                     routing_key=env.queue, headers=headers, properties={},
                                     declare=[], retry_policy=policy)
    extra = {k: v for k, v in headers.items() if k not in HEADER_NAMES}
    if extra != (env.headers or {}):
        env.headers = extra


def publish(app: App, items: list, prelude: list | tuple, retry: bool, policy: dict) -> None:
    """Publish with Celery's retry policy (max_retries, interval_start/step/max) on a broker
    connection error."""
    attempts = int(policy.get("max_retries", 3)) if retry else 0
    interval = float(policy.get("interval_start", 0.0))
    for attempt in range(attempts + 1):
        try:
            return app.transport.publish(items, prelude=prelude)
        except BROKER_DOWN:
            if attempt == attempts:
                raise
            time.sleep(interval)
            interval = min(interval + float(policy.get("interval_step", 0.2)), float(policy.get("interval_max", 1.0)))
