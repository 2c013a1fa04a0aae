"""A non-editable install (the wheel) carries the templates and the Lua scripts: `qdeploy render` works
from it, and so does every script the broker loads."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile

from tests.conftest import REPO


def test_render_from_the_installed_wheel(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)],
        check=True, capture_output=True,
    )
    (wheel,) = dist.glob("qdeploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    templates = sorted(p.name for p in (REPO / "templates").iterdir())
    assert all(f"qdeploy/templates/{name}" in names for name in templates)
    scripts = sorted(p.name for p in (REPO / "qdeploy" / "core" / "lua").glob("*.lua"))
    assert scripts and all(f"qdeploy/core/lua/{name}" in names for name in scripts)

    # A venv that sees the test interpreter's dependencies, with qdeploy itself from the wheel only.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True, capture_output=True,
    )
    clean = {"PATH": "/usr/bin:/bin"}  # no PYTHONPATH: only what is installed counts
    where = subprocess.run([str(python), "-c", "import qdeploy; print(qdeploy.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path, env=clean)
    assert where.stdout.startswith(str(env_dir))
    # the scripts as the broker reads them (importlib.resources; redis-py is not in this venv)
    loaded = subprocess.run([str(python), "-c", "from importlib import resources; "
                             "d = resources.files('qdeploy.core').joinpath('lua'); "
                             "print(' '.join(sorted(p.name for p in d.iterdir() if p.read_text().strip())))"],
                            capture_output=True, text=True, cwd=tmp_path, env=clean)
    assert loaded.returncode == 0 and loaded.stdout.split() == scripts, loaded.stderr
    result = subprocess.run([str(env_dir / "bin" / "qdeploy"), "render", "--nodes", "3"],
                            capture_output=True, text=True, cwd=tmp_path, env=clean)
    assert result.returncode == 0, result.stderr
    assert "wrote 12 files to qdeploy-build/" in result.stdout
    unit = (tmp_path / "qdeploy-build/etc/systemd/system/qworker@.service").read_text()
    assert f"ExecStart=\"{env_dir}/bin/qdeploy\" \"worker\"" in unit
