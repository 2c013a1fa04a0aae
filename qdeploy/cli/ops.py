"""Operate a running fleet: `qdeploy status`, `inspect`, `control`, `queues`, `dead-letter`,
`purge`, `dashboard`. Parse, call qdeploy.ops.control / qdeploy.ops.fleet, print a table (or --json).
Each finds its app and broker like `worker` does (`--config`, -A/-b: cli.runtime.Target).

Exit codes: 0 ok, 1 some node did not answer / nothing online / refused, 2 bad input,
3 broker unreachable.
"""

from __future__ import annotations

import datetime
import json
import sys

import click

from qdeploy.cli.runtime import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    connect_app,
    fail,
    target_options,
)
from qdeploy.core.connection import BROKER_DOWN, RedisError

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
timeout_option = click.option("-t", "--timeout", type=click.FloatRange(0.05, 300), default=1.0, show_default=True,
                              help="Seconds to wait for the nodes' replies.")
destination_option = click.option("-d", "--destination", multiple=True, metavar="NODE[@HOST]",
                                  help="Only these nodes (repeat, or a comma list). Default: all.")


def _broker(target, command):
    return connect_app(*target.resolve(command), command).transport


def _table(rows: list[dict], columns: list[str]) -> None:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return " ".join(str(value).split())  # never let a value break the table (newlines, tabs)


