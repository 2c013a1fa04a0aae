"""The .deb on a booted Debian 12 with systemd as PID 1 (systemd-nspawn): install, upgrade,
remove, purge — what the maintainer scripts do, seen by the real dpkg and systemd.

Nothing here needs a working worker: tests/e2e/test_host_worker.py runs them."""

from __future__ import annotations

import pytest

from qdeploy.deploy import package as package_mod
from tests.e2e.host import Host, build_app_wheel, build_package

CONFIG = """\
app = "e2eapp.tasks:app"
broker = "redis://:s3cret@127.0.0.1:6379/0"

[worker]
nodes = 2
"""
SECRETS = ("/etc/default/qworker", "/etc/default/qbeat", "/etc/qdeploy/qdeploy.toml")


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    """v1 and v2 of the package; v2 changes the config (so its conffile differs from v1's)."""
    work = tmp_path_factory.mktemp("debs")
    app_wheel, _ = build_app_wheel(work)
    own = package_mod.build_qdeploy_wheel(work / "own")
    common = ["--app-wheel", str(app_wheel), "--qdeploy-wheel", str(own)]
    config = work / "qdeploy.toml"
    config.write_text(CONFIG)
    v1 = build_package(work / "v1", config, *common, "--pkg-version", "1.0")
    config.write_text(CONFIG + "concurrency = 3\n")
    v2 = build_package(work / "v2", config, *common, "--pkg-version", "2.0")
    return v1, v2


@pytest.fixture(scope="module")
def host(debs):
    with Host.boot("qd-package") as booted:
        booted.debs = [booted.copy_in(deb) for deb in debs]
        yield booted


@pytest.fixture
def clean(host):
    """Every test starts with the package purged."""
    host.run("dpkg -P qdeploy >/dev/null 2>&1 || true")
    return host


def test_install_creates_user_dirs_and_enables_units(clean):
    host = clean
    install = host.run(["dpkg", "-i", host.debs[0]])
    assert "Setting up qdeploy (1.0-1)" in install.stdout
    passwd = host.run(["getent", "passwd", "qdeploy"]).stdout.strip().split(":")
    group = host.run(["getent", "group", "qdeploy"]).stdout.strip().split(":")
    assert passwd[3] == group[2] and passwd[5] == "/var/lib/qdeploy" and passwd[6] == "/usr/sbin/nologin"
    for path, mode in (("/run/qdeploy", "755"), ("/var/log/qdeploy", "750"), ("/var/lib/qdeploy", "750")):
        assert host.run(["stat", "-c", "%a %U %G", path]).stdout.split() == [mode, "qdeploy", "qdeploy"], path
    for path in SECRETS:
        assert host.run(["stat", "-c", "%a %U %G", path]).stdout.split() == ["640", "root", "qdeploy"], path
    assert host.run(["stat", "-c", "%a", "/etc/init.d/qworker"]).stdout.strip() == "755"
    # the service user reads its config (systemd would not, as User= with PrivateUsers=)
    host.run(["cat", "/etc/qdeploy/qdeploy.toml"], user="qdeploy")

    unit = host.systemctl("cat", "qworker@1").stdout
    assert 'ExecStart="/opt/qdeploy/venv/bin/qdeploy" "worker" "--config" "/etc/qdeploy/qdeploy.toml" "--node" %i' in unit
    assert host.systemctl("is-enabled", "qworker.target", "qbeat.service").stdout.split() == ["enabled", "enabled"]
    assert host.systemctl("show", "-p", "LoadState", "--value", "qworker@1").stdout.strip() == "loaded"
    assert host.systemctl("is-active", "qworker@1", check=False).stdout.strip() == "inactive"  # --no-start
    verify = host.run(["systemd-analyze", "verify", "qworker@1.service", "qworker@2.service", "qworker.target",
                       "qbeat.service"], check=False)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr

    # the venv was built in place by postinst: its shebangs name where it lives, and it runs
    target = host.run(["readlink", "/opt/qdeploy/venv"]).stdout.strip()
    assert target.startswith("/opt/qdeploy/venvs/1.0-1-")
    assert host.read("/opt/qdeploy/venv/bin/qdeploy").splitlines()[0] == f"#!{target}/bin/python"
    assert host.run(["/opt/qdeploy/venv/bin/qdeploy", "--version"]).stdout.startswith("qdeploy, version")
    host.run(["/opt/qdeploy/venv/bin/python", "-c", "import e2eapp.tasks, redis, psutil, async_timeout"])
    # a root-owned venv the service user can run, and whose bytecode was compiled at install
    host.run(["/opt/qdeploy/venv/bin/qdeploy", "--version"], user="qdeploy")
    assert host.run(f"find {target} -newer /etc/qdeploy/qdeploy.toml -name '*.pyc' | head -1").stdout

    assert host.exists("/etc/init.d/qworker") and host.exists("/etc/supervisor/conf.d/qdeploy.conf")
    # a systemd host: no rc links, or the sysv generator would run the nodes twice at boot
    assert host.run("ls /etc/rc2.d /etc/rc3.d | grep -c qworker", check=False).stdout.strip() == "0"


