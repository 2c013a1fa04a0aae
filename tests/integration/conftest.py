"""Integration fixtures: a PRIVATE redis-server per session (never the one on 6379), helpers
to run consumers in-process or as real `qdeploy worker` subprocesses."""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from qdeploy import App
from qdeploy.worker import Consumer

REPO = Path(__file__).resolve().parents[2]
REDIS_SERVER = shutil.which("redis-server")
LOCKED_LIBRARIES = ("click", "jinja2", "markupsafe", "psutil", "redis", "prometheus_client", "setproctitle")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def gone(process: psutil.Process) -> bool:
    """The process has exited (a zombie counts: it runs nothing)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # reaped between the two calls
        return True


class RedisServer:
    """One private redis-server: `--save '' --appendonly no`, its own dir and unix socket."""

    def __init__(self, directory: Path, *extra: str, port: int | None = None, password=None):
        if REDIS_SERVER is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.dir, self.extra, self.password = directory, list(extra), password
        self.port = port or free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kw)

    def start(self) -> "RedisServer":
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--unixsocket", str(self.socket),
                "--unixsocketperm", "700", *self.extra]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=open(self.dir / "redis.log", "ab"),
                                     stderr=subprocess.STDOUT)
        wait_until(self._ping, 10, what=f"redis-server on port {self.port}")
        return self

    def _ping(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-500:]}")
        try:
            return self.client().ping()
        except redis.ConnectionError:
            return False

    def stop(self, save: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.client(retry=Retry(NoBackoff(), 0)).shutdown(save=save, nosave=not save)
        except redis.ConnectionError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self, downtime: float = 0.3) -> None:
        """Snapshot to dump.rdb, stop, wait, start again on the same port (data reloaded)."""
        self.stop(save=True)
        time.sleep(downtime)
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def make_server(tmp_path):
    """Function-scoped extra servers (restart tests, requirepass, TLS...)."""
    servers = []

    def make(*extra, **kw) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", *extra, **kw).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def locked_code(tmp_path_factory) -> Path:
    """A copy of the project's code (qdeploy/, tests/ and the runtime's libraries) that only root
    can read, as a checkout under /root or a clone in a `mktemp -d` with its venv is: run from
    here (PYTHONPATH, and a cwd elsewhere), a process that drops privileges fails at once if it
    reads any of its code (a lazy import, a Lua script) after the drop."""
    path = tmp_path_factory.mktemp("locked")
    path.chmod(0o700)
    for name in ("qdeploy", "tests"):
        shutil.copytree(REPO / name, path / name, ignore=shutil.ignore_patterns("golden", "e2e", "seeds"))
    for name in LOCKED_LIBRARIES:  # first on PYTHONPATH: they shadow the venv's (it may be readable)
        module = importlib.import_module(name)
        where = Path(module.__file__)
        if where.name == "__init__.py":
            shutil.copytree(where.parent, path / where.parent.name)
        else:
            shutil.copy2(where, path / where.name)
    return path


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def rclient(redis_server):
    return redis_server.client()


@pytest.fixture
def make_app(redis_server, namespace):
    def make(**settings) -> App:
        settings.setdefault("broker", redis_server.url)
        return App("itest", namespace=namespace, **settings)
    return make


@pytest.fixture
def app(make_app):
    return make_app()


def drain(app: App, n: int, queues=("default",), timeout: float = 15.0, cid: str = "tc", **kw) -> int:
    """Run an in-process consumer (main thread) until it handled `n` messages."""
    deadline = time.monotonic() + timeout
    consumer = Consumer(app, list(queues), cid, poll_interval=0.01, **kw)
    done = consumer.run(max_tasks=n, should_stop=lambda: time.monotonic() > deadline)
    assert done == n, f"consumer handled {done} of {n} messages within {timeout}s"
    return done


def ns_keys(client, namespace: str) -> set[str]:
    """Keys of a namespace, results excluded: after a clean drain this should be empty. (The
    dead-node sweep's lock is left out too, once it is seen to expire on its own: TTL <= 1 s.)"""
    sweep = f"{namespace}:sweep".encode()
    return {k.decode() for k in client.scan_iter(f"{namespace}:*")
            if b":r:" not in k and not (k == sweep and 0 < client.pttl(k) <= 1000)}


class Worker:
    """A real `qdeploy worker --pool solo` subprocess."""

    def __init__(self, url: str, namespace: str, *args: str, app: str = "tests.integration.tasks:app",
                 env: dict | None = None):
        environ = dict(os.environ, QDEPLOY_NAMESPACE=namespace, QDEPLOY_BROKER=url,
                       PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        environ.update(env or {})
        self.argv = [sys.executable, "-m", "qdeploy", "worker", "--pool", "solo", "--allow-root", "-A", app,
                     "-b", url, "-l", "debug", *args]
        self.proc = subprocess.Popen(self.argv, env=environ, cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def output(self) -> str:
        out, err = self.proc.communicate(timeout=10)
        return out + err


@pytest.fixture
def workers(redis_server, namespace):
    started: list[Worker] = []

    def start(*args, url=None, **kw) -> Worker:
        w = Worker(url or redis_server.url, namespace, *args, **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def run_cli(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "qdeploy", *args], env=environ, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def argv_of(proc) -> list[str]:
    """A worker master's command line, also when its process title was set: the title keeps the
    original arguments after "master: " (as Celery's does)."""
    cmdline = [part for part in proc.cmdline() if part]
    title = " ".join(cmdline)  # psutil splits a long title at its spaces, a short one not
    if title.startswith("qdeploy worker ") and " master: " in title:
        return shlex.split(title.partition(" master: ")[2])
    return cmdline


@pytest.fixture
def tapp(redis_server, namespace):
    """A producer app for tests/integration/tasks.py's tasks, in this test's namespace."""
    return App("itest", broker=redis_server.url, namespace=namespace)


@pytest.fixture
def masters(redis_server, namespace, tmp_path):
    """Start real `qdeploy worker` masters (with --allow-root unless root=True); killed at the end."""
    from tests.integration.workers import Master

    started: list = []

    def start(*args, root=False, **kw):
        m = Master(redis_server.url, namespace, tmp_path, *([] if root else ["--allow-root"]), *args, **kw)
        started.append(m)
        return m

    yield start
    for m in started:
        if m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait()
