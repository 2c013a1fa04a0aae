"""The Celery side: prefork, at-least-once (acks_late, reject_on_worker_lost), prefetch 1, no
result backend, the same no-op task."""

import os
import time

from celery import Celery

from benchtask import record

app = Celery("bench_celery", broker=os.environ.get("BENCH_REDIS_URL"))
app.conf.update(
    task_acks_late=True,               # ack after the task ran: at-least-once, like qdeploy
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,      # one reserved message per process, like qdeploy
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop(i):
    record(i)


@app.task(name="bench.io")
def io(i, seconds):
    """I/O-bound: wait like an HTTP call or an SMTP send would (bench/io.py)."""
    time.sleep(seconds)
    record(i)
