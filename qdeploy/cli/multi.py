"""`qdeploy multi`: parse Celery's multi syntax, delegate to qdeploy.ops.multi, print a table."""

from __future__ import annotations

import json
import os
import shlex
import sys

import click

from qdeploy.cli.common import fail, load_config
from qdeploy.ops import multi as multi_mod


class _RawArgs(click.Command):
    """Celery's syntax (`-c:2 8`, `--` passthrough) is not click's: keep the words as they are."""

    def parse_args(self, ctx, args):
        if not args or args[0] in ("-h", "--help"):
            return super().parse_args(ctx, args)
        ctx.meta["qdeploy.multi"] = list(args)
        return super().parse_args(ctx, [])


def worker_spec() -> multi_mod.OptionSpec:
    """Every option `qdeploy worker` accepts, from the click command itself (cannot drift)."""
    from qdeploy.cli.worker import worker

    canonical: dict[str, str] = {}
    flags: set[str] = set()
    for param in worker.params:
        if not isinstance(param, click.Option):
            continue
        long = next((o for o in param.opts if o.startswith("--")), param.opts[0])
        canonical.update((o, long) for o in param.opts)
        canonical.update((o, o) for o in param.secondary_opts)
        flags.update(param.secondary_opts)
        if param.is_flag:
            flags.add(long)
    return multi_mod.OptionSpec(canonical, frozenset(flags))


@click.command(cls=_RawArgs, context_settings={"ignore_unknown_options": True})
@click.pass_context
def multi(ctx):
    """Start, stop and show several worker nodes, Celery-multi style.

    \b
    qdeploy multi ACTION NODES [OPTIONS] [-- WORKER-ARGS]
      ACTION   start | stop | stopwait | restart | kill | show | names | expand TEMPLATE
      NODES    a count (3 -> nodes 1 2 3) or names; with --config: a selector of its nodes
    \b
    Worker options apply to every node; OPTION:SELECTOR VALUE to some (-c:2 8, -Q:1-2 a,b,
    --logfile:images=/var/log/img.log); a range applies to the nodes that exist. In
    --pidfile/--logfile and `expand`, as in Celery's multi: %n (or %N) is the node name, %h (or
    %p) the full node name NAME@HOST, %d the host; %i %I (the pool process index) and %% are
    left for each worker to expand, so `expand` shows them as they are. Two nodes sharing a
    pid or log file are refused. Own options:
      --config FILE   nodes and argv from the config: the argv of the rendered services
      --timeout SECS  stopwait/restart: how long to wait before KILL (default graceful+15s)
      --rolling       restart one node at a time, each waiting for the previous one's readiness
      --json          show/names: JSON
    \b
    Examples:
      qdeploy multi start 3 -c 4 -c:2 8 -Q:1-2 images,video --pidfile=/run/qdeploy/%n.pid
      qdeploy multi restart --config /etc/qdeploy/qdeploy.toml --rolling
      qdeploy multi stopwait 3 --timeout 30
    """
    args = _with_group_options(ctx.meta.get("qdeploy.multi", []))
    try:
        inv = multi_mod.parse(args, worker_spec())
        cfg = load_config(inv.config, {})
        nodes = multi_mod.build(inv, cfg)
    except multi_mod.MultiError as exc:
        fail(f"multi: {exc}", 2)
    if inv.action == "expand":
        if not inv.words:
            fail("multi: expand needs a TEMPLATE", 2)
        for line in multi_mod.expand_template(inv.words[0], [n.name for n in nodes]):
            click.echo(line)
        return
    if inv.action in ("show", "names"):
        _print_nodes(nodes, inv.action, inv.as_json)
        return
    if inv.config and inv.action in ("start", "restart") and not os.path.isfile(cfg["config_path"]):
        fail(f"multi: the workers read their config from config_path {cfg['config_path']}, which does not "
             "exist: install it (`qdeploy render --root /`) or set config_path", 2)
    outcomes = _run(inv, nodes)
    _print_outcomes(outcomes, inv.as_json)
    sys.exit(0 if all(o.ok for o in outcomes) else 1)


def _with_group_options(args: list[str]) -> list[str]:
    """`qdeploy -A proj -b URL multi start w1`: the group's -A/-b go to every node (before a
    `--` passthrough), unless the multi line has its own."""
    from qdeploy.cli.common import GROUP

    head, sep, tail = (args[: args.index("--")], ["--"], args[args.index("--") + 1:]) if "--" in args else (args, [], [])
    extra = []
    for flags, value in ((("-A", "--app"), GROUP["app"]), (("-b", "--broker"), GROUP["broker"]),
                         (("--config",), GROUP["config"])):
        if value and not any(a in flags or a.startswith(tuple(f + "=" for f in flags)) for a in head):
            extra += [flags[-1], value]
    return head + extra + sep + tail


def _run(inv, nodes):
    if inv.action == "start":
        return multi_mod.start(nodes)
    if inv.action == "stop":
        return multi_mod.stop(nodes)
    if inv.action == "stopwait":
        return multi_mod.stopwait(nodes, inv.timeout)
    if inv.action == "kill":
        return multi_mod.kill(nodes)
    return multi_mod.restart(nodes, rolling=inv.rolling, timeout=inv.timeout)


def _print_nodes(nodes, action: str, as_json: bool) -> None:
    if as_json:
        data = ([n.name for n in nodes] if action == "names" else
                {n.name: {"argv": n.argv, "pidfile": n.pidfile, "logfile": n.logfile} for n in nodes})
        click.echo(json.dumps(data, indent=2))
    elif action == "names":
        click.echo("\n".join(n.name for n in nodes))
    else:
        for node in nodes:
            click.echo(f"{node.name}: {shlex.join(node.argv)}")


def _print_outcomes(outcomes, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([o.__dict__ for o in outcomes], indent=2))
        return
    width = max([len(o.node) for o in outcomes] + [4])
    for o in outcomes:
        click.echo(f"{o.node:<{width}}  {'OK' if o.ok else 'FAIL':<4}  {o.status:<11}  {o.detail}".rstrip())


COMMANDS = [multi]
