"""`qdeploy multi` argv building: Celery's node syntax, selectors, passthrough, and the same argv
as the rendered services for the same config. Pure logic (no process is started)."""

from __future__ import annotations

import json
import re
import socket

import pytest
from click.testing import CliRunner

from qdeploy.generator import config as config_mod
from qdeploy.generator import nodes
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
    assert argv[4:] == ["-c", "8", "-Q", "images,video", "--pidfile", "/run/q/2.pid",
                        "--logfile", "/var/log/q/2%I.log", "--detach", "-l", "debug"]
    assert nodes["1"].argv[4:8] == ["-c", "4", "-Q", "images,video"]
    assert "-Q" not in nodes["3"].argv and nodes["3"].argv[4:6] == ["-c", "4"]
    assert nodes["2"].pidfile == "/run/q/2.pid"  # expanded by multi, as Celery's; the worker expands %I per child
    assert nodes["2"].logfile == "/var/log/q/2%I.log" and nodes["2"].master_log == "/var/log/q/2.log"


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
        assert tail == ["--pidfile", f"/run/proj/qworker-{name}.pid", "--logfile", node["logfile"], "--detach"]
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


# -- %-expansion, shared files, ranges (issue 18, item 20) ------------------------------------
def test_h_is_the_full_node_name_so_each_node_gets_its_own_pid_file(isolated):
    """As in Celery's multi: %h is `name@host`, %n/%N the name, %d the host, %p the full name."""
    inv = multi.parse(["show", "3", "--pidfile=/x/%h.pid", "--logfile=/y/%d/%N-%p%I.log"], SPEC)
    nodes = {n.name: n for n in multi.build(inv, config_mod.load(None, {}), hostname="box.example.com")}
    assert [n.pidfile for n in nodes.values()] == [f"/x/{i}@box.example.com.pid" for i in (1, 2, 3)]
    argv = nodes["2"].argv
    assert argv[argv.index("--pidfile") + 1] == "/x/2@box.example.com.pid"  # the worker gets it expanded
    assert argv[argv.index("--logfile") + 1] == "/y/box.example.com/2-2@box.example.com%I.log"
    assert nodes["2"].master_log == "/y/box.example.com/2-2@box.example.com.log"


def test_worker_and_multi_expansions_mirror_celery():
    # the worker's (Celery's node_format): %h host, %d its domain, %p name@host, %i/%I per process
    assert nodes.expand("%n|%h|%d|%p|%i|%I|%%|%x", "w1", "box.example.com") == \
        "w1|box.example.com|example.com|w1@box.example.com|||%|%x"
    assert nodes.expand("%n%I.%i", "w1", "box", index=3) == "w1-3.3"
    assert nodes.expand("%d", "w1", "box") == ""  # a host without a domain
    # multi's (Celery's build_expander): %i %I %% and unknown ones are left for the worker
    assert nodes.expand_multi("%n|%N|%h|%p|%d|%i|%I|%%|%x|%%n", "w1", "box.example.com") == \
        "w1|w1|w1@box.example.com|w1@box.example.com|box.example.com|%i|%I|%%|%x|%%n"
    # what the worker finally writes: multi's expansion, then the worker's
    assert nodes.expand(nodes.expand_multi("/l/%h%I-100%%.log", "w1", "b"), "w1", "b", index=2) == "/l/w1@b-2-100%.log"


@pytest.mark.parametrize("args, message", [
    (["--pidfile=/x/w.pid"], "nodes 1 and 2 would share the pid file /x/w.pid: put %n in --pidfile"),
    (["--pidfile=/x/%d.pid"], "nodes 1 and 2 would share the pid file /x/h1.pid"),
    (["--logfile=/x/%i.log"], "nodes 1 and 2 would share the log file /x/.log: put %n in --logfile"),
    (["--logfile:2=/x/a.log", "--logfile:3=/x/a.log"], "nodes 2 and 3 would share the log file /x/a.log"),
    (["--pidfile:1=/x//a.pid", "--pidfile:3=/x/./a.pid"], "nodes 1 and 3 would share the pid file /x/./a.pid"),
    (["--pidfile:1=/x/a", "--logfile:2=/x/a"], "node 1's pid file is node 2's log file: /x/a"),
    (["--pidfile:2=/x/a", "--logfile:2=/x/a"], "node 2: its pid file and its log file are the same file /x/a"),
])
def test_nodes_sharing_a_pid_or_log_file_are_refused(isolated, args, message):
    with pytest.raises(multi.MultiError) as caught:
        build("start", "3", *args)
    assert str(caught.value).startswith(message)


