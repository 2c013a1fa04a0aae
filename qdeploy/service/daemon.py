"""Daemon duties: pid file, directories, privilege drop and `--detach` with readiness.

The order matters and is the one Celery gets wrong: as root, create the directories and open
the log file first, then setgid → initgroups → setuid, and prove root cannot be regained.
`--detach` double-forks, and the process that the user started exits only when the master says
it is ready (exit 0) or why it is not (exit 1) — never "0, and the worker died a moment later".
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from qdeploy.defaults import EX_CANTCREAT, EX_NOPERM

# EX_CANTCREAT (73: a live pid file, "cannot create output file") and EX_NOPERM (77)


class DaemonError(Exception):
    """A daemon duty failed: one line saying why; `exit_code` is what the process exits with."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# -- pid file ------------------------------------------------------------------------------


class Pidfile:
    """A pid file held with an exclusive `flock` for the life of the process.

    The lock is the truth: a file nobody holds is stale whatever pid it names (dead, reused by
    another program, or of another user). A file someone holds names a live master: exit 73.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, pid: int | None = None) -> None:
        pid = pid or os.getpid()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise DaemonError(f"cannot open pid file {self.path}: {exc.strerror}", EX_CANTCREAT) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DaemonError(f"pid file {self.path} is held by a running process (pid {holder})", EX_CANTCREAT) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{pid}\n".encode(), 0)
        os.fsync(fd)
        self.fd = fd

    def update(self, pid: int) -> None:
        """After `--detach` the daemon's pid is not the one that took the lock."""
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def keep_across_exec(self) -> int:
        """Let a re-exec'ing master keep the lock: returns the fd to hand over."""
        assert self.fd is not None
        os.set_inheritable(self.fd, True)
        return self.fd

    @classmethod
    def adopt(cls, path: str | Path, fd: int) -> Pidfile:
        pidfile = cls(path)
        pidfile.fd = fd
        os.set_inheritable(fd, False)
        return pidfile

    def release(self) -> None:
        """Remove the file if it is still ours, then drop the lock."""
        if self.fd is None:
            return
        try:
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def signal_pid(pid: int, sig: int) -> None:
    """Send `sig` to `pid`, which may have exited meanwhile."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def rss_kib(pid: int | str = "self") -> int:
    """A process's resident memory in KiB (0 if it is gone): /proc/<pid>/statm, one read, which is
    what psutil reads, without an import the service user may not be able to make after the
    privilege drop."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


def read_pid(path: str | Path) -> int | None:
    """The pid of a live process holding `path`, or None (missing, stale or unlocked)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it: stale
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            import psutil  # here, not at the top: start-up time (~15 ms)

            return int(text) if text.isdigit() and psutil.pid_exists(int(text)) else None
    finally:
        os.close(fd)


# -- users, directories, privileges ----------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    user: str
    uid: int
    gid: int
    home: str


def identity(user: str | None, group: str | None) -> Identity | None:
    """Resolve `--uid/--gid` (names or numbers); None when neither is given."""
    if not user and not group:
        return None
    try:
        pw = pwd.getpwnam(user) if user and not user.isdigit() else pwd.getpwuid(int(user)) if user else pwd.getpwuid(os.getuid())
    except KeyError:
        raise DaemonError(f"unknown user {user!r} (create it, set user/--uid, or pass --allow-root)", EX_NOPERM) from None
    try:
        gid = (grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)) if group else pw.pw_gid
    except KeyError:
        raise DaemonError(f"unknown group {group!r}", EX_NOPERM) from None
    return Identity(pw.pw_name, pw.pw_uid, gid, pw.pw_dir)


def make_dirs(dirs: dict[str, int], owner: Identity | None) -> None:
    """Create each directory (path → mode) owned by `owner` when running as root."""
    for path, mode in dirs.items():
        p = Path(path)
        try:
            if not p.is_dir():
                p.mkdir(mode=mode, parents=True, exist_ok=True)  # nodes started together race here
                p.chmod(mode)  # mkdir's mode is filtered by the umask
            if owner and os.geteuid() == 0:
                st = p.stat()
                if (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
                    os.chown(p, owner.uid, owner.gid)
        except OSError as exc:
            raise DaemonError(f"cannot create directory {path}: {exc.strerror}") from None


def user_name() -> str:
    """Who this process is, for messages ("not writable by user nobody")."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _can(path: Path, mode: int) -> bool:
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def _kind(path: Path) -> tuple[str, str]:
    """("dir" | "file" | "missing" | "unreachable" | "notdir", why) — never raises."""
    try:
        return ("dir" if stat.S_ISDIR(os.stat(path).st_mode) else "file"), ""
    except FileNotFoundError:
        return "missing", ""
    except NotADirectoryError:
        culprit = next((p for p in reversed(path.parents) if os.path.exists(p) and not os.path.isdir(p)), None)
        return "notdir", f"{culprit or 'a parent of ' + str(path)} is not a directory"
    except OSError as exc:
        for parent in reversed(path.parents):  # the directory in the way, from the top
            if os.path.isdir(parent) and not _can(parent, os.X_OK):
                by = f" by user {user_name()}" if os.geteuid() else ""
                return "unreachable", f"{parent} is not searchable{by}"
        return "unreachable", f"cannot reach {path} ({exc.strerror})"


