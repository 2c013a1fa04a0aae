"""Eager mode: `task.apply()`, `sig.apply()`, and `app.conf.task_always_eager = True`.

A workflow runs here, in this thread, to the end before `apply` returns: the same plan as a
real send (qdeploy.core.workflow), the same tracer as the worker (qdeploy.core.trace), the same
follow-up operations, carried out in memory instead of in Redis. So eager and real runs give
the same results, the same signals and hooks, the same chord and chain behaviour. Retries run
again at once (no countdown); `task_eager_propagates` (or `throw=True`) re-raises the first
error instead of recording it.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from typing import TYPE_CHECKING, Any

from qdeploy.core import message, producer, results, trace, workflow
from qdeploy.core.groupresult import GroupResult
from qdeploy.core.results import AsyncResult

if TYPE_CHECKING:
    from qdeploy.core.app import App
    from qdeploy.core.canvas import Signature

MAX_RUNS = 100_000  # tasks one eager apply may run (a workflow that keeps re-sending itself)


class _Records:
    """What AsyncResult reads, for eager results: the engine's records."""

    def __init__(self):
        self.records: dict[str, dict] = {}
        self.errors: dict[str, BaseException] = {}

    def get(self, task_id: str) -> dict | None:
        return self.records.get(task_id)

    def get_many(self, task_ids: list[str]) -> list[dict | None]:
        return [self.records.get(t) for t in task_ids]

    def forget(self, task_id: str) -> None:
        self.records.pop(task_id, None)


class _View:
    """The app, with results read from the engine."""

    def __init__(self, app: App, records: _Records):
        self._app, self.results = app, records

    def __getattr__(self, name: str):
        return getattr(self._app, name)

    def revoke(self, task_id: str, terminate: bool = False) -> None:
        pass  # it already ran


class EagerResult(AsyncResult):
    """Celery's EagerResult: the outcome is known at once; a failure is the original exception."""

    def _value(self, meta: dict) -> Any:
        if meta["state"] == results.FAILURE:
            original = self.app.results.errors.get(self.id)  # type: ignore[attr-defined]
            if original is not None:
                return original
        return super()._value(meta)


class Engine:
    def __init__(self, app: App, propagate: bool):
        self.app, self.propagate = app, propagate
        self.store = _Records()
        self.view = _View(app, self.store)
        self.queue: deque[message.Envelope] = deque()
        self.chords: dict[str, dict] = {}
        self.runs = 0

    def apply(self, sig: Signature, args=(), kwargs=None, options: dict | None = None):
        planned = workflow.plan(sig, self.app, args, kwargs, options)
        self.execute([*planned.chords, *(workflow.Publish(producer.build(self.app, c.task, c.args, c.kwargs, **c.options))
                                         for c in planned.calls)])
        while self.queue:
            self.runs += 1
            if self.runs > MAX_RUNS:
                raise RuntimeError(f"eager workflow ran {MAX_RUNS} tasks and is not finished (does it re-send itself?)")
            self.run(self.queue.popleft())
        return self.bind(planned.result)

    def bind(self, res):
        if isinstance(res, GroupResult):
            return GroupResult(res.id, [self.bind(r) for r in res.results], app=self.view,
                               parent=self.bind(res.parent) if res.parent is not None else None)
        return EagerResult(res.id, self.view, parent=self.bind(res.parent) if res.parent is not None else None)

    def _record(self, env: message.Envelope, state: str, **fields) -> None:
        """Kept also for ignore_result tasks: an EagerResult has its value (as in Celery)."""
        self.store.records[env.id] = json.loads(results.record(state, task=env.task, retries=env.retries,
                                                               parent_id=env.parent_id, **fields))

    def run(self, env: message.Envelope) -> None:
        task = self.app.tasks.get(env.task)
        if task is None:
            error = KeyError(f"unknown task {env.task!r}")
            self._record(env, results.FAILURE, exc_type="NotRegistered", exc=str(error), reason=str(error))
            if self.propagate:
                raise error
            return
        args = trace.call_args(task, env)
        request = trace.request_for(task, env, is_eager=True)
        outcome = trace.run(task, request, args, env.kwargs)
        ops: list = []
        try:
            if outcome.state == results.SUCCESS:
                try:
                    results.record(results.SUCCESS, result=outcome.value)  # a worker cannot store it either
                    ops = workflow.after_success(self.app, env, outcome.value)
                except (TypeError, ValueError) as exc:
                    outcome = trace.Outcome(results.FAILURE, exc=exc, einfo=trace.ExceptionInfo(exc))
            if outcome.state == results.RETRY:
                self._record(env, results.RETRY, reason=str(outcome.exc))
                self.queue.appendleft(env.next_retry(None))
            elif outcome.state == results.FAILURE:
                exc_type, text, tb = results.describe(outcome.exc)  # type: ignore[arg-type]
                assert outcome.exc is not None
                ops = workflow.after_failure(self.app, env, request.as_dict(), workflow.exc_info(outcome.exc), tb)
                self.store.errors[env.id] = outcome.exc
                self._record(env, results.FAILURE, exc_type=exc_type, exc=text, traceback=tb,
                             module=type(outcome.exc).__module__, children=self._children(request, ops))
            else:
                self._record(env, results.SUCCESS, result=outcome.value, children=self._children(request, ops))
        finally:
            trace.finish(task, request, outcome, args, env.kwargs)
        if outcome.state == results.FAILURE and self.propagate:
            raise outcome.exc  # type: ignore[misc]
        self.execute(ops)

    @staticmethod
    def _children(request, ops: list) -> list:
        return [*request.children, *(op.env.id for op in ops if isinstance(op, workflow.Publish))]

    def execute(self, ops: list) -> None:
        for op in ops:
            if isinstance(op, workflow.Publish):
                self.queue.append(op.env)
            elif isinstance(op, workflow.ChordInit):
                self.chords[op.group_id] = {"init": op, "results": {}, "error": None, "errbacks": []}
            elif isinstance(op, workflow.ChordPart):
                self._part(op)

    def _part(self, op: workflow.ChordPart) -> None:
        """The chord counter, as reserve.lua keeps it: by task id, the body once."""
        state = self.chords.get(op.group_id)
        if state is None or op.task_id not in state["init"].members:
            return
        init = state["init"]
        state["results"][init.members[op.task_id]] = op.result if op.result is not None else "null"
        if op.error is not None and state["error"] is None:
            state["error"], state["errbacks"] = op.error, op.errbacks
        if len(state["results"]) < len(init.members):
            return
        del self.chords[op.group_id]
        if state["error"] is not None:
            self.store.records[init.body.id] = json.loads(state["error"])
            self.queue.extend(state["errbacks"])
            return
        body = init.body
        if not init.immutable:
            values = [json.loads(state["results"][i]) for i in range(len(init.members))]
            body = dataclasses.replace(body, args=[values, *body.args[1:]])
        self.queue.append(body)


def apply(sig: Signature, args=(), kwargs=None, options: dict | None = None):
    """Run `sig` (and its whole workflow) here; returns its EagerResult (or GroupResult)."""
    app = sig.app
    options = dict(options or {})
    throw = options.pop("throw", None)
    propagate = bool(getattr(app.conf, "task_eager_propagates", False)) if throw is None else bool(throw)
    return Engine(app, propagate).apply(sig, args, kwargs, options)
