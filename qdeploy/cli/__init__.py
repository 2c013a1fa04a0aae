"""The `qdeploy` command line: click commands that parse, call the library, and print.

Each job lives in its own module (`render`, `runtime`, ...); this package only assembles them.
"""

import click

from qdeploy import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="qdeploy")
def main() -> None:
    """Run a Redis-backed task queue in production, and deploy it."""


def _register() -> None:
    from qdeploy.cli import beat, multi, ops, package, render, runtime, verify, worker

    for module in (render, runtime, worker, package, multi, beat, ops, verify):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
