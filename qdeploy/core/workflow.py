"""How a workflow runs: `plan()` turns a signature (task, chain, group, chord) into the calls
to send and the chords to create; `after_success` / `after_failure` turn a finished task's
message into the operations that continue its workflow (callbacks, the next step of its chain,
its part of a chord, error callbacks).

The same operations are carried out by the producer (one MULTI), by the worker (in the script
that acks the task: `reserve.lua`, so a step is enqueued exactly once, with the ack) and by
eager mode (in memory): one plan, three executors, the same results.

    Publish(env)            a message to store and queue
    ChordInit(...)          a chord's counter and body template (before its header messages)
    ChordPart(...)          a header task's result (or failure): counted by task id, the body
                            enqueued (or failed) by the part that completes the count
    Release(key, id)        a unique send's key, freed when its message settles
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qdeploy.core import message, producer, results, signals
from qdeploy.core.canvas import STARMAP, ChordError, Signature, chain, chord, group, to_json

if TYPE_CHECKING:
    from qdeploy.core.app import App

SENTINEL = "\x00qdeploy:chord-results\x00"  # where a chord body's first argument goes
CHORD_TTL = 7 * 86400  # a chord's keys live at least this long (unless results live forever)
_strict = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


@dataclass
class Call:
    task: str
    args: list
    kwargs: dict
    options: dict


@dataclass
class Publish:
    env: message.Envelope


@dataclass
class ChordInit:
    group_id: str
    members: dict[str, int]  # header task id -> its index (the task that reports: a chain's last)
    body: message.Envelope  # args start with SENTINEL unless immutable
    immutable: bool
    countdown: float | None = None
    eta: float | None = None

    def template(self, app: App) -> tuple[str, str]:
        """The body's JSON around its first argument: prefix + '[r0,r1,...]' + suffix."""
        encoded = producer.encode(app, self.body)
        if self.immutable:
            return encoded, ""
        marker = '"args":[' + _strict(SENTINEL)
        at = encoded.index(marker) + len('"args":[')
        return encoded[:at], encoded[at + len(_strict(SENTINEL)):]

    def fields(self, app: App) -> list:
        prefix, suffix = self.template(app)
        out = [" n", str(len(self.members)), " pre", prefix, " suf", suffix, " imm", "1" if self.immutable else "",
               " bid", self.body.id, " bq", self.body.queue,
               " bcd", "" if self.countdown is None else repr(float(self.countdown)),
               " beta", "" if self.eta is None else repr(float(self.eta))]
        for task_id, index in self.members.items():
            out += [task_id, str(index)]
        return out

    def commands(self, app: App) -> list[tuple]:
        key = app.transport.keys.chord(self.group_id)
        commands: list[tuple] = [("HSET", key, *self.fields(app))]
        if app.result_ttl:
            commands.append(("EXPIRE", key, max(app.result_ttl, CHORD_TTL)))
        return commands


@dataclass
class ChordPart:
    group_id: str
    task_id: str
    result: str | None  # the header task's return value as JSON, None when it failed
    error: str | None = None  # the body's FAILURE record, when this part failed
    errbacks: list[message.Envelope] = field(default_factory=list)  # the body's, with the ChordError


@dataclass
class Release:
    key: str
    task_id: str


@dataclass
class Plan:
    calls: list[Call]
    chords: list[ChordInit]
    result: Any


# -- ids first: every handle is known before anything is sent ------------------------------------
def freeze(sig: Any, app: App, _id: str | None = None):
    from qdeploy.core.results import AsyncResult, GroupResult

    kind = sig.subtask_type
    if kind is None:
        task_id = sig.options.setdefault("task_id", _id or message.new_id())
        return AsyncResult(task_id, app)
    if kind == "chain":
        last = None
        for step in sig.tasks:
            res = freeze(step, app)
            if last is not None:
                _root_of(res).parent = last
            last = res
        if last is None:
            raise ValueError("a chain needs at least one task")
        return last
    if kind == "group":
        gid = sig.options.setdefault("group_id", _id or message.new_id())
        return GroupResult(gid, [freeze(member, app) for member in sig.tasks], app=app)
    header = freeze(sig.header, app)
    if sig.body is None:
        raise TypeError("a chord needs a body")
    body = freeze(sig.body, app, _id)
    _root_of(body).parent = header
    return body


def _root_of(res):
    while res.parent is not None:
        res = res.parent
    return res


# -- planning ------------------------------------------------------------------------------------
def plan(sig: Signature, app: App, args=(), kwargs=None, extra: dict | None = None) -> Plan:
    out = Plan([], [], freeze(sig, app))
    _plan(sig, app, list(args), kwargs, dict(extra or {}), out)
    return out


