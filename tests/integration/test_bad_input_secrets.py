"""A broker password never shows: not in a live worker's debug log (also across a Redis restart
and a failed task), not in its process titles, not in `status` / `inspect` / `queues` output;
not in `render` (errors from a flag, the TOML file or $QDEPLOY_BROKER, --diff, --explain), not in
any rendered file but the 0640 config, not in a log line quoting a URL, not in an ops error.

(Without a live worker, `status`/`queues`/`control` are covered by test_ops.test_no_password_in_output.)"""

from __future__ import annotations

import json
import signal
import time

import psutil
import pytest

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


# -- every credential case of issue 17: render, its --diff and --explain, logs, ops errors ---
PW = "Sekr1t-7q"


def _files(out):
    return {p: (p.read_text(errors="replace"), p.stat().st_mode & 0o7777) for p in sorted(out.rglob("*")) if p.is_file()}


def _clean(proc, *secrets):
    for secret in secrets or (PW,):
        assert secret not in proc.stdout and secret not in proc.stderr, (proc.args, proc.stdout[-2000:], proc.stderr)


@pytest.mark.parametrize("how, broker, reason", [
    ("flag", f"redis://:{PW}@127.0.0.1:99999/0", "expected a port from 1 to 65535"),
    ("toml", f"redis://:{PW}@127.0.0.1:99999/0", "expected a port from 1 to 65535"),
    ("env", f"redis://:{PW}@127.0.0.1:99999/0", "expected a port from 1 to 65535"),
    ("flag", f"redis://127.0.0.1:99999/0?password={PW}", "expected a port from 1 to 65535"),
    ("toml", f"sentinel://127.0.0.1:26379/0?sentinel_password={PW}", "expected ?master=NAME"),
    ("env", f"redis+sentinel://:{PW}@127.0.0.1:26379/0?master=m&sentinel_password={PW}", "is spelt sentinel://"),
    ("flag", f"redis://:{PW}@h/0?pasword={PW}", "did you mean 'password'"),
    ("flag", f"redis://:{PW[:4]} {PW[4:]}@h/0", "expected printable ASCII without spaces"),
])
def test_a_bad_broker_never_prints_its_password(how, broker, reason, tmp_path):
    out, cfg = tmp_path / "out", tmp_path / "qdeploy.toml"
    cfg.write_text(f"broker = {json.dumps(broker)}\n" if how == "toml" else "")
    env = {"QDEPLOY_BROKER": broker} if how == "env" else {}
    flags = ["-b", broker] if how == "flag" else []
    proc = run_cli("render", "--config", str(cfg), *flags, "--out", str(out), env=env)
    assert proc.returncode == 2 and reason in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    _clean(proc, PW, PW[:4] if " " in broker else PW)
    assert not out.exists(), "nothing written"


@pytest.mark.parametrize("broker", [
    f"redis://:{PW}@10.0.0.5:6379/0",
    f"redis://10.0.0.5:6379/0?password={PW}",
    f"sentinels://:{PW}@s1:26379,s2:26380/0?master=m&sentinel_password={PW}x&ssl_ca_certs=/etc/ssl/ca.crt",
])
def test_render_diff_and_explain_never_print_the_password(broker, tmp_path):
    """The password reaches only the 0640 files that must hold it (the effective config), never
    stdout/stderr: not when rendering, not in --explain, not in --diff after a broker change
    (which changes the very line holding the old and the new password)."""
    out, cfg = tmp_path / "out", tmp_path / "qdeploy.toml"
    cfg.write_text(f"broker = {json.dumps(broker)}\n[worker]\nnodes = 2\n")
    rendered = run_cli("render", "--config", str(cfg), "--out", str(out))
    assert rendered.returncode == 0, rendered.stderr
    _clean(rendered)
    holders = [p.relative_to(out).as_posix() for p, (text, mode) in _files(out).items() if PW in text]
    assert holders == ["etc/qdeploy/qdeploy.toml"], holders
    assert all(mode == 0o640 for p, (text, mode) in _files(out).items() if PW in text)
    for explain in (["--explain"], ["--explain", "--json"]):
        shown = run_cli("render", "--config", str(cfg), *explain)
        assert shown.returncode == 0 and "qworker@2" in shown.stdout, shown.stderr
        _clean(shown)
    new = broker.replace(PW, "N3w-" + PW[::-1])
    before = _files(out)
    diff = run_cli("render", "--config", str(cfg), "-b", new, "--out", str(out), "--diff")
    assert diff.returncode == 1 and "-broker = " in diff.stdout and "+broker = " in diff.stdout, diff.stdout
    _clean(diff, PW, PW[::-1])
    assert _files(out) == before, "--diff writes nothing"


