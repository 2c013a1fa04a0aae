"""A broker password never shows: not in a live worker's debug log (also across a Redis restart
and a failed task), not in its process titles, not in `status` / `inspect` / `queues` output.

(Without a live worker, `status`/`queues`/`control` are covered by test_ops.test_no_password_in_output.)"""

from __future__ import annotations

import json
import signal

import psutil

from qdeploy import App
from tests.integration.conftest import run_cli, wait_until
from tests.integration.workers import Master

SECRET = "s3cr3t-Pw-9f1"


def test_password_never_printed_by_a_live_worker_or_ops_commands(make_server, namespace, tmp_path):
    server = make_server(password=SECRET)
    master = Master(server.url, namespace, tmp_path, "--allow-root", "-c", "2", "-l", "debug").ready()
    app = App("itest", broker=server.url, namespace=namespace)
    assert app.send_task("t.pid", ["a"]).get(timeout=20)
    running = app.send_task("t.slow", [3, "s"])
    env = {"QDEPLOY_NAMESPACE": namespace, "QDEPLOY_BROKER": server.url}
    ops = [run_cli(*args, "-A", "tests.integration.tasks:app", env=env)
           for args in (["status"], ["status", "--json"], ["inspect", "stats"], ["inspect", "active", "--json"],
                        ["inspect", "registered"], ["queues", "--json"])]
    assert all(r.returncode == 0 for r in ops), [(r.args, r.stderr) for r in ops]
    assert json.loads(ops[1].stdout), "status --json saw no node"
    titles = [" ".join(p.cmdline()) for p in [psutil.Process(master.pid), *master.children()]]
    server.restart(downtime=0.5)  # the worker logs connection errors: they must be redacted too
    assert running.get(timeout=30) == "s"
    app.send_task("t.crash")  # a child dies: warnings with consumer ids and requeue counts
    wait_until(lambda: len(master.children()) == 2 and app.transport.client.get(f"{namespace}:test:crash"), 20,
               what="the crashed child replaced")
    master.signal(signal.SIGTERM)
    assert master.wait() == 0
    log = master.output()
    assert "DEBUG" in log and "lost connection to Redis" in log, log[-2000:]  # it really logged at debug
    for text in [log, *titles, *(r.stdout + r.stderr for r in ops)]:
        assert SECRET not in text


def test_password_redacted_when_the_broker_is_unreachable(namespace, tmp_path):
    from tests.integration.conftest import free_port

    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    master = Master(url, namespace, tmp_path, "--allow-root", "-l", "debug", notify=False)
    assert master.wait(30) == 3
    out = master.output()
    assert "cannot reach broker redis://:***@127.0.0.1" in out and SECRET not in out, out
