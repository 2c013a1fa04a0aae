"""bench/: the pure parts (exactly-once check, table, targets), the fork floor, and a tiny end-to-end run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
import floor  # noqa: E402
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
    assert rec.by_pid() == {os.getpid(): 3}
    assert [p.name for p in rec.dir.iterdir()] == ["records.log"], "one shared file, made before any task ran"
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
        "memory": {"qdeploy": {"median": {"master_rss_mib": 30.0, "child_uss_mib": 3.0}},
                   "celery": {"median": {"master_rss_mib": 50.0, "child_uss_mib": 2.0}}},
    }
    params = dict(tasks=20000, mtpc1_tasks=2000, latency_tasks=200, latency_rate=50.0)
    text = run.table(results, systems, params)
    assert "| drain 20000 no-op tasks, 2 processes (tasks/s) | 5,000 | 900 (5.56×) |" in text
    got = {name: (value, ok) for name, value, ok in run.targets(results)}
    assert got["drain, 2 processes ≥ 0.8× floor"] == ("n/a (floor or qdeploy not measured)", None)
    assert got["worker start → first task ≤ 0.8× the fastest peer"] == (
        "0.50× celery, the fastest (0.250 s vs 0.500 s)", True)
    assert got["master RSS, idle ≤ the smallest peer"] == ("0.60× celery, the smallest (30.0 MiB vs 50.0 MiB)", True)
    assert got["drain, 2 processes: ahead of every peer"] == ("closest celery: qdeploy 5,000 vs 900 (5.56× ahead)", True)
    assert got["enqueue batched, 1 client: ahead of every peer"][1]
    assert got["per-child USS, idle after work: ahead of every peer"] == (
        "closest celery: qdeploy 3.0 vs 2.0 (0.67× ahead)", False), "a row where a peer leads fails"
    assert run.machine_context(results) == (
        "Celery reference, this run: drains 900/s and runs its first task 0.500 s after start "
        "(≈930/s and 0.45 s on the 2-core machine of the first targets).")
    assert run.machine_context({"drain": results["drain"]}) is None, "without Celery's start-up: nothing"


def test_recycling_and_drain_targets_are_ratios_to_the_floor_of_the_same_run():
    systems = [s for s in ALL if s.key in ("qdeploy", "floor", "floor+redis")]
    results = {
        "drain": {"qdeploy": {"median": 8000.0}, "floor": {"median": 9000.0}, "floor+redis": {"median": 8500.0}},
        "mtpc1": {"qdeploy": {"median": 300.0}, "floor": {"median": 400.0}, "floor+redis": {"median": 220.0}},
        "mtpc10": {"qdeploy": {"median": 2000.0}, "floor": {"median": 2700.0}, "floor+redis": {"median": 1700.0}},
        "startup": {"qdeploy": {"median": 0.3}, "dramatiq-t1": {"median": 0.35}, "rq": {"median": 0.5}},
    }
    text = run.table(results, systems, dict(tasks=20000, mtpc1_tasks=2000))
    assert "| max-tasks-per-child=1, 2000 tasks (tasks/s) | 300 | 400 (0.75×) | 220 (1.36×) |" in text
    got = {name: (value, ok) for name, value, ok in run.targets(results)}
    assert got["drain, 2 processes ≥ 0.8× floor"] == (
        "0.89× floor (8,000/s vs 9,000/s), 0.94× floor+redis (8,500/s)", True)
    assert got["max-tasks-per-child=1 ≥ 0.8× floor"] == (
        "0.75× floor (300/s vs 400/s), 1.36× floor+redis (220/s)", False), "judged on the floor without redis-py"
    assert got["max-tasks-per-child=10 ≥ 0.8× floor"][1] is False
    assert got["worker start → first task ≤ 0.8× the fastest peer"] == (
        "0.86× dramatiq-t1, the fastest (0.300 s vs 0.350 s)", False)
    assert not any("ahead of every peer" in name for name in got if name.startswith("max-tasks")), \
        "the floors are references, not peers"
    assert got["master RSS, idle ≤ the smallest peer"] == ("n/a (not measured)", None)


@pytest.fixture(scope="module")
def private_redis():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: .ci/run installs it")
    server = benchlib.RedisServer()
    yield server
    server.stop()


def run_floor(server, tasks: int, *args: str) -> tuple[subprocess.CompletedProcess, dict, list[int]]:
    """floor.py over `tasks` queued tasks: the process, the runs, the tasks each child ran."""
    server.flush()
    records = benchlib.Records()
    floor.enqueue(server.client, range(tasks))
    env = benchlib.base_env(server.url, records)
    proc = subprocess.run([sys.executable, str(BENCH / "floor.py"), server.url, *args], env=env,
                          capture_output=True, text=True, timeout=60)
    runs = records.read()
    children = sorted(records.by_pid().values())  # tasks per process
    records.cleanup()
    return proc, runs, children


@pytest.mark.parametrize("per_child", [1, 10, 0])
def test_the_fork_floor_runs_every_task_once_in_a_fresh_child_per_k_tasks(private_redis, per_child):
    proc, runs, children = run_floor(private_redis, 40, "--tasks-per-child", str(per_child))
    assert proc.returncode == 0, proc.stderr
    assert benchlib.verify(runs, 40)["exactly_once"]
    if per_child:  # two children drain at once, so a child may run fewer than K
        assert max(children) <= per_child and len(children) >= 40 // per_child
    else:
        assert len(children) <= 2
    assert private_redis.client.llen(floor.QUEUE) == 0
    assert private_redis.client.keys("floor:inflight:*") == [], "every task is LREMed after it ran"


def test_the_fork_floor_can_carry_redis_py(private_redis):
    proc, runs, _ = run_floor(private_redis, 10, "--tasks-per-child", "1", "--import", "redis")
    assert proc.returncode == 0 and benchlib.verify(runs, 10)["exactly_once"], proc.stderr


@pytest.mark.parametrize("args, message", [
    (["http://127.0.0.1:6379/0"], "expected a redis://host:port URL"),
    (["redis://127.0.0.1/0"], "expected a redis://host:port URL"),
    (["redis://127.0.0.1:1/0"], "floor: [Errno 111] Connection refused"),
    (["{url}", "--import", "no_such_module_here"], "No module named 'no_such_module_here'"),
    (["{url}", "--tasks-per-child", "-1"], "expected --tasks-per-child >= 0"),
    (["{url}", "--processes", "0"], "expected --tasks-per-child >= 0 and --processes >= 1"),
    (["{url}", "--tasks-per-child", "x"], "invalid int value: 'x'"),
])
def test_the_fork_floor_refuses_bad_arguments_in_one_line(private_redis, args, message):
    private_redis.flush()
    private_redis.client.rpush(floor.QUEUE, "[0]")
    argv = [a.format(url=private_redis.url) for a in args]
    proc = subprocess.run([sys.executable, str(BENCH / "floor.py"), *argv], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert private_redis.client.lrange(floor.QUEUE, 0, -1) == [b"[0]"], "nothing was consumed"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_tiny_run_of_the_bench():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--systems", "qdeploy,floor", "--only", "drain,mtpc10,enqueue,render",
         "--repeats", "1", "--tasks", "300", "--enqueue-one", "200", "--enqueue-batch", "500", "--no-write"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| drain 300 no-op tasks" in proc.stdout
    assert "no task lost or run twice" in proc.stdout
    assert "| workload | qdeploy | floor |" in proc.stdout
    assert "enqueue floor" not in proc.stderr, "a reference is measured in the drains only"
    assert "max-tasks-per-child=10 ≥ 0.8× floor" in proc.stdout and "× floor (" in proc.stdout


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
