"""OpenTelemetry tracing (`pip install 'qdeploy[otel]'`): one span per publish and per task run.

    from qdeploy.ops import tracing
    tracing.instrument()          # in the app module: the master imports it before it forks

A publish (`delay`, `apply_async`, a chain's next step, a chord's body) is a PRODUCER span whose
context travels in the v2 envelope's `headers` (W3C `traceparent`/`tracestate`, injected by a
`before_task_publish` receiver); a task run is a CONSUMER span, child of the publish that sent
it (`task_prerun` extracts it from `task.request.headers`). While a task runs its span is the
current one, so what it publishes — and the next step of its chain, published with its ack — is
a child of it: a chain is one trace. A chord's body is published (to the chord's key) with its
header, so its span is a sibling of the header's publishes. A child flushes its spans
(`flush()`, called by the worker before any child exits: recycling, a stop) so a
`--max-tasks-per-child 1` child loses none.

Only the OpenTelemetry API is needed here; the application sets up the SDK and its exporter
(a TracerProvider, passed or global). Nothing here runs unless `instrument()` was called.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from qdeploy import __version__

log = logging.getLogger("qdeploy.tracing")

MAX_OPEN = 10000  # publish spans waiting for their after_task_publish (the rest are ended at once)
_state: dict[str, Any] = {"provider": None, "tracer": None}
_publishing: dict[str, tuple[Any, int]] = {}  # task id -> (its publish span, thread), until after_task_publish
_running: dict[str, tuple[Any, Any]] = {}  # task id -> (run span, context token)
_lock = threading.Lock()


def instrument(tracer_provider=None) -> None:
    """Connect the receivers (once); `tracer_provider` defaults to OpenTelemetry's global one."""
    from opentelemetry import trace

    _state["provider"] = tracer_provider
    _state["tracer"] = trace.get_tracer("qdeploy", __version__, tracer_provider=tracer_provider)
    for signal, receiver in _receivers():
        signal.connect(receiver, weak=False, dispatch_uid=f"qdeploy.tracing.{receiver.__name__}")


def _receivers():
    from qdeploy.core import signals

    return ((signals.before_task_publish, _before_publish), (signals.after_task_publish, _after_publish),
            (signals.task_prerun, _prerun), (signals.task_failure, _failure), (signals.task_retry, _retry),
            (signals.task_postrun, _postrun))


def uninstrument() -> None:
    """Disconnect the receivers; spans still open are ended."""
    for signal, receiver in _receivers():
        signal.disconnect(receiver, dispatch_uid=f"qdeploy.tracing.{receiver.__name__}")
    with _lock:
        open_spans = [span for span, _ in _publishing.values()] + [span for span, _ in _running.values()]
        _publishing.clear()
        _running.clear()
    for span in open_spans:
        span.end()
    _state.update(provider=None, tracer=None)


def flush(timeout_millis: int = 5000) -> None:
    """Export what the span processors still hold (before a child exits). Never raises."""
    if _state["tracer"] is None:
        return
    from opentelemetry import trace

    provider = _state["provider"] or trace.get_tracer_provider()
    force = getattr(provider, "force_flush", None)
    if force is not None:
        try:
            force(timeout_millis)
        except Exception as exc:  # noqa: BLE001 - an exporter's failure must not stop a child's exit
            log.warning("tracing: flushing spans failed: %s", exc)


def _before_publish(sender=None, headers=None, routing_key=None, **_) -> None:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind

    if not isinstance(headers, dict):
        return
    name = sender if isinstance(sender, str) else getattr(sender, "name", "?")
    task_id = str(headers.get("id") or "")
    span = _state["tracer"].start_span(f"publish {name}", kind=SpanKind.PRODUCER, attributes={
        "messaging.system": "qdeploy", "messaging.operation": "publish",
        "messaging.destination.name": str(routing_key or ""), "messaging.message.id": task_id, "qdeploy.task": name})
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    headers.update(carrier)  # travels in the envelope's headers
    with _lock:
        if len(_publishing) >= MAX_OPEN or not task_id:
            span.end()
        else:
            _publishing[task_id] = (span, threading.get_ident())


def _after_publish(sender=None, headers=None, **_) -> None:
    task_id = headers.get("id") if isinstance(headers, dict) else None
    with _lock:
        entry = _publishing.pop(task_id, None) if isinstance(task_id, str) else None
    if entry is not None:
        entry[0].end()


def _prerun(sender=None, task_id=None, task=None, **_) -> None:
    from opentelemetry import context, propagate, trace
    from opentelemetry.trace import SpanKind

    request = getattr(task, "request", None)
    headers = getattr(request, "headers", None)
    parent = propagate.extract(headers if isinstance(headers, dict) else {})
    name = getattr(task, "name", "?")
    span = _state["tracer"].start_span(f"run {name}", context=parent, kind=SpanKind.CONSUMER, attributes={
        "messaging.system": "qdeploy", "messaging.operation": "process", "messaging.message.id": str(task_id),
        "messaging.destination.name": str(getattr(request, "queue", "") or ""),
        "qdeploy.task": name, "qdeploy.retries": int(getattr(request, "retries", 0) or 0)})
    token = context.attach(trace.set_span_in_context(span))
    with _lock:
        _running[str(task_id)] = (span, token)


def _failure(sender=None, task_id=None, exception=None, **_) -> None:
    from opentelemetry.trace import Status, StatusCode

    entry = _running.get(str(task_id))
    if entry is not None and isinstance(exception, BaseException):
        entry[0].record_exception(exception)
        entry[0].set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"[:200]))


def _retry(sender=None, request=None, reason=None, **_) -> None:
    entry = _running.get(str(getattr(request, "id", "")))
    if entry is not None:
        entry[0].add_event("retry", {"reason": str(reason)[:200]})


def _postrun(sender=None, task_id=None, state=None, **_) -> None:
    from opentelemetry import context

    me = threading.get_ident()
    with _lock:
        entry = _running.pop(str(task_id), None)
        # What this task published to go out with its ack (a chain's next step, a chord's body)
        # gets no after_task_publish: those spans end with the task that sent them.
        leftovers = [tid for tid, (_, thread) in _publishing.items() if thread == me] if entry is not None else []
        spans = [_publishing.pop(tid)[0] for tid in leftovers]
    for published in spans:
        published.end()
    if entry is None:
        return
    span, token = entry
    span.set_attribute("qdeploy.state", str(state))
    span.end()
    try:
        context.detach(token)
    except Exception:  # noqa: BLE001 - a token from another context (a thread) is only logged by the API
        pass
