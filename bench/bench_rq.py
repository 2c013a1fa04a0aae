"""The RQ side: the same no-op task, run by `rq worker-pool` (results not kept)."""

from benchtask import record


def noop(i):
    record(i)
