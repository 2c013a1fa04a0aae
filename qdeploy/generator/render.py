"""The artifact catalogue: which file each target renders, from which template, with which mode.

Rendering is pure: `render(cfg)` returns the files in memory (every template is rendered and
checked before anything touches the disk); `qdeploy.generator.tree` writes or compares them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from qdeploy import __version__
from qdeploy.defaults import START_TIMEOUT, STOP_MARGIN
from qdeploy.generator.config import Config, ConfigError
from qdeploy.generator.filters import FILTERS

SECRET = 0o640  # may hold a broker password or secrets from [env]
PUBLIC = 0o644
EXECUTABLE = 0o755


@dataclass(frozen=True)
class Artifact:
    target: str
    path: str  # relative to the output root
    template: str
    mode: int
    beat: bool = False  # only rendered when beat is enabled


@dataclass(frozen=True)
class File:
    path: str
    content: str
    mode: int
    target: str


def catalogue(cfg: Config) -> list[Artifact]:
    defaults = "etc/default" if cfg["flavour"] == "debian" else "etc/sysconfig"
    supervisor = "etc/supervisor/conf.d/qdeploy.conf" if cfg["flavour"] == "debian" else "etc/supervisord.d/qdeploy.ini"
    return [
        Artifact("default", f"{defaults}/qworker", "default.j2", SECRET),
        Artifact("default", f"{defaults}/qbeat", "default.j2", SECRET, beat=True),
        Artifact("initd", "etc/init.d/qworker", "init.d.j2", EXECUTABLE),
        Artifact("initd", "etc/init.d/qbeat", "init.d.j2", EXECUTABLE, beat=True),
        Artifact("systemd", "etc/systemd/system/qworker@.service", "qworker@.service.j2", PUBLIC),
        Artifact("systemd", "etc/systemd/system/qworker.target", "qworker.target.j2", PUBLIC),
        Artifact("systemd", "etc/systemd/system/qbeat.service", "qbeat.service.j2", PUBLIC, beat=True),
        Artifact("supervisor", supervisor, "supervisor.conf.j2", PUBLIC),
        Artifact("tmpfiles", "usr/lib/tmpfiles.d/qdeploy.conf", "tmpfiles.conf.j2", PUBLIC),
        Artifact("sysusers", "usr/lib/sysusers.d/qdeploy.conf", "sysusers.conf.j2", PUBLIC),
        Artifact("logrotate", "etc/logrotate.d/qdeploy", "logrotate.j2", PUBLIC),
        Artifact("config", cfg["config_path"].lstrip("/"), "qdeploy.toml.j2", SECRET),
    ]


def worker_argv(cfg: Config, node: str) -> list[str]:
    """The one command line every launcher ends up exec'ing for worker node `node`."""
    return [cfg["executable"], "worker", "--config", cfg["config_path"], "--node", node, *cfg["worker.extra_args"]]


def beat_argv(cfg: Config) -> list[str]:
    return [cfg["executable"], "beat", "--config", cfg["config_path"], *cfg["beat.extra_args"]]


def explain(cfg: Config) -> dict[str, dict[str, Any]]:
    """Per service instance: its argv and the node options the worker resolves from the config."""
    services = {f"qworker@{n}": {"argv": worker_argv(cfg, n), "options": cfg.node(n)} for n in cfg.nodes}
    if cfg["beat.enabled"]:
        services["qbeat"] = {"argv": beat_argv(cfg), "options": {}}
    return services


def render(cfg: Config) -> list[File]:
    env = _environment()
    context = _context(cfg)
    files = []
    for artifact in catalogue(cfg):
        if artifact.target not in cfg["targets"] or (artifact.beat and not cfg["beat.enabled"]):
            continue
        service = "qbeat" if artifact.beat else "qworker"
        try:
            content = env.get_template(artifact.template).render(context, service=service)
        except ValueError as exc:  # a filter refused a value it cannot quote for this syntax
            raise ConfigError(f"{cfg.source or 'defaults'}: cannot render {artifact.path}: {exc}") from None
        files.append(File(artifact.path, content, artifact.mode, artifact.target))
    return files


def templates_dir() -> Path:
    """Templates ship inside the wheel as qdeploy/templates; a source checkout has ./templates."""
    packaged = Path(str(resources.files("qdeploy"))) / "templates"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "templates"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(FILTERS)
    return env


def _context(cfg: Config) -> dict[str, Any]:
    graceful = max(cfg.node(n)["graceful_timeout"] for n in cfg.nodes)
    head = worker_argv(cfg, "NODE")
    split = head.index("NODE")
    return {
        "cfg": cfg.values,
        "version": __version__,
        "nodes": cfg.nodes,
        "overrides": cfg.overrides,
        "defaults_dir": "/etc/default" if cfg["flavour"] == "debian" else "/etc/sysconfig",
        "worker_head": head[:split],
        "worker_tail": head[split + 1 :],
        "worker_argv": lambda node: worker_argv(cfg, node),
        "beat_argv": beat_argv(cfg),
        "stop_timeout": math.ceil(graceful) + STOP_MARGIN,
        "start_timeout": START_TIMEOUT,
        "systemd_dirs": _systemd_dirs(cfg),
        "settings_toml": _settings_toml(cfg),
        "metrics_ports": _metrics_ports(cfg),
    }


def _metrics_ports(cfg: Config) -> dict[str, int]:
    """Each node's (and beat's) metrics port; two sharing one is a config error (exit 2)."""
    from qdeploy.generator.config import node_ports

    try:
        return {node: port for node, port in node_ports(cfg).items() if port}
    except ValueError as exc:
        raise ConfigError(f"{cfg.source or 'defaults'}: worker.metrics_port: {exc}") from None


def _systemd_dirs(cfg: Config) -> dict[str, Any]:
    """Map our directories onto RuntimeDirectory=/LogsDirectory=/StateDirectory= when they live
    under the standard roots; anything else becomes a ReadWritePaths= entry (ProtectSystem=strict
    leaves everything else read-only)."""
    managed: dict[str, str] = {}
    extra: list[str] = []
    for key, directive, root in (
        ("pid_dir", "RuntimeDirectory", "/run/"),
        ("log_dir", "LogsDirectory", "/var/log/"),
        ("state_dir", "StateDirectory", "/var/lib/"),
    ):
        path = cfg[key]
        if path.startswith(root) and len(path) > len(root):
            managed[directive] = path[len(root) :]
        else:
            extra.append(path)
    # ProtectHome=yes would hide an app deployed under /home or /root: then only make it read-only.
    in_home = any(cfg[k].startswith(("/home/", "/root/")) for k in ("workdir", "executable"))
    return {"managed": managed, "read_write": extra, "protect_home": "read-only" if in_home else "yes"}


def _settings_toml(cfg: Config) -> list[tuple[str, list[tuple[str, Any]]]]:
    """The effective config as (section, [(name, value)]) for the TOML template."""
    sections: dict[str, list[tuple[str, Any]]] = {}
    for key, value in cfg.values.items():
        section, _, name = key.rpartition(".")
        if key != "env":
            sections.setdefault(section, []).append((name, value))
    return list(sections.items())
