"""The resolved options of one worker node: config file + node overrides + command-line flags."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from qdeploy.generator.config import Config
from qdeploy.generator.settings import NODE_SETTINGS
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
    metrics_port: int = 0  # /metrics and /healthz (qdeploy.ops.metrics); 0 = off
    metrics_bind: str = "127.0.0.1"
    health_stuck_after: float = 30.0
    health_reconnect_limit: float = 60.0
    history_max: int = 0  # tasks kept in the task history (qdeploy.ops.history); 0 = none
    history_args: str = "failures"  # whose arguments the history keeps: all, failures, none

    def title(self) -> str:
        return f"qdeploy worker {self.node} master"


def resolve(cfg: Config, node: str | None, *, name: str | None = None, hostname: str | None = None,
            **flags) -> WorkerOptions:
    """Options of config node `node` (its [node] tables applied), or with no node the [worker]
    section's, named `name` (default "worker"). `flags` are the worker-only command-line options
    (logfile, pidfile, detach, uid, gid...)."""
    per_node = cfg.node(node) if node else {key: cfg[f"worker.{key}"] for key in NODE_SETTINGS}
    name = node or name or "worker"
    host = hostname or socket.gethostname()
    concurrency = per_node["concurrency"] or os.cpu_count() or 1
    pool, threads = per_node["pool"], per_node["threads"]
    if pool == "threads":  # Celery's -P threads -c N: N threads, here in one supervised child
        pool, concurrency, threads = "prefork", 1, per_node["concurrency"] or 10 * (os.cpu_count() or 1)
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
        metrics_port=metrics_port(cfg, node) if node else per_node["metrics_port"],
        metrics_bind=cfg["metrics_bind"],
        health_stuck_after=per_node["health_stuck_after"],
        health_reconnect_limit=per_node["health_reconnect_limit"],
        history_max=cfg["history_max"],
        history_args=cfg["history_args"],
    )


def metrics_port(cfg: Config, node: str) -> int:
    from qdeploy.generator.config import ConfigError, node_ports

    try:
        return node_ports(cfg)[node]
    except ValueError as exc:
        raise ConfigError(f"{cfg.source or 'config'}: worker.metrics_port: {exc}") from None
