"""Start `qdeploy beat`: the services' shared boot (qdeploy.service.boot: import the app → dirs →
log file → pid file → detach → connect → drop privileges), checking every schedule entry
before any side effect, then the beat loop.

Signals only record: TERM/INT/QUIT = warm shutdown (finish the round, release the leader lock,
exit 0), HUP = reload the config file's schedule, USR2 = reopen the log file.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qdeploy.beat.entry import EntryError, load_entries
from qdeploy.beat.schedule import resolve_timezone
from qdeploy.beat.scheduler import Beat, SystemClock
from qdeploy.beat.store import BeatStore
from qdeploy.core.connection import RedisError
from qdeploy.defaults import EX_USAGE
from qdeploy.ops import httpd, metrics
from qdeploy.service import boot as service
from qdeploy.service import logs
from qdeploy.service.sdnotify import Notifier

log = logging.getLogger("qdeploy.beat")
BootError = service.BootError


@dataclass(frozen=True, kw_only=True)
class BeatOptions(service.DaemonOptions):
    config: Any  # qdeploy.generator.config.Config
    reload: Callable[[], Any]  # re-read the config file (HUP): a new Config
    notes: tuple[str, ...] = ()  # what -s/-S do here, said once at start
    max_interval: float | None = None  # --max-interval
    node: str = "beat"  # what qdeploy.service.logs expands %n to
    owner: str = f"beat@{socket.gethostname()}"


# -S values that mean "the Django admin edits the schedule" (Celery's django-celery-beat, ours)
DJANGO_SCHEDULERS = ("django_celery_beat.schedulers:DatabaseScheduler", "django_celery_beat.schedulers.DatabaseScheduler",
                     "django", "qdeploy.contrib.django")


def option_notes(schedule_file: str | None, scheduler: str | None) -> list[str]:
    """Celery's beat -s/-S, accepted: what they mean here, one line each."""
    notes = []
    if schedule_file:
        notes.append(f"-s {schedule_file}: not used: beat keeps its state (last runs, the leader lock) in Redis")
    if scheduler in DJANGO_SCHEDULERS or (scheduler or "").startswith("qdeploy.contrib.django"):
        notes.append(f"-S {scheduler}: the schedule lives in Redis; with 'qdeploy.contrib.django' in INSTALLED_APPS "
                     "the Django admin edits it, and this beat sees each change within beat.max_interval")
    elif scheduler:
        notes.append(f"-S {scheduler}: not used: qdeploy's beat has one scheduler, with its schedule in Redis "
                     "(qdeploy schedule add|remove|enable|disable edits it live)")
    return notes


def conflicts(app, cfg) -> list[str]:
    """Settings both the app's config and qdeploy.toml/$QDEPLOY_*/flags set, differently."""
    out = []
    for key, conf_key in (("timezone", "timezone"), ("enable_utc", "enable_utc")):
        if key in cfg.given and app.conf.is_set(conf_key) and app.conf.get(conf_key) not in (None, cfg[key]):
            out.append(f"two values of {key}: {app.conf.get(conf_key)!r} from {app.conf.source_of(conf_key)} and "
                       f"{cfg[key]!r} from {cfg.source or 'the environment'}; using the latter "
                       "(qdeploy.toml, $QDEPLOY_* and flags win over the app's config)")
    return out


def static_entries(app, cfg) -> tuple[dict, object]:
    """The app's and the config file's entries (the file wins a name clash) and the timezone."""
    given = cfg.given
    zone = cfg["timezone"] if "timezone" in given else getattr(app.conf, "timezone", None)
    utc = cfg["enable_utc"] if "enable_utc" in given else getattr(app.conf, "enable_utc", True)
    try:
        tz = resolve_timezone(zone or None, enable_utc=bool(utc))
    except ValueError as exc:
        raise BootError(f"app.conf.timezone: {exc}", EX_USAGE) from None
    try:
        entries = load_entries(getattr(app.conf, "beat_schedule", None), tz=tz, source="app")
        entries.update(load_entries(cfg["beat.schedule"], tz=tz, source="config"))
    except EntryError as exc:
        raise BootError(str(exc), EX_USAGE) from None
    return entries, tz


def run(opts: BeatOptions) -> int:
    """Boot and run beat; returns the exit code."""
    service.check_config_file(opts.config.source)
    app = service.load(opts)
    entries, tz = static_entries(app, opts.config)  # bad entries: exit 2 before any side effect
    notifier = Notifier()
    target = service.identity(opts, "beat")
    with service.daemonized(opts, target, "beat") as (readiness, _):
        broker = service.connect_broker(app)
        service.start_notes(app, log, [*opts.notes, *conflicts(app, opts.config)])
        if opts.config["beat.metrics_port"]:
            try:
                metrics.require_client()  # while we may still read the venv (as the worker does)
            except ImportError:
                pass  # serve_metrics says so
        store = BeatStore(broker)  # reads its scripts while we may still read the package
        service.become(target, opts.allow_root, "beat", broker)
        return serve(app, opts, store, entries, tz, notifier, readiness)


