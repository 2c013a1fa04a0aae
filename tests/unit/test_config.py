"""The config model: lookup order, defaults, precedence, per-node overrides and validation."""

from __future__ import annotations

import pytest

from qdeploy.generator import config
from qdeploy.generator.config import ConfigError
from qdeploy.generator.settings import SETTINGS


def test_defaults_without_any_file(isolated):
    cfg = config.load(environ={})
    assert cfg.source is None
    assert cfg["app"] == "qdeploy.demo:app"
    assert cfg["broker"] == "redis://127.0.0.1:6379/0"
    assert (cfg["user"], cfg["group"]) == ("qdeploy", "qdeploy")
    assert (cfg["log_dir"], cfg["pid_dir"], cfg["state_dir"]) == ("/var/log/qdeploy", "/run/qdeploy", "/var/lib/qdeploy")
    assert cfg.nodes == ["1"]
    assert cfg["executable"].endswith("/qdeploy") and cfg["executable"] != "auto"


def test_lookup_order(isolated, write_config, monkeypatch):
    system = write_config('app = "from.system:app"', "system.toml")
    monkeypatch.setattr(config, "SYSTEM_CONFIG", str(system))
    assert config.load(environ={})["app"] == "from.system:app"
    write_config('app = "from.cwd:app"')
    assert config.load(environ={})["app"] == "from.cwd:app"
    env_file = write_config('app = "from.env:app"', "env.toml")
    assert config.load(environ={"QDEPLOY_CONFIG": str(env_file)})["app"] == "from.env:app"
    explicit = write_config('app = "from.flag:app"', "flag.toml")
    assert config.load(str(explicit), environ={"QDEPLOY_CONFIG": str(env_file)})["app"] == "from.flag:app"


@pytest.mark.parametrize("origin", ["--config", "QDEPLOY_CONFIG"])
def test_named_config_file_must_exist(isolated, origin):
    kwargs = {"explicit": "missing.toml", "environ": {}} if origin == "--config" else {"environ": {"QDEPLOY_CONFIG": "missing.toml"}}
    with pytest.raises(ConfigError, match=rf"missing.toml: config file not found \(from {origin}\)"):
        config.load(**kwargs)


def test_precedence_file_env_cli(isolated, write_config):
    path = write_config("[worker]\nconcurrency = 2\nqueues = ['a']\n")
    assert config.load(str(path), environ={})["worker.concurrency"] == 2
    env = {"QDEPLOY_WORKER_CONCURRENCY": "3", "QDEPLOY_BROKER": "redis://10.0.0.1:6379/2"}
    cfg = config.load(str(path), environ=env)
    assert cfg["worker.concurrency"] == 3 and cfg["broker"] == "redis://10.0.0.1:6379/2"
    cfg = config.load(str(path), cli={"worker.concurrency": "4", "worker.queues": "x,y"}, environ=env)
    assert cfg["worker.concurrency"] == 4 and cfg["worker.queues"] == ["x", "y"]


def test_every_required_setting_exists():
    keys = {s.key for s in SETTINGS}
    required = {
        "app", "workdir", "executable", "broker", "user", "group", "umask", "log_dir", "pid_dir",
        "state_dir", "log_level", "worker.nodes", "worker.concurrency", "worker.queues",
        "worker.max_tasks_per_child", "worker.max_memory_per_child", "worker.time_limit",
        "worker.soft_time_limit", "worker.extra_args", "beat.enabled", "targets", "flavour", "env",
    }
    assert required <= keys


def test_nodes_by_count_or_names(isolated, write_config):
    assert config.load(cli={"worker.nodes": "3"}, environ={}).nodes == ["1", "2", "3"]
    path = write_config('[worker]\nnodes = ["images", "video.hd", "w_3"]\n')
    assert config.load(str(path), environ={}).nodes == ["images", "video.hd", "w_3"]


def test_per_node_overrides_like_celery_multi(isolated, write_config):
    path = write_config(
        """
[worker]
nodes = 4
concurrency = 2
queues = ["default"]

[node.2]
concurrency = 8
queues = ["images", "video"]

[node."3-4"]
max_tasks_per_child = 100

[node."1,4"]
time_limit = "5m"
"""
    )
    cfg = config.load(str(path), environ={})
    assert cfg.node("1") | {} == cfg.node("1")
    assert cfg.node("1")["concurrency"] == 2 and cfg.node("1")["time_limit"] == 300.0
    assert cfg.node("2")["concurrency"] == 8 and cfg.node("2")["queues"] == ["images", "video"]
    assert cfg.node("2")["max_tasks_per_child"] == 0
    assert cfg.node("3")["max_tasks_per_child"] == 100 and cfg.node("3")["queues"] == ["default"]
    assert cfg.node("4")["max_tasks_per_child"] == 100 and cfg.node("4")["time_limit"] == 300.0
    with pytest.raises(ConfigError, match="unknown node '9'"):
        cfg.node("9")


