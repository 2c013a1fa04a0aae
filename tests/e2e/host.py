"""A real Debian 12 host with systemd as PID 1, for end-to-end tests: `systemd-nspawn --boot`.

The root filesystem is built once per machine with debootstrap and cached OUTSIDE the repo
(``$QDEPLOY_TEST_CACHE``, default ``/var/cache/qdeploy-tests/bookworm-rootfs``). The build goes into
a temporary directory that is renamed into place at the end, under a lock, so a killed build never
leaves a half cache and two concurrent sessions never build twice.

Each `Host` boots a throw-away overlay (or, where overlayfs is unavailable, a reflink/copy) of that
cache::

    with Host.boot("qd-test") as host:
        host.run("systemctl is-active dbus")          # exec inside, as root
        host.copy_in(deb, "/tmp/pkg.deb")

The container shares the host's network (no ``--private-network``), so services inside reach a
redis-server listening on the host's loopback. ``--register=no --keep-unit`` keep nspawn from
talking to a host systemd (there is none on CI machines); ``machinectl`` therefore cannot see the
container: commands enter it with ``nsenter`` on the container's PID 1, and shutdown is a
``systemctl poweroff`` inside (SIGKILL to nspawn as the last resort).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

SUITE = "bookworm"
MIRROR = os.environ.get("QDEPLOY_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE_DIR = Path(os.environ.get("QDEPLOY_TEST_CACHE", "/var/cache/qdeploy-tests"))
CACHE = CACHE_DIR / f"{SUITE}-rootfs"
# What the tests need inside: systemd as init, python3 + venv (the package's only dependencies),
# supervisord and start-stop-daemon (dpkg) for the other two launchers, procps for ps/pgrep.
PACKAGES = ["systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "supervisor", "procps", "logrotate"]
CACHE_VERSION = "1"  # bump when PACKAGES or the tweaks below change: a stale cache is rebuilt
BOOT_TIMEOUT = 90
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}


class HostError(RuntimeError):
    pass


def _log(message: str) -> None:
    print(f"[host] {message}", flush=True)


def rootfs() -> Path:
    """The cached rootfs, built first if missing or stale. Returns its path (never written to)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent session waits for our build, then reuses it
        stamp = CACHE / ".qdeploy-cache-version"
        if stamp.is_file() and stamp.read_text().strip() == CACHE_VERSION:
            return CACHE
        for tool in ("debootstrap", "systemd-nspawn"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is not installed (apt-get install -y debootstrap systemd-container)")
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{CACHE.name}.", dir=CACHE_DIR))
        try:
            _debootstrap(staging)
            (staging / ".qdeploy-cache-version").write_text(CACHE_VERSION + "\n")
            if CACHE.exists():
                stale = CACHE.with_name(f".{CACHE.name}.stale")
                shutil.rmtree(stale, ignore_errors=True)
                os.rename(CACHE, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(staging, CACHE)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _log(f"built {CACHE} in {time.monotonic() - started:.0f}s")
        return CACHE


def _debootstrap(target: Path) -> None:
    target.chmod(0o755)
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(target), MIRROR]
    _log("running " + shlex.join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise HostError(f"debootstrap failed ({result.returncode}): {result.stdout[-3000:]}{result.stderr[-2000:]}")
    # Tweaks for a container that boots in seconds and stays quiet.
    (target / "etc/hostname").write_text("qdeploy-host\n")
    (target / "etc/machine-id").write_text("")  # a fresh id per boot
    (target / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
    wants = target / "etc/systemd/system"
    for unit in ("supervisor.service",  # tests start supervisord themselves
                 "getty@.service", "console-getty.service", "systemd-timesyncd.service",
                 "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"):
        link = wants / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")  # masked
    shutil.rmtree(target / "var/cache/apt/archives", ignore_errors=True)
    (target / "var/cache/apt/archives/partial").mkdir(parents=True)
    for lists in (target / "var/lib/apt/lists").glob("*_dists_*"):
        lists.unlink()


class Host:
    """One booted container. Use `Host.boot(name)` as a context manager."""

    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.workdir = workdir
        self.root = workdir / "root"
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None
        self.overlay = False
        self.console = workdir / "console.log"
        self.boot_seconds = 0.0

    @classmethod
    @contextlib.contextmanager
    def boot(cls, name: str, bind_ro: tuple[str | Path, ...] = ()):
        """Boot a fresh overlay; `bind_ro` host paths appear read-only at the same path inside
        (e.g. the test venv and its interpreter, to run tools there without a network)."""
        base = rootfs()
        workdir = Path(tempfile.mkdtemp(prefix=f"qdeploy-host-{name}-"))
        host = cls(name, workdir)
        try:
            host._prepare(base)
            host._start(bind_ro)
            yield host
        finally:
            host.shutdown()

    # -- lifecycle ---------------------------------------------------------------------------
    def _prepare(self, base: Path) -> None:
        self.root.mkdir()
        upper, work = self.workdir / "upper", self.workdir / "work"
        upper.mkdir()
        work.mkdir()
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={base},upperdir={upper},workdir={work}",
             str(self.root)], capture_output=True, text=True)
        if result.returncode == 0:
            self.overlay = True
            return
        _log(f"overlayfs unavailable ({result.stderr.strip()}); copying the rootfs")
        subprocess.run(["cp", "-a", "--reflink=auto", f"{base}/.", str(self.root)], check=True)

    def _start(self, bind_ro: tuple[str | Path, ...] = ()) -> None:
        started = time.monotonic()
        cmd = ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--quiet",
               "--console=read-only", "-D", str(self.root), f"--machine={self.name}",
               *(f"--bind-ro={path}" for path in bind_ro)]
        log = self.console.open("wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        self.leader = self._find_leader(started + BOOT_TIMEOUT)
        remaining = max(1.0, started + BOOT_TIMEOUT - time.monotonic())
        state = ""
        while time.monotonic() < started + BOOT_TIMEOUT:
            result = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                              timeout=remaining)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        else:
            raise HostError(f"{self.name} did not boot: state {state!r}\n{self.console_tail()}")
        self.boot_seconds = time.monotonic() - started
        failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False).stdout.strip()
        _log(f"{self.name} booted in {self.boot_seconds:.1f}s ({state}){'; failed: ' + failed if failed else ''}")

    def _find_leader(self, deadline: float) -> int:
        """The container's PID 1 as seen from the host: nspawn's child that runs systemd."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HostError(f"systemd-nspawn exited with {self.proc.returncode}\n{self.console_tail()}")
            for child in _children(self.proc.pid):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return child
            time.sleep(0.05)
        raise HostError(f"no systemd process under systemd-nspawn\n{self.console_tail()}")

    def shutdown(self, timeout: float = 30) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.run(["systemctl", "poweroff", "--no-block"], check=False, timeout=10)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log(f"{self.name}: no clean poweroff in {timeout}s; killing systemd-nspawn")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.overlay:
            subprocess.run(["umount", "--lazy", str(self.root)], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.proc = None

    def console_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        return ""

    # -- inside the container ----------------------------------------------------------------
    def run(self, cmd: str | list[str], check: bool = True, timeout: float = 120,
            input: str | None = None, user: str | None = None) -> subprocess.CompletedProcess:
        """Run `cmd` inside the container (a string goes through /bin/sh -c), as root or `user`."""
        if self.leader is None:
            raise HostError("the host is not booted")
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if user:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]
        full = ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--net", "--pid",
                "--cgroup", "--root", "--wd", "--", *argv]
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input,
                                env=ENV, stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise HostError(f"{self.name}: {shlex.join(argv)} exited {result.returncode}\n"
                            f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}")
        return result

    def copy_in(self, path: str | Path, dest: str | None = None, mode: int | None = None) -> str:
        """Copy a host file into the container (default: /tmp/<name>); returns the inside path."""
        src = Path(path)
        inside = dest or f"/root/{src.name}"
        target = self.root / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        if mode is not None:
            target.chmod(mode)
        return inside

    def read(self, path: str) -> str:
        return self.run(["cat", path]).stdout

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False).returncode == 0

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["systemctl", *args], check=check)

    def wait_for(self, cmd: str | list[str], timeout: float = 30, what: str | None = None) -> str:
        """Run `cmd` until it succeeds; return its stdout."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.run(cmd, check=False)
            if result.returncode == 0:
                return result.stdout
            if time.monotonic() > deadline:
                raise HostError(f"{self.name}: timed out after {timeout}s waiting for {what or cmd}: "
                                f"{result.stdout[-1500:]}{result.stderr[-1500:]}")
            time.sleep(0.3)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


