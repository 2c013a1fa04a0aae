"""Start a worker node: the shared service boot (qdeploy.service.boot), then the master loop or,
with `-P solo`, the consumer loop in this process.

Everything the children need is imported before the privilege drop, so a service user that
cannot read the interpreter's directories (a venv under /root) still works. Every failure before
readiness is one line on stderr (or through the readiness pipe when detached) and a non-zero exit.
"""

from __future__ import annotations

import json
import logging
import os

from qdeploy.core import signals
from qdeploy.defaults import EX_USAGE
from qdeploy.service import boot as service
from qdeploy.service import daemon
from qdeploy.service.sdnotify import Notifier
from qdeploy.worker import child  # noqa: F401 - loaded before privileges are dropped
from qdeploy.worker.lease import NodeLease
from qdeploy.worker.lifecycle import process_init, process_shutdown
from qdeploy.worker.master import ADOPT_ENV, WORKER_BOOT_ERROR, Master
from qdeploy.worker.options import WorkerOptions, with_app
from qdeploy.worker.process import restore_stdio, save_stdio

log = logging.getLogger("qdeploy.worker")


def run(opts: WorkerOptions) -> int:
    """Boot and run a worker node; returns the exit code."""
    reexec = json.loads(os.environ[ADOPT_ENV]) if ADOPT_ENV in os.environ else None
    service.check_config_file(opts.config_file)
    app = service.load(opts)
    opts, notes = with_app(opts, app)  # the app's worker_* settings where the config set none
    if opts.embed_beat and opts.pool == "solo":
        raise service.BootError("-B runs beat as a child of the worker's master: -P solo has none "
                                "(use -P prefork or threads, or run qdeploy beat)", EX_USAGE)
    notifier = Notifier()
    target = None if reexec else service.identity(opts, "tasks")
    with service.daemonized(opts, target, "worker", adopted=_adopted_pidfile(reexec), fresh=not reexec) as (readiness, pidfile):
        broker = service.connect_broker(app)
        if not reexec:  # after the broker answered: a node that cannot start says only why
            service.start_notes(app, log, notes)
        lease = NodeLease(broker, opts.owner, app.visibility_timeout)
        lease.take()  # before anything else: a second master of this node must not start
        _preload_metrics(opts.metrics_port)
        service.become(target, opts.allow_root, "tasks", broker)
        if opts.pool == "solo":
            return _solo(app, opts, broker, lease, notifier, readiness)
        return Master(app, opts, broker, notifier, readiness, pidfile, lease).run()


def _preload_metrics(port: int) -> None:
    """prometheus_client is imported while we may still read everything (issue 21)."""
    if port:
        from qdeploy.ops import metrics

        try:
            metrics.require_client()
        except ImportError:
            pass  # the master says so, in one line, and runs on without metrics


def _adopted_pidfile(reexec: dict | None) -> daemon.Pidfile | None:
    """A re-exec'd master keeps the pid file (and its lock) of the image it replaced."""
    if reexec and reexec.get("pidfile"):
        path, fd = reexec["pidfile"]
        return daemon.Pidfile.adopt(path, fd)
    return None


def _solo(app, opts: WorkerOptions, broker, lease: NodeLease, notifier: Notifier, readiness) -> int:
    """One process, no children: the consumer loop runs in the master itself."""
    import signal

    from qdeploy.worker.child import Consumer

    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    # The node name is the consumer identity: a restarted solo worker takes back what it held.
    save_stdio()
    signals.worker_init.send(sender=None)
    if failed := process_init():  # the one process is the pool: as a child, it does not start
        log.error("worker_process_init failed: %s", failed)
        return WORKER_BOOT_ERROR
    consumer = Consumer(app, opts.queues, opts.owner, broker=broker, on_task_done=lambda *_: restore_stdio(),
                        default_limits=(opts.soft_time_limit or None, opts.time_limit or None))
    assert consumer.heartbeat is not None  # a solo consumer beats for itself
    consumer.heartbeat.lease, consumer.heartbeat.on_lost = lease, lambda: stop.append(signal.SIGTERM)
    notifier.ready(f"solo consumer on {','.join(opts.queues)}")
    if readiness is not None:
        readiness.ok()
    log.info("worker %s (solo) consuming %s", opts.owner, ",".join(opts.queues))
    signals.worker_ready.send(sender=None)
    try:
        consumer.run(max_tasks=opts.max_tasks_per_child or None, should_stop=lambda: bool(stop))
    finally:
        if stop:
            signals.worker_shutting_down.send(sender=opts.owner, sig=signal.Signals(stop[0]).name, how="Warm",
                                              exitcode=0)
        notifier.stopping()
        lease.release_quietly()
        process_shutdown(0)
        signals.worker_shutdown.send(sender=None)
    return 0
