"""`qdeploy enqueue`, `qdeploy result`: parse, call the runtime, print.

Every failure an operator can cause prints ONE line to stderr and exits non-zero:
2 = bad input (app path, URL, arguments), 3 = broker unreachable, 1 = the task failed,
4 = timed out waiting for a result.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass

import click

from qdeploy.cli.common import config_option
from qdeploy.core.connection import RedisError
from qdeploy.core.urls import BrokerURLError, redact, redact_text
from qdeploy.defaults import EX_FAILED, EX_OK, EX_TIMEOUT, EX_UNAVAILABLE, EX_USAGE

EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_TIMEOUT = EX_OK, EX_FAILED, EX_USAGE, EX_UNAVAILABLE, EX_TIMEOUT
DEFAULT_APP = "qdeploy.demo:app"


def fail(command: str, text: str, code: int) -> None:
    """One line on stderr (every credential in a URL redacted), then exit `code`."""
    click.echo(f"qdeploy {command}: error: {' '.join(redact_text(str(text)).split())}", err=True)
    sys.exit(code)


@dataclass(frozen=True)
class Target:
    """The app and broker an operator command talks to, found the way `qdeploy worker` finds
    them: -A/-b (or $QDEPLOY_APP/$QDEPLOY_BROKER) win over the config (--config FILE, else
    $QDEPLOY_CONFIG, ./qdeploy.toml, /etc/qdeploy/qdeploy.toml), which wins over the defaults
    (the demo app; the app's own broker). So on a deployed host `qdeploy status` needs no -b,
    and the password stays out of `ps`."""

    config_file: str | None
    app_path: str | None
    broker: str | None

    def resolve(self, command: str) -> tuple[str, str | None]:
        """(app path, broker URL or None for the app's own); a bad config: exit 2, one line."""
        from qdeploy.cli.common import GROUP, check_broker_flag
        from qdeploy.generator import config as config_mod

        broker = self.broker or GROUP["broker"]
        check_broker_flag(broker)
        try:
            cfg = config_mod.load(self.config_file or GROUP["config"],
                                  {"app": self.app_path or GROUP["app"], "broker": broker})
        except config_mod.ConfigError as exc:
            fail(command, str(exc), exc.exit_code)
        return cfg["app"], (cfg["broker"] if "broker" in cfg.given else None)


def load_app(path: str, command: str):
    """The app `-A` names, found as the worker finds it (`proj`, `proj.celery:app`...)."""
    from qdeploy.core.app import AppImportError
    from qdeploy.core.discovery import AppNotFound, find_app

    try:
        app = find_app(path)
        app.import_includes()  # include=/imports/autodiscover_tasks: the tasks `enqueue` checks names against
    except (AppNotFound, AppImportError) as exc:
        fail(command, str(exc), EXIT_USAGE)
    return app


def connect_app(app_path: str, broker: str | None, command: str):
    """Import the app, apply -b, and check the broker answers PING."""
    app = load_app(app_path, command)
    if broker:
        try:
            app.configure(broker=broker)
        except ValueError as exc:
            fail(command, str(exc), EXIT_USAGE)
    try:
        app.transport.ping()
    except BrokerURLError as exc:
        fail(command, str(exc), EXIT_USAGE)
    except RedisError as exc:
        from qdeploy.core.connection import error_text

        fail(command, f"cannot reach broker {redact(app.broker_url)}: {error_text(exc)}", EXIT_UNAVAILABLE)
    return app


def _json_or_text(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


app_option = click.option("-A", "--app", "app_path", default=None, metavar="MODULE:ATTR",
                          help=f"The app (or $QDEPLOY_APP; default: the config's app, else {DEFAULT_APP}).")
broker_option = click.option("-b", "--broker", default=None, metavar="URL",
                             help="Broker URL (or $QDEPLOY_BROKER; default: the config's broker, else "
                                  "the app's own). A password here shows in `ps`: keep it in the config.")


def target_options(func):
    """--config, -A/--app and -b/--broker, handed to the command as one `target` (a Target)."""
    @functools.wraps(func)
    def command(*args, config_file, app_path, broker, **kwargs):
        return func(*args, target=Target(config_file, app_path, broker), **kwargs)

    for option in (broker_option, app_option, config_option):
        command = option(command)
    return command


@click.command()
@click.argument("task")
@click.argument("args", nargs=-1)
@target_options
@click.option("-k", "--kwarg", "kwargs", multiple=True, metavar="KEY=VALUE",
              help="A keyword argument (VALUE parsed as JSON when it is JSON). Repeatable.")
@click.option("-q", "--queue", default=None, help="Queue (default: the task's).")
@click.option("--countdown", type=float, default=None, help="Run no earlier than N seconds from now.")
@click.option("--expires", type=float, default=None, help="Do not run after N seconds from now.")
@click.option("--id", "task_id", default=None, help="Use this task id.")
@click.option("--force", is_flag=True, help="Send even if the app does not know the task.")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="With --wait.")
def enqueue(task, args, target, kwargs, queue, countdown, expires, task_id, force, wait, timeout):
    """Send TASK with ARGS (each parsed as JSON when it is JSON); print the task id."""
    app_path, broker = target.resolve("enqueue")
    app = connect_app(app_path, broker, "enqueue")
    if task not in app.tasks and not force:
        known = ", ".join(sorted(app.tasks)) or "none"
        fail("enqueue", f"unknown task {task!r} in {app_path} (known: {known}); "
             "use -A or --force", EXIT_USAGE)
    kw = {}
    for item in kwargs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail("enqueue", f"bad --kwarg {item!r}, expected KEY=VALUE", EXIT_USAGE)
        kw[key] = _json_or_text(value)
    try:
        res = app.send_task(task, [_json_or_text(a) for a in args], kw, queue=queue,
                            countdown=countdown, expires=expires, task_id=task_id)
    except TypeError as exc:
        fail("enqueue", str(exc), EXIT_USAGE)
    except RedisError as exc:
        fail("enqueue", f"cannot enqueue: {exc}", EXIT_UNAVAILABLE)
    click.echo(res.id)
    if wait:
        sys.exit(_show(res, timeout, as_json=False, with_traceback=False))


@click.command()
@click.argument("task_id")
@target_options
@click.option("--wait", is_flag=True, help="Wait until the task is ready.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="With --wait.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
@click.option("--traceback", "with_traceback", is_flag=True, help="Print a failure's traceback.")
def result(task_id, target, wait, timeout, as_json, with_traceback):
    """Print the state and result of TASK_ID (exit 1 if it failed or was revoked)."""
    app = connect_app(*target.resolve("result"), "result")
    res = app.AsyncResult(task_id)
    sys.exit(_show(res, timeout if wait else None, as_json, with_traceback))


def _show(res, timeout, as_json, with_traceback) -> int:
    from qdeploy.core.results import ResultTimeout

    if timeout is not None:
        try:
            res.get(timeout=timeout, propagate=False)
        except ResultTimeout:
            fail("result", f"task {res.id} not ready after {timeout}s (state {res.state})",
                 EXIT_TIMEOUT)
    meta = res.meta
    if as_json:
        click.echo(json.dumps(dict(meta, id=res.id)))
    elif meta["state"] == "FAILURE":  # a task's error may quote a URL: redacted like ours
        click.echo(redact_text(f"FAILURE {meta.get('exc_type')}: {meta.get('exc')}"))
        if with_traceback and meta.get("traceback"):
            click.echo(redact_text(meta["traceback"].rstrip()))
    elif meta["state"] == "REVOKED":
        click.echo(f"REVOKED {meta.get('reason') or ''}".rstrip())
    else:
        click.echo(f"{meta['state']} {json.dumps(meta.get('result'))}")
    return EXIT_TASK_FAILED if meta["state"] in ("FAILURE", "REVOKED") else EXIT_OK


COMMANDS = [enqueue, result]
