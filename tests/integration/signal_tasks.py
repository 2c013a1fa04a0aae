"""An app whose signal receivers record every signal they get, in Redis (`<ns>:test:signals`,
JSON `[signal, pid, detail]`), for tests/integration/test_signals_worker.py."""

import json
import os

from qdeploy import App, signals

app = App("stest", broker=os.environ.get("QDEPLOY_BROKER"),
          namespace=os.environ.get("QDEPLOY_NAMESPACE", "qdeploy"))


def record(name: str, detail=None) -> None:
    app.transport.client.rpush(f"{app.namespace}:test:signals", json.dumps([name, os.getpid(), detail]))


def _task_name(sender, kwargs):
    request = kwargs.get("request")
    return getattr(sender, "name", None) or getattr(request, "task", None)


def receiver(name):
    def receive(sender=None, **kwargs):
        if name == "worker_process_init" and os.environ.get("QDEPLOY_TEST_PROCESS_INIT_FAILS"):
            raise RuntimeError("db down")
        detail = _task_name(sender, kwargs)
        if name == "worker_shutting_down":
            detail = kwargs.get("how")
        elif name == "worker_process_shutdown":
            detail = kwargs.get("exitcode")
        elif name == "task_postrun":
            detail = [detail, kwargs.get("state")]
        record(name, detail)
    receive.__qualname__ = f"record_{name}"
    return receive


_receivers = []
for _name in ("task_received", "task_prerun", "task_postrun", "task_success", "task_failure", "task_retry",
              "task_revoked", "task_unknown", "task_rejected", "worker_init", "worker_ready", "worker_shutting_down",
              "worker_shutdown", "worker_process_init", "worker_process_shutdown", "heartbeat_sent",
              "after_setup_logger"):
    _receivers.append(receiver(_name))
    getattr(signals, _name).connect(_receivers[-1])


@app.task(name="s.ok")
def ok(x):
    return x


@app.task(name="s.bad")
def bad():
    raise ValueError("bad")


@app.task(name="s.again", bind=True, max_retries=1)
def again(self):
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "second"


@app.task(name="s.headers", bind=True)
def headers(self):
    return self.request.headers


@app.task(name="s.pid")
def pid():
    return os.getpid()
