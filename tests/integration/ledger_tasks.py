"""Tasks for the failover tests (`-A tests.integration.ledger_tasks:app`): every run that completes
is written to a *ledger*, a private single redis-server outside the broker under test
($QDEPLOY_LEDGER), so the accounting survives whatever the failover does to the broker:

    done          hash   task number -> completed runs
    runs:<n>      list   "pid:deliveries:queue" per completed run (to explain a duplicate)

The writes retry for a while: a completed run is never forgotten because of a hiccup.
"""

import os
import time

import redis

from qdeploy import App

app = App("ledger", broker=os.environ.get("QDEPLOY_BROKER"),
          namespace=os.environ.get("QDEPLOY_NAMESPACE", "qdeploy"),
          visibility_timeout=float(os.environ.get("QDEPLOY_VISIBILITY_TIMEOUT", "30")),
          max_deliveries=int(os.environ.get("QDEPLOY_MAX_DELIVERIES", "10")))
_ledger = None


def ledger() -> redis.Redis:
    global _ledger
    if _ledger is None:
        _ledger = redis.Redis.from_url(os.environ["QDEPLOY_LEDGER"], socket_timeout=5)
    return _ledger


def record(number: int, deliveries: int, queue: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            pipe = ledger().pipeline(transaction=True)
            pipe.hincrby("done", str(number), 1)
            pipe.rpush(f"runs:{number}", f"{os.getpid()}:{deliveries}:{queue}")
            pipe.execute()
            return
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@app.task(name="l.work", bind=True)
def work(self, number, seconds, queue="?"):
    time.sleep(seconds)
    record(number, self.request.deliveries, queue)
    return number
