"""Fuzz the config loader: random TOML documents and environment values give a Config or a
one-line ConfigError, never a traceback; a config that loads renders (in memory) or fails with
ConfigError; the CLI exits 2 with one line and writes nothing."""

from __future__ import annotations

import datetime as dt
import math

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdeploy.generator import config, render
from qdeploy.cli import main
from qdeploy.generator.settings import BY_KEY, NODE_SETTINGS, SETTINGS

FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

ROOT_KEYS = [s.name for s in SETTINGS if not s.section]
SECTION_KEYS = {sec: [s.name for s in SETTINGS if s.section == sec] for sec in ("worker", "beat")}

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.floats()
           | st.text(max_size=30) | st.sampled_from(["", "0", "-1", "1-3", "%n", "512M", "10s", "a\nb", "'", "\\"])
           | st.datetimes(min_value=dt.datetime(1, 1, 1)) | st.dates() | st.times())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def key(name: str) -> str:
    return name if name and all(c.isalnum() or c in "_-" for c in name) else toml_str(name)


def toml_str(text: str) -> str:
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 32 or c in '"\\' or ord(c) == 127
                         or 0xD800 <= ord(c) <= 0xDFFF else c for c in text) + '"'


def toml(value) -> str:
    """A TOML value (None has no TOML spelling: it becomes an empty inline table)."""
    if value is None:
        return "{}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{key(k)} = {toml(v)}" for k, v in value.items()) + "}"


def section(names: list[str]):
    return st.dictionaries(st.sampled_from(names) | st.text(min_size=1, max_size=8), values, max_size=5)


documents = st.fixed_dictionaries({}, optional={
    "root": section(ROOT_KEYS),
    "worker": section(SECTION_KEYS["worker"]),
    "beat": section(SECTION_KEYS["beat"]),
    "node": st.dictionaries(st.sampled_from(["1", "2", "1-3", "x", "", "0", "9-1"]) | st.text(max_size=5),
                            section(list(NODE_SETTINGS)) | values, max_size=3),
})


def write_doc(doc: dict) -> str:
    lines = [f"{key(k)} = {toml(v)}" for k, v in doc.get("root", {}).items()]
    for sec in ("worker", "beat"):
        if sec in doc:
            lines.append(f"[{sec}]")
            lines += [f"{key(k)} = {toml(v)}" for k, v in doc[sec].items()]
    for selector, table in doc.get("node", {}).items():
        if isinstance(table, dict):
            lines.append(f"[node.{key(selector)}]")
            lines += [f"{key(k)} = {toml(v)}" for k, v in table.items()]
        else:
            lines.append(f"node = {toml(table)}")
    return "\n".join(lines) + "\n"


def load_or_config_error(path, environ=None):
    try:
        cfg = config.load(str(path), environ=environ or {})
    except config.ConfigError as exc:
        assert len(str(exc).splitlines()) == 1, repr(str(exc))  # also no \x1e, \x85, \u2028...
        return None
    try:
        render.render(cfg)  # everything in memory: a loaded config renders or says why
    except config.ConfigError as exc:
        assert len(str(exc).splitlines()) == 1, repr(str(exc))
    return cfg


@FUZZ
@given(documents)
def test_random_documents(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("cfg") / "qdeploy.toml"
    path.write_text(write_doc(doc), encoding="utf-8")
    load_or_config_error(path)


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_bytes_are_config_errors(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "qdeploy.toml"
    path.write_bytes(raw)
    load_or_config_error(path)


@FUZZ
@given(st.sampled_from(sorted(BY_KEY)), st.text(max_size=40))
def test_random_environment_values(tmp_path_factory, name, value):
    path = tmp_path_factory.mktemp("cfg") / "qdeploy.toml"
    path.write_text("")
    env_name = config.ENV_PREFIX + name.upper().replace(".", "_")
    load_or_config_error(path, {env_name: value.replace("\0", "")})


BAD = st.sampled_from([
    "worker.concurrency = 'many'\n", "nodes = 3\n", "[worker]\nconcurency = 2\n", "user = ['a']\n",
    "[node.7]\nconcurrency = 2\n", "= 1\n", "[worker]\nqueues = 'a b;rm -rf /'\n", "\x00\n",
    "[worker]\nmax_memory_per_child = '1 potato'\n", "executable = 'relative/qdeploy'\n",
])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(BAD, documents.map(write_doc)))
def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path_factory, text):
    work = tmp_path_factory.mktemp("cli")
    path = work / "qdeploy.toml"
    path.write_text(text, encoding="utf-8")
    try:
        config.load(str(path), environ={})
        render.render(config.load(str(path), environ={}))
        return  # a good document: not this test's business
    except config.ConfigError:
        pass
    out = work / "out"
    result = CliRunner().invoke(main, ["render", "--config", str(path), "--out", str(out)], env={"QDEPLOY_CONFIG": None})
    assert result.exit_code == 2, (text, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists() and sorted(p.name for p in work.iterdir()) == ["qdeploy.toml"]
