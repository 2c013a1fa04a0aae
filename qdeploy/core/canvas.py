"""Signatures and workflows, with Celery's names: `signature`, `chain` (`|`), `group`, `chord`,
`chunks`.

    add.s(2, 2) | add.s(4) | mul.s(8)          # chain: each step gets the previous result first
    group(add.s(i, i) for i in range(10))()    # GroupResult
    chord(add.s(i, i) for i in range(10))(tsum.s())

A signature is a dict (Celery's JSON form: task, args, kwargs, options, subtask_type,
immutable), so it travels in a message as it is. Sending one is `plan()` then publish: ids are
given out first (`freeze`), so every result handle is known before anything runs, and the
worker continues a workflow from what the message carries (docs/protocol.md, "Workflows").
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qdeploy.core.app import App
    from qdeploy.core.results import AsyncResult, GroupResult
    from qdeploy.core.task import Task

STARMAP = "qdeploy.starmap"  # the built-in task a chunk runs


class ChordError(Exception):
    """A chord's header task failed: its body is not run (Celery's ChordError)."""


def _app_of(app: App | None) -> App:
    from qdeploy.core.app import current_app

    found = app or current_app()
    if found is None:
        raise RuntimeError("no qdeploy App exists yet: create one (App(...)) before sending signatures")
    return found


class Signature(dict):
    """One task call with its arguments and options, to be sent, linked or composed."""

    def __init__(self, task: Any = None, args=None, kwargs=None, options=None, subtask_type=None,
                 immutable: bool = False, app: App | None = None, **ex):
        if isinstance(task, dict) and not isinstance(task, Signature):
            raise TypeError("use Signature.from_dict(d) (or qdeploy.signature(d)) for a dict")
        name = getattr(task, "name", task)
        if not isinstance(name, str):
            raise TypeError(f"a signature names a task (a string or a task), not {type(task).__name__}")
        if isinstance(args, (str, bytes, dict)) or (args is not None and not hasattr(args, "__iter__")):
            raise TypeError(f"args must be a list or tuple, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict, not {type(kwargs).__name__}")
        options = {**(options or {}), **ex}
        immutable = bool(options.pop("immutable", immutable))
        _check_options(options)
        super().__init__(task=name, args=list(args or ()), kwargs=dict(kwargs or {}), options=options,
                         subtask_type=subtask_type, immutable=immutable)
        self._app = app if app is not None else getattr(task, "app", None)

    # -- Celery's accessors ------------------------------------------------------------------
    task = property(lambda self: self["task"])
    name = task
    args = property(lambda self: self["args"])
    kwargs = property(lambda self: self["kwargs"])
    options = property(lambda self: self["options"])
    subtask_type = property(lambda self: self["subtask_type"])
    immutable = property(lambda self: self["immutable"])

    @property
    def id(self) -> str | None:
        return self["options"].get("task_id")

    @property
    def app(self) -> App:
        return _app_of(self._app)

    @property
    def type(self) -> Task:
        return self.app.tasks[self.task]

    @classmethod
    def from_dict(cls, d: dict, app: App | None = None) -> Signature:
        """A signature (or chain/group/chord) from its JSON form; checked first."""
        from qdeploy.core import sigform

        if isinstance(d, Signature):
            return d
        sigform.check_signature(d)
        return _from_checked(d, app)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)}){'!' if self.immutable else ''}"

    # -- building ----------------------------------------------------------------------------
    def _merge(self, args=(), kwargs=None, options=None) -> tuple[list, dict, dict]:
        """Partial application, as in Celery: new args go first, kwargs and options merge
        (an immutable signature keeps its own arguments)."""
        if self.immutable:
            args, kwargs = list(self.args), dict(self.kwargs)
        else:
            args, kwargs = [*args, *self.args], {**self.kwargs, **(kwargs or {})}
        return args, kwargs, {**self.options, **(options or {})}

    def clone(self, args=None, kwargs=None, **options) -> Signature:
        new = copy.deepcopy(self)
        new._app = self._app
        if args or kwargs or options:
            a, k, o = self._merge(args or (), kwargs, options)
            new["args"], new["kwargs"], new["options"] = a, k, o
        return new

    def set(self, immutable: bool | None = None, **options) -> Signature:
        _check_options(options)
        self["options"].update(options)
        if immutable is not None:
            self["immutable"] = bool(immutable)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = bool(immutable)

    def link(self, callback: dict) -> dict:
        self["options"].setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: dict) -> dict:
        self["options"].setdefault("link_error", []).append(errback)
        return errback

    def on_error(self, errback: dict) -> Signature:
        self.link_error(errback)
        return self

    def replace(self, args=None, kwargs=None, options=None) -> Signature:
        new = self.clone()
        if args is not None:
            new["args"] = list(args)
        if kwargs is not None:
            new["kwargs"] = dict(kwargs)
        if options is not None:
            new["options"] = dict(options)
        return new

    def freeze(self, _id: str | None = None) -> AsyncResult | GroupResult:
        """Give out this signature's id(s) now; returns the result handle it will have."""
        from qdeploy.core.workflow import freeze

        return freeze(self, self.app, _id)

    def __or__(self, other):
        if isinstance(other, Signature):
            return chain(self, other)
        return NotImplemented

    def __deepcopy__(self, memo) -> Signature:
        new = dict.__new__(type(self))
        memo[id(self)] = new
        for key, value in self.items():
            dict.__setitem__(new, key, copy.deepcopy(value, memo))
        new._app = self._app
        return new

    def __copy__(self) -> Signature:
        new = dict.__new__(type(self))
        dict.update(new, self)
        new._app = self._app
        return new

    # -- sending -----------------------------------------------------------------------------
    def delay(self, *args, **kwargs):
        return self.apply_async(args, kwargs)

    def apply_async(self, args=(), kwargs=None, **options):
        app = self.app
        if app.conf.fast("task_always_eager", False):
            return self.apply(args, kwargs, **options)
        from qdeploy.core.workflow import send

        return send(app, self, args, kwargs, options)

    def apply(self, args=(), kwargs=None, **options):
        """Run here and now, the whole workflow, as workers would (eager)."""
        from qdeploy.core.eager import apply

        return apply(self, args, kwargs, options)

    def __call__(self, *args, **kwargs):
        """Call the task's function here (Celery: a signature is callable like its task)."""
        a, k, _ = self._merge(args, kwargs)
        return self.type(*a, **k)