def _plan(sig: Any, app: App, args: list, kwargs, extra: dict, out: Plan) -> None:
    kind = sig.subtask_type
    if kind is None:
        a, k, o = sig._merge(args, kwargs, extra)
        out.calls.append(Call(sig.task, a, k, o))
    elif kind == "chain":
        steps = _chain_steps(sig)
        first, rest = steps[0], steps[1:]
        if rest and first.subtask_type == "group":
            return _plan(chord(first, rest[0] if len(rest) == 1 else chain(*rest), app=app), app, args, kwargs, extra, out)
        if rest and first.subtask_type == "chord":
            return _plan(chord(first.header, chain(first.body, *rest), app=app), app, args, kwargs, extra, out)
        if rest:
            extra = {**extra, "chain": [to_json(step, app) for step in rest]}
        _plan(first, app, args, kwargs, extra, out)
    elif kind == "group":
        gid = sig.options["group_id"]
        for index, member in enumerate(sig.tasks):
            if member.subtask_type in ("group", "chord"):
                raise ValueError("a group inside a group (or a chord in a group) is not supported: "
                                 "flatten it, group(*a.tasks, *b.tasks)")
            _plan(member, app, args, kwargs, {**extra, "group_id": gid, "group_index": index}, out)
    else:
        _plan_chord(sig, app, args, kwargs, extra, out)


def _chain_steps(sig: Any) -> list[Any]:
    """The steps, with the chain's own link (to the last) and link_error (to each) applied."""
    steps = list(sig.tasks)
    if not steps:
        raise ValueError("a chain needs at least one task")
    links, errbacks = _listed(sig.options.get("link")), _listed(sig.options.get("link_error"))
    if links or errbacks:
        steps = [step.clone() for step in steps]
        for step in steps:
            for errback in errbacks:
                step.link_error(errback)
        for link in links:
            steps[-1].link(link)
    return steps


