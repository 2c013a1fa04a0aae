"""Seed 003 (shared/seeds/003_*.txt), its "高級語法" example: every option of the decorator line
works together (only the import line adapted)."""

from __future__ import annotations

from qdeploy import App as Celery  # the seed: from celery import Celery
from qdeploy import Task

app = Celery("wedo")


class RollbackTask(Task):  # the seed's base class, not shown there
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        rolled_back.append(task_id)


rolled_back: list = []


@app.task(bind=True, base=RollbackTask, rate_limit='500/m', ignore_result=True, max_retries=0)
def my_task(self, x, y):
    if x < 0:
        raise ValueError("negative")
    return x + y


def test_the_advanced_decorator_line():
    assert isinstance(my_task, RollbackTask) and my_task.rate == 500 / 60 and my_task.ignore_result
    assert my_task.max_retries == 0 and my_task.bind
    assert my_task.apply((1, 2)).get() == 3
    failed = my_task.apply((-1, 2))
    assert failed.failed() and rolled_back == [failed.id]


def test_it_runs_on_a_worker_rate_limited_without_a_result(qdeploy_use):
    qdeploy_use(app)
    from qdeploy.testing import ThreadWorker
    from tests.integration.conftest import wait_until

    worker = ThreadWorker(app)
    try:
        res = my_task.delay(2, 3)
        wait_until(lambda: app.transport.client.llen(f"{app.namespace}:q:default") == 0
                   and not app.transport.client.hlen(f"{app.namespace}:msg"), 10, what="the task to run")
        assert res.state == "PENDING" and app.transport.client.hexists(f"{app.namespace}:rate", my_task.name)
    finally:
        worker.stop()
