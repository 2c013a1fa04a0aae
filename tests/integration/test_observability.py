"""Issue 21 against real workers and a real Redis: task log lines (text and JSON), print() at once,
every child exit's reason and its count in `inspect stats`, /metrics scraped by a real
Prometheus server, health states, events seen by a listener for each kind, the live view in tmux."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import psutil
import pytest

from qdeploy import App
from qdeploy.ops import events as events_mod
from qdeploy.ops.control import Control
from tests.integration.conftest import REPO, free_port, run_cli, wait_until

APP = ["-A", "tests.integration.obs_tasks:app"]


@pytest.fixture
def oapp(redis_server, namespace):
    """A producer in the test's namespace; tasks are sent by name."""
    return App("obstest", broker=redis_server.url, namespace=namespace)


class Lines:
    """Everything a master prints, read in a thread as it comes."""

    def __init__(self, master):
        self.master, self.lines = master, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.master.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 15.0) -> str:
        regex = re.compile(pattern)
        return wait_until(lambda: next((line for line in list(self.lines) if regex.search(line)), None), timeout,
                          what=f"a log line matching {pattern!r}; got:\n" + "\n".join(self.lines[-30:]))

    def json(self) -> list[dict]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def send(oapp, name, *args, **kwargs):
    return oapp.send_task(name, list(args), kwargs)


def started(masters, *args):
    m = masters(*APP, *args).ready()
    return m, Lines(m)


# -- logs ------------------------------------------------------------------------------------------
def test_json_task_lines_and_prints_that_arrive_at_once(masters, oapp):
    m, out = started(masters, "-c", "1", "--log-format", "json")
    slow = send(oapp, "o.say", "hello from a task", 6)
    line = out.wait_for("hello from a task", timeout=4)  # long before the task (and the child) ends
    assert not slow.ready()
    record = json.loads(line)
    assert record["level"] == "warning" and record["logger"] == "qdeploy.redirected" and record["pid"] != m.pid
    done = send(oapp, "o.ok", 4)
    assert done.get(timeout=15) == 4
    failed = send(oapp, "o.fail")
    wait_until(lambda: failed.state == "FAILURE", 10)
    wait_until(lambda: sum("task_id" in r for r in out.json()) >= 3, 10, what="three task lines")
    lines = {r["task_id"]: r for r in out.json() if "task_id" in r}
    ok = lines[done.id]
    node = owner_of(m).partition("@")[0]
    assert {k: ok[k] for k in ("task_name", "queue", "outcome", "node")} == {
        "task_name": "o.ok", "queue": "default", "outcome": "succeeded", "node": node}
    assert ok["child_pid"] == record["pid"] != m.pid and isinstance(ok["duration_s"], float)
    assert ok["message"].startswith(f"Task o.ok[{done.id}] succeeded in ") and ok["message"].endswith(": 4")
    bad = lines[failed.id]
    assert bad["level"] == "error" and bad["outcome"] == "failed" and "ValueError: bad input" in bad["message"]
    # A task that closes fd 1 keeps printing into the log, and so does the next one.
    assert send(oapp, "o.close_stdout").get(timeout=15) == "closed"
    out.wait_for("printed after closing fd 1")
    send(oapp, "o.say", "the next task prints too").get(timeout=15)
    out.wait_for("the next task prints too")


def test_text_task_lines_are_celerys(masters, oapp):
    m, out = started(masters, "-c", "1")
    done = send(oapp, "o.ok", 4)
    done.get(timeout=15)
    out.wait_for(rf"INFO/\S+ \d+\] Task o\.ok\[{re.escape(done.id)}\] succeeded in \d+\.\d{{4}}s: 4$")


