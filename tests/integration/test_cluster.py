"""qdeploy on a real Redis Cluster (3 primaries + 3 replicas on loopback, tests/integration/cluster.py):
the protocol's key layout (one hash slot per queue), every verb, what crosses slots (results,
chains and chords into other queues, the outbox and its recovery, revoke, unique keys, rate
limits, dead-node recovery, beat), the fleet views and CLI, and the bad inputs."""

from __future__ import annotations

import json
import signal
import time
from collections import defaultdict

import pytest
from redis.crc import key_slot

from qdeploy import App, chain, chord
from qdeploy.beat.store import DISPATCHED, BeatStore
from qdeploy.core import connection, message, results
from qdeploy.core.broker import Broker
from qdeploy.core.clusterbroker import ClusterBroker
from qdeploy.core.keys import ClusterKeyError
from qdeploy.ops import fleet
from qdeploy.worker import Consumer
from tests.integration.cluster import Cluster
from tests.integration.conftest import run_cli


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("cluster")).start() as running:
        yield running


@pytest.fixture
def capp(cluster, namespace):
    return App("ctest", broker=cluster.url, namespace=namespace)


def on_shards(cluster, namespace: str, count: int) -> list[str]:
    """`count` queue names whose slots are served by `count` different primaries."""
    found: dict[int, str] = {}
    for i in range(200):
        name = f"q{i}"
        found.setdefault(cluster.port_of_key(f"{{{namespace}:{name}}}:q"), name)
        if len(found) >= count:
            return list(found.values())[:count]
    raise AssertionError("no queues on enough shards")


def drain(app, queues, n, cid="cc", timeout=20.0, **kw) -> int:
    deadline = time.monotonic() + timeout
    consumer = Consumer(app, list(queues), cid, poll_interval=0.01, **kw)
    done = consumer.run(max_tasks=n, should_stop=lambda: time.monotonic() > deadline)
    assert done == n, f"handled {done} of {n}"
    return done


def slots_of_namespace(cluster, namespace: str) -> dict[str, int]:
    client = cluster.cluster_client()
    return {k.decode(): key_slot(k) for k in client.scan_iter(count=1000)
            if k.decode().startswith((f"{{{namespace}:", f"{namespace}:"))}


# -- the key layout ------------------------------------------------------------------------------
def test_every_queue_key_lives_in_its_queues_slot_and_queues_spread_over_shards(cluster, capp, namespace):
    a, b = on_shards(cluster, namespace, 2)

    @capp.task(name="c.add")
    def add(x, y):
        return x + y

    sent = [add.apply_async((i, 1), queue=q) for i in range(5) for q in (a, b)]
    sent += [add.apply_async((100, 1), queue=a, countdown=0.3)]  # through the ETA set
    capp.send_many([("c.add", (i, 2), {}, {"queue": b}) for i in range(20)])  # one MULTI per queue
    broker = capp.transport
    assert isinstance(broker, ClusterBroker) and broker.cluster
    layout = slots_of_namespace(cluster, namespace)
    for queue in (a, b):
        mine = {k: s for k, s in layout.items() if k.startswith(f"{{{namespace}:{queue}}}:")}
        assert {f"{{{namespace}:{queue}}}:msg", f"{{{namespace}:{queue}}}:q"} <= set(mine)
        assert len(set(mine.values())) == 1, f"{queue}'s keys span slots: {mine}"
    assert cluster.port_of_key(f"{{{namespace}:{a}}}:q") != cluster.port_of_key(f"{{{namespace}:{b}}}:q")
    drain(capp, [a, b], len(sent) + 20)
    assert [r.get(timeout=5) for r in sent] == [i + 1 for i in range(5) for _ in (a, b)] + [101]
    left = slots_of_namespace(cluster, namespace)
    assert not [k for k in left if k.endswith((":q", ":msg", ":dlv", ":eta")) or ":inflight:" in k], left


def test_the_namespace_wide_keys_refuse_on_a_cluster_with_the_per_queue_spelling(capp):
    keys = capp.transport.keys
    with pytest.raises(ClusterKeyError, match=r"keys.of\(queue\).msg"):
        keys.msg  # noqa: B018
    with pytest.raises(ClusterKeyError, match="iterate keys.queues"):
        keys.prefix("queue")
    assert keys.result("x") == f"{capp.namespace}:r:x"  # single-key names are unchanged


