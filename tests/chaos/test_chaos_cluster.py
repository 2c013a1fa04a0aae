"""The chaos run on Redis Cluster, short version (bounded: ~80 s): every fault kind once, with a
failover of a primary (its replica promoted, the killed node back as a replica) in place of the
Redis restart, then an account of every task. The long version is
`python -m tests.soak.run --cluster --minutes 10`. Harness: tests/chaos/harness.py."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.chaos.harness import CLUSTER_FAULT_KINDS, ChaosRun

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]


def test_chaos_on_a_cluster_loses_nothing_but_what_it_names(tmp_path, capsys):
    seed = int(os.environ["QDEPLOY_CHAOS_SEED"]) if "QDEPLOY_CHAOS_SEED" in os.environ else None
    lines: list[str] = []
    run = ChaosRun(tmp_path, duration=float(os.environ.get("QDEPLOY_CHAOS_SECONDS", "20")), seed=seed,
                   log=lines.append, cluster=True)
    report = run.execute()
    with capsys.disabled():
        print("\n" + "\n".join(lines) + "\n" + report.summary())
    assert report.tasks > 150, "the producer hardly sent anything"
    assert report.lost == [], f"lost tasks, not explained by a failover (seed {run.seed}, logs in {tmp_path})"
    assert all(why.startswith("lost by asynchronous replication") for why in report.replication_lost.values())
    assert report.leftovers == {}, f"messages left queued or in flight: {report.leftovers}"
    assert "UNEXPLAINED" not in report.explained, report.duplicated
    missing = [k for k in CLUSTER_FAULT_KINDS if report.faults[k] == 0]
    assert not missing, f"fault kinds never verified as injected: {missing}; {report.problems}"
    assert report.problems == [], report.problems
    stream_dead = [d for d in report.dead_letters if str(d.get("id", "")).startswith("w")]
    assert stream_dead == [], f"stream tasks dead-lettered: {stream_dead[:3]}"
