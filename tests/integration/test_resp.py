"""qdeploy's own connection (qdeploy/core/resp.py) on a real Redis: the handshake (ACL user,
database, client name), a unix socket, refusals, and a worker on one server that never loads
redis-py's client stack (qdeploy/_imports.py) while it runs tasks, recycles children, answers
inspect and writes heartbeats, events and history."""

import re
import signal
import subprocess
import sys
import urllib.request

import pytest
from redis import exceptions as rexc

from qdeploy.core import resp
from qdeploy.core.broker import Broker
from qdeploy.core.connection import BROKER_DOWN, HotPath, connect
from qdeploy.ops.control import Control
from tests.integration.conftest import free_port


def client_list(rclient) -> list[dict]:
    return rclient.client_list()


def test_the_handshake_authenticates_selects_and_names(redis_server, rclient, namespace):
    user = f"r_{namespace}"
    rclient.acl_setuser(user, enabled=True, passwords=["+pw1"], keys=["~*"], channels=["&*"], commands=["+@all"])
    try:
        hot = HotPath(connect(f"redis://{user}:pw1@127.0.0.1:{redis_server.port}/7", client_name=f"n-{namespace}"))
        assert hot.command("SET", f"{namespace}:k", "v") == b"OK"
        assert rclient.execute_command("SELECT", 7) and redis_server.client(db=7).get(f"{namespace}:k") == b"v"
        mine = [c for c in client_list(rclient) if c["name"] == f"n-{namespace}"]
        assert len(mine) == 1 and mine[0]["user"] == user and mine[0]["db"] == "7"
        assert "redis.client" not in type(hot._connection()).__module__  # qdeploy's own
        assert isinstance(hot._connection(), resp.Connection)
    finally:
        rclient.acl_deluser(user)
        redis_server.client(db=7).delete(f"{namespace}:k")


@pytest.mark.parametrize("url, cls, text", [
    ("redis://nobody_at_all:wrong@127.0.0.1:{port}/0", rexc.AuthenticationError, "invalid username-password"),
    ("redis://:wrong@127.0.0.1:{port}/0", rexc.AuthenticationError, ""),  # no password set: refused too
    ("redis://127.0.0.1:{port}/99", rexc.ConnectionError, "SELECT refused by 127.0.0.1:{port}: DB index is out of range"),
])
def test_a_refused_handshake_is_a_connection_error_that_says_why(redis_server, url, cls, text):
    hot = HotPath(connect(url.format(port=redis_server.port), retries=0))
    with pytest.raises(BROKER_DOWN) as caught:
        hot.command("PING")
    assert isinstance(caught.value, cls) and text.format(port=redis_server.port) in str(caught.value)


def test_a_unix_socket_and_a_password(make_server, namespace):
    server = make_server(password="s3cret")
    hot = HotPath(connect(f"unix://:s3cret@{server.socket}?db=2"))
    assert hot.command("PING") == b"PONG"
    assert hot._connection().where == f"unix:{server.socket}"
    with pytest.raises(rexc.AuthenticationError):
        HotPath(connect(f"unix://:nope@{server.socket}", retries=0)).command("PING")


def test_script_cache_loss_and_a_restart_are_survived(make_server, namespace):
    """EVALSHA after SCRIPT FLUSH falls back to EVAL; a restarted server is reconnected to by
    the next call of a client with retries; one without gets the ConnectionError."""
    server = make_server()
    broker = Broker(server.url, namespace)
    assert broker.consumers() == {}
    server.client().script_flush()
    assert broker.recover_dead(0) == {}  # NOSCRIPT -> EVAL on the same connection
    server.restart()
    assert broker.ping()
    consumer = Broker(server.url, namespace, retries=0)
    assert consumer.ping()
    server.restart()
    with pytest.raises(BROKER_DOWN):
        consumer.ping()
    assert consumer.ping()  # the next call opens a new connection


def test_a_reply_bigger_than_a_read_and_binary_data(rclient, app, namespace):
    hot = app.transport.fast
    blob = bytes(range(256)) * 8192 + b"\r\n$-1\r\n"
    assert hot.command("SET", f"{namespace}:blob", blob) == b"OK"
    assert hot.command("GET", f"{namespace}:blob") == blob
    assert hot.pipeline([("GET", f"{namespace}:blob"), ("HGET", f"{namespace}:blob", "x"), ("PING",)],
                        raise_on_error=False)[0] == blob
    replies = hot.pipeline([("HGET", f"{namespace}:blob", "x"), ("PING",)], raise_on_error=False)
    assert type(replies[0]) is rexc.ResponseError and replies[1] == b"PONG"  # WRONGTYPE in its place
    with pytest.raises(rexc.ResponseError, match="WRONGTYPE"):  # by default the first error is raised
        hot.pipeline([("PING",), ("HGET", f"{namespace}:blob", "x")])
    assert hot.command("PING") == b"PONG"  # every reply was read: the connection is in step


def test_a_worker_on_one_server_never_loads_redis_py_s_client(masters, tapp, redis_server, namespace):
    """Every import of the master and of every child (PYTHONPROFILEIMPORTTIME writes them all to
    the worker's output) while it runs tasks in recycled children, answers inspect, serves
    /metrics (queue depths: scans of the fleet), and writes heartbeats, sweeps, events and the
    task history: redis-py's exceptions and Retry only."""
    port = free_port()
    m = masters("-c", "2", "--max-tasks-per-child", "2", "-E", "--metrics-port", str(port),
                env={"PYTHONPROFILEIMPORTTIME": "1"}).ready()
    results = [tapp.send_task("t.pid") for _ in range(6)]  # no tag: the task itself uses no client
    pids = {r.get(timeout=15) for r in results}
    assert len(pids) >= 3, "the children were recycled"
    owner = f"{m.argv[m.argv.index('-n') + 1]}"
    stats = Control(Broker(redis_server.url, namespace)).inspect("stats", destination=[owner], timeout=5)
    assert owner in stats.replies
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        assert 'qdeploy_queue_messages{queue="default",state="ready"}' in page.read().decode()
    producer = subprocess.run(  # a producer's delay() and .get(), in a process of its own
        [sys.executable, "-c", "import sys\nfrom qdeploy.core.app import App\n"
         f"app = App('p', broker={redis_server.url!r}, namespace={namespace!r})\n"
         "pid = app.send_task('t.pid').get(timeout=15)\n"
         "print(isinstance(pid, int), 'redis.client' in sys.modules)"],
        capture_output=True, text=True, timeout=60)
    assert producer.stdout.split() == ["True", "False"], producer.stderr
    m.signal(signal.SIGTERM)
    assert m.wait(30) == 0
    imported = {line.split("|")[-1].strip() for line in m.output().splitlines() if line.startswith("import time:")}
    assert {"qdeploy.core.resp", "qdeploy.worker.child", "redis.retry"} <= imported, "no import lines?"
    loaded = sorted(name for name in imported if re.fullmatch(r"redis\.(client|connection|cluster|sentinel|commands.*)", name))
    assert loaded == [], f"redis-py's client stack was loaded: {loaded}"
