"""`qdeploy worker` (prefork): the master and its children, as real processes on a private Redis.

Readiness and the rest of the sd_notify conversation are read from a real NOTIFY_SOCKET."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.integration.conftest import gone, wait_until
from tests.integration.workers import runs


def test_pool_runs_tasks_in_children_and_notifies(masters, tapp):
    m = masters("-c", "3").ready()
    assert len(m.children()) == 3
    pids = {r.get(timeout=10) for r in [tapp.send_task("t.pid") for _ in range(30)]}
    assert pids <= {c.pid for c in m.children()} and m.pid not in pids
    m.notify.wait_for("STATUS=")
    m.signal(signal.SIGTERM)
    assert m.wait() == 0
    assert "STOPPING=1" in m.notify.wait_for("STOPPING=1")


def test_recycle_after_max_tasks_loses_nothing(masters, tapp, rclient, namespace):
    m = masters("-c", "2", "--max-tasks-per-child", "3", "--max-tasks-jitter", "0").ready()
    results = [tapp.send_task("t.pid", [f"r{i}"]) for i in range(40)]
    pids = [r.get(timeout=20) for r in results]
    assert all(runs(rclient, namespace, f"r{i}") == 1 for i in range(40))
    assert len(set(pids)) >= 40 // 3
    assert max(pids.count(p) for p in set(pids)) <= 3
    wait_until(lambda: len(m.serving()) == 2, 5, what="a full pool after recycling")
    m.signal(signal.SIGTERM)
    assert m.wait() == 0


def test_spares_take_recycled_slots_without_overlap(masters, tapp, rclient, namespace):
    """max-tasks-per-child=1: a spare successor boots ahead of time and takes the slot once its
    predecessor's task is done, so a slot never runs two tasks at once."""
    m = masters("-c", "2", "--max-tasks-per-child", "1").ready()
    wait_until(lambda: len(m.children()) == 4, 10, what="a spare for each of the 2 slots")
    spares = {c.pid for c in m.children()} - {c.pid for c in m.serving()}
    assert len(spares) == 2
    assert "2 children (0 busy, 2 spare)" in m.notify.wait_for("spare)")
    results = [tapp.send_task("t.span", [f"s{i}", 0.02]) for i in range(40)]
    spans = [r.get(timeout=30) for r in results]
    assert all(runs(rclient, namespace, f"s{i}") == 1 for i in range(40))
    pids = [pid for pid, _, _ in spans]
    assert len(set(pids)) == 40, "one task per child"
    assert spares <= set(pids), "the spares forked at start-up took tasks"
    edges = sorted([(start, 1) for _, start, _ in spans] + [(end, -1) for _, _, end in spans])
    running = peak = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    assert peak <= 2, f"{peak} tasks ran at once with -c 2"
    wait_until(lambda: len(m.serving()) == 2 and len(m.children()) == 4, 10, what="2 children + 2 spares")
    m.signal(signal.SIGTERM)
    assert m.wait() == 0
    assert not rclient.hgetall(f"{namespace}:consumers"), "spares never registered; the rest left"


def test_memory_recycle_after_the_task(masters, tapp):
    m = masters("-c", "1", "--max-memory-per-child", "80M").ready()
    freed = tapp.send_task("t.hog", [150]).get(timeout=20)
    assert tapp.send_task("t.pid").get(timeout=20) == freed, "current memory counts, not the peak"
    leaked = tapp.send_task("t.hog", [150], {"leak": True}).get(timeout=20)
    second = tapp.send_task("t.pid").get(timeout=20)
    assert leaked != second, "the child over max_memory_per_child must be replaced after its task"
    assert tapp.send_task("t.pid").get(timeout=20) == second, "a child under the limit is kept"
    m.signal(signal.SIGTERM)
    assert m.wait() == 0


def test_hard_memory_limit_kills_mid_task_then_dead_letters(masters, tapp, rclient, namespace):
    m = masters("-c", "1", "--max-memory-per-child-hard", "120M",
                env={"QDEPLOY_MAX_DELIVERIES": "2"}).ready()
    res = tapp.send_task("t.hog", [300, 5.0])
    with pytest.raises(Exception, match="DeadLettered|delivered"):
        res.get(timeout=40)
    assert runs(rclient, namespace, res.id) == 2
    assert tapp.send_task("t.pid").get(timeout=20) in {c.pid for c in m.children()}
    assert "hard limit" in (m.signal(signal.SIGTERM) or m.output())


def test_hard_time_limit_kills_the_child_and_fails_the_task(masters, tapp, rclient, namespace):
    m = masters("-c", "1", "--time-limit", "1").ready()
    before = {c.pid for c in m.children()}
    res = tapp.send_task("t.stuck", [30])
    with pytest.raises(Exception, match="TimeLimitExceeded"):
        res.get(timeout=15)
    assert res.state == "FAILURE"
    wait_until(lambda: len(m.children()) == 1 and {c.pid for c in m.children()} != before, 10, what="a new child")
    assert tapp.send_task("t.pid").get(timeout=10)
    time.sleep(0.5)
    assert runs(rclient, namespace, res.id) == 1, "a task killed for its time limit is not redelivered"


