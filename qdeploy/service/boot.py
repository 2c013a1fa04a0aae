"""Boot steps shared by the long-running services, `qdeploy worker` and `qdeploy beat`.

Both start in the same order, which makes failures clear and privileges safe:

    enter the workdir → import the app → dirs (as root, owned by the service user) → log file
    → pid file → detach (the parent waits for readiness) → connect → drop privileges → run

Before the first directory is made, `check_paths` checks every path the rest uses (the
directories, the log and pid files' directories, the workdir --detach enters), so a path that
cannot be used is one line on the terminal — never a traceback, and never only "the worker
exited before it was ready" from a parent that already detached.

Options are duck-typed: `WorkerOptions` and `BeatOptions` both carry the fields used here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from qdeploy import _imports
from qdeploy.core.app import AppImportError, load_app
from qdeploy.core.broker import Broker
from qdeploy.core.connection import BrokerURLError, RedisError, connect, error_text, redact
from qdeploy.defaults import EX_UNAVAILABLE, EX_USAGE, START_TIMEOUT
from qdeploy.generator.nodes import expand
from qdeploy.service import daemon, logs


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
    start_timeout: float = START_TIMEOUT
    given_dirs: frozenset[str] = frozenset()  # which of log_dir/pid_dir/state_dir were configured
    broker_source: str | None = None  # where `broker` came from (a flag, $QDEPLOY_BROKER, the file)


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
        given_dirs=frozenset(key for key in ("log_dir", "pid_dir", "state_dir") if key in cfg.given),
        broker_source=("the command line (-b)" if "broker" in cfg.explicit else "$QDEPLOY_BROKER"
                       if "QDEPLOY_BROKER" in os.environ else cfg.source) if "broker" in cfg.given else None,
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
            who = "" if os.geteuid() == 0 else f" (user {daemon.user_name()})"
            raise BootError(f"cannot enter workdir {opts.workdir}: {exc.strerror}{who}; pass --workdir DIR "
                            "or set workdir in the config", EX_USAGE) from None
    try:
        app = load_app(opts.app)
    except (AppImportError, ValueError) as exc:  # ValueError: a setting of the app's that cannot be used
        raise BootError(str(exc), EX_USAGE) from None
    if opts.broker:
        own, where = app.conf.get("broker_url"), app.conf.source_of("broker_url")
        if own and own != opts.broker and where and not where.startswith("app.configure"):
            app.conf.add_note("broker:conflict", f"two broker URLs: {redact(own)} from {where} and "
                              f"{redact(opts.broker)} from {opts.broker_source or 'the config'}; using the latter "
                              "(qdeploy.toml, $QDEPLOY_BROKER and -b win over the app's config)")
        try:
            app.configure(broker=opts.broker)
        except ValueError as exc:
            raise BootError(str(exc), EX_USAGE) from None
    return app


def start_notes(app, log, extra: list[str] | tuple = ()) -> None:
    """Log, once each, what the app's Celery settings do differently here (unsupported settings,
    ignored values, conflicts with the config): the one warning at start each deserves."""
    for note in [*app.conf.start_notes(), *extra]:
        log.warning("config: %s", note)


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
        check_paths(opts).create(target)
    try:
        logs.setup(opts, owner_uid=target.uid if target else None, owner_gid=target.gid if target else None)
    except OSError as exc:  # checked above; this is for a race
        raise BootError(f"cannot open log file {opts.logfile}: {exc.strerror or exc}", daemon.EX_CANTCREAT) from None
    pidfile = adopted
    if pidfile is None and opts.pidfile:
        pidfile = daemon.Pidfile(opts.pidfile)
        pidfile.acquire()
    readiness = None
    try:
        if opts.detach and fresh:
            readiness = daemon.detach(opts.workdir, opts.umask, opts.start_timeout, what,
                                      before_fail=pidfile.release if pidfile else None)
            if pidfile:
                pidfile.update(os.getpid())
        elif fresh:
            os.umask(opts.umask)
        yield readiness, pidfile
    except daemon.DaemonError as exc:
        if readiness is not None:
            readiness.fail(str(exc), exc.exit_code)
        raise
    except Exception as exc:  # the waiting parent hears why, not "exited before it was ready"
        if readiness is not None:
            readiness.fail(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if pidfile is not None:
            pidfile.release()


def check_paths(opts) -> daemon.BootPaths:
    """Every path the boot touches, in the order it touches them (see the module docstring):
    the service directories, the log file, the pid file, then the workdir that --detach enters.
    Raises one DaemonError for the first that cannot be used; nothing is created until all are
    fine. As root the service directories are created and handed to the service user; a user
    who is not root skips a default one (not configured) that it may not create, since the run
    only needs the directories its own log and pid files are in."""
    paths = daemon.BootPaths()
    who, root = paths.who, os.geteuid() == 0
    for key, flag, mode in (("log_dir", "--log-dir", 0o750), ("pid_dir", "--pid-dir", 0o755),
                            ("state_dir", "--state-dir", 0o750)):
        fix = f"pass {flag} DIR" + ("" if root else f" (a directory user {who} may create or write)")
        path = getattr(opts, key)
        paths.directory(path, mode, f"{key} {path}", fix, required=root or key in opts.given_dirs, owned=True)
    can = "" if root else f" in a directory user {who} can write"
    if opts.logfile:
        for index in (None, 1):  # the master's file, and a child's when %i/%I are in a directory name
            paths.file(expand(opts.logfile, opts.node, opts.owner.partition("@")[2], index), "log file",
                       f"choose a --logfile{can}", dir_mode=0o750)
    if opts.pidfile:
        paths.file(opts.pidfile, "pid file", f"choose a --pidfile{can}")
    if opts.detach:
        paths.enter(opts.workdir, "pass --workdir DIR or set workdir in the config", EX_USAGE)
    return paths


def load_what_the_user_cannot_read(target: daemon.Identity, broker: Broker | None) -> None:
    """redis-py's client stack is loaded, and the broker's redis-py client made, on first use
    (qdeploy/_imports.py, connection.LazyClient), which may come after the privilege drop (a
    task's `AsyncResult.get`, `/metrics`' queue depths, `-B`): both are done now if the service
    user could not read redis-py or the standard library (which redis-py imports from) then."""
    package = _imports.package_path("redis")
    if not package or daemon.readable_as(target, [*package, os.path.dirname(os.__file__)]):
        return
    _imports.load("redis")
    if broker is not None:
        getattr(broker.client, "real", None)  # a LazyClient makes its client


def connect_broker(app) -> Broker:
    """The service's one Broker, connected before privileges are dropped (everything it imports
    is loaded then), with short timeouts so a Redis outage never stalls a loop. The worker's
    master, its control channel and the children it forks (or `-P solo`'s consumer) all use it;
    retries=0: the loops handle reconnects (and their at-least-once consequences) themselves."""
    url = app.broker_url
    try:
        broker = app.connect_broker(client=connect(url, retries=0, socket_timeout=3.0))
        broker.ping()
    except BrokerURLError as exc:
        raise BootError(str(exc), EX_USAGE) from None
    except (RedisError, OSError) as exc:
        raise BootError(f"cannot reach broker {redact(url)}: {error_text(exc)}", EX_UNAVAILABLE) from None
    return broker


def become(target: daemon.Identity | None, allow_root: bool, what: str, broker: Broker | None = None) -> None:
    if target:
        load_what_the_user_cannot_read(target, broker)
        daemon.drop_privileges(target)
    daemon.refuse_root(allow_root, what)