class BootPaths:
    """The paths a service's boot uses, checked in the boot's order before any of them is
    touched. Each check raises one DaemonError for a path that cannot be used (which path, why,
    what to do) and creates nothing; `create()` then makes the missing directories. A directory
    that an earlier check will create counts as usable by the later ones (workdir = state_dir)."""

    def __init__(self):
        self.planned: dict[Path, int] = {}  # directory -> mode, in the order they are created
        self.owned: dict[Path, int] = {}  # the service's own directories: as root, handed to its user
        self.who = user_name()

    def _not_writable(self, path: Path) -> str:
        return f"{path} is not writable" + (f" by user {self.who}" if os.geteuid() != 0 else "")

    def _creatable(self, path: Path) -> str:
        """Why directory `path` cannot be created (mkdir -p), or "" when it can."""
        parent = path.parent
        while (found := _kind(parent))[0] == "missing" and parent not in self.planned and parent != parent.parent:
            parent = parent.parent
        if parent in self.planned:
            return ""
        if found[0] == "dir":
            return "" if _can(parent, os.W_OK | os.X_OK) else self._not_writable(parent)
        return found[1] or f"{parent} is not a directory"

    def directory(self, path: str, mode: int, what: str, fix: str, *, required: bool = True,
                  owned: bool = False) -> bool:
        """Directory `path` (`what` names it in the message) exists or can be created. An
        optional one that cannot is skipped (returns False); a required one raises. `owned`: one
        of the service's own directories, given to the service user (as root) even when it
        exists already."""
        p = Path(os.path.abspath(path))
        kind, why = _kind(p)
        if kind == "missing" and p not in self.planned:
            why = self._creatable(p)
            if not why:
                self.planned[p] = mode
        if kind == "dir" or p in self.planned:
            if owned:
                self.owned[p] = mode
            return True
        if kind == "file":
            why = f"{p} exists and is not a directory"
        if not required:
            return False
        raise DaemonError(f"cannot create {what}: {why}; {fix}", EX_CANTCREAT)

    def file(self, path: str, what: str, fix: str, dir_mode: int = 0o755) -> None:
        """File `path` can be opened for writing, or created (its directory too, when missing)."""
        p = Path(os.path.abspath(path))
        kind, why = _kind(p)
        if kind == "file":
            if _can(p, os.W_OK):
                return
            why = self._not_writable(p)
        elif kind == "dir":
            why = f"{p} is a directory"
        elif kind in ("missing", "unreachable"):
            parent_kind, parent_why = _kind(p.parent)
            if parent_kind == "dir":
                if _can(p.parent, os.W_OK | os.X_OK):
                    if kind == "missing":
                        return
                else:
                    why = f"directory {self._not_writable(p.parent)}"
            elif parent_kind == "missing" or p.parent in self.planned:
                self.directory(str(p.parent), dir_mode, f"directory {p.parent} for {what} {path}", fix)
                return
            else:
                why = parent_why or f"{p.parent} is not a directory"
        raise DaemonError(f"cannot write {what} {path}: {why}; {fix}", EX_CANTCREAT)

    def enter(self, path: str, fix: str, code: int) -> None:
        """`path` is a directory this process can change into (the workdir)."""
        p = Path(os.path.abspath(path))
        kind, why = _kind(p)
        if p in self.planned or (kind == "dir" and _can(p, os.X_OK)):
            return
        why = {"dir": f"{p} is not searchable" + (f" by user {self.who}" if os.geteuid() else ""),
               "missing": f"{p} does not exist", "file": f"{p} is not a directory"}.get(kind, why)
        raise DaemonError(f"cannot enter workdir {path}: {why}; {fix}", code)

    def create(self, owner: Identity | None) -> None:
        make_dirs({str(p): mode for p, mode in {**self.owned, **self.planned}.items()}, owner)


