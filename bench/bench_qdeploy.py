"""The qdeploy side of the benchmark: one no-op task that records its run (see benchtask)."""

import os
import time

from benchtask import record
from qdeploy import App

app = App("bench", broker=os.environ.get("BENCH_REDIS_URL"), namespace="bench")


@app.task(name="bench.noop", ignore_result=True)
def noop(i):
    record(i)


@app.task(name="bench.io", ignore_result=True)
def io(i, seconds):
    """I/O-bound: wait like an HTTP call or an SMTP send would (bench/io.py)."""
    time.sleep(seconds)
    record(i)
