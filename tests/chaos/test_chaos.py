"""The chaos run, short version (~75 s): nothing lost under every fault kind at once.

The long version is `python -m tests.soak.run --minutes 10`. The harness and the list of fault
kinds are in tests/chaos/harness.py."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.chaos.harness import FAULT_KINDS, ChaosRun

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]


def test_chaos_nothing_lost(tmp_path, capsys):
    seed = int(os.environ["QDEPLOY_CHAOS_SEED"]) if "QDEPLOY_CHAOS_SEED" in os.environ else None
    lines: list[str] = []
    run = ChaosRun(tmp_path, duration=float(os.environ.get("QDEPLOY_CHAOS_SECONDS", "45")), seed=seed,
                   log=lines.append)
    report = run.execute()
    with capsys.disabled():
        print("\n" + "\n".join(lines) + "\n" + report.summary())
    assert report.tasks > 200, "the producer hardly sent anything"
    assert report.lost == [], f"lost tasks (seed {run.seed}, logs in {tmp_path})"
    assert report.leftovers == {}, f"messages left queued or in flight: {report.leftovers}"
    assert "UNEXPLAINED" not in report.explained, report.duplicated
    missing = [k for k in FAULT_KINDS if report.faults[k] == 0]
    assert not missing, f"fault kinds never verified as injected: {missing}; {report.problems}"
    assert report.problems == [], report.problems
    stream_dead = [d for d in report.dead_letters if str(d.get("id", "")).startswith("w")]
    assert stream_dead == [], f"stream tasks dead-lettered: {stream_dead[:3]}"
