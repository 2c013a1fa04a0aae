"""The round trips of the hot paths, counted on a real Redis (INFO commandstats), and the packed
command path's behaviour when Redis refuses a command."""

import pytest
import redis

from qdeploy.worker import Consumer
from qdeploy.ops import fleet
from tests.integration.conftest import drain


def calls(client, *commands: str) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in commands)


def test_delay_is_one_scripted_round_trip(app, rclient):
    @app.task(name="one")
    def one(x):
        return x

    one.delay(0)  # loads the script (EVALSHA -> NOSCRIPT -> EVAL) on a fresh server
    before, multi = calls(rclient, "evalsha", "eval"), calls(rclient, "multi")
    results = [one.delay(i) for i in range(1, 11)]
    assert calls(rclient, "evalsha", "eval") - before == 10
    assert calls(rclient, "multi") == multi
    drain(app, 11)
    assert [r.get(timeout=1) for r in results] == list(range(1, 11))


def test_a_consumer_running_one_task_makes_two_scripted_calls(app, rclient, namespace):
    """Reserve (+ register), then ack + give back + unregister in one call: a child recycled
    after every task costs Redis two round trips besides its connect, and nothing more."""
    @app.task(name="t")
    def t():
        return 1

    t.delay()
    consumer = Consumer(app, ["default"], "c1", fresh=True, heartbeat=False, owner="node")
    consumer.broker.ping()  # connect the pool's own connection first: HELLO would show below
    before = calls(rclient, "evalsha", "eval")
    hello, blmove, ping = calls(rclient, "hello"), calls(rclient, "blmove"), calls(rclient, "ping")
    assert consumer.run(max_tasks=1) == 1
    assert calls(rclient, "evalsha", "eval") - before == 2
    assert calls(rclient, "hello") == hello, "connections speak RESP2: no HELLO handshake"
    assert calls(rclient, "ping") == ping, "a connection made just now needs no health-check PING"
    assert calls(rclient, "blmove") == blmove
    assert rclient.hget(f"{namespace}:consumers", "c1") is None
    assert rclient.llen(f"{namespace}:inflight:c1") == 0


def test_a_new_pooled_connection_sends_no_health_check_ping(redis_server, rclient):
    """The same for the pool's connections (the master's, control's, results'): redis-py would
    PING before the first command of a connection whose handshake read no reply."""
    from qdeploy.core.connection import connect

    client = connect(redis_server.url)
    ping, get = calls(rclient, "ping"), calls(rclient, "get")
    assert client.get("qdeploy-test-no-such-key") is None
    assert calls(rclient, "get") == get + 1
    assert calls(rclient, "ping") == ping
    client.close()


def test_leaving_gives_back_what_the_consumer_still_holds(app, rclient, namespace):
    @app.task(name="t")
    def t():
        return 1

    t.delay()
    stray = t.delay()  # pretend a lost reply left this one reserved by c1
    rclient.lrem(f"{namespace}:q:default", 1, stray.id)
    rclient.lpush(f"{namespace}:inflight:c1", stray.id)
    consumer = Consumer(app, ["default"], "c1", fresh=True, heartbeat=False, owner="node")
    assert consumer.run(max_tasks=1) == 1
    assert rclient.lrange(f"{namespace}:q:default", 0, -1) == [stray.id.encode()]
    assert rclient.hget(f"{namespace}:consumers", "c1") is None
    drain(app, 1)
    assert stray.get(timeout=1) == 1


def test_a_refused_batch_raises_and_the_connection_stays_usable(app, rclient, namespace):
    @app.task(name="t")
    def t(x):
        return x

    rclient.set(f"{namespace}:q:default", "not a list")  # LPUSH inside EXEC fails: WRONGTYPE
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        t.map(range(5))
    broker = app.transport
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):  # EXECABORT
        broker.fast.transaction([("HSET", f"{namespace}:msg")])
    rclient.delete(f"{namespace}:q:default")
    results = t.map(range(5))  # same thread, same connection: no reply left on the wire
    assert fleet.queue_length(broker, "default") == 5
    drain(app, 5)
    assert [r.get(timeout=1) for r in results] == list(range(5))


def test_a_broken_connection_is_reopened_by_the_next_call(app, rclient):
    @app.task(name="t")
    def t(x):
        return x

    t.delay(1)
    broker = app.transport
    for info in rclient.client_list():  # the server drops every client but ours
        if int(info["id"]) != rclient.client_id():
            rclient.client_kill_filter(_id=info["id"])
    t.delay(2)  # the dead connection fails, is dropped, and the publish retried on a new one
    assert fleet.queue_length(broker, "default") == 2


