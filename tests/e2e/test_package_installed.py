"""`qdeploy package` from a qdeploy installed with pip (a wheel, no source checkout): it rebuilds
the qdeploy wheel from the installed files (qdeploy/deploy/wheel.py) instead of asking for
`--qdeploy-wheel`, and the .deb carries a qdeploy that installs offline and runs."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from qdeploy.deploy import wheel as wheel_mod
from tests.conftest import REPO

CLEAN = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}  # no PYTHONPATH


def run(*cmd, cwd=None, env=None, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd,
                            env={**os.environ, **CLEAN, **(env or {})} if env is not False else CLEAN)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} exited {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result


def files_of(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        return {n: zf.read(n) for n in zf.namelist() if not n.endswith(".dist-info/RECORD")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """qdeploy's wheel, and a fresh venv where qdeploy is installed from it (not editable)."""
    work = tmp_path_factory.mktemp("installed")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", work / "dist", REPO)
    (wheel,) = (work / "dist").glob("qdeploy-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    run(env_dir / "bin/python", "-m", "pip", "install", "-q", wheel)
    where = run(env_dir / "bin/python", "-c", "import qdeploy; print(qdeploy.__file__)", cwd=work).stdout
    assert where.startswith(f"{env_dir}/lib/"), where  # the installed copy, not this checkout
    return {"work": work, "wheel": wheel, "venv": env_dir}


def test_package_from_a_pip_installed_qdeploy_carries_a_working_qdeploy(installed, tmp_path):
    config = tmp_path / "qdeploy.toml"
    config.write_text('app = "qdeploy.demo:app"\n[worker]\nnodes = 2\n')
    result = run(installed["venv"] / "bin/qdeploy", "package", "--format", "deb", "--config", config,
                 "--out", tmp_path / "out", cwd=tmp_path)
    (deb,) = (tmp_path / "out").glob("*.deb")
    assert result.stdout.startswith(f"built {tmp_path}/out/{deb.name} in ")
    tree = tmp_path / "tree"
    run("dpkg-deb", "-x", deb, tree)
    (bundled,) = (tree / "opt/qdeploy/wheels").glob("qdeploy-*.whl")
    assert bundled.name == installed["wheel"].name
    assert files_of(bundled) == files_of(installed["wheel"])  # the same files, byte for byte

    # What postinst does on the host: the target's python3, offline, from the wheelhouse only.
    target = tmp_path / "target-venv"
    run("/usr/bin/python3", "-m", "venv", target, env=False)
    wheels = sorted((tree / "opt/qdeploy/wheels").glob("*.whl"))
    run(target / "bin/python", "-m", "pip", "install", "-q", "--no-index", "--isolated", "--find-links",
        tree / "opt/qdeploy/wheels", *wheels, env=False)
    assert "qdeploy, version" in run(target / "bin/qdeploy", "--version", env=False).stdout
    run(target / "bin/python", "-c", "import qdeploy.cli, qdeploy.worker.master, qdeploy.deploy.wheel", env=False,
        cwd=tmp_path)
    rendered = run(target / "bin/qdeploy", "render", "--nodes", "2", "--out", tmp_path / "rendered", env=False,
                   cwd=tmp_path)
    assert "wrote 12 files" in rendered.stdout  # the templates came along


def test_the_installed_files_are_checked_against_their_record(installed, tmp_path, monkeypatch):
    site = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, installed["wheel"])
    monkeypatch.syspath_prepend(str(site))
    rebuilt = wheel_mod.from_installed(tmp_path / "a", "qdeploy", site / "qdeploy")
    assert files_of(rebuilt) == files_of(installed["wheel"])
    with zipfile.ZipFile(rebuilt) as zf:
        assert zf.testzip() is None and zf.namelist()[-1].endswith(".dist-info/RECORD")
        record = zf.read(zf.namelist()[-1]).decode().splitlines()
    assert len(record) == len(files_of(rebuilt)) + 1 and all(",sha256=" in row for row in record[:-1])

    with pytest.raises(wheel_mod.WheelError, match="is not the running one"):
        wheel_mod.from_installed(tmp_path / "b", "qdeploy", REPO / "qdeploy")
    generator = site / "qdeploy/generator/render.py"
    generator.write_text(generator.read_text() + "# patched\n")
    with pytest.raises(wheel_mod.WheelError, match=r"changed after it was installed \(qdeploy/generator/render.py"):
        wheel_mod.from_installed(tmp_path / "c", "qdeploy", site / "qdeploy")
    generator.unlink()
    with pytest.raises(wheel_mod.WheelError, match="is incomplete: .*render.py: No such file"):
        wheel_mod.from_installed(tmp_path / "d", "qdeploy", site / "qdeploy")
    next(site.glob("qdeploy-*.dist-info/RECORD")).unlink()
    with pytest.raises(wheel_mod.WheelError, match="has no RECORD"):
        wheel_mod.from_installed(tmp_path / "e", "qdeploy", site / "qdeploy")
    assert not any(p.suffix == ".whl" or p.name.endswith(".partial") for d in "bcde" if (tmp_path / d).exists()
                   for p in (tmp_path / d).iterdir())


def test_a_qdeploy_that_cannot_be_rebuilt_says_so_in_one_line(installed, tmp_path):
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", tmp_path / "site", installed["wheel"])
    next((tmp_path / "site").glob("qdeploy-*.dist-info/RECORD")).unlink()
    config = tmp_path / "qdeploy.toml"
    config.write_text("[worker]\nnodes = 1\n")
    result = run(installed["venv"] / "bin/python", "-m", "qdeploy", "package", "--format", "deb", "--config", config,
                 "--out", tmp_path / "out", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")}, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("qdeploy: error: cannot rebuild the qdeploy wheel: the installed qdeploy has no RECORD "
                             "(installed by a tool that keeps none); pass --qdeploy-wheel FILE\n")
    assert not (tmp_path / "out").exists()
