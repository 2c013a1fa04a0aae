"""The task history on a real Redis Cluster (3 primaries + 3 replicas, tests/integration/cluster.py):
a real worker master writes it (one EVALSHA per batch, routed to the primary of `{ns:hist}`), the
store and the search read it back through the cluster client, and every history key is in one
hash slot."""

from __future__ import annotations

import signal
import time

import pytest
from redis.crc import key_slot

from qdeploy import App
from qdeploy.core import connection
from qdeploy.ops import history
from qdeploy.ops.history import HistoryStore
from qdeploy.ops.history_search import Query, referring, search
from tests.integration.cluster import Cluster
from tests.integration.conftest import wait_until
from tests.integration.workers import Master

APP = "tests.integration.history_tasks:app"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("cluster")).start() as running:
        yield running


def _finished(store, ids, states=("SUCCESS", "FAILURE")):
    def check():
        got = store.get_many(ids)
        return got if all(r is not None and r["state"] in states for r in got) else None
    return check


def _history_keys(cluster, namespace: str) -> list[bytes]:
    client = cluster.cluster_client()
    return list(client.scan_iter(match=f"{{{namespace}:hist}}:*", count=1000))


def test_a_real_worker_writes_the_history_on_a_cluster_and_search_reads_it(cluster, namespace, tmp_path):
    master = Master(cluster.url, namespace, tmp_path, "--allow-root", "-A", APP, "-c", "2").ready()
    app = App("htest", broker=cluster.url, namespace=namespace)
    try:
        ids = {
            "add": app.send_task("h.add", (2, 3)).id,
            "fail": app.send_task("h.fail", ("no <b>way</b>",)).id,
            "flaky": app.send_task("h.flaky", (f"c{time.monotonic_ns()}",)).id,
            "stuck": app.send_task("h.stuck", (30,), time_limit=1).id,
        }
        client = connection.connect(cluster.url)
        assert connection.is_cluster(client)
        store = HistoryStore(client, namespace)
        add, fail, flaky, stuck = wait_until(_finished(store, list(ids.values())), 30, what="the history records")
    finally:
        master.signal(signal.SIGTERM)
        code = master.wait(30)
    output = master.output()
    assert code == 0, output[-2000:]
    bad = [line for line in output.splitlines() if "history" in line and ("ERROR" in line or "WARNING" in line)]
    assert not bad, bad  # before: "history: Redis refused a batch (CROSSSLOT ...)" once per batch

    owner = master.argv[master.argv.index("-n") + 1]
    assert add["state"] == "SUCCESS" and add["name"] == "h.add" and add["node"] == owner and add["queue"] == "default"
    assert fail["state"] == "FAILURE" and fail["exc"] == "ValueError: no <b>way</b>"
    assert fail["call"] == '[["no <b>way</b>"],{}]'
    assert flaky["state"] == "SUCCESS" and [a["state"] for a in flaky["attempts"]] == ["RETRY"]
    # killed at its hard limit: its arguments read from its envelope in its queue's slot
    assert stuck["state"] == "FAILURE" and stuck["killed"].startswith("time limit")
    assert stuck["call"] == "[[30],{}]"

    # every key of the history is in the one slot of {ns:hist}
    keys = _history_keys(cluster, namespace)
    assert {history.HistoryKeys(namespace).rec.encode(), history.HistoryKeys(namespace).time.encode()} <= set(keys)
    assert {key_slot(k) for k in keys} == {key_slot(f"{{{namespace}:hist}}".encode())}

    # the readers, through the cluster client: counts, combos, per-minute charts, search paths
    assert store.count() == 4
    assert store.names() == ["h.add", "h.fail", "h.flaky", "h.stuck"] and store.nodes() == [owner]
    counts = store.state_counts()
    assert counts["SUCCESS"] == 2 and counts["FAILURE"] == 2
    minute = int(add["done"] // 60)
    charts = store.minutes(minute - 1, minute + 1)
    assert sum(row.get("success", 0) + row.get("failure", 0) for row in charts.values()) >= 3
    everything = search(store, Query())
    assert everything.total == 4 and {r["id"] for r in everything.rows} == set(ids.values())
    failures = search(store, Query(states=("FAILURE",)))  # two combos merged
    assert failures.total == 2 and {r["id"] for r in failures.rows} == {ids["fail"], ids["stuck"]}
    by_name = search(store, Query(q="h.add"))
    assert [r["id"] for r in by_name.rows] == [ids["add"]]
    by_args = search(store, Query(args="no <b>way"))  # history_match.lua, routed by its keys
    assert [r["id"] for r in by_args.rows] == [ids["fail"]]
    slowest = search(store, Query(sort="-runtime"))
    assert slowest.rows[0]["id"] == ids["stuck"]
    filtered_slowest = search(store, Query(states=("SUCCESS",), sort="-runtime", since=add["started"] - 60))
    assert {r["id"] for r in filtered_slowest.rows} == {ids["add"], ids["flaky"]}
    assert search(store, Query(q=ids["fail"])).rows[0]["state"] == "FAILURE"
    assert referring(store, ids["add"], add["started"] - 60) == []


def test_the_store_writes_audit_and_queue_samples_on_a_cluster(cluster, namespace):
    store = HistoryStore(connection.connect(cluster.url), namespace)
    now = time.time()
    rows = [history.encode({"id": f"id-{i}", "name": "c.job", "state": "SUCCESS", "node": "n@h", "queue": "q",
                            "started": now - 10 + i, "done": now - 9 + i, "runtime": 0.5 + i}) for i in range(5)]
    assert all(rows)
    replies = store.add([([r for r in rows if r is not None], [(int(now // 60), "success", 5)])])
    assert [int(replies[0][0]), int(replies[0][1])] == [5, 0]
    assert store.count() == 5 and store.get("id-4")["runtime"] == 4.5
    store.audit({"time": now, "action": "retry", "user": "u"})
    assert store.audit_log()[0]["action"] == "retry"
    assert store.add_queue_sample(now, [{"name": "q", "depth": 3}], 5.0) is True
    assert store.add_queue_sample(now, [{"name": "q", "depth": 3}], 5.0) is False  # another reader did
    assert store.queue_samples(now - 1)[0]["q"] == [{"name": "q", "depth": 3}]
    small = HistoryStore(store.client, namespace, cap=2)  # the trim, inside the slot too
    small.add([([history.encode({"id": "id-new", "name": "c.job", "state": "FAILURE", "node": "n@h",
                                 "started": now})], [])])  # type: ignore[list-item]
    assert small.count() == 2 and store.get("id-0") is None and store.get("id-new")["state"] == "FAILURE"
    assert set(search(store, Query()).as_dict()["rows"][0]) >= {"id", "state"}
    keys = _history_keys(cluster, namespace)
    assert len(keys) >= 6 and len({key_slot(k) for k in keys}) == 1


def test_a_key_of_the_wrong_type_refuses_the_batch_and_the_writer_goes_on(cluster, namespace, caplog):
    """A careless client took one of the history's keys: one error line, the batch dropped (not
    retried for ever), and the next batch is written once the key is back."""
    from qdeploy.ops.history_writer import HistoryWriter
    from qdeploy.worker.state import Child, Task

    broker = App("htest", broker=cluster.url, namespace=namespace).connect_broker()
    client = connection.connect(cluster.url)
    keys = history.HistoryKeys(namespace)
    client.set(keys.time, "not a sorted set")
    writer = HistoryWriter(broker, "n@h")
    child = Child(1, 1, ["cid"], None, None)

    def run(i: int) -> Task:
        task = Task(f"{i:08d}-1111-4000-8000-000000000000", "cid", time.monotonic(), None, "c.job", "default", 0.01,
                    extra="0\t\t\t\t\t\t")
        task.outcome, task.runtime = "succeeded", 0.002
        writer.started(child, task)
        writer.finished(child, task)
        writer.flush(force=True)
        return task

    caplog.set_level("INFO", "qdeploy.worker")
    run(1)
    assert writer.queued_records == 0 and writer.written == 0 and "Redis refused a batch" in caplog.text
    assert "CROSSSLOT" not in caplog.text and "WRONGTYPE" in caplog.text  # refused for the key, not the routing
    client.delete(keys.time)
    task = run(2)
    assert writer.written == 1 and HistoryStore(client, namespace).get(task.id)["state"] == "SUCCESS"


def test_the_dashboards_retry_sends_a_failure_again_once_on_a_cluster(cluster, namespace):
    """The history's slot is not the queue's: the record is read first, then one script in the
    queue's slot sends the message unless one with its id waits (a second click is refused)."""
    from qdeploy.ops.dashboard.actions import ActionError, Actions

    app = App("htest", broker=cluster.url, namespace=namespace)
    broker = app.connect_broker()
    store = HistoryStore(broker.client, namespace)
    now = time.time()
    failed, ok = "f0000000-0000-4000-8000-000000000000", "50000000-0000-4000-8000-000000000000"
    store.add([([history.encode({"id": failed, "name": "h.add", "state": "FAILURE", "node": "n@h", "queue": "hq",
                                 "started": now, "call": "[[1,2],{}]"}),
                 history.encode({"id": ok, "name": "h.add", "state": "SUCCESS", "node": "n@h", "queue": "hq",
                                 "started": now, "call": "[[1,2],{}]"})], [])])  # type: ignore[list-item]
    actions = Actions(app, broker, store)
    assert actions.do_retry({"id": failed}) == {"id": failed, "queue": "hq", "sent": True}
    qk = broker.keys.of("hq")
    assert broker.client.lrange(qk.queue, 0, -1) == [failed.encode()] and broker.client.hexists(qk.msg, failed)
    assert "hq" in broker.known_queues()
    with pytest.raises(ActionError, match="not sent again: queued"):
        actions.do_retry({"id": failed})
    with pytest.raises(ActionError, match="only a FAILURE is retried"):
        actions.do_retry({"id": ok})
    with pytest.raises(ActionError, match="not in the history"):
        actions.do_retry({"id": "a0000000-0000-4000-8000-000000000000"})
    assert broker.client.llen(qk.queue) == 1  # nothing sent twice
