"""Redis restarted mid-run (same port, data reloaded from its snapshot): nothing is lost."""

from qdeploy.core.app import App
from tests.integration.conftest import wait_until


def test_worker_survives_a_redis_restart(make_server, namespace, workers):
    server = make_server()
    app = App("itest", broker=server.url, namespace=namespace)
    results = app.send_many([("t.nap", (0.03, i), {}) for i in range(60)])
    w = workers("-n", "survivor@test", url=server.url)
    wait_until(lambda: sum(r.ready() for r in results) >= 10, what="some tasks done")
    server.restart(downtime=0.5)
    assert w.proc.poll() is None, "the worker must not exit while Redis is down"
    wait_until(lambda: all(r.ready() for r in results), timeout=30, what="all tasks done")
    assert [r.get(timeout=1) for r in results] == list(range(60))
    assert w.stop() == 0
    log = w.output()
    assert "lost connection to Redis" in log and "connection to Redis restored" in log
    assert server.client().hlen(f"{namespace}:msg") == 0
