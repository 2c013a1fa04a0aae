"""Celery's per-process signals in a worker's children (and a solo worker's one process):
`worker_process_init` before it consumes, `worker_process_shutdown` before it exits.

    @worker_process_init.connect
    def reset_db_pool(**kwargs): engine.dispose()     # what a fork must not share

Only a failing `worker_process_init` stops a child: it never consumes, and the reason reaches
the master's log (`E worker_process_init failed: ...`), where repeated failures stop the node
like any child that cannot boot. A raising `worker_process_shutdown` receiver is logged and the
child exits as it would have.
"""

from __future__ import annotations

import logging
import os

from qdeploy.core import results
from qdeploy.core.signals import worker_process_init, worker_process_shutdown

log = logging.getLogger("qdeploy.worker")


def process_init() -> str | None:
    """Send worker_process_init; the first failing receiver's error as one line, or None."""
    for receiver, reply in worker_process_init.send(sender=None):
        if isinstance(reply, BaseException):
            name, text, _ = results.describe(reply)
            return f"{getattr(receiver, '__qualname__', receiver)} raised {name}: {text}"[:500]
    return None


def process_shutdown(exitcode: int) -> None:
    try:
        worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=exitcode)
    except BaseException as exc:  # noqa: BLE001 - SystemExit in a receiver must not skip the child's exit
        log.error("worker_process_shutdown: a receiver raised %s", type(exc).__name__)


def killed_followups(app, broker, task_id: str, exc_type: str, reason: str, queue: str | None = None) -> list | None:
    """What a child would have sent with the ack of a task the master killed (its hard time
    limit): its error callbacks, its chord's failure, its unique key freed; as the ack's ops."""
    from qdeploy.core import message, workflow

    try:
        raw = broker.body(task_id, queue)
        env = message.decode(raw) if raw else None
    except message.MalformedMessage:
        return None
    if env is None or not (env.errbacks or env.chord or env.unique):
        return None
    request = {"id": env.id, "task": env.task, "args": env.args, "kwargs": env.kwargs, "retries": env.retries,
               "queue": env.queue, "parent_id": env.parent_id, "root_id": env.root_id, "group": env.group}
    error = {"type": exc_type, "message": reason, "module": "qdeploy.core.task"}
    try:
        return workflow.encode_ops(app, workflow.after_failure(app, env, request, error, None)) or None
    except (TypeError, ValueError) as exc:
        log.error("task %s: cannot continue its workflow after it was killed: %s", task_id, exc)
        return None