class chain(Signature):
    def __init__(self, *tasks, app: App | None = None, **options):
        if len(tasks) == 1 and not isinstance(tasks[0], dict):
            tasks = tuple(tasks[0])
        steps: list[Signature] = []
        for task in tasks:
            sig = maybe_signature(task, app)
            steps += sig.tasks if isinstance(sig, chain) and not sig.options else [sig]
        super().__init__("qdeploy.chain", (), {"tasks": steps}, options, subtask_type="chain",
                         app=app or next((s._app for s in steps if s._app), None))

    tasks = property(lambda self: self["kwargs"]["tasks"])

    def __or__(self, other):
        if isinstance(other, Signature):
            return chain(*self.tasks, other, app=self._app, **self.options)
        return NotImplemented

    def __call__(self, *args, **kwargs):
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.tasks)) or "chain()"


class group(Signature):
    def __init__(self, *tasks, app: App | None = None, **options):
        if len(tasks) == 1 and not isinstance(tasks[0], dict):
            tasks = tuple(tasks[0])
        members = [maybe_signature(t, app) for t in tasks]
        super().__init__("qdeploy.group", (), {"tasks": members}, options, subtask_type="group",
                         app=app or next((m._app for m in members if m._app), None))

    tasks = property(lambda self: self["kwargs"]["tasks"])

    def __or__(self, other):
        if isinstance(other, group):
            return chain(self, other)
        if isinstance(other, Signature):
            return chord(self, other, app=self._app)
        return NotImplemented

    def __call__(self, *args, **kwargs):
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        return f"group([{', '.join(map(repr, self.tasks))}])"


