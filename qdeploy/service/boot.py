"""Boot steps shared by the long-running services, `qdeploy worker` and `qdeploy beat`.

Both start in the same order, which makes failures clear and privileges safe:

    enter the workdir → import the app → dirs (as root, owned by the service user) → log file
    → pid file → detach (the parent waits for readiness) → connect → drop privileges → run

Options are duck-typed: `WorkerOptions` and `BeatOptions` both carry the fields used here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from qdeploy.service import daemon
from qdeploy.core.app import AppImportError, load_app
from qdeploy.core.broker import Broker
from qdeploy.core.connection import BrokerURLError, connect, redact
from qdeploy.generator.nodes import expand
from qdeploy.service import logs

EX_USAGE, EX_UNAVAILABLE = 2, 3  # the same codes as enqueue/result: bad input, broker unreachable


class BootError(daemon.DaemonError):
    pass


@dataclass(frozen=True, kw_only=True)
class DaemonOptions:
    """What both services (WorkerOptions, BeatOptions) take the same way from the config and
    their daemon flags (`daemon_fields` builds them), and what the boot below reads."""

    app: str
    broker: str | None  # None: the app's own broker (no config, flag or $QDEPLOY_BROKER set one)
    log_level: str
    log_format: str
    logfile: str | None
    pidfile: str | None
    detach: bool
    user: str | None
    group: str | None
    allow_root: bool
    explicit_user: bool  # --uid/--gid given on the command line
    workdir: str
    chdir: bool  # workdir was set (config, environment or flag): change into it before importing
    umask: int
    log_dir: str
    pid_dir: str
    state_dir: str
    start_timeout: float = 30.0


def daemon_fields(cfg, name: str, host: str, *, uid=None, gid=None, allow_root=False, pidfile=None,
                  logfile=None, log_format=None, detach=False) -> dict:
    """The DaemonOptions fields, from the config and the daemon flags."""
    return dict(
        app=cfg["app"],
        broker=cfg["broker"] if "broker" in cfg.given else None,  # None: the app's own broker
        log_level=cfg["log_level"],
        log_format=log_format or "text",
        logfile=logfile or None,  # may hold %i/%I: expanded per process by qdeploy.service.logs
        pidfile=expand(pidfile, name, host) if pidfile else None,
        detach=bool(detach),
        user=uid or cfg["user"],
        group=gid or (None if uid else cfg["group"]),  # --uid alone: that user's own group
        allow_root=bool(allow_root),
        explicit_user=bool(uid or gid),
        workdir=cfg["workdir"],
        chdir="workdir" in cfg.given,  # only a configured workdir is entered before importing
        umask=int(cfg["umask"], 8),
        log_dir=cfg["log_dir"],
        pid_dir=cfg["pid_dir"],
        state_dir=cfg["state_dir"],
    )


def check_config_file(path: str | None) -> None:
    """As root, a config that anyone but root can change picks the user, app and argv that root
    starts: refuse it, as the init scripts do (exit 77)."""
    if os.geteuid() != 0 or not path:
        return
    st = os.stat(path)
    if st.st_uid != 0:
        raise BootError(f"refusing config {path}: owned by uid {st.st_uid}, not root", daemon.EX_NOPERM)
    if st.st_mode & 0o022:
        raise BootError(f"refusing config {path}: group/world-writable (mode {st.st_mode & 0o7777:04o}); "
                        f"chmod go-w {path}", daemon.EX_NOPERM)


def load(opts):
    """Change into the workdir (when one was configured) and import the app, applying -b."""
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
    return app


def identity(opts, what: str) -> daemon.Identity | None:
    """The user to become. As root: --uid/--gid, else the config's user/group, unless
    --allow-root keeps root (then only an explicit --uid drops). Not root: only an explicit --uid
    (which then fails unless it is already us)."""
    if os.geteuid() != 0 or opts.allow_root:
        return daemon.identity(opts.user, opts.group) if opts.explicit_user else None
    ident = daemon.identity(opts.user, opts.group)
    if ident and ident.uid == 0:
        raise BootError(f"refusing to run {what} as root: set user/group (--uid/--gid) or pass --allow-root",
                        daemon.EX_NOPERM)
    return ident


@contextmanager
def daemonized(opts, target: daemon.Identity | None, what: str, *, adopted: daemon.Pidfile | None = None,
               fresh: bool = True) -> Iterator[tuple[daemon.Readiness | None, daemon.Pidfile | None]]:
    """Dirs, log file, pid file and --detach; yields (readiness, pidfile). A failure inside is
    reported through the readiness pipe to a waiting `--detach` parent; the pid file is always
    released. `fresh=False` (a re-exec'd worker) skips what the first image already did."""
    if fresh:
        daemon.make_dirs({opts.log_dir: 0o750, opts.pid_dir: 0o755, opts.state_dir: 0o750}, target)
    logs.setup(opts, owner_uid=target.uid if target else None, owner_gid=target.gid if target else None)
    pidfile = adopted
    if pidfile is None and opts.pidfile:
        pidfile = daemon.Pidfile(opts.pidfile)
        pidfile.acquire()
    readiness = None
    try:
        if opts.detach and fresh:
            readiness = daemon.detach(opts.workdir, opts.umask, opts.start_timeout, what)
            if pidfile:
                pidfile.update(os.getpid())
        elif fresh:
            os.umask(opts.umask)
        yield readiness, pidfile
    except daemon.DaemonError as exc:
        if readiness is not None:
            readiness.fail(str(exc), exc.exit_code)
        raise
    finally:
        if pidfile is not None:
            pidfile.release()


def connect_broker(app) -> Broker:
    """The service's own connection, made before privileges are dropped (everything it imports
    is loaded then), with short timeouts so a Redis outage never stalls a loop."""
    url = app.broker_url
    try:
        client = connect(url, retries=0, socket_timeout=3.0)
        client.ping()
    except BrokerURLError as exc:
        raise BootError(str(exc), EX_USAGE) from None
    except (redis.RedisError, OSError) as exc:
        raise BootError(f"cannot reach broker {redact(url)}: {exc}", EX_UNAVAILABLE) from None
    return Broker(url, app.namespace, result_ttl=app.result_ttl, client=client)


def become(target: daemon.Identity | None, allow_root: bool, what: str) -> None:
    if target:
        daemon.drop_privileges(target)
    daemon.refuse_root(allow_root, what)
