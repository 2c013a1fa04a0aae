"""Start-up cost guards, each in a fresh interpreter: what a worker imports, and the deferred
`redis.asyncio` package still working for code that uses it."""

import subprocess
import sys


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_worker_does_not_load_the_asyncio_client_or_psutil():
    out = run("import sys, qdeploy.worker.boot, qdeploy.cli.worker\n"
              "print(sorted(m for m in ('redis.asyncio.client', 'psutil') if m in sys.modules))")
    assert out == "[]"


def test_redis_asyncio_still_works_for_code_that_uses_it():
    out = run("import qdeploy.core.broker, redis, redis.asyncio as aio\n"
              "from redis.asyncio import Redis\n"
              "assert aio.Redis is Redis is redis.asyncio.client.Redis\n"
              "assert hasattr(aio, 'Sentinel') and not hasattr(aio, 'NoSuchName')\n"
              "import redis.asyncio.cluster\n"
              "print(type(aio).__name__, aio.RedisCluster.__module__)")
    assert out == "_DeferredPackage redis.asyncio.cluster"


def test_nothing_is_deferred_when_redis_came_first():
    out = run("import redis, qdeploy.core.broker, sys\n"
              "print(type(sys.modules['redis.asyncio']).__name__, 'redis.asyncio.client' in sys.modules)")
    assert out == "module True"


def test_process_titles_without_setproctitle_cost_no_import_per_call():
    """setproctitle is optional. Without it, set_title (several calls per task and per recycled
    child) must not retry the failed import each time: that scanned sys.path on every call and
    cost a drain ~40 % of its rate."""
    out = run("import sys, builtins\n"
              "sys.modules['setproctitle'] = None  # as if not installed: importing it fails\n"
              "from qdeploy.worker import process\n"
              "seen, real = [], builtins.__import__\n"
              "builtins.__import__ = lambda name, *a, **k: (seen.append(name), real(name, *a, **k))[1]\n"
              "for _ in range(3): process.set_title('qdeploy worker w1 child 1: idle')\n"
              "builtins.__import__ = real\n"
              "print(seen)")
    assert out == "[]"


def test_process_titles_are_set_when_setproctitle_is_installed():
    out = run("import setproctitle\n"
              "from qdeploy.worker import process\n"
              "process.set_title('qdeploy worker w1 child 1: idle')\n"
              "print(setproctitle.getproctitle())")
    assert out == "qdeploy worker w1 child 1: idle"
