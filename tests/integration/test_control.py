"""Status, inspect and control against live worker masters over the private Redis: replies
gathered with a timeout, a node that does not answer, hostile destinations, stale requests."""

from __future__ import annotations

import json
import signal
import statistics
import time

import pytest

from qdeploy.core.broker import Broker
from qdeploy.ops.control import Control
from tests.integration.conftest import gone, run_cli, wait_until


@pytest.fixture
def ctl(redis_server, namespace):
    return Control(Broker(redis_server.url, namespace))


@pytest.fixture
def cli(redis_server, namespace):
    env = {"QDEPLOY_NAMESPACE": namespace, "QDEPLOY_BROKER": redis_server.url}
    return lambda *args, timeout=30: run_cli(*args, "-A", "tests.integration.tasks:app", env=env, timeout=timeout)


def owner_of(m) -> str:
    return m.argv[m.argv.index("-n") + 1]


def online(ctl, *ms):
    wait_until(lambda: {owner_of(m) for m in ms} <= set(ctl.nodes()), 10, what="heartbeats")


def test_ping_latency_and_every_inspect(masters, ctl, cli, tapp):
    a, b = masters("-c", "1").ready(), masters("-c", "2", "-Q", "images,default").ready()
    online(ctl, a, b)
    times = []
    for _ in range(20):
        g = ctl.request("ping", timeout=2)
        assert set(g.replies) == {owner_of(a), owner_of(b)} and not g.missing
        times.append(g.elapsed)
    assert statistics.median(times) < 0.1  # pub/sub wakes the master at once (measured ~2 ms)

    running = tapp.send_task("t.slow", [30, "busy"], queue="images")
    later = tapp.send_task("t.pid", countdown=300)
    wait_until(lambda: any(c["tasks" if "tasks" in c else "task"] for c in
                           ctl.request("active", destination=[owner_of(b)]).replies[owner_of(b)]["result"]["children"]),
               10, what="the task to start")
    active = ctl.inspect("active", timeout=2)
    rows = active.replies[owner_of(b)]["result"]
    assert [(r["id"], r["task"], r["args"]) for r in rows] == [(running.id, "t.slow", [30, "busy"])]
    assert active.replies[owner_of(a)]["result"] == []
    scheduled = ctl.inspect("scheduled", destination=[owner_of(a)], timeout=2).replies[owner_of(a)]["result"]
    assert [(r["id"], r["task"]) for r in scheduled] == [(later.id, "t.pid")]
    assert ctl.inspect("reserved", timeout=2).replies[owner_of(b)]["result"] == []
    stats = ctl.inspect("stats", destination=[owner_of(b)], timeout=2).replies[owner_of(b)]["result"]
    assert stats["pool"] == 2 and stats["busy"] == 1 and stats["pid"] == b.pid and stats["uptime"] > 0
    registered = ctl.inspect("registered", timeout=2).replies[owner_of(a)]["result"]["tasks"]
    assert "t.slow" in registered
    queues = ctl.inspect("queues", timeout=2).replies
    assert queues[owner_of(b)]["result"]["queues"] == ["images", "default"]

    table = cli("inspect", "active")
    assert table.returncode == 0 and running.id in table.stdout and "t.slow" in table.stdout
    as_json = json.loads(cli("inspect", "stats", "--json").stdout)
    assert set(as_json["replies"]) == {owner_of(a), owner_of(b)} and as_json["no_reply"] == []
    status = cli("status")
    assert status.returncode == 0 and owner_of(a) in status.stdout and "2 node(s) online" in status.stdout
    rows = json.loads(cli("status", "--json").stdout)
    assert {r["owner"]: r["pool"] for r in rows} == {owner_of(a): 1, owner_of(b): 2}


def test_pool_grow_shrink_and_shutdown(masters, ctl, cli):
    m = masters("-c", "1").ready()
    online(ctl, m)
    grown = cli("control", "pool-grow", "2", "-d", owner_of(m))
    assert grown.returncode == 0 and "pool=3" in grown.stdout
    wait_until(lambda: len(m.children()) == 3, 10, what="3 children")
    assert cli("control", "pool-shrink").returncode == 0
    wait_until(lambda: len(m.children()) == 2, 10, what="2 children")
    bye = cli("control", "shutdown", "-d", owner_of(m).partition("@")[0])  # a bare node name matches too
    assert bye.returncode == 0 and "shutdown=warm" in bye.stdout
    assert m.wait(15) == 0


