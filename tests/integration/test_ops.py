"""`qdeploy queues`, `dead-letter`, `purge` on the private Redis (no worker needed: the keys
are the protocol's), confirmation rules, and no password in any output."""

from __future__ import annotations

import json

import pytest

from qdeploy import App
from qdeploy.ops import fleet
from tests.integration.conftest import drain, run_cli


@pytest.fixture
def ops(redis_server, namespace):
    env = {"QDEPLOY_NAMESPACE": namespace, "QDEPLOY_BROKER": redis_server.url}
    return lambda *args: run_cli(*args, "-A", "tests.integration.tasks:app", env=env)


@pytest.fixture
def tapp(redis_server, namespace):
    return App("itest", broker=redis_server.url, namespace=namespace)


def test_queues_counts_ready_inflight_scheduled_dead(ops, tapp):
    for _ in range(3):
        tapp.send_task("t.pid", queue="images")
    tapp.send_task("t.pid", queue="images", countdown=300)
    tapp.send_task("t.pid", queue="default")
    tapp.transport.heartbeat("busy@elsewhere", 60)  # a live node holds it
    tapp.transport.reserve("c1", "busy@elsewhere", ["default"])  # in flight, not acked yet
    fleet.publish_raw(tapp.transport, "mail", "bad1", b"not json")
    drain(tapp, 1, queues=("mail",))
    rows = {r["queue"]: r for r in json.loads(ops("queues", "--json").stdout)}
    assert rows["images"] == {"queue": "images", "ready": 3, "in_flight": 0, "scheduled": 1, "dead": 0}
    assert rows["default"]["in_flight"] == 1 and rows["default"]["ready"] == 0
    assert rows["mail"]["dead"] == 1
    table = ops("queues").stdout.splitlines()
    assert table[0].split() == ["QUEUE", "READY", "IN_FLIGHT", "SCHEDULED", "DEAD"]


def test_dead_letter_list_requeue_purge(ops, tapp, rclient, namespace):
    good = tapp.send_task("t.nope_unknown", queue="default")  # unknown task: dead-lettered
    drain(tapp, 1)
    fleet.publish_raw(tapp.transport, "default", "bad2", b"\x80pickle")
    drain(tapp, 1)
    listed = json.loads(ops("dead-letter", "list", "--json").stdout)
    assert {r["id"] for r in listed} == {good.id, "bad2"}
    assert "unknown task" in next(r["reason"] for r in listed if r["id"] == good.id)
    assert good.id in ops("dead-letter", "list").stdout

    requeued = ops("dead-letter", "requeue", good.id, "missing-id")
    assert requeued.returncode == 1 and "requeued 1" in requeued.stdout and "missing-id" in requeued.stdout
    assert fleet.queue_length(tapp.transport, "default") == 1 and good.state == "PENDING"
    assert [r["id"] for r in fleet.dead_letters(tapp.transport)] == ["bad2"]

    refused = ops("dead-letter", "purge")  # stdin is not a terminal
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert ops("dead-letter", "purge", "--yes").stdout.strip() == "deleted 1 dead letter(s)"
    assert fleet.dead_letters(tapp.transport) == []


def test_purge_needs_confirmation_and_removes_bodies(ops, tapp, rclient, namespace):
    ids = [tapp.send_task("t.pid", queue=q).id for q in ("a", "a", "b")]
    later = tapp.send_task("t.pid", queue="a", countdown=100)
    refused = ops("purge")
    assert refused.returncode == 2 and "not a terminal" in refused.stderr
    assert fleet.queue_length(tapp.transport, "a") == 2
    done = ops("purge", "-Q", "a", "--yes")
    assert done.returncode == 0 and "purged 3 message(s): a=3" in done.stdout
    assert fleet.queue_length(tapp.transport, "a") == 0 and fleet.scheduled(tapp.transport, "a") == 0
    assert rclient.hmget(f"{namespace}:msg", [ids[0], later.id]) == [None, None]
    assert fleet.queue_length(tapp.transport, "b") == 1
    assert ops("purge", "-Q", "bad queue!", "--yes").returncode == 2


def test_no_password_in_output(make_server, namespace):
    server = make_server(password="s3cr3t-pw")
    env = {"QDEPLOY_NAMESPACE": namespace, "QDEPLOY_BROKER": server.url}
    for args in (["status"], ["queues"], ["control", "ping", "--timeout", "0.2"]):
        result = run_cli(*args, env=env)
        assert "s3cr3t-pw" not in result.stdout + result.stderr
    wrong = server.url.replace("s3cr3t-pw", "wrong-pw")
    result = run_cli("status", env={"QDEPLOY_NAMESPACE": namespace, "QDEPLOY_BROKER": wrong})
    assert result.returncode == 3 and "wrong-pw" not in result.stderr and "***" in result.stderr

    from qdeploy.core.broker import Broker
    from qdeploy.ops.dashboard.api import Api
    from qdeploy.ops.history import HistoryStore

    broker = Broker(server.url, namespace)
    overview = Api(None, broker, HistoryStore(broker.client, namespace), show_args=False, refresh=2.0).overview()
    assert overview["broker"].startswith("redis://") and "s3cr3t-pw" not in json.dumps(overview)
