"""`qdeploy render`: one config in, every service-manager file out."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from qdeploy.cli.common import config_option, fail, load_config, setting_options
from qdeploy.core.urls import redact_text
from qdeploy.generator import render as render_mod
from qdeploy.generator import tree
from qdeploy.generator.config import ConfigError
from qdeploy.generator.settings import SETTINGS

RENDER_KEYS = [s.key for s in SETTINGS if s.flag]


@click.command()
@config_option
@click.option("--out", "out", metavar="DIR", help="Write the tree under DIR (default ./qdeploy-build).")
@click.option("--root", "root", metavar="DIR", help="Install into an existing root, e.g. / on the host.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if the tree on disk differs.")
@click.option("--diff", "show_diff", is_flag=True, help="Write nothing; show a diff against the tree on disk.")
@click.option("--explain", is_flag=True, help="Write nothing; print every service's command line and node options.")
@click.option("--json", "as_json", is_flag=True, help="With --explain: print JSON.")
@setting_options(RENDER_KEYS)
def render(config_file, out, root, check, show_diff, explain, as_json, **settings):
    """Render systemd, init.d, supervisord, tmpfiles, sysusers and logrotate files for every node."""
    if out and root:
        fail("--out and --root exclude each other", 2)
    cfg = load_config(config_file, settings)
    if explain:
        _print_explain(render_mod.explain(cfg), as_json)
        return
    try:
        files = render_mod.render(cfg)
    except ConfigError as exc:
        fail(str(exc), exc.exit_code)
    target = Path(root or out or "qdeploy-build")
    if root and not target.is_dir():
        fail(f"--root {root}: no such directory", 2)
    if check or show_diff:
        changes = tree.compare(files, target)
        for change in changes:
            click.echo(change.diff if show_diff else f"{change.kind:8} {change.path}", nl=not show_diff)
        if changes:
            raise SystemExit(1)
        click.echo(f"up to date: {len(files)} files under {target}")
        return
    try:
        warnings = tree.write(files, target, cfg["group"], live=bool(root))
    except tree.TreeError as exc:
        fail(str(exc), exc.exit_code)
    except OSError as exc:
        fail(f"cannot write {exc.filename or target}: {exc.strerror or exc}")
    for warning in warnings:
        click.echo(f"qdeploy: warning: {warning}", err=True)
    for file in files:
        click.echo(f"  {file.mode:04o}  {target / file.path}")
    beat = "on" if cfg["beat.enabled"] else "off"
    click.echo(f"wrote {len(files)} files to {target}/ (nodes: {' '.join(cfg.nodes)}; beat: {beat})")


def _print_explain(services: dict, as_json: bool) -> None:
    """Every line redacted, as every error and diff is (a credential never reaches the terminal)."""
    if as_json:
        click.echo(redact_text(json.dumps(services, indent=2)))
        return
    for name, service in services.items():
        click.echo(redact_text(f"{name}: {shlex.join(service['argv'])}"))
        options = ", ".join(f"{k}={v}" for k, v in service["options"].items())
        if options:
            click.echo(redact_text(f"    {options}"))


COMMANDS = [render]
