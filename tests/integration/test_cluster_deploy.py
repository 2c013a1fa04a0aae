"""The deployment half with Redis Cluster and Sentinel URLs: `qdeploy render` takes them (and
imports no redis-py doing so), the Ansible role's config template carries them into a config
qdeploy accepts, `qdeploy package` validates them as render does, and `qdeploy verify` checks
that every node of the broker is reachable from the host, naming each one that is not."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest

from tests.e2e.test_ansible_lint import render_template
from tests.integration.cluster import Cluster, free_ports
from tests.integration.conftest import REPO

QDEPLOY = [sys.executable, "-m", "qdeploy"]
URLS = {
    "cluster": "redis+cluster://:Cl-pw1@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002?wait_replicas=1",
    "cluster-tls": "rediss+cluster://:Cl-pw1@r1.example:7000,r2.example:7000/0?ssl_ca_certs=/etc/ssl/ca.pem",
    "sentinel": "sentinel://:Se-pw1@s1:26379,s2:26379/0?master=mymaster&sentinel_password=Se-pw2",
}


def run(*args, cwd=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*QDEPLOY, *args], capture_output=True, text=True, cwd=cwd or REPO, timeout=timeout,
                          env=env)


@pytest.mark.parametrize("kind", sorted(URLS))
def test_render_takes_cluster_and_sentinel_urls_without_importing_redis(kind, tmp_path):
    config = tmp_path / "qdeploy.toml"
    config.write_text(f'app = "proj.tasks:app"\nbroker = "{URLS[kind]}"\n[worker]\nnodes = 2\n')
    out = tmp_path / "out"
    probe = subprocess.run([sys.executable, "-c",
                            "import sys\nfrom qdeploy.cli import main\n"
                            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
                            "from qdeploy import _imports\n"
                            "print(_imports.loaded('redis') or 'redis.client' in sys.modules, code)",
                            "render", "--config", str(config), "--out", str(out)],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert probe.stdout.split()[-2:] == ["False", "0"], probe.stdout + probe.stderr
    rendered = out / "etc" / "qdeploy" / "qdeploy.toml"
    assert tomllib.loads(rendered.read_text())["broker"] == URLS[kind], "the broker reaches the host's config, whole"
    assert rendered.stat().st_mode & 0o777 == 0o640
    secret = "Cl-pw1" if "cluster" in kind else "Se-pw1"
    assert secret not in probe.stdout + probe.stderr


@pytest.mark.parametrize("url, reason", [
    ("redis+cluster://h1:7000/3", "a Redis Cluster has only database 0"),
    ("redis+cluster://h1:7000?master=m", "Redis Cluster and Sentinel do not mix"),
    ("redis+cluster://", "expected at least one cluster node host[:port]"),
])
def test_render_and_package_refuse_a_bad_cluster_url_in_one_line_writing_nothing(url, reason, tmp_path):
    config = tmp_path / "qdeploy.toml"
    config.write_text(f'app = "proj.tasks:app"\nbroker = "{url}"\n')
    for argv in (["render", "--config", str(config), "--out", str(tmp_path / "out")],
                 ["package", "--format", "deb", "--config", str(config), "--out", str(tmp_path / "dist")]):
        result = run(*argv, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        line = result.stderr.strip()
        assert reason in line and "\n" not in line and "broker" in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "dist").exists()


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
def test_the_ansible_role_carries_cluster_and_sentinel_urls_into_a_config_qdeploy_accepts(kind, tmp_path):
    result = render_template(tmp_path, {"qdeploy_broker": URLS[kind]})
    assert result.returncode == 0, result.stdout + result.stderr
    assert tomllib.loads((tmp_path / "out.toml").read_text())["broker"] == URLS[kind]
    explain = run("render", "--config", str(tmp_path / "out.toml"), "--explain", "--json", cwd=tmp_path)
    assert explain.returncode == 0, explain.stderr
    assert "qworker@1" in json.loads(explain.stdout)


# -- qdeploy verify: every node reachable ------------------------------------------------------------
def _verify(tmp_path, broker: str) -> subprocess.CompletedProcess:
    config = tmp_path / "qdeploy.toml"
    config.write_text(f'app = "tests.integration.tasks:app"\nbroker = "{broker}"\nexecutable = "{sys.executable}"\n')
    return run("verify", "--config", str(config), "-k", "broker", "-v", cwd=tmp_path, timeout=180)


def test_verify_checks_every_node_of_a_cluster_and_names_the_unreachable_one(tmp_path):
    with Cluster(tmp_path / "cluster", primaries=3, replicas=1).start() as cluster:
        given = cluster.url  # names three of the six nodes: the other three come from the cluster
        ok = _verify(tmp_path, given)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "test_broker_nodes_reachable" in ok.stdout and "1 passed" in ok.stdout, ok.stdout
        replica = cluster.replica_of(cluster.primary_ports()[0])
        assert f"127.0.0.1:{replica}" not in given, "a node the URL does not name"
        cluster.kill(replica)
        bad = _verify(tmp_path, given)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"127.0.0.1:{replica} (a replica" in bad.stdout and "is not reachable" in bad.stdout, bad.stdout


def test_verify_names_each_unreachable_node_of_a_url_whose_cluster_is_gone(tmp_path):
    dead = free_ports(2)
    bad = _verify(tmp_path, "redis+cluster://:Pw-v1@" + ",".join(f"127.0.0.1:{p}" for p in dead))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    for port in dead:
        assert f"127.0.0.1:{port} (in the broker URL) is not reachable" in bad.stdout
    assert "could not ask the broker for its nodes" in bad.stdout and "Pw-v1" not in bad.stdout
