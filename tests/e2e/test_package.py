"""`qdeploy package`: the .deb and .rpm it builds, inspected with dpkg-deb and rpm; the .rpm
installed into a root with `rpm --root` (no RPM distro is reachable here: the root is a copy of
the Debian 12 test rootfs, so the scriptlets really run with its shell, useradd and python3)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from qdeploy.deploy import package as package_mod
from tests.e2e.host import build_app_wheel, build_package, qdeploy_cli, rootfs

CONFIG = """\
app = "e2eapp.tasks:app"
broker = "redis://:s3cret@127.0.0.1:6379/0"

[worker]
nodes = 2
concurrency = 2
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An app wheel, the qdeploy wheel (built once) and a config, shared by the module."""
    work = tmp_path_factory.mktemp("package")
    app_wheel, _ = build_app_wheel(work)
    own = package_mod.build_qdeploy_wheel(work / "own")
    config = work / "qdeploy.toml"
    config.write_text(CONFIG)
    return {"work": work, "app": app_wheel, "own": own, "config": config}


def _deb(built, *args):
    return build_package(built["work"] / "debs", built["config"], "--app-wheel", str(built["app"]),
                         "--qdeploy-wheel", str(built["own"]), *args)


def test_wheel_tags_for_debian_12():
    ok = package_mod.compatible
    assert ok("redis-8.1.0-py3-none-any.whl", machine="x86_64")
    assert ok("psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.manylinux_2_12_x86_64.whl", machine="x86_64")
    assert ok("markupsafe-3.0.4-cp311-cp311-manylinux_2_17_x86_64.whl", machine="x86_64")
    assert not ok("markupsafe-3.0.4-cp312-cp312-manylinux_2_17_x86_64.whl", machine="x86_64")
    assert not ok("x-1-cp311-cp311-manylinux_2_39_x86_64.whl", machine="x86_64")  # bookworm: glibc 2.36
    assert not ok("x-1-cp311-cp311-musllinux_1_1_x86_64.whl", machine="x86_64")
    assert not ok("x-1-cp311-cp311-manylinux_2_17_aarch64.whl", machine="x86_64")
    assert not ok("x-1-py2-none-any.whl", machine="x86_64")


def test_deb_metadata_conffiles_and_modes(built, tmp_path):
    deb = _deb(built, "--pkg-version", "1.0")
    assert deb.name == "qdeploy_1.0-1_amd64.deb"  # psutil/markupsafe are compiled: not "all"
    info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "Depends: python3 (>= 3.11~), python3 (<< 3.12~), python3-venv" in info
    scripts = {line.split()[-2]: line.split()[-1] for line in info.splitlines() if line.strip().endswith("#!/bin/sh")}
    assert scripts == {"postinst": "#!/bin/sh", "prerm": "#!/bin/sh", "postrm": "#!/bin/sh"}
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "--control", str(deb), str(control)], check=True)
    listed = set((control / "conffiles").read_text().split())
    assert {"/etc/default/qworker", "/etc/default/qbeat", "/etc/init.d/qworker", "/etc/qdeploy/qdeploy.toml",
            "/etc/systemd/system/qworker@.service", "/etc/supervisor/conf.d/qdeploy.conf"} <= listed
    assert all(path.startswith("/etc/") for path in listed)
    contents = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True).stdout
    modes = {line.split()[-1].lstrip("."): (line.split()[0], line.split()[1]) for line in contents.splitlines()}
    assert modes["/etc/init.d/qworker"] == ("-rwxr-xr-x", "root/root")
    assert modes["/etc/init.d/qbeat"] == ("-rwxr-xr-x", "root/root")
    for secret in ("/etc/default/qworker", "/etc/default/qbeat", "/etc/qdeploy/qdeploy.toml"):
        assert modes[secret] == ("-rw-r-----", "root/root"), secret  # postinst gives them the group
    assert modes["/etc/systemd/system/qworker@.service"][0] == "-rw-r--r--"
    wheels = sorted(p.rsplit("/", 1)[1].split("-")[0] for p in modes if p.endswith(".whl"))
    # redis needs async-timeout on Debian's 3.11.2 (python_full_version < 3.11.3) even when the
    # build runs on a later 3.11: the wheelhouse is for the target, not the build interpreter.
    assert wheels == ["async_timeout", "click", "e2eapp", "jinja2", "markupsafe", "psutil", "qdeploy", "redis"]
    assert not any("/venv" in p for p in modes), "a venv is built on the host, never shipped"


def test_deb_renders_for_the_packaged_venv(built, tmp_path):
    deb = _deb(built, "--pkg-version", "1.0")
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(tree)], check=True)
    unit = (tree / "etc/systemd/system/qworker@.service").read_text()
    assert 'ExecStart="/opt/qdeploy/venv/bin/qdeploy" "worker" "--config" "/etc/qdeploy/qdeploy.toml"' in unit
    assert 'executable = "/opt/qdeploy/venv/bin/qdeploy"' in (tree / "etc/qdeploy/qdeploy.toml").read_text()
    # nothing of the build machine leaks into the package (no build paths, no test venv)
    for path in tree.rglob("*"):
        if path.is_file() and path.suffix != ".whl":
            text = path.read_text(errors="replace")
            assert str(built["work"]) not in text and "/tmp/" not in text and str(Path.home()) not in text, path


def test_moved_venv_breaks_which_is_why_the_package_builds_it_in_place(built, tmp_path):
    """The failure mode of shipping a venv: its scripts' shebangs name the build path."""
    built_at, moved_to = tmp_path / "build" / "venv", tmp_path / "opt" / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(built_at)], check=True)
    script = built_at / "bin" / "qdeploy"
    script.write_text(f"#!{built_at}/bin/python\nprint('ok')\n")
    script.chmod(0o755)
    assert subprocess.run([str(script)], capture_output=True, text=True).stdout == "ok\n"
    moved_to.parent.mkdir()
    shutil.move(built_at, moved_to)
    with pytest.raises(FileNotFoundError):  # ENOENT from execve: the shebang's interpreter is gone
        subprocess.run([str(moved_to / "bin" / "qdeploy")], capture_output=True)
    moved = subprocess.run(["bash", "-c", str(moved_to / "bin" / "qdeploy")], capture_output=True, text=True)
    assert moved.returncode == 127 and "required file not found" in moved.stderr  # bash 5.2's "bad interpreter"
    # The package ships only wheels; the shebangs are written on the host by postinst (checked
    # in test_host_package: they name /opt/qdeploy/venvs/<version>-..., a path never moved).
    maint = (package_mod.packaging_dir() / "functions.sh").read_text()
    assert '"$PYTHON" -m venv "$new"' in maint and 'mv -Tf "$PREFIX/venv.new" "$PREFIX/venv"' in maint