# -- what the host tests install -------------------------------------------------------------

APP_TASKS = '''
"""A tiny application for the end-to-end tests: installed from its own wheel by the package."""
import os
import pwd
import time

from qdeploy.core.app import App

app = App("e2eapp", namespace=os.environ.get("QDEPLOY_NAMESPACE", "qdeploy"))


@app.task(name="e2e.add")
def add(x, y):
    return x + y


@app.task(name="e2e.whoami")
def whoami():
    return {"user": pwd.getpwuid(os.getuid()).pw_name, "pid": os.getpid(), "cwd": os.getcwd()}


@app.task(name="e2e.sleep", track_started=True)
def sleep(seconds):
    time.sleep(float(seconds))
    return seconds
'''


def build_app_wheel(workdir: Path) -> tuple[Path, Path]:
    """The wheel of `e2eapp` (module e2eapp.tasks, app `e2eapp.tasks:app`) and its source dir,
    which the tests put on PYTHONPATH to enqueue from outside."""
    src = workdir / "e2eapp-src"
    (src / "e2eapp").mkdir(parents=True)
    (src / "e2eapp" / "__init__.py").write_text("")
    (src / "e2eapp" / "tasks.py").write_text(APP_TASKS)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "e2eapp"\nversion = "1.0"\ndependencies = ["qdeploy"]\n'
    )
    dist = workdir / "e2eapp-dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(src)], check=True, capture_output=True)
    (wheel,) = dist.glob("e2eapp-*.whl")
    return wheel, src


def qdeploy_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
    """Run the qdeploy under test (this checkout, in the test venv) as a real subprocess."""
    cmd = [str(Path(sys.executable).parent / "qdeploy"), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise HostError(f"{shlex.join(cmd)} exited {result.returncode}: {result.stderr[-3000:]}")
    return result


def build_package(out: Path, config: Path, *args: str, fmt: str = "deb") -> Path:
    """`qdeploy package` through its CLI; returns the one package it wrote into `out`."""
    started = time.monotonic()
    result = qdeploy_cli("package", "--format", fmt, "--config", str(config), "--out", str(out), *args)
    built = Path(result.stdout.split()[1])
    _log(f"built {built.name} in {time.monotonic() - started:.1f}s")
    return built
