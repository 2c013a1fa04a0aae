"""Hostile node names, queue names, users, paths, arguments and env values in `qdeploy render`:
each is either refused (exit 2, one line, nothing written) or comes back exactly, by the real
parsers of every target: `sh` sources /etc/default, `systemd-analyze verify` stays clean and
ExecStart= parses back to the explained argv with no directive added, supervisord's own config
parser (supervisor.options.ServerOptions) reads exactly the expected programs and commands, and
the init.d script passes `sh -n`. A marker file proves nothing was executed.

Related, not repeated here: /etc/default round trips of hostile env values (test_shell_sourcing),
the world-writable defaults file refused by the init script (test_initd), a worker refusing root
without --allow-root (tests/integration/test_worker_daemon.py)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from qdeploy.generator import config, render
from qdeploy.cli import main
from tests.e2e.test_systemd_units import systemd_split

M = "{marker}"
HOSTILE_TEXT = [f"x;touch {M}", f"$(touch {M}) $HOME ${{PLAIN}}", f"`touch {M}`", "a b", "q'uote", 'd"q', "%(ENV_HOME)s", "%i%n%%",
                f"x\nExecStartPre=/usr/bin/touch {M}", f"x\n[program:evil]\ncommand=/usr/bin/touch {M}",
                "back\\slash", "-rf", "--help", "..", "ünï", "\x1b[2J", ""]
CASES = (
    [("worker.nodes", [v]) for v in HOSTILE_TEXT]
    + [("worker.queues", ["default", v]) for v in HOSTILE_TEXT]
    + [("user", v) for v in HOSTILE_TEXT[:9]] + [("group", v) for v in HOSTILE_TEXT[:9]]
    + [(key, f"/tmp/{v}") for key in ("workdir", "log_dir", "pid_dir", "state_dir", "config_path")
       for v in HOSTILE_TEXT[:11]]
    + [("worker.extra_args", [v, "--x"]) for v in HOSTILE_TEXT + [";", "\\;"]]
    + [("beat.extra_args", [v]) for v in HOSTILE_TEXT]
    + [("env", {f"V{i}": v for i, v in enumerate(HOSTILE_TEXT)})]
    + [("env", {name: "x"}) for name in ("A;B", "X\nY", "1X", "A B", "$(X)")]
    + [("broker", f"redis://u:p%40'\"$(touch {M})%25@127.0.0.1:6379/0")]
)
BASE = {"executable": "auto", "user": "daemon", "group": "daemon", "worker.nodes": ["1", "w.2"],
        "env": {"PLAIN": "yes"}}


def toml_doc(values: dict) -> str:
    root = {k: v for k, v in values.items() if "." not in k and k != "env"}
    lines = [f"{k} = {json.dumps(v)}" for k, v in root.items()]
    for section in ("worker", "beat"):
        lines.append(f"[{section}]")
        lines += [f"{k.split('.')[1]} = {json.dumps(v)}" for k, v in values.items() if k.startswith(section + ".")]
    lines.append("[env]")
    lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in values.get("env", {}).items()]
    return "\n".join(lines) + "\n"


def supervisor_programs(conf: Path, tmp: Path) -> dict[str, list[str]]:
    """Program name -> command argv, as supervisord itself parses the rendered file."""
    from supervisor.options import ServerOptions

    main_conf = tmp / "supervisord.conf"
    main_conf.write_text(f"[supervisord]\nlogfile={tmp}/sd.log\npidfile={tmp}/sd.pid\n"
                         f"[include]\nfiles={conf}\n")
    opts = ServerOptions()
    opts.configfile = str(main_conf)
    opts.process_config(do_usage=False)
    return {p.name: shlex.split(p.command) for g in opts.process_group_configs for p in g.process_configs}


@pytest.mark.parametrize("key,value", CASES, ids=lambda v: repr(v)[:40])
def test_hostile_value_is_refused_or_round_trips(key, value, tmp_path):
    marker = tmp_path / "pwned"
    value = json.loads(json.dumps(value).replace(M, str(marker).replace("\\", "\\\\")))
    values = dict(BASE, **{key: value}) if key != "env" else dict(BASE, env=value)
    cfg_file = tmp_path / "qdeploy.toml"
    cfg_file.write_text(toml_doc(values))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["render", "--config", str(cfg_file), "--out", str(out)], env={"QDEPLOY_CONFIG": None})
    if result.exit_code != 0:
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.output, result.exception)
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not out.exists()
        return
    cfg = config.load(str(cfg_file), environ={})
    explained = render.explain(cfg)

    # sh: both defaults files source to exactly the configured environment; the init scripts parse.
    for service in ("qworker", "qbeat"):
        names = sorted(cfg["env"])
        script = f'set -a; . {out}/etc/default/{service}; for n in {" ".join(names)}; do eval "printf \'%s\\\\0\' \\"\\$$n\\""; done'
        got = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
        assert got.stdout.split("\0")[:-1] == [cfg["env"][n] for n in names]
        subprocess.run(["/bin/sh", "-n", str(out / "etc/init.d" / service)], check=True)

    # systemd: verify is clean, ExecStart= is the explained argv, no directive was smuggled in.
    units = out / "etc/systemd/system"
    verify = subprocess.run(["systemd-analyze", "verify", *sorted(map(str, units.iterdir()))], capture_output=True,
                            text=True, check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    worker_unit = (units / "qworker@.service").read_text()
    directives = {line.split("=", 1)[0] for line in worker_unit.splitlines() if line and line[0] not in "#;["}
    assert directives <= BASELINE_DIRECTIVES, directives - BASELINE_DIRECTIVES
    exec_start = re.findall(r"^ExecStart=(.*)$", worker_unit, re.MULTILINE)
    assert len(exec_start) == 1
    # systemd expands $NAME/${NAME} and %x in ExecStart=: only $$, %% and our own %i may be left.
    bare = exec_start[0].replace("$$", "").replace("%%", "")
    assert not re.search(r"\$[A-Za-z_{]", bare) and re.findall(r"%.", bare) == ["%i"], exec_start[0]
    for node in cfg.nodes:
        assert systemd_split(re.sub(r"(?<= )%i(?= |$)", node, exec_start[0])) == explained[f"qworker@{node}"]["argv"]

    # supervisord: its own parser finds exactly our programs, each exec'ing the explained argv.
    programs = supervisor_programs(out / "etc/supervisor/conf.d/qdeploy.conf", tmp_path)
    assert set(programs) == {f"qworker-{n}" for n in cfg.nodes} | {"qbeat"}
    for node in cfg.nodes:
        sh_argv = programs[f"qworker-{node}"]
        assert sh_argv[:2] == ["/bin/sh", "-c"] and len(sh_argv) == 3
        tail = sh_argv[2].rpartition("; exec ")[2]
        assert shlex.split(tail) == explained[f"qworker@{node}"]["argv"]
    assert not marker.exists()


def _baseline_directives() -> set[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / "qdeploy.toml"
        cfg_file.write_text(toml_doc(BASE))
        files = render.render(config.load(str(cfg_file), environ={}))
    unit = next(f for f in files if str(f.path).endswith("qworker@.service"))
    text = unit.content if isinstance(unit.content, str) else unit.content.decode()
    return {line.split("=", 1)[0] for line in text.splitlines() if line and line[0] not in "#;["}


BASELINE_DIRECTIVES = _baseline_directives()


def test_the_injection_checks_can_fail(tmp_path):
    """A supervisord command rendered without its filter is caught by supervisord's own parser."""
    conf = tmp_path / "bad.conf"
    conf.write_text("[program:qworker-1]\ncommand=/bin/sh -c 'exec qdeploy' --node x\n"
                    "[program:evil]\ncommand=/usr/bin/touch /tmp/x\n")
    assert set(supervisor_programs(conf, tmp_path)) == {"qworker-1", "evil"}


def test_files_holding_secrets_are_0640_and_nothing_else_holds_them(tmp_path):
    """The broker password and [env] secrets reach only the 0640 files (/etc/default/*, the
    effective config); as root those belong to the service group, so the service can read them."""
    import grp
    import os

    values = dict(BASE, broker="redis://:Br0ker-Pw@10.0.0.5:6379/0", env={"API_TOKEN": "T0ken-Secret"},
                  group="daemon")
    cfg_file = tmp_path / "qdeploy.toml"
    cfg_file.write_text(toml_doc(values))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["render", "--config", str(cfg_file), "--out", str(out)], env={"QDEPLOY_CONFIG": None})
    assert result.exit_code == 0, result.output
    holders = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        text, mode = path.read_text(), path.stat().st_mode & 0o7777
        if "Br0ker-Pw" in text or "T0ken-Secret" in text:
            holders.append(str(path.relative_to(out)))
            assert mode == 0o640, (path, oct(mode))
            if os.geteuid() == 0:
                assert (path.stat().st_uid, path.stat().st_gid) == (0, grp.getgrnam("daemon").gr_gid), path
    assert holders == ["etc/default/qbeat", "etc/default/qworker", "etc/qdeploy/qdeploy.toml"], holders
