"""The config model: find and load `qdeploy.toml`, apply env/CLI overrides, validate, resolve nodes.

Precedence, lowest first: built-in defaults < the config file < `QDEPLOY_<KEY>` environment
variables < command-line flags. Every error is a `ConfigError` whose message is one line naming
the source, the key and what was expected.
"""

from __future__ import annotations

import difflib
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdeploy.core.urls import redact, redact_text
from qdeploy.defaults import EX_USAGE
from qdeploy.generator import nodes as nodes_mod
from qdeploy.generator.datatypes import absolute_path
from qdeploy.generator.settings import BY_KEY, NODE_SETTINGS, SECTIONS, SETTINGS

SYSTEM_CONFIG = "/etc/qdeploy/qdeploy.toml"
LOCAL_CONFIG = "qdeploy.toml"
ENV_PREFIX = "QDEPLOY_"


class ConfigError(Exception):
    """A bad config: the message is one line naming source, key and what was expected."""

    exit_code = EX_USAGE


@dataclass(frozen=True)
class Config:
    values: Mapping[str, Any]  # every setting by dotted key, parsed
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # selector -> per-node values
    source: str | None = None  # the file it came from, if any
    explicit: frozenset[str] = frozenset()  # keys set on the command line: they beat [node] tables
    given: frozenset[str] = frozenset()  # keys set anywhere (file, environment, command line)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def nodes(self) -> list[str]:
        return self.values["worker.nodes"]

    def node(self, name: str) -> dict[str, Any]:
        """The worker settings of one node: section defaults, then every matching override."""
        if name not in self.nodes:
            raise ConfigError(f"unknown node {name!r} (nodes: {' '.join(self.nodes)})")
        options = {key: self.values[f"worker.{key}"] for key in NODE_SETTINGS}
        for selector, values in self.overrides.items():
            if name in nodes_mod.select(selector, self.nodes):
                options.update((k, v) for k, v in values.items() if f"worker.{k}" not in self.explicit)
        return options


# -- per-node values that depend on the node's place in the list ------------------------------
def node_port(cfg, node: str) -> int:
    """Node `node`'s metrics port: its own `[node.X] metrics_port`, else `[worker] metrics_port`
    plus the node's index (node 1 gets the port itself, node 2 the next...); 0 = no metrics."""
    for selector, values in cfg.overrides.items():
        if "metrics_port" in values and "worker.metrics_port" not in cfg.explicit:
            if node in nodes_mod.select(selector, cfg.nodes):
                return int(cfg.node(node)["metrics_port"])
    base = int(cfg["worker.metrics_port"])
    if not base or "worker.metrics_port" in cfg.explicit:  # a flag names this very process' port
        return base
    return base + cfg.nodes.index(node) if node in cfg.nodes else base


def node_ports(cfg) -> dict[str, int]:
    """Every node's port; ValueError when two nodes (or a node and beat) would share one or a
    port would pass 65535."""
    ports = {node: node_port(cfg, node) for node in cfg.nodes}
    if cfg["beat.enabled"] and cfg["beat.metrics_port"]:
        ports["beat"] = int(cfg["beat.metrics_port"])
    seen: dict[int, str] = {}
    for node, port in ports.items():
        if port > 65535:
            raise ValueError(f"node {node} would get metrics port {port} (> 65535): lower worker.metrics_port")
        if port and port in seen:
            raise ValueError(f"nodes {seen[port]} and {node} would share metrics port {port}: "
                             "give each node its own port ([node.N] metrics_port)")
        seen[port] = node
    return ports