@pytest.mark.parametrize("args, message", [
    (["--format", "zip"], "--format 'zip': expected one of deb, rpm"),
    (["--format", "deb", "--app-wheel", "/nonexistent/app-1.0-py3-none-any.whl"], "no such file"),
    (["--format", "deb", "--app-wheel", "CONFIG"], "not a wheel"),
    (["--format", "deb", "--pkg-version", "1.0-2"], "--pkg-version '1.0-2'"),
    (["--format", "deb", "--name", "Bad Name"], "--name 'Bad Name'"),
    (["--format", "deb", "--config", "BAD"], "unknown key 'worker.concurency'"),
    (["--format", "deb", "--config", "/nonexistent.toml"], "config file not found"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    bad = tmp_path / "bad.toml"
    bad.write_text("[worker]\nconcurency = 2\n")
    args = [str(bad) if a == "BAD" else str(tmp_path / "bad.toml") if a == "CONFIG" else a for a in args]
    out = tmp_path / "out"
    result = qdeploy_cli("package", *args, "--out", str(out), check=False, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr and result.stderr.startswith("qdeploy: error: ")
    assert not out.exists()


def test_rpm_scripts_files_and_requires(built, tmp_path):
    config = tmp_path / "rhel.toml"
    config.write_text('flavour = "rhel"\n' + CONFIG)
    rpm = build_package(tmp_path / "out", config, "--app-wheel", str(built["app"]), "--qdeploy-wheel",
                        str(built["own"]), "--pkg-version", "1.0", fmt="rpm")
    assert rpm.name == "qdeploy-1.0-1.x86_64.rpm"

    def query(*args):
        return subprocess.run(["rpm", "-qp", *args, str(rpm)], capture_output=True, text=True, check=True).stdout

    scripts = query("--scripts")
    for scriptlet in ("preinstall", "postinstall", "preuninstall", "postuninstall", "posttrans"):
        assert f"{scriptlet} scriptlet (using /bin/sh):" in scripts
    assert "systemd-sysusers --replace=" in scripts and "build_venv" in scripts
    assert "$(date +%s)" in scripts  # rpm macro expansion did not eat the %
    files = query("--list").split()
    assert "/etc/sysconfig/qworker" in files and "/etc/default/qworker" not in files
    assert "/etc/supervisord.d/qdeploy.ini" in files
    assert any(f.startswith("/opt/qdeploy/wheels/qdeploy-") for f in files)
    listing = query("--qf", "[%{FILEFLAGS:fflags}|%{FILEMODES:perms}|%{FILEGROUPNAME}|%{FILENAMES}\n]")
    flags = {line.split("|")[3]: line.split("|")[:3] for line in listing.splitlines()}
    assert flags["/etc/sysconfig/qworker"] == ["cn", "-rw-r-----", "qdeploy"]  # %config(noreplace), group-readable
    assert flags["/etc/qdeploy/qdeploy.toml"] == ["cn", "-rw-r-----", "qdeploy"]
    assert flags["/etc/init.d/qworker"] == ["cn", "-rwxr-xr-x", "root"]
    assert flags["/etc/systemd/system/qworker@.service"][0] == "cn"
    requires = query("--requires")
    assert "/usr/bin/python3" in requires and "shadow-utils" in requires


@pytest.fixture
def chroot_root():
    """A throw-away copy (overlay) of the Debian 12 rootfs to `rpm --root` into, with /proc."""
    base = rootfs()
    work = Path(tempfile.mkdtemp(prefix="qdeploy-rpmroot-"))
    root, upper, scratch = work / "root", work / "upper", work / "work"
    for d in (root, upper, scratch):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={base},upperdir={upper},workdir={scratch}", str(root)], check=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    yield root
    subprocess.run(["umount", str(root / "proc")], check=False)
    subprocess.run(["umount", str(root)], check=False)
    shutil.rmtree(work, ignore_errors=True)


def test_rpm_installs_upgrades_and_erases_in_a_root(built, tmp_path, chroot_root):
    root = chroot_root
    config = tmp_path / "rhel.toml"
    config.write_text('flavour = "rhel"\n' + CONFIG)
    common = ["--app-wheel", str(built["app"]), "--qdeploy-wheel", str(built["own"])]
    v1 = build_package(tmp_path / "v1", config, *common, "--pkg-version", "1.0", fmt="rpm")
    config.write_text('flavour = "rhel"\n' + CONFIG.replace("concurrency = 2", "concurrency = 3"))
    v2 = build_package(tmp_path / "v2", config, *common, "--pkg-version", "2.0", fmt="rpm")

    def rpm(*args):
        result = subprocess.run(["rpm", "--root", str(root), "--nodeps", *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def chroot(*cmd):
        return subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    subprocess.run(["rpm", "--root", str(root), "--initdb"], check=True)
    rpm("-i", str(v1))
    passwd = (root / "etc/passwd").read_text()
    assert "qdeploy:x:" in passwd and ":/usr/sbin/nologin" in passwd
    gid = int(next(line for line in (root / "etc/group").read_text().splitlines() if line.startswith("qdeploy:")).split(":")[2])
    st = (root / "etc/sysconfig/qworker").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, gid)
    assert (root / "var/log/qdeploy").is_dir() and (root / "var/lib/qdeploy").stat().st_gid == gid
    venv = os.readlink(root / "opt/qdeploy/venv")
    assert venv.startswith("/opt/qdeploy/venvs/1.0-1-")
    version = chroot("/opt/qdeploy/venv/bin/qdeploy", "--version")
    assert version.returncode == 0 and "qdeploy, version" in version.stdout, version.stderr
    assert chroot("/opt/qdeploy/venv/bin/python", "-c", "import e2eapp.tasks").returncode == 0
    # enabled offline (systemd is the rootfs's init, not running here)
    assert (root / "etc/systemd/system/multi-user.target.wants/qworker.target").is_symlink()

    # an admin edit survives the upgrade: %config(noreplace) keeps it, the new file is .rpmnew
    toml = root / "etc/qdeploy/qdeploy.toml"
    toml.write_text(toml.read_text() + "# edited by the admin\n")
    rpm("-U", str(v2))
    assert toml.read_text().endswith("# edited by the admin\n")
    assert "concurrency = 3" in (root / "etc/qdeploy/qdeploy.toml.rpmnew").read_text()
    assert os.readlink(root / "opt/qdeploy/venv").startswith("/opt/qdeploy/venvs/2.0-1-")
    assert [p.name for p in (root / "opt/qdeploy/venvs").iterdir()] == [Path(os.readlink(root / "opt/qdeploy/venv")).name]

    rpm("-e", "qdeploy")
    assert not (root / "opt/qdeploy/venv").exists() and not (root / "opt/qdeploy/venvs").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/qworker.target").exists()
    assert (root / "etc/qdeploy/qdeploy.toml.rpmsave").read_text().endswith("# edited by the admin\n")
    assert not (root / "etc/sysconfig/qworker").exists()  # unmodified config files go with the package


def test_maintainer_scripts_pass_shellcheck(built, tmp_path):
    deb = _deb(built, "--pkg-version", "1.0")
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "--control", str(deb), str(control)], check=True)
    scripts = [str(control / name) for name in ("postinst", "prerm", "postrm")]
    result = subprocess.run(["shellcheck", "-s", "sh", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
