"""The bugs the chaos run found, each pinned by a focused test against real processes.

1. A HUP storm killed the master: a HUP (or TTIN/TTOU/TERM) arriving while it re-executes hit the
   default action (terminate/stop) before the new image installed its handlers.
2. A child killed while Redis restarts (or whose master's first command after a restart hits a
   stale connection): the master's requeue failed once and was never retried, and as the node's
   heartbeat lives on, no other node recovers it: stuck in flight for ever.
3. A copy of a task requeued by a recovery while the slow node still ran it: after that run
   acked, the copy had no body and was dead-lettered, overwriting the SUCCESS with FAILURE."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from qdeploy import App
from qdeploy.worker import Consumer
from tests.chaos.harness import ChaosRun, wait_until


@pytest.fixture
def cluster(tmp_path):
    run = ChaosRun(tmp_path, nodes=1, concurrency=1)
    run.redis.start()
    run.app = App("chaos", broker=run.redis.url, namespace=run.ns)
    yield run
    for node in run.nodes:
        if node.proc is not None:
            node.stop(10)
    run.redis.stop()


def test_hup_storm_keeps_the_master(cluster):
    node = cluster.nodes[0]
    node.start()
    pid = node.proc.pid
    for _ in range(3):
        for sig in (signal.SIGHUP, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP):
            node.signal(sig)
            time.sleep(0.03)
        time.sleep(0.3)
    time.sleep(1.0)
    assert node.alive and node.proc.pid == pid, node.text()[-1500:]
    assert psutil.Process(pid).status() != psutil.STATUS_STOPPED, "a TTIN/TTOU stopped the master"
    assert cluster.app.send_task("chaos.work", [1, 0.0]).get(timeout=20) == 1


def test_child_killed_after_a_redis_restart_has_its_task_requeued(cluster):
    node = cluster.nodes[0]
    node.start()
    result = cluster.app.send_task("chaos.work", [7, 30.0])  # long: it must be re-run, not waited for
    wait_until(lambda: cluster.redis.client().llen(f"{cluster.ns}:q:default") == 0
               and any(k for k in cluster.redis.client().keys(f"{cluster.ns}:inflight:*")), 10, "the task to start")
    cluster.redis.stop()
    node.children()[0].kill()  # while Redis is down: the master cannot requeue its task now
    wait_until(lambda: "cannot requeue tasks of" in node.text(), 10, "the failed requeue")
    cluster.redis.start()  # AOF: the in-flight list is back
    # The re-run also sleeps 30 s: it is enough that it was requeued and reserved again.
    wait_until(lambda: int(cluster.redis.client().hget(f"{cluster.ns}:dlv", result.id) or 0) >= 2, 15,
               "the killed child's task to be delivered again")
    assert "requeued 1 task(s) of" in node.text(), node.text()[-1500:]


def test_a_recovered_copy_of_an_acked_task_keeps_its_success(cluster):
    app = App("chaos", broker=cluster.redis.url, namespace=cluster.ns)
    result = app.send_task("chaos.work", [3, 0.0])
    broker = app.transport
    slow = broker.reserve("slow@a/1", "slow@a", ["default"])  # the slow (stopped) node has it
    assert slow.id == result.id
    assert broker.requeue_consumer("slow@a/1", unregister=True) == 1  # recovery puts a copy back
    broker.client.rpush(f"{cluster.ns}:inflight:slow@a/1", result.id)  # ...while the slow node still runs it
    from qdeploy.core import results

    broker.ack("slow@a/1", result.id, results.record(results.SUCCESS, result=3))  # the slow run finishes
    assert app.results.get(result.id)["state"] == "SUCCESS"
    consumer = Consumer(app,  # the id has no body: no task is looked up
                         ["default"], "fast@b/1", poll_interval=0.01)
    consumer.run(max_tasks=1, should_stop=lambda: False)
    assert app.results.get(result.id)["state"] == "SUCCESS"
    assert broker.client.llen(f"{cluster.ns}:dead") == 0
    assert broker.client.llen(f"{cluster.ns}:inflight:fast@b/1") == 0
