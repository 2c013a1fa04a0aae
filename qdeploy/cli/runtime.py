"""`qdeploy enqueue`, `qdeploy result`: parse, call the runtime, print.

Every failure an operator can cause prints ONE line to stderr and exits non-zero:
2 = bad input (app path, URL, arguments), 3 = broker unreachable, 1 = the task failed,
4 = timed out waiting for a result.
"""

from __future__ import annotations

import importlib
import json
import sys

import click
import redis

from qdeploy.core.connection import BrokerURLError, redact

EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4
DEFAULT_APP = "qdeploy.demo:app"


def fail(command: str, text: str, code: int) -> None:
    click.echo(f"qdeploy {command}: error: {' '.join(str(text).split())}", err=True)
    sys.exit(code)


def load_app(path: str, command: str):
    from qdeploy.core.app import App

    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself raising while importing
        fail(command, f"cannot import app {path!r}: {type(exc).__name__}: {exc}", EXIT_USAGE)
    app = getattr(module, attr or "app", None)
    if not isinstance(app, App):
        fail(command, f"{path!r} is not a qdeploy App (expected 'module:attribute')", EXIT_USAGE)
    return app


def connect_app(app_path: str, broker: str | None, command: str):
    """Import the app, apply -b, and check the broker answers PING."""
    app = load_app(app_path, command)
    if broker:
        app.configure(broker=broker)
    try:
        app.transport.ping()
    except BrokerURLError as exc:
        fail(command, str(exc), EXIT_USAGE)
    except redis.RedisError as exc:
        fail(command, f"cannot reach broker {redact(app.broker_url)}: {exc}", EXIT_UNAVAILABLE)
    return app


def _json_or_text(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


app_option = click.option("-A", "--app", "app_path", default=DEFAULT_APP, show_default=True,
                          envvar="QDEPLOY_APP", help="The app, as module:attribute.")
broker_option = click.option("-b", "--broker", envvar="QDEPLOY_BROKER", default=None,
                             help="Broker URL (redis://, rediss://, unix://, sentinel://); "
                                  "default: the app's.")


@click.command()
@click.argument("task")
@click.argument("args", nargs=-1)
@app_option
@broker_option
@click.option("-k", "--kwarg", "kwargs", multiple=True, metavar="KEY=VALUE",
              help="A keyword argument (VALUE parsed as JSON when it is JSON). Repeatable.")
@click.option("-q", "--queue", default=None, help="Queue (default: the task's).")
@click.option("--countdown", type=float, default=None, help="Run no earlier than N seconds from now.")
@click.option("--expires", type=float, default=None, help="Do not run after N seconds from now.")
@click.option("--id", "task_id", default=None, help="Use this task id.")
@click.option("--force", is_flag=True, help="Send even if the app does not know the task.")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="With --wait.")
def enqueue(task, args, app_path, broker, kwargs, queue, countdown, expires, task_id, force,
            wait, timeout):
    """Send TASK with ARGS (each parsed as JSON when it is JSON); print the task id."""
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
    except redis.RedisError as exc:
        fail("enqueue", f"cannot enqueue: {exc}", EXIT_UNAVAILABLE)
    click.echo(res.id)
    if wait:
        sys.exit(_show(res, timeout, as_json=False, with_traceback=False))


@click.command()
@click.argument("task_id")
@app_option
@broker_option
@click.option("--wait", is_flag=True, help="Wait until the task is ready.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="With --wait.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
@click.option("--traceback", "with_traceback", is_flag=True, help="Print a failure's traceback.")
def result(task_id, app_path, broker, wait, timeout, as_json, with_traceback):
    """Print the state and result of TASK_ID (exit 1 if it failed or was revoked)."""
    app = connect_app(app_path, broker, "result")
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
    meta = res.info
    if as_json:
        click.echo(json.dumps(dict(meta, id=res.id)))
    elif meta["state"] == "FAILURE":
        click.echo(f"FAILURE {meta.get('exc_type')}: {meta.get('exc')}")
        if with_traceback and meta.get("traceback"):
            click.echo(meta["traceback"].rstrip())
    elif meta["state"] == "REVOKED":
        click.echo(f"REVOKED {meta.get('reason') or ''}".rstrip())
    else:
        click.echo(f"{meta['state']} {json.dumps(meta.get('result'))}")
    return EXIT_TASK_FAILED if meta["state"] in ("FAILURE", "REVOKED") else EXIT_OK


COMMANDS = [enqueue, result]
