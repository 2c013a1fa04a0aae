"""Issue 21, the pure parts: log formats and the journal prefix, the stdout redirect, the richer
child event lines, child exit reasons, the master's counters, metrics ports, health verdicts,
event parsing, the top view, the in-selector HTTP server."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import selectors
import signal
import socket
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdeploy.generator import config as config_mod
from qdeploy.generator.config import node_ports
from qdeploy.ops import events, health, httpd, metrics, top
from qdeploy.service import logs
from qdeploy.worker.heartbeat import Beacons
from qdeploy.worker.state import Child, State, exit_reason


def record(msg="Task t.add[%s] succeeded in %.4fs%s", args=("id-1", 0.0021, ": 4"), level=logging.INFO, **extra):
    rec = logging.LogRecord("qdeploy.worker", level, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


TASK_EXTRA = {"task_id": "id-1", "task_name": "t.add", "queue": "default", "outcome": "succeeded",
              "duration_s": 0.0021, "node": "w1", "consumer": "w1@h/1.1"}


# -- logs ------------------------------------------------------------------------------------------
def test_json_lines_carry_the_task_fields_and_the_child_pid():
    line = json.loads(logs.JsonFormatter().format(record(**TASK_EXTRA)))
    assert {k: line[k] for k in TASK_EXTRA} == TASK_EXTRA
    assert line["child_pid"] == os.getpid() == line["pid"]
    assert line["message"] == "Task t.add[id-1] succeeded in 0.0021s: 4"
    plain = json.loads(logs.JsonFormatter().format(record("hello", ())))
    assert "task_id" not in plain and "child_pid" not in plain  # not every line is a task's


def test_text_lines_are_celerys():
    text = logs._formatter("text").format(record(**TASK_EXTRA))
    assert text.endswith("] Task t.add[id-1] succeeded in 0.0021s: 4") and " INFO/" in text


@pytest.mark.parametrize(("level", "prefix"), [(logging.DEBUG, "<7>"), (logging.INFO, "<6>"), (logging.WARNING, "<4>"),
                                               (logging.ERROR, "<3>"), (logging.CRITICAL, "<2>"), (45, "<2>"), (1, "<7>")])
def test_every_line_of_a_record_gets_the_journal_priority(level, prefix):
    text = logs.JournalFormatter(logs._formatter("text")).format(record("boom\nTraceback\n  line", (), level))
    assert all(line.startswith(prefix) for line in text.split("\n")) and len(text.split("\n")) == 3


def test_the_journal_is_detected_only_on_the_stream_systemd_gave(tmp_path):
    path = tmp_path / "stream"
    with open(path, "w") as stream, open(tmp_path / "other", "w") as other:
        st_ = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st_.st_dev}:{st_.st_ino}"}
        assert logs.on_journal(stream, env)
        assert not logs.on_journal(other, env)  # --logfile, a shell redirect: no prefix
        for bad in ("", "x:y", f"{st_.st_dev}", f"{st_.st_dev}:{st_.st_ino}:1", "-1:-2", "\x00:1"):
            assert not logs.on_journal(stream, {"JOURNAL_STREAM": bad})
        assert not logs.on_journal(io.StringIO(), env)  # no fileno


def test_install_prefixes_stderr_only_on_the_journal(tmp_path, monkeypatch):
    path = tmp_path / "err"
    stream = open(path, "w")
    st_ = os.fstat(stream.fileno())
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st_.st_dev}:{st_.st_ino}")
    opts = SimpleNamespace(logfile=None, log_format="text", log_level="info", node="n", owner="n@h")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup(opts)
        logging.getLogger("qdeploy.test").error("disk full\nsecond line")
        logging.getLogger("qdeploy.test").info("fine")
        for handler in root.handlers:
            handler.flush()
        lines = path.read_text().splitlines()
        assert lines[0].startswith("<3>[") and lines[1] == "<3>second line" and lines[2].startswith("<6>[")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        stream.close()


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, rec):
        self.records.append(rec)


@pytest.fixture
def captured():
    handler = Capture()
    logger = logging.getLogger("qdeploy.redirected")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)


def test_the_proxy_logs_each_complete_line_at_once(captured):
    proxy = logs.LoggingProxy("stdout", sys.__stdout__)
    print("hello", "world", file=proxy)
    assert [r.getMessage() for r in captured.records] == ["hello world"]
    assert captured.records[0].levelno == logging.WARNING  # Celery's redirect level
    proxy.write("part")
    assert len(captured.records) == 1  # no newline yet
    proxy.write("ial\r\nnext\n\n")
    assert [r.getMessage() for r in captured.records][1:] == ["partial", "next"]  # empty lines dropped
    proxy.write("no newline")
    proxy.flush()  # print(..., flush=True)
    proxy.close()  # a task's sys.stdout.close(): nothing breaks
    print("after close", file=proxy)
    assert [r.getMessage() for r in captured.records][-2:] == ["no newline", "after close"]
    with pytest.raises(TypeError):
        proxy.write(b"bytes")
    assert proxy.fileno() == sys.__stdout__.fileno() and not proxy.isatty()


def test_the_proxy_cuts_a_huge_line_and_keeps_threads_apart(captured):
    proxy = logs.LoggingProxy("stdout", sys.__stdout__)
    proxy.write("x" * (logs.MAX_PARTIAL_LINE + 10))
    assert len(captured.records) == 1 and len(captured.records[0].getMessage()) == logs.MAX_PARTIAL_LINE + 10
    proxy.write("main-")
    thread = threading.Thread(target=lambda: proxy.write("thread\n"))
    thread.start()
    thread.join()
    proxy.write("line\n")
    assert [r.getMessage() for r in captured.records][1:] == ["thread", "main-line"]


def test_a_handler_writing_to_the_proxy_does_not_recurse():
    proxy = logs.LoggingProxy("stderr", sys.__stderr__)

    class Loop(logging.Handler):
        def emit(self, rec):
            proxy.write(f"echo {rec.getMessage()}\n")  # what handleError would do with sys.stderr = proxy

    logger = logging.getLogger("qdeploy.redirected")
    handler = Loop()
    logger.addHandler(handler)
    try:
        proxy.write("once\n")  # returns instead of recursing forever
    finally:
        logger.removeHandler(handler)


def test_redirect_and_restore(monkeypatch, captured):
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    monkeypatch.setattr(logs, "_proxies", {})
    logs.redirect_stdio()
    assert isinstance(sys.stdout, logs.LoggingProxy) and isinstance(sys.stderr, logs.LoggingProxy)
    proxy = sys.stdout
    sys.stdout = io.StringIO()  # a task replaced it
    logs.restore_redirect()
    assert sys.stdout is proxy
    print("back")
    assert captured.records[-1].getMessage() == "back"


# -- the events pipe, richer ---------------------------------------------------------------------------
def child() -> Child:
    return Child(pid=1, slot=1, cids=["c1"], events=None, control=None)


def test_start_and_end_lines_carry_name_queue_wait_outcome_runtime():
    c = child()
    assert c.on_event("U") is None
    assert c.on_event("S id-1 0 c1 images 0.250000 proj.resize") is None  # task names have no spaces
    task = c.last_started
    assert (task.name, task.queue, task.wait) == ("proj.resize", "images", 0.25) and c.state is State.BUSY
    assert c.on_event("D id-1 failed 1.5 ValueError: bad\tpixel") is None
    done = c.last_done
    assert (done.name, done.outcome, done.runtime, done.detail) == ("proj.resize", "failed", 1.5, "ValueError: bad?pixel")
    assert c.state is State.IDLE and c.tasks_done == 1
    assert c.on_event("S id-2 0 c1") is None and c.on_event("D id-2") is None  # a child from before a reload
    assert c.last_done.outcome == "" and c.tasks_done == 2


@pytest.mark.parametrize("line", [
    "S id-1 0 c1 images nan t", "S id-1 0 c1 images -1 t", "S id-1 0 c1 images inf t", "S id-1 0 c1 im ages 0 t",
    "S id-1 0 c1 images 0", "S id-1 0 c1 images 0 ", "S id-1 0 c1 " + "q" * 300 + " 0 t", "S id-1 0 c1 a\x00b 0 t",
    "D id-1 done 0.1", "D id-1 succeeded", "D id-1 succeeded nan", "D id-1 succeeded -0.5", "D id-1 succeeded 1e400",
    "D id-1 x", "D id\x01 succeeded 0.1",
])
def test_malformed_rich_lines_are_refused(line):
    c = child()
    c.on_event("U")
    why = c.on_event(line)
    assert why and "\n" not in why and c.tasks_done == 0 and not c.tasks


@settings(max_examples=300)
@given(st.lists(st.sampled_from(["S", "D", "id-1", "c1", "0", "0.5", "q", "succeeded", "failed", "nan", "x y", "é"]),
                max_size=8).map(" ".join))
def test_no_rich_line_makes_the_bookkeeping_raise(line):
    c = child()
    c.on_event("U")
    why = c.on_event(line)
    assert why is None or isinstance(why, str)
    for task in c.tasks.values():
        assert task.wait is None or math.isfinite(task.wait)


@pytest.mark.parametrize(("killed", "code", "retiring", "boot", "reason"), [
    ("time limit exceeded (2s)", -9, "", "", "time_limit"),
    ("memory 900 KiB > hard limit 500 KiB", -9, "", "", "hard_memory"),
    ("revoked", -9, "", "", "killed"),
    ("graceful timeout reached", -9, "", "", "killed"),
    ("cold shutdown", -9, "", "", "killed"),
    ("", -9, "", "", "crash"),  # the OOM killer, not us
    ("", 137, "", "", "crash"),
    ("", 3, "", "cannot start consumer: x", "crash"),
    ("", 0, "max_tasks_per_child 5 reached", "", "max_tasks"),
    ("", 0, "memory 900 KiB > max_memory_per_child 500 KiB", "", "max_memory"),
    ("", 0, "asked by the master", "", None),
    ("", 0, "", "", None),
])
def test_every_child_exit_has_its_reason(killed, code, retiring, boot, reason):
    c = child()
    c.killed_for, c.retiring_reason, c.boot_error = killed, retiring, boot
    got, detail = exit_reason(c, code)
    assert got == reason and detail
    assert got is None or got in metrics.EXIT_REASONS


# -- the master's counters -------------------------------------------------------------------------------
def test_stats_count_histograms_and_survive_a_dump():
    stats = metrics.NodeStats()
    stats.started("default", 0.004)
    stats.started("default", 7.0)
    stats.finished("t.add", "default", "succeeded", 0.002)
    stats.finished("t.add", "default", "succeeded", 12.0)
    stats.finished("t.add", "default", "failed", None)
    stats.child_exit("max_tasks")
    stats.child_exit("no-such-reason")  # ignored, never a new label
    stats.reconnects = 2
    again = metrics.NodeStats.load(stats.dump())
    assert again.tasks == {("t.add", "default", "succeeded"): 2, ("t.add", "default", "failed"): 1}
    hist = again.durations[("t.add", "default")]
    assert hist.count == 2 and hist.total == pytest.approx(12.002)
    assert dict(hist.cumulative())["0.005"] == 1 and dict(hist.cumulative())["+Inf"] == 2
    assert again.waits["default"].count == 2 and again.exits["max_tasks"] == 1 and again.reconnects == 2


@pytest.mark.parametrize("raw", ["", "null", "[]", '{"tasks": 1}', '{"tasks": [["a"]]}', "\xff",
                                 '{"tasks": [], "durations": [["t", "q", [1, 2], 0, 0]], "waits": [], "exits": {}, '
                                 '"reconnects": 0}'])
def test_unreadable_stats_start_from_zero(raw):
    stats = metrics.NodeStats.load(raw)
    assert stats.tasks == {} and stats.exits == dict.fromkeys(metrics.EXIT_REASONS, 0)


def test_task_names_are_capped(monkeypatch):
    monkeypatch.setattr(metrics, "MAX_TASK_NAMES", 3)
    stats = metrics.NodeStats()
    for i in range(10):
        stats.finished(f"t{i}", "q", "succeeded", 0.1)
    assert {k[0] for k in stats.tasks} == {"t0", "t1", "t2", "other"} and stats.tasks[("other", "q", "succeeded")] == 7


def test_the_collector_renders_every_metric_the_issue_names():
    stats = metrics.NodeStats()
    stats.finished("t.add", "default", "succeeded", 0.01)
    stats.started("default", 0.5)
    broker = SimpleNamespace(keys=None)
    master = SimpleNamespace(stats=stats, children={1: SimpleNamespace(tasks={"a": 1})}, target=2, broker=broker,
                             opts=SimpleNamespace(queues=["default"], node="w1"))
    collector = metrics.WorkerCollector(master)
    collector.depths.read = lambda: [{"queue": "default", "ready": 3, "in_flight": 1, "scheduled": 0, "dead": 2}]
    body, ctype = metrics.exposition(metrics.registry_for(collector))
    text = body.decode()
    for name in ('qdeploy_tasks_total{outcome="succeeded",queue="default",task="t.add"} 1.0',
                 'qdeploy_task_duration_seconds_count{queue="default",task="t.add"} 1.0',
                 'qdeploy_task_queue_wait_seconds_bucket{le="0.5",queue="default"} 1.0',
                 "qdeploy_tasks_running 1.0", "qdeploy_pool_size 2.0", 'qdeploy_child_exits_total{reason="crash"} 0.0',
                 "qdeploy_broker_reconnects_total 0.0", 'qdeploy_queue_messages{queue="default",state="dead"} 2.0',
                 "qdeploy_build_info{"):
        assert name in text, name
    assert "text/plain" in ctype


def load(text, tmp_path, **flags):
    path = tmp_path / "qdeploy.toml"
    path.write_text(text)
    return config_mod.load(str(path), flags)


def test_each_node_gets_its_own_port(isolated, tmp_path):
    cfg = load('[worker]\nnodes = 3\nmetrics_port = 9800\n[node.3]\nmetrics_port = 9900\n', tmp_path)
    assert node_ports(cfg) == {"1": 9800, "2": 9801, "3": 9900}
    assert node_ports(load("[worker]\nnodes = 2\n", tmp_path)) == {"1": 0, "2": 0}
    clash = load('[worker]\nnodes = 3\nmetrics_port = 9800\n[node.3]\nmetrics_port = 9801\n', tmp_path)
    with pytest.raises(ValueError, match="nodes 2 and 3 would share metrics port 9801"):
        node_ports(clash)
    with pytest.raises(ValueError, match="> 65535"):
        node_ports(load('[worker]\nnodes = 3\nmetrics_port = 65535\n', tmp_path))
    with pytest.raises(ValueError, match="share"):
        node_ports(load('[worker]\nnodes = 2\nmetrics_port = 9800\n[beat]\nmetrics_port = 9801\n', tmp_path))


@pytest.mark.parametrize(("text", "error"), [
    ('metrics_bind = "0.0.0.0; rm -rf /"', "metrics_bind"), ('metrics_bind = "localhost"', "IP address"),
    ("[worker]\nmetrics_port = 70000", "metrics_port"), ("[worker]\nmetrics_port = -1", "metrics_port"),
    ('[worker]\nmetrics_port = "http"', "metrics_port"), ("[worker]\nwatchdog = 2", "at least 5s"),
])
def test_bad_metrics_and_watchdog_settings_are_refused(isolated, tmp_path, text, error):
    with pytest.raises(config_mod.ConfigError, match=error):
        load(text, tmp_path)


# -- health ---------------------------------------------------------------------------------------------
def fake_master(children=(), failing_since=0.0, stuck_after=5.0):
    beacons = Beacons()
    return SimpleNamespace(opts=SimpleNamespace(health_stuck_after=stuck_after, health_reconnect_limit=60.0),
                           children={c.pid: c for c in children}, beat_failing_since=failing_since, beacons=beacons)


def up_child(pid, beacon=1):
    c = Child(pid=pid, slot=1, cids=["c1"], events=None, control=None, beacon=beacon)
    c.on_event("U")
    return c


def test_an_idle_child_that_polls_is_healthy_one_that_stopped_polling_is_stuck():
    c = up_child(os.getpid())
    master = fake_master([c])
    now = time.monotonic()
    master.beacons.mark(1, now - 1)
    c.idle_since = now - 100
    assert health.verdict(master, now) == health.OK
    master.beacons.mark(1, now - 9)
    assert "has not polled Redis for 9s" in health.verdict(master, now)
    master.opts.health_stuck_after = 0  # off
    assert health.verdict(master, now) == health.OK


def test_a_task_far_past_its_limit_and_a_broker_down_too_long_are_unhealthy():
    c = up_child(os.getpid())
    c.on_event("S id-1 1 c1 q 0 t")
    now = time.monotonic()
    assert health.verdict(fake_master([c]), now) == health.OK  # busy, within its limit: fine
    assert "past its time limit" in health.verdict(fake_master([c]), now + 10)
    assert "broker unreachable for 61s" in health.verdict(fake_master([], failing_since=now - 61), now)
    assert health.verdict(fake_master([], failing_since=now - 59), now) == health.OK


def test_a_sigstopped_child_is_unhealthy_whatever_it_does():
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    try:
        c = up_child(pid)
        c.on_event("S id-1 0 c1 q 0 t")  # busy without a limit: only its state tells
        master = fake_master([c])
        assert health.verdict(master) == health.OK
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while health.proc_state(pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "is stopped" in health.verdict(master)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert health.proc_state(pid) == ""


class FakeHotPath:
    """What `health.check` asks of a broker's hot path: one GET."""

    def __init__(self, value=None, error=None):
        self.value, self.error = value, error

    def command(self, name, key):
        assert name == "GET"
        if self.error:
            raise self.error
        return self.value