def test_single_server_key_names_are_unchanged(redis_server, namespace):
    broker = Broker(redis_server.url, namespace)
    assert type(broker) is Broker and not broker.cluster
    assert (broker.keys.msg, broker.keys.queue("default"), broker.keys.inflight("c")) == \
        (f"{namespace}:msg", f"{namespace}:q:default", f"{namespace}:inflight:c")


# -- priority, results, retries, dead letters ------------------------------------------------------
def test_priority_order_across_queues_on_different_shards(cluster, capp, namespace):
    high, low = on_shards(cluster, namespace, 2)
    order = []

    @capp.task(name="c.rec")
    def rec(tag):
        order.append(tag)

    for i in range(3):
        rec.apply_async((f"low{i}",), queue=low)
    for i in range(3):
        rec.apply_async((f"high{i}",), queue=high)
    drain(capp, [high, low], 6)
    assert order == ["high0", "high1", "high2", "low0", "low1", "low2"]


def test_retry_failure_and_dead_letters_on_a_cluster(cluster, capp, namespace):
    queue = on_shards(cluster, namespace, 1)[0]
    tries = defaultdict(int)

    @capp.task(name="c.flaky", bind=True, max_retries=2)
    def flaky(self):
        tries[self.request.id] += 1
        raise self.retry(countdown=0, exc=ValueError("again"))

    res = flaky.apply_async(queue=queue)
    drain(capp, [queue], 3)
    assert tries[res.id] == 3 and res.state == "FAILURE"
    fleet.publish_raw(capp.transport, queue, "junk-1", b"\x80not json")
    drain(capp, [queue], 1)
    dead = fleet.dead_letter_list(capp.transport)
    assert [d["id"] for d in dead] == ["junk-1"] and "pickle" in dead[0]["reason"]
    assert capp.results.get("junk-1")["exc_type"] == "DeadLettered"
    assert fleet.dead_letter_count(capp.transport) == 1


# -- what crosses slots ------------------------------------------------------------------------------
def test_a_chain_and_a_chord_across_three_shards_run_once_each(cluster, capp, namespace):
    a, b, c = on_shards(cluster, namespace, 3)
    runs = defaultdict(int)

    @capp.task(name="c.add")
    def add(x, y):
        runs["add"] += 1
        return x + y

    @capp.task(name="c.total")
    def total(values):
        runs["total"] += 1
        return sum(values)

    chained = chain(add.s(1, 2).set(queue=a), add.s(10).set(queue=b), add.s(100).set(queue=c)).apply_async()
    joined = chord([add.s(i, i).set(queue=q) for i, q in enumerate((a, b, c, a))], total.s().set(queue=c)).apply_async()
    drain(capp, [a, b, c], 3 + 4 + 1)
    assert chained.get(timeout=5) == 113 and joined.get(timeout=5) == 12
    assert runs == {"add": 7, "total": 1}
    for queue in (a, b, c):  # every outbox entry was delivered and cleared
        qk = capp.transport.keys.of(queue)
        assert capp.transport.client.hlen(qk.outbox) == 0 and capp.transport.client.zcard(qk.outbox_due) == 0


def test_a_chord_whose_header_fails_fails_its_body_and_calls_its_errback(cluster, capp, namespace):
    a, b = on_shards(cluster, namespace, 2)

    @capp.task(name="c.ok")
    def ok(x):
        return x

    @capp.task(name="c.bad")
    def bad(x):
        raise KeyError(x)

    @capp.task(name="c.body")
    def body(values):
        return values

    @capp.task(name="c.on_error")
    def on_error(request, exc, traceback):
        capp.transport.client.set(f"{namespace}:errback", f"{request.id}:{type(exc).__name__}")

    joined = chord([ok.s(1).set(queue=a), bad.s(2).set(queue=b)],
                   body.s().set(queue=a).on_error(on_error.s().set(queue=b))).apply_async()
    drain(capp, [a, b], 3)
    with pytest.raises(Exception, match="Dependency .* raised KeyError"):
        joined.get(timeout=5)
    assert capp.transport.client.get(f"{namespace}:errback").decode().endswith(":ChordError")


