"""Task and worker events over Redis pub/sub (`celery events`' vocabulary), and their readers.

A worker master with events on (`qdeploy worker -E`, `worker.task_events`, or at run time
`qdeploy control enable_events`) publishes, on channel `ns:ev`, one JSON object per event:

    task-received, task-started      from a child's `S` line (name, queue; no arguments)
    task-succeeded (runtime), task-failed (exception), task-retried (exception)   from `D`
    task-revoked                     `control revoke` of a task this node runs (terminated), or a
                                     message revoked or expired before it ran (expired)
    worker-online, worker-heartbeat (every 2 s), worker-offline

A producer publishes task-sent from a receiver of the `after_task_publish` signal that
`send_sent_events(app)` connects (a worker's children do it when started with events on, so
what tasks send is seen too). Events are
buffered during one turn of the master's loop and published in one pipeline; with events off
nothing is built at all (the drain benchmark checks it). Nobody listening costs Redis nothing
but the PUBLISH. Events carry no results, and task arguments only with `worker.event_args`
(task-received's `args`/`kwargs`, as Celery's).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator

from qdeploy import __version__
from qdeploy.core.connection import BROKER_DOWN, RedisError
from qdeploy.core.keys import TEMPLATES

log = logging.getLogger("qdeploy.events")

TASK_TYPES = ("task-sent", "task-received", "task-started", "task-succeeded", "task-failed", "task-retried",
              "task-revoked")
WORKER_TYPES = ("worker-online", "worker-heartbeat", "worker-offline")
TYPES = TASK_TYPES + WORKER_TYPES
MAX_EVENT = 16 * 1024  # a reader ignores anything larger
MAX_PENDING = 10000  # events buffered while Redis is down are dropped beyond this
_DOWN = BROKER_DOWN + (RedisError, OSError)


def event_call(call: str) -> dict:
    """A task's arguments for its task-received event (`worker.event_args`), from the child's `S`
    line (`[args, kwargs]` as JSON, or `~` and the start of a repr when too long): Celery's `args`
    and `kwargs` reprs. The line crossed a process: anything else is shown as it came, cut."""
    try:
        value = json.loads(call) if call[:1] == "[" else None
    except (ValueError, RecursionError):  # RecursionError: `[[[[...` deeper than the interpreter's stack
        value = None
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], list) and isinstance(value[1], dict):
        return {"args": json.dumps(value[0], ensure_ascii=False), "kwargs": json.dumps(value[1], ensure_ascii=False)}
    return {"args": call[:1000], "kwargs": ""}


def channel(keys) -> str:
    return f"{keys.ns}:{TEMPLATES['events']}"


class EventPublisher:
    """The master's side: `emit` buffers (only while `enabled`), `flush` publishes the turn's
    events in one round trip. Redis errors drop the batch (events are best-effort, the tasks
    themselves are not) and are logged once per outage."""

    def __init__(self, broker, hostname: str, enabled: bool = False):
        self.broker, self.hostname, self.enabled = broker, hostname, enabled
        self.channel = channel(broker.keys)
        self.pending: list[str] = []
        self.failing = False

    def emit(self, kind: str, **fields) -> None:
        if not self.enabled:
            return
        fields.update(type=kind, hostname=self.hostname, timestamp=time.time())
        if len(self.pending) < MAX_PENDING:
            self.pending.append(json.dumps(fields, default=str))

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        try:
            self.broker.fast.pipeline([("PUBLISH", self.channel, event) for event in batch], raise_on_error=False)
        except _DOWN as exc:
            if not self.failing:
                log.warning("events: cannot publish (%s); dropping events until the broker answers", exc)
            self.failing = True
            return
        if self.failing:
            log.info("events: publishing again")
            self.failing = False

    def worker(self, kind: str, master) -> None:
        if self.enabled:
            self.emit(kind, pid=os.getpid(), freq=2.0, sw_ident="qdeploy", sw_ver=__version__,
                      sw_sys=os.uname().sysname, active=sum(len(c.tasks) for c in master.children.values()),
                      processed=master.tasks_done, pool=master.target)

    def set(self, enabled: bool, master) -> dict:
        """enable_events / disable_events: an online/offline event marks the switch for readers."""
        if enabled and not self.enabled:
            self.enabled = True
            self.worker("worker-online", master)
        elif not enabled and self.enabled:
            self.worker("worker-offline", master)
            self.flush()
            self.enabled = False
        return {"events": self.enabled}


# -- task-sent, from the producer -----------------------------------------------------------
_sent_publishers: dict[int, object] = {}


def send_sent_events(app) -> None:
    """Publish task-sent for every message `app` publishes (a receiver of after_task_publish)."""
    from qdeploy.core import signals

    def on_publish(sender=None, body=None, headers=None, routing_key=None, **_):
        event = sent_event(sender, body, headers, routing_key)
        if event is None:
            return
        try:
            app.transport.fast.command("PUBLISH", channel(app.transport.keys), json.dumps(event, default=str))
        except _DOWN as exc:
            log.debug("events: task-sent not published (%s)", exc)

    _sent_publishers[id(app)] = on_publish  # held strongly: the signal holds receivers weakly
    signals.after_task_publish.connect(on_publish, dispatch_uid=f"qdeploy.events.sent.{id(app)}")


def stop_sent_events(app) -> None:
    from qdeploy.core import signals

    if _sent_publishers.pop(id(app), None) is not None:
        signals.after_task_publish.disconnect(dispatch_uid=f"qdeploy.events.sent.{id(app)}")


def sent_event(sender, body, headers, routing_key) -> dict | None:
    """The task-sent event of one publish, from whatever the signal carries (Celery's arguments:
    headers with id/task, or a body with them); None when no task id can be found."""
    found: dict = {}
    for source in (headers, body):
        if isinstance(source, str):
            try:
                source = json.loads(source)
            except ValueError:
                continue
        if isinstance(source, dict):
            for ours, theirs in (("uuid", "id"), ("name", "task"), ("queue", "queue"), ("eta", "eta"),
                                 ("retries", "retries")):
                if ours not in found and source.get(theirs) is not None:
                    found[ours] = source[theirs]
    if "uuid" not in found:
        return None
    found.setdefault("name", sender if isinstance(sender, str) else getattr(sender, "name", None))
    if routing_key and "queue" not in found:
        found["queue"] = routing_key
    found.update(type="task-sent", hostname=f"{os.getpid()}@{socket.gethostname()}", timestamp=time.time())
    return found


# -- readers -------------------------------------------------------------------------------
def parse(raw: bytes | str) -> dict | None:
    """One event from the channel, or None for anything that is not one of ours (the channel is
    open to every client of the Redis: never trust it)."""
    if len(raw) > MAX_EVENT:
        return None
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict) or event.get("type") not in TYPES:
        return None
    if not isinstance(event.get("hostname", ""), str) or not isinstance(event.get("timestamp", 0), (int, float)):
        return None
    return event


def listen(broker, timeout: float | None = None, stop=lambda: False) -> Iterator[dict | None]:
    """Events as they come; None every `timeout` seconds without one (to redraw a view)."""
    pubsub = broker.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel(broker.keys))
    try:
        while not stop():
            message = pubsub.get_message(timeout=timeout if timeout is not None else 1.0)
            if message is None:
                if timeout is not None:
                    yield None
                continue
            if message.get("type") == "message":
                event = parse(message["data"])
                if event is not None:
                    yield event
    finally:
        pubsub.close()


def _clean(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return "".join(c if c.isprintable() else "?" for c in text)[:300]


def dump_line(event: dict) -> str:
    """Celery's `events --dump` shape: `node: task-succeeded uuid=... runtime=0.0021`."""
    fields = " ".join(f"{k}={_clean(v)}" for k, v in event.items() if k not in ("type", "hostname", "timestamp"))
    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("timestamp") or 0))
    return f"{stamp} {_clean(event.get('hostname', '?'))}: {event['type']} {fields}".rstrip()