def test_every_child_exit_logs_its_reason_and_stats_count_them(masters, oapp, tapp):
    m, out = started(masters, "-c", "1", "--max-tasks-per-child", "2", "--max-tasks-jitter", "0",
                     "--max-memory-per-child", "150M")
    control = Control(tapp.transport)

    def exits():
        replies = control.request("stats", timeout=2).replies
        return next(iter(replies.values()))["result"]["child_exits"] if replies else {}

    for _ in range(2):
        send(oapp, "o.ok", 1).get(timeout=15)
    out.wait_for(r"child \d+ exited: max_tasks \(max_tasks_per_child 2 reached\)")
    send(oapp, "o.crash")
    out.wait_for(r"child \d+ exited: crash \(exit code 137\): requeued 1 task")
    stuck = oapp.send_task("o.stuck", [10], time_limit=1)
    out.wait_for(r"child \d+ exited: time_limit \(killed by signal 9, time limit exceeded")
    wait_until(lambda: stuck.state == "FAILURE", 10)
    send(oapp, "o.hog", 200).get(timeout=15)
    out.wait_for(r"child \d+ exited: max_memory \(memory \d+ KiB > max_memory_per_child 153600 KiB\)")
    long = send(oapp, "o.sleep", 30)
    wait_until(lambda: any(c["tasks"] for c in next(iter(control.request("active", timeout=2).replies.values()))
                           ["result"]["children"]), 10)
    tapp.revoke(long.id)
    control.request("revoke", {"ids": [long.id], "terminate": True}, timeout=2)
    out.wait_for(r"child \d+ exited: killed \(killed by signal 9, revoked\)")
    assert wait_until(lambda: exits() == {"max_tasks": 1, "crash": 1, "time_limit": 1, "max_memory": 1,
                                          "hard_memory": 0, "killed": 1} or None, 10, what=f"exits {exits()}")


# -- metrics, scraped by a real Prometheus -----------------------------------------------------------
PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def prometheus(tmp_path):
    if PROMETHEUS is None:
        pytest.fail("prometheus is not installed (apt-get install prometheus)")
    procs = []

    def start(target_port: int) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n"
                          f"  - job_name: qdeploy\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _get(f"{url}/-/ready")[0] == 200, 30, 0.2, what="prometheus ready")
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def query(prom: str, expr: str) -> dict[str, float]:
    status, body = _get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if status != 200:
        return {}
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in json.loads(body)["data"]["result"]}


