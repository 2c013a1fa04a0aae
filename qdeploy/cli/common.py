"""Helpers shared by the click commands: options generated from the settings catalogue, and
turning library errors into one clear line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import click

from qdeploy import config as config_mod
from qdeploy.settings import BY_KEY, Setting


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"qdeploy: error: {message}", err=True)
    sys.exit(code)


def _option(setting: Setting) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    dest = setting.key.replace(".", "__")
    names = [n for n in (setting.flag, setting.short) if n]
    help_text = f"{setting.help.replace('`', '')} [config: {setting.key}]"
    if "/" in (setting.flag or ""):
        return click.option(setting.flag, dest, default=None, help=help_text)
    return click.option(*names, dest, default=None, metavar="VALUE", help=help_text)


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
    try:
        return config_mod.load(config_file, cli)
    except config_mod.ConfigError as exc:
        fail(str(exc), exc.exit_code)


config_option = click.option(
    "--config", "config_file", metavar="FILE", default=None,
    help="Config file (default: $QDEPLOY_CONFIG, ./qdeploy.toml, /etc/qdeploy/qdeploy.toml).",
)
