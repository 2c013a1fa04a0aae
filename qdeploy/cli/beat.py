"""`qdeploy beat` (the scheduler service) and `qdeploy schedule list|add|remove|enable|disable`
(dynamic entries in Redis, picked up by running beats within `beat.max_interval`).

Exit codes: 2 = bad input (entry, name, app, config), 3 = broker unreachable."""

from __future__ import annotations

import json

import click

from qdeploy.cli.common import SERVICE_KEYS, config_option, daemon_options, fail, load_config, setting_options
from qdeploy.core.connection import BrokerURLError, RedisError, error_text, redact
from qdeploy.defaults import EX_UNAVAILABLE, EX_USAGE
from qdeploy.service import daemon


@click.command()
@config_option
@daemon_options("beat", "beat", "Log file (%n %h expanded). Default: stderr.")
@click.option("-s", "--schedule", "schedule_file", metavar="FILE", default=None,
              help="Celery's schedule file: accepted; beat keeps its state in Redis (a note says so).")
@click.option("-S", "--scheduler", metavar="CLASS", default=None,
              help="Celery's scheduler class: accepted; the schedule lives in Redis, and with qdeploy.contrib.django "
                   "the Django admin edits it (django_celery_beat's DatabaseScheduler selects that).")
@click.option("--max-interval", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Longest sleep between schedule checks (beat.max_interval).")
@setting_options(SERVICE_KEYS)
def beat(config_file, uid, gid, allow_root, pidfile, logfile, log_format, detach, schedule_file, scheduler,
         max_interval, **settings):
    """Run the periodic task scheduler. Any number may run: one leads and sends, each run once."""
    from qdeploy.beat import boot as beatboot
    from qdeploy.service import boot as service

    cli = dict(settings)
    cfg = load_config(config_file, settings)
    notes = beatboot.option_notes(schedule_file, scheduler)
    host = beatboot.BeatOptions.__dataclass_fields__["owner"].default.partition("@")[2]
    opts = beatboot.BeatOptions(
        config=cfg, reload=lambda: load_config(config_file, dict(cli)), notes=tuple(notes),
        max_interval=max_interval,
        **service.daemon_fields(cfg, "beat", host, uid=uid, gid=gid, allow_root=allow_root, pidfile=pidfile,
                                logfile=logfile, log_format=log_format, detach=detach))
    try:
        raise SystemExit(beatboot.run(opts))
    except daemon.DaemonError as exc:
        fail(str(exc), exc.exit_code)


# -- qdeploy schedule ---------------------------------------------------------------------------

class Context:
    def __init__(self, config_file, settings):
        self.config_file, self.settings = config_file, settings
        self._loaded = None

    def load(self):
        """(app, store, static entries, timezone); exits 2/3 with one line on failure."""
        if self._loaded is None:
            from qdeploy.beat.boot import BootError, static_entries
            from qdeploy.beat.store import BeatStore
            from qdeploy.core.app import AppImportError, load_app

            cfg = load_config(self.config_file, dict(self.settings))
            try:
                app = load_app(cfg["app"])
                if "broker" in cfg.given:
                    app.configure(broker=cfg["broker"])
                entries, tz = static_entries(app, cfg)
                app.transport.ping()
            except (AppImportError, BrokerURLError) as exc:
                fail(str(exc), EX_USAGE)
            except BootError as exc:
                fail(str(exc), exc.exit_code)
            except (RedisError, OSError) as exc:
                fail(f"cannot reach broker {redact(app.broker_url)}: {error_text(exc)}", EX_UNAVAILABLE)
            self._loaded = (app, BeatStore(app.transport), entries, tz)
        return self._loaded


def _name(name: str) -> str:
    from qdeploy.beat.entry import EntryError, check_name

    try:
        return check_name(name)
    except EntryError as exc:
        fail(str(exc), EX_USAGE)


@click.group()
@config_option
@setting_options(["app", "broker"])
@click.pass_context
def schedule(ctx, config_file, **settings):
    """Inspect and edit periodic tasks; edits reach running beats within beat.max_interval."""
    ctx.obj = Context(config_file, settings)


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_(obj: Context, as_json):
    """Every entry: the app's, the config file's and the dynamic ones."""
    from qdeploy.beat.entry import EntryError, from_json
    from qdeploy.beat.schedule import every
    from qdeploy.beat.solar import solar

    app, store, static, tz = obj.load()
    _, stored, disabled = store.load()
    rows, entries = [], dict(static)
    for name, spec in stored.items():
        try:
            entries.setdefault(name, from_json(name, spec, tz=tz))
        except EntryError as exc:
            rows.append({"name": name, "source": "redis", "error": str(exc)})
    anchors, runs, lock = store.anchors(list(entries)), store.runs(), store.leader()
    for name, e in sorted(entries.items()):
        anchor = anchors.get(name)
        nxt = e.schedule.next_after(anchor) if anchor else None
        kind = "every" if isinstance(e.schedule, every) else "solar" if isinstance(e.schedule, solar) else "cron"
        rows.append({"name": name, "source": e.source, "task": e.task, "kind": kind, "schedule": e.describe(),
                     "args": e.args, "kwargs": e.kwargs, "options": e.options,
                     "enabled": e.enabled and name not in disabled,
                     "next_run": nxt.isoformat() if nxt else None, "last_run": runs.get(name)})
    if as_json:
        click.echo(json.dumps({"leader": lock.get("holder"), "entries": rows}, indent=2))
        return
    click.echo(f"leader: {lock.get('holder') or '(none)'}")
    for r in rows:
        if "error" in r:
            click.echo(f"{r['name']}  [redis, INVALID] {r['error']}")
            continue
        state = "" if r["enabled"] else ", disabled"
        last = r["last_run"] or {}
        click.echo(f"{r['name']}  [{r['source']}{state}] {r['task']} {r['kind']} {r['schedule']}")
        click.echo(f"    next: {r['next_run'] or 'one period after beat first sees it'}"
                   f"   last: {last.get('slot', '-')}{' (skipped)' if last.get('skipped') else ''}")


def _json_arg(value: str | None, what: str, kind: type):
    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except ValueError:
        example = '[1, 2]' if kind is list else '{"key": 1}'
        fail(f"--{what} must be JSON, e.g. {example}", EX_USAGE)
    if not isinstance(parsed, kind):
        fail(f"--{what} must be a JSON {'array' if kind is list else 'object'}", EX_USAGE)
    return parsed


@schedule.command()
@click.argument("name")
@click.argument("task")
@click.option("--every", metavar="INTERVAL", help="Interval: 30s, 5m, 1h30m, or seconds.")
@click.option("--cron", metavar="EXPR", help='5-field cron line, e.g. "*/15 * * * *", or @daily.')
@click.option("--timezone", "zone", metavar="TZ", help="Timezone of --cron (default: beat's).")
@click.option("--solar", "event", metavar="EVENT", help="Solar event: dawn_astronomical, dawn_nautical, "
              "dawn_civil, sunrise, solar_noon, sunset, dusk_civil, dusk_nautical, dusk_astronomical "
              "(needs qdeploy[solar]).")
@click.option("--lat", metavar="DEGREES", help="Latitude of --solar, north positive (-90..90).")
@click.option("--lon", metavar="DEGREES", help="Longitude of --solar, east positive (-180..180).")
@click.option("--args", "args_json", metavar="JSON", help="Positional arguments, a JSON array.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments, a JSON object.")
@click.option("--queue", metavar="QUEUE", help="Queue (default: the task's).")
@click.option("--expires", type=float, metavar="SECONDS", help="Drop a run not started within SECONDS.")
@click.option("--replace", is_flag=True, help="Replace a dynamic entry of the same name.")
@click.pass_obj
def add(obj: Context, name, task, every, cron, zone, event, lat, lon, args_json, kwargs_json, queue, expires,
        replace):
    """Add a dynamic entry NAME that sends TASK."""
    from qdeploy.beat.entry import EntryError, dynamic_spec

    name = _name(name)
    if [every, cron, event].count(None) != 2:
        fail("give exactly one of --every INTERVAL, --cron EXPR or --solar EVENT", EX_USAGE)
    if zone and not cron:
        fail("--timezone applies to --cron only; intervals are elapsed time, solar events instants", EX_USAGE)
    if (lat is not None or lon is not None) and event is None:
        fail("--lat and --lon apply to --solar only", EX_USAGE)
    if every is not None:
        sched = {"every": every}
    elif cron is not None:
        sched = {"cron": cron, **({"timezone": zone} if zone else {})}
    else:
        sched = {"solar": event, **_degrees(lat=lat, lon=lon)}
    args, kwargs = _json_arg(args_json, "args", list), _json_arg(kwargs_json, "kwargs", dict)
    try:
        spec = dynamic_spec(name, task, sched, args=args, kwargs=kwargs, queue=queue, expires=expires)
    except EntryError as exc:
        fail(str(exc), EX_USAGE)
    app, store, static, tz = obj.load()
    if name in static:
        fail(f"schedule entry {name!r} is defined in the {static[name].source}; "
             f"choose another name (or disable it)", EX_USAGE)
    if not store.put(name, spec, replace=replace):
        fail(f"schedule entry {name!r} exists already (use --replace to change it)", EX_USAGE)
    click.echo(f"added {name}")


def _degrees(**given: str | None) -> dict:
    """--lat/--lon as numbers (their range is checked with the entry); one line if not numbers."""
    out = {}
    for flag, text in given.items():
        if text is None:
            fail(f"--solar needs --{flag} DEGREES too (north and east positive)", EX_USAGE)
        try:
            out[flag] = float(text)
        except ValueError:
            fail(f"--{flag} must be a number of degrees, got {text[:40]!r}", EX_USAGE)
    return out


@schedule.command()
@click.argument("name")
@click.pass_obj
def remove(obj: Context, name):
    """Remove a dynamic entry."""
    name = _name(name)
    app, store, static, tz = obj.load()
    if name in static:
        fail(f"schedule entry {name!r} is defined in the {static[name].source}, not in Redis; "
             f"disable it instead", EX_USAGE)
    if not store.remove(name):
        fail(f"no dynamic schedule entry {name!r}", EX_USAGE)
    click.echo(f"removed {name}")


def _toggle(obj: Context, name: str, enabled: bool) -> None:
    name = _name(name)
    app, store, static, tz = obj.load()
    _, stored, _ = store.load()
    if name not in static and name not in stored:
        fail(f"no schedule entry {name!r}", EX_USAGE)
    if enabled and name in static and not static[name].enabled:
        fail(f"schedule entry {name!r} has enabled = false in the {static[name].source}", EX_USAGE)
    store.set_enabled(name, enabled)
    click.echo(f"{'enabled' if enabled else 'disabled'} {name}")


@schedule.command()
@click.argument("name")
@click.pass_obj
def enable(obj: Context, name):
    """Enable an entry (of any source)."""
    _toggle(obj, name, True)


@schedule.command()
@click.argument("name")
@click.pass_obj
def disable(obj: Context, name):
    """Disable an entry (of any source) until it is enabled again."""
    _toggle(obj, name, False)


COMMANDS = [beat, schedule]
