"""`qdeploy verify`: run the testinfra suite that proves a deployed host is right."""

from __future__ import annotations

import sys

import click

from qdeploy.cli.common import fail


@click.command()
@click.option("--hosts", "--host", "hosts", default="local://", show_default=True, metavar="URL[,URL...]",
              help="testinfra hosts: local://, ssh://user@host[:port], paramiko://..., docker://...")
@click.option("--config", "config", default="/etc/qdeploy/qdeploy.toml", show_default=True, metavar="FILE",
              help="The config on the host under test.")
@click.option("--sudo", is_flag=True, help="Run the checks on the host through sudo (an ssh login that is not root).")
@click.option("--no-workers", is_flag=True, help="This host runs no worker nodes (a beat-only host).")
@click.option("-k", "select", metavar="EXPR", help="Only the checks matching EXPR (pytest -k).")
@click.option("-v", "--verbose", is_flag=True, help="One line per check.")
def verify(hosts, config, sudo, no_workers, select, verbose):
    """Check a deployed host: user, dirs, config, units, processes, workers answering."""
    from qdeploy.deploy import verify as verify_mod

    try:
        code = verify_mod.run(hosts, config, sudo=sudo, workers=not no_workers, verbose=verbose, select=select)
    except verify_mod.VerifyUnavailable as exc:
        fail(str(exc), 2)
    sys.exit(code)


COMMANDS = [verify]
