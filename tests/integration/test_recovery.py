"""At-least-once with real worker processes: SIGKILL, dead nodes, live long tasks, poison."""


from qdeploy.core.app import App
from qdeploy.worker import Consumer
from qdeploy.ops import fleet
from tests.integration.conftest import drain, wait_until


def tasks_app(redis_server, namespace, **settings) -> App:
    """The producer's view of tests/integration/tasks.py (same task names, same namespace)."""
    return App("itest", broker=redis_server.url, namespace=namespace, **settings)


def runs(rclient, namespace, tag) -> int:
    return int(rclient.get(f"{namespace}:test:runs:{tag}") or 0)


def test_sigkilled_consumer_is_requeued_by_identity(redis_server, rclient, namespace, workers):
    app = tasks_app(redis_server, namespace)
    res = app.send_task("t.slow_once", [30])
    victim = workers("-n", "victim@test")
    wait_until(lambda: runs(rclient, namespace, res.id) == 1, what="the task to start")
    victim.kill()  # kill -9 mid-task: no ack, no cleanup
    assert fleet.inflight(app.transport, "victim@test") == [res.id], "the message must stay in-flight"
    assert fleet.queue_length(app.transport, "default") == 0
    assert app.transport.requeue_consumer("victim@test") == 1  # what the master will do
    assert fleet.inflight(app.transport, "victim@test") == []

    @app.task(name="t.slow_once", bind=True)
    def slow_once(self, seconds):
        return self.request.deliveries

    drain(app, 1)
    assert res.get(timeout=1) == 2, "second delivery completes the task"
    assert fleet.queue_length(app.transport, "default") == 0
    assert rclient.hlen(f"{namespace}:msg") == 0, "nothing left behind, nothing lost"


def test_dead_node_is_recovered_after_visibility_timeout(redis_server, rclient, namespace, workers):
    app = tasks_app(redis_server, namespace, visibility_timeout=1.0)
    res = app.send_task("t.slow_once", [30])
    node = workers("-n", "node1@test", env={"QDEPLOY_VISIBILITY_TIMEOUT": "1"})
    wait_until(lambda: runs(rclient, namespace, res.id) == 1, what="the task to start")
    node.kill()
    assert rclient.exists(f"{namespace}:hb:node1@test") == 1, "heartbeat outlives the node for a while"

    @app.task(name="t.slow_once", bind=True)
    def slow_once(self, seconds):
        return self.request.deliveries

    # a live consumer elsewhere: its heartbeat thread sweeps and recovers the dead node's message
    drain(app, 1, cid="node2@test", timeout=15)
    assert res.get(timeout=1) == 2
    assert rclient.hget(f"{namespace}:consumers", "node1@test") is None
    assert fleet.inflight(app.transport, "node1@test") == []


def test_long_task_on_a_live_node_is_not_stolen(redis_server, rclient, namespace, workers):
    app = tasks_app(redis_server, namespace, visibility_timeout=0.6)
    res = app.send_task("t.slow", [2.5, "long"])
    node = workers("-n", "busy@test", env={"QDEPLOY_VISIBILITY_TIMEOUT": "0.6"})
    wait_until(lambda: runs(rclient, namespace, "long") == 1, what="the task to start")

    @app.task(name="t.slow")
    def slow(seconds, tag="x"):
        raise AssertionError("a live node's task was stolen")

    thief = Consumer(app, ["default"], "thief@test", poll_interval=0.01)
    swept = []

    def stop():
        swept.append(app.transport.recover_dead())  # sweep as hard as we can meanwhile
        return res.ready()

    handled = thief.run(should_stop=stop)
    assert res.get(timeout=1) == "long"
    assert handled == 0 and runs(rclient, namespace, "long") == 1
    assert all("busy@test" not in s for s in swept) and len(swept) > 10
    assert node.stop() == 0


def test_crash_loop_ends_in_the_dead_letter_queue(redis_server, rclient, namespace, workers):
    app = tasks_app(redis_server, namespace, max_deliveries=3)
    res = app.send_task("t.crash")
    env = {"QDEPLOY_MAX_DELIVERIES": "3"}
    for attempt in range(1, 4):  # the supervisor's job: reap, requeue by identity, respawn
        w = workers("-n", f"crashy{attempt}@test", env=env)
        assert w.proc.wait(15) == 137
        assert app.transport.requeue_consumer(f"crashy{attempt}@test") == 1
    assert int(rclient.get(f"{namespace}:test:crash")) == 3
    last = workers("-n", "crashy4@test", "--max-tasks-per-child", "1", env=env)
    assert last.proc.wait(15) == 0, last.output()
    [dead] = fleet.dead_letters(app.transport)
    assert dead["id"] == res.id and "delivered 4 times without an ack (max_deliveries=3)" in dead["reason"]
    assert int(rclient.get(f"{namespace}:test:crash")) == 3, "never run a 4th time"
    assert res.state == "FAILURE"
    assert rclient.hlen(f"{namespace}:msg") == 0 and rclient.hlen(f"{namespace}:dlv") == 0


def test_restarted_consumer_reclaims_its_own_leftovers(redis_server, rclient, namespace, workers):
    app = tasks_app(redis_server, namespace)
    res = app.send_task("t.slow_once", [30])
    first = workers("-n", "same@test")
    wait_until(lambda: runs(rclient, namespace, res.id) == 1, what="the task to start")
    first.kill()
    second = workers("-n", "same@test", "--max-tasks-per-child", "1")
    assert second.proc.wait(15) == 0
    assert res.get(timeout=1) == 2
    assert "requeued 1 message(s) left in-flight by a previous same@test" in second.output()


def test_the_fleet_sweeps_for_dead_nodes_once_per_period(redis_server, rclient, namespace):
    """Every master tries a sweep at each beat; with `every`, one sweep per period runs fleet-wide
    (a sweep per beat per master made n nodes cost O(n^2)); a direct call sweeps at once."""
    import time

    from qdeploy.core.broker import Broker

    brokers = [Broker(redis_server.url, namespace) for _ in range(3)]
    rclient.hset(f"{namespace}:consumers", "gone@test/1", "gone@test")  # no heartbeat: dead
    rclient.lpush(f"{namespace}:inflight:gone@test/1", "abc")
    rclient.hset(f"{namespace}:msg", "abc", '{"queue": "default"}')
    swept = [b.recover_dead(every=0.5) for b in brokers]
    assert swept == [{"gone@test/1": 1}, {}, {}], "only the first within the period sweeps"
    rclient.hset(f"{namespace}:consumers", "gone@test/2", "gone@test")
    assert brokers[1].recover_dead(every=0.5) == {}, "still within the period"
    assert brokers[2].recover_dead() == {"gone@test/2": 0}, "every=0 (a direct call) sweeps now"
    rclient.hset(f"{namespace}:consumers", "gone@test/3", "gone@test")
    time.sleep(0.6)
    assert brokers[1].recover_dead(every=0.5) == {"gone@test/3": 0}, "the next period's first try sweeps"
    assert rclient.lrange(f"{namespace}:q:default", 0, -1) == [b"abc"]
