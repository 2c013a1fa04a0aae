"""Bad input and bad days (issue 18, items 1-11): one message or one task must never take a node
down, nothing may vanish, and every refusal says why. Real workers, real Redis; a private
redis-server for the cases that break or reconfigure it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from qdeploy import App
from qdeploy.core import message
from qdeploy.ops import fleet
from tests.integration.conftest import REPO, wait_until
from tests.integration.workers import Master, runs

HOSTILE = "tests.integration.hostile_tasks:app"


@pytest.fixture
def happ(redis_server, namespace):
    return App("hostile", broker=redis_server.url, namespace=namespace)


_started: list[Master] = []


@pytest.fixture(autouse=True)
def _no_master_outlives_its_test():
    yield
    while _started:
        master = _started.pop()
        if master.proc.poll() is None:
            master.proc.kill()
            master.proc.wait(10)


def start(redis_url, namespace, tmp_path, *args, **kw) -> Master:
    master = Master(redis_url, namespace, tmp_path, "--allow-root", "-A", HOSTILE, *args, **kw)
    _started.append(master)
    return master


def dead(broker) -> list[dict]:
    return fleet.dead_letters(broker, 1000)


# -- 1. limits from a producer, a message, a child -------------------------------------------
@pytest.mark.parametrize("options, error", [
    ({"time_limit": "abc"}, TypeError), ({"soft_time_limit": True}, TypeError),
    ({"time_limit": float("nan")}, ValueError), ({"time_limit": -1}, ValueError),
    ({"time_limit": float("inf")}, ValueError), ({"countdown": "10"}, TypeError),
    ({"expires": [1]}, TypeError), ({"max_retries": 1.5}, TypeError), ({"max_retries": -2}, ValueError),
    ({"queue": "has space"}, ValueError), ({"queue": "q" * 201}, ValueError), ({"queue": 7}, TypeError),
    ({"task_id": "a\nb"}, ValueError), ({"task_id": "x" * 256}, ValueError), ({"task_id": 5}, TypeError),
    ({"eta": "tomorrow"}, TypeError), ({"ignore_result": "yes"}, TypeError),
])
def test_the_producer_refuses_bad_options_with_a_clear_error(happ, options, error):
    @happ.task(name="h.ok")
    def ok(tag):
        return tag

    with pytest.raises(error) as caught:
        ok.apply_async(args=[1], **options)
    assert next(iter(options)) in str(caught.value), "the error names the option"
    assert fleet.queue_names(happ.transport) == [], "nothing was sent"


def test_bad_limits_in_a_message_are_dead_lettered_and_a_forging_task_cannot_kill_the_master(
        redis_server, namespace, tmp_path, happ):
    m = start(redis_server.url, namespace, tmp_path, "-c", "1").ready()
    body = json.loads(message.encode(message.build("h.ok", ["x"], queue="default", task_id="limits-1")))
    body["limits"] = {"hard": "abc"}
    fleet.publish_raw(happ.transport, "default", "limits-1", json.dumps(body))
    wait_until(lambda: dead(happ.transport), 10, what="the dead letter")
    [record] = dead(happ.transport)
    assert record["id"] == "limits-1" and "time_limit" in record["reason"], record
    assert happ.send_task("h.forge_events").get(timeout=10) >= 1, "it found its events pipe"
    assert happ.send_task("h.ok", ["after"]).get(timeout=10) == 1, "the node still works"
    assert m.proc.poll() is None
    out = m.output()
    assert "ignoring malformed task start x abc y" in out and "ignoring unknown event Q what" in out
    assert out.count("ignoring") == 5 and "more from this child are only counted" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


# -- 2. an exception that cannot be printed ---------------------------------------------------
def test_an_unprintable_exception_fails_its_task_once(redis_server, namespace, tmp_path, happ, rclient):
    m = start(redis_server.url, namespace, tmp_path, "-c", "1").ready()
    res = happ.send_task("h.unprintable", ["u"])
    wait_until(lambda: res.state == "FAILURE", 10, what="FAILURE")
    assert res.info["exc_type"] == "Unprintable" and "unprintable Unprintable" in res.info["exc"]
    assert "Traceback" in res.info["traceback"]
    exited = happ.send_task("h.exit", ["e"])
    wait_until(lambda: exited.state == "FAILURE", 10, what="SystemExit to fail its task")
    assert exited.info["exc_type"] == "SystemExit"
    time.sleep(0.5)
    assert runs(rclient, namespace, "u") == 1 and runs(rclient, namespace, "e") == 1, "each ran once"
    assert dead(happ.transport) == []
    assert len(m.children()) == 1 and m.proc.poll() is None


# -- 3, 4, 5. ids and envelopes nobody should have queued --------------------------------------
def test_raw_junk_never_crashes_a_child_and_never_vanishes(redis_server, namespace, tmp_path, happ, rclient):
    m = start(redis_server.url, namespace, tmp_path, "-c", "1").ready()
    [child] = m.children()
    queue = f"{namespace}:q:default"
    rclient.lpush(queue, b"\xff\xfe")  # no body, not UTF-8 (`printf '\xff\xfe' | redis-cli -x lpush`)
    rclient.lpush(queue, b"has space")
    good = json.loads(message.encode(message.build("h.ok", ["m"], queue="default", task_id="queued-id")))
    good["id"] = "other-id"  # 4: the body names another id than the one queued
    rclient.hset(f"{namespace}:msg", "queued-id", json.dumps(good))
    rclient.lpush(queue, "queued-id")
    versioned = json.loads(message.encode(message.build("h.ok", ["v"], queue="default", task_id="v-true")))
    versioned["v"] = True  # 5: `true == 1` in Python, but it is not a version
    rclient.hset(f"{namespace}:msg", "v-true", json.dumps(versioned))
    rclient.lpush(queue, "v-true")
    wait_until(lambda: len(dead(happ.transport)) == 4, 10, what="four dead letters")
    reasons = {d["id"]: d["reason"] for d in dead(happ.transport)}
    assert "invalid task id" in reasons["\\xff\\xfe"]
    assert "invalid task id" in reasons["has space"]
    assert "differs from the queued id" in reasons["queued-id"]
    assert "unsupported envelope version True" in reasons["v-true"]
    assert rclient.llen(queue) == 0 and not rclient.exists(f"{namespace}:inflight:" + child.name())
    assert m.children() == [child], "the same child: it never crashed"
    assert runs(rclient, namespace, "m") == 0 and runs(rclient, namespace, "v") == 0
    m.signal(signal.SIGTERM)
    assert m.wait(15) == 0
    restarted = start(redis_server.url, namespace, tmp_path, "-c", "1").ready()
    time.sleep(0.5)
    assert runs(rclient, namespace, "m") == 0, "a mismatched id is not re-run on restart"
    restarted.signal(signal.SIGTERM)
    restarted.wait(15)


def test_an_id_without_a_body_held_by_a_dead_child_is_dead_lettered(happ, rclient, namespace):
    """The requeue of a dead consumer's ids no longer drops an id it finds no body for."""
    rclient.rpush(f"{namespace}:inflight:gone", "ghost", "finished")
    rclient.set(f"{namespace}:r:finished", json.dumps({"state": "SUCCESS"}))
    assert happ.transport.requeue_consumer("gone") == 0
    assert [d["id"] for d in dead(happ.transport)] == ["ghost"], "a finished copy is dropped, the ghost kept"


