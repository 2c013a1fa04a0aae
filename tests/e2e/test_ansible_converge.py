"""The Ansible role for real on a booted Debian 12 (systemd as PID 1, tests/e2e/host.py):
converge, converge again with changed=0, `qdeploy verify` passes; a config change restarts the
workers, a removed node is stopped, a bad variable fails the play with qdeploy's message and
leaves the config alone, hostile strings arrive intact; the pip install method as well.

Connection: ansible-playbook runs INSIDE the container with `-c local`. The container has no
network, so instead of installing ansible-core there, the test venv (ansible-core,
pytest-testinfra, qdeploy itself) and the interpreter it was made from are bind-mounted
read-only at the same paths (`systemd-nspawn --bind-ro`): the controller is this checkout's
ansible-playbook; the modules run with the container's own /usr/bin/python3, as on a real host.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qdeploy.deploy import package as package_mod
from tests.e2e.host import Host, build_app_wheel, build_package
from tests.e2e.test_host_worker import redis_url  # noqa: F401 - the private redis-server fixture

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLAYBOOK = "- name: Converge\n  hosts: all\n  roles:\n    - role: qdeploy\n"
RECAP = re.compile(r"^\S+\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
HOSTILE = 'a"b\\c\n[worker]\nnodes = 99\x7f \t😀 \'$(touch /tmp/pwned)` ${HOME} """'


def controller_paths() -> tuple[str, ...]:
    """What must be visible inside for the test venv to run there: the checkout (editable
    qdeploy, the role), the venv, and the base interpreter the venv links to."""
    paths = {str(REPO), str(Path(sys.prefix).resolve()), str(Path(sys.base_prefix).resolve())}
    return tuple(sorted(p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)))


class Converge:
    def __init__(self, result: subprocess.CompletedProcess):
        self.rc = result.returncode
        self.output = result.stdout + result.stderr
        found = RECAP.search(result.stdout)
        self.ok, self.changed, self.unreachable, self.failed = (int(g) for g in found.groups()) if found else (0, 0, 0, 1)

    def __repr__(self) -> str:
        return f"Converge(rc={self.rc}, changed={self.changed}, failed={self.failed})\n{self.output[-6000:]}"


def converge(host: Host, variables: dict) -> Converge:
    """ansible-playbook inside the container, with these role variables."""
    (host.root / "root/converge").mkdir(exist_ok=True)
    (host.root / "root/converge/playbook.yml").write_text(PLAYBOOK)
    (host.root / "root/converge/vars.json").write_text(json.dumps(variables))
    env = {"ANSIBLE_ROLES_PATH": str(REPO / "ansible" / "roles"), "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_HOME": "/root/.ansible"}
    argv = ["env", *(f"{k}={v}" for k, v in env.items()), str(BIN / "ansible-playbook"), "-i", "qdeploy-host,",
            "-c", "local", "-e", "@/root/converge/vars.json", "/root/converge/playbook.yml"]
    started = time.monotonic()
    result = Converge(host.run(argv, check=False, timeout=300))
    print(f"[ansible] converge: changed={result.changed} failed={result.failed} in {time.monotonic() - started:.1f}s")
    return result


def verify(host: Host, *args: str) -> subprocess.CompletedProcess:
    """`qdeploy verify` (testinfra, local://) run inside the container."""
    return host.run([str(BIN / "qdeploy"), "verify", "--hosts", "local://", *args], check=False, timeout=180)


def main_pids(host: Host, *units: str) -> list[int]:
    return [int(host.systemctl("show", "-p", "MainPID", "--value", u).stdout) for u in units]


@pytest.fixture(scope="module")
def deb(tmp_path_factory, redis_url):  # noqa: F811
    """The package, built for a default config: the role's config replaces it on the host."""
    work = tmp_path_factory.mktemp("ansible-deb")
    app_wheel, _ = build_app_wheel(work)
    own = package_mod.build_qdeploy_wheel(work / "own")
    config = work / "qdeploy.toml"
    config.write_text('app = "e2eapp.tasks:app"\n')
    return build_package(work / "deb", config, "--app-wheel", str(app_wheel), "--qdeploy-wheel", str(own),
                         "--pkg-version", "1.0")


@pytest.fixture(scope="module")
def base_vars(redis_url):  # noqa: F811
    return {"qdeploy_app": "e2eapp.tasks:app", "qdeploy_broker": redis_url, "qdeploy_nodes": 2,
            "qdeploy_concurrency": 1, "qdeploy_worker_settings": {"graceful_timeout": 5},
            "qdeploy_env": {"QD_HOSTILE": HOSTILE}}


@pytest.fixture(scope="module")
def deb_host(deb, base_vars):
    """A host converged once from the .deb (the first test checks that converge)."""
    with Host.boot("qd-ansible", bind_ro=controller_paths()) as host:
        inside = host.copy_in(deb)
        host.vars = {**base_vars, "qdeploy_install_method": "deb", "qdeploy_deb_src": inside}
        host.first = converge(host, host.vars)
        yield host


