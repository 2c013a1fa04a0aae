"""Tasks of the task-history and dashboard tests (`-A tests.integration.history_tasks:app`).

Broker and namespace from $QDEPLOY_BROKER / $QDEPLOY_NAMESPACE. One task name is hostile on
purpose: markup in a name must reach every page as text."""

import os
import time

from qdeploy import App

app = App("htest", broker=os.environ.get("QDEPLOY_BROKER"),
          namespace=os.environ.get("QDEPLOY_NAMESPACE", "qdeploy"))

XSS_NAME = "h.<img/src=x/onerror=document.title='pwned'>"


@app.task(name="h.add")
def add(x, y):
    return x + y


@app.task(name="h.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="h.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="h.flaky", bind=True, max_retries=3)
def flaky(self, tag):
    """Fails until the counter under `tag` reaches 2: a retried task with two attempts."""
    n = app.transport.client.incr(f"{app.namespace}:test:flaky:{tag}")
    if n < 2:
        raise self.retry(countdown=0.05, exc=RuntimeError(f"attempt {n}"))
    return n


@app.task(name="h.once")
def once(tag):
    """Fails the first time it runs for `tag`, succeeds after (a retry from the dashboard)."""
    n = app.transport.client.incr(f"{app.namespace}:test:once:{tag}")
    if n == 1:
        raise KeyError(f"first run of {tag}")
    return n


@app.task(name=XSS_NAME)
def hostile(payload):
    raise RuntimeError(payload)


@app.task(name="h.stuck")
def stuck(seconds):
    """SIGALRM blocked, like a task stuck in C code: only the master's hard limit stops it."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(seconds)
    return "finished"


@app.task(name="h.crash_once")
def crash_once(tag):
    """Dies like an OOM-killed process the first time it runs for `tag`; succeeds after."""
    if app.transport.client.incr(f"{app.namespace}:test:crash:{tag}") == 1:
        os._exit(137)
    return "survived"
