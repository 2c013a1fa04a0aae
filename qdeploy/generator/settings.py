"""The catalogue of settings: each carries its TOML key, CLI flag, parser, default and help together.

The config loader, the click options and the README's config reference are all generated from
this one list, so they cannot drift apart (the gunicorn ``config.py`` idea).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qdeploy.defaults import BROKER_URL, GRACEFUL_TIMEOUT
from qdeploy.generator import datatypes as t

TARGETS = ("default", "initd", "systemd", "supervisor", "tmpfiles", "sysusers", "logrotate", "config")


@dataclass(frozen=True)
class Setting:
    key: str  # dotted TOML key: "worker.concurrency"
    default: Any
    parse: t.Parser
    help: str
    flag: str | None = None  # long CLI flag of `qdeploy render` (and later `qdeploy worker`)
    short: str | None = None
    per_node: bool = False  # may be overridden in a [node."SELECTOR"] table

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]


def _s(key: str, default: Any, parse: t.Parser, help: str, flag: str | None = None, **kw: Any) -> Setting:
    return Setting(key, default, parse, help, flag, **kw)


def _timezone(value: Any) -> str:
    from qdeploy.beat.schedule import resolve_timezone

    if value == "":
        return value
    try:
        resolve_timezone(t.text(value))
    except ValueError:
        raise ValueError("expected an IANA timezone name such as \"Asia/Shanghai\" or \"UTC\"") from None
    return value


def _beat_schedule(value: Any) -> dict:
    """Check every entry now (exit 2 at load time); beat builds them in the right timezone."""
    import json

    from qdeploy.beat.entry import load_entries

    if isinstance(value, str):  # from $QDEPLOY_BEAT_SCHEDULE
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("expected a JSON object of entries") from None
    if not isinstance(value, dict):
        raise ValueError("expected a table of entries, e.g. [beat.schedule.cleanup]")
    load_entries(value, tz="UTC", source="config")
    return value


def _bind_address(value: Any) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(t.text(value)))
    except ValueError:
        raise ValueError("expected an IP address such as 127.0.0.1, 0.0.0.0 or ::1") from None


def _watchdog(value: Any) -> float:
    seconds = t.duration(value)
    if seconds and seconds < 5:
        raise ValueError("expected 0 (no watchdog) or at least 5s: the master pings systemd every 2s")
    return seconds


queue_list = t.string_list(t.pattern(t.QUEUE_NAME, "queue names of letters, digits and _ . : -"), "queue names")
user_name = t.pattern(t.POSIX_USER, "a POSIX user name (lower case, digits, _ -)")

SETTINGS: tuple[Setting, ...] = (
    # -- where things are -------------------------------------------------------------------
    _s("app", "qdeploy.demo:app", t.pattern(t.IMPORT_PATH, "an import path such as proj.tasks:app"),
       "Import path of the application object (`module:attribute`).", "--app", short="-A"),
    _s("broker", BROKER_URL, t.broker_url,
       "Broker URL: `redis://`, `rediss://` (TLS), `unix://`, `sentinel://` or `sentinels://` (TLS) with "
       "several sentinels as `host:port,host:port` and `?master=NAME`, `redis+cluster://` or `rediss+cluster://` "
       "(TLS) with any nodes of a Redis Cluster as `host:port,host:port`; `?wait_replicas=N` makes every publish "
       "and ack wait for N replicas (forms and options: docs/protocol.md). "
       "May hold a password: files that contain it are rendered 0640, and no output or log line shows it. "
       "The ops commands (`status`, `inspect`...) read it from here too.", "--broker", short="-b"),
    _s("workdir", "/var/lib/qdeploy", t.service_dir, "Working directory of every process.", "--workdir"),
    _s("executable", "auto", t.executable,
       "Absolute path of the `qdeploy` executable the services run, e.g. `/opt/qdeploy/venv/bin/qdeploy`. "
       "`auto` = the `qdeploy` that runs `render`.", "--executable"),
    _s("config_path", "/etc/qdeploy/qdeploy.toml", t.absolute_path,
       "Where the rendered services read this config from on the host.", "--config-path"),
    _s("user", "qdeploy", user_name, "System user the services run as.", "--user"),
    _s("group", "qdeploy", user_name, "System group the services run as.", "--group"),
    _s("umask", "0027", t.umask, "File mode creation mask of the services (octal string).", "--umask"),
    _s("log_dir", "/var/log/qdeploy", t.service_dir, "Log directory (init.d and supervisord logs).", "--log-dir"),
    _s("pid_dir", "/run/qdeploy", t.service_dir, "Pid file directory.", "--pid-dir"),
    _s("state_dir", "/var/lib/qdeploy", t.service_dir, "State directory (beat state, scratch space).", "--state-dir"),
    _s("log_level", "info", t.choice("debug", "info", "warning", "error", "critical"), "Log level.",
       "--log-level", short="-l"),
    _s("flavour", "debian", t.choice("debian", "rhel"),
       "`debian` renders `/etc/default/…`, `rhel` renders `/etc/sysconfig/…`.", "--flavour"),
    _s("targets", list(TARGETS), t.string_list(t.choice(*TARGETS), "targets"),
       f"Which artifacts to render: {', '.join(TARGETS)}.", "--only"),
    _s("env", {}, t.environment,
       "Extra environment variables for every service (`[env]` table), e.g. `DJANGO_SETTINGS_MODULE`."),
    _s("timezone", "", _timezone,
       "Timezone of crontab schedules (IANA name such as `Asia/Shanghai`). Empty: the app's "
       "`app.conf.timezone`, else UTC when `enable_utc`, else the host's zone."),
    _s("metrics_bind", "127.0.0.1", _bind_address,
       "Address the metrics ports of workers and beat listen on (`0.0.0.0`: every interface)."),
    _s("enable_utc", True, t.boolean,
       "With no timezone set here or in the app: evaluate crontabs in UTC (false: the host's zone)."),
    _s("history_max", 100000, t.integer(0, 10_000_000),
       "Tasks kept in the task history in Redis (what `qdeploy dashboard` searches), written by the worker "
       "masters; the oldest are dropped beyond it. About 1 KiB of Redis memory per task; 0 = no history."),
    _s("history_args", "failures", t.choice("all", "failures", "none"),
       "Whose arguments the history keeps (up to 2 KiB of JSON each): `failures` (a failed task's, and a retried "
       "one's until its next delivery starts: what the dashboard's retry needs; a retried task that then "
       "succeeds keeps none), `all` (costs each task a JSON encoding in its child) or `none`. "
       "The dashboard shows and searches them with `--show-args` only."),
    # -- workers -----------------------------------------------------------------------------
    _s("worker.nodes", ["1"], t.nodes,
       "Worker nodes: a count (`3` → nodes `1 2 3`) or a list of names (`[\"images\", \"default\"]`).",
       "--nodes", short="-N"),
    _s("worker.pool", "prefork", t.choice("prefork", "threads", "solo"),
       "`prefork`: a master and `concurrency` forked children, each running `threads` tasks at once; "
       "`threads`: a master and one child running `concurrency` threads (I/O-bound work); "
       "`solo`: one process, one task at a time, no master.", "--pool", short="-P", per_node=True),
    _s("worker.concurrency", 0, t.integer(0, 1024),
       "Child processes per node (threads with `pool = \"threads\"`); 0 = one per CPU core.",
       "--concurrency", short="-c", per_node=True),
    _s("worker.threads", 1, t.integer(1, 1000), "Tasks each child runs at once, in threads (prefork × threads).",
       "--threads", per_node=True),
    _s("worker.queues", ["default"], queue_list, "Queues to consume, in priority order.",
       "--queues", short="-Q", per_node=True),
    _s("worker.max_tasks_per_child", 0, t.integer(0), "Recycle a child after this many tasks; 0 = never.",
       "--max-tasks-per-child", per_node=True),
    _s("worker.max_memory_per_child", 0, t.size_kib,
       "Recycle a child whose *current* memory exceeds this (KiB, or `512M`, `2G`); 0 = never.",
       "--max-memory-per-child", per_node=True),
    _s("worker.time_limit", 0.0, t.duration, "Hard time limit per task (seconds or `5m`); 0 = none.",
       "--time-limit", per_node=True),
    _s("worker.soft_time_limit", 0.0, t.duration, "Soft time limit per task; 0 = none.",
       "--soft-time-limit", per_node=True),
    _s("worker.graceful_timeout", GRACEFUL_TIMEOUT, t.duration,
       "How long a warm shutdown waits for running tasks before requeueing them. Service managers "
       "wait this plus a margin before they kill.", "--graceful-timeout", per_node=True),
    _s("worker.task_events", False, t.boolean,
       "Publish task and worker events (`qdeploy events`); switch at run time with `qdeploy control "
       "enable_events|disable_events`. `-E` on `qdeploy worker`.", "--task-events/--no-task-events", per_node=True),
    _s("worker.event_args", False, t.boolean,
       "Put each task's arguments (`[args, kwargs]` as JSON, cut to 1,000 characters) in its `task-received` "
       "event, as Celery's `argsrepr`/`kwargsrepr`. Off by default: arguments may hold secrets, and every "
       "listener of the events channel sees them.", "--event-args/--no-event-args", per_node=True),
    _s("worker.metrics_port", 0, t.integer(0, 65535),
       "Serve Prometheus `/metrics` and `/healthz` on this port (needs `qdeploy[metrics]`); 0 = off. Set in "
       "`[worker]`, node N gets this port + N - 1 (the Nth node of `nodes`), or its own in `[node.N]`.",
       "--metrics-port", per_node=True),
    _s("worker.health_stuck_after", 30.0, t.duration,
       "A child that has been idle this long without polling Redis, or whose task is this far past its "
       "hard time limit, makes the node unhealthy (`qdeploy health`, `/healthz`, the watchdog); 0 = never.",
       per_node=True),
    _s("worker.health_reconnect_limit", 60.0, t.duration,
       "A node whose master has not reached the broker for this long is unhealthy.", per_node=True),
    _s("worker.watchdog", 60.0, _watchdog,
       "`WatchdogSec=` of the rendered worker units: systemd restarts a node that has not been healthy for "
       "this long (the master sends WATCHDOG=1 only while its health check holds); 0 = none."),
    _s("worker.extra_args", [], t.argv_list,
       "Extra arguments appended to every worker's command line (per-node options belong in `[node.N]`)."),
    # -- beat --------------------------------------------------------------------------------
    _s("beat.enabled", True, t.boolean, "Render the `qbeat` scheduler service.", "--beat/--no-beat"),
    _s("beat.max_interval", 5.0, t.duration, "Longest sleep between schedule checks."),
    _s("beat.lock_timeout", 30.0, t.duration,
       "Leader lock TTL: a new beat takes over at most this long after the leader dies."),
    _s("beat.extra_args", [], t.argv_list, "Extra arguments appended to the beat command line."),
    _s("beat.metrics_port", 0, t.integer(0, 65535),
       "Serve beat's Prometheus `/metrics` on this port (`qdeploy_beat_is_leader`, `qdeploy_beat_runs_total`); 0 = off."),
    _s("beat.misfire_grace", 300.0, t.duration,
       "A run missed while no beat was leading is sent once if at most this late, else skipped and "
       "logged; 0 = always send once."),
    _s("beat.schedule", {}, _beat_schedule,
       "Periodic tasks, one `[beat.schedule.NAME]` table each: `task`, `schedule` (`\"5m\"`, "
       "`\"*/15 * * * *\"`, `{ cron = \"0 8 * * mon\", timezone = \"Europe/Berlin\" }`...), optional "
       "`args`, `kwargs`, `options` (`queue`, `expires`...), `misfire_grace`, `enabled`. See docs/beat.md."),
)

BY_KEY = {s.key: s for s in SETTINGS}
SECTIONS = ("", "worker", "beat")
NODE_SETTINGS = {s.name: s for s in SETTINGS if s.per_node}
