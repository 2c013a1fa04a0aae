"""Helpers shared by the click commands: options generated from the settings catalogue, and
turning library errors into one clear line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import click

from qdeploy.core.urls import redact_text
from qdeploy.generator import config as config_mod
from qdeploy.generator.settings import BY_KEY, Setting

# `qdeploy -A proj -b URL --config FILE <command>`: the group's options, the defaults of every
# command's own -A/-b/--config (which win).
GROUP: dict[str, str | None] = {"app": None, "broker": None, "config": None}


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr (every credential in a URL redacted), then exit `code`."""
    click.echo(f"qdeploy: error: {redact_text(message)}", err=True)
    sys.exit(code)


def _lower(ctx, param, value):
    return value.lower() if isinstance(value, str) else value


def _pool(ctx, param, value):
    if isinstance(value, str) and value.lower() in ("eventlet", "gevent"):
        fail(f"-P {value}: qdeploy has no {value.lower()} pool: use -P threads -c N (N threads in one supervised "
             "child) for I/O-bound tasks, or prefork (the default) for CPU-bound ones", 2)
    return value


# Celery's spellings beside qdeploy's own (`--loglevel=INFO`).
ALIASES = {"log_level": ("--loglevel",)}
CALLBACKS = {"log_level": _lower, "worker.pool": _pool}


def _option(setting: Setting) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    dest = setting.key.replace(".", "__")
    names = [n for n in (setting.flag, setting.short) if n] + list(ALIASES.get(setting.key, ()))
    help_text = f"{setting.help.replace('`', '')} [config: {setting.key}]"
    if setting.flag and "/" in setting.flag:
        return click.option(setting.flag, dest, default=None, help=help_text)
    return click.option(*names, dest, default=None, metavar="VALUE", help=help_text,
                        callback=CALLBACKS.get(setting.key))


def setting_options(keys: Iterable[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add one click option per setting; the command receives them all in `settings`."""
    settings = [BY_KEY[k] for k in keys]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for setting in reversed(settings):
            func = _option(setting)(func)
        return func

    return decorate


def load_config(config_file: str | None, kwargs: dict[str, Any]) -> config_mod.Config:
    """Pop the setting options out of `kwargs` and load the config; exit 2 on a bad config."""
    cli = {key: kwargs.pop(key.replace(".", "__")) for key in list(BY_KEY) if key.replace(".", "__") in kwargs}
    for key in ("app", "broker"):
        if cli.get(key) is None and GROUP[key] is not None:
            cli[key] = GROUP[key]
    check_broker_flag(cli.get("broker"))
    try:
        return config_mod.load(config_file or GROUP["config"], cli)
    except config_mod.ConfigError as exc:
        fail(str(exc), exc.exit_code)


def check_broker_flag(url: str | None) -> None:
    """-b amqp://... (or $QDEPLOY_BROKER): one line saying what to use instead."""
    import os

    from qdeploy.core.config import ConfigurationError, check_transport

    for where, value in (("-b", url), ("$QDEPLOY_BROKER", os.environ.get("QDEPLOY_BROKER"))):
        try:
            if value:
                check_transport(value, where)
        except ConfigurationError as exc:
            fail(str(exc), 2)


config_option = click.option(
    "--config", "config_file", metavar="FILE", default=None,
    help="Config file (default: $QDEPLOY_CONFIG, ./qdeploy.toml, /etc/qdeploy/qdeploy.toml).",
)


# Settings every long-running service (worker, beat) takes as flags.
SERVICE_KEYS = ["app", "broker", "workdir", "umask", "log_dir", "pid_dir", "state_dir", "log_level"]


def daemon_options(service: str, as_root: str, logfile_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The daemon duties' flags, the same for `qdeploy worker` and `qdeploy beat`."""
    options = [
        click.option("--uid", metavar="USER", help="Run as USER (started as root: dirs and log file are created first)."),
        click.option("--gid", metavar="GROUP", help="Run as GROUP."),
        click.option("--allow-root", is_flag=True, help=f"Allow running {as_root} as root."),
        click.option("--pidfile", metavar="FILE", help="Pid file (%n %h expanded), locked while running."),
        click.option("--logfile", metavar="FILE", help=logfile_help),
        click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True),
        click.option("--detach", is_flag=True, help=f"Run in the background; exit 0 only once the {service} is ready."),
    ]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate
