"""The qdeploy side of the benchmark: one no-op task that records its run (see benchlib)."""

import os

from benchlib import record
from qdeploy import App

app = App("bench", broker=os.environ.get("BENCH_REDIS_URL"), namespace="bench")


@app.task(name="bench.noop", ignore_result=True)
def noop(i):
    record(i)