def test_soft_time_limit_raises_inside_the_task(masters, tapp):
    masters("-c", "1", "--soft-time-limit", "0.5").ready()
    assert tapp.send_task("t.soft", [5]).get(timeout=10) == "cleaned up"


def test_sigkill_of_a_child_requeues_its_task_at_once(masters, tapp, rclient, namespace):
    m = masters("-c", "2").ready()
    res = tapp.send_task("t.slow_once", [30])
    wait_until(lambda: runs(rclient, namespace, res.id) == 1, 10, what="the task to start")
    killed = {c.pid for c in m.children()}
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert res.get(timeout=15) == 2, "redelivered once, finished on the second delivery"
    assert runs(rclient, namespace, res.id) == 2
    assert not killed & {c.pid for c in m.children()} and len(m.children()) == 2


def test_sigkill_of_the_master_takes_the_children_and_another_node_recovers(masters, tapp, rclient, namespace):
    env = {"QDEPLOY_VISIBILITY_TIMEOUT": "1"}
    m = masters("-c", "1", env=env).ready()
    children = m.children()
    res = tapp.send_task("t.slow_once", [30])
    wait_until(lambda: runs(rclient, namespace, res.id) == 1, 10, what="the task to start")
    m.signal(signal.SIGKILL)
    m.wait()
    wait_until(lambda: all(gone(c) for c in children), 5, what="the children to die with their master")
    masters("-c", "1", env=env).ready()
    assert res.get(timeout=20) == 2


def test_warm_shutdown_finishes_running_tasks(masters, tapp, rclient, namespace):
    m = masters("-c", "2").ready()
    res = tapp.send_task("t.slow", [1.5, "warm"])
    wait_until(lambda: runs(rclient, namespace, "warm") == 1, 10, what="the task to start")
    m.signal(signal.SIGTERM)
    assert m.wait() == 0
    assert res.state == "SUCCESS"


def test_warm_shutdown_requeues_what_outlives_the_graceful_timeout(masters, tapp, rclient, namespace):
    m = masters("-c", "1", "--graceful-timeout", "0.5").ready()
    res = tapp.send_task("t.slow_once", [30])
    wait_until(lambda: runs(rclient, namespace, res.id) == 1, 10, what="the task to start")
    began = time.monotonic()
    m.signal(signal.SIGTERM)
    assert m.wait() == 0 and time.monotonic() - began < 10
    assert res.state != "SUCCESS"
    masters("-c", "1").ready()
    assert res.get(timeout=15) == 2


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGQUIT])
def test_cold_shutdown_kills_and_requeues(masters, tapp, rclient, namespace, second):
    m = masters("-c", "1").ready()
    res = tapp.send_task("t.slow_once", [30])
    wait_until(lambda: runs(rclient, namespace, res.id) == 1, 10, what="the task to start")
    if second == signal.SIGTERM:
        m.signal(signal.SIGTERM)
        time.sleep(0.3)
    m.signal(second)
    assert m.wait(10) == 0
    masters("-c", "1").ready()
    assert res.get(timeout=15) == 2


def test_group_wide_term_is_a_warm_shutdown(masters, tapp, rclient, namespace):
    m = masters("-c", "2").ready()
    res = tapp.send_task("t.slow", [1.5, "group"])
    wait_until(lambda: runs(rclient, namespace, "group") == 1, 10, what="the task to start")
    for proc in [psutil.Process(m.pid), *m.children()]:  # what supervisord stopasgroup / systemd send
        proc.send_signal(signal.SIGTERM)
    assert m.wait() == 0
    assert res.state == "SUCCESS" and runs(rclient, namespace, "group") == 1


def test_hup_reloads_with_new_children_while_old_ones_finish(masters, tapp, rclient, namespace):
    m = masters("-c", "2").ready()
    old = {c.pid for c in m.children()}
    res = tapp.send_task("t.slow", [2, "reload"])
    wait_until(lambda: runs(rclient, namespace, "reload") == 1, 10, what="the task to start")
    m.signal(signal.SIGHUP)
    m.notify.wait_for("RELOADING=1")
    wait_until(lambda: len([c for c in m.children() if c.pid not in old]) == 2, 15, what="new children")
    assert m.proc.poll() is None and psutil.Process(m.pid).pid == m.pid
    assert tapp.send_task("t.pid").get(timeout=10) not in old
    assert res.get(timeout=15) == "reload", "the task on the old child finished"
    wait_until(lambda: not old & {c.pid for c in m.children()}, 10, what="old children to leave")
    m.signal(signal.SIGTERM)
    assert m.wait() == 0


def test_spares_follow_the_pool_size_and_reloads(masters, tapp, rclient, namespace):
    m = masters("-c", "2", "--max-tasks-per-child", "5").ready()
    wait_until(lambda: len(m.serving()) == 2 and len(m.children()) == 4, 10, what="2 children + 2 spares")
    m.signal(signal.SIGTTOU)
    wait_until(lambda: len(m.serving()) == 1 and len(m.children()) == 2, 10, what="slot 2 and its spare gone")
    old = {c.pid for c in m.children()}
    m.signal(signal.SIGHUP)
    m.notify.wait_for("RELOADING=1")
    wait_until(lambda: not old & {c.pid for c in m.children()}, 15, what="old child and spare to leave")
    wait_until(lambda: len(m.serving()) == 2 and len(m.children()) == 4, 10, what="a fresh pool with spares")
    results = [tapp.send_task("t.pid", [f"h{i}"]) for i in range(12)]
    assert not old & {r.get(timeout=15) for r in results}, "a stopped spare never takes a task"
    assert all(runs(rclient, namespace, f"h{i}") == 1 for i in range(12))
    m.signal(signal.SIGTERM)
    assert m.wait() == 0


def test_ttin_ttou_grow_and_shrink(masters):
    m = masters("-c", "2").ready()
    m.signal(signal.SIGTTIN)
    wait_until(lambda: len(m.children()) == 3, 10, what="3 children")
    m.signal(signal.SIGTTOU)  # one at a time: two pending standard signals coalesce into one
    wait_until(lambda: len(m.children()) == 2, 10, what="2 children")
    m.signal(signal.SIGTTOU)
    wait_until(lambda: len(m.children()) == 1, 10, what="1 child")
    m.signal(signal.SIGTTOU)
    time.sleep(0.5)
    assert len(m.children()) == 1, "the pool never shrinks below one"


def test_usr1_logs_the_state(masters):
    m = masters("-c", "1").ready()
    m.signal(signal.SIGUSR1)
    time.sleep(0.5)
    m.signal(signal.SIGTERM)
    m.wait()
    assert '"tasks_done"' in m.output()


def test_children_that_cannot_boot_make_the_master_give_up(masters):
    m = masters("-c", "2", env={"QDEPLOY_TEST_CHILD_BOOT_FAILS": "1"}, notify=False)
    assert m.wait(60) == 3
    assert "children keep failing to start" in m.output()


def test_bad_app_is_a_one_line_error_before_anything_starts(masters):
    m = masters("-A", "no.such:app", notify=False)
    assert m.wait(20) == 2
    assert m.output().strip().splitlines() == ["qdeploy: error: cannot import app 'no.such:app': ModuleNotFoundError: No module named 'no'"]


def test_node_takes_its_options_from_the_config(masters, tapp, tmp_path, redis_server):
    config = tmp_path / "qdeploy.toml"
    config.write_text(f"""
app = "tests.integration.tasks:app"
broker = "{redis_server.url}"
[worker]
nodes = ["default", "images"]
concurrency = 1
[node.images]
concurrency = 3
queues = ["images", "video"]
""")
    m = masters("--config", str(config), "--node", "images").ready()
    assert len(m.children()) == 3
    assert tapp.send_task("t.pid", queue="video").get(timeout=10) in {c.pid for c in m.children()}
    m.signal(signal.SIGTERM)  # one live master per node name
    assert m.wait(15) == 0
    flag = masters("--config", str(config), "--node", "images", "-c", "2").ready()
    assert len(flag.children()) == 2, "a flag beats the [node] table"


def test_int_is_warm_then_cold(masters, tapp, rclient, namespace):
    m = masters("-c", "1").ready()
    res = tapp.send_task("t.slow_once", [30])
    wait_until(lambda: runs(rclient, namespace, res.id) == 1, 10, what="the task to start")
    m.signal(signal.SIGINT)
    time.sleep(0.5)
    assert m.proc.poll() is None, "the first INT waits for the running task"
    m.signal(signal.SIGINT)
    assert m.wait(10) == 0
    assert res.state != "SUCCESS"


def test_heartbeat_describes_the_node(masters, tapp, rclient, namespace):
    import json

    m = masters("-c", "2").ready()
    tapp.send_task("t.pid").get(timeout=10)
    owner = m.argv[m.argv.index("-n") + 1]

    def beat():
        raw = rclient.get(f"{namespace}:hb:{owner}")
        info = json.loads(raw) if raw else {}
        return info if info.get("tasks_done") else None

    info = wait_until(beat, 10, what="a heartbeat with a finished task")
    assert info["pid"] == m.pid and info["pool"] == 2 and info["node"] == owner.partition("@")[0]
    assert info["host"] == "test" and info["queues"] == ["default"] and info["started"] <= time.time()
    assert 0 < rclient.pttl(f"{namespace}:hb:{owner}") <= 30_000
