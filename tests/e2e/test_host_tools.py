"""tmpfiles.d, sysusers.d and logrotate files, read by the real tools on a scratch root."""

from __future__ import annotations

import os
import stat
import subprocess

from tests.conftest import GOLDEN
from tests.e2e.conftest import render_tree


def test_sysusers_then_tmpfiles_create_user_and_directories(root_only, tmp_path):
    root = render_tree(tmp_path / "root", "--config", str(GOLDEN / "rich.toml"))
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    subprocess.run(["systemd-sysusers", f"--root={root}"], check=True, capture_output=True)
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    assert "proj" in passwd and "projgrp" in groups
    assert passwd["proj"][3] == groups["projgrp"][2]
    assert passwd["proj"][6] == "/usr/sbin/nologin"
    result = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    uid, gid = int(passwd["proj"][2]), int(groups["projgrp"][2])
    for path, mode in (("run/proj", 0o755), ("srv/proj/log", 0o750), ("var/lib/proj", 0o750), ("srv/proj", 0o750)):
        st = (root / path).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid), path


def test_logrotate_rotates_as_the_service_user(root_only, tmp_path, world_dir):
    logs = world_dir / "logs"
    logs.mkdir()
    os.chown(logs, 65534, 65534)
    out = render_tree(tmp_path / "out", "--user", "nobody", "--group", "nogroup", "--log-dir", str(logs), "--executable", "/usr/bin/qdeploy")
    (logs / "qworker-1.log").write_text("x" * 100)
    state = tmp_path / "state"
    result = subprocess.run(
        ["logrotate", "--debug", "--force", "--state", str(state), str(out / "etc/logrotate.d/qdeploy")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower()
    assert f"rotating pattern: {logs}/*.log" in result.stderr
    assert "switching euid from 0 to 65534" in result.stderr
    assert "copying " in result.stderr and "truncating " in result.stderr
