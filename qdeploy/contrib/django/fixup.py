"""Django in a qdeploy worker (Celery's Django fixup, and what it misses).

Installed by `App.import_includes()` (the worker and beat at start) when DJANGO_SETTINGS_MODULE
is set, as Celery installs its own: `django.setup()` first (so `autodiscover_tasks()` can read
INSTALLED_APPS and the tasks modules can import models), then three signal receivers:

* `worker_process_init` (every child, after the fork): the database connections the child
  inherited are the parent's sockets. Closing them the usual way would send the server a
  "terminate" on the parent's session; so each socket is first pointed at /dev/null (dup2),
  then closed. The child opens its own connections on first use.
* `task_prerun` / `task_postrun` (not for eager tasks: those run inside the caller's request
  and transaction): `close_old_connections()`, as Django does around a request, and Django's
  connection health check switched on for the task's first query. So a persistent connection
  (CONN_MAX_AGE > 0) that the server dropped while the child was idle or recycled — a database
  restart, an idle timeout, `pg_terminate_backend` — is noticed and replaced before the task
  uses it, instead of failing the task with "server closed the connection unexpectedly"
  (Celery's fixup only closes connections that already saw an error).
* `worker_process_shutdown`: the child's own connections are closed cleanly.

Receivers only close connections: they never raise into the task (a failure is logged).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("qdeploy.django")
_installed = False


def fixup(app, environ=os.environ):
    """Celery's fixup entry point: None unless this process is a Django project's."""
    if not environ.get("DJANGO_SETTINGS_MODULE"):
        return None
    try:
        import django
    except ImportError:
        return None
    from django.apps import apps

    if not apps.ready:
        django.setup()
    install()
    return "django"


def install() -> None:
    """Connect the receivers once per process."""
    global _installed
    if _installed:
        return
    from qdeploy.core import signals

    signals.worker_process_init.connect(after_fork, weak=False)
    signals.task_prerun.connect(before_task, weak=False)
    signals.task_postrun.connect(after_task, weak=False)
    signals.worker_process_shutdown.connect(at_exit, weak=False)
    _installed = True


def _connections():
    from django.db import connections

    try:
        return list(connections.all(initialized_only=True))
    except TypeError:  # Django < 4.1
        return list(connections.all())


def after_fork(**_) -> None:
    """The inherited connections are closed without a word to the server (the parent's)."""
    for conn in _connections():
        raw = conn.connection
        if raw is None:
            continue
        fd = _fileno(raw)
        if fd is not None:
            devnull = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(devnull, fd)  # what close() writes now goes nowhere; the fd closes with it
            finally:
                os.close(devnull)
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - a half-closed inherited connection may complain: it is gone anyway
            conn.connection = None


def _fileno(raw) -> int | None:
    for attr in ("fileno",):
        method = getattr(raw, attr, None)
        if callable(method):
            try:
                fd = method()
            except Exception:  # noqa: BLE001 - a closed connection, a driver without a socket (sqlite)
                return None
            return fd if isinstance(fd, int) and fd >= 0 else None
    return None


def _eager(task) -> bool:
    try:
        return bool(task.request.is_eager)
    except AttributeError:
        return False


def before_task(sender=None, task=None, **_) -> None:
    if _eager(task or sender):
        return
    try:
        for conn in _connections():
            conn.close_if_unusable_or_obsolete()
            if conn.connection is None:
                continue
            if hasattr(conn, "health_check_enabled"):  # Django >= 4.1: checked on the task's first query
                conn.health_check_enabled = True
                conn.health_check_done = False
            elif not conn.is_usable():
                conn.close()
    except Exception as exc:  # noqa: BLE001 - never fail a task for closing a connection
        log.warning("closing old database connections before the task failed: %s", exc)


def after_task(sender=None, task=None, **_) -> None:
    if _eager(task or sender):
        return
    try:
        from django.db import close_old_connections

        close_old_connections()
    except Exception as exc:  # noqa: BLE001 - the task is done; its connection problem is not its result
        log.warning("closing old database connections after the task failed: %s", exc)


def at_exit(**_) -> None:
    try:
        from django.db import connections

        connections.close_all()
    except Exception:  # noqa: BLE001 - the child is leaving
        pass
