"""daemon.BootPaths and boot.check_paths: every path the boot uses is checked, in the boot's
order, before anything is created; and what a detached daemon tells its waiting parent is not
trusted. (As the unprivileged user for real: tests/integration/test_unprivileged_boot.py.)"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from qdeploy.service import boot, daemon


@dataclass(frozen=True)
class Opts:
    """What check_paths reads (WorkerOptions and BeatOptions carry these)."""

    log_dir: str
    pid_dir: str
    state_dir: str
    workdir: str
    logfile: str | None = None
    pidfile: str | None = None
    detach: bool = False
    given_dirs: frozenset = frozenset()
    node: str = "w1"
    owner: str = "w1@box"


def opts(tmp_path, **kw) -> Opts:
    base = dict(log_dir=str(tmp_path / "log"), pid_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"),
                workdir=str(tmp_path / "state"))
    return Opts(**{**base, **kw})


def test_every_directory_is_planned_first_and_made_only_by_create(tmp_path):
    """workdir = state_dir: the workdir --detach enters is the state dir made a step earlier."""
    o = opts(tmp_path, logfile=str(tmp_path / "log/%n%I.log"), pidfile=str(tmp_path / "pids/a/w1.pid"), detach=True)
    paths = boot.check_paths(o)
    assert list(tmp_path.iterdir()) == [], "checking creates nothing"
    paths.create(None)
    for name, mode in (("log", 0o750), ("run", 0o755), ("state", 0o750), ("pids/a", 0o755)):
        assert (tmp_path / name).is_dir() and (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_a_later_bad_path_leaves_nothing_behind(tmp_path):
    (tmp_path / "file").write_text("")
    o = opts(tmp_path, logfile=str(tmp_path / "newlogs/w.log"), pidfile=str(tmp_path / "file/w.pid"))
    with pytest.raises(daemon.DaemonError) as caught:
        boot.check_paths(o)
    assert str(caught.value).startswith(f"cannot write pid file {tmp_path}/file/w.pid: {tmp_path}/file is not a directory")
    assert caught.value.exit_code == daemon.EX_CANTCREAT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("kw, message", [
    (dict(log_dir="{t}/f"), "cannot create log_dir {t}/f: {t}/f exists and is not a directory; pass --log-dir DIR"),
    (dict(state_dir="{t}/f/x"), "cannot create state_dir {t}/f/x: {t}/f is not a directory"),
    (dict(logfile="{t}"), "cannot write log file {t}: {t} is a directory"),
    (dict(logfile="{t}/f/%i/w.log"), "cannot write log file {t}/f//w.log: {t}/f is not a directory"),
    (dict(detach=True, workdir="{t}/nowhere"), "cannot enter workdir {t}/nowhere: {t}/nowhere does not exist; "
                                               "pass --workdir DIR or set workdir in the config"),
    (dict(detach=True, workdir="{t}/f"), "cannot enter workdir {t}/f: {t}/f is not a directory"),
])
def test_unusable_paths_are_one_line_naming_them(tmp_path, kw, message):
    (tmp_path / "f").write_text("")
    with pytest.raises(daemon.DaemonError) as caught:
        boot.check_paths(opts(tmp_path, **{k: v.replace("{t}", str(tmp_path)) if isinstance(v, str) else v
                                           for k, v in kw.items()}))
    assert str(caught.value).startswith(message.replace("{t}", str(tmp_path)))
    assert "\n" not in str(caught.value)


def test_a_child_log_directory_from_the_pool_index_is_checked_too(tmp_path):
    """`%i` in a directory name: the master's file and the first child's are both checked."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/1").write_text("in the way")
    with pytest.raises(daemon.DaemonError, match="logs/1 is not a directory"):
        boot.check_paths(opts(tmp_path, logfile=str(tmp_path / "logs/%i/w.log")))


def test_optional_directories_are_skipped_not_refused(tmp_path):
    (tmp_path / "f").write_text("")
    paths = daemon.BootPaths()
    assert paths.directory(str(tmp_path / "f/x"), 0o750, "log_dir", "fix", required=False) is False
    assert paths.directory(str(tmp_path / "ok"), 0o750, "log_dir", "fix", required=False, owned=True) is True
    paths.create(None)
    assert (tmp_path / "ok").is_dir() and not (tmp_path / "f").is_dir()


@pytest.mark.parametrize("said, code, line", [
    (b"ok\n", 0, ""),
    (b"fail 3 cannot reach broker redis://x\n", 3, "qdeploy: error: cannot reach broker redis://x\n"),
    (b"fail 2\n", 2, "qdeploy: error: the worker exited before it was ready\n"),
    (b"fail abc why\n", 1, "qdeploy: error: why\n"),
    (b"fail 999 big\n", 1, "qdeploy: error: big\n"),
    (b"fail \xd9\xa3 arabic three\n", 1, "qdeploy: error: arabic three\n"),
    (b"fail 4 a\x1b[2Jb\x07c\n", 4, "qdeploy: error: a?[2Jb?c\n"),
    (b"garbage\n", 1, "qdeploy: error: the worker exited before it was ready\n"),
    (b"", 1, "qdeploy: error: the worker exited before it was ready\n"),
    (b"fail 5 " + b"x" * 5000 + b"\n", 5, "qdeploy: error: " + "x" * 2000 + "\n"),
])
def test_what_the_daemon_says_is_not_trusted(capsys, said, code, line):
    read_end, write_end = os.pipe()
    os.write(write_end, said)
    os.close(write_end)
    try:
        assert daemon._wait_for_daemon(read_end, 5, "worker") == code
    finally:
        os.close(read_end)
    assert capsys.readouterr().err == line


def test_a_crash_after_detaching_reaches_the_waiting_parent(tmp_path, monkeypatch):
    """Not only DaemonErrors: whatever ends the boot before readiness is told to the parent
    (it used to hear only "the worker exited before it was ready")."""
    read_end, write_end = os.pipe()
    monkeypatch.setattr(daemon, "detach", lambda *a, **k: daemon.Readiness(write_end))

    @dataclass(frozen=True)
    class Full(Opts):
        umask: int = 0o027
        start_timeout: float = 5.0
        log_format: str = "text"
        log_level: str = "info"

    o = Full(**{**opts(tmp_path).__dict__, "detach": True, "workdir": str(tmp_path)})
    with pytest.raises(RuntimeError):
        with boot.daemonized(o, None, "worker"):
            raise RuntimeError("boom \x1b[2J")
    os.set_blocking(read_end, False)
    try:
        said = os.read(read_end, 4096)
    except BlockingIOError:  # nothing said
        said = b""
    os.close(read_end)
    assert said == b"fail 1 RuntimeError: boom \x1b[2J\n"


def test_a_failing_daemon_removes_its_pid_file_before_the_parent_hears(tmp_path):
    """The waiting `--detach` parent exits the moment it reads the failure, and its caller
    looks for the pid file at once: the file must be gone by then (a race seen under load)."""
    import os

    from qdeploy.service.daemon import Pidfile, Readiness

    pidfile = Pidfile(tmp_path / "w.pid")
    pidfile.acquire()
    read, write = os.pipe2(os.O_NONBLOCK)
    seen = []

    def release():
        try:
            seen.append(os.read(read, 100))
        except BlockingIOError:
            seen.append(b"")
        pidfile.release()

    readiness = Readiness(write)
    readiness.before_fail = release
    readiness.fail("cannot reach broker", 3)
    assert seen == [b""], "released before the parent was told"
    assert not (tmp_path / "w.pid").exists()
    assert os.read(read, 100) == b"fail 3 cannot reach broker\n"
