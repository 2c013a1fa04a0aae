"""One adapter per system under test: how to start its worker and how a single client enqueues.

Every adapter runs the same task (`noop(i)`: record `i` and the start time, see benchlib) from
its own module (bench_<system>.py), with 2 worker processes. The choices made for the peers:

* Celery: prefork `-c 2`, `task_acks_late=True` + `task_reject_on_worker_lost=True` (at-least-once,
  like qdeploy), `worker_prefetch_multiplier=1`, no result backend, and `--without-gossip
  --without-mingle --without-heartbeat` (the usual production advice; mingle alone adds ~1 s to
  start-up). Batched enqueue = `group(...).apply_async()` (Celery has no pipelined publish).
* RQ: `rq worker-pool -n 2`; its default `Worker` forks a work horse per job (RQ's own way of
  isolating jobs, i.e. it behaves like max-tasks-per-child=1); `rq-simple` is the same pool
  with `-w rq.worker.SimpleWorker` (no fork). Jobs are enqueued with `result_ttl=0`. RQ is not
  at-least-once: a job whose worker dies is moved to the failed registry, not re-run.
* Dramatiq: `dramatiq -p 2 -t 1` and `-t 8` (8 is its default), Redis broker, `max_retries=0`;
  messages are acked after the actor ran. Dramatiq has no batched enqueue (a group sends one by
  one) and no max-tasks-per-child.

Two references that are not task queues, for the drain workloads only (`reference = True`):
`floor` is bench/floor.py, the least a fork-based Python worker can do per task and per recycled
process on this machine, and `floor+redis` the same with redis-py imported into its parent.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys
from pathlib import Path


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class System:
    key = ""
    family = ""  # the distribution; variants of one family share the producer measurements
    label = ""
    supports_mtpc = False
    reference = False  # a reference (bench/floor.py) is measured in the drain workloads only

    def version(self) -> str | None:
        return _version(self.family)

    def available(self) -> bool:
        if self.version() is None:
            return False
        try:
            self.module()
        except Exception as exc:  # noqa: BLE001 - a broken peer install is just "not available"
            print(f"  {self.key}: not available ({type(exc).__name__}: {exc})", file=sys.stderr)
            return False
        return True

    def module(self):
        return importlib.import_module(f"bench_{self.family}")

    def worker_argv(self, url: str, mtpc: int | None) -> list[str] | None:
        raise NotImplementedError

    def enqueue_one(self, indices) -> None:
        raise NotImplementedError

    def enqueue_batch(self, indices) -> None:
        raise NotImplementedError

    batch_how = ""

    # -- filling Redis for the growth curves (bench/growth.py) ---------------------------------
    # Each family's fastest way to put many waiting tasks into Redis with its own producer code,
    # so the bytes and keys are exactly what the system writes; `eta` (a unix time) schedules
    # them instead. `waiting` counts what waits (ready + scheduled), to check a fill landed whole.
    fills_eta = False

    def fill(self, indices, eta: float | None = None) -> None:
        raise NotImplementedError

    def waiting(self, client) -> int:
        raise NotImplementedError


class Qdeploy(System):
    key = family = "qdeploy"
    label = "qdeploy -c 2"
    supports_mtpc = True
    batch_how = "task.map (send_many: one MULTI per 5000)"

    def worker_argv(self, url, mtpc):
        argv = [sys.executable, "-m", "qdeploy", "worker", "-A", "bench_qdeploy:app", "-b", url, "-c", "2",
                "--allow-root", "-l", "warning"]
        if mtpc:
            argv += ["--max-tasks-per-child", str(mtpc)]
        return argv

    def enqueue_one(self, indices):
        noop = self.module().noop
        for i in indices:
            noop.delay(i)

    def enqueue_batch(self, indices):
        self.module().noop.map(indices)

    fills_eta = True

    def fill(self, indices, eta=None):
        m = self.module()
        if eta is None:
            m.noop.map(indices)
        else:
            m.app.send_many((m.noop, (i,), {}, {"eta": eta}) for i in indices)

    def waiting(self, client):
        return int(client.llen("bench:q:default")) + int(client.zcard("bench:eta:default"))


class Celery(System):
    key = family = "celery"
    label = "Celery prefork -c 2"
    supports_mtpc = True
    batch_how = "group(...).apply_async()"

    def worker_argv(self, url, mtpc):
        argv = [sys.executable, "-m", "celery", "-A", "bench_celery", "-b", url, "worker", "-P", "prefork",
                "-c", "2", "-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        if mtpc:
            argv += ["--max-tasks-per-child", str(mtpc)]
        return argv

    def enqueue_one(self, indices):
        noop = self.module().noop
        for i in indices:
            noop.delay(i)

    def enqueue_batch(self, indices):
        from celery import group

        noop = self.module().noop
        group(noop.s(i) for i in indices).apply_async()

    fills_eta = True

    def fill(self, indices, eta=None):
        """`apply_async` inside kombu's `Producer.batch()` (kombu >= 5.6: one pipeline per 1000
        publishes); Celery itself has no batched publish. An older kombu: one by one."""
        from contextlib import nullcontext
        from datetime import datetime, timezone

        m = self.module()
        options = {"eta": datetime.fromtimestamp(eta, timezone.utc)} if eta is not None else {}
        with m.app.producer_or_acquire() as producer:
            batch = getattr(producer, "batch", None)
            with batch(1000) if batch else nullcontext():
                for i in indices:
                    m.noop.apply_async((i,), producer=producer, **options)

    def waiting(self, client):
        return int(client.llen("celery"))


class RQ(System):
    key = family = "rq"
    label = "RQ worker-pool -n 2 (fork per job)"
    worker_class = None
    batch_how = "Queue.enqueue_many (pipeline)"

    def _queue(self):
        import os

        import redis
        from rq import Queue

        if getattr(self, "_q", None) is None:
            self._q = Queue("default", connection=redis.Redis.from_url(os.environ["BENCH_REDIS_URL"]))
        return self._q

    def worker_argv(self, url, mtpc):
        if mtpc and mtpc != 1:
            return None  # worker-pool has no max-jobs-per-worker; its horse is a fork per job
        if mtpc == 1 and self.worker_class:
            return None
        # the rq next to this interpreter (its venv, whether or not it is on PATH), else PATH's
        rq = shutil.which("rq", path=str(Path(sys.executable).parent)) or shutil.which("rq") or "rq"
        argv = [rq, "worker-pool", "-n", "2", "-u", url, "-q"]
        if self.worker_class:
            argv += ["-w", self.worker_class]
        return argv + ["default"]

    def enqueue_one(self, indices):
        noop, q = self.module().noop, self._queue()
        for i in indices:
            q.enqueue(noop, i, result_ttl=0)

    def enqueue_batch(self, indices, chunk: int = 5000):
        from rq import Queue

        noop, q, indices = self.module().noop, self._queue(), list(indices)
        for start in range(0, len(indices), chunk):
            q.enqueue_many([Queue.prepare_data(noop, (i,), result_ttl=0) for i in indices[start:start + chunk]])

    def fill(self, indices, eta=None):
        if eta is not None:
            raise ValueError("rq: the bench has no ETA fill for it")
        self.enqueue_batch(indices)

    def waiting(self, client):
        return int(client.llen("rq:queue:default"))


class RQSimple(RQ):
    key = "rq-simple"
    label = "RQ worker-pool -n 2 -w SimpleWorker"
    worker_class = "rq.worker.SimpleWorker"


class Dramatiq(System):
    key = "dramatiq-t1"
    family = "dramatiq"
    label = "Dramatiq -p 2 -t 1"
    threads = 1
    batch_how = "group(...).run() (sends one by one)"

    def worker_argv(self, url, mtpc):
        if mtpc:
            return None
        return [sys.executable, "-m", "dramatiq", "bench_dramatiq", "-p", "2", "-t", str(self.threads)]

    def enqueue_one(self, indices):
        noop = self.module().noop
        for i in indices:
            noop.send(i)

    def enqueue_batch(self, indices):
        import dramatiq

        noop = self.module().noop
        dramatiq.group(noop.message(i) for i in indices).run()

    def fill(self, indices, eta=None, chunk: int = 1000):
        """`actor.send` as usual, its broker's dispatch script (Dramatiq's own Lua, one EVALSHA
        per message) sent in a redis-py pipeline per `chunk` messages: Dramatiq has no batched send."""
        if eta is not None:
            raise ValueError("dramatiq: the bench has no ETA fill for it")
        m = self.module()
        script, indices = m.broker.scripts["dispatch"], list(indices)
        try:
            for start in range(0, len(indices), chunk):
                pipe = m.broker.client.pipeline(transaction=False)
                m.broker.scripts["dispatch"] = _Piped(script, pipe)
                for i in indices[start:start + chunk]:
                    m.noop.send(i)
                pipe.execute()
        finally:
            m.broker.scripts["dispatch"] = script

    def waiting(self, client):
        return int(client.llen("dramatiq:default"))


class _Piped:
    """A redis-py Script called on a pipeline instead of the client it was registered on."""

    def __init__(self, script, pipe):
        self.script, self.pipe = script, pipe

    def __call__(self, keys=(), args=(), client=None):
        return self.script(keys=keys, args=args, client=self.pipe)


class Dramatiq8(Dramatiq):
    key = "dramatiq-t8"
    label = "Dramatiq -p 2 -t 8"
    threads = 8


class Floor(System):
    key = family = "floor"
    label = "bench/floor.py -p 2: fork, LMOVE, run, LREM, nothing else"
    supports_mtpc = True
    reference = True
    imports: tuple[str, ...] = ()

    def version(self):
        return "(reference)"

    def available(self) -> bool:
        return all(importlib.util.find_spec(name) for name in self.imports)

    def worker_argv(self, url, mtpc):
        argv = [sys.executable, str(Path(__file__).resolve().parent / "floor.py"), url,
                "--tasks-per-child", str(mtpc or 0)]
        return argv + [arg for name in self.imports for arg in ("--import", name)]

    def enqueue_batch(self, indices):
        import os

        import floor
        import redis

        floor.enqueue(redis.Redis.from_url(os.environ["BENCH_REDIS_URL"]), indices)


class FloorRedis(Floor):
    key = "floor+redis"
    label = "bench/floor.py -p 2 --import redis"
    imports = ("redis",)


ALL = [Qdeploy(), Celery(), RQ(), RQSimple(), Dramatiq(), Dramatiq8(), Floor(), FloorRedis()]

