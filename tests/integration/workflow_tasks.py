"""Workflow tasks for real worker subprocesses (`-A tests.integration.workflow_tasks:app`):
every run is counted in Redis under `<ns>:test:*`, so a test can prove how often each ran."""

import json
import os
import random
import time

from qdeploy import App

app = App("wtest", broker=os.environ.get("QDEPLOY_BROKER"),
          namespace=os.environ.get("QDEPLOY_NAMESPACE", "qdeploy"),
          max_deliveries=int(os.environ.get("QDEPLOY_MAX_DELIVERIES", "20")))


def _count(name: str) -> int:
    return app.transport.client.incr(f"{app.namespace}:test:{name}")


@app.task(name="w.part")
def part(i, pause=0.02):
    _count(f"part:{i}")
    time.sleep(random.uniform(0, pause))
    return i


@app.task(name="w.collect")
def collect(results):
    _count("body")
    app.transport.client.rpush(f"{app.namespace}:test:bodies", json.dumps(results))
    return len(results)


@app.task(name="w.step")
def step(x, i, pause=0.1):
    _count(f"step:{i}")
    app.transport.client.set(f"{app.namespace}:test:running", i)
    time.sleep(pause)
    return x + 1


@app.task(name="w.limited", rate_limit="120/m")
def limited(i):
    app.transport.client.rpush(f"{app.namespace}:test:limited", f"{time.time()!r}")
    return i


@app.task(name="w.stamp")
def stamp():
    return time.time()