def test_prometheus_scrapes_exact_counts_across_recycling_and_a_reload(masters, oapp, prometheus, redis_server):
    port = free_port()
    m, out = started(masters, "-c", "1", "--max-tasks-per-child", "5", "--max-tasks-jitter", "0",
                     "--metrics-port", str(port))
    conns = [c for c in psutil.Process(m.pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert [c.laddr for c in conns if c.laddr.port == port] == [("127.0.0.1", port)]  # not every interface
    prom = prometheus(port)
    for i in range(12):
        send(oapp, "o.ok", i)
    failing = [send(oapp, "o.fail") for _ in range(3)]
    wait_until(lambda: all(f.state == "FAILURE" for f in failing), 20)
    wait_until(lambda: len([line for line in out.lines if "exited: max_tasks" in line]) == 3, 15, what="3 recycles")
    m.signal(signal.SIGHUP)  # re-exec in place: the counters must survive
    out.wait_for("reloaded:")
    wait_until(lambda: _get(f"http://127.0.0.1:{port}/metrics")[0] == 200, 15, what="metrics after the reload")
    results = [send(oapp, "o.ok", i) for i in range(5)]
    for r in results:
        r.get(timeout=15)
    expected = {"succeeded": 17.0, "failed": 3.0}

    def scraped():
        by_outcome = query(prom, "sum by (outcome) (qdeploy_tasks_total)")
        got = {json.loads(k)["outcome"]: v for k, v in by_outcome.items()}
        exits = query(prom, 'qdeploy_child_exits_total{reason="max_tasks"}')
        runs = query(prom, "sum(qdeploy_task_duration_seconds_count)")
        waits = query(prom, 'qdeploy_task_queue_wait_seconds_count{queue="default"}')
        return (got, list(exits.values()), list(runs.values()), list(waits.values()))

    wait_until(lambda: scraped() == (expected, [4.0], [20.0], [20.0]), 20, 0.5,
               what=f"prometheus to show the counts; last {scraped()}")
    assert list(query(prom, "qdeploy_pool_size").values()) == [1.0]
    assert list(query(prom, 'qdeploy_queue_messages{queue="default",state="ready"}').values()) == [0.0]
    info = query(prom, "qdeploy_build_info")
    assert len(info) == 1 and '"version"' in next(iter(info))
    body = _get(f"http://127.0.0.1:{port}/metrics")[1]
    assert not any(r.id in body for r in results)  # no task ids as labels


# -- health --------------------------------------------------------------------------------------------
def health(redis_server, namespace, owner, *extra):
    return run_cli("health", *APP, "-b", redis_server.url, "-n", owner, *extra,
                   env={"QDEPLOY_NAMESPACE": namespace})


def owner_of(m) -> str:
    """The node identity: the last -n on its command line wins (as click takes it)."""
    return m.argv[len(m.argv) - 1 - m.argv[::-1].index("-n") + 1]


def test_health_idle_busy_stopped_child_stopped_master(masters, oapp, redis_server, namespace, tmp_path):
    config = tmp_path / "health.toml"
    config.write_text('[worker]\nhealth_stuck_after = "1s"\n')
    port = free_port()
    m, out = started(masters, "-c", "2", "--config", str(config), "--metrics-port", str(port))
    owner = owner_of(m)
    time.sleep(2.5)  # idle for longer than health_stuck_after: idle children poll, so healthy
    ok = health(redis_server, namespace, owner)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"ok: {owner}"), ok.stderr
    assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    busy = send(oapp, "o.sleep", 4)
    time.sleep(1)  # running, for longer than health_stuck_after: busy is healthy
    assert health(redis_server, namespace, owner).returncode == 0
    child = m.serving()[0]
    child.suspend()  # SIGSTOP
    try:
        wait_until(lambda: health(redis_server, namespace, owner).returncode == 1, 10, 0.3, what="unhealthy")
        bad = health(redis_server, namespace, owner)
        assert "is stopped" in bad.stdout and len(bad.stdout.strip().splitlines()) == 1
        status, text = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 503 and "is stopped" in text
    finally:
        child.resume()
    wait_until(lambda: health(redis_server, namespace, owner).returncode == 0, 10, 0.3, what="healthy again")
    busy.get(timeout=15)
    psutil.Process(m.pid).suspend()  # the master itself: its heartbeat goes stale
    try:
        wait_until(lambda: "heartbeat stale" in health(redis_server, namespace, owner, "--stale-after", "3").stdout,
                   15, 0.5, what="a stale heartbeat")
    finally:
        psutil.Process(m.pid).resume()


def test_health_master_gone_and_broker_down(masters, make_server, namespace, redis_server):
    m, _ = started(masters, "-c", "1", "-n", f"gone{os.getpid()}@{socket.gethostname()}")
    owner = owner_of(m)
    assert health(redis_server, namespace, owner).returncode == 0
    m.proc.kill()
    m.proc.wait(10)
    gone = health(redis_server, namespace, owner)
    assert gone.returncode == 1 and "master gone: pid" in gone.stdout, gone.stdout + gone.stderr
    missing = health(redis_server, namespace, "nobody@nowhere")
    assert missing.returncode == 1 and "master gone: no heartbeat" in missing.stdout
    server = make_server()
    url = server.url
    server.stop()
    down = run_cli("health", *APP, "-b", url, "-n", owner, env={"QDEPLOY_NAMESPACE": namespace})
    assert down.returncode == 3 and "cannot reach broker" in down.stderr and len(down.stderr.strip().splitlines()) == 1
    bad = run_cli("health", *APP, "-b", url, "-n", "a b@c")
    assert bad.returncode == 2 and "expected NAME@HOST" in bad.stderr


# -- events --------------------------------------------------------------------------------------------
class Listener:
    def __init__(self, app):
        self.events: list[dict] = []
        self.stopped = False
        self.thread = threading.Thread(target=self._run, args=(app.transport,), daemon=True)
        self.thread.start()
        time.sleep(0.3)  # subscribed before anything is sent

    def _run(self, broker):
        for event in events_mod.listen(broker, timeout=0.2, stop=lambda: self.stopped):
            if event is not None:
                self.events.append(event)

    def of(self, kind, uuid=None):
        return [e for e in self.events if e["type"] == kind and (uuid is None or e.get("uuid") == uuid)]

    def wait(self, kind, uuid=None, timeout=15):
        return wait_until(lambda: self.of(kind, uuid), timeout, what=f"{kind} {uuid or ''}; got "
                          f"{sorted({e['type'] for e in self.events})}")[0]

    def stop(self):
        self.stopped = True
        self.thread.join(5)


def test_a_listener_sees_every_kind_and_events_switch_at_runtime(masters, oapp, tapp):
    listener = Listener(tapp)
    try:
        m, _ = started(masters, "-c", "1", "-E")
        owner = owner_of(m)
        assert listener.wait("worker-online")["hostname"] == owner
        ok = send(oapp, "o.ok", 1, secret="s3cret-argument")
        for kind in ("task-received", "task-started"):
            assert listener.wait(kind, ok.id)["name"] == "o.ok"
        done = listener.wait("task-succeeded", ok.id)
        assert isinstance(done["runtime"], float) and done["queue"] == "default"
        failed = send(oapp, "o.fail")
        assert "ValueError: bad input" in listener.wait("task-failed", failed.id)["exception"]
        retried = send(oapp, "o.retry_once")
        assert "not yet" in listener.wait("task-retried", retried.id)["exception"]
        listener.wait("task-succeeded", retried.id)
        long = send(oapp, "o.sleep", 30)
        listener.wait("task-started", long.id)
        tapp.revoke(long.id)
        Control(tapp.transport).request("revoke", {"ids": [long.id], "terminate": True}, timeout=2)
        assert listener.wait("task-revoked", long.id)["terminated"] is True
        # settled REVOKED when redelivered, not dead-lettered as a poison message (max_deliveries is 1)
        wait_until(lambda: long.state == "REVOKED", 15, what=f"the terminated task settled REVOKED, not {long.state} {long.info!r}")
        early = oapp.send_task("o.ok", [4], countdown=0.5)  # revoked before it ran
        tapp.revoke(early.id)
        stale = oapp.send_task("o.ok", [5], countdown=0.5, expires=0.2)  # expired before it ran
        for result, expired in ((early, False), (stale, True)):
            seen = listener.wait("task-revoked", result.id)
            assert (seen["name"], seen["queue"], seen["terminated"], seen["expired"]) == ("o.ok", "default", False, expired)
            assert not listener.of("task-started", result.id)
        assert len(listener.of("task-revoked", long.id)) == 1, "one event for a terminated task"
        listener.wait("worker-heartbeat")
        assert "s3cret-argument" not in json.dumps(listener.events)  # no arguments in events
        reply = Control(tapp.transport).request("disable_events", timeout=2)
        assert next(iter(reply.replies.values()))["result"] == {"events": False}
        listener.wait("worker-offline")
        quiet = send(oapp, "o.ok", 2)
        quiet.get(timeout=15)
        time.sleep(0.5)
        assert not listener.of("task-started", quiet.id)
        Control(tapp.transport).request("enable_events", timeout=2)
        loud = send(oapp, "o.ok", 3)
        listener.wait("task-succeeded", loud.id)
        m.signal(signal.SIGTERM)
        assert m.wait(30) == 0
        assert len(listener.of("worker-offline")) == 2
    finally:
        listener.stop()


def test_event_args_put_arguments_in_task_received_and_the_history_keeps_only_what_it_says(
        masters, oapp, tapp, redis_server, namespace):
    from qdeploy.ops.history import HistoryStore

    listener = Listener(tapp)
    try:
        m, _ = started(masters, "-c", "1", "-E", "--event-args")
        ok = send(oapp, "o.ok", 1, secret="s3cret")
        received = listener.wait("task-received", ok.id)
        assert (json.loads(received["args"]), json.loads(received["kwargs"])) == ([1], {"secret": "s3cret"})
        assert "args" not in listener.wait("task-started", ok.id), "only task-received carries them"
        failed = send(oapp, "o.fail")
        listener.wait("task-failed", failed.id)
        store = HistoryStore(redis_server.client(), namespace)
        wait_until(lambda: (store.get(ok.id) or {}).get("state") == "SUCCESS"
                   and (store.get(failed.id) or {}).get("state") == "FAILURE", 10, what="both in the history")
        assert "call" not in store.get(ok.id), "history_args=failures: a success's arguments are not kept"
        assert json.loads(store.get(failed.id)["call"]) == [[], {}], "a failure's are"
        m.signal(signal.SIGTERM)
        assert m.wait(30) == 0
    finally:
        listener.stop()


def test_event_call_trusts_nothing_from_the_pipe():
    assert events_mod.event_call('[[1,"a"],{"k":null}]') == {"args": '[1, "a"]', "kwargs": '{"k": null}'}
    for junk in ("", "~[1, 2, 3", "[1", "[1,2]", '[[1],{"a":1},3]', '[{"a":1},[1]]', "[" * 2000, "x" * 5000):
        out = events_mod.event_call(junk)
        assert out["kwargs"] == "" and out["args"] == junk[:1000], junk[:20]


def test_events_dump_json_from_the_cli(masters, oapp, redis_server, namespace):
    proc = subprocess.Popen([sys.executable, "-m", "qdeploy", "events", "--dump", "--json", "--count", "3", *APP,
                             "-b", redis_server.url], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, QDEPLOY_NAMESPACE=namespace, PYTHONPATH=str(REPO)))
    try:
        time.sleep(1.0)  # subscribed
        masters(*APP, "-c", "1", "-E").ready()
        ok = send(oapp, "o.ok", 1)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    kinds = [json.loads(line)["type"] for line in out.splitlines()]
    assert proc.returncode == 0, err
    assert kinds == ["worker-online", "task-received", "task-started"] or "task-received" in kinds, kinds
    assert all(json.loads(line).get("uuid") in (None, ok.id) for line in out.splitlines())
    bad = run_cli("events", "--json", *APP, "-b", redis_server.url)
    assert bad.returncode == 2 and "--json needs --dump" in bad.stderr


