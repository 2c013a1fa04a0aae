"""The resolved options of one worker node: the app's configuration < config file + node
overrides < $QDEPLOY_* < command-line flags.

`resolve` builds them from the config before the app is imported; `with_app` then fills what
the config left unset from the app's Celery settings (`worker_concurrency`, `task_time_limit`...:
qdeploy.core.celery_settings' `worker.<key>` targets), and returns a note for every setting both
set differently (one warning at start, naming both sources)."""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass

from qdeploy.generator.config import Config
from qdeploy.generator.settings import BY_KEY, NODE_SETTINGS
from qdeploy.service import boot as service


@dataclass(frozen=True, kw_only=True)
class WorkerOptions(service.DaemonOptions):
    node: str
    owner: str  # node@host: the identity whose heartbeat vouches for this node's consumers
    queues: list[str]
    pool: str  # prefork | solo (pool = "threads" is prefork with one child of `concurrency` threads)
    concurrency: int  # children
    threads: int  # tasks at once per child
    max_tasks_per_child: int
    max_tasks_jitter: float
    max_memory_per_child: int  # KiB, recycle after the task
    max_memory_per_child_hard: int  # KiB, kill mid-task
    time_limit: float
    soft_time_limit: float
    graceful_timeout: float
    config_file: str | None = None  # the file the config came from, if any
    task_events: bool = False  # publish events (qdeploy.ops.events)
    event_args: bool = False  # task-received events carry the task's arguments
    metrics_port: int = 0  # /metrics and /healthz (qdeploy.ops.metrics); 0 = off
    metrics_bind: str = "127.0.0.1"
    health_stuck_after: float = 30.0
    health_reconnect_limit: float = 60.0
    history_max: int = 0  # tasks kept in the task history (qdeploy.ops.history); 0 = none
    history_args: str = "failures"  # whose arguments the history keeps: all, failures, none
    autoscale: tuple[int, int] | None = None  # (max, min) children: --autoscale=MAX,MIN
    embed_beat: bool = False  # -B: a supervised `qdeploy beat` child
    sources: tuple[tuple[str, str], ...] = ()  # worker setting -> where the config set it

    def title(self) -> str:
        return f"qdeploy worker {self.node} master"

    def source(self, key: str) -> str | None:
        return dict(self.sources).get(key)


def pool_shape(pool: str, concurrency: int, threads: int) -> tuple[str, int, int]:
    """(pool, children, threads per child): Celery's `-P threads -c N` is N threads, here in one
    supervised child; concurrency 0 is one child per CPU core."""
    if pool == "threads":
        return "prefork", 1, concurrency or 10 * (os.cpu_count() or 1)
    return pool, concurrency or os.cpu_count() or 1, threads


def source_of(cfg: Config, key: str, node: str | None = None) -> str | None:
    """Where the config set `key` (None: it did not): a flag, an environment variable, a
    [node] table or the file."""
    if key in cfg.explicit:
        return f"the command line ({BY_KEY[key].flag or key})" if key in BY_KEY else "the command line"
    env = "QDEPLOY_" + key.upper().replace(".", "_")
    if env in os.environ:
        return f"${env}"
    section, _, name = key.rpartition(".")
    if section == "worker" and node:
        from qdeploy.generator import nodes as nodes_mod

        for selector, values in cfg.overrides.items():
            if name in values and node in nodes_mod.select(selector, cfg.nodes):
                return f"{cfg.source} [node.{selector}] {name}"
    if key in cfg.given:
        return f"{cfg.source} ({key})" if cfg.source else key
    return None