def test_an_outbox_left_by_a_dead_deliverer_is_delivered_once_by_the_sweep(cluster, capp, namespace):
    """The ack wrote the follow-up into its queue's outbox; the process died before delivering it
    (here: its delivery raises). Any live worker's sweep delivers it after stale_after seconds,
    and a second delivery of the same entry (two sweepers, or the deliverer waking up) publishes
    nothing more."""
    a, b = on_shards(cluster, namespace, 2)

    @capp.task(name="c.step")
    def step(x):
        capp.transport.client.incr(f"{namespace}:step:{x}")
        return x + 1

    res = chain(step.s(1).set(queue=a), step.s().set(queue=b)).apply_async()
    consumer = Consumer(capp, [a], "dies", poll_interval=0.01)
    died = RuntimeError("killed between the ack and the delivery")

    def deliver(ops):
        raise died

    consumer.broker._deliver = deliver  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        consumer.run(max_tasks=1)
    qk = capp.transport.keys.of(a)
    assert capp.transport.client.hlen(qk.outbox) == 1, "the ack left its follow-up in the outbox"
    sweeper = capp.connect_broker()
    assert sweeper.sweep_outbox(a, older_than=60) == 0, "a fresh entry is its deliverer's"
    assert sweeper.sweep_outbox(a, older_than=0) == 1
    entry = json.loads(capp.transport.client.hvals(qk.outbox)[0]) if capp.transport.client.hlen(qk.outbox) else None
    assert entry is None
    ops = [["m", res.id, b, "", capp.transport.body(res.id, b).decode()]]
    sweeper._deliver(ops)  # the same message delivered once more: refused by the once set
    drain(capp, [b], 1)
    assert res.get(timeout=5) == 3
    assert capp.transport.client.get(f"{namespace}:step:2") == b"1", "the second step ran once"
    assert capp.transport.client.llen(capp.transport.keys.of(b).queue) == 0


def test_revoke_unique_and_rate_limits_per_queue(cluster, capp, namespace):
    queue = on_shards(cluster, namespace, 1)[0]
    ran = []

    @capp.task(name="c.job")
    def job(tag):
        ran.append(tag)

    @capp.task(name="c.once", unique_for=30)
    def once(x):
        ran.append(f"once{x}")

    @capp.task(name="c.limited", rate_limit="20/s")
    def limited(i):
        ran.append(("limited", i, time.time()))

    doomed = job.apply_async(("doomed",), queue=queue)
    capp.revoke(doomed.id)
    first, again = once.apply_async((1,), queue=queue), once.apply_async((1,), queue=queue)
    assert again.id == first.id, "a unique send's duplicate gets the first id"
    for i in range(4):
        limited.apply_async((i,), queue=queue)
    drain(capp, [queue], 1 + 1 + 4)
    assert doomed.state == "REVOKED" and "doomed" not in ran
    assert "once1" in ran
    third = once.apply_async((1,), queue=queue)
    assert third.id != first.id, "the ack freed the unique key"
    starts = [t for kind, _, t in (r for r in ran if isinstance(r, tuple))]
    assert all(b - a >= 0.045 for a, b in zip(starts, starts[1:], strict=False)), starts


def test_a_revoke_that_never_expires_holds_on_a_cluster(cluster, namespace):
    app = App("ctest", broker=cluster.url, namespace=namespace, result_ttl=0)
    queue = on_shards(cluster, namespace, 1)[0]
    doomed = app.send_task("c.never", queue=queue)
    app.revoke(doomed.id)
    assert app.transport.client.zscore(app.transport.keys.of(queue).revoked, doomed.id) == float("inf")
    drain(app, [queue], 1)
    assert doomed.state == "REVOKED"


def test_a_dead_nodes_tasks_are_recovered_by_any_live_node(cluster, capp, namespace):
    a, b = on_shards(cluster, namespace, 2)

    @capp.task(name="c.noop")
    def noop(x):
        return x

    noop.apply_async((1,), queue=a)
    noop.apply_async((2,), queue=b)
    dead = capp.connect_broker(retries=0)
    held = [dead.reserve("gone#1", "gone@host", [q]) for q in (a, b)]  # reserved, never acked, no heartbeat
    assert all(held)
    assert set(fleet.inflight(dead, "gone#1")) == {h.id for h in held}
    live, other = capp.connect_broker(), capp.connect_broker()
    live.heartbeat("alive@host", 30)
    assert live.recover_dead(every=30) == {"gone#1": 2}
    assert other.recover_dead(every=30) == {}, "one sweep per period, fleet-wide (the lock in {ns}:sweep's slot)"
    assert fleet.inflight(live, "gone#1") == []
    drain(capp, [a, b], 2)