def test_the_live_view_under_tmux(masters, oapp, redis_server, namespace, tmp_path):
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.fail("tmux is not installed (apt-get install tmux)")
    session = f"qdeploy-top-{os.getpid()}"
    sock = str(tmp_path / "tmux.sock")
    command = (f"cd {REPO} && env QDEPLOY_NAMESPACE={namespace} PYTHONPATH={REPO} TERM=xterm COLUMNS=80 LINES=20 "
               f"{sys.executable} -m qdeploy events -A tests.integration.obs_tasks:app "
               f"-b {redis_server.url}; sleep 30")
    subprocess.run([tmux, "-S", sock, "new-session", "-d", "-s", session, "-x", "150", "-y", "40", command], check=True)

    def screen() -> str:
        return subprocess.run([tmux, "-S", sock, "capture-pane", "-p", "-t", session], capture_output=True,
                              text=True).stdout

    try:
        wait_until(lambda: "qdeploy events:" in screen(), 15, 0.2, what="the view")
        m = masters(*APP, "-c", "1", "-E").ready()
        ok = send(oapp, "o.ok", 1)
        failed = send(oapp, "o.fail")
        wait_until(lambda: ok.id in screen() and failed.id in screen(), 15, 0.3, what=f"both tasks\n{screen()}")
        text = screen()
        assert owner_of(m)[:40] in text and "online" in text
        row = next(line for line in text.splitlines() if ok.id in line)
        assert "o.ok" in row and "SUCCEEDED" in row
        assert "ValueError: bad input" in next(line for line in text.splitlines() if failed.id in line), text
        subprocess.run([tmux, "-S", sock, "send-keys", "-t", session, "q"], check=True)
        wait_until(lambda: "qdeploy events:" not in screen(), 10, 0.2, what="q to quit the view")
    finally:
        subprocess.run([tmux, "-S", sock, "kill-server"], capture_output=True)


