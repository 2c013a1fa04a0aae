"""The Ansible content without a host: ansible-lint (production profile), syntax checks of
site.yml with the example inventory, and the config template's TOML quoting of hostile values
(rendered by the real `template` module on this machine, parsed back with tomllib)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "ANSIBLE_PYTHON_INTERPRETER": sys.executable, "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1", "ANSIBLE_HOME": "/tmp/qdeploy-ansible-home"}


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in the test venv (pip install ansible-core ansible-lint)")
    return str(path)


def test_ansible_lint_is_clean():
    result = subprocess.run([tool("ansible-lint"), "--offline", "--profile", "production", "."], cwd=ANSIBLE,
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]


def test_site_playbook_and_example_inventory_parse():
    inventory = subprocess.run([tool("ansible-inventory"), "-i", "inventory/example.yml", "--list"], cwd=ANSIBLE,
                               capture_output=True, text=True, env=ENV, check=True)
    groups = json.loads(inventory.stdout)
    assert {"redis", "workers", "beat"} <= set(groups["all"]["children"])
    syntax = subprocess.run([tool("ansible-playbook"), "-i", "inventory/example.yml", "--syntax-check", "site.yml"],
                            cwd=ANSIBLE, capture_output=True, text=True, env=ENV)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr


HOSTILE = {
    "quotes": 'say "hi" \\o/ \'x\'',
    "newline_injection": 'x"\n[worker]\nnodes = 99\n"',
    "triple": '"""\'\'\'',
    "controls": "tab\tbell\x07 del\x7f nul-less esc\x1b",
    "unicode": "日本語 😀 \u2028 é",
    "shell": "$(touch /tmp/pwned) `id` ${HOME}",
}


def render_template(tmp_path: Path, variables: dict) -> subprocess.CompletedProcess:
    playbook = tmp_path / "template.yml"
    playbook.write_text(
        "- name: Render the config template\n  hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - name: Template\n      ansible.builtin.template:\n"
        f"        src: {ANSIBLE}/roles/qdeploy/templates/qdeploy.toml.j2\n        dest: {tmp_path}/out.toml\n"
        "        mode: '0600'\n")
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    return subprocess.run([tool("ansible-playbook"), "-i", "localhost,", "-c", "local", "-e",
                           f"@{ANSIBLE}/roles/qdeploy/defaults/main.yml", "-e", f"@{tmp_path}/vars.json",
                           str(playbook)], capture_output=True, text=True, env=ENV, timeout=120)


def test_the_config_template_quotes_every_value_as_toml(tmp_path):
    variables = {
        "qdeploy_env": {f"QD_{k.upper()}": v for k, v in HOSTILE.items()},
        "qdeploy_app": "proj.tasks:app",
        "qdeploy_nodes": ["images", "default"],
        "qdeploy_queues": ["a", "b.c"],
        "qdeploy_settings": {"log_level": "debug", "enable_utc": False},
        "qdeploy_worker_settings": {"graceful_timeout": 12.5, "extra_args": ["--x", 'y "z"']},
        "qdeploy_beat_settings": {"schedule": {"nightly job": {"task": "t", "schedule": "0 3 * * *", "args": [1, "2"]}}},
        "qdeploy_node_settings": {"images": {"concurrency": 2}, "1-2": {"queues": ["q"]}},
    }
    result = render_template(tmp_path, variables)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (tmp_path / "out.toml").read_text()
    config = tomllib.loads(text)  # valid TOML...
    # ...and every value exactly what was given
    assert config["env"] == variables["qdeploy_env"]
    assert config["app"] == "proj.tasks:app" and config["log_level"] == "debug" and config["enable_utc"] is False
    assert config["worker"]["nodes"] == ["images", "default"] and config["worker"]["queues"] == ["a", "b.c"]
    assert config["worker"]["graceful_timeout"] == 12.5 and config["worker"]["extra_args"] == ["--x", 'y "z"']
    assert config["beat"]["schedule"] == variables["qdeploy_beat_settings"]["schedule"]
    assert config["node"] == {"images": {"concurrency": 2}, "1-2": {"queues": ["q"]}}
    assert config["executable"] == "/opt/qdeploy/venv/bin/qdeploy" and "config" not in config["targets"]


def test_the_rendered_config_is_one_qdeploy_accepts(tmp_path):
    """The template's output with the role's defaults loads in qdeploy (what `validate` runs)."""
    result = render_template(tmp_path, {"qdeploy_env": {"QD_X": HOSTILE["newline_injection"]}})
    assert result.returncode == 0, result.stdout + result.stderr
    explain = subprocess.run([str(BIN / "qdeploy"), "render", "--config", str(tmp_path / "out.toml"), "--explain",
                              "--json"], capture_output=True, text=True)
    assert explain.returncode == 0, explain.stderr
    assert list(json.loads(explain.stdout)) == ["qworker@1", "qbeat"]


def test_vagrantfile_validates(tmp_path):
    """No VM can boot here (no VirtualBox/libvirt): `vagrant validate` checks the Vagrantfile's
    configuration of redis + 2 workers + beat without a provider."""
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.fail("vagrant is not installed (apt-get install -y vagrant)")
    deb = tmp_path / "qdeploy.deb"
    deb.write_bytes(b"")
    env = dict(os.environ, QDEPLOY_DEB=str(deb), QDEPLOY_WORKERS="2", VAGRANT_HOME=str(tmp_path / "home"),
               VAGRANT_DOTFILE_PATH=str(tmp_path / ".vagrant"))
    result = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and "Vagrantfile validated successfully." in result.stdout, \
        result.stdout + result.stderr
    for machine in ("redis1", "worker1", "worker2", "beat1"):
        assert f"==> {machine}:" in result.stdout
    missing = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=REPO, capture_output=True, text=True,
                             env={k: v for k, v in env.items() if k != "QDEPLOY_DEB"}, timeout=180)
    assert missing.returncode != 0 and "set QDEPLOY_DEB" in missing.stdout + missing.stderr