def owner_on_another_shard(cluster, broker, queue: str, stem: str) -> str:
    """An owner name whose `ns:hb:<owner>` is served by another primary than `queue`'s slot."""
    for i in range(200):
        owner = f"{stem}{i}@host"
        if cluster.port_of_key(broker.keys.heartbeat(owner)) != cluster.port_of_key(broker.keys.of(queue).queue):
            return owner
    raise AssertionError("no owner name on another shard")


def test_a_live_nodes_tasks_stay_when_its_heartbeat_key_alone_is_lost_with_a_failover(cluster, capp, namespace):
    """`ns:hb:<owner>` lives in a slot of its own, on another shard than the queues. When that shard
    fails over, the promoted replica may hold an older copy of the key (asynchronous replication
    lost its latest refreshes, and nobody could write it during the failover) that expires before
    the owner beats again. A sweep that trusted that one key found the live node dead and requeued
    what it was running on the healthy shards: it ran twice (issue #23's unexplained duplicate in
    tests/integration/test_cluster_failover.py). The key's loss is made here by deleting it: the
    copy of the heartbeat in the queue's own slot still vouches for the node."""
    queue = on_shards(cluster, namespace, 1)[0]
    capp.send_task("c.running", queue=queue)
    node = capp.connect_broker(retries=0)
    owner = owner_on_another_shard(cluster, node, queue, "live")
    cid = f"{owner}/1.1"
    held = node.reserve(cid, owner, [queue])  # a child runs it
    assert held is not None
    node.heartbeat(owner, 30, {"pid": 1}, queues=[queue])  # the master's beat
    qk = node.keys.of(queue)
    client = node.client
    assert 0 < client.pttl(qk.heartbeat(owner)) <= 30_000, "a copy in the queue's slot, with the heartbeat's TTL"
    assert key_slot(qk.heartbeat(owner).encode()) == key_slot(qk.queue.encode())
    client.delete(node.keys.heartbeat(owner))  # what the sweeper sees once the stale copy expired
    sweeper = capp.connect_broker()
    assert sweeper.recover_dead() == {}, "a live node's running task was requeued"
    assert fleet.inflight(sweeper, cid) == [held.id]
    assert client.hget(qk.consumers, cid) == owner.encode(), "and its consumer stays registered"
    # the owner beat between the sweep's look-up and its script: the script checks the copy itself
    assert sweeper._requeue_in(queue, cid, True, owner.encode()) == 0
    assert fleet.inflight(sweeper, cid) == [held.id]
    # once every heartbeat of the node is gone (it died: the copies expire with the TTL), it is recovered
    client.delete(qk.heartbeat(owner))
    assert sweeper.recover_dead() == {cid: 1}
    assert fleet.inflight(sweeper, cid) == [] and client.hget(qk.consumers, cid) is None
    drain(capp, [queue], 1)


def test_a_heartbeat_and_its_copies_are_each_written_and_deleted_on_their_own(cluster, capp, namespace, monkeypatch):
    """A shard that is down (mid-failover) does not keep the other keys from being refreshed: each
    is written on its own, the failed ones once more on a fresh slot table, the error raised after."""
    a, b = on_shards(cluster, namespace, 2)
    broker = capp.connect_broker()
    owner = owner_on_another_shard(cluster, broker, a, "beat")
    down = broker.keys.heartbeat(owner)
    real_set, tries = broker.client.set, []

    def flaky_set(key, *args, **kwargs):
        if key == down:
            tries.append(key)
            raise connection.BROKER_DOWN[0]("Error 111 connecting: Connection refused.")
        return real_set(key, *args, **kwargs)

    monkeypatch.setattr(broker.client, "set", flaky_set)
    with pytest.raises(connection.BROKER_DOWN[0]):
        broker.heartbeat(owner, 30, queues=[a, b])
    assert len(tries) == 2, "the key that failed was sent again once"
    monkeypatch.undo()
    client = broker.client
    assert client.exists(broker.keys.of(a).heartbeat(owner), broker.keys.of(b).heartbeat(owner)) == 2
    broker.heartbeat(owner, 30, queues=[a, b])
    assert client.exists(down) == 1
    broker.stop_heartbeat(owner)
    assert client.exists(down, broker.keys.of(a).heartbeat(owner), broker.keys.of(b).heartbeat(owner)) == 0
    # a consumer's own heartbeat (-P solo) copies into the queues it reserved from
    capp.send_task("c.x", queue=b)
    solo = capp.connect_broker(retries=0)
    assert solo.reserve("solo@host", "solo@host", [b]) is not None
    solo.heartbeat("solo@host", 30)
    assert client.exists(solo.keys.of(b).heartbeat("solo@host")) == 1
    assert client.exists(solo.keys.of(a).heartbeat("solo@host")) == 0
    solo.stop_heartbeat("solo@host")
    solo.requeue_consumer("solo@host")
    drain(capp, [b], 1)