class chord(Signature):
    def __init__(self, header, body=None, app: App | None = None, **options):
        header = header if isinstance(header, group) else group(header, app=app)
        body = maybe_signature(body, app) if body is not None else None
        super().__init__("qdeploy.chord", (), {"header": header, "body": body}, options,
                         subtask_type="chord", app=app or header._app or (body._app if body is not None else None))

    header = property(lambda self: self["kwargs"]["header"])
    body = property(lambda self: self["kwargs"]["body"])

    def __call__(self, body=None, **options):
        return self.apply_async((), {}, body=body, **options)

    def apply_async(self, args=(), kwargs=None, body=None, **options):
        sig = self if body is None else chord(self.header, body, app=self._app, **self.options)
        if sig.body is None:
            raise TypeError("a chord needs a body: chord(header)(body) or chord(header, body)")
        return Signature.apply_async(sig, args, kwargs, **options)

    def apply(self, args=(), kwargs=None, body=None, **options):
        sig = self if body is None else chord(self.header, body, app=self._app, **self.options)
        return Signature.apply(sig, args, kwargs, **options)

    def __or__(self, other):
        if isinstance(other, Signature):
            return chain(self, other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"


def chunks(task: Signature, items: Iterable, n: int) -> group:
    """Celery's `add.chunks(zip(xs, ys), 10)`: the items split in parts of `n`, one message per
    part (the built-in `qdeploy.starmap` calls the task for each item of its part)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"chunks needs a positive chunk size, not {n!r}")
    sig = maybe_signature(task)
    items = [list(item) for item in items]
    parts = [items[i:i + n] for i in range(0, len(items), n)]
    return group((Signature(STARMAP, (), {"task": sig.task, "it": part}, app=sig._app) for part in parts),
                 app=sig._app)


def signature(varies: Any, *args, **kwargs) -> Signature:
    """Celery's `signature('tasks.add', args=(2, 2), countdown=10)`, or a signature's JSON form."""
    app = kwargs.pop("app", None)
    if isinstance(varies, dict):
        return varies.clone() if isinstance(varies, Signature) else Signature.from_dict(varies, app)
    if args and isinstance(args[0], (list, tuple)) and "args" not in kwargs:
        kwargs["args"], args = args[0], args[1:]
    if args and isinstance(args[0], dict) and "kwargs" not in kwargs:
        kwargs["kwargs"], args = args[0], args[1:]
    if args:
        raise TypeError("signature(task, args=(...), kwargs={...}, **options)")
    return Signature(varies, app=app, **kwargs)


def maybe_signature(value: Any, app: App | None = None) -> Signature:
    if isinstance(value, Signature):
        return value
    if isinstance(value, dict):
        return Signature.from_dict(value, app)
    if hasattr(value, "s") and hasattr(value, "name"):
        raise TypeError(f"expected a signature, got the task {value.name}: use .s() or .si()")
    raise TypeError(f"expected a signature, not {type(value).__name__}")


def _from_checked(d: dict, app: App | None) -> Signature:
    kind, kwargs, options = d.get("subtask_type"), d.get("kwargs", {}), dict(d.get("options", {}))
    if kind == "chain":
        return chain(*(_from_checked(t, app) for t in kwargs["tasks"]), app=app, **options)
    if kind == "group":
        return group([_from_checked(t, app) for t in kwargs["tasks"]], app=app, **options)
    if kind == "chord":
        return chord(_from_checked(kwargs["header"], app), _from_checked(kwargs["body"], app), app=app, **options)
    return Signature(d["task"], d.get("args", []), kwargs, options, immutable=d.get("immutable", False), app=app)


def _check_options(options: dict) -> None:
    from qdeploy.core.producer import check_option_names
    from qdeploy.core.task import check_serializer

    check_option_names(options)
    check_serializer(options.get("serializer"))


def to_json(sig: Signature, app: App | None) -> dict:
    """The JSON form that travels in a message: plain dicts and lists, datetimes as unix
    times, linked signatures in their JSON form too; refuses cycles with a clear error."""
    from qdeploy.core import sigform
    from qdeploy.core.producer import timestamp

    seen: set[int] = set()

    def walk(value: Any, depth: int) -> Any:
        if depth > 200:
            raise ValueError("a signature is nested more than 200 levels deep")
        if isinstance(value, datetime):
            return timestamp(value, app)
        if isinstance(value, (dict, list, tuple)):
            if id(value) in seen:
                raise ValueError("a signature refers to itself (a cycle of links): a workflow must be a tree")
            seen.add(id(value))
            try:
                if isinstance(value, dict):
                    return {k: walk(v, depth + 1) for k, v in value.items()}
                return [walk(v, depth + 1) for v in value]
            finally:
                seen.discard(id(value))
        return value

    out = walk(sig, 0)
    try:
        sigform.check_signature(out)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"bad signature {sig!r}: {exc}") from None
    return out