def broker_with(value=None, error=None):
    from qdeploy.core.keys import Keys

    return SimpleNamespace(fast=FakeHotPath(value, error), keys=Keys("ns"))


def test_the_cli_check_reads_the_heartbeat():
    from qdeploy.core.connection import RedisError

    now = time.time()
    beat = {"time": now - 1, "pid": os.getpid(), "health": "ok"}
    assert health.check(broker_with(json.dumps(beat)), "w1@elsewhere", now=now) == health.OK
    assert health.check(broker_with(None), "w1@h", now=now).startswith("master gone")
    assert health.check(broker_with(error=RedisError("refused")), "w1@h").startswith("broker unreachable")
    assert health.check(broker_with(json.dumps({**beat, "time": now - 30})), "w1@h", now=now).startswith("heartbeat stale")
    assert "child 2 stuck" in health.check(broker_with(json.dumps({**beat, "health": "child 2 stuck\n"})), "w@h", now=now)
    for junk in ("[]", "nan", "{", '{"time": true}', '{"time": "now"}', json.dumps({"time": now, "health": 5})):
        assert health.check(broker_with(junk), "w1@h", now=now) != health.OK, junk
    here = f"w1@{socket.gethostname()}"
    gone = {**beat, "pid": 2 ** 22 + 12345}
    assert health.check(broker_with(json.dumps(gone)), here, now=now).startswith("master gone: pid")


