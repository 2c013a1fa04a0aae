"""The Dramatiq side: Redis broker, no retries, the same no-op task (acked after it ran)."""

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchtask import record

broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL"))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="default", max_retries=0)
def noop(i):
    record(i)


@dramatiq.actor(queue_name="default", max_retries=0, time_limit=600_000)
def io(i, seconds):
    """I/O-bound: wait like an HTTP call or an SMTP send would (bench/io.py)."""
    time.sleep(seconds)
    record(i)
