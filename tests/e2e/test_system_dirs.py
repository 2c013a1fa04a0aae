"""workdir, log_dir, pid_dir and state_dir never name / or a system directory.

tmpfiles.d hands those directories to the service user, the units make them writable
(ReadWritePaths=), logrotate rotates `DIR/*.log`: with `log_dir = "/var/log"` the host's /var/log
would belong to the service. Such a config is refused (exit 2, one line naming the key, nothing
written); `systemd-tmpfiles --root` on a rendered tree shows the allowed directories are created
for the service user and nothing else changes owner or mode."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from qdeploy.cli import main

KEYS = ("workdir", "log_dir", "pid_dir", "state_dir")
# The list docs/security.md documents ("What render refuses, and why").
REFUSED = [
    "/", "/home", "/lost+found", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/snap",
    "/run", "/run/lock", "/run/log", "/run/shm", "/run/systemd", "/run/user",
    "/var", "/var/backups", "/var/cache", "/var/lib", "/var/local", "/var/lock", "/var/log", "/var/mail",
    "/var/opt", "/var/run", "/var/spool", "/var/tmp", "/var/cache/private", "/var/lib/private",
    "/var/log/journal", "/var/log/private", "/var/spool/cron",
    # whole trees
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin", "/sys", "/usr",
    "/etc/qdeploy", "/usr/local/proj", "/usr/lib/qdeploy", "/dev/shm", "/proc/1", "/sys/fs/cgroup", "/boot/efi",
    "/lib/x86_64-linux-gnu", "/sbin/x", "/home/alice", "/home/qdeploy",
    # other spellings of the same directories
    "/var/log/", "//var//log", "/var//run/", "//", "/etc/",
]
ALLOWED = ["/var/log/qdeploy", "/run/qdeploy", "/var/lib/qdeploy", "/srv/proj", "/srv/proj/log", "/opt/proj",
           "/home/alice/proj", "/tmp/qdeploy", "/var/tmp/qdeploy", "/mnt/data/qdeploy", "/root/proj",
           "/var/lib/private2", "/usrx", "/etcetera", "/run/user2"]


def render(tmp_path: Path, text: str, *args: str):
    cfg = tmp_path / "qdeploy.toml"
    cfg.write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["render", "--config", str(cfg), "--out", str(out),
                                       "--executable", "/usr/bin/qdeploy", *args])
    return result, cfg, out


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("path", REFUSED)
def test_system_directories_are_refused(key, path, tmp_path):
    result, cfg, out = render(tmp_path, f'{key} = "{path}"\n')
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"qdeploy: error: {cfg}: {key} = '{path}': expected a directory of the services' "
                             "own such as /var/log/qdeploy, not / or a system directory (see docs/security.md)\n")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["qdeploy.toml"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("path", ALLOWED)
def test_directories_of_their_own_are_fine(key, path, tmp_path):
    result, _, out = render(tmp_path, f'{key} = "{path}"\n', "--only", "tmpfiles")
    assert result.exit_code == 0, result.output
    assert f" {path} 07" in (out / "usr/lib/tmpfiles.d/qdeploy.conf").read_text()


def test_paths_are_normalised_before_they_are_checked_and_written(tmp_path):
    result, _, out = render(tmp_path, 'log_dir = "//srv//proj///log/"\n', "--only", "tmpfiles,logrotate")
    assert result.exit_code == 0, result.output
    assert "d /srv/proj/log 0750 qdeploy qdeploy -" in (out / "usr/lib/tmpfiles.d/qdeploy.conf").read_text()
    assert (out / "etc/logrotate.d/qdeploy").read_text().count("/srv/proj/log/*.log {") == 1


@pytest.mark.parametrize("args, flag", [
    (["render", "--log-dir", "/var/log"], "--log-dir"),
    (["render", "--state-dir", "/"], "--state-dir"),
    (["worker", "--workdir", "/etc"], "--workdir"),
    (["beat", "--pid-dir", "/run"], "--pid-dir"),
])
def test_the_flags_refuse_them_too(args, flag, tmp_path):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"qdeploy: error: {flag}: ") and "not / or a system directory" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def fake_root(root: Path) -> dict[str, tuple[int, int, int]]:
    """A host root with the directories the issue's config handed away; their (mode, uid, gid)."""
    for path, mode in (("etc", 0o755), ("var/log", 0o755), ("var/lib", 0o755), ("run", 0o755), ("srv", 0o755)):
        (root / path).mkdir(parents=True, exist_ok=True)
        os.chmod(root / path, mode)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    return owners(root)


def owners(root: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.lstat().st_uid, p.lstat().st_gid)
            for p in [root, *root.rglob("*")] if p.is_dir()}


def tmpfiles(root: Path, tree: Path) -> None:
    for tool, conf in (("systemd-sysusers", "usr/lib/sysusers.d/qdeploy.conf"),
                       ("systemd-tmpfiles", "usr/lib/tmpfiles.d/qdeploy.conf")):
        (root / conf).parent.mkdir(parents=True, exist_ok=True)
        (root / conf).write_text((tree / conf).read_text())
        args = ["--create"] if tool == "systemd-tmpfiles" else []
        subprocess.run([tool, *args, f"--root={root}", str(root / conf)], check=True, capture_output=True)


def test_tmpfiles_creates_the_service_dirs_and_changes_nothing_else(root_only, tmp_path):
    result, _, tree = render(tmp_path, 'workdir = "/srv/proj"\n', "--only", "tmpfiles,sysusers")
    assert result.exit_code == 0, result.output
    root = tmp_path / "host"
    before = fake_root(root)
    tmpfiles(root, tree)
    after = owners(root)
    uid = int(next(line for line in (root / "etc/passwd").read_text().splitlines()
                   if line.startswith("qdeploy:")).split(":")[2])
    created = {p: (oct(after[p][0] & 0o7777), after[p][1]) for p in set(after) - set(before)
               if not p.startswith("usr")}  # usr/lib/*.d: where tmpfiles() put the two config files
    assert created == {"run/qdeploy": ("0o755", uid), "var/log/qdeploy": ("0o750", uid),
                       "var/lib/qdeploy": ("0o750", uid), "srv/proj": ("0o750", uid)}
    assert {p: after[p] for p in before} == before  # /, /etc, /var/log, /var/lib, /run, /srv: untouched


def test_the_harm_that_refusing_prevents_is_real(root_only, tmp_path):
    """What the issue's config (log_dir = "/var/log") made tmpfiles do, from today's rendered line."""
    result, _, tree = render(tmp_path, "", "--only", "tmpfiles,sysusers")
    assert result.exit_code == 0, result.output
    conf = tree / "usr/lib/tmpfiles.d/qdeploy.conf"
    conf.write_text(conf.read_text().replace("/var/log/qdeploy", "/var/log"))
    root = tmp_path / "host"
    fake_root(root)
    tmpfiles(root, tree)
    st = (root / "var/log").stat()
    assert st.st_uid != 0 and st.st_mode & 0o777 == 0o750  # the host's /var/log, handed to qdeploy
