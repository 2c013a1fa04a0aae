"""`qdeploy beat` with an app whose schedule is made by `on_after_configure`
(`sender.add_periodic_task(1.0, tick.s('hello'), name=..., expires=...)`) and `beat_init`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.integration.conftest import REPO, wait_until


def test_beat_runs_what_on_after_configure_scheduled_and_sends_beat_init(tmp_path, redis_server, namespace, rclient):
    cfg = tmp_path / "qdeploy.toml"
    cfg.write_text(f'app = "tests.integration.beat_app:app"\nbroker = "{redis_server.url}"\n'
                   f'log_dir = "{tmp_path}/log"\npid_dir = "{tmp_path}/run"\nstate_dir = "{tmp_path}/state"\n'
                   "[beat]\nmax_interval = 0.2\nlock_timeout = 2.0\n")
    env = dict(os.environ, QDEPLOY_NAMESPACE=namespace, QDEPLOY_BROKER=redis_server.url, PYTHONPATH=str(REPO))
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen([sys.executable, "-m", "qdeploy", "beat", "--config", str(cfg), "--allow-root"],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: rclient.hlen(f"{namespace}:msg") >= 2, 15, what="two runs of the periodic task")
        assert rclient.get(f"{namespace}:test:beat_init") == b"Beat"
        bodies = [json.loads(b) for b in rclient.hvals(f"{namespace}:msg")]
        assert {(b["task"], tuple(b["args"])) for b in bodies} == {("b.tick", ("hello",))}
        assert all(b["expires"] is not None for b in bodies)  # expires=10 travels with each run
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