def test_recovery_takes_a_registrys_bytes_as_they_are(cluster, capp, namespace):
    """Hostile registry entries: a consumer id and owner that are not UTF-8 and hold braces. The
    keys built from them stay in the queue's slot (its hash tag comes first), the script compares
    the raw bytes, so the dead consumer's message is recovered (it was logged as dead and left in
    flight, every sweep, when they were decoded with replacement characters)."""
    queue = on_shards(cluster, namespace, 1)[0]
    capp.send_task("c.x", queue=queue, task_id="hostile-1")
    broker = capp.connect_broker()
    qk, client = broker.keys.of(queue), broker.client
    cid, owner = b"ev}{il\xff/1.1", b"ev}{il\xfe@host"
    assert client.rpoplpush(qk.queue, qk.inflight("").encode() + cid) == b"hostile-1"
    client.hset(qk.consumers, cid, owner)
    recovered = broker.recover_dead()
    assert list(recovered.values()) == [1], recovered
    assert client.lrange(qk.queue, 0, -1) == [b"hostile-1"] and client.hget(qk.consumers, cid) is None
    drain(capp, [queue], 1)


def test_a_master_acks_the_task_it_killed_in_the_right_queue(cluster, capp, namespace):
    queue = on_shards(cluster, namespace, 1)[0]
    capp.send_task("c.whatever", queue=queue)
    child = capp.connect_broker(retries=0)
    msg = child.reserve("node#1", "node@h", [queue])
    master = capp.connect_broker()  # another process: it never saw the reservation
    assert master.body(msg.id, queue) is not None and master.body(msg.id, "no-such-queue") is not None
    master.ack("node#1", msg.id, queue="wrong-hint")  # the hint is checked, the queue found
    assert fleet.inflight(master, "node#1") == [] and master.body(msg.id) is None


# -- beat ----------------------------------------------------------------------------------------------
def test_beat_dispatches_each_run_once_and_a_new_leader_sends_what_the_old_one_decided(cluster, capp, namespace):
    from datetime import UTC, datetime

    queue = on_shards(cluster, namespace, 1)[0]
    store = BeatStore(capp.transport)
    assert store.acquire("t1", 30, "beat1") == 0
    slot = datetime(2030, 1, 1, tzinfo=UTC)
    env = message.Envelope(id="run-1", task="c.beat", args=[], kwargs={}, queue=queue)
    body = message.encode(env)
    record = {"slot": 1, "id": env.id, "at": time.time()}
    store._deliver = lambda run, entry: None  # the leader dies after deciding, before sending
    assert store.dispatch("t1", "e1", slot, slot, record, env, body) == DISPATCHED
    assert store.dispatch("t1", "e1", slot, slot, record, env, body) == 0, "a run is decided once"
    del store._deliver
    assert capp.transport.client.llen(capp.transport.keys.of(queue).queue) == 0
    assert store.release("t1")
    successor = BeatStore(capp.connect_broker())
    assert successor.acquire("t2", 30, "beat2") == 0  # takes the lock, delivers what was left
    assert successor.deliver_outbox() == 0
    assert capp.transport.client.lrange(capp.transport.keys.of(queue).queue, 0, -1) == [b"run-1"]
    assert successor.runs()["e1"]["id"] == "run-1"


