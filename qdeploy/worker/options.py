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
    )