def _age(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    return str(datetime.timedelta(seconds=int(seconds)))


def _destinations(values, command):
    from qdeploy.ops.control import check_destinations

    try:
        return check_destinations(values)
    except ValueError as exc:
        fail(command, str(exc), EXIT_USAGE)


def _report(gathered, as_json: bool, render_rows) -> None:
    """Print the replies; the nodes that did not answer are reported, and make the exit 1."""
    if as_json:
        click.echo(json.dumps({"replies": gathered.replies, "no_reply": gathered.missing,
                               "unknown_destinations": gathered.unknown}, indent=2, default=str))
    else:
        rows = []
        for owner, reply in sorted(gathered.replies.items()):
            if not reply.get("ok"):
                rows.append({"node": owner, "status": "error", "detail": reply.get("error")})
            else:
                rows += [dict(node=owner, status="ok", **r) for r in render_rows(reply["result"])] or \
                    [{"node": owner, "status": "ok", "detail": "(none)"}]
        rows += [{"node": o, "status": "no reply", "detail": f"no answer within {gathered_timeout(gathered)}"}
                 for o in gathered.missing]
        rows += [{"node": d, "status": "unknown", "detail": "no such node online"} for d in gathered.unknown]
        if rows:
            columns = ["node", "status"] + sorted({k for r in rows for k in r} - {"node", "status", "detail"}) + ["detail"]
            _table(rows, [c for c in columns if any(r.get(c) is not None for r in rows) or c in ("node", "status")])
        else:
            click.echo("no node answered (none online?)")
    if gathered.missing or gathered.unknown or not gathered.replies or any(not r.get("ok") for r in gathered.replies.values()):
        sys.exit(1)


def gathered_timeout(gathered) -> str:
    return f"{gathered.elapsed:.1f}s"


# -- status, inspect, control -----------------------------------------------------------------
@click.command()
@target_options
@json_option
def status(target, as_json):
    """Online nodes (from their heartbeats): pool size, tasks done, uptime."""
    from qdeploy.ops import fleet

    rows = _call(lambda: fleet.status(_broker(target, "status")), "status")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif rows:
        for row in rows:
            seen = row["last_seen"]
            row["uptime"], row["last_seen"] = _age(row["uptime"]), f"{seen}s ago" if seen is not None else "-"
        _table(rows, ["owner", "kind", "pid", "pool", "tasks_done", "uptime", "queues", "last_seen"])
        click.echo(f"{len(rows)} node(s) online")
    else:
        click.echo("no nodes online")
    sys.exit(0 if rows else 1)


INSPECT_ROWS = {
    "active": lambda result: [{"task": r["task"], "id": r["id"], "child": r["child"], "args": r["args"]} for r in result],
    "reserved": lambda result: [{"task": r["task"], "id": r["id"], "child": r["child"]} for r in result],
    "scheduled": lambda result: [{"task": r["task"], "id": r["id"], "queue": r["queue"],
                                  "eta": datetime.datetime.fromtimestamp(r["eta"]).isoformat(" ", "seconds")} for r in result],
    "stats": lambda r: [{"pid": r["pid"], "pool": r["pool"], "busy": r["busy"], "tasks_done": r["tasks_done"],
                         "uptime": _age(r["uptime"]), "rss_kib": r["rss_kib"] + r["children_rss_kib"],
                         "child_exits": _exits(r.get("child_exits")),
                         "detail": "stopping" if r.get("stopping") else None}],
    "registered": lambda r: [{"task": name, "detail": ", ".join(f"{k}={v}" for k, v in opts.items() if v is not None)}
                             for name, opts in r["tasks"].items()],
    "queues": lambda r: [{"queues": r["queues"]}],
}


def _exits(counts) -> str:
    """`max_tasks=3 crash=1` from a node's child_exits (it crossed the network: anything else is -)."""
    if not isinstance(counts, dict):
        return "-"
    shown = [f"{k}={v}" for k, v in counts.items() if isinstance(k, str) and isinstance(v, int) and v]
    return " ".join(shown)[:200] or "none"


@click.command()
@click.argument("what", type=click.Choice(list(INSPECT_ROWS)))
@destination_option
@timeout_option
@target_options
@json_option
def inspect(what, destination, timeout, target, as_json):
    """Ask live nodes: active | reserved | scheduled | stats | registered | queues."""
    from qdeploy.ops.control import Control

    dest = _destinations(destination, "inspect")
    gathered = _call(lambda: Control(_broker(target, "inspect")).inspect(what, dest, timeout), "inspect")
    _report(gathered, as_json, INSPECT_ROWS[what])


@click.command()
@click.argument("command", type=click.Choice(["ping", "shutdown", "pool-grow", "pool-shrink", "rate-limit", "revoke",
                                              "enable_events", "disable_events"]))
@click.argument("args", nargs=-1)
@click.option("--terminate", is_flag=True, help="revoke: also kill the child running the task (its slot restarts).")
@destination_option
@timeout_option
@target_options
@json_option
def control(command, args, terminate, destination, timeout, target, as_json):
    """Tell live nodes: ping | shutdown | pool-grow [N] | pool-shrink [N] | rate-limit TASK RATE |
    revoke ID... [--terminate] | enable_events | disable_events (`qdeploy events`).

    \b
    rate-limit TASK 10/s   (or 100/m, 5/h; 0 removes it): the node's children are recycled
    gracefully to pick it up. revoke marks the ids in Redis (never run), then asks the nodes.
    """
    from qdeploy.ops.control import TASK_ID, Control

    dest = _destinations(destination, "control")
    payload = _control_args(command, list(args), terminate)
    app = connect_app(*target.resolve("control"), "control")
    if command == "revoke":
        for task_id in payload["ids"]:
            _call(lambda: app.revoke(task_id), "control")  # noqa: B023 - called at once
    assert all(TASK_ID.fullmatch(i) for i in payload.get("ids", []))
    gathered = _call(lambda: Control(app.transport).request(command, payload, dest, timeout), "control")
    _report(gathered, as_json, lambda r: [{"detail": ", ".join(f"{k}={v}" for k, v in r.items())}])


def _control_args(command: str, args: list[str], terminate: bool) -> dict:
    from qdeploy.core.app import parse_rate
    from qdeploy.ops.control import TASK_ID

    if command in ("pool-grow", "pool-shrink"):
        if len(args) > 1 or (args and not (args[0].isdigit() and 1 <= int(args[0]) <= 64)):
            fail("control", f"{command} takes one optional count from 1 to 64", EXIT_USAGE)
        return {"n": int(args[0]) if args else 1}
    if command == "rate-limit":
        if len(args) != 2:
            fail("control", "rate-limit takes TASK RATE, e.g. rate-limit proj.fetch 10/s", EXIT_USAGE)
        try:
            parse_rate(None if args[1] in ("0", "none") else args[1])
        except ValueError as exc:
            fail("control", str(exc), EXIT_USAGE)
        return {"task": args[0], "rate": args[1]}
    if command == "revoke":
        if not args or not all(TASK_ID.fullmatch(a) for a in args):
            fail("control", "revoke takes one or more task ids", EXIT_USAGE)
        return {"ids": args, "terminate": terminate}
    if args:
        fail("control", f"{command} takes no arguments", EXIT_USAGE)
    return {}


# -- queues, dead letters, purge --------------------------------------------------------------
@click.command()
@target_options
@json_option
def queues(target, as_json):
    """Per queue: ready, in flight, scheduled (ETA/retry) and dead-lettered messages."""
    from qdeploy.ops import fleet

    rows = _call(lambda: fleet.queue_stats(_broker(target, "queues")), "queues")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif rows:
        _table(rows, ["queue", "ready", "in_flight", "scheduled", "dead"])
    else:
        click.echo("no queues")


@click.group("dead-letter")
def dead_letter():
    """List, requeue or purge dead-lettered messages."""


@dead_letter.command("list")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@target_options
@json_option
def dead_list(limit, target, as_json):
    """The newest dead letters and why they died."""
    from qdeploy.ops import fleet

    rows = _call(lambda: fleet.dead_letter_list(_broker(target, "dead-letter"), limit), "dead-letter")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        row["time"] = datetime.datetime.fromtimestamp(row["time"]).isoformat(" ", "seconds") if row.get("time") else None
    _table(rows, ["id", "queue", "task", "time", "reason"]) if rows else click.echo("no dead letters")


@dead_letter.command("requeue")
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Requeue every dead letter.")
@target_options
@json_option
def dead_requeue(ids, everything, target, as_json):
    """Put dead letters (by id, or --all) back at the head of their queue."""
    from qdeploy.ops import fleet

    if bool(ids) == everything:
        fail("dead-letter", "give task ids or --all (not both)", EXIT_USAGE)
    done, skipped = _call(lambda: fleet.requeue_dead(_broker(target, "dead-letter"), list(ids) or None),
                          "dead-letter")
    if as_json:
        click.echo(json.dumps({"requeued": done, "skipped": skipped}))
    else:
        unknown = f"; not requeued (unknown, or no queue/body): {' '.join(skipped)}" if skipped else ""
        click.echo(f"requeued {len(done)}{unknown}")
    sys.exit(1 if skipped else 0)


@dead_letter.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@target_options
def dead_purge(yes, target):
    """Delete every dead letter."""
    from qdeploy.ops import fleet

    b = _broker(target, "dead-letter")
    count = _call(lambda: fleet.dead_letter_count(b), "dead-letter")
    _confirm(f"Delete {count} dead letter(s)?", yes, "dead-letter")
    click.echo(f"deleted {_call(lambda: fleet.purge_dead(b), 'dead-letter')} dead letter(s)")


@click.command()
@click.option("-Q", "--queues", "names", metavar="A,B", help="Only these queues (default: every queue).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required when stdin is not a terminal).")
@target_options
def purge(names, yes, target):
    """Delete every waiting (ready and scheduled) message; running ones finish."""
    from qdeploy.generator.datatypes import QUEUE_NAME
    from qdeploy.ops import fleet

    b = _broker(target, "purge")
    stats = {r["queue"]: r for r in _call(lambda: fleet.queue_stats(b), "purge")}
    chosen = [q.strip() for q in names.split(",")] if names else sorted(stats)
    bad = [q for q in chosen if not QUEUE_NAME.fullmatch(q)]
    if bad:
        fail("purge", f"invalid queue name {bad[0][:40]!r}", EXIT_USAGE)
    total = sum(stats[q]["ready"] + stats[q]["scheduled"] for q in chosen if q in stats)
    if not chosen:
        click.echo("no queues")
        return
    _confirm(f"Purge {total} message(s) from {', '.join(chosen)}?", yes, "purge")
    removed = _call(lambda: fleet.purge(b, chosen), "purge")
    click.echo(f"purged {sum(removed.values())} message(s): " + ", ".join(f"{q}={n}" for q, n in removed.items()))


def _confirm(question: str, yes: bool, command: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        fail(command, "refusing without confirmation: stdin is not a terminal (pass --yes)", EXIT_USAGE)
    if not click.confirm(question, default=False):
        fail(command, "aborted", 1)


def _call(fn, command):
    from qdeploy.core.connection import error_text

    try:
        return fn()
    except BROKER_DOWN as exc:
        fail(command, f"broker unreachable: {error_text(exc)}", EXIT_UNAVAILABLE)
    except RedisError as exc:
        fail(command, f"broker error: {exc}", EXIT_UNAVAILABLE)


# -- dashboard --------------------------------------------------------------------------------
@click.command()
@click.option("--bind", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address to listen on (0.0.0.0 or ::: every interface; put TLS in front).")
@click.option("--port", default="5555", show_default=True, metavar="PORT", help="Port to listen on (0: any free one).")
@click.option("--auth", envvar="QDEPLOY_DASHBOARD_AUTH", metavar="USER:PASS",
              help="Require HTTP basic auth (or $QDEPLOY_DASHBOARD_AUTH, which keeps it out of `ps`).")
@click.option("--trusted-header", metavar="NAME",
              help="Behind a reverse proxy that authenticates: the header naming the user (e.g. X-Forwarded-User), "
                   "believed only from --trusted-proxy addresses.")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDRESS[/BITS]",
              help="Where --trusted-header may come from (repeat; default 127.0.0.1 and ::1).")
@click.option("--allow-actions", is_flag=True,
              help="Allow revoke, retry, requeue/purge dead letters, pool grow/shrink, shutdown and schedule changes "
                   "(needs --auth or --trusted-header; each one is audited).")
@click.option("--show-args", is_flag=True, help="Show task arguments (hidden by default: they may hold personal data).")
@click.option("--refresh", default="2", show_default=True, metavar="SECONDS", help="Seconds between page updates.")
@target_options
def dashboard(bind, port, auth, trusted_header, trusted_proxies, allow_actions, show_args, refresh, target):
    """The web dashboard: tasks (searchable history), workers, queues, charts, schedule, dead letters."""
    from qdeploy.ops import dashboard as dash

    try:
        options = dash.Options.parse(bind=bind, port=port, auth=auth, trusted_header=trusted_header,
                                     trusted_proxies=trusted_proxies, allow_actions=allow_actions,
                                     show_args=show_args, refresh=refresh)
    except ValueError as exc:
        fail("dashboard", str(exc), EXIT_USAGE)
    app = connect_app(*target.resolve("dashboard"), "dashboard")
    try:
        server = dash.build(app, options, target.config_file)
    except OSError as exc:
        fail("dashboard", f"cannot listen on {bind}:{port}: {exc.strerror or exc}", EXIT_USAGE)
    click.echo(options.describe(server.server_address[1]))
    dash.serve(server)


COMMANDS = [status, inspect, control, queues, dead_letter, purge, dashboard]