def find(explicit: str | None = None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """`--config`, then `$QDEPLOY_CONFIG`, then `./qdeploy.toml`, then `/etc/qdeploy/qdeploy.toml`."""
    for origin, given in (("--config", explicit), ("QDEPLOY_CONFIG", environ.get("QDEPLOY_CONFIG"))):
        if given:
            path = Path(given)
            if not path.is_file():
                raise ConfigError(f"{given}: config file not found (from {origin})")
            return path
    for candidate in (Path(LOCAL_CONFIG), Path(SYSTEM_CONFIG)):
        if candidate.is_file():
            return candidate
    return None


def load(
    explicit: str | None = None,
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Config:
    """Find, read and validate the config; `cli` maps dotted keys to raw flag values."""
    path = find(explicit, environ)
    raw = _read(path) if path else {}
    source = str(path) if path else "defaults"
    values = {s.key: s.default for s in SETTINGS}
    given: set[str] = set()
    overrides_raw = raw.pop("node", {})
    for key, value in _flatten(raw, source):
        values[key] = _parse(key, value, source)
        given.add(key)
    for key in BY_KEY:
        env_name = ENV_PREFIX + key.upper().replace(".", "_")
        if env_name in environ:
            values[key] = _parse(key, environ[env_name], f"${env_name}")
            given.add(key)
    flags = dict(cli or {})
    on_command_line = frozenset(key for key, value in flags.items() if value is not None)
    for key in on_command_line:
        values[key] = _parse(key, flags[key], BY_KEY[key].flag or key)
    if values["executable"] == "auto":
        values["executable"] = _own_executable()
    overrides = _parse_overrides(overrides_raw, values["worker.nodes"], source)
    return Config(values, overrides, str(path) if path else None, on_command_line,
                  frozenset(given | on_command_line))


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def _flatten(raw: Mapping[str, Any], source: str):
    """Yield (dotted key, value) for every key of the file, refusing unknown ones."""
    for name, value in raw.items():
        if name in SECTIONS and name and isinstance(value, dict):
            for sub, subvalue in value.items():
                yield _known(f"{name}.{sub}", source), subvalue
        else:
            yield _known(name, source), value


def _known(key: str, source: str) -> str:
    if key in BY_KEY:
        return key
    candidates = list(BY_KEY) + [s.name for s in SETTINGS if s.section] + ["node"]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if close and close[0] not in BY_KEY and close[0] != "node":
        close = [next(s.key for s in SETTINGS if s.name == close[0])]
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"{source}: unknown key {_quoted(key)}{hint}")


def _parse(key: str, value: Any, source: str) -> Any:
    try:
        return BY_KEY[key].parse(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {key} = {_show(value, key)}: {redact_text(str(exc))}") from None


def _parse_overrides(raw: Any, names: list[str], source: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: node: expected tables like [node.2] or [node.\"1-3\"]")
    overrides = {}
    for selector, table in raw.items():
        where = f"{source}: [node.{selector if selector.isprintable() else repr(selector)}]"
        try:
            nodes_mod.select(selector, names)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table of per-node settings")
        values = {}
        for name, value in table.items():
            if name not in NODE_SETTINGS:
                close = difflib.get_close_matches(name, list(NODE_SETTINGS), n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                allowed = ", ".join(NODE_SETTINGS)
                raise ConfigError(f"{where}: unknown per-node key {_quoted(name)}{hint}; per-node keys: {allowed}")
            values[name] = _parse(f"worker.{name}", value, where)
        overrides[str(selector)] = values
    return overrides


def _quoted(name: str) -> str:
    """'name', or its repr when it holds control characters (one line, no terminal escapes)."""
    return f"'{name}'" if name.isprintable() else repr(name)


def _show(value: Any, key: str = "") -> str:
    """The value as an error shows it: credentials redacted first (the broker's as a URL, even a
    malformed one; URLs inside any other value), then cut to one short line."""
    if isinstance(value, str):
        shown = repr(redact(value) if key == "broker" else redact_text(value))
    else:
        shown = redact_text(repr(value))
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _own_executable() -> str:
    """The `qdeploy` script beside the running interpreter (not a pyenv/asdf shim)."""
    candidate = Path(sys.executable).parent / "qdeploy"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        try:
            return absolute_path(str(candidate))
        except ValueError as exc:
            raise ConfigError(f"executable = 'auto': {candidate}: {exc}; set executable in the config") from None
    raise ConfigError(f"executable = 'auto': no qdeploy script at {candidate}; set executable in the config")
