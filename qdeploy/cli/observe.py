"""`qdeploy health` and `qdeploy events`: parse, call qdeploy.ops.health / events / top, print."""

from __future__ import annotations

import json
import socket
import sys

import click

from qdeploy.cli.runtime import connect_app, fail, target_options
from qdeploy.core.connection import RedisError
from qdeploy.defaults import EX_FAILED, EX_OK, EX_UNAVAILABLE, EX_USAGE
from qdeploy.generator.datatypes import NODE_NAME


@click.command()
@click.option("--node", metavar="NAME", default=None, help="The node to check (default: the config's first node).")
@click.option("-n", "--hostname", metavar="NAME@HOST", default=None,
              help="The node's identity, as given to `qdeploy worker -n` (default NODE@this host).")
@click.option("--stale-after", type=click.FloatRange(1, 3600), default=None, metavar="SECONDS",
              help="A heartbeat older than this means a stopped or wedged master (default 10).")
@target_options
def health(node, hostname, stale_after, target):
    """Exit 0 if the node is healthy, else print one line why and exit non-zero: 1 unhealthy
    (master gone, heartbeat stale, a stuck or stopped child, broker failing too long), 3 broker
    unreachable from here, 2 bad arguments."""
    from qdeploy.ops import health as health_mod

    owner = _owner(node, hostname, target)
    app = connect_app(*target.resolve("health"), "health")  # exit 3, one line, when unreachable
    if stale_after is not None:
        health_mod.STALE_AFTER = stale_after
    why = health_mod.check(app.transport, owner)
    if why == health_mod.OK:
        click.echo(f"ok: {owner}")
        sys.exit(EX_OK)
    click.echo(f"unhealthy: {owner}: {why}")
    sys.exit(EX_FAILED)


def _owner(node, hostname, target) -> str:
    if hostname:
        name, _, host = hostname.partition("@")
        if not NODE_NAME.fullmatch(name) or not host or not NODE_NAME.fullmatch(host.replace("@", "_")):
            fail("health", f"-n {hostname[:80]!r}: expected NAME@HOST (letters, digits and _ . - only)", EX_USAGE)
        return hostname
    if node is None:
        from qdeploy.generator import config as config_mod

        try:
            node = config_mod.load(target.config_file, {}).nodes[0]
        except config_mod.ConfigError as exc:
            fail("health", str(exc), exc.exit_code)
    if not NODE_NAME.fullmatch(node):
        fail("health", f"--node {node[:80]!r}: expected a node name (letters, digits and _ . - only)", EX_USAGE)
    return f"{node}@{socket.gethostname()}"


@click.command()
@click.option("--dump", is_flag=True, help="Print every event as it comes, one line each (else a live view).")
@click.option("--json", "as_json", is_flag=True, help="With --dump: one JSON object per line.")
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after this many events.")
@target_options
def events(dump, as_json, count, target):
    """Task and worker events as they happen (nodes publish them with `worker -E` or after
    `qdeploy control enable_events`). Ctrl-C (or q in the live view) stops."""
    from qdeploy.ops import events as events_mod

    app = connect_app(*target.resolve("events"), "events")
    if as_json and not dump:
        fail("events", "--json needs --dump (the live view is for a terminal)", EX_USAGE)
    if not dump:
        from qdeploy.ops import top

        if not sys.stdout.isatty():
            fail("events", "the live view needs a terminal: use --dump (and --json) for scripts", EX_USAGE)
        sys.exit(top.run(app.transport))
    seen = 0
    try:
        for event in events_mod.listen(app.transport):
            if event is None:
                continue
            click.echo(json.dumps(event, default=str) if as_json else events_mod.dump_line(event))
            seen += 1
            if count and seen >= count:
                break
    except KeyboardInterrupt:
        pass
    except (OSError, RedisError) as exc:  # the broker went away: say so, like every other command
        fail("events", f"lost the broker: {exc}", EX_UNAVAILABLE)


COMMANDS = [health, events]
