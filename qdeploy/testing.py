"""`qdeploy.testing`: a pytest plugin for testing code that uses qdeploy (Celery's
`celery.contrib.pytest`). Installed with qdeploy and loaded by pytest through its entry point
(`pytest11`), so its fixtures are there in any project that depends on qdeploy:

    qdeploy_redis        (session) a private redis-server on a free port (`redis-server` must be on
                         PATH), or the Redis in $QDEPLOY_TEST_BROKER; every test gets its own
                         namespace, so nothing is ever flushed and tests never see each other
    qdeploy_app          an App on it; override it to test your own app (see `qdeploy_use`)
    qdeploy_use(app)     point your app at the private Redis and a fresh namespace for this test
    qdeploy_worker       a real worker for `qdeploy_app`, consuming in threads of this process,
                         started before the test and stopped after it
    qdeploy_worker_process(path, *args)
                         a real `qdeploy worker` subprocess for the app at `module:attribute`

    # tests/conftest.py
    import pytest
    from proj.celery import app as proj_app

    @pytest.fixture
    def qdeploy_app(qdeploy_use):
        return qdeploy_use(proj_app)

    # tests/test_tasks.py
    def test_add(qdeploy_app, qdeploy_worker):
        from proj.tasks import add
        assert add.delay(2, 2).get(timeout=10) == 4

Tasks run for real (messages, Redis, results), unlike `task_always_eager`; eager mode
(`task.apply()`) is there for tests that need no Redis. The worker threads run tasks as a
`-P threads` pool does: soft and hard time limits are not enforced in them (use
`qdeploy_worker_process` for tests of time limits).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from qdeploy.core.app import App

BROKER_ENV = "QDEPLOY_TEST_BROKER"


class RedisForTests:
    """A redis-server of the test session (or the one $QDEPLOY_TEST_BROKER names)."""

    def __init__(self, url: str, proc: subprocess.Popen | None = None, directory: str | None = None):
        self.url, self.proc, self.directory = url, proc, directory

    @classmethod
    def start(cls) -> RedisForTests:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(f"qdeploy.testing needs redis-server on PATH (apt-get install redis-server), "
                        f"or ${BROKER_ENV}=redis://... naming a Redis the tests may write to", pytrace=False)
        directory = tempfile.mkdtemp(prefix="qdeploy-test-redis-")
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = cls(f"redis://127.0.0.1:{port}/0", proc, directory)
        server.wait_up()
        return server

    def wait_up(self, timeout: float = 10.0) -> None:
        from qdeploy.core.connection import BROKER_DOWN, connect

        client, deadline = connect(self.url, retries=0), time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return
            except BROKER_DOWN:
                if (self.proc is not None and self.proc.poll() is not None) or time.monotonic() > deadline:
                    pytest.fail(f"qdeploy.testing: the test Redis at {self.url} did not come up", pytrace=False)
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def qdeploy_redis() -> Iterator[RedisForTests]:
    url = os.environ.get(BROKER_ENV)
    server = RedisForTests(url) if url else RedisForTests.start()
    if url:
        server.wait_up()
    yield server
    server.stop()


@pytest.fixture
def qdeploy_namespace() -> str:
    return f"test{uuid.uuid4().hex[:12]}"


@pytest.fixture
def qdeploy_use(qdeploy_redis, qdeploy_namespace):
    """`qdeploy_use(app)`: the app talks to the private Redis, in this test's namespace, until
    the test ends (then its settings are put back)."""
    changed: list[tuple[App, dict]] = []

    def use(app: App) -> App:
        changed.append((app, {"broker": app.broker, "namespace": app.namespace, "result_backend": app.result_backend}))
        app.configure(broker=qdeploy_redis.url, namespace=qdeploy_namespace, result_backend=None)
        return app

    yield use
    for app, settings in reversed(changed):
        app.configure(**settings)


@pytest.fixture
def qdeploy_app(qdeploy_use) -> App:
    """An empty App on the private Redis; override this fixture to test your own app."""
    return qdeploy_use(App("qdeploy-test"))


class ThreadWorker:
    """Consumers of `app` in threads of this process, until `stop()`."""

    def __init__(self, app: App, queues: list[str] | None = None, concurrency: int = 1):
        from qdeploy.worker.child import Consumer

        self.app, self.queues = app, list(queues or [app.default_queue])
        self._stopping = threading.Event()
        tag = uuid.uuid4().hex[:8]
        self.consumers = [Consumer(app, self.queues, f"test-{tag}-{i}@{os.getpid()}", poll_interval=0.02)
                          for i in range(concurrency)]
        self.threads = [threading.Thread(target=c.run, kwargs={"should_stop": self._stopping.is_set},
                                         name=c.id, daemon=True) for c in self.consumers]
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        for thread in self.threads:
            thread.join(timeout)
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"qdeploy.testing: worker threads {alive} still run a task after {timeout}s")


@pytest.fixture
def qdeploy_worker(qdeploy_app) -> Iterator[ThreadWorker]:
    worker = ThreadWorker(qdeploy_app)
    yield worker
    worker.stop()


TARGET_ENV, NAMESPACE_ENV = "QDEPLOY_TEST_APP", "QDEPLOY_TEST_NAMESPACE"


def __getattr__(name: str):
    """`-A qdeploy.testing:worker_app` in a worker subprocess: the app named by $QDEPLOY_TEST_APP,
    pointed at the test's namespace (an app's namespace is set in its code, not by a flag)."""
    if name != "worker_app":
        raise AttributeError(name)
    from qdeploy.core.app import load_app

    app = load_app(os.environ[TARGET_ENV])
    return app.configure(namespace=os.environ[NAMESPACE_ENV])


class ProcessWorker:
    """A `qdeploy worker` subprocess (a real master and children, or `--pool solo`)."""

    def __init__(self, app: App, path: str, *args: str, cwd: str | None = None):
        env = dict(os.environ, QDEPLOY_BROKER=app.broker_url, QDEPLOY_NAMESPACE=app.namespace,
                   PYTHONPATH=os.pathsep.join(filter(None, [cwd or os.getcwd(), os.environ.get("PYTHONPATH")])),
                   **{TARGET_ENV: path, NAMESPACE_ENV: app.namespace})
        env.pop("QDEPLOY_CONFIG", None)
        self.argv = [sys.executable, "-m", "qdeploy", "worker", "-A", "qdeploy.testing:worker_app", "-b", app.broker_url,
                     "--allow-root", "-n", f"test{uuid.uuid4().hex[:8]}@test", *args]
        self.log = Path(tempfile.mkstemp(prefix="qdeploy-test-worker-", suffix=".log")[1])
        self.proc = subprocess.Popen(self.argv, env=env, cwd=cwd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self.log.unlink(missing_ok=True)


@pytest.fixture
def qdeploy_worker_process(qdeploy_app):
    """`qdeploy_worker_process("proj.celery:app", "-c", "2")`: that app, on the test's Redis and
    namespace, in a real `qdeploy worker`; stopped (TERM) after the test."""
    started: list[ProcessWorker] = []

    def start(path: str, *args: str, cwd: str | None = None) -> ProcessWorker:
        worker = ProcessWorker(qdeploy_app, path, *args, cwd=cwd)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.stop()