def resolve(cfg: Config, node: str | None, *, name: str | None = None, hostname: str | None = None,
            autoscale: tuple[int, int] | None = None, embed_beat: bool = False, **flags) -> WorkerOptions:
    """Options of config node `node` (its [node] tables applied), or with no node the [worker]
    section's, named `name` (default "worker"). `flags` are the worker-only command-line options
    (logfile, pidfile, detach, uid, gid...)."""
    per_node = cfg.node(node) if node else {key: cfg[f"worker.{key}"] for key in NODE_SETTINGS}
    name = node or name or "worker"
    host = hostname or socket.gethostname()
    pool, concurrency, threads = pool_shape(per_node["pool"], per_node["concurrency"], per_node["threads"])
    if autoscale:
        concurrency = autoscale[1] or 1
    sources = tuple((key, src) for key in NODE_SETTINGS if (src := source_of(cfg, f"worker.{key}", node)))
    if flags.get("task_events"):
        sources += (("task_events", "the command line (-E)"),)
    if autoscale:
        sources += (("concurrency", "the command line (--autoscale)"),)
    return WorkerOptions(
        node=name,
        owner=f"{name}@{host}",
        queues=per_node["queues"],
        pool=pool,
        concurrency=concurrency,
        threads=threads,
        max_tasks_per_child=per_node["max_tasks_per_child"],
        max_tasks_jitter=flags.get("max_tasks_jitter") or 0.0,
        max_memory_per_child=per_node["max_memory_per_child"],
        max_memory_per_child_hard=flags.get("max_memory_per_child_hard") or 0,
        time_limit=per_node["time_limit"],
        soft_time_limit=per_node["soft_time_limit"],
        graceful_timeout=per_node["graceful_timeout"],
        **service.daemon_fields(cfg, name, host, uid=flags.get("uid"), gid=flags.get("gid"),
                                allow_root=flags.get("allow_root"), pidfile=flags.get("pidfile"),
                                logfile=flags.get("logfile"), log_format=flags.get("log_format"),
                                detach=flags.get("detach")),
        config_file=cfg.source,
        task_events=bool(flags.get("task_events") or per_node["task_events"]),
        event_args=per_node["event_args"],
        metrics_port=metrics_port(cfg, node) if node else per_node["metrics_port"],
        metrics_bind=cfg["metrics_bind"],
        health_stuck_after=per_node["health_stuck_after"],
        health_reconnect_limit=per_node["health_reconnect_limit"],
        history_max=cfg["history_max"],
        history_args=cfg["history_args"],
        autoscale=autoscale,
        embed_beat=embed_beat,
        sources=sources,
    )


# The app's worker settings qdeploy takes (celery_settings' worker.<key> targets) -> field.
_FIELDS = ("concurrency", "max_tasks_per_child", "max_memory_per_child", "time_limit", "soft_time_limit",
           "task_events", "pool")


def with_app(opts: WorkerOptions, app) -> tuple[WorkerOptions, list[str]]:
    """Fill what the config left unset from the app's settings; a note per conflict."""
    given = dict(opts.sources)
    changes: dict = {}
    notes: list[str] = []
    settings = app.conf.service_settings("worker")
    for key in _FIELDS:
        if key not in settings:
            continue
        value, where = settings[key]
        if key in given:
            current = getattr(opts, key)
            shown = "threads" if key == "pool" and opts.threads > 1 and opts.concurrency == 1 else current
            if value != shown and not (key == "concurrency" and not value):
                notes.append(f"two values of worker {key}: {value!r} from {where} and {shown!r} from {given[key]}; "
                             f"using {given[key]}'s (qdeploy.toml, $QDEPLOY_* and flags win over the app's config)")
            continue
        changes[key] = value
    if "queues" not in given and app.default_queue != "default":  # Celery: no -Q = task_default_queue
        changes["queues"] = [app.default_queue]
    if "pool" in changes or "concurrency" in changes:
        pool = changes.pop("pool", None) or opts.pool
        concurrency = changes.pop("concurrency", None)
        if pool == "threads":
            pool, children, threads = pool_shape("threads", concurrency or 0, 1)
        else:
            _, children, threads = pool_shape(pool, concurrency or 0, opts.threads)
            if concurrency is None:
                children = opts.concurrency
        changes.update(pool=pool, concurrency=children, threads=threads)
    for key in ("time_limit", "soft_time_limit"):
        if key in changes:
            changes[key] = float(changes[key] or 0.0)
    for key in ("max_tasks_per_child", "max_memory_per_child"):
        if key in changes:
            changes[key] = int(changes[key] or 0)
    return (dataclasses.replace(opts, **changes) if changes else opts), notes


def metrics_port(cfg: Config, node: str) -> int:
    from qdeploy.generator.config import ConfigError, node_ports

    try:
        return node_ports(cfg)[node]
    except ValueError as exc:
        raise ConfigError(f"{cfg.source or 'config'}: worker.metrics_port: {exc}") from None