def test_producers_in_many_short_lived_threads(app, rclient):
    """Each thread sends on a connection of its own; it is closed when the thread ends, and the
    client's pool limit (100 in redis-py 8) does not count them."""
    import gc
    import threading

    @app.task(name="t")
    def t(x):
        return x

    errors = []

    def send(i):
        try:
            t.delay(i)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for batch in range(3):
        threads = [threading.Thread(target=send, args=(batch * 50 + i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    gc.collect()
    assert errors == []
    assert fleet.queue_length(app.transport, "default") == 150
    assert len(rclient.client_list()) < 10, "connections of finished threads must be closed"


def test_a_producer_reconnects_after_a_redis_restart_even_without_retry(make_server, namespace):
    """`retry=False` means no retry policy when Redis is down, not failing on a connection the
    server closed while idle: like redis-py's client, the stale connection is reopened."""
    from qdeploy import App

    server = make_server()
    app = App("itest", broker=server.url, namespace=namespace)
    app.send_task("t.x", retry=False)
    app.send_many([("t.x", (), {}) for _ in range(3)])
    server.restart(downtime=0.1)
    kept = server.client().llen(f"{namespace}:q:default")
    app.send_task("t.x", retry=False)  # one round trip on the dead connection, then a new one
    app.send_many([("t.x", (), {}) for _ in range(3)])
    assert fleet.queue_length(app.transport, "default") == kept + 4
    server.stop()
    with pytest.raises(redis.ConnectionError):
        app.send_task("t.x", retry=False)


def test_connections_prepared_for_a_fork_are_only_used_by_the_child(app):
    import os

    broker = app.connect_broker(retries=0)
    broker.prepare_fork(1)
    template = broker.fast._templates[0]
    assert broker.fast._connection() is not template, "the master must never connect a template"
    broker.ping()
    pid = os.fork()
    if pid == 0:  # the child takes its copy of the template, and it works
        try:
            ok = broker.fast._connection() is template and broker.fast.command("PING") == b"PONG"
        finally:
            os._exit(0 if ok else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert template._sock is None, "the master's template is still unconnected"


def test_delay_polls_for_a_prompt_reply_and_stops_when_replies_are_slow(app):
    """`_await_reply` on a real socket pair: a reply already there ends the polling at once;
    replies that keep missing the polling window turn it off for a while; a connection
    without redis-py's private `_sock` is not polled."""
    import socket
    from types import SimpleNamespace

    from qdeploy.core import connection as hotpath

    broker = app.connect_broker()
    mine, redis_end = socket.socketpair()
    conn = SimpleNamespace(_sock=mine)
    redis_end.sendall(b":1\r\n")
    broker.fast._await_reply(conn)
    assert (broker.fast._spin_misses, broker.fast._spin_backoff) == (0, 0)
    mine.recv(16)
    for missed in range(1, hotpath.SPIN_MISSES):  # nothing arrives: each call waits out SPIN
        broker.fast._await_reply(conn)
        assert (broker.fast._spin_misses, broker.fast._spin_backoff) == (missed, 0)
    broker.fast._await_reply(conn)
    assert (broker.fast._spin_misses, broker.fast._spin_backoff) == (0, hotpath.SPIN_BACKOFF)
    broker.fast._await_reply(conn)
    assert broker.fast._spin_backoff == hotpath.SPIN_BACKOFF - 1, "backing off: no polling"
    mine.close()
    redis_end.close()
    broker.fast._spin_backoff = 0
    broker.fast._await_reply(SimpleNamespace())  # a redis-py without `_sock`: no polling, no error
    assert (broker.fast._spin_misses, broker.fast._spin_backoff) == (0, 0)


def _received(app, rclient, namespace, body: bytes | str, task_id: str):
    """Store `body` under `task_id`, reserve it (results tracked) and return its RECEIVED record."""
    import json

    rclient.hset(f"{namespace}:msg", task_id, body)
    rclient.lpush(f"{namespace}:q:default", task_id)
    got = app.transport.reserve("c9", "node", ["default"], track=True)
    assert got is not None and got.id == task_id
    raw = rclient.get(app.transport.keys.result(task_id))
    return json.loads(raw) if raw else None


@pytest.mark.parametrize("case", ["ignored", "tracked", "older producer, ignored", "older producer, tracked",
                                  "the key in the arguments", "escaped id", "not JSON"])
def test_the_received_record_reads_the_task_name_and_ignore_result_right_whatever_the_body(
        app, rclient, namespace, case):
    """The reserve script reads a body's first fields when they are in qdeploy's order and decodes
    any other body in full: whichever way, RECEIVED is written exactly for tracked tasks, with the
    right name (reserve.lua's `head`)."""
    import json

    from qdeploy.core import message

    def ours(**options):
        return message.encode(message.build("t.name", [1], {"k": 2}, queue="default", task_id="id-1", **options))

    older = {"v": 1, "id": "id-1", "task": "t.name", "args": [1], "kwargs": {}, "queue": "default", "eta": None,
             "expires": None, "retries": 0, "max_retries": None, "limits": {}, "created": 1.0, "origin": "h:1"}
    body, task_id, expect = {
        "ignored": (ours(ignore_result=True), "id-1", None),
        "tracked": (ours(), "id-1", "t.name"),
        "older producer, ignored": (json.dumps({**older, "ignore_result": True}, separators=(",", ":")), "id-1", None),
        "older producer, tracked": (json.dumps({**older, "ignore_result": False}), "id-1", "t.name"),
        "the key in the arguments": (message.encode(message.build("t.name", [], {"ignore_result": True},
                                                                  queue="default", task_id="id-1")), "id-1", "t.name"),
        "escaped id": (message.encode(message.build("t.name", [], queue="default", task_id='a"b\\c')), 'a"b\\c',
                       "t.name"),
        "not JSON": (b"\x00garbage", "id-1", None),
    }[case]
    if case == "ignored":
        assert json.loads(body)["ignore_result"] is True and body.index('"ignore_result"') < body.index('"args"')
    record = _received(app, rclient, namespace, body, task_id)
    assert (record or {}).get("task") == expect and ((record or {}).get("state") == "RECEIVED") == (expect is not None)
