"""A small demo app, shipped in the package: the default `-A` of rendered configs and tests.

    QDEPLOY_BROKER=redis://127.0.0.1:6379/0 qdeploy worker --pool solo -A qdeploy.demo:app
    qdeploy enqueue demo.add 2 3 --wait

Broker from $QDEPLOY_BROKER (default redis://127.0.0.1:6379/0), namespace from
$QDEPLOY_NAMESPACE (default "qdeploy").
"""

from __future__ import annotations

import os
import time

from qdeploy.core.app import App

app = App("demo", broker=os.environ.get("QDEPLOY_BROKER"),
          namespace=os.environ.get("QDEPLOY_NAMESPACE", "qdeploy"))


@app.task(name="demo.add")
def add(x, y):
    return x + y


@app.task(name="demo.echo")
def echo(*args, **kwargs):
    """Return what it was given (a no-op for benchmarks and smoke tests)."""
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="demo.noop", ignore_result=True)
def noop():
    return None


@app.task(name="demo.sleep", track_started=True)
def sleep(seconds=1.0):
    time.sleep(float(seconds))
    return seconds


@app.task(name="demo.fail", max_retries=0)
def fail(message="demo failure"):
    raise RuntimeError(message)


@app.task(name="demo.allocate", track_started=True)
def allocate(megabytes=10, hold=0.0):
    """Allocate and touch `megabytes` MiB (for max-memory-per-child tests), hold it, free it."""
    block = bytearray(int(megabytes) * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(float(hold))
    return len(block)
