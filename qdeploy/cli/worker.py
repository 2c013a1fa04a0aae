"""`qdeploy worker`: run one worker node (a master and its children, or `-P solo`)."""

from __future__ import annotations

import click

from qdeploy.cli.common import SERVICE_KEYS, config_option, daemon_options, fail, load_config, setting_options
from qdeploy.generator.config import ConfigError
from qdeploy.generator.datatypes import NODE_NAME, NODE_NAME_RULE
from qdeploy.generator.settings import SETTINGS
from qdeploy.service import daemon

WORKER_KEYS = [s.key for s in SETTINGS if s.flag and (s.per_node or s.key in SERVICE_KEYS)]


@click.command()
@config_option
@click.option("--node", metavar="NAME", help="Take node NAME's options from the config (as the rendered services do).")
@click.option("-n", "--hostname", metavar="NAME@HOST", help="Node identity, e.g. w1@%h (default NODE@hostname).")
@daemon_options("worker", "tasks", "Log file (%n %h %i %I expanded; %i/%I: one file per child). Default: stderr.")
@click.option("--max-tasks-jitter", type=click.FloatRange(0, 0.9), default=0.1, show_default=True,
              help="Spread max-tasks-per-child by ± this fraction so children don't recycle together.")
@click.option("--max-memory-per-child-hard", metavar="SIZE", default=None,
              help="Kill a child mid-task above this memory (KiB or 1G); its task is requeued.")
@click.option("-E", "task_events_flag", is_flag=True, help="Publish task events (as --task-events; Celery's -E).")
@setting_options(WORKER_KEYS)
def worker(config_file, node, hostname, uid, gid, allow_root, pidfile, logfile, log_format, detach,
           max_tasks_jitter, max_memory_per_child_hard, task_events_flag, **settings):
    """Run a worker node: a master that forks and supervises N consuming children."""
    from qdeploy.generator.datatypes import size_kib
    from qdeploy.worker import boot, options

    cfg = load_config(config_file, settings)
    name, _, host = (hostname or "").partition("@")
    for value in (node, name):
        if value and not NODE_NAME.fullmatch(value):
            shown = value if len(value) <= 40 else value[:40] + "..."
            fail(f"node name {shown!r} ({len(value)} characters) must be {NODE_NAME_RULE}", 2)
    try:
        hard = size_kib(max_memory_per_child_hard) if max_memory_per_child_hard else 0
    except ValueError as exc:
        fail(f"--max-memory-per-child-hard {max_memory_per_child_hard!r}: {exc}", 2)
    try:
        opts = options.resolve(
            cfg, node, name=name or None, hostname=None if host in ("", "%h") else host, uid=uid, gid=gid, allow_root=allow_root,
            pidfile=pidfile, logfile=logfile, log_format=log_format, detach=detach,
            max_tasks_jitter=max_tasks_jitter, max_memory_per_child_hard=hard, task_events=task_events_flag,
        )
        raise SystemExit(boot.run(opts))
    except ConfigError as exc:
        fail(str(exc), exc.exit_code)
    except daemon.DaemonError as exc:
        fail(str(exc), exc.exit_code)


COMMANDS = [worker]