def test_upgrade_keeps_config_edits_and_swaps_the_venv(clean):
    host = clean
    host.run(["dpkg", "-i", host.debs[0]])
    v1_venv = host.run(["readlink", "/opt/qdeploy/venv"]).stdout.strip()
    host.run("echo 'QDEPLOY_EXTRA=kept' >> /etc/default/qworker")  # unchanged between v1 and v2
    host.run("echo '# admin edit' >> /etc/qdeploy/qdeploy.toml")  # changed in v2 as well
    upgrade = host.run(["dpkg", "-i", "--force-confold", host.debs[1]])
    assert "Setting up qdeploy (2.0-1)" in upgrade.stdout
    assert "QDEPLOY_EXTRA=kept" in host.read("/etc/default/qworker")
    toml = host.read("/etc/qdeploy/qdeploy.toml")
    assert "# admin edit" in toml and "concurrency = 3" not in toml
    assert "concurrency = 3" in host.read("/etc/qdeploy/qdeploy.toml.dpkg-dist")  # the new version, beside it
    assert host.run(["stat", "-c", "%G", "/etc/qdeploy/qdeploy.toml"]).stdout.strip() == "qdeploy"
    v2_venv = host.run(["readlink", "/opt/qdeploy/venv"]).stdout.strip()
    assert v2_venv.startswith("/opt/qdeploy/venvs/2.0-1-")
    assert host.run(["ls", "/opt/qdeploy/venvs"]).stdout.split() == [v2_venv.rsplit("/", 1)[1]]
    assert not host.exists(v1_venv)
    assert host.systemctl("is-enabled", "qworker.target").stdout.strip() == "enabled"


def test_upgrade_with_default_answers_takes_the_maintainers_file_when_unedited(clean):
    host = clean
    host.run(["dpkg", "-i", host.debs[0]])
    host.run(["dpkg", "-i", "--force-confdef", "--force-confold", host.debs[1]])
    assert "concurrency = 3" in host.read("/etc/qdeploy/qdeploy.toml")  # not edited: replaced silently


def test_remove_stops_disables_keeps_conffiles_then_purge_deletes_them(clean):
    host = clean
    host.run(["dpkg", "-i", host.debs[0]])
    host.run(["dpkg", "-r", "qdeploy"])
    status = host.run(["dpkg-query", "-W", "-f", "${Status}", "qdeploy"]).stdout
    assert status == "deinstall ok config-files"
    assert host.systemctl("is-enabled", "qworker.target", check=False).stdout.strip() == "disabled"
    assert host.systemctl("is-enabled", "qbeat.service", check=False).stdout.strip() == "disabled"
    for path in SECRETS + ("/etc/init.d/qworker", "/etc/systemd/system/qworker@.service"):
        assert host.exists(path), f"conffile {path} removed by dpkg -r"
    assert not host.exists("/opt/qdeploy/venv") and not host.exists("/opt/qdeploy/wheels")

    # reinstalling after a remove enables the services again
    host.run(["dpkg", "-i", host.debs[0]])
    assert host.systemctl("is-enabled", "qworker.target").stdout.strip() == "enabled"

    host.run("echo '# admin edit' >> /etc/qdeploy/qdeploy.toml")
    host.run(["dpkg", "-P", "qdeploy"])
    for path in SECRETS + ("/etc/init.d/qworker", "/etc/systemd/system/qworker@.service", "/etc/qdeploy",
                           "/var/log/qdeploy", "/etc/systemd/system/multi-user.target.wants/qworker.target"):
        assert not host.exists(path), f"{path} left after dpkg -P"
    assert host.run(["getent", "passwd", "qdeploy"], check=False).returncode == 0  # users are kept (policy)
    assert host.systemctl("show", "-p", "LoadState", "--value", "qworker@1").stdout.strip() == "not-found"
