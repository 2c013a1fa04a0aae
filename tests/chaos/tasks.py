"""Tasks the chaos run executes in real `qdeploy worker` masters (`-A tests.chaos.tasks:app`).

Every execution of `chaos.work` that *completes* leaves a trace in Redis (the broker, or the ledger
$QDEPLOY_LEDGER when set): `<ns>:chaos:done` (hash task number -> completed runs) and
`<ns>:chaos:runs:<n>` (a list of "pid:deliveries", one per completed run) so that a duplicate
can be explained afterwards. The writes retry while Redis is
being restarted: a completed run is never forgotten because the broker happened to be down.
"""

import os
import signal
import time

import redis

from qdeploy import App

app = App("chaos", broker=os.environ.get("QDEPLOY_BROKER"),
          namespace=os.environ.get("QDEPLOY_NAMESPACE", "qdeploy"),
          visibility_timeout=float(os.environ.get("QDEPLOY_VISIBILITY_TIMEOUT", "30")),
          max_deliveries=int(os.environ.get("QDEPLOY_MAX_DELIVERIES", "5")))


_ledger = None


def _recorder():
    """The broker's client, or a ledger outside it ($QDEPLOY_LEDGER: the cluster chaos run, whose
    failovers may lose what the broker was told last)."""
    global _ledger
    if "QDEPLOY_LEDGER" not in os.environ:
        return app.transport.client
    if _ledger is None:
        _ledger = redis.Redis.from_url(os.environ["QDEPLOY_LEDGER"], socket_timeout=5)
    return _ledger


def _record(number: int, deliveries: int) -> None:
    ns = app.namespace
    deadline = time.monotonic() + 120
    while True:
        try:
            pipe = _recorder().pipeline(transaction=True)
            pipe.hincrby(f"{ns}:chaos:done", str(number), 1)
            pipe.rpush(f"{ns}:chaos:runs:{number}", f"{os.getpid()}:{deliveries}")
            pipe.execute()
            return
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@app.task(name="chaos.work", bind=True)
def work(self, number, seconds):
    """The stream: sleep like real work, then record the completion."""
    time.sleep(seconds)
    _record(number, self.request.deliveries)
    return number


_leaked: list = []


@app.task(name="chaos.leak")
def leak(megabytes):
    """Allocate and never free: the child's RSS stays over max_memory_per_child afterwards."""
    block = bytearray(int(megabytes) * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    _leaked.append(block)
    return os.getpid()


@app.task(name="chaos.hang", time_limit=2.0)
def hang():
    """Stuck like C code (SIGALRM blocked): only the master's hard time limit can end it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(3600)