# -- events ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [b"", b"nope", b"[]", b'{"type": "task-evil"}', b'{"type": "task-started", "hostname": 5}',
                                 b'{"type": "task-started", "timestamp": "x"}', b"\xff\xfe", b'{"type": "task-started", "x": "'
                                 + b"y" * 20000 + b'"}'])
def test_events_from_the_channel_are_not_trusted(raw):
    assert events.parse(raw) is None


def test_an_event_is_dumped_on_one_printable_line():
    event = events.parse(json.dumps({"type": "task-failed", "hostname": "w1@h", "timestamp": 0, "uuid": "id-1",
                                     "exception": "ValueError: a\nb\x1b[31m"}))
    line = events.dump_line(event)
    assert "w1@h: task-failed uuid=id-1 exception=ValueError: a?b?[31m" in line and "\n" not in line


def test_task_sent_is_built_from_what_the_publish_signal_carries():
    sent = events.sent_event("t.add", {"id": "id-1", "task": "t.add", "queue": "q", "args": [1, 2]}, None, None)
    assert (sent["uuid"], sent["name"], sent["queue"], sent["type"]) == ("id-1", "t.add", "q", "task-sent")
    assert "args" not in sent  # no arguments in events
    by_headers = events.sent_event(SimpleNamespace(name="t.x"), "{}", {"id": "id-2"}, "images")
    assert (by_headers["uuid"], by_headers["name"], by_headers["queue"]) == ("id-2", "t.x", "images")
    assert events.sent_event("t", None, None, None) is None
    assert events.sent_event("t", "not json", [1], "q") is None


