"""`extra_args` that supervisord's config reader would mangle: ` #` and ` ;` (inline comments, even
inside quotes), `%(here)s` (replaced before anything else), `%(name)s` and `%`.

supervisord's own parser (`supervisor.options.ServerOptions`, its `UnhosedConfigParser`) must find
exactly the rendered programs with exactly the argv `render --explain` prints, and a real
supervisord must exec that argv (the stub worker records what it got)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from qdeploy.cli import main
from qdeploy.generator.filters import supervisor_arg
from tests.e2e.conftest import render_tree, stub_config

BIN = Path(sys.executable).parent
HOSTILE = ["--tag=a #b", "x ;y", "%(here)s", "%(program_name)s", "%(ENV_HOME)s", "100% (here)s", "%%(here)s",
           " ;", " #", "#", ";", "a\u00a0#nbsp", "a\u2003;em", "'; #'", "it's #1", "%", "%%", "%(", "(here)s",
           "$HOME `id`", "\\", " lead", "trail "]


def commands(conf: Path, tmp: Path) -> dict[str, str]:
    """Program name -> its command, as supervisord's own parser reads the file."""
    from supervisor.options import ServerOptions

    main_conf = tmp / "supervisord.conf"
    main_conf.write_text(f"[supervisord]\nlogfile={tmp}/sd.log\npidfile={tmp}/sd.pid\n[include]\nfiles={conf}\n")
    opts = ServerOptions()
    opts.configfile = str(main_conf)
    opts.process_config(do_usage=False)
    return {p.name: p.command for g in opts.process_group_configs for p in g.process_configs}


def programs(conf: Path, tmp: Path) -> dict[str, list[str]]:
    """Program name -> the argv supervisord would exec (it shlex-splits the command)."""
    return {name: shlex.split(command) for name, command in commands(conf, tmp).items()}


def explained(cfg: Path) -> dict:
    result = CliRunner().invoke(main, ["render", "--explain", "--json", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def exec_argv(sh_argv: list[str]) -> list[str]:
    """The argv of `/bin/sh -c '...; exec ARGV'`."""
    assert sh_argv[:2] == ["/bin/sh", "-c"] and len(sh_argv) == 3, sh_argv
    return shlex.split(sh_argv[2].rpartition("; exec ")[2])


@pytest.mark.parametrize("arg", HOSTILE)
def test_supervisors_parser_reads_back_the_explained_argv(arg, tmp_path, write_config):
    cfg = write_config(f"""executable = "/usr/bin/qdeploy"
user = "daemon"
group = "daemon"
[worker]
nodes = ["1", "w.2"]
extra_args = {json.dumps(["--before", arg, "--after"])}
[beat]
extra_args = {json.dumps([arg])}
""")
    out = render_tree(tmp_path / "out", "--config", str(cfg))
    explain = explained(cfg)
    found = programs(out / "etc/supervisor/conf.d/qdeploy.conf", tmp_path)
    assert sorted(found) == ["qbeat", "qworker-1", "qworker-w.2"]
    for program, service in (("qworker-1", "qworker@1"), ("qworker-w.2", "qworker@w.2"), ("qbeat", "qbeat")):
        assert exec_argv(found[program]) == explain[service]["argv"], program


def test_the_parser_check_can_fail(tmp_path):
    """Quoted for shlex and `%` alone (what render wrote before), ` #` and `%(here)s` break."""
    import shlex as sh

    conf = tmp_path / "old.conf"
    conf.write_text(f"[program:a]\ncommand=/bin/sh -c {sh.quote('exec x --tag=a #b').replace('%', '%%')}\n")
    assert commands(conf, tmp_path)["a"] == "/bin/sh -c 'exec x --tag=a"  # cut at the " #"
    conf.write_text(f"[program:a]\ncommand=/bin/sh -c {sh.quote('exec x %(here)s').replace('%', '%%')}\n")
    with pytest.raises(ValueError, match="Bad %-syntax|format"):  # %%(here)s held %(here)s: replaced first
        commands(conf, tmp_path)
    assert supervisor_arg("a #b") == "'a ''#b'" and supervisor_arg("%(here)s") == "'%%''(here)s'"


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_real_supervisord_execs_the_explained_argv(root_only, world_dir, stub, write_config):
    cfg = write_config(stub_config(world_dir, stub, nodes=["1", "video.hd"], extra_args=HOSTILE, env={}))
    cfg.write_text(cfg.read_text().replace("[beat]\n", f"[beat]\nextra_args = {json.dumps(HOSTILE)}\n"))
    tree = render_tree(world_dir / "tree", "--config", str(cfg))
    for d in ("work", "log"):
        (world_dir / d).mkdir()
        os.chown(world_dir / d, 65534, 65534)
    conf = world_dir / "supervisord.conf"
    conf.write_text(f"""[unix_http_server]
file={world_dir}/supervisor.sock
[supervisord]
logfile={world_dir}/supervisord.log
pidfile={world_dir}/supervisord.pid
nodaemon=true
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{world_dir}/supervisor.sock
[include]
files={tree}/etc/supervisor/conf.d/*.conf
""")
    script = f"mount --bind {tree}/etc/default /etc/default && exec {BIN}/supervisord -c {conf}"
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = world_dir / "records"
    try:
        expected = {"1": "qworker@1", "video.hd": "qworker@video.hd", "beat": "qbeat"}
        assert wait_for(lambda: all((records / f"{i}.json").exists() for i in expected)), \
            (world_dir / "supervisord.log").read_text() if (world_dir / "supervisord.log").exists() else ""
        explain = explained(cfg)
        for instance, service in expected.items():
            record = json.loads((records / f"{instance}.json").read_text())
            assert record["argv"] == explain[service]["argv"], instance
            assert record["argv"][-len(HOSTILE):] == HOSTILE
    finally:
        subprocess.run([str(BIN / "supervisorctl"), "-c", str(conf), "shutdown"], capture_output=True)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