# -- beat's metrics -------------------------------------------------------------------------------
def test_beat_serves_leadership_and_runs_per_entry(redis_server, namespace, tmp_path):
    port, standby_port = free_port(), free_port()
    procs = []
    for name, p in (("leader", port), ("standby", standby_port)):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f'app = "qdeploy.demo:app"\nbroker = "{redis_server.url}"\nlog_dir = "{tmp_path}/log"\n'
                       f'pid_dir = "{tmp_path}/run"\nstate_dir = "{tmp_path}/state"\n'
                       f"[beat]\nmax_interval = 0.2\nlock_timeout = 2\nmetrics_port = {p}\n"
                       '[beat.schedule.tick]\ntask = "demo.add"\nschedule = "1s"\nargs = [1, 2]\n')
        procs.append(subprocess.Popen([sys.executable, "-m", "qdeploy", "beat", "--config", str(cfg), "--allow-root",
                                       "--pidfile", str(tmp_path / f"{name}.pid")], cwd=tmp_path,
                                      env=dict(os.environ, QDEPLOY_NAMESPACE=namespace, PYTHONPATH=str(REPO)),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        if name == "leader":
            wait_until(lambda: "leader_is_1" if "qdeploy_beat_is_leader 1.0" in _get(f"http://127.0.0.1:{port}/metrics")[1]
                       else None, 20, 0.2, what="the first beat to lead")
    try:
        def runs() -> float:
            text = _get(f"http://127.0.0.1:{port}/metrics")[1]
            found = re.search(r'^qdeploy_beat_runs_total\{entry="tick"\} (\S+)$', text, re.M)
            return float(found.group(1)) if found else 0.0

        wait_until(lambda: runs() >= 2, 20, 0.2, what="two runs")
        assert "qdeploy_beat_is_leader 0.0" in _get(f"http://127.0.0.1:{standby_port}/metrics")[1]
        assert 'entry="tick"' not in _get(f"http://127.0.0.1:{standby_port}/metrics")[1]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=20)[0] for proc in procs]
        assert runs() == 0.0  # stopped: nothing listens any more
        sent = len(re.findall(r"sent tick: ", outputs[0]))
        assert sent >= 2 and "sent tick: " not in outputs[1]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_broker_reconnects_are_counted(masters, make_server, namespace):
    server = make_server()
    port = free_port()
    m = masters(*APP, "-c", "1", "-b", server.url, "--metrics-port", str(port)).ready()
    out = Lines(m)

    def reconnects() -> float | None:
        found = re.search(r"^qdeploy_broker_reconnects_total (\S+)$", _get(f"http://127.0.0.1:{port}/metrics")[1], re.M)
        return float(found.group(1)) if found else None

    assert reconnects() == 0.0
    server.stop()
    out.wait_for("heartbeat failed", 10)  # the master noticed
    status, text = _get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200  # a short outage is not unhealthy (health_reconnect_limit, 60 s)
    server.start()
    out.wait_for("heartbeat restored", 15)
    assert wait_until(lambda: reconnects() == 1.0, 10, what=f"one reconnect counted; got {reconnects()}")