def test_rate_limit_and_revoke_terminate(masters, ctl, tapp):
    m = masters("-c", "1").ready()
    online(ctl, m)
    child = m.children()[0]
    reply = ctl.request("rate-limit", {"task": "t.pid", "rate": "2/s"}, timeout=2).replies[owner_of(m)]
    assert reply["ok"] and reply["result"]["rate_limit"] == "2/s" and reply["result"]["children_recycled"] == 1
    wait_until(lambda: child.pid not in {c.pid for c in m.children()} and len(m.children()) == 1, 10,
               what="the child recycled")
    started = time.monotonic()
    for r in [tapp.send_task("t.pid") for _ in range(3)]:
        r.get(timeout=10)
    assert time.monotonic() - started >= 0.9  # 3 tasks at 2/s: the new limit is in force
    bad = ctl.request("rate-limit", {"task": "no.such", "rate": "1/s"}, timeout=2).replies[owner_of(m)]
    assert not bad["ok"] and "unknown task" in bad["error"]

    res = tapp.send_task("t.slow", [30, "victim"])
    wait_until(lambda: ctl.request("active", timeout=2).replies[owner_of(m)]["result"]["children"][0].get("tasks")
               or ctl.request("active", timeout=2).replies[owner_of(m)]["result"]["children"][0].get("task"),
               10, what="the task to start")
    victim = m.children()[0]
    tapp.revoke(res.id)
    reply = ctl.request("revoke", {"ids": [res.id], "terminate": True}, timeout=2).replies[owner_of(m)]
    assert reply["result"] == {"running": [res.id], "terminated": [res.id]}
    wait_until(lambda: gone(victim), 10, what="victim killed")
    wait_until(lambda: res.state == "REVOKED", 10, what="REVOKED")


def test_a_node_that_does_not_answer(masters, ctl, cli):
    alive, frozen = masters("-c", "1").ready(), masters("-c", "1").ready()
    online(ctl, alive, frozen)
    frozen.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        g = ctl.request("ping", timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 2
        assert set(g.replies) == {owner_of(alive)} and g.missing == [owner_of(frozen)]
        result = cli("control", "ping", "--timeout", "0.5")
        assert result.returncode == 1
        line = next(line for line in result.stdout.splitlines() if line.startswith(owner_of(frozen)))
        assert "no reply" in line
        # a shutdown that expired while the node was stopped is never acted on when it resumes
        ctl.request("shutdown", destination=[owner_of(frozen)], timeout=0.3)
        time.sleep(0.5)
    finally:
        frozen.signal(signal.SIGCONT)
    time.sleep(1.0)
    assert frozen.proc.poll() is None
    assert set(ctl.request("ping", timeout=2).replies) == {owner_of(alive), owner_of(frozen)}


@pytest.mark.parametrize("hostile", [
    "*", "a b", "$(touch /tmp/pwned)", "node;shutdown", "../../etc", "n\nshutdown", "x" * 500, "a@b@c", "",
    "qdeploy:ctl", "node@", "é",
])
def test_hostile_destinations_are_refused(cli, ctl, redis_server, namespace, hostile):
    publishes = lambda: redis_server.client().info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
    published_before = publishes()
    result = cli("control", "shutdown", "--destination", hostile)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "invalid destination" in result.stderr
    assert "pwned" not in result.stdout
    client = redis_server.client()
    assert not list(client.scan_iter(f"{namespace}:ctl:*"))
    assert publishes() == published_before  # nothing was ever sent


def test_unknown_destination_and_nobody_online(cli):
    result = cli("control", "ping", "-d", "ghost", "--timeout", "0.3")
    assert result.returncode == 1 and "ghost" in result.stdout and "no such node online" in result.stdout
    assert cli("status").returncode == 1


def test_a_redis_py_without_the_private_socket_disables_control_instead_of_crashing(
        redis_server, namespace, monkeypatch, caplog):
    """The master watches the control subscription's socket, which redis-py keeps in the private
    `Connection._sock`. A redis-py without it must not crash the master: control is off, said
    once, and not retried; with it, the socket is in the selector."""
    import selectors
    from types import SimpleNamespace

    import redis

    from qdeploy.core.broker import Broker
    from qdeploy.ops import control

    def master(broker):
        return SimpleNamespace(broker=broker, selector=selectors.DefaultSelector())

    broker = Broker(redis_server.url, namespace, retries=0)
    real = control.ControlServer(master(broker))
    assert real.fd is not None and real.master.selector.get_key(real.fd).data is real
    real._drop()

    class WithoutSock:  # a pub/sub whose connection has no `_sock`
        def __init__(self, pubsub):
            self.real, self.connection = pubsub, SimpleNamespace()

        def subscribe(self, *channels):
            return self.real.subscribe(*channels)

        def close(self):
            self.real.close()

    calls = []

    def pubsub(**opts):
        calls.append(opts)
        return WithoutSock(broker.client.pubsub(**opts))

    without = SimpleNamespace(keys=broker.keys, client=SimpleNamespace(pubsub=pubsub))
    caplog.set_level("ERROR", logger="qdeploy.worker")
    server = control.ControlServer(master(without))
    server.tick()
    server.tick()
    assert server.fd is None and server.pubsub is None and not server.master.selector.get_map()
    assert len(calls) == 1, "not retried"
    assert [r.getMessage() for r in caplog.records if "control channel disabled" in r.getMessage()] == [
        f"control channel disabled: redis-py {redis.__version__} does not expose its connection's socket; "
        "this node will not answer inspect/control"]
