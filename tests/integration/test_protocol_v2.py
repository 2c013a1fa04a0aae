"""Rolling upgrades: the previous release (its wheel, built from git history) and this one side
by side on one Redis. Plain messages are written as v1, byte for byte what the previous release
wrote, so either worker runs either producer's tasks; a worker that meets a newer envelope
version leaves it for one that reads it (and says so) instead of dead-lettering it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qdeploy import App
from qdeploy.core import message
from qdeploy.ops import fleet
from tests.integration.conftest import REPO, wait_until

PREVIOUS = "09fdef6fa06934f4f908d356842544813ec7aebe"  # the last commit with envelope v1 only

TASKS = '''
import os
from qdeploy import App
from qdeploy.core import message

app = App("proto", broker=os.environ["QDEPLOY_BROKER"], namespace=os.environ["QDEPLOY_NAMESPACE"])

@app.task(name="p.add")
def add(x, y):
    return x + y

@app.task(name="p.who")
def who():
    return [message.VERSION, os.path.dirname(message.__file__)]
'''

SEND = '''
import sys
from proto_tasks import app
print(" ".join(app.send_task("p.add", (i, 1)).id for i in range(int(sys.argv[1]))))
'''


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory) -> Path:
    """The previous release installed from its wheel, built from git history (the checkout is
    not touched: `git archive` reads the commit)."""
    root = tmp_path_factory.mktemp("previous")
    src, dist, site = root / "src", root / "dist", root / "site"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], check=True,
                   timeout=300)
    [wheel] = dist.glob("qdeploy-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    return site


class Side:
    """One release: its Python path, a tasks module, workers and producers started from it."""

    def __init__(self, site: Path | None, workdir: Path, url: str, namespace: str):
        self.workdir = workdir
        workdir.mkdir(exist_ok=True)
        (workdir / "proto_tasks.py").write_text(TASKS)
        (workdir / "send.py").write_text(SEND)
        path = [str(workdir), *([str(site)] if site else [str(REPO)])]
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), QDEPLOY_BROKER=url, QDEPLOY_NAMESPACE=namespace)
        self.url, self.procs = url, []

    def worker(self, name: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "qdeploy", "worker", "--pool", "solo", "--allow-root",
                                 "-A", "proto_tasks:app", "-b", self.url, "-n", name, "-l", "info"],
                                cwd=self.workdir, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        self.procs.append(proc)
        return proc

    def send(self, n: int) -> list[str]:
        done = subprocess.run([sys.executable, "send.py", str(n)], cwd=self.workdir, env=self.env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    def stop(self) -> str:
        out = []
        for proc in self.procs:
            proc.terminate()
            out.append(proc.communicate(timeout=30)[0])
        return "\n".join(out)


@pytest.fixture
def sides(previous_release, tmp_path, redis_server, namespace):
    old = Side(previous_release, tmp_path / "old", redis_server.url, namespace)
    new = Side(None, tmp_path / "new", redis_server.url, namespace)
    yield old, new
    for side in (old, new):
        for proc in side.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def app(redis_server, namespace):
    return App("proto", broker=redis_server.url, namespace=namespace)


def run_alone(side: Side, app, name: str):
    """Start a worker of `side` alone and ask it which code it runs."""
    side.worker(name)
    return app.send_task("p.who", ()).get(timeout=20)


def test_each_release_runs_the_other_ones_plain_tasks(sides, app):
    old, new = sides
    assert run_alone(old, app, "old@test")[0] == 1, "the old worker must really be the previous release"
    old_ids, new_ids = old.send(20), new.send(20)
    assert all(app.AsyncResult(i).get(timeout=20) == n + 1 for ids in (old_ids, new_ids) for n, i in enumerate(ids))
    raw = app.transport.client.hget(f"{app.namespace}:msg", "x")  # nothing left behind
    assert raw is None and fleet.dead_letters(app.transport) == []
    old.stop()
    version, where = run_alone(new, app, "new@test")
    assert version == 2 and where.startswith(str(REPO))
    old_ids, new_ids = old.send(20), new.send(20)
    assert all(app.AsyncResult(i).get(timeout=20) == n + 1 for ids in (old_ids, new_ids) for n, i in enumerate(ids))
    assert fleet.dead_letters(app.transport) == []


def test_both_workers_on_one_queue_lose_nothing(sides, app):
    old, new = sides
    old.worker("old@test")
    new.worker("new@test")
    ids = old.send(60) + new.send(60)
    assert [app.AsyncResult(i).get(timeout=30) for i in ids] == [n + 1 for n in range(60)] * 2
    workers = {app.AsyncResult(i).meta["worker"].partition("/")[0] for i in ids}
    assert workers == {"old@test", "new@test"}, "both releases must have taken a share"
    assert fleet.dead_letters(app.transport) == []


def test_a_newer_envelope_version_is_left_for_a_worker_that_reads_it(sides, app, rclient, namespace):
    _, new = sides
    new.worker("new@test")
    assert app.send_task("p.add", (1, 1)).get(timeout=20) == 2  # up
    body = json.loads(message.encode(app.envelope("p.add", (2, 3), task_id="from-the-future")))
    body.update(v=3, something_new={"x": 1})
    fleet.publish_raw(app.transport, "default", "from-the-future", json.dumps(body))
    eta_key = f"{namespace}:eta:default"
    wait_until(lambda: rclient.zscore(eta_key, "from-the-future"), 20, what="the v3 message left in the ETA set")
    assert rclient.zscore(eta_key, "from-the-future") > time.time() + 20  # offered again later
    assert fleet.dead_letters(app.transport) == [] and app.AsyncResult("from-the-future").state == "PENDING"
    assert not rclient.hexists(f"{namespace}:dlv", "from-the-future"), "leaving it is not a failed delivery"
    # a worker that reads it arrives (here: the message is rewritten as this release's v2)
    body.update(v=2)
    del body["something_new"]
    rclient.hset(f"{namespace}:msg", "from-the-future", json.dumps(body))
    rclient.zadd(eta_key, {"from-the-future": time.time()})
    assert app.AsyncResult("from-the-future").get(timeout=20) == 5
    assert "envelope v3 is newer than this worker reads (v1-v2); left in queue default" in new.stop()


def test_the_old_worker_runs_what_task_protocol_1_sends(sides, app):
    old, _ = sides
    old.worker("old@test")
    app.conf.task_protocol = 1  # while workers of the previous release still run

    @app.task(name="p.add")
    def add(x, y):
        return x + y

    assert add.apply_async((2, 2), headers=None).get(timeout=20) == 4
    with pytest.raises(ValueError, match="needs envelope v2"):
        add.apply_async((2, 2), link=add.s(1))
    assert fleet.dead_letters(app.transport) == []