def test_task_sent_from_producers_and_from_tasks(masters, oapp, tapp):
    events_mod.send_sent_events(oapp)  # a producer that wants task-sent events
    listener = Listener(tapp)
    try:
        masters(*APP, "-c", "1", "-E").ready()
        sender = send(oapp, "o.send_one")
        sent = listener.wait("task-sent", sender.id)
        assert (sent["name"], sent["queue"]) == ("o.send_one", "default") and "args" not in sent
        inner = sender.get(timeout=15)  # o.ok, sent by the task itself in a child with events on
        assert listener.wait("task-sent", inner)["name"] == "o.ok"
        listener.wait("task-succeeded", inner)
    finally:
        listener.stop()
        events_mod.stop_sent_events(oapp)


def test_after_the_drop_every_path_of_the_master_has_what_it_needs(masters, oapp, tapp, world_dir, locked_code):
    """As nobody, from code only root can read: hard memory and time limits (memory reads, the
    killed task's followups), a crash and inspect stats work; a HUP, whose new image could not
    read the code, is refused in one line and the node runs on; no read after the drop fails."""
    if os.geteuid() != 0:
        pytest.fail("this test runs as root")
    dirs = {name: world_dir / name for name in ("log", "run", "state")}
    m = masters(*APP, "-c", "1", "--uid", "nobody", "--gid", "nogroup", "--log-dir", str(dirs["log"]),
                "--pid-dir", str(dirs["run"]), "--state-dir", str(dirs["state"]), "--workdir", str(world_dir),
                "--max-memory-per-child-hard", "400M", "--time-limit", "1", root=True,
                env={"PYTHONPATH": str(locked_code)}).ready()
    out = Lines(m)
    assert send(oapp, "o.ok", 5).get(timeout=15) == 5
    stuck = send(oapp, "o.stuck", 30)
    wait_until(lambda: stuck.state == "FAILURE", 15, what="the stuck task killed at its hard limit")
    crashed = send(oapp, "o.crash")
    control = Control(tapp.transport)

    def exits() -> dict:
        replies = control.request("stats", timeout=3).replies
        return next(iter(replies.values()))["result"]["child_exits"] if replies else {}

    wait_until(lambda: exits().get("crash") == 1, 15, what="inspect stats counting the crash")
    assert exits()["time_limit"] == 1 and crashed.state != "SUCCESS"
    os.kill(m.pid, signal.SIGHUP)
    refused = out.wait_for("reload")  # the new image could not read the code: the node runs on
    assert "reload refused: this user (uid 65534) cannot " in refused and "; running on with the code loaded" in refused
    assert send(oapp, "o.ok", 6).get(timeout=15) == 6
    text = "\n".join(out.lines)
    for bad in ("Traceback", "PermissionError", "Permission denied", "ImportError", "ModuleNotFoundError"):
        assert bad not in text, text