def test_extra_args_with_a_password_are_refused(tmp_path):
    cfg = tmp_path / "qdeploy.toml"
    cfg.write_text(f'[worker]\nextra_args = ["-b", "redis://:{PW}@10.0.0.5:6379/0"]\n')
    proc = run_cli("render", "--config", str(cfg), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "expected no credentials" in proc.stderr, proc.stderr
    _clean(proc)


def test_a_worker_on_unreachable_sentinels_logs_no_password(namespace, tmp_path):
    from tests.integration.conftest import free_port

    url = (f"sentinel://:{PW}@127.0.0.1:{free_port()},127.0.0.1:{free_port()}/0"
           f"?master=m&sentinel_password={PW}")
    started = time.monotonic()
    master = Master(url, namespace, tmp_path, "--allow-root", "-l", "debug", notify=False)
    assert master.wait(30) == 3
    # one short line (redis-py's error lists every sentinel client's repr), and quickly: a dead
    # sentinel is skipped, not retried with redis-py's default back-off (~13 s for two)
    assert time.monotonic() - started < 8
    out = master.output()
    assert "cannot reach broker sentinel://:***@127.0.0.1:" in out and "sentinel_password=***" in out, out
    assert "No master found for 'm': no sentinel in the URL answered" in out and len(out) < 600, out
    assert PW not in out, out


def test_a_url_in_a_worker_log_line_is_redacted(make_server, namespace, tmp_path):
    """Whatever a log line quotes (here a message's task name, which crossed the network) goes
    through the log filter: no credential reaches the log, in text or JSON lines."""
    server = make_server()
    for fmt in ("text", "json"):
        master = Master(server.url, namespace + fmt, tmp_path, "--allow-root", "-c", "1", "--log-format", fmt).ready()
        app = App("itest", broker=server.url, namespace=namespace + fmt)
        res = app.send_task(f"redis://:{PW}@10.0.0.5:6379/0")  # an unknown task: dead-lettered, logged
        wait_until(lambda: app.transport.client.exists(f"{namespace}{fmt}:dead") or res.state == "FAILURE", 20,
                   what="the message dead-lettered")
        master.signal(signal.SIGTERM)
        assert master.wait() == 0
        log = master.output()
        assert "unknown task" in log and "redis://:***@10.0.0.5:6379/0" in log and PW not in log, log[-2000:]
    shown = run_cli("result", res.id, env={"QDEPLOY_NAMESPACE": namespace + "json", "QDEPLOY_BROKER": server.url},
                    timeout=30)
    assert shown.returncode == 1 and "FAILURE" in shown.stdout, (shown.stdout, shown.stderr)
    _clean(shown)


OPS = [["status"], ["inspect", "stats"], ["control", "ping"], ["queues"], ["dead-letter", "list"], ["purge", "--yes"],
       ["enqueue", "t.pid", "--force"], ["result", "x"], ["dashboard", "--port", "1"]]


def test_ops_errors_never_print_the_password(tmp_path):
    """Every ops command, its broker from a config file; and the other places a broker comes
    from (environment, -b with the password in the query or for the sentinels)."""
    from tests.integration.conftest import free_port

    dead = free_port()
    cfg = tmp_path / "qdeploy.toml"
    cfg.write_text(f'broker = "redis://:{PW}@127.0.0.1:{dead}/0"\n')
    runs = [(args, ["--config", str(cfg)], {}, 3) for args in OPS]
    for args in (["status"], ["enqueue", "t.pid", "--force"]):
        runs += [(args, [], {"QDEPLOY_BROKER": f"redis://:{PW}@127.0.0.1:{dead}/0"}, 3),
                 (args, ["-b", f"sentinel://127.0.0.1:{dead}/0?master=m&sentinel_password={PW}"], {}, 3),
                 (args, ["-b", f"redis://127.0.0.1:{dead}/0?password={PW}&bogus=1"], {}, 2)]
    for args, extra, env, code in runs:
        proc = run_cli(*args, *extra, env=dict(env, QDEPLOY_NAMESPACE="tns"))
        assert proc.returncode == code and len(proc.stderr.splitlines()) == 1, (args, extra, proc.stderr)
        assert "broker" in proc.stderr, proc.stderr
        _clean(proc)