# -- fleet views and the CLI -------------------------------------------------------------------------
def test_fleet_views_and_operator_commands_on_a_cluster(cluster, capp, namespace):
    a, b = on_shards(cluster, namespace, 2)
    for q in (a, a, b):
        capp.send_task("c.nothing", queue=q)
    fleet.publish_raw(capp.transport, b, "bad-1", b"[]")
    drain(capp, [b], 2, cid="fv")  # an unknown task and a malformed message: two dead letters
    env = {"QDEPLOY_NAMESPACE": namespace}
    stats = json.loads(run_cli("queues", "--json", "-b", cluster.url, env=env).stdout)
    by_queue = {row["queue"]: row for row in stats}
    assert by_queue[a]["ready"] == 2 and by_queue[b]["dead"] == 2
    listed = run_cli("dead-letter", "list", "-b", cluster.url, env=env)
    assert listed.returncode == 0 and "bad-1" in listed.stdout, listed.stdout + listed.stderr
    requeued = run_cli("dead-letter", "requeue", "bad-1", "-b", cluster.url, env=env)
    assert requeued.returncode == 0, requeued.stderr
    assert capp.transport.client.lrange(capp.transport.keys.of(b).queue, 0, -1) == [b"bad-1"]
    purged = run_cli("purge", "-Q", a, "--yes", "-b", cluster.url, env=env)
    assert purged.returncode == 0, purged.stderr
    assert capp.transport.client.llen(capp.transport.keys.of(a).queue) == 0
    assert fleet.purge_dead(capp.transport) == 1


def test_a_real_prefork_worker_serves_queues_on_two_shards(cluster, namespace, tmp_path):
    from tests.integration.workers import Master

    a, b = on_shards(cluster, namespace, 2)
    app = App("itest", broker=cluster.url, namespace=namespace)
    master = Master(cluster.url, namespace, tmp_path, "--allow-root", "-c", "2", "-Q", f"{a},{b}").ready()
    try:
        sent = [app.send_task("t.pid", queue=q) for q in (a, b) for _ in range(5)]
        pids = {r.get(timeout=20) for r in sent}
        assert pids <= {c.pid for c in master.children()}
        status = run_cli("status", "--json", "-b", cluster.url, env={"QDEPLOY_NAMESPACE": namespace})
        assert [row["owner"] for row in json.loads(status.stdout)] == [master.argv[master.argv.index("-n") + 1]]
        env = {"QDEPLOY_NAMESPACE": namespace}
        ping = run_cli("control", "ping", "-b", cluster.url, env=env)  # the control channel: pub/sub on a cluster
        assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
        stats = run_cli("inspect", "queues", "-b", cluster.url, env=env)
        assert stats.returncode == 0 and a in stats.stdout, stats.stdout + stats.stderr
    finally:
        master.signal(signal.SIGTERM)
        code = master.wait(30)
    assert code == 0, master.output()[-2000:]


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, reason", [
    ("redis+cluster://", "expected at least one cluster node host[:port]"),
    ("redis+cluster:///0", "expected at least one cluster node host[:port]"),
    ("redis+cluster://h1:70000", "expected a port from 1 to 65535"),
    ("redis+cluster://h1:x", "expected a port from 1 to 65535"),
    ("redis+cluster://h1,,h2", "expected host[:port] between the commas"),
    ("redis+cluster://h1:7000/1", "a Redis Cluster has only database 0"),
    ("redis+cluster://h1:7000?db=2", "a Redis Cluster has only database 0"),
    ("redis+cluster://h1:7000?master=m", "Redis Cluster and Sentinel do not mix"),
    ("redis+cluster://h1:7000?sentinel_password=x", "Redis Cluster and Sentinel do not mix"),
    ("sentinel+cluster://h1:7000", "Redis Cluster and Sentinel do not mix"),
    ("redis+cluster+sentinel://h1:7000", "Redis Cluster and Sentinel do not mix"),
    ("redis+cluster://h1:7000;sentinel://h2:26379", "Redis Cluster and Sentinel do not mix"),
    ("redis+cluster://h1:7000;redis+cluster://h2:7001", "expected one URL: list several nodes in one"),
    ("cluster://h1:7000", "cluster:// is spelt redis+cluster:// in qdeploy"),
    ("redis+cluster://h1?ssl_ca_certs=/ca.crt", "needs a TLS scheme"),
    ("redis+cluster://h1?wait_replicas=99", "wait_replicas=: expected a number of replicas from 0 to 16"),
    ("redis+cluster://h1?wait_timeout=0", "wait_timeout=: expected milliseconds"),
    ("redis+cluster://:s3cr3t@h1?wait_replicas=-1", "wait_replicas=: expected"),
])
def test_a_malformed_cluster_url_is_one_line_and_exit_2(url, reason):
    result = run_cli("status", "-b", url)
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip()
    assert reason in line and "\n" not in line and "Traceback" not in line, line
    assert "s3cr3t" not in line