def test_the_publisher_builds_nothing_when_off_and_batches_when_on():
    published, batches = [], []

    def pipeline(commands, raise_on_error=True):
        assert raise_on_error is False  # a refused event must not stop the master's loop
        batches.append(len(commands))
        published.extend((channel, json.loads(event)) for name, channel, event in commands if name == "PUBLISH")
        return [1] * len(commands)

    from qdeploy.core.keys import Keys

    broker = SimpleNamespace(keys=Keys("ns"), fast=SimpleNamespace(pipeline=pipeline))
    pub = events.EventPublisher(broker, "w1@h")
    pub.emit("task-started", uuid="x")
    assert pub.pending == []
    pub.enabled = True
    pub.emit("task-started", uuid="x")
    pub.emit("task-succeeded", uuid="x", runtime=0.1)
    pub.flush()
    assert [e["type"] for _, e in published] == ["task-started", "task-succeeded"] and published[0][0] == "ns:ev"
    assert published[0][1]["hostname"] == "w1@h" and pub.pending == [] and batches == [2]  # one round trip


def test_the_top_view_shows_workers_and_tasks():
    view = top.View()
    now = time.time()
    for event in [{"type": "worker-online", "hostname": "w1@h", "timestamp": now, "pool": 2},
                  {"type": "task-started", "hostname": "w1@h", "timestamp": now, "uuid": "id-1", "name": "t.add"},
                  {"type": "task-succeeded", "hostname": "w1@h", "timestamp": now, "uuid": "id-1", "runtime": 0.25},
                  {"type": "task-failed", "hostname": "w1@h", "timestamp": now, "uuid": "id-2", "exception": "KeyError\x07"},
                  {"type": "task-started", "hostname": "w1@h", "uuid": 5}, {"type": "worker-heartbeat"}]:
        view.feed(event)
    lines = view.lines(120, 30, now)
    text = "\n".join(lines)
    assert "1 worker(s) online" in lines[0] and "succeeded 1" in lines[0]
    assert "id-1" in text and "SUCCEEDED" in text and "0.2500s" in text and "KeyError?" in text
    assert all(len(line) < 120 for line in lines) and len(view.lines(40, 5, now)) == 5
    assert "offline" in "\n".join(view.lines(120, 30, now + 60))


