"""`qdeploy multi` argv building: Celery's node syntax, selectors, passthrough, and the same argv
as the rendered services for the same config. Pure logic (no process is started)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from qdeploy.generator import config as config_mod
from qdeploy.ops import multi
from qdeploy.cli import main
from qdeploy.cli.multi import worker_spec
from tests.conftest import GOLDEN

SPEC = worker_spec()


def build(*args, cfg=None, config=None):
    inv = multi.parse(list(args), SPEC)
    return {n.name: n for n in multi.build(inv, cfg or config_mod.load(config, {}), hostname="h1")}


def test_celery_syntax_count_per_node_options_and_passthrough(isolated):
    nodes = build("start", "3", "-c", "4", "-c:2", "8", "-Q:1-2", "images,video",
                  "--pidfile=/run/q/%n.pid", "--logfile=/var/log/q/%n%I.log", "--", "-l", "debug")
    assert list(nodes) == ["1", "2", "3"]
    argv = nodes["2"].argv
    assert argv[1:4] == ["worker", "-n", "2"]
    assert argv[4:] == ["-c", "8", "-Q", "images,video", "--pidfile", "/run/q/%n.pid",
                        "--logfile", "/var/log/q/%n%I.log", "--detach", "-l", "debug"]
    assert nodes["1"].argv[4:8] == ["-c", "4", "-Q", "images,video"]
    assert "-Q" not in nodes["3"].argv and nodes["3"].argv[4:6] == ["-c", "4"]
    assert nodes["2"].pidfile == "/run/q/2.pid"  # expanded for multi; the worker expands %I per child
    assert nodes["2"].logfile == "/var/log/q/%n%I.log"


def test_named_nodes_name_and_list_selectors(isolated):
    nodes = build("show", "images", "video", "default", "-c:images,default", "2", "--time-limit:video=300",
                  "--allow-root")
    assert nodes["images"].argv[4:7] == ["--allow-root", "-c", "2"] and nodes["default"].argv[5:7] == ["-c", "2"]
    assert nodes["video"].argv[4:7] == ["--allow-root", "--time-limit", "300"]
    assert all("--allow-root" in n.argv for n in nodes.values())


def test_long_and_short_spellings_are_one_option(isolated):
    nodes = build("show", "2", "--concurrency=4", "-c:2", "6", "-c3")
    assert nodes["1"].argv.count("-c") + nodes["1"].argv.count("--concurrency") == 1
    assert nodes["1"].argv[4:6] == ["-c", "3"]  # the last one wins
    assert nodes["2"].argv[4:6] == ["-c", "6"]  # a node's own option beats the general one, as in Celery


def test_stop_timeout_from_graceful_timeout(isolated):
    nodes = build("stopwait", "2", "--graceful-timeout:2", "5")
    assert nodes["1"].stop_timeout == 60 + multi.STOP_MARGIN
    assert nodes["2"].stop_timeout == 5 + multi.STOP_MARGIN
    assert build("stopwait", "2", "--timeout", "3")["2"].stop_timeout == 3


@pytest.mark.parametrize("args, message", [
    ([], "missing action"),
    (["launch", "3"], "unknown action"),
    (["start"], "name the nodes"),
    (["start", "3", "--bogus"], "unknown worker option '--bogus'"),
    (["start", "3", "-c:7", "2"], "selector '7' matches no node"),
    (["start", "3", "-c"], "-c needs a value"),
    (["start", "3", "--allow-root=yes"], "is a flag"),
    (["start", "3", "--detach"], "multi names and detaches"),
    (["start", "3", "-n", "x"], "multi names and detaches"),
    (["start", "a;b"], "must match"),
    (["start", "a", "a"], "repeat"),
    (["start", "0"], "between 1 and 1024"),
    (["start", "3", "--timeout", "soon"], "--timeout"),
    (["start", "3", "-c:", "2"], "empty node selector"),
])
def test_bad_command_lines(isolated, args, message):
    with pytest.raises(multi.MultiError, match=message):
        inv = multi.parse(args, SPEC)
        multi.build(inv, config_mod.load(None, {}))


def test_config_mode_uses_the_rendered_argv(isolated):
    config = str(GOLDEN / "rich.toml")
    explain = json.loads(CliRunner().invoke(main, ["render", "--explain", "--json", "--config", config]).output)
    shown = CliRunner().invoke(main, ["multi", "show", "--config", config, "--json"])
    assert shown.exit_code == 0, shown.output
    nodes = json.loads(shown.output)
    assert list(nodes) == ["default", "images", "video.hd", "w_4"]
    for name, node in nodes.items():
        rendered = explain[f"qworker@{name}"]["argv"]
        assert node["argv"][:len(rendered)] == rendered
        tail = node["argv"][len(rendered):]
        assert tail == ["--pidfile", "/run/proj/qworker-%n.pid", "--logfile", node["logfile"], "--detach"]
        assert node["pidfile"] == f"/run/proj/qworker-{name}.pid"
    subset = json.loads(CliRunner().invoke(main, ["multi", "names", "2-3", "--config", config, "--json"]).output)
    assert subset == ["images", "video.hd"]


def test_show_names_expand_have_no_side_effects(isolated):
    target = isolated / "nothing-here"
    result = CliRunner().invoke(main, ["multi", "show", "2", f"--pidfile={target}/run/%n.pid",
                                       f"--logfile={target}/log/%n%I.log", "--pid-dir", str(target / "p"),
                                       "--log-dir", str(target / "l"), "--state-dir", str(target / "s")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("1: ") and "-n 1 " in result.output
    names = CliRunner().invoke(main, ["multi", "names", "a", "b"])
    assert names.output.split() == ["a", "b"]
    expanded = CliRunner().invoke(main, ["multi", "expand", "/var/log/%n-%h.log", "2"])
    assert expanded.exit_code == 0 and expanded.output.count("/var/log/") == 2
    assert "/var/log/1-" in expanded.output
    assert not target.exists()


def test_cli_errors_are_one_line_exit_2(isolated):
    result = CliRunner().invoke(main, ["multi", "start", "3", "-c:9", "2"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "matches no node" in result.output