def test_an_unreachable_cluster_is_one_line_and_exit_3(tmp_path):
    from tests.integration.cluster import free_ports

    nodes = ",".join(f"127.0.0.1:{p}" for p in free_ports(3))
    result = run_cli("status", "-b", f"redis+cluster://:pw-x1@{nodes}")
    assert result.returncode == 3, result.stdout + result.stderr
    line = result.stderr.strip()
    assert "cannot reach broker" in line and "no node of the cluster answered" in line, line
    assert "\n" not in line and "pw-x1" not in line


def test_a_crossslot_error_is_a_redis_error_of_one_line(cluster):
    """The server's CROSSSLOT reply and redis-py's own refusal to send keys of two slots in one
    command are both RedisErrors here (every loop and command catches those), shown in one line."""
    client = connection.connect(cluster.url)
    texts = []
    with pytest.raises(connection.ResponseError) as server:
        client.execute_command("MSET", "{a}x", 1, "{b}y", 2, target_nodes=client.get_primaries()[0])
    texts.append(connection.error_text(server.value))
    with pytest.raises(connection.RedisError) as refused:
        client.execute_command("MSET", "{a}x", 1, "{b}y", 2)
    texts.append(connection.error_text(refused.value))
    with pytest.raises(connection.ResponseError) as keyless:  # a script that declares no key
        connection.hot_path(client).command("EVAL", "return 1", 0)
    texts.append(connection.error_text(keyless.value))
    assert all(t.startswith("CROSSSLOT") and "\n" not in t for t in texts), texts


def test_results_of_many_slots_are_read_together(cluster, capp):
    ids = [f"r{i}" for i in range(50)]
    for task_id in ids:
        capp.results.store(task_id, results.record("SUCCESS", result=task_id))
    assert [r["result"] for r in capp.results.get_many(ids)] == ids
    assert len({key_slot(capp.results.key(t).encode()) for t in ids}) > 10


# -- the hot path follows the cluster: a queue's slot migrated while a consumer works --------------
def test_the_hot_path_follows_ask_and_moved_while_a_queues_slot_migrates(cluster, capp, namespace):
    """A queue's slot is moved to another primary the way `redis-cli --cluster reshard` does it
    (IMPORTING/MIGRATING, MIGRATE of its keys, SETSLOT NODE), with messages published and consumed
    before and after. While the slot is split, a single-key command for a key that moved is sent
    to the importing node after ASKING; a script (several keys, some not existing) gets TRYAGAIN
    from Redis until the slot has moved: retried, then refused for now (the consumer backs off).
    Once the slot is there, MOVED patches the slot table. Nothing is lost or run twice."""
    queue = on_shards(cluster, namespace, 1)[0]
    slot = key_slot(f"{{{namespace}:{queue}}}:q".encode())
    source = cluster.port_of_slot(slot)
    target = next(p for p in cluster.primary_ports() if p != source)
    ids = {p: cluster.client(p).execute_command("CLUSTER", "MYID").decode() for p in (source, target)}
    ran = []

    @capp.task(name="c.mig")
    def mig(i):
        ran.append(i)

    broker = capp.transport
    consumer = Consumer(capp, [queue], "mig", poll_interval=0.01, broker=broker)
    for i in range(5):
        mig.apply_async((i,), queue=queue)
    consumer.run(max_tasks=3)
    src, dst = cluster.client(source), cluster.client(target)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    tagged = f"{{{namespace}:{queue}}}-result"  # a task id whose result key hashes into the moving slot
    broker._store(tagged, results.record("SUCCESS", result=1))
    assert broker.fast.redirected["ask"] >= 1, "the hot path followed ASK to the importing node"
    with pytest.raises(connection.ClusterDown, match="still redirected"):  # TRYAGAIN, retried, refused for now
        broker.reserve("mig", "mig", [queue])
    assert broker.fast.redirected["tryagain"] >= 1
    for port in cluster.primary_ports():
        cluster.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    for i in range(5, 10):
        mig.apply_async((i,), queue=queue)
    consumer.run(max_tasks=7)
    assert cluster.port_of_slot(slot) == target
    assert broker.fast.redirected["moved"] >= 1, "a MOVED reply patched the slot table"
    assert sorted(ran) == list(range(10)), "nothing lost, nothing ran twice"
    assert capp.results.get(tagged)["result"] == 1
