"""Rendering: golden trees, modes, the argv every launcher execs, `--check`, `--diff`, `--only`."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from qdeploy.generator import config, render
from qdeploy.cli import main
from tests.conftest import GOLDEN

DEFAULT_ARGS = ["--executable", "/usr/bin/qdeploy"]
CASES = {"default": DEFAULT_ARGS, "rich": ["--config", str(GOLDEN / "rich.toml")]}


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def tree(root: Path) -> dict[str, tuple[str, str]]:
    return {
        str(p.relative_to(root)): (oct(p.stat().st_mode & 0o777), p.read_text())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("case", CASES)
def test_golden_tree(case, tmp_path):
    out = tmp_path / "out"
    result = run("render", "--out", str(out), *CASES[case])
    assert result.exit_code == 0, result.output
    golden = GOLDEN / case
    if os.environ.get("UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        shutil.copytree(out, golden)
        # git keeps only the x bit: the modes live in a manifest beside the tree
        (GOLDEN / f"{case}.modes").write_text(
            "".join(f"{mode} {path}\n" for path, (mode, _) in tree(out).items())
        )
    expected = {path: text for path, (_, text) in tree(golden).items()}
    actual = {path: text for path, (_, text) in tree(out).items()}
    assert actual.keys() == expected.keys()
    for path in expected:
        assert actual[path] == expected[path], f"{path} differs from tests/golden/{case}/{path}"
    modes = dict(line.split(" ")[::-1] for line in (GOLDEN / f"{case}.modes").read_text().splitlines())
    assert {path: mode for path, (mode, _) in tree(out).items()} == modes


def test_default_render_writes_every_artifact_with_its_mode(tmp_path):
    out = tmp_path / "build"
    result = run("render", "--nodes", "3", "--out", str(out))
    assert result.exit_code == 0
    files = tree(out)
    expected_modes = {
        "etc/default/qworker": "0o640",
        "etc/default/qbeat": "0o640",
        "etc/init.d/qworker": "0o755",
        "etc/init.d/qbeat": "0o755",
        "etc/systemd/system/qworker@.service": "0o644",
        "etc/systemd/system/qworker.target": "0o644",
        "etc/systemd/system/qbeat.service": "0o644",
        "etc/supervisor/conf.d/qdeploy.conf": "0o644",
        "usr/lib/tmpfiles.d/qdeploy.conf": "0o644",
        "usr/lib/sysusers.d/qdeploy.conf": "0o644",
        "etc/logrotate.d/qdeploy": "0o644",
        "etc/qdeploy/qdeploy.toml": "0o640",
        ".qdeploy-manifest": "0o644",  # marks the tree as render's (tests/unit/test_render_out.py)
    }
    assert {path: mode for path, (mode, _) in files.items()} == expected_modes
    target = files["etc/systemd/system/qworker.target"][1]
    assert "Wants=qworker@1.service qworker@2.service qworker@3.service\n" in target
    assert result.output.splitlines()[-1] == f"wrote 12 files to {out}/ (nodes: 1 2 3; beat: on)"
    effective = config.load(str(out / "etc/qdeploy/qdeploy.toml"), environ={})
    assert effective.nodes == ["1", "2", "3"]


def test_effective_config_round_trips(tmp_path):
    out = tmp_path / "out"
    run("render", "--out", str(out), "--config", str(GOLDEN / "rich.toml"))
    original = config.load(str(GOLDEN / "rich.toml"), environ={})
    effective = config.load(str(out / "etc/proj/qdeploy.toml"), environ={})
    assert effective.values == original.values
    assert effective.overrides == original.overrides
    for node in original.nodes:
        assert effective.node(node) == original.node(node)


def test_rhel_flavour_uses_sysconfig(tmp_path):
    out = tmp_path / "out"
    run("render", "--out", str(out), "--flavour", "rhel", *DEFAULT_ARGS)
    assert (out / "etc/sysconfig/qworker").is_file() and not (out / "etc/default").exists()
    assert (out / "etc/supervisord.d/qdeploy.ini").is_file()
    assert "EnvironmentFile=-/etc/sysconfig/qworker" in (out / "etc/systemd/system/qworker@.service").read_text()
    assert "DEFAULTS=${QDEPLOY_DEFAULTS:-/etc/sysconfig/qworker}" in (out / "etc/init.d/qworker").read_text()


def test_only_limits_targets_and_no_beat_drops_beat(tmp_path):
    out = tmp_path / "out"
    result = run("render", "--out", str(out), "--only", "systemd,initd", "--no-beat", *DEFAULT_ARGS)
    assert result.exit_code == 0
    assert sorted(tree(out)) == [
        ".qdeploy-manifest",
        "etc/init.d/qworker",
        "etc/systemd/system/qworker.target",
        "etc/systemd/system/qworker@.service",
    ]


def test_explain_prints_the_argv_and_node_options(tmp_path):
    result = run("render", "--explain", "--json", "--config", str(GOLDEN / "rich.toml"))
    services = json.loads(result.output)
    assert list(services) == ["qworker@default", "qworker@images", "qworker@video.hd", "qworker@w_4", "qbeat"]
    assert services["qworker@images"]["argv"][:6] == [
        "/opt/proj/venv/bin/qdeploy", "worker", "--config", "/etc/proj/qdeploy.toml", "--node", "images"
    ]
    assert services["qworker@images"]["options"]["concurrency"] == 8
    assert services["qworker@w_4"]["options"]["graceful_timeout"] == 300.0
    human = run("render", "--explain", "--config", str(GOLDEN / "rich.toml")).output
    first = human.splitlines()[0]
    assert first.startswith("qworker@default: ")
    assert shlex.split(first.partition(": ")[2]) == services["qworker@default"]["argv"]
    assert not (tmp_path / "qdeploy-build").exists()


def test_check_and_diff(tmp_path):
    out = tmp_path / "out"
    assert run("render", "--out", str(out), "--check", *DEFAULT_ARGS).exit_code == 1
    assert not out.exists()
    run("render", "--out", str(out), *DEFAULT_ARGS)
    result = run("render", "--out", str(out), "--check", *DEFAULT_ARGS)
    assert result.exit_code == 0 and "up to date: 12 files" in result.output
    changed = run("render", "--out", str(out), "--check", "--nodes", "2", *DEFAULT_ARGS)
    assert changed.exit_code == 1
    assert "content  etc/systemd/system/qworker.target" in changed.output
    diff = run("render", "--out", str(out), "--diff", "--nodes", "2", *DEFAULT_ARGS)
    assert diff.exit_code == 1
    assert "+Wants=qworker@1.service qworker@2.service\n" in diff.output
    assert "-Wants=qworker@1.service\n" in diff.output
    (out / "etc/init.d/qworker").chmod(0o644)
    mode = run("render", "--out", str(out), "--check", *DEFAULT_ARGS)
    assert mode.exit_code == 1 and "mode     etc/init.d/qworker" in mode.output
    assert "Wants=qworker@1.service\n" in (out / "etc/systemd/system/qworker.target").read_text()


def test_rerender_into_existing_root_replaces_files(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "keep-me").write_text("unrelated")
    assert run("render", "--root", str(root), *DEFAULT_ARGS).exit_code == 0
    assert run("render", "--root", str(root), "--nodes", "2", *DEFAULT_ARGS).exit_code == 0
    assert "qworker@2.service" in (root / "etc/systemd/system/qworker.target").read_text()
    assert (root / "keep-me").read_text() == "unrelated"
    leftovers = [p for p in root.rglob(".*") if p.name != "keep-me"]
    assert leftovers == []


BAD_CONFIGS = {
    "unknown key": "[worker]\nconcurency = 4\n",
    "wrong type": "[worker]\nconcurrency = 'many'\n",
    "hostile node name": "[worker]\nnodes = ['a;reboot']\n",
    "broken toml": "[worker\n",
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_exits_2_and_writes_nothing(case, tmp_path, write_config):
    path = write_config(BAD_CONFIGS[case])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["render", "--config", str(path), "--out", str(out)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"qdeploy: error: {path}: ")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nodes", "0"], "--nodes: worker.nodes = '0': expected a node count"),
        (["--nodes", "a,b/c"], "expected a list of node names"),
        (["--concurrency", "-2"], "expected an integer >= 0"),
        (["--only", "systemd,upstart"], "expected a list of targets"),
        (["--user", "Root"], "expected a POSIX user name"),
        (["--broker", "amqp://guest@localhost//"], "expected a URL starting with"),
        (["--executable", "relative/qdeploy"], "expected an absolute path"),
        (["--out", "x", "--root", "y"], "--out and --root exclude each other"),
        (["--root", "/no/such/root"], "--root /no/such/root: no such directory"),
        (["--config", "missing.toml"], "missing.toml: config file not found"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, message, tmp_path):
    result = CliRunner().invoke(main, ["render", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "qdeploy-build").exists()


def test_unwritable_output_is_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["render", "--out", str(blocker / "sub"), *DEFAULT_ARGS])
    assert result.exit_code == 1
    assert result.stderr.startswith("qdeploy: error: cannot write ") and len(result.stderr.splitlines()) == 1


def test_newline_in_a_supervisor_command_is_refused_before_writing(tmp_path, monkeypatch):
    cfg = config.load(cli={"executable": "/usr/bin/qdeploy"}, environ={})
    bad = config.Config({**cfg.values, "worker.extra_args": ["a\nb"]}, cfg.overrides)
    with pytest.raises(config.ConfigError, match="cannot render etc/supervisor/conf.d/qdeploy.conf: "):
        render.render(bad)


def test_readme_config_reference_is_generated(tmp_path):
    from qdeploy.generator import docs
    from tests.conftest import REPO

    copy = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", copy)
    assert docs.update(copy) is False, "README config reference is stale: run python -m qdeploy.generator.docs README.md"
