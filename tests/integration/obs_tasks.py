"""Tasks of the observability tests (issue 21): `-A tests.integration.obs_tasks:app`.

Broker and namespace from $QDEPLOY_BROKER / $QDEPLOY_NAMESPACE. max_deliveries is 1, so a task
that crashes its child runs once and is then dead-lettered: one crash, exactly.
"""

import os
import signal
import time

from qdeploy import App

app = App("obstest", broker=os.environ.get("QDEPLOY_BROKER"),
          namespace=os.environ.get("QDEPLOY_NAMESPACE", "qdeploy"), max_deliveries=1)


@app.task(name="o.ok")
def ok(x, secret=None):
    return x


@app.task(name="o.fail")
def fail():
    raise ValueError("bad input")


@app.task(name="o.retry_once", bind=True)
def retry_once(self):
    if self.request.retries == 0:
        self.retry(exc=KeyError("not yet"), countdown=0.01)
    return "retried"


@app.task(name="o.say")
def say(text, seconds=0.0):
    print(text)  # reaches the log at once, not when the child exits
    time.sleep(seconds)
    return text


@app.task(name="o.close_stdout")
def close_stdout():
    os.close(1)
    print("printed after closing fd 1")
    return "closed"


@app.task(name="o.crash")
def crash():
    os._exit(137)


@app.task(name="o.stuck")
def stuck(seconds):
    """Sleep with SIGALRM blocked: only the master's hard limit stops it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(seconds)
    return "finished"


_kept: list = []


@app.task(name="o.hog")
def hog(megabytes):
    block = bytearray(int(megabytes) * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    _kept.append(block)  # the child's current memory stays high after the task
    return os.getpid()


@app.task(name="o.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="o.send_one")
def send_one():
    """Sends a task from inside a task: with events on, a task-sent event names it."""
    return ok.delay(7).id