def _listed(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _plan_chord(sig: Any, app: App, args: list, kwargs, extra: dict, out: Plan) -> None:
    header, body = sig.header, sig.body
    gid = header.options["group_id"]
    parents = {k: v for k, v in extra.items() if k in ("parent_id", "root_id")}
    if body.subtask_type not in (None, "chain"):
        raise ValueError("a chord's body must be a task or a chain (not a group or a chord)")
    staged = Plan([], [], None)
    _plan(body, app, [] if body.immutable else [SENTINEL], None, dict(parents), staged)
    call = staged.calls[0]
    countdown, eta = call.options.pop("countdown", None), call.options.pop("eta", None)
    immutable = SENTINEL not in call.args
    if not header.tasks:  # Celery calls the body at once, with no results
        call.args = [[] if a == SENTINEL else a for a in call.args]
        call.options.update(countdown=countdown, eta=eta)
        out.calls.append(call)
        return
    body_env = producer.build(app, call.task, call.args, call.kwargs, **call.options)
    if signals.before_task_publish.has_receivers:  # the body is made now; the ack script sends it
        producer.before_publish(body_env, None)
    members: dict[str, int] = {}
    info = {"id": gid, "body": body_env.id, "task": body_env.task, "errbacks": list(body_env.errbacks)}
    for index, member in enumerate(header.tasks):
        options = {**extra, "group_id": gid, "group_index": index}
        if member.subtask_type == "chain":
            steps = [step.clone() for step in member.tasks]
            steps[-1].set(chord=info)
            members[steps[-1].id] = index
            _plan(chain(*steps, app=app), app, args, kwargs, options, out)
        elif member.subtask_type is None:
            members[member.id] = index
            _plan(member, app, args, kwargs, {**options, "chord": info}, out)
        else:
            raise ValueError("a chord's header holds tasks or chains (not groups or chords)")
    out.chords.append(ChordInit(gid, members, body_env, immutable, countdown, eta))


def operations(app: App, sig: Signature, args=(), extra: dict | None = None) -> list:
    """A plan as operations, chords before the messages that report to them."""
    planned = plan(sig, app, args, None, extra)
    envs = [producer.build(app, c.task, c.args, c.kwargs, **c.options) for c in planned.calls]
    if signals.before_task_publish.has_receivers:
        for env in envs:
            producer.before_publish(env, None)
    return [*planned.chords, *(Publish(env) for env in envs)]


def send(app: App, sig: Signature, args=(), kwargs=None, options: dict | None = None):
    planned = plan(sig, app, args, kwargs, options)
    producer.send_many(app, [(c.task, c.args, c.kwargs, c.options) for c in planned.calls], planned.chords)
    return planned.result


# -- after a task ran --------------------------------------------------------------------------------
def _parents(env: message.Envelope) -> dict:
    return {"parent_id": env.id, "root_id": env.root_id or env.id}


def after_success(app: App, env: message.Envelope, value: Any) -> list:
    """Callbacks (with the result first), the next step of the chain, the chord part. Raises
    TypeError if the result is needed as JSON (a chord) and is not."""
    ops: list = []
    if env.chord:
        try:
            encoded = _strict(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"the result of a chord header task must be JSON ({exc})") from None
        ops.append(ChordPart(env.chord["id"], env.id, encoded))
    for callback in env.callbacks:
        ops += operations(app, Signature.from_dict(callback, app), (value,), _parents(env))
    if env.chain:
        steps = [Signature.from_dict(step, app) for step in env.chain]
        ops += operations(app, steps[0] if len(steps) == 1 else chain(*steps, app=app), (value,), _parents(env))
    if env.unique:
        ops.append(Release(env.unique, env.id))
    return ops


def exc_info(exc: BaseException) -> dict:
    exc_type, text, _ = results.describe(exc)
    return {"type": exc_type, "message": text, "module": type(exc).__module__}


def after_failure(app: App, env: message.Envelope, request_info: dict, error: dict, traceback: str | None) -> list:
    """Error callbacks get (request, exc, traceback); a chord header's failure fails the body."""
    ops: list = []
    for errback in env.errbacks:
        ops += operations(app, Signature.from_dict(errback, app), (),
                          {**_parents(env), "errback": {"request": request_info, "exc": error, "traceback": traceback}})
    if env.chord:
        ops.append(_chord_failed(app, env, error, traceback))
    if env.unique:
        ops.append(Release(env.unique, env.id))
    return ops


def after_revoked(app: App, env: message.Envelope, reason: str) -> list:
    """A message settled without running (revoked, expired, dead-lettered): its chord fails
    (Celery's rule for a header task that did not succeed), its unique key is freed."""
    ops: list = []
    if env.chord:
        ops.append(_chord_failed(app, env, {"type": "TaskRevokedError", "message": reason, "module": None}, None))
    if env.unique:
        ops.append(Release(env.unique, env.id))
    return ops


def _chord_failed(app: App, env: message.Envelope, error: dict, traceback: str | None) -> ChordPart:
    info = env.chord or {}
    reason = f"Dependency {env.id} raised {error['type']}: {error['message']}"
    chord_exc = {"type": ChordError.__name__, "message": reason, "module": ChordError.__module__}
    record = results.record(results.FAILURE, exc_type=ChordError.__name__, exc=reason, traceback=traceback,
                            task=info["task"], module=ChordError.__module__)
    body_request = {"id": info["body"], "task": info["task"], "args": [], "kwargs": {}, "group": info["id"]}
    errbacks = [op.env for eb in info.get("errbacks", []) for op in operations(
        app, Signature.from_dict(eb, app), (),
        {"parent_id": info["body"], "errback": {"request": body_request, "exc": chord_exc, "traceback": traceback}})
        if isinstance(op, Publish)]
    return ChordPart(info["id"], env.id, None, record, errbacks)


def encode_ops(app: App, ops: list) -> list:
    """Operations as the ARGV of reserve.lua's follow-ups (its count first)."""
    now = time.time()

    def eta(env: message.Envelope) -> str:
        return repr(float(env.eta)) if env.eta is not None and env.eta > now else ""

    out: list = [str(len(ops))]
    for op in ops:
        if isinstance(op, Publish):
            out += ["m", op.env.id, op.env.queue, eta(op.env), producer.encode(app, op.env)]
        elif isinstance(op, ChordInit):
            fields = op.fields(app)
            out += ["c", op.group_id, str(len(fields)), *fields]
        elif isinstance(op, ChordPart):
            packed = [f"{e.queue}\n{eta(e)}\n{e.id}\n{producer.encode(app, e)}" for e in op.errbacks]
            out += ["p", op.group_id, op.task_id, op.result or "", op.error or "", str(len(packed)), *packed]
        elif isinstance(op, Release):
            out += ["u", op.key, op.task_id]
        else:
            raise TypeError(f"not a follow-up operation: {op!r}")
    return out


def builtin_starmap(app: App):
    """The task a chunk of `task.chunks(items, n)` runs: the task called here for each item."""
    def starmap(task: str, it: list):
        target = app.tasks.get(task)
        if target is None:
            raise KeyError(f"unknown task {task!r} (chunks of a task this worker does not have)")
        return [target(*item) for item in it]
    starmap.__name__ = STARMAP
    return starmap


__all__ = ["Call", "ChordInit", "ChordPart", "Plan", "Publish", "Release", "after_failure", "after_success",
           "encode_ops", "freeze", "group", "operations", "plan", "send"]