# -- 6. a queue key of the wrong type ---------------------------------------------------------
def test_a_broken_queue_is_reported_once_and_skipped(redis_server, namespace, tmp_path, happ, rclient):
    rclient.set(f"{namespace}:q:broken", "notalist")
    m = start(redis_server.url, namespace, tmp_path, "-c", "2", "-Q", "broken,good").ready()
    before = {c.pid for c in m.children()}
    results = [happ.send_task("h.ok", [f"g{i}"], queue="good") for i in range(20)]
    assert [r.get(timeout=15) for r in results] == [1] * 20, "the other queue keeps running"
    time.sleep(1.0)
    assert {c.pid for c in m.children()} == before, "no child crashed or was replaced"
    rclient.delete(f"{namespace}:q:broken")
    out = m.output()
    assert out.count("queue broken is broken") == 2, out[-3000:]  # once per child
    assert "holds a string, not a list" in out


# -- 7. Redis at maxmemory with noeviction ------------------------------------------------------
def test_a_full_redis_is_waited_out_and_the_node_resumes(make_server, namespace, tmp_path):
    server = make_server("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    client = server.client()
    app = App("hostile", broker=server.url, namespace=namespace)
    results = [app.send_task("h.ok", [f"f{i}"]) for i in range(30)]
    filler = 0
    for size in (100_000, 1000, 10):  # fill it up, to the last byte: every write is refused now
        while True:
            try:
                client.set(f"{namespace}:filler:{filler}", "x" * size)
                filler += 1
            except redis.exceptions.OutOfMemoryError:
                break
    m = start(server.url, namespace, tmp_path, "-c", "2", notify=True)
    time.sleep(4)
    assert m.proc.poll() is None, "the master lives"
    assert all(r.state == "PENDING" for r in results[:3])
    for i in range(filler):
        client.delete(f"{namespace}:filler:{i}")
    assert [r.get(timeout=20) for r in results] == [1] * 30, "resumed by itself"
    assert m.proc.poll() is None
    out = m.output()
    assert "refuses writes" in out or "OutOfMemoryError" in out, out[-3000:]
    assert out.count("child failed") < 10, "no crash loop"


# -- 8. a task that closes its stdio ------------------------------------------------------------
def test_a_task_closing_its_stdio_cannot_write_into_redis(make_server, namespace, tmp_path):
    server = make_server()
    client = server.client()
    client.set("marker", "kept")
    app = App("hostile", broker=server.url, namespace=namespace)
    m = start(server.url, namespace, tmp_path, "-c", "1", "--max-tasks-per-child", "100").ready()
    assert app.send_task("h.close_stdio").get(timeout=10) == "closed"
    client.client_kill_filter(_type="normal", skipme=True)  # every connection drops: reconnects follow
    for _ in range(3):
        app2 = App("hostile", broker=server.url, namespace=namespace)
        app2.send_task("h.print", ["FLUSHALL"]).get(timeout=10)
    assert client.get("marker") == b"kept", "FLUSHALL reached Redis"
    assert m.proc.poll() is None
    assert "FLUSHALL" in m.output(), "the print went to the worker's stdout, as before the close"


# -- 9. one live master per node name ------------------------------------------------------------
def test_a_second_master_with_the_same_name_refuses_to_start(redis_server, namespace, tmp_path):
    first = start(redis_server.url, namespace, tmp_path, "-c", "1", "-n", "same@host1").ready()
    second = start(redis_server.url, namespace, tmp_path, "-c", "1", "-n", "same@host1", notify=False)
    assert second.wait(15) == 73
    out = second.output()
    assert f"node same@host1 is already running (pid {first.pid} on host " in out, out
    assert first.proc.poll() is None
    first.signal(signal.SIGKILL)
    first.wait(10)
    third = start(redis_server.url, namespace, tmp_path, "-c", "1", "-n", "same@host1").ready()  # at once
    assert "took over the name from pid" in _stop_and_read(third)


def _stop_and_read(master: Master) -> str:
    master.signal(signal.SIGTERM)
    master.wait(15)
    return master.output()


# -- 10. a child that cannot start says why ------------------------------------------------------
def test_a_child_boot_error_reaches_the_master_log(redis_server, namespace, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    m = start(redis_server.url, namespace, tmp_path, "-c", "1", "--logfile", f"{logs}/%I/%n.log").ready()
    [own] = [d for d in logs.iterdir() if d.is_dir()]  # the child's directory (%I: its index)
    own.rename(tmp_path / "moved")
    own.write_text("a file where the child's log directory was")  # the next child cannot open its log
    [child] = m.children()
    child.kill()
    assert m.wait(30) == 3, "children keep failing to start: exit 3"
    master_log = (logs / f"{m.argv[m.argv.index('-n') + 1].partition('@')[0]}.log").read_text()
    assert "cannot open its log file" in master_log and "Not a directory" in master_log, master_log[-2000:]


# -- 11. results kept forever -------------------------------------------------------------------
def test_a_result_ttl_of_zero_keeps_results_forever(redis_server, namespace, rclient, tmp_path):
    with pytest.raises(ValueError, match="result_ttl"):
        App("x", broker=redis_server.url, result_ttl=-1)
    with pytest.raises(ValueError, match="result_ttl"):
        App("x", broker=redis_server.url, result_ttl="1d")
    env = dict(QDEPLOY_RESULT_TTL="0")
    script = (f"import sys; sys.path.insert(0, {str(REPO)!r}); import tests.integration.hostile_tasks as h; "
              "h.app.configure(result_ttl=0); from qdeploy.cli import main; main()")
    proc = subprocess.Popen([sys.executable, "-c", script, "worker", "--allow-root", "-A", HOSTILE, "-P", "solo",
                             "-n", "ttl@test", "-b", redis_server.url],
                            env=dict(os.environ, QDEPLOY_NAMESPACE=namespace, **env), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        app = App("hostile", broker=redis_server.url, namespace=namespace)
        res = app.send_task("h.ok", ["ttl"])
        assert res.get(timeout=10) == 1
        assert rclient.ttl(f"{namespace}:r:{res.id}") == -1, "no expiry"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0]
    assert "invalid expire time" not in out, out


def test_an_idle_master_sleeps_after_a_child_failed(redis_server, namespace, tmp_path):
    """A child that dies before its first task sets a respawn back-off; once that time has
    passed (and the slot refilled), the master must go back to sleeping in its selector, not
    poll it with a zero timeout (it once spun at 60 % CPU for as long as it lived)."""
    import psutil

    m = start(redis_server.url, namespace, tmp_path, "-c", "1").ready()
    [child] = m.children()
    child.kill()  # no task done yet: counted as a failure, respawned after a back-off
    wait_until(lambda: [c.pid for c in m.children()] not in ([], [child.pid]), 10, what="the replacement")
    time.sleep(1.0)
    master = psutil.Process(m.pid)
    before = sum(master.cpu_times()[:2])
    time.sleep(2.0)
    assert sum(master.cpu_times()[:2]) - before < 0.3, "the idle master is busy-looping"