def serve(app, opts: BeatOptions, store: BeatStore, entries: dict, tz, notifier: Notifier, readiness) -> int:
    cfg = opts.config
    signals: deque[int] = deque()
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for name in ("TERM", "INT", "QUIT", "HUP", "USR2"):
        signal.signal(getattr(signal, f"SIG{name}"), lambda signum, frame: signals.append(signum))
    beat = Beat(app, store, static=entries, tz=tz, clock=SystemClock(read_end),
                lock_timeout=cfg["beat.lock_timeout"] or 30.0, max_interval=max_interval(app, opts),
                misfire_grace=cfg["beat.misfire_grace"], holder=f"{socket.gethostname()}:{os.getpid()}")
    stop: list[int] = []
    server = serve_metrics(beat, cfg)
    from qdeploy.core.signals import beat_init

    beat_init.send(sender=beat)

    def handle_signals() -> None:
        while signals:
            signum = signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                if not stop:
                    log.info("beat: %s, warm shutdown", signal.Signals(signum).name)
                stop.append(signum)
            elif signum == signal.SIGHUP:
                reload_config(beat, app, opts)
            elif signum == signal.SIGUSR2:
                logs.reopen()

    watchdog = notifier.watchdog_interval
    ready: list[bool] = []

    def on_tick(wait: float) -> float:
        handle_signals()
        if not ready:
            ready.append(True)
            notifier.ready(beat.status())
            if readiness is not None:
                readiness.ok()
            log.info("beat %s ready: %d entries, timezone %s, lock timeout %gs", beat.holder,
                     len(beat.active()), getattr(tz, "key", None) or tz, beat.lock_timeout)
        else:
            notifier.status(beat.status())
        if watchdog:
            notifier.watchdog()
            wait = min(wait, watchdog)
        return wait

    def should_stop() -> bool:
        handle_signals()
        return bool(stop)

    beat.run(should_stop, on_tick)
    notifier.stopping()
    try:
        beat.resign()
    except RedisError as exc:
        log.warning("could not release the leader lock (%s); it expires by itself", exc)
    if server is not None:
        server.close()
    log.info("beat %s stopped (%d sent)", beat.holder, beat.sent)
    return 0


def max_interval(app, opts: BeatOptions) -> float:
    """--max-interval, else beat.max_interval from the config, else the app's
    beat_max_loop_interval, else 5 s."""
    if opts.max_interval:
        return opts.max_interval
    cfg = opts.config
    if "beat.max_interval" in cfg.given:
        return cfg["beat.max_interval"] or 5.0
    from_app = app.conf.service_settings("beat").get("max_interval")
    return float(from_app[0]) if from_app and from_app[0] else (cfg["beat.max_interval"] or 5.0)


def serve_metrics(beat: Beat, cfg):
    """beat's /metrics (leader or not, runs sent per entry) on beat.metrics_port, served from
    the clock's selector while the loop sleeps; None when off or the port cannot be bound."""
    port = cfg["beat.metrics_port"]
    if not port:
        return None
    try:
        metrics.require_client()
        sock = httpd.listen(cfg["metrics_bind"], port)
    except (ImportError, OSError) as exc:
        log.error("metrics: not serving on %s:%d: %s", cfg["metrics_bind"], port, exc)
        return None
    registry = metrics.registry_for(metrics.BeatCollector(beat))

    def page() -> tuple[int, str, bytes]:
        body, ctype = metrics.exposition(registry)
        return 200, ctype, body

    server = httpd.HttpServer(beat.clock.selector, sock, {"/metrics": page})
    beat.clock.tickers.append(server.tick)
    log.info("metrics: serving /metrics on %s:%d", cfg["metrics_bind"], port)
    return server


def reload_config(beat: Beat, app, opts: BeatOptions) -> None:
    """HUP: re-read the config file's schedule (the app's code is not re-imported)."""
    try:
        entries, _ = static_entries(app, opts.reload())
    except Exception as exc:  # noqa: BLE001 - ConfigError, BootError, a bad entry: keep the schedule we have
        log.error("reload failed, keeping the current schedule: %s", exc)
        return
    beat.replace_static(entries)
    log.info("reloaded the schedule: %d static entries", len(entries))
