"""Workflows survive SIGKILLed children (real `qdeploy worker` masters): a chord's body runs
once with every header result, a chain completes with each step run at least once."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import psutil

from qdeploy import chain, chord
from tests.integration.conftest import wait_until
from tests.integration.workflow_tasks import app as wapp

TASKS = "tests.integration.workflow_tasks:app"


def producer(redis_server, namespace):
    wapp.configure(broker=redis_server.url, namespace=namespace)
    return wapp


def kill_a_child(master, rng) -> bool:
    children = [c for c in master.children() if c.is_running()]
    if not children:
        return False
    try:
        rng.choice(children).send_signal(signal.SIGKILL)
    except psutil.NoSuchProcess:
        return False
    return True


def test_a_100_task_chord_with_random_child_kills_runs_its_body_once_with_all_results(
        masters, redis_server, namespace, rclient):
    app = producer(redis_server, namespace)
    m = masters("-A", TASKS, "-c", "2", env={"QDEPLOY_MAX_DELIVERIES": "50"}).ready()
    rng = random.Random(int(os.environ.get("QDEPLOY_CHAOS_SEED", "19")))
    res = chord((app.tasks["w.part"].s(i, 0.05) for i in range(100)), app.tasks["w.collect"].s())()
    kills = 0
    deadline = time.monotonic() + 60
    while not res.ready() and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.05, 0.25))
        if not res.ready() and kill_a_child(m, rng):
            kills += 1
    assert res.get(timeout=30) == 100 and kills >= 3, f"only {kills} kills"
    time.sleep(0.5)  # a second body would have been queued with the counting ack: give it time to run
    assert int(rclient.get(f"{namespace}:test:body")) == 1
    [bodies] = [json.loads(b) for b in rclient.lrange(f"{namespace}:test:bodies", 0, -1)]
    assert bodies == list(range(100))
    assert all(int(rclient.get(f"{namespace}:test:part:{i}")) >= 1 for i in range(100))


def test_a_chain_of_20_with_a_child_killed_mid_chain_completes(masters, redis_server, namespace, rclient):
    app = producer(redis_server, namespace)
    m = masters("-A", TASKS, "-c", "1").ready()
    step = app.tasks["w.step"]
    res = chain(step.s(0, 0), *(step.s(i, 0.1) for i in range(1, 20))).apply_async()
    wait_until(lambda: int(rclient.get(f"{namespace}:test:running") or -1) >= 10, 30, what="step 10 running")
    [child] = [c for c in m.children() if c.is_running()]
    child.send_signal(signal.SIGKILL)  # mid-chain, inside a step
    assert res.get(timeout=60) == 20
    runs = [int(rclient.get(f"{namespace}:test:step:{i}") or 0) for i in range(20)]
    assert all(r >= 1 for r in runs) and sum(runs) >= 21, runs  # the killed step ran again


def test_a_chord_header_task_killed_at_its_hard_time_limit_fails_the_chord(masters, tapp):
    """The master kills a child whose task passed its hard limit and acks that task itself: the
    chord fails as with any failed header task (ChordError), and the body's error callback runs."""
    from qdeploy import ChordError
    from qdeploy.core.canvas import signature

    m = masters("-c", "2").ready()
    body = signature("t.pid", app=tapp)
    body.link_error(signature("t.pid", app=tapp))  # one argument: an old-style errback, gets the id
    res = chord([signature("t.stuck", (30,), app=tapp).set(time_limit=1), signature("t.pid", app=tapp)], body)()
    try:
        res.get(timeout=30)
        raise AssertionError("the chord must fail")
    except ChordError as exc:
        assert "TimeLimitExceeded" in str(exc)
    from tests.integration.workers import runs

    wait_until(lambda: runs(tapp.transport.client, tapp.namespace, res.id) == 1, 10, what="the body's errback")
    assert m.proc.poll() is None