def test_a_shared_pid_file_is_one_line_exit_2_before_anything_starts(isolated):
    for action in ("start", "show", "stop", "kill"):
        result = CliRunner().invoke(main, ["multi", action, "2", "--pidfile=/nonexistent/w.pid"])
        assert result.exit_code == 2, (action, result.output)
        assert result.output == "qdeploy: error: multi: nodes 1 and 2 would share the pid file /nonexistent/w.pid: put %n in --pidfile\n"


def test_a_range_applies_to_the_nodes_that_exist(isolated):
    """As Celery: `-c:2-5` on three nodes sets nodes 2 and 3."""
    nodes3 = build("show", "3", "-c", "1", "-c:2-5", "8")
    assert [nodes3[n].argv[4:6] for n in ("1", "2", "3")] == [["-c", "1"], ["-c", "8"], ["-c", "8"]]
    named = build("show", "a", "b", "-Q:2-99999999999999999999999", "x")
    assert "-Q" not in named["a"].argv and named["b"].argv[4:6] == ["-Q", "x"]
    assert nodes.select("1,3-9", ["a", "b", "c"]) == ["a", "c"]
    assert nodes.select("1-3", ["1-3", "b"]) == ["1-3"]  # a node's own name wins


@pytest.mark.parametrize("selector, message", [
    ("4-5", "selector '4-5' matches no node (nodes: 1 2 3)"),
    ("0-2", "selector '0-2': a range runs from a first node index (1 or more) up to a last one"),
    ("3-2", "selector '3-2': a range runs from a first node index"),
    ("4", "selector '4' matches no node"),
    ("²", "selector '²' matches no node"),
    ("١-٢", "selector '١-٢' matches no node"),
    ("1-", "selector '1-' matches no node"),
])
def test_selectors_that_pick_no_node_are_refused(isolated, selector, message):
    with pytest.raises(multi.MultiError, match=re.escape(message)):
        build("show", "3", f"-c:{selector}", "2")


def test_config_mode_positional_range_is_clipped_too(isolated):
    config = str(GOLDEN / "rich.toml")
    subset = CliRunner().invoke(main, ["multi", "names", "3-9", "--config", config, "--json"])
    assert subset.exit_code == 0, subset.output
    assert json.loads(subset.output) == ["video.hd", "w_4"]


def test_expand_leaves_the_pool_process_index_visible(isolated):
    """`expand` runs in no worker process: %i/%I stay as they are (as in Celery), %h is name@host."""
    result = CliRunner().invoke(main, ["multi", "expand", "/var/log/%n%I-%i-%h.log", "2"])
    assert result.exit_code == 0, result.output
    host = socket.gethostname()
    assert result.output.splitlines() == [f"/var/log/1%I-%i-1@{host}.log", f"/var/log/2%I-%i-2@{host}.log"]


def test_default_pid_and_log_files_follow_the_nodes_own_pid_and_log_dirs(isolated):
    """`--pid-dir`/`--log-dir` go to the worker (its directories) and place multi's default files."""
    nodes2 = build("show", "2", "--pid-dir", "/p", "--log-dir:2", "/l2")
    assert [n.pidfile for n in nodes2.values()] == ["/p/qworker-1.pid", "/p/qworker-2.pid"]
    assert nodes2["1"].master_log == "/var/log/qdeploy/qworker-1.log"
    assert nodes2["2"].master_log == "/l2/qworker-2.log"
    argv = nodes2["2"].argv
    assert argv[argv.index("--log-dir") + 1] == "/l2" and argv[argv.index("--logfile") + 1] == "/l2/qworker-2.log"
    odd = build("show", "1", "--pid-dir", "/p%n")["1"]  # a directory's own % is no specifier
    assert odd.pidfile == "/p%n/qworker-1.pid" and odd.argv[odd.argv.index("--pidfile") + 1] == "/p%%n/qworker-1.pid"


def test_a_config_range_table_applies_to_the_nodes_that_exist(isolated, write_config):
    cfg = config_mod.load(str(write_config('[worker]\nnodes = 3\n[node."2-5"]\nconcurrency = 8\n')), {})
    assert [cfg.node(n)["concurrency"] for n in ("1", "2", "3")] == [0, 8, 8]
