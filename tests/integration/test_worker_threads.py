"""Children that run several tasks at once (`--threads T`, `-P threads`), with every guarantee of
the prefork pool holding per task."""

from __future__ import annotations

import signal
import time

import psutil

from tests.integration.conftest import wait_until
from tests.integration.workers import runs


def test_io_bound_tasks_run_concurrently(masters, tapp, rclient, namespace):
    m = masters("-c", "2", "--threads", "50").ready()
    assert len(m.children()) == 2
    began = time.monotonic()
    results = tapp.send_many([("t.slow", (0.5, f"io{i}"), {}) for i in range(200)])
    assert [r.get(timeout=30) for r in results] == [f"io{i}" for i in range(200)]
    elapsed = time.monotonic() - began
    # (200 × 0.5 s) / (2 × 50) = 1 s of sleeping; one task at a time per child would take 50 s.
    assert elapsed < 5, f"200 sleeping tasks took {elapsed:.1f}s with 100 threads"
    assert all(runs(rclient, namespace, f"io{i}") == 1 for i in range(200))
    assert len({t.id for c in m.children() for t in c.threads()}) >= 2 * 50


def test_threads_pool_is_one_child_of_n_threads(masters, tapp):
    m = masters("-P", "threads", "-c", "8").ready()
    (child,) = m.children()
    wait_until(lambda: child.num_threads() >= 8, 5, what="8 consumer threads")
    assert tapp.send_task("t.pid").get(timeout=10) == child.pid


def test_sigkill_of_a_child_with_tasks_in_flight_loses_none(masters, tapp, rclient, namespace):
    m = masters("-c", "1", "--threads", "5").ready()
    results = [tapp.send_task("t.slow_once", [30]) for _ in range(5)]
    wait_until(lambda: all(runs(rclient, namespace, r.id) == 1 for r in results), 10, what="5 tasks running")
    (child,) = m.children()
    child.kill()
    assert [r.get(timeout=20) for r in results] == [2] * 5, "each requeued once, done on its second delivery"


def test_hard_limit_recycles_the_child_fails_that_task_and_requeues_its_siblings(masters, tapp, rclient, namespace):
    m = masters("-c", "1", "--threads", "3").ready()
    (first,) = m.children()
    siblings = [tapp.send_task("t.slow_once", [30]) for _ in range(2)]
    stuck = tapp.send_task("t.stuck", [30], time_limit=1)
    wait_until(lambda: runs(rclient, namespace, stuck.id) == 1, 10, what="the stuck task to start")
    stuck.get(timeout=15, propagate=False)
    assert stuck.state == "FAILURE"
    assert "TimeLimitExceeded" in str(stuck.info)
    assert [s.get(timeout=15) for s in siblings] == [2, 2], "siblings requeued, not failed"
    assert runs(rclient, namespace, stuck.id) == 1
    assert first.pid not in {c.pid for c in m.children()}


def test_soft_limit_reaches_a_task_in_a_thread(masters, tapp):
    masters("-c", "1", "--threads", "4", "--soft-time-limit", "0.5").ready()
    assert tapp.send_task("t.spin", [10]).get(timeout=10) == "cleaned up"


def test_max_tasks_per_child_counts_tasks_not_threads(masters, tapp):
    m = masters("-c", "1", "--threads", "4", "--max-tasks-per-child", "8", "--max-tasks-jitter", "0").ready()
    pids = [r.get(timeout=30) for r in [tapp.send_task("t.pid") for _ in range(48)]]
    per_child = [pids.count(p) for p in set(pids)]
    assert sum(per_child) == 48
    assert max(per_child) <= 8 + 3, "at most threads-1 tasks start past the limit"
    assert len(set(pids)) >= 48 // 11
    wait_until(lambda: len(m.serving()) == 1, 5, what="the pool refilled")


def test_memory_recycling_waits_for_running_tasks(masters, tapp, rclient, namespace):
    m = masters("-c", "1", "--threads", "2", "--max-memory-per-child", "80M").ready()
    (child,) = m.children()
    slow = tapp.send_task("t.slow", [2, "mem-sibling"])
    wait_until(lambda: runs(rclient, namespace, "mem-sibling") == 1, 10, what="the slow task to start")
    assert tapp.send_task("t.hog", [150], {"leak": True}).get(timeout=10) == child.pid
    assert slow.get(timeout=10) == "mem-sibling"
    assert runs(rclient, namespace, "mem-sibling") == 1, "finished, not requeued"
    wait_until(lambda: child.pid not in {c.pid for c in m.children()}, 10, what="the child to be recycled")


def test_warm_shutdown_finishes_every_running_task(masters, tapp, rclient, namespace):
    m = masters("-c", "1", "--threads", "4").ready()
    results = [tapp.send_task("t.slow", [1.5, f"warm{i}"]) for i in range(4)]
    wait_until(lambda: all(runs(rclient, namespace, f"warm{i}") == 1 for i in range(4)), 10, what="4 tasks running")
    m.signal(signal.SIGTERM)
    assert m.wait() == 0
    assert [r.state for r in results] == ["SUCCESS"] * 4
    assert not psutil.pid_exists(m.pid) or psutil.Process(m.pid).status() == psutil.STATUS_ZOMBIE