def test_metrics_events_and_history_after_the_privilege_drop(masters, oapp, tapp, world_dir, locked_code,
                                                             redis_server, namespace):
    """Everything /metrics and the task history need is read before the drop: a service user may
    read neither the venv (here under /root) nor the code (here a copy only root can read)."""
    from qdeploy.ops.history import HistoryStore

    if os.geteuid() != 0:
        pytest.fail("this test runs as root")
    port = free_port()
    dirs = {name: world_dir / name for name in ("log", "run", "state")}
    m = masters(*APP, "-c", "1", "-E", "--uid", "nobody", "--gid", "nogroup", "--log-dir", str(dirs["log"]),
                "--pid-dir", str(dirs["run"]), "--state-dir", str(dirs["state"]), "--workdir", str(world_dir),
                "--metrics-port", str(port), root=True, env={"PYTHONPATH": str(locked_code)}).ready()
    assert psutil.Process(m.pid).uids().effective == 65534
    listener = Listener(tapp)
    try:
        done = send(oapp, "o.ok", 3)
        assert done.get(timeout=15) == 3
        listener.wait("task-succeeded", done.id)
    finally:
        listener.stop()
    status, body = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and 'qdeploy_tasks_total{outcome="succeeded",queue="default",task="o.ok"} 1.0' in body
    assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    store = HistoryStore(redis_server.client(), namespace)
    wait_until(lambda: (store.get(done.id) or {}).get("state") == "SUCCESS", 10, what="the task in the history")