def test_converge_from_the_deb_then_again_with_nothing_changed(deb_host):
    host = deb_host
    assert host.first.rc == 0 and host.first.failed == 0 and host.first.changed > 0, host.first
    assert host.systemctl("is-active", "qworker@1", "qworker@2", "qbeat").stdout.split() == ["active"] * 3
    second = converge(host, host.vars)
    assert second.rc == 0 and second.changed == 0, second  # idempotent


def test_verify_passes_on_the_converged_host(deb_host):
    result = verify(deb_host, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "11 passed" in result.stdout, result.stdout


def test_hostile_strings_arrive_intact(deb_host):
    host = deb_host
    read = host.run(["python3", "-c", "import tomllib,json; print(json.dumps(tomllib.load("
                                      "open('/etc/qdeploy/qdeploy.toml','rb'))))"])
    config = json.loads(read.stdout)
    assert config["env"]["QD_HOSTILE"] == HOSTILE
    assert config["worker"]["nodes"] == 2
    sourced = host.run(". /etc/default/qworker && printf %s \"$QD_HOSTILE\"").stdout
    assert sourced == HOSTILE and not host.exists("/tmp/pwned")


def test_a_config_change_restarts_the_workers_and_a_removed_node_stops(deb_host):
    host = deb_host
    before = main_pids(host, "qworker@1", "qbeat")
    changed = converge(host, {**host.vars, "qdeploy_nodes": 1, "qdeploy_concurrency": 2})
    assert changed.rc == 0 and changed.changed > 0, changed
    assert "concurrency = 2" in host.read("/etc/qdeploy/qdeploy.toml")
    after = main_pids(host, "qworker@1", "qbeat")
    assert after[0] != before[0] and after[1] != before[1], (before, after)  # restarted by the handlers
    assert host.systemctl("is-active", "qworker@2", check=False).stdout.strip() == "inactive"
    assert verify(host).returncode == 0
    again = converge(host, {**host.vars, "qdeploy_nodes": 1, "qdeploy_concurrency": 2})
    assert again.rc == 0 and again.changed == 0, again


@pytest.mark.parametrize("variables, message", [
    ({"qdeploy_nodes": ["a b"]}, "worker.nodes = ['a b']: expected"),
    ({"qdeploy_worker_settings": {"concurency": 3}}, "unknown key 'worker.concurency' (did you mean"),
    ({"qdeploy_broker": "http://example.com"}, "broker = 'http://example.com': expected a URL"),
])
def test_a_bad_variable_fails_the_play_with_qdeploys_message_and_keeps_the_config(deb_host, variables, message):
    host = deb_host
    before = host.read("/etc/qdeploy/qdeploy.toml")
    failed = converge(host, {**host.vars, **variables})
    assert failed.rc != 0 and failed.failed == 1, failed
    assert "qdeploy rejected the role variables" in failed.output and message in failed.output, failed
    assert host.read("/etc/qdeploy/qdeploy.toml") == before


def test_a_wrong_type_is_refused_by_the_argument_spec(deb_host):
    failed = converge(deb_host, {**deb_host.vars, "qdeploy_install_method": "rpm"})
    assert failed.rc != 0 and "qdeploy_install_method" in failed.output and "deb, pip" in failed.output, failed


def test_verify_fails_on_a_broken_host(deb_host):
    host = deb_host
    host.run("chmod 0644 /etc/qdeploy/qdeploy.toml && systemctl stop qbeat")
    try:
        result = verify(host)
        assert result.returncode == 1, result.stdout
        assert "/etc/qdeploy/qdeploy.toml: 0644 root:qdeploy, expected 0640" in result.stdout, result.stdout
        assert "qbeat.service is inactive" in result.stdout, result.stdout
    finally:
        fixed = converge(host, {**host.vars, "qdeploy_nodes": 1, "qdeploy_concurrency": 2})
    assert fixed.rc == 0 and fixed.changed > 0, fixed  # the mode (and the restarts it notifies)
    assert host.systemctl("is-active", "qbeat").stdout.strip() == "active"
    assert verify(host).returncode == 0


def test_converge_with_pip_then_again_with_nothing_changed(deb, base_vars):
    """The pip method on a fresh host: the wheels come from the .deb's wheelhouse (no network)."""
    with Host.boot("qd-ansible-pip", bind_ro=controller_paths()) as host:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(host.root / "root/pkg")], check=True)
        variables = {**base_vars, "qdeploy_install_method": "pip", "qdeploy_pip_packages": ["e2eapp"],
                     "qdeploy_pip_extra_args": "--no-index --find-links /root/pkg/opt/qdeploy/wheels"}
        first = converge(host, variables)
        assert first.rc == 0 and first.changed > 0, first
        assert host.run(["readlink", "-f", "/opt/qdeploy/venv"]).stdout.strip() == "/opt/qdeploy/venv"  # a real venv
        again = converge(host, variables)
        assert again.rc == 0 and again.changed == 0, again
        result = verify(host)
        assert result.returncode == 0, result.stdout + result.stderr
