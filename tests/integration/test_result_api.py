"""AsyncResult's Celery API against a real worker: state/status, result/info, traceback,
date_done, name, retries, children/parent, forget, get(propagate=False), revoke(terminate=True)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from qdeploy import AsyncResult
from tests.integration.conftest import drain, wait_until


def test_the_result_api_on_finished_tasks(app):
    @app.task(name="r.add", bind=True)
    def add(self, x, y):
        if self.request.retries == 0 and x < 0:
            raise self.retry(countdown=0)
        return x + y

    @app.task(name="r.parent")
    def parent():
        return add.delay(1, 1).id

    @app.task(name="r.bad")
    def bad():
        raise LookupError("gone")

    ok, failing, retried, outer = add.delay(2, 3), bad.delay(), add.delay(-1, 5), parent.delay()
    drain(app, 6)
    res = AsyncResult(id=ok.id, app=app)
    assert (res.state, res.status, res.result, res.info, res.name) == ("SUCCESS", "SUCCESS", 5, 5, "r.add")
    assert isinstance(res.date_done, datetime) and res.date_done.tzinfo is timezone.utc
    assert res.traceback is None and res.retries == 0 and res.successful() and not res.failed()
    assert AsyncResult(retried.id, app).get(timeout=1) == 4 and AsyncResult(retried.id, app).retries == 1
    fail = AsyncResult(failing.id, app)
    assert fail.failed() and isinstance(fail.result, LookupError) and isinstance(fail.info, LookupError)
    assert fail.info["exc_type"] == "LookupError" and "Traceback" in fail.traceback  # also qdeploy's record
    assert isinstance(fail.get(propagate=False), LookupError)
    with pytest.raises(LookupError, match="gone"):
        fail.get(timeout=1)
    child_id = outer.get(timeout=1)
    assert [c.id for c in outer.children] == [child_id]
    child = AsyncResult(child_id, app)
    assert child.get(timeout=1) == 2 and child.parent.id == outer.id  # from the record's parent_id
    res.forget()
    assert AsyncResult(ok.id, app).state == "PENDING"


def test_revoke_with_terminate_stops_a_running_task(masters, tapp):
    m = masters("-c", "1").ready()
    res = tapp.send_task("t.slow", [30, "victim"])
    wait_until(lambda: res.state == "RECEIVED", 10, what="the task to start")
    victim = m.children()[0]
    res.revoke(terminate=True)
    wait_until(lambda: res.state == "REVOKED", 15, what="REVOKED")
    wait_until(lambda: not victim.is_running() or victim.status() == "zombie", 10, what="the child killed")
    assert res.ready() and not res.successful()
