"""Running one task the way Celery's tracer does, for the worker and for eager mode alike:

    task_prerun -> before_start -> __call__/run -> (the caller stores the outcome) ->
    on_success + task_success | on_retry + task_retry | on_failure + task_failure ->
    after_return -> task_postrun

`run()` is the first half, `finish()` the second; the worker settles the outcome (result,
retry, follow-up messages) between them, eager mode records it in memory. Hooks and signal
receivers that raise are logged and change nothing.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from qdeploy.core import message, results, signals
from qdeploy.core.task import ExceptionInfo, Request, Retry, Task, call_hook

SUCCESS, FAILURE, RETRY = results.SUCCESS, results.FAILURE, results.RETRY


@dataclass(slots=True)
class Outcome:
    state: str
    value: Any = None
    exc: BaseException | None = None  # FAILURE: what the task raised; RETRY: the Retry
    einfo: ExceptionInfo | None = None
    auto: bool = False  # a retry by autoretry_for (not by self.retry())

    @property
    def cause(self) -> BaseException | None:
        """The error behind a retry (Retry.exc), or the failure itself."""
        return self.exc.exc if isinstance(self.exc, Retry) else self.exc


def request_for(task: Task, env: message.Envelope, deliveries: int = 1, hostname: str = "",
                is_eager: bool = False) -> Request:
    limits = env.limits
    timelimit = (limits.get("hard"), limits.get("soft")) if limits else (None, None)
    if not env.ext:  # a plain message (the common case): no v2 attribute to look up
        return Request(env.id, env.task, env.args, env.kwargs, env.retries, deliveries, env.queue, env.eta,
                       env.origin, hostname, env.max_retries, env.expires, None, None, None, None, {}, (), (), (),
                       None, timelimit, env.ignore_result, is_eager)
    return Request(env.id, env.task, env.args, env.kwargs, env.retries, deliveries, env.queue, env.eta,
                   env.origin, hostname, env.max_retries, env.expires, env.parent_id, env.root_id,
                   env.group, env.group_index, env.headers or {}, env.callbacks, env.errbacks, env.chain,
                   env.chord, timelimit, env.ignore_result, is_eager)


class ErrbackRequest(dict):
    """The failed task's request as an error callback gets it: `request.id`, `request.args`..."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)


_ARITY: dict[type, bool] = {}


def takes_request(task: Task) -> bool:
    """Celery's test for a new-style error callback: it takes more than one positional
    argument, (request, exc, traceback); an old-style one gets the failed task's id only."""
    cls = type(task)
    known = _ARITY.get(cls)
    if known is None:
        try:
            params = inspect.signature(task.run).parameters.values()
        except (TypeError, ValueError):
            params = []  # type: ignore[assignment]
        kinds = [p.kind for p in params]
        known = _ARITY[cls] = inspect.Parameter.VAR_POSITIONAL in kinds or sum(
            k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds) > 1
    return known


def call_args(task: Task, env: message.Envelope) -> list:
    """The positional arguments of the call: an error callback's come first."""
    if not env.errback:
        return env.args
    info = env.errback
    request = ErrbackRequest(info["request"])
    if not takes_request(task):
        return [request.get("id"), *env.args]
    exc = results.failure(str(request.get("id")), {"state": FAILURE, "exc_type": info["exc"].get("type"),
                                                   "exc": info["exc"].get("message"),
                                                   "exc_module": info["exc"].get("module"),
                                                   "traceback": info.get("traceback")})
    return [request, exc, info.get("traceback"), *env.args]


def may_retry(task: Task, request: Request) -> bool:
    limit = task.retry_limit(request)
    return limit is None or request.retries < limit


def run(task: Task, request: Request, args: list, kwargs: dict, arm=None, disarm=None) -> Outcome:
    """task_prerun, before_start, the call; the outcome (autoretry_for decided here)."""
    task.push_request(request)
    if signals.task_prerun._receivers:
        signals.task_prerun.send(sender=task, task_id=request.id, task=task, args=args, kwargs=kwargs)
    try:
        if arm is not None:
            arm()
        try:
            if "before_start" in task._hooks:
                call_hook(task, "before_start", request.id, args, kwargs)
            value = (task if task.custom_call else task.run)(*args, **kwargs)
        finally:
            if disarm is not None:
                disarm()
    except Retry as exc:
        return Outcome(RETRY, exc=exc, einfo=ExceptionInfo(exc.exc or exc))
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: a task never ends its process
        if isinstance(exc, task.autoretry_for) and may_retry(task, request):
            return Outcome(RETRY, exc=Retry(exc, task.retry_countdown(request.retries)), einfo=ExceptionInfo(exc),
                           auto=True)
        return Outcome(FAILURE, exc=exc, einfo=ExceptionInfo(exc))
    return Outcome(SUCCESS, value=value)


def finish(task: Task, request: Request, outcome: Outcome, args: list, kwargs: dict) -> None:
    """The hooks and signals after the outcome was settled, in Celery's order; pops the request."""
    if not task._hooks and not (signals.task_success._receivers or signals.task_failure._receivers
                                or signals.task_retry._receivers or signals.task_postrun._receivers):
        task.pop_request()  # the common case: nothing to call
        return
    try:
        state, tid = outcome.state, request.id
        if state == SUCCESS:
            call_hook(task, "on_success", outcome.value, tid, args, kwargs)
            if signals.task_success._receivers:
                signals.task_success.send(sender=task, result=outcome.value)
        elif state == RETRY:
            call_hook(task, "on_retry", outcome.cause, tid, args, kwargs, outcome.einfo)
            if signals.task_retry._receivers:
                signals.task_retry.send(sender=task, request=request, reason=outcome.exc, einfo=outcome.einfo)
        else:
            call_hook(task, "on_failure", outcome.exc, tid, args, kwargs, outcome.einfo)
            if signals.task_failure._receivers:
                signals.task_failure.send(sender=task, task_id=tid, exception=outcome.exc, args=args, kwargs=kwargs,
                                          traceback=outcome.exc.__traceback__ if outcome.exc else None,
                                          einfo=outcome.einfo)
        retval = outcome.value if state == SUCCESS else outcome.exc
        call_hook(task, "after_return", state, retval, tid, args, kwargs, None if state == SUCCESS else outcome.einfo)
        if signals.task_postrun._receivers:
            signals.task_postrun.send(sender=task, task_id=tid, task=task, args=args, kwargs=kwargs,
                                      retval=retval, state=state)
    finally:
        task.pop_request()
