"""Start a worker node: everything between "the command line was parsed" and "the master loop
runs", in the order that makes failures clear and privileges safe.

    import the app  → dirs (as root, owned by the service user) → log file → pid file
    → detach (the parent waits for readiness) → connect → drop privileges → run the pool

Everything the children need is imported before the privilege drop, so a service user that
cannot read the interpreter's directories (a venv under /root) still works.

Every failure before readiness is one line on stderr (or through the readiness pipe when
detached) and a non-zero exit.
"""

from __future__ import annotations

import json
import logging
import os

import redis

from qdeploy import daemon
from qdeploy.app import AppImportError, load_app
from qdeploy.connection import BrokerURLError, connect, redact
from qdeploy.sdnotify import Notifier
from qdeploy.worker import child, logs  # noqa: F401 - loaded before privileges are dropped
from qdeploy.worker.master import ADOPT_ENV, Master
from qdeploy.worker.options import WorkerOptions

log = logging.getLogger("qdeploy.worker")


EX_USAGE, EX_UNAVAILABLE = 2, 3  # the same codes as enqueue/result: bad input, broker unreachable


class BootError(daemon.DaemonError):
    pass


def run(opts: WorkerOptions) -> int:
    """Boot and run a worker node; returns the exit code."""
    reexec = json.loads(os.environ[ADOPT_ENV]) if ADOPT_ENV in os.environ else None
    if opts.chdir:
        try:
            os.chdir(opts.workdir)
        except OSError as exc:
            raise BootError(f"cannot change into workdir {opts.workdir}: {exc.strerror}", EX_USAGE) from None
    try:
        app = load_app(opts.app)
    except AppImportError as exc:
        raise BootError(str(exc), EX_USAGE) from None
    if opts.broker:
        app.configure(broker=opts.broker)
    notifier = Notifier()
    target = None if reexec else _identity(opts)
    if not reexec:
        daemon.make_dirs({opts.log_dir: 0o750, opts.pid_dir: 0o755, opts.state_dir: 0o750}, target)
    logs.setup(opts, owner_uid=target.uid if target else None, owner_gid=target.gid if target else None)
    pidfile = _pidfile(opts, reexec)
    readiness = None
    try:
        if opts.detach and not reexec:
            readiness = daemon.detach(opts.workdir, opts.umask, opts.start_timeout)
            if pidfile:
                pidfile.update(os.getpid())
        elif not reexec:
            os.umask(opts.umask)
        broker = _connect(app)  # before dropping privileges: everything it imports is loaded now
        if target:
            daemon.drop_privileges(target)
        daemon.refuse_root(opts.allow_root)
        if opts.pool == "solo":
            return _solo(app, opts, broker, notifier, readiness)
        return Master(app, opts, broker, notifier, readiness, pidfile).run()
    except daemon.DaemonError as exc:
        if readiness is not None:
            readiness.fail(str(exc), exc.exit_code)
        raise
    finally:
        if pidfile is not None:
            pidfile.release()


def _identity(opts: WorkerOptions) -> daemon.Identity | None:
    """The user to become. As root: --uid/--gid, else the config's user/group, unless
    --allow-root keeps root (then only an explicit --uid drops). Not root: only an explicit --uid
    (which then fails unless it is already us)."""
    if os.geteuid() != 0 or opts.allow_root:
        return daemon.identity(opts.user, opts.group) if opts.explicit_user else None
    ident = daemon.identity(opts.user, opts.group)
    if ident and ident.uid == 0:
        raise BootError("refusing to run tasks as root: set user/group (--uid/--gid) or pass --allow-root", daemon.EX_NOPERM)
    return ident


def _pidfile(opts: WorkerOptions, reexec: dict | None) -> daemon.Pidfile | None:
    if reexec and reexec.get("pidfile"):
        path, fd = reexec["pidfile"]
        return daemon.Pidfile.adopt(path, fd)
    if not opts.pidfile:
        return None
    pidfile = daemon.Pidfile(opts.pidfile)
    pidfile.acquire()
    return pidfile


def _connect(app):
    """The master's own connection: short timeouts, so a Redis outage never stalls the loop."""
    from qdeploy.broker import Broker

    url = app.broker_url
    try:
        client = connect(url, retries=0, socket_timeout=3.0)
        client.ping()
    except BrokerURLError as exc:
        raise BootError(str(exc), EX_USAGE) from None
    except (redis.RedisError, OSError) as exc:
        raise BootError(f"cannot reach broker {redact(url)}: {exc}", EX_UNAVAILABLE) from None
    return Broker(url, app.namespace, result_ttl=app.result_ttl, client=client)


def _solo(app, opts: WorkerOptions, broker, notifier: Notifier, readiness) -> int:
    """One process, no children: the consumer loop runs in the master itself."""
    import signal

    from qdeploy.worker.child import Consumer

    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    # The node name is the consumer identity: a restarted solo worker takes back what it held.
    consumer = Consumer(app, opts.queues, opts.owner,
                        default_limits=(opts.soft_time_limit or None, opts.time_limit or None))
    notifier.ready(f"solo consumer on {','.join(opts.queues)}")
    if readiness is not None:
        readiness.ok()
    log.info("worker %s (solo) consuming %s", opts.owner, ",".join(opts.queues))
    consumer.run(max_tasks=opts.max_tasks_per_child or None, should_stop=lambda: bool(stop))
    notifier.stopping()
    return 0
