"""Start-up cost guards, each in a fresh interpreter: what a worker imports, and the deferred
`redis` and `redis.asyncio` packages still working for code that uses them."""

import subprocess
import sys


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_worker_does_not_load_redis_py_s_clients_psutil_or_openssl():
    """Each is megabytes of RSS in the master and a cost for every fork and exit of a child:
    redis-py's clients ~14 MiB, hashlib's libcrypto 3.7, importlib.resources' imports ~2."""
    out = run("import sys, qdeploy.worker.boot, qdeploy.cli.worker, qdeploy.worker.master\n"
              "print(sorted(m for m in ('redis.asyncio.client', 'redis.client', 'redis.connection', 'psutil',"
              " 'hashlib', 'ssl', 'importlib.resources') if m in sys.modules))")
    assert out == "[]"


def test_redis_py_loads_on_first_use_of_one_of_its_names():
    out = run("import sys, qdeploy.core.broker\n"
              "from redis import exceptions\n"  # a submodule: alone
              "import redis, redis.retry\n"
              "before = 'redis.client' in sys.modules\n"
              "from redis import Redis\n"
              "print(before, Redis.__module__, exceptions.RedisError is redis.RedisError, bool(redis.__version__),"
              " type(redis).__name__, hasattr(redis, 'NoSuchName'))")
    assert out == "False redis.client True True _DeferredPackage False"
    listed = run("import sys, qdeploy, redis\n"
                 "print('Redis' in dir(redis), 'Sentinel' in dir(redis), 'redis.client' in sys.modules)")
    assert listed == "True True True"  # dir() loads the body: completion and inspect see every name


def test_threads_asking_for_redis_py_at_once_all_get_it():
    out = run("import threading, qdeploy, redis\n"
              "got, start = [], threading.Barrier(8)\n"
              "def ask():\n"
              "    start.wait()\n"
              "    got.append(redis.Redis.__name__)\n"
              "threads = [threading.Thread(target=ask) for _ in range(8)]\n"
              "for t in threads: t.start()\n"
              "for t in threads: t.join()\n"
              "print(sorted(set(got)), len(got))")
    assert out == "['Redis'] 8"


def test_a_redis_py_that_fails_to_load_says_so_every_time():
    out = run("import qdeploy, redis\n"
              "def boom(module): raise ImportError('No module named secrets')\n"
              "redis.__spec__.loader.exec_module = boom\n"
              "for _ in range(2):\n"
              "    try:\n"
              "        redis.Redis\n"
              "    except ImportError as exc:\n"
              "        print(exc)")
    assert out == "No module named secrets\nredis could not be loaded: No module named secrets"


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
