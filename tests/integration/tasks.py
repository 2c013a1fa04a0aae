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


@app.task(name="t.pid")
def pid(tag=None):
    """Which process ran it (recycling tests), counted per tag."""
    if tag:
        _count(f"runs:{tag}")
    return os.getpid()


@app.task(name="t.span")
def span(tag, seconds=0.0):
    """When and where it ran: [pid, start, end] (overlap tests), counted per tag."""
    start = time.time()
    _count(f"runs:{tag}")
    time.sleep(seconds)
    return [os.getpid(), start, time.time()]


@app.task(name="t.env")
def env(name):
    return os.environ.get(name)


@app.task(name="t.stuck", bind=True)
def stuck(self, seconds):
    """Sleep with SIGALRM blocked, like a task stuck in C code: only the master can stop it."""
    import signal

    _count(f"runs:{self.request.id}")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(seconds)
    return "finished"


@app.task(name="t.soft")
def soft(seconds):
    from qdeploy.core.app import SoftTimeLimitExceeded

    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


_leaked: list = []


@app.task(name="t.spin")
def spin(seconds):
    """Busy Python code (no blocking C call): a soft limit interrupts it anywhere."""
    from qdeploy.core.app import SoftTimeLimitExceeded

    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            pass
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@app.task(name="t.hog", bind=True)
def hog(self, megabytes, hold=0.0, leak=False):
    """Allocate `megabytes` MiB for `hold` seconds; with `leak`, never free them."""
    _count(f"runs:{self.request.id}")
    block = bytearray(int(megabytes) * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(hold)
    if leak:
        _leaked.append(block)
    return os.getpid()


def _die_if_forked_by_the_master():
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
        if b" master: " in fh.read():  # the master's title: not the --detach forks, pool children
            os._exit(9)


if os.environ.get("QDEPLOY_TEST_CHILD_BOOT_FAILS"):  # every child of the pool dies at once
    os.register_at_fork(after_in_child=_die_if_forked_by_the_master)