# -- the in-selector HTTP server ----------------------------------------------------------------------------
@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(httpd, "CONN_TIMEOUT", 0.5)
    selector = selectors.DefaultSelector()
    srv = httpd.HttpServer(selector, httpd.listen("127.0.0.1", 0), {
        "/metrics": lambda: (200, "text/plain", b"m 1\n"), "/boom": lambda: 1 / 0})
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            for key, mask in selector.select(0.05):
                key.data(mask)
            srv.tick()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield srv
    stop.set()
    thread.join()
    srv.close()


def ask(srv, raw: bytes) -> bytes:
    with socket.create_connection(srv.address, timeout=5) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_http_answers_get_head_and_refuses_the_rest(server):
    ok = ask(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 OK") and ok.endswith(b"\r\n\r\nm 1\n") and b"Content-Length: 4" in ok
    assert ask(server, b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\n")
    assert ask(server, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert ask(server, b"GET /../etc/passwd HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert ask(server, b"\x00\xff garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert ask(server, b"GET /boom HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 500")
    assert ask(server, b"GET /" + b"a" * (httpd.MAX_REQUEST + 3)).startswith(b"HTTP/1.1 431")  # no end of headers


def test_silent_clients_are_dropped_and_connections_capped(server, monkeypatch):
    monkeypatch.setattr(httpd, "MAX_CONNS", 2)
    idle = [socket.create_connection(server.address, timeout=5) for _ in range(3)]
    try:
        assert idle[2].recv(10) == b""  # over the cap: closed at once
        assert idle[0].recv(10) == b""  # silent: closed after CONN_TIMEOUT
        assert ask(server, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")
    finally:
        for sock in idle:
            sock.close()


def test_a_port_in_use_is_an_oserror():
    with httpd.listen("127.0.0.1", 0) as taken, pytest.raises(OSError):
        httpd.listen("127.0.0.1", taken.getsockname()[1])


def test_a_spare_promoted_after_a_long_wait_is_not_taken_for_stuck():
    from qdeploy.worker.master import Master

    c = Child(pid=os.getpid(), slot=1, cids=["c1"], events=None, control=None, beacon=1, spare=True)
    c.on_event("U")
    master = fake_master([c])
    long_ago = time.monotonic() - 600
    master.beacons.mark(1, long_ago)  # it waited on its control pipe: no polling
    c.idle_since = long_ago
    assert health.verdict(master) == health.OK  # waiting spares are not judged
    Master.promote(SimpleNamespace(), c)
    assert c.state is State.IDLE and health.verdict(master) == health.OK  # judged from its promotion on


def test_send_sent_events_publishes_on_after_task_publish_until_stopped():
    from qdeploy.core import signals
    from qdeploy.core.keys import Keys

    published = []
    def command(name, channel, event):
        assert name == "PUBLISH"
        published.append((channel, json.loads(event)))

    app = SimpleNamespace(transport=SimpleNamespace(fast=SimpleNamespace(command=command), keys=Keys("ns")))
    events.send_sent_events(app)
    try:
        signals.after_task_publish.send(sender="t.add", body=([1], {}, {}), exchange="", routing_key="q",
                                        headers={"id": "id-9", "task": "t.add"})
        assert [(c, e["type"], e["uuid"], e["queue"]) for c, e in published] == [("ns:ev", "task-sent", "id-9", "q")]
        signals.after_task_publish.send(sender="t.add", headers={"task": "no id"})  # nothing to name: no event
        assert len(published) == 1
    finally:
        events.stop_sent_events(app)
    signals.after_task_publish.send(sender="t.add", headers={"id": "id-10"})
    assert len(published) == 1


def test_a_revoked_line_is_checked_field_by_field():
    c = child()
    assert c.on_event("U") is None
    assert c.on_event("V id-1 images expired proj.resize") is None
    task = c.last_revoked
    assert (task.id, task.queue, task.name, task.outcome, task.detail) == ("id-1", "images", "proj.resize", "revoked", "expired")
    assert c.state is State.IDLE and c.tasks_done == 0, "a message it did not run is no task done"
    for bad in ("V", "V id-2", "V id-2 images", "V id-2 images revoked", "V id-2 images killed proj.x",
                "V \xff images revoked proj.x", "V id-2 im/ages revoked proj.x", "V id-2 images revoked "):
        assert c.on_event(bad) is not None, bad
        assert c.last_revoked is task
