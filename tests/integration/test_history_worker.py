"""The task history as real worker masters write it: every outcome with its name (a task killed
at its hard time limit too), retries as attempts, a child that dies, a HUP reload, the settings."""

from __future__ import annotations

import signal
import time

from qdeploy import App
from qdeploy.ops.history import HistoryStore
from tests.integration.conftest import wait_until

APP = "tests.integration.history_tasks:app"


def _app(redis_server, namespace):
    return App("htest", broker=redis_server.url, namespace=namespace)


def _finished(store, ids, states=("SUCCESS", "FAILURE")):
    def check():
        got = store.get_many(ids)
        return got if all(r is not None and r["state"] in states for r in got) else None
    return check


def test_every_outcome_is_recorded_with_its_name(masters, redis_server, namespace):
    m = masters("-A", APP, "-c", "2").ready()
    app = _app(redis_server, namespace)
    ids = {
        "add": app.send_task("h.add", (2, 3)).id,
        "fail": app.send_task("h.fail", ("no <b>way</b>",)).id,
        "flaky": app.send_task("h.flaky", ("t1",)).id,
        "stuck": app.send_task("h.stuck", (30,), time_limit=1).id,
    }
    store = HistoryStore(redis_server.client(), namespace)
    add, fail, flaky, stuck = wait_until(_finished(store, list(ids.values())), 20, what="the history records")
    owner = m.argv[m.argv.index("-n") + 1]
    assert add["name"] == "h.add" and add["state"] == "SUCCESS" and add["node"] == owner
    assert add["queue"] == "default" and add["runtime"] < 5 and add["pid"] > 1 and add["sent"] <= add["started"]
    assert "call" not in add  # history_args = failures (the default): a success keeps none
    assert fail["state"] == "FAILURE" and fail["exc"] == "ValueError: no <b>way</b>"
    assert fail["call"] == '[["no <b>way</b>"],{}]'  # what the dashboard's retry sends again
    assert flaky["state"] == "SUCCESS" and flaky["retries"] == 1 and "call" not in flaky  # its retry's are gone
    assert [a["state"] for a in flaky["attempts"]] == ["RETRY"] and "attempt 1" in flaky["attempts"][0]["exc"]
    # killed by the master at its hard limit: FAILURE, with its name (issue 22: not "-")
    assert stuck["name"] == "h.stuck" and stuck["state"] == "FAILURE"
    assert stuck["killed"].startswith("time limit") and stuck["exc"].startswith("TimeLimitExceeded")
    assert stuck["call"] == "[[30],{}]"  # read from its envelope before the master acked it
    assert app.AsyncResult(ids["stuck"]).info.get("task") == "h.stuck"  # the result record has its name too


def test_a_child_that_dies_leaves_an_attempt(masters, redis_server, namespace):
    masters("-A", APP, "-c", "1").ready()
    app = _app(redis_server, namespace)
    task_id = app.send_task("h.crash_once", ("c1",)).id
    store = HistoryStore(redis_server.client(), namespace)
    record, = wait_until(_finished(store, [task_id], ("SUCCESS",)), 20, what="the redelivered task")
    lost, = record["attempts"]
    assert lost["state"] == "PENDING" and "WorkerLostError" in lost["exc"] and "crash" in lost["exc"]


def test_a_reload_keeps_a_running_task(masters, redis_server, namespace):
    m = masters("-A", APP, "-c", "1").ready()
    app = _app(redis_server, namespace)
    store = HistoryStore(redis_server.client(), namespace)
    task_id = app.send_task("h.sleep", (1.5,)).id
    wait_until(lambda: (store.get(task_id) or {}).get("state") == "STARTED", 10, what="the STARTED record")
    m.signal(signal.SIGHUP)  # the old child finishes its task, the new image writes its end
    record, = wait_until(_finished(store, [task_id], ("SUCCESS",)), 20, what="the end after the reload")
    assert record["runtime"] >= 1.4 and "attempts" not in record


def test_settings_turn_it_off_or_keep_every_argument(masters, redis_server, namespace):
    app = _app(redis_server, namespace)
    off = masters("-A", APP, "-c", "1", env={"QDEPLOY_HISTORY_MAX": "0"}).ready()
    result = app.send_task("h.add", (1, 1))
    assert result.get(timeout=10) == 2
    time.sleep(0.5)  # a batch would have been written within 0.2 s
    assert not list(redis_server.client().scan_iter(f"{{{namespace}:hist}}:*"))
    off.signal(signal.SIGTERM)
    off.wait(20)
    masters("-A", APP, "-c", "1", env={"QDEPLOY_HISTORY_ARGS": "all"}).ready()
    task_id = app.send_task("h.add", (4, 5), {}).id
    store = HistoryStore(redis_server.client(), namespace)
    record, = wait_until(_finished(store, [task_id]), 10, what="the record")
    assert record["call"] == "[[4,5],{}]"