def drop_privileges(target: Identity) -> None:
    """setgid → initgroups → setuid, then prove that root cannot be regained."""
    if os.getuid() == target.uid and os.geteuid() == target.uid and os.getgid() == target.gid:
        return
    if os.geteuid() != 0:
        raise DaemonError(f"cannot switch to user {target.user}: not running as root", EX_NOPERM)
    os.setgid(target.gid)
    os.initgroups(target.user, target.gid)
    os.setuid(target.uid)
    if target.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise DaemonError("privilege drop failed: root could be regained", EX_NOPERM)
    os.environ.update(HOME=target.home, USER=target.user, LOGNAME=target.user)


def readable_as(target: Identity, paths: list[str]) -> bool:
    """Could `target` read every one of `paths` (files or directories to list)? Asked of a
    forked probe that drops to `target` as `drop_privileges` would: the kernel's answer, ACLs
    and supplementary groups included. Called before the drop, to load what it could not."""
    def readable() -> bool:
        return all(os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)) for path in paths)

    if os.geteuid() != 0 or os.geteuid() == target.uid:
        return readable()
    pid = os.fork()
    if pid == 0:  # the probe: nothing but the drop and access(2), then _exit
        try:
            drop_privileges(target)
            os._exit(0 if readable() else 1)
        except BaseException:  # noqa: BLE001 - the probe only answers yes or no
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def refuse_root(allow_root: bool, what: str = "tasks") -> None:
    if os.geteuid() == 0 and not allow_root:
        raise DaemonError(f"refusing to run {what} as root: set user/group (--uid/--gid) or pass --allow-root", EX_NOPERM)


# -- detach ----------------------------------------------------------------------------------


class Readiness:
    """The pipe through which a detached daemon tells the waiting parent how start-up went."""

    def __init__(self, fd: int | None = None):
        self.fd = fd
        self.before_fail = None  # what must be undone before the parent hears (the pid file)

    def ok(self) -> None:
        self._say(b"ok\n")

    def fail(self, reason: str, code: int = 1) -> None:
        """Tell the parent why; what it would find half-done (our pid file) is gone first, as
        the parent exits, and its caller goes on, the moment it reads this."""
        if self.before_fail is not None:
            self.before_fail()
        self._say(f"fail {code} {reason}\n".encode())

    def _say(self, data: bytes) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, data)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def detach(workdir: str, umask: int, timeout: float, what: str = "service", before_fail=None) -> Readiness:
    """Double-fork into the background. Returns in the daemon; the original process waits for
    the daemon's word on the pipe and exits 0 (ready) or 1 (with the reason on stderr).
    `before_fail`: what the daemon undoes before it reports a failure (Readiness.fail)."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        code = _wait_for_daemon(read_end, timeout, what)
        sys.stderr.flush()
        os._exit(code)  # not sys.exit: the pid file and the rest now belong to the daemon
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    readiness = Readiness(write_end)
    readiness.before_fail = before_fail
    os.umask(umask)
    try:
        os.chdir(workdir)  # checked before detaching (BootPaths.enter); this is for a race
    except OSError as exc:
        readiness.fail(f"cannot enter workdir {workdir}: {exc.strerror}", 2)
        os._exit(2)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return readiness


def _wait_for_daemon(fd: int, timeout: float, what: str) -> int:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    data = b""
    while not data.endswith(b"\n"):
        if not sel.select(timeout):
            print(f"qdeploy: error: the {what} did not report ready within {timeout:g}s", file=sys.stderr)
            return 1
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    if data == b"ok\n":
        return 0
    code, _, reason = data.decode(errors="replace").strip().removeprefix("fail ").partition(" ")
    if not data.startswith(b"fail "):
        code, reason = "1", ""
    reason = "".join(c if c.isprintable() else "?" for c in reason)[:2000]  # it crossed a process
    print(f"qdeploy: error: {reason or f'the {what} exited before it was ready'}", file=sys.stderr)
    return int(code) if code.isascii() and code.isdigit() and 0 < int(code) < 256 else 1
