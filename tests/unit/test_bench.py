"""bench/: the pure parts (exactly-once check, table, targets) and a tiny end-to-end run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
import run  # noqa: E402
from systems import ALL  # noqa: E402


def test_verify_counts_losses_and_duplicates():
    assert benchlib.verify({0: [1.0], 1: [2.0]}, 2)["exactly_once"]
    check = benchlib.verify({0: [1.0, 1.5], 2: [3.0]}, 3)
    assert (check["lost"], check["duplicates"], check["exactly_once"]) == (1, 1, False)
    assert benchlib.drain_rate({0: [10.0], 1: [10.5], 2: [11.0]}) == pytest.approx(2.0)


def test_records_count_by_size(tmp_path, monkeypatch):
    rec = benchlib.Records()
    monkeypatch.setenv("BENCH_RECORD_DIR", str(rec.dir))
    for i in (3, 7, 7):
        benchlib.record(i)
    assert rec.count() == 3 and sorted(rec.read()) == [3, 7] and len(rec.read()[7]) == 2
    rec.cleanup()


def test_table_and_targets_read_medians():
    systems = [s for s in ALL if s.key in ("qdeploy", "celery")]
    results = {
        "drain": {"qdeploy": {"median": 5000.0}, "celery": {"median": 900.0}},
        "mtpc1": {"qdeploy": {"median": 400.0}, "celery": {"median": 7.0}},
        "mtpc10": {"qdeploy": {"median": 4500.0}, "celery": {"median": 80.0}},
        "enqueue": {"qdeploy": {"median": {"one": 9000.0, "batch": 60000.0}},
                    "celery": {"median": {"one": 1500.0, "batch": 2000.0}}},
        "startup": {"qdeploy": {"median": 0.25}, "celery": {"median": 0.5}},
    }
    params = dict(tasks=20000, mtpc1_tasks=2000, latency_tasks=200, latency_rate=50.0)
    text = run.table(results, systems, params)
    assert "| drain 20000 no-op tasks, 2 processes (tasks/s) | 5,000 | 900 (5.56×) |" in text
    met = {name: ok for name, _, ok in run.targets(results)}
    assert met["drain ≥ 5× Celery"] and not met["max-tasks-per-child=1 ≥ 500 tasks/s"]
    assert met["max-tasks-per-child=10 ≥ 80 % of no recycling"] and met["enqueue batched ≥ 50k/s"]
    assert met["enqueue one by one ≥ 5× Celery"] and not met["first task ≤ 0.2 s after start"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_tiny_run_of_the_bench():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--systems", "qdeploy", "--only", "drain,enqueue,render",
         "--repeats", "1", "--tasks", "300", "--enqueue-one", "200", "--enqueue-batch", "500", "--no-write"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| drain 300 no-op tasks" in proc.stdout
    assert "no task lost or run twice" in proc.stdout


def test_tiny_io_bound_run_threads_beat_prefork():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "io.py"), "--qdeploy-only", "--tasks", "40", "--seconds", "0.1", "--threads", "10"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split("|")[1].strip(): line.split("|")[2:] for line in proc.stdout.splitlines()
            if line.startswith("| qdeploy")}
    prefork, threads = float(rows["qdeploy prefork -c 2"][0]), float(rows["qdeploy -c 2 --threads 10"][0])
    assert prefork >= 40 * 0.1 / 2, "two at a time cannot beat the ideal"
    assert all(row[3].strip() == "True" for row in rows.values()), "every task ran exactly once"
    assert threads < prefork
