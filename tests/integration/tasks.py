"""Tasks the integration tests run in real worker subprocesses (`-A tests.integration.tasks:app`).

Broker and namespace from $QDEPLOY_BROKER / $QDEPLOY_NAMESPACE, like the demo app. Executions
are counted in Redis under `<ns>:test:*`, so a test can prove how often a body really ran.
"""

import os
import time

from qdeploy import App

app = App("itest", broker=os.environ.get("QDEPLOY_BROKER"),
          namespace=os.environ.get("QDEPLOY_NAMESPACE", "qdeploy"),
          visibility_timeout=float(os.environ.get("QDEPLOY_VISIBILITY_TIMEOUT", "30")),
          max_deliveries=int(os.environ.get("QDEPLOY_MAX_DELIVERIES", "5")))


def _count(name: str) -> int:
    return app.transport.client.incr(f"{app.namespace}:test:{name}")


@app.task(name="t.slow_once", bind=True)
def slow_once(self, seconds):
    """Count the run; sleep only on the first delivery (a redelivery completes at once)."""
    _count(f"runs:{self.request.id}")
    if self.request.deliveries == 1:
        time.sleep(seconds)
    return self.request.deliveries


@app.task(name="t.slow")
def slow(seconds, tag="x"):
    _count(f"runs:{tag}")
    time.sleep(seconds)
    return tag


@app.task(name="t.nap")
def nap(seconds, value):
    """No Redis inside: survives a broker restart while running."""
    time.sleep(seconds)
    return value


@app.task(name="t.crash")
def crash():
    """Die like an OOM-killed process: no exception, no ack."""
    _count("crash")
    os._exit(137)
