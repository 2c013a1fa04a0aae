"""The `qdeploy` command line: click commands that parse, call the library, and print.

Each job lives in its own module (`render`, `worker`, ...); this package only assembles them,
lazily: `qdeploy worker` imports the worker's module and not Jinja2, the packager or beat, which
keeps start-up (and the master the children are forked from) small.
"""

import importlib

import click

from qdeploy import __version__

# command name -> the module under qdeploy.cli that defines it (listed in its COMMANDS)
COMMAND_MODULES = {
    "render": "render",
    "worker": "worker",
    "beat": "beat",
    "schedule": "beat",
    "multi": "multi",
    "enqueue": "runtime",
    "result": "runtime",
    "status": "ops",
    "inspect": "ops",
    "control": "ops",
    "queues": "ops",
    "dead-letter": "ops",
    "purge": "ops",
    "dashboard": "ops",
    "health": "observe",
    "events": "observe",
    "package": "package",
    "verify": "verify",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMAND_MODULES:
            return None
        module = importlib.import_module(f"qdeploy.cli.{COMMAND_MODULES[name]}")
        return next(command for command in module.COMMANDS if command.name == name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="qdeploy")
@click.option("-A", "--app", "app_path", default=None, metavar="APP",
              help="The app for every command (Celery's `celery -A proj worker`): proj, proj.celery:app...")
@click.option("-b", "--broker", default=None, metavar="URL", help="The broker URL for every command.")
@click.option("--config", "config_file", default=None, metavar="FILE", help="The config file for every command.")
def main(app_path, broker, config_file) -> None:
    """Run a Redis-backed task queue in production, and deploy it."""
    from qdeploy.cli.common import GROUP
    from qdeploy.core.discovery import cwd_on_path

    cwd_on_path()  # `-A proj` from the project's directory, as with Celery: no PYTHONPATH
    GROUP.update(app=app_path, broker=broker, config=config_file)
