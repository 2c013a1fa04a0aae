"""`qdeploy worker`: run one worker node (a master and its children, or `-P solo`).

Celery's spellings work: `-A proj`, `-l INFO`/`--loglevel=info`, `-n worker1@%h`, `-E`,
`-O fair`, `--without-gossip/--without-mingle/--without-heartbeat` (no-ops here),
`--autoscale=MAX,MIN` and `-B` (beat as a supervised child of the master)."""

from __future__ import annotations

import click

from qdeploy.cli.common import SERVICE_KEYS, config_option, daemon_options, fail, load_config, setting_options
from qdeploy.generator.config import ConfigError
from qdeploy.generator.datatypes import NODE_NAME, NODE_NAME_RULE
from qdeploy.generator.settings import SETTINGS
from qdeploy.service import daemon

WORKER_KEYS = [s.key for s in SETTINGS if s.flag and (s.per_node or s.key in SERVICE_KEYS)]
MAX_CHILDREN = 1024


@click.command()
@config_option
@click.option("--node", metavar="NAME", help="Take node NAME's options from the config (as the rendered services do).")
@click.option("-n", "--hostname", metavar="NAME@HOST",
              help="Node identity, e.g. w1@%h (%h: host name with domain, %n: without, %d: the domain; "
                   "%% a %; default NODE@hostname).")
@daemon_options("worker", "tasks", "Log file (%n %h %i %I expanded; %i/%I: one file per child). Default: stderr.")
@click.option("--max-tasks-jitter", type=click.FloatRange(0, 0.9), default=0.1, show_default=True,
              help="Spread max-tasks-per-child by ± this fraction so children don't recycle together.")
@click.option("--max-memory-per-child-hard", metavar="SIZE", default=None,
              help="Kill a child mid-task above this memory (KiB or 1G); its task is requeued.")
@click.option("-E", "task_events_flag", is_flag=True, help="Publish task events (as --task-events; Celery's -E).")
@click.option("--autoscale", metavar="MAX,MIN", default=None,
              help="Grow the pool up to MAX children while tasks wait, shrink it to MIN (at least 1) when idle.")
@click.option("-B", "--beat", "embed_beat", is_flag=True,
              help="Also run beat, as a child the master supervises (safe on every node: beat elects one leader).")
@click.option("-s", "--schedule", "schedule_file", metavar="FILE", default=None,
              help="Celery's beat schedule file (with -B): accepted; beat keeps its state in Redis.")
@click.option("-O", "optimization", metavar="PROFILE", type=click.Choice(["fair", "default"], case_sensitive=False),
              default=None, help="Celery's -O fair: accepted; a qdeploy worker reserves one task per free thread, "
                                 "so it is always fair.")
@click.option("--without-gossip", is_flag=True, help="Accepted (Celery's); qdeploy workers never gossip.")
@click.option("--without-mingle", is_flag=True, help="Accepted (Celery's); qdeploy workers never mingle at start.")
@click.option("--without-heartbeat", is_flag=True,
              help="Accepted (Celery's); the master's heartbeat in Redis is what recovers a dead node's tasks, so it stays.")
@click.option("--heartbeat-interval", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Accepted (Celery's); qdeploy's master heartbeats every 2 s.")
@click.option("-L", "loglevel_alias", default=None, hidden=True)  # Celery's multi examples: -L:4,5 debug
@setting_options(WORKER_KEYS)
def worker(config_file, node, hostname, uid, gid, allow_root, pidfile, logfile, log_format, detach,
           max_tasks_jitter, max_memory_per_child_hard, task_events_flag, autoscale, embed_beat, schedule_file,
           optimization, without_gossip, without_mingle, without_heartbeat, heartbeat_interval, loglevel_alias,
           **settings):
    """Run a worker node: a master that forks and supervises N consuming children."""
    from qdeploy.generator.datatypes import size_kib
    from qdeploy.worker import boot, nodename, options

    if loglevel_alias:  # multi's per-node -L:4,5 debug wins over the line's -l INFO
        settings["log_level"] = loglevel_alias.lower()
    scale = parse_autoscale(autoscale) if autoscale is not None else None
    if schedule_file:
        click.echo(f"qdeploy: note: -s {schedule_file}: not used: beat keeps its state in Redis", err=True)
    cfg = load_config(config_file, settings)
    try:
        name, host = nodename.parse(hostname)
    except ValueError as exc:
        fail(f"-n {hostname!r}: {exc}", 2)
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
            cfg, node, name=name or None, hostname=host, uid=uid, gid=gid, allow_root=allow_root,
            pidfile=pidfile, logfile=logfile, log_format=log_format, detach=detach,
            max_tasks_jitter=max_tasks_jitter, max_memory_per_child_hard=hard, task_events=task_events_flag,
            autoscale=scale, embed_beat=embed_beat,
        )
        if scale and opts.pool == "solo":
            fail("--autoscale needs children to add and remove: not with -P solo", 2)
        raise SystemExit(boot.run(opts))
    except ConfigError as exc:
        fail(str(exc), exc.exit_code)
    except daemon.DaemonError as exc:
        fail(str(exc), exc.exit_code)


def parse_autoscale(text: str) -> tuple[int, int]:
    """Celery's --autoscale=MAX,MIN (MIN optional): (max, min) children; one line if not."""
    parts = text.split(",")
    try:
        if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError
        high, low = int(parts[0]), int(parts[1]) if len(parts) == 2 else 1
    except ValueError:
        fail(f"--autoscale={text[:40]!r}: expected MAX,MIN as two whole numbers, e.g. --autoscale=10,3", 2)
    if high < low:
        fail(f"--autoscale={text}: MAX ({high}) is below MIN ({low}); Celery's order is MAX,MIN "
             f"(--autoscale={low},{high})", 2)
    if not 1 <= high <= MAX_CHILDREN:
        fail(f"--autoscale={text}: MAX must be from 1 to {MAX_CHILDREN} children", 2)
    return high, max(low, 1)


COMMANDS = [worker]