def test_values_are_parsed(isolated, write_config):
    path = write_config(
        """
umask = 0o022
[worker]
max_memory_per_child = "512M"
soft_time_limit = "1h30m"
graceful_timeout = 90
[beat]
enabled = false
"""
    )
    cfg = config.load(str(path), environ={})
    assert cfg["umask"] == "0022"
    assert cfg["worker.max_memory_per_child"] == 512 * 1024
    assert cfg["worker.soft_time_limit"] == 5400.0
    assert cfg["worker.graceful_timeout"] == 90.0
    assert cfg["beat.enabled"] is False


@pytest.mark.parametrize(
    "text, message",
    [
        ("[worker]\nconcurency = 4\n", "unknown key 'worker.concurency' (did you mean 'worker.concurrency'?)"),
        ("brokr = 'redis://x'\n", "unknown key 'brokr' (did you mean 'broker'?)"),
        ("concurrency = 4\n", "unknown key 'concurrency' (did you mean 'worker.concurrency'?)"),
        ("zzzz = 1\n", "unknown key 'zzzz'"),
        ("[worker]\nconcurrency = 'lots'\n", "worker.concurrency = 'lots': expected an integer"),
        ("[worker]\nconcurrency = -1\n", "worker.concurrency = -1: expected an integer >= 0 and <= 1024"),
        ("[worker]\nconcurrency = true\n", "worker.concurrency = True: expected an integer"),
        ("[worker]\nnodes = 0\n", "worker.nodes = 0: expected a node count from 1 to 1000"),
        ("[worker]\nnodes = ['a', 'b c']\n", "worker.nodes = ['a', 'b c']: expected a list of node names"),
        ("[worker]\nnodes = ['a', 'a']\n", "expected a list of distinct node names"),
        ("[worker]\nnodes = ['../../etc']\n", "expected a list of node names"),
        ("[worker]\nqueues = []\n", "worker.queues = []: expected at least one of queue names"),
        ("[worker]\nmax_memory_per_child = 'lots'\n", "expected KiB as an integer or a size"),
        ("[worker]\ntime_limit = '5 minutes'\n", "expected seconds or a duration"),
        ("[worker]\ntime_limit = -1\n", "expected a duration >= 0"),
        ("umask = '0999'\n", "umask = '0999': expected an octal umask"),
        ("log_dir = 'var/log'\n", "log_dir = 'var/log': expected an absolute path"),
        ("log_dir = '/var/log/$(reboot)'\n", "expected an absolute path of letters"),
        ("log_dir = '/var/../etc'\n", "expected an absolute path of letters"),
        ("user = 'root; rm -rf /'\n", "expected a POSIX user name"),
        ("broker = 'http://x'\n", "broker = 'http://x': expected a URL starting with one of redis://"),
        ("broker = 'redis://host:99999/0'\n", "expected a port from 1 to 65535"),
        ("app = 'not an import path'\n", "expected an import path"),
        ("flavour = 'arch'\n", "flavour = 'arch': expected one of debian, rhel"),
        ("targets = ['systemd', 'upstart']\n", "expected a list of targets: expected one of"),
        ("log_level = 'loud'\n", "expected one of debug, info"),
        ("[env]\n'BAD-NAME' = 'x'\n", "expected environment variable names like FOO_BAR"),
        ("env = 'FOO=1'\n", "env = 'FOO=1': expected a table"),
        ("[worker]\nextra_args = '--foo'\n", "expected a list of strings"),
        ('[worker]\nextra_args = ["a\\nb"]\n', "expected a list of single-line strings"),
        ("[node.7]\nconcurrency = 2\n", "[node.7]: selector '7' matches no node"),
        ("[node.1]\nconcurency = 2\n", "unknown per-node key 'concurency' (did you mean 'concurrency'?)"),
        ("[node.1]\nbroker = 'redis://x'\n", "unknown per-node key 'broker'"),
        ("[node.1]\nconcurrency = 'x'\n", "[node.1]: worker.concurrency = 'x': expected an integer"),
        ("node = 3\n", "node: expected tables like [node.2]"),
        ("[worker\n", "invalid TOML"),
        ("app = \n", "invalid TOML"),
    ],
)
def test_bad_config_names_file_key_and_expectation(isolated, write_config, text, message):
    path = write_config(text)
    with pytest.raises(ConfigError) as info:
        config.load(str(path), environ={})
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_bad_env_and_cli_values_name_their_source(isolated):
    with pytest.raises(ConfigError, match=r"^\$QDEPLOY_WORKER_CONCURRENCY: worker.concurrency = 'x'"):
        config.load(environ={"QDEPLOY_WORKER_CONCURRENCY": "x"})
    with pytest.raises(ConfigError, match=r"^--nodes: worker.nodes = 'a b'"):
        config.load(cli={"worker.nodes": "a b"}, environ={})


def test_unreadable_and_binary_files(isolated, tmp_path):
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="bin.toml: "):
        config.load(str(binary), environ={})
    directory = tmp_path / "dir.toml"
    directory.mkdir()
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(str(directory), environ={})


def test_command_line_beats_node_tables(isolated, write_config):
    path = write_config("[worker]\nnodes = 2\n[node.2]\nconcurrency = 8\nqueues = ['images']\n")
    cfg = config.load(str(path), cli={"worker.concurrency": "3"}, environ={})
    assert cfg.node("2")["concurrency"] == 3 and cfg.node("2")["queues"] == ["images"]
