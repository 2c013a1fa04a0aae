"""Sentinel failover under load (the cluster's failover test, tests/integration/failover.py, on a
master + replica watched by two redis-sentinel processes): two real `qdeploy worker` masters
and a producer on a `sentinel://` URL; mid-run the master is SIGKILLed, the sentinels promote
the replica, workers and producer resume on it without a restart, and every task is accounted
for: completed, or named as lost by asynchronous replication; every duplicate explained. And
`wait_replicas=` on a plain and a sentinel URL: a publish waits for a replica, or says it did not
get one."""

from __future__ import annotations

import signal
import time

import pytest

from qdeploy import App
from qdeploy.core.connection import NotReplicated
from tests.integration.conftest import wait_until
from tests.integration.failover import FailoverRun, Topology
from tests.integration.test_urls import Sentinels

pytestmark = pytest.mark.slow


class SentinelTopology(Topology):
    def __init__(self, sentinels: Sentinels, lag: float = 0.0):
        self.sentinels, self.lag = sentinels, lag
        self.url = sentinels.url()
        self.servers = {sentinels.ports[s]: s for s in (sentinels.master, sentinels.replica)}
        self.current = sentinels.ports[sentinels.master]

    def primary_of(self, queue: str, namespace: str) -> int:
        return self.current

    def kill(self, port: int) -> int:
        replica = next(p for p in self.servers if p != port)
        if self.lag:  # as in the cluster test: the replica misses what the master takes meanwhile
            self.servers[replica].proc.send_signal(signal.SIGSTOP)
            self.servers[port].client().client_kill_filter(_type="replica")
            time.sleep(self.lag)
        self.servers[port].proc.kill()
        self.servers[port].proc.wait(10)
        if self.lag:
            self.servers[replica].proc.send_signal(signal.SIGCONT)
        return replica

    def wait_promoted(self, dead: int, replica: int) -> None:
        for port in self.sentinels.sentinel_ports:
            wait_until(lambda p=port: self.sentinels.master_port(p) == replica, 30, interval=0.05,
                       what=f"sentinel {port} to name the new master")
        wait_until(lambda: self.servers[replica].client().info("replication")["role"] == "master", 10)
        self.current = replica

    def holds(self, namespace: str, queue: str, task_id: str) -> bool:
        client = self.servers[self.current].client()
        if client.hexists(f"{namespace}:msg", task_id) or task_id.encode() in client.lrange(f"{namespace}:q:{queue}", 0, -1):
            return True
        return any(task_id.encode() in client.lrange(k, 0, -1) for k in client.scan_iter(f"{namespace}:inflight:*"))


@pytest.fixture
def sentinels(make_server, tmp_path):
    topology = Sentinels(make_server, tmp_path, tls=False)
    yield topology
    topology.stop()


def test_the_master_killed_mid_run_loses_only_what_async_replication_lost_and_names_it(sentinels, namespace,
                                                                                         tmp_path, capsys):
    topology = SentinelTopology(sentinels, lag=0.6)
    lines: list[str] = []
    account = FailoverRun(topology, tmp_path, ["a", "b"], namespace=namespace, kill_queue="a", countdown=1.5,
                          log=lines.append).execute()
    with capsys.disabled():
        print("\n" + "\n".join(lines) + "\n" + account.summary())
    assert account.problems == [], account.problems
    assert account.sent > 200 and account.after_failover > 50, "producer and workers resumed on the new master"
    assert account.completed + len(account.lost) == account.sent
    assert account.lost, "the paused replica missed some publishes (else this run proved nothing)"
    assert all(why.startswith("lost by asynchronous replication") for why in account.lost.values()), account.lost
    assert "UNEXPLAINED" not in account.explained, account.duplicated


def test_wait_replicas_on_a_plain_and_a_sentinel_url(sentinels, namespace):
    """A publish with `wait_replicas=1` returns once the replica has it; with the replica paused
    it raises NotReplicated after `wait_timeout`, naming what it got (the message is on the
    primary: the caller decides whether to send it again)."""
    master_port = sentinels.ports[sentinels.master]
    plain = f"redis://:{sentinels.PASSWORD}@127.0.0.1:{master_port}/0?wait_replicas=1&wait_timeout=300"
    for url in (plain, sentinels.url() + "&wait_replicas=1&wait_timeout=300"):
        app = App("w", broker=url, namespace=namespace)
        app.send_task("w.x", task_id=f"ok-{url[:5]}")
        app.send_many([("w.x", (i,), {}) for i in range(3)])
        sentinels.replica.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(NotReplicated, match="only 0 of 1 replicas confirmed it within 300 ms"):
                app.send_task("w.x", task_id=f"late-{url[:5]}")
            assert time.monotonic() - started >= 0.28
        finally:
            sentinels.replica.proc.send_signal(signal.SIGCONT)
        assert app.transport.client.hexists(f"{namespace}:msg", f"late-{url[:5]}"), "it is on the primary"
        commands = sentinels.master.client().info("commandstats")
        assert int(commands["cmdstat_wait"]["calls"]) >= 3
