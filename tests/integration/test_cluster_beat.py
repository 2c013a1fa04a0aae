"""Beat on Redis Cluster, as real processes: two `qdeploy beat`s on a cluster URL, the leader
SIGKILLed, the standby takes over; no run sent twice, none missed (the lock, anchors and runs
in beat's slot `{ns:beat}`, each run's message delivered to its queue's slot from beat's outbox),
and `qdeploy schedule` editing the dynamic entries there."""

from __future__ import annotations

import json
import signal
import time

import pytest

from qdeploy.beat.store import BeatStore
from qdeploy.core.broker import Broker
from tests.integration.cluster import Cluster
from tests.integration.conftest import run_cli, wait_until
from tests.integration.test_beat_process import SENT, beats, config, env, holder_pid, world  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("beatcluster")).start() as running:
        yield running


def test_two_beats_on_a_cluster_sigkill_the_leader_no_duplicate_no_gap(beats, config, cluster, namespace):  # noqa: F811
    cfg = config(lock_timeout=2.0, url=cluster.url)
    store = BeatStore(Broker(cluster.url, namespace))
    a = beats(cfg, "--allow-root")
    wait_until(lambda: holder_pid(store) == a.pid, 15, what="beat A to lead")
    b = beats(cfg, "--allow-root")
    time.sleep(2.5)
    assert holder_pid(store) == a.pid, "a standby beat never steals a live leader's lock"
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    wait_until(lambda: holder_pid(store) == b.pid, 5, interval=0.05, what="beat B to take over")
    time.sleep(3.0)
    b.send_signal(signal.SIGTERM)
    assert b.wait(10) == 0
    logs = {"a": a.stderr.read(), "b": b.stderr.read()}
    runs = [(m.group(3), m.group(2)) for text in logs.values() for m in SENT.finditer(text)]
    assert runs, logs
    slots = sorted(r[0] for r in runs)
    assert len(slots) == len(set(slots)), "a slot was sent twice"
    queued = [i.decode() for i in store.client.lrange(store.broker.keys.of("default").queue, 0, -1)]
    assert len(queued) == len(set(queued)), "each run's message was delivered once"
    assert {r[1] for r in runs} <= set(queued)
    assert len(queued) - len(runs) <= 1, (queued, runs)  # a leader killed between dispatch and its log line
    assert store.client.hlen(store.keys.beat_outbox) == 0, "nothing left in beat's outbox"
    assert "catching up on missed slots" in logs["b"]


def test_schedule_edits_on_a_cluster(config, cluster, namespace):  # noqa: F811
    cfg = str(config(url=cluster.url))

    def cli(*args):
        return run_cli("schedule", "--config", cfg, *args, env=env(namespace))

    assert cli("add", "fast", "demo.add", "--every", "5m", "--queue", "reports").returncode == 0
    assert cli("disable", "tick").returncode == 0
    rows = {r["name"]: r for r in json.loads(cli("list", "--json").stdout)["entries"]}
    assert rows["fast"]["options"] == {"queue": "reports"} and rows["tick"]["enabled"] is False
    assert cli("enable", "tick").returncode == 0 and cli("remove", "fast").returncode == 0
    assert "fast" not in {r["name"] for r in json.loads(cli("list", "--json").stdout)["entries"]}
