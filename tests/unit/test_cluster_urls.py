"""Redis Cluster and WAIT in the one URL grammar (no server): the forms, redaction, the options,
the bad forms; the cluster key layout; how follow-ups split between an ack script and its
outbox (pure logic)."""

from __future__ import annotations

import pytest

from qdeploy.core.clusterbroker import parse_ops, split_ops
from qdeploy.core.connection import ClusterHotPath, HotPath, connect, slot_of
from qdeploy.core.keys import ClusterKeys, Keys
from qdeploy.core.urls import BrokerURL, BrokerURLError, redact, redact_text

SECRET = "Sekr1t-x"


@pytest.mark.parametrize("url, expected", [
    ("redis+cluster://h1:7000,h2:7001", dict(scheme="redis+cluster", hosts=(("h1", 7000), ("h2", 7001)), tls=False)),
    ("redis+cluster://h1", dict(hosts=(("h1", 6379),), db=0)),
    ("redis+cluster://u:pw@h1:7000,[::1]:7001/0", dict(username="u", password="pw", hosts=(("h1", 7000), ("::1", 7001)))),
    ("rediss+cluster://h1:7000?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required",
     dict(tls=True, options={"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "required"})),
    ("redis+cluster://h1?wait_replicas=1&wait_timeout=250", dict(wait=(1, 250))),
    ("redis://h/0?wait_replicas=2", dict(wait=(2, 1000))),
    ("sentinel://s1,s2/0?master=m&wait_replicas=1", dict(wait=(1, 1000))),
    ("redis://h/0", dict(wait=None)),
    ("redis+cluster://h?wait_replicas=0", dict(wait=None)),
])
def test_cluster_forms_and_wait(url, expected):
    parsed = BrokerURL.parse(url)
    for name, value in expected.items():
        assert getattr(parsed, name) == value, (name, getattr(parsed, name))
    assert parsed.cluster == parsed.scheme.endswith("+cluster")


def test_cluster_urls_are_redacted():
    url = f"redis+cluster://app:{SECRET}@h1:7000,h2:7001?password=x&wait_replicas=1"
    with pytest.raises(BrokerURLError):  # the password twice: refused, and still redacted
        BrokerURL.parse(url)
    good = f"rediss+cluster://app:{SECRET}@h1:7000,h2:7001?ssl_password={SECRET}&wait_replicas=1"
    assert redact(good) == "rediss+cluster://app:***@h1:7000,h2:7001?ssl_password=***&wait_replicas=1"
    assert SECRET not in redact_text(f"cannot reach {good} now")
    assert SECRET not in repr(BrokerURL.parse(good)) and SECRET not in str(BrokerURL.parse(good))


@pytest.mark.parametrize("url, reason", [
    ("redis+cluster://", "expected at least one cluster node host[:port]"),
    ("redis+cluster://h1:0", "expected a port from 1 to 65535"),
    ("redis+cluster://h1:65536", "expected a port from 1 to 65535"),
    ("redis+cluster://h1,h1", "expected each host once"),
    ("redis+cluster://h1/1", "a Redis Cluster has only database 0"),
    ("redis+cluster://h1?db=1", "a Redis Cluster has only database 0"),
    ("redis+cluster://h1?master=m", "Redis Cluster and Sentinel do not mix"),
    ("redis+cluster://h1?sentinel_username=u", "Redis Cluster and Sentinel do not mix"),
    ("redis+sentinel+cluster://h1", "Redis Cluster and Sentinel do not mix"),
    ("rediss+cluster+sentinel://h1", "Redis Cluster and Sentinel do not mix"),
    ("sentinel://h1/0?master=m;redis+cluster://h2", "Redis Cluster and Sentinel do not mix"),
    ("redis-cluster://h1", "redis-cluster:// is spelt redis+cluster:// in qdeploy"),
    ("redis+cluster://h1?ssl_certfile=/c.pem", "needs a TLS scheme"),
    ("redis+cluster://h1?wait_replicas=x", "wait_replicas=: expected a number of replicas from 0 to 16"),
    ("redis+cluster://h1?wait_timeout=600001", "wait_timeout=: expected milliseconds from 1 to 600000"),
    ("redis+cluster://h1?wait_replica=1", "did you mean 'wait_replicas'"),
    (f"redis+cluster://:{SECRET}@h1:x{SECRET}", "expected a port"),
])
def test_bad_cluster_urls_are_one_line_without_the_password(url, reason):
    with pytest.raises(BrokerURLError) as caught:
        BrokerURL.parse(url)
    message = str(caught.value)
    assert reason in message and "\n" not in message and SECRET not in message, message


def test_an_unreachable_cluster_is_a_connection_error():
    from qdeploy.core.connection import BROKER_DOWN

    with pytest.raises(BROKER_DOWN, match="no node of the cluster answered"):
        connect("redis+cluster://127.0.0.1:1,127.0.0.1:2", connect_timeout=0.5)


def test_the_hot_path_of_a_plain_client_is_unchanged():
    client = connect("redis://127.0.0.1:1/0")
    assert type(HotPath(client)) is HotPath and not issubclass(HotPath, ClusterHotPath)


# -- the key layout ----------------------------------------------------------------------------
def test_every_key_of_a_queue_is_in_the_queues_slot_and_queues_differ():
    keys = ClusterKeys("ns")
    for queue in ("default", "a.b:c-d", "q" * 100):
        qk = keys.of(queue)
        names = [qk.queue, qk.eta, qk.msg, qk.dlv, qk.consumers, qk.dead, qk.revoked, qk.rate, qk.rate_slots,
                 qk.unique, qk.unique_expiry, qk.outbox, qk.outbox_due, qk.once, qk.inflight("node@h#1"),
                 qk.heartbeat("node@h"), qk.heartbeat("}{evil")]
        assert len({slot_of(n) for n in names}) == 1, names
        assert all(n.startswith(f"{{ns:{queue}}}:") for n in names)
    assert len({slot_of(keys.of(f"q{i}").queue) for i in range(50)}) > 40, "queues spread over slots"
    assert slot_of(keys.chord("g1")) == slot_of(keys.chord_results("g1"))
    assert len({slot_of(k) for k in (keys.beat_lock, keys.beat_last, keys.beat_runs, keys.beat_outbox,
                                     keys.beat_entries, keys.beat_disabled, keys.beat_rev)}) == 1


def test_single_server_names_stay_what_the_previous_release_wrote():
    keys = Keys("ns")
    qk = keys.of("default")
    assert (qk.queue, qk.eta, qk.msg, qk.dlv, qk.consumers, qk.dead, qk.inflight("c")) == \
        ("ns:q:default", "ns:eta:default", "ns:msg", "ns:dlv", "ns:consumers", "ns:dead", "ns:inflight:c")
    assert (keys.beat_lock, keys.chord("g"), keys.result("x")) == ("ns:beat:lock", "ns:chord:g", "ns:r:x")


# -- follow-ups: inline with the ack, or through the outbox ------------------------------------
def _ops(*ops) -> list:
    out = [str(len(ops))]
    for op in ops:
        out += op
    return out


def test_parse_ops_reads_back_what_encode_ops_writes():
    argv = _ops(["m", "id1", "a", "", "{}"], ["c", "g", "4", " n", "2", "t1", "0"],
                ["p", "g", "t1", "5", "", "1", "a\n\nid9\n{}"], ["u", "key", "id1"])
    assert parse_ops(argv) == [["m", "id1", "a", "", "{}"], ["c", "g", "4", " n", "2", "t1", "0"],
                               ["p", "g", "t1", "5", "", "1", "a\n\nid9\n{}"], ["u", "key", "id1"]]
    with pytest.raises(ValueError, match="unknown follow-up op"):
        parse_ops(["1", "z", "x"])


def test_same_queue_steps_stay_in_the_ack_until_one_must_go_elsewhere():
    ops = parse_ops(_ops(["m", "n1", "a", "", "{1}"], ["u", "k", "id"], ["m", "n2", "b", "", "{2}"],
                         ["m", "n3", "a", "", "{3}"]))
    inline, remote = split_ops(ops, "a")
    assert inline == ["2", "m", "n1", "", "{1}", "u", "k", "id"]
    assert remote == [["m", "n2", "b", "", "{2}"], ["m", "n3", "a", "", "{3}"]], \
        "after an op for another slot, order holds: the rest goes through the outbox too"


def test_a_chord_goes_before_its_header_messages_even_in_the_same_queue():
    ops = parse_ops(_ops(["c", "g", "2", " n", "1"], ["m", "h1", "a", "", "{}"]))
    inline, remote = split_ops(ops, "a")
    assert inline == [] and [op[0] for op in remote] == ["c", "m"]
