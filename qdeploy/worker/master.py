"""The master: fork N children that consume, and keep them healthy (gunicorn's arbiter shape).

Signal handlers only record the signal (and wake the loop through `set_wakeup_fd`); the loop
does the work: `reap_children`, `murder_children` (hard time/memory limits), `manage_pool`,
`beat`. Per signal one `handle_<name>` method:

    TERM  warm shutdown: children finish their tasks (up to graceful_timeout), the rest requeued
    INT   like TERM; a second INT or TERM, or QUIT: cold shutdown (kill, requeue, exit)
    HUP   graceful reload: re-exec with fresh code and config; old children finish their tasks
    TTIN/TTOU  grow/shrink the pool by one     USR1  log the state     USR2  reopen log files
"""

from __future__ import annotations

import gc
import json
import logging
import os
import select
import selectors
import shlex
import signal
import sys
import time
from collections import deque
from typing import Any

from qdeploy.core import results, signals
from qdeploy.core.broker import SWEEP_EVERY
from qdeploy.core.connection import RedisError
from qdeploy.defaults import EX_UNAVAILABLE
from qdeploy.ops import health, httpd, metrics
from qdeploy.ops.control import ControlServer
from qdeploy.ops.events import EventPublisher, event_call
from qdeploy.ops.history_writer import HistoryWriter
from qdeploy.ops.metrics import NodeStats
from qdeploy.service.daemon import rss_kib, signal_pid
from qdeploy.service.sdnotify import Notifier
from qdeploy.worker import autoscale as autoscale_mod
from qdeploy.worker.child import prepare
from qdeploy.worker.embedded_beat import BeatChild
from qdeploy.worker.heartbeat import Beacons
from qdeploy.worker.lifecycle import killed_followups
from qdeploy.worker.options import WorkerOptions
from qdeploy.worker.process import CHILD_BOOT_ERROR, child_main, save_stdio, set_title
from qdeploy.worker.state import Child, State, Task, exit_reason

log = logging.getLogger("qdeploy.worker")

WORKER_BOOT_ERROR = EX_UNAVAILABLE  # children keep failing to start: let systemd's restart limits take over
MAX_BOOT_FAILURES = 5
MAX_RESPAWN_DELAY = 30.0  # seconds: the longest back-off between children that keep failing
MAX_IGNORED_EVENTS = 5  # malformed event lines logged per child (the rest only counted)
HEARTBEAT_EVERY = 2.0
ROUTINE_GAP = 0.002  # seconds between two reads of children that only start and end tasks
MEMORY_CHECK_EVERY = 1.0
ADOPT_ENV = "QDEPLOY_REEXEC_STATE"  # what a re-exec'd master inherits (children, pid file fd)
SIGNALS = ("TERM", "INT", "QUIT", "HUP", "TTIN", "TTOU", "USR1", "USR2", "CHLD")
# Any error Redis gives the master (unreachable, or refusing writes at maxmemory) is logged and
# retried on the next turn: a supervisor never dies of its broker.
_REDIS_DOWN = RedisError


class Master:
    def __init__(self, app, opts: WorkerOptions, broker, notifier: Notifier, readiness=None, pidfile=None,
                 lease=None):
        self.app, self.opts, self.broker, self.lease = app, opts, broker, lease
        self.results = app.results_for(broker)
        self.notifier, self.readiness, self.pidfile = notifier, readiness, pidfile
        self.children: dict[int, Child] = {}
        self.target = opts.concurrency
        self.signals: deque[int] = deque()
        self.stopping: str | None = None  # None, "warm" or "cold"
        self.reload_requested = False
        self.ready = False
        self.boot_failures = 0  # children in a row that never came up
        self.failures = 0  # children in a row that exited before finishing a task
        self.respawn_at = 0.0
        self.spawned = 0
        self.tasks_done = 0
        self.started = time.time()
        self.exit_code = 0
        self.selector = selectors.DefaultSelector()
        self.unrequeued: set[str] = set()  # dead children's consumers whose requeue failed (Redis down)
        self._next_beat = self._next_memory_check = self._next_beat_complaint = 0.0
        self.beat_failing_since = 0.0  # monotonic time the heartbeat started failing, or 0
        self.stats = NodeStats()  # what /metrics and `inspect stats` count (kept across HUP)
        self.beacons = Beacons()  # each child's "still polling" time, in shared memory
        self.health = health.OK
        self.events = EventPublisher(broker, opts.owner, enabled=opts.task_events)
        self.terminated: dict[str, None] = {}  # ids killed by `revoke --terminate` (task-revoked already sent)
        self.history = HistoryWriter(broker, opts.owner, opts.history_max, opts.history_args)  # ops/history
        self.httpd: Any = None  # /metrics and /healthz (ops/httpd.HttpServer), when metrics_port is set
        # --autoscale (worker/autoscale.py) and -B (worker/embedded_beat.py)
        self.autoscaler = (autoscale_mod.Autoscaler(*opts.autoscale, autoscale_mod.keepalive_from_env())
                           if opts.autoscale else None)
        self._next_scale = 0.0
        self.beat_child = BeatChild(opts, app) if opts.embed_beat else None
        self._beat_due: float | None = None
        self._last_turn = 0.0  # when the loop last read its children's lines (monotonic)
        self._routine = False  # ...and they were only task starts and ends
        prepare(app)

    # -- start and the loop ------------------------------------------------------------------
    def run(self) -> int:
        save_stdio()  # what each child gives back to a task that closed its stdio
        self.init_signals()
        self.control = ControlServer(self)  # its pub/sub socket joins the selector
        set_title(f"{self.opts.title()}: {shlex.join(sys.argv)}")  # like Celery: the options stay visible
        signals.worker_init.send(sender=self)
        self.adopt_children()
        self.requeue_previous_incarnation()
        self.serve_metrics()
        log.info("worker %s starting: %d children, queues %s", self.opts.owner, self.target, ",".join(self.opts.queues))
        self.events.worker("worker-online", self)
        while not self.finished():
            self.handle_signals()
            self.reap_children()
            self.murder_children()
            self.manage_pool()
            self.supervise_beat()
            self.beat()
            if self.reload_requested and not self.stopping:
                self.reexec()
            if not self.finished():
                self.selector_wait()
        self.halt()
        return self.exit_code

    def finished(self) -> bool:
        return self.stopping is not None and not self.children and (self.beat_child is None or self.beat_child.done)

    def init_signals(self) -> None:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wakeup = read_end
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        self.selector.register(read_end, selectors.EVENT_READ, None)
        for name in SIGNALS:
            signal.signal(getattr(signal, f"SIG{name}"), self._record)
        # reexec() blocked them across execve (the mask survives it): what arrived meanwhile is
        # still pending and is delivered to _record now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _signal_set())

    def _record(self, signum, frame) -> None:
        self.signals.append(signum)  # only record: the loop does the work

    def selector_wait(self) -> None:
        self.control.tick()  # reconnects the control channel after a Redis outage
        if self.httpd is not None:
            self.httpd.tick()
        self.events.flush()  # this turn's events, in one round trip
        self.history.flush()  # the task history: one round trip per ~200 ms batch
        timeout = min(HEARTBEAT_EVERY, self._until_next_deadline(), self.history.due_in())
        ready = self.selector.select(max(0.0, timeout))
        if self._routine and ready and all(isinstance(key.data, Child) for key, _ in ready):
            # Busy children, telling only of task starts and ends: read them at most every
            # ROUTINE_GAP, several lines a turn, instead of running every step of this loop for
            # each line. A signal still ends the wait at once; anything else a child says
            # (retiring, up, a boot error) makes the next turn come without it.
            pause = self._last_turn + ROUTINE_GAP - time.monotonic()
            if pause > 0 and not select.select([self.wakeup], [], [], pause)[0]:
                ready = self.selector.select(0)
        self._last_turn, self._routine = time.monotonic(), True
        for key, mask in ready:
            if key.data is None:
                _drain(key.fd)
            elif key.data is self.control:
                self.control.handle_readable()
            elif isinstance(key.data, Child):
                self.read_events(key.data)
            else:
                key.data(mask)  # the metrics server's sockets

    def serve_metrics(self) -> None:
        """/metrics and /healthz on metrics_port (127.0.0.1 unless metrics_bind). A port that
        cannot be bound is one error line; the node runs on without it."""
        if not self.opts.metrics_port:
            return
        try:
            metrics.require_client()
            sock = httpd.listen(self.opts.metrics_bind, self.opts.metrics_port)
        except (ImportError, OSError) as exc:
            log.error("metrics: not serving on %s:%d: %s", self.opts.metrics_bind, self.opts.metrics_port, exc)
            return
        registry = metrics.registry_for(metrics.WorkerCollector(self))

        def page() -> tuple[int, str, bytes]:
            body, ctype = metrics.exposition(registry)
            return 200, ctype, body

        self.httpd = httpd.HttpServer(self.selector, sock, {
            "/metrics": page,
            "/healthz": lambda: health.http_answer(self),
        })
        log.info("metrics: serving /metrics and /healthz on %s:%d", self.opts.metrics_bind, self.opts.metrics_port)

    def _until_next_deadline(self) -> float:
        # Only deadlines still ahead of something to do: a passed respawn time, or the limits of a
        # child already being killed, would keep the selector's timeout at 0 (a busy loop).
        now = time.monotonic()
        live = [c for c in self.children.values() if not c.killed_for]
        deadlines = [t.deadline for c in live for t in c.tasks.values() if t.deadline]
        deadlines += [c.stop_by for c in live if c.stop_by]
        if self.respawn_at > now:
            deadlines.append(self.respawn_at)
        if self.opts.max_memory_per_child_hard:
            deadlines.append(self._next_memory_check)
        if self.autoscaler is not None and not self.stopping:
            deadlines.append(self._next_scale)
        if self._beat_due is not None:
            deadlines.append(self._beat_due)
        return min((d - now for d in deadlines), default=HEARTBEAT_EVERY)

    # -- signals -----------------------------------------------------------------------------
    def handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            name = signal.Signals(signum).name[3:].lower()
            getattr(self, f"handle_{name}")()

    def handle_term(self) -> None:
        if self.stopping:
            return self.handle_quit()
        log.info("warm shutdown: finishing running tasks (up to %gs)", self.opts.graceful_timeout)
        self.stopping = "warm"
        signals.worker_shutting_down.send(sender=self.opts.owner, sig="SIGTERM", how="Warm", exitcode=self.exit_code)
        self.notifier.stopping()
        for child in self.children.values():
            self.stop_child(child)

    handle_int = handle_term

    def handle_quit(self) -> None:
        log.info("cold shutdown: killing children, requeueing their tasks")
        self.stopping = "cold"
        signals.worker_shutting_down.send(sender=self.opts.owner, sig="SIGQUIT", how="Cold", exitcode=self.exit_code)
        self.notifier.stopping()
        for child in self.children.values():
            self.kill_child(child, "cold shutdown")
        if self.beat_child is not None:
            self.beat_child.stop(time.monotonic(), cold=True)

    def handle_hup(self) -> None:
        blocked = reexec_blocker()
        if blocked:  # checked before anything stops: a new image that cannot start would take the node down
            log.error("reload refused: %s; running on with the code loaded", blocked)
            return
        log.info("reload requested: re-executing with fresh code; running tasks finish in the old children")
        self.reload_requested = True

    def handle_ttin(self) -> None:
        self.target += 1
        log.info("pool grows to %d", self.target)

    def handle_ttou(self) -> None:
        self.target = max(1, self.target - 1)
        log.info("pool shrinks to %d", self.target)

    def handle_usr1(self) -> None:
        log.warning("state: %s", json.dumps(self.state()))

    def handle_usr2(self) -> None:
        from qdeploy.service import logs

        logs.reopen()
        for child in self.children.values():
            signal_pid(child.pid, signal.SIGUSR2)

    def handle_chld(self) -> None:
        pass  # reap_children runs on every turn of the loop

    # -- children ----------------------------------------------------------------------------
    def spawn_child(self, slot: int, spare: bool = False) -> None:
        events_r, events_w = os.pipe2(os.O_CLOEXEC)
        control_r, control_w = os.pipe2(os.O_CLOEXEC)
        self.spawned += 1
        base = f"{self.opts.owner}/{os.getpid()}.{self.spawned}"
        cids = [base] if self.opts.threads == 1 else [f"{base}-t{k}" for k in range(1, self.opts.threads + 1)]
        self.broker.prepare_fork(len(cids))  # each child consumes on its own connections
        beacon = self.beacons.slot_for(self.spawned)
        self.beacons.mark(beacon)
        gc.freeze()  # the master's objects go to a permanent generation: a child's GC leaves them be
        pid = os.fork()
        if pid == 0:
            os.close(events_r)
            os.close(control_w)
            self._close_master_fds()
            child_main(self.app, self.opts, slot, cids, events_w, control_r, self.broker, spare,
                       (self.beacons, beacon))
        gc.unfreeze()  # in the master: its own garbage stays collectable
        os.close(events_w)
        os.close(control_r)
        os.set_blocking(events_r, False)
        child = Child(pid, slot, cids, events_r, control_w, spare=spare, beacon=beacon)
        self.children[pid] = child
        self.selector.register(events_r, selectors.EVENT_READ, child)

    def _close_master_fds(self) -> None:
        self.selector.close()
        os.close(self.wakeup)
        for other in self.children.values():
            for fd in (other.events, other.control):
                if fd is not None:
                    os.close(fd)
        if self.pidfile is not None and self.pidfile.fd is not None:
            os.close(self.pidfile.fd)
            self.pidfile.fd = None
        if self.readiness is not None and self.readiness.fd is not None:
            os.close(self.readiness.fd)
            self.readiness.fd = None

    def read_events(self, child: Child) -> None:
        if child.events is None:
            return
        try:
            data = os.read(child.events, 65536)
        except BlockingIOError:
            return
        if not data:  # the child closed its end: it is exiting
            self._close_events(child)
            return
        for line in child.lines(data):
            before = child.tasks_done
            why = child.on_event(line)
            if why:
                child.ignored += 1
                if child.ignored <= MAX_IGNORED_EVENTS:
                    log.warning("child %d: ignoring %s%s", child.pid, why, "; more from this child "
                                "are only counted" if child.ignored == MAX_IGNORED_EVENTS else "")
                continue
            kind = line[:1]
            if kind not in "SDA":
                self._routine = False
            if child.tasks_done != before:
                self.tasks_done += child.tasks_done - before
                self.failures = 0  # a child that runs tasks: whatever failed before works now
                self.task_finished(child, child.last_done)  # type: ignore[arg-type]
            elif kind == "S":
                self.task_started(child, child.last_started)  # type: ignore[arg-type]
            elif kind == "V":
                self.task_revoked(child, child.last_revoked)  # type: ignore[arg-type]
            elif kind == "U":
                self.boot_failures = 0
            elif kind == "R":
                log.info("child %d retiring: %s", child.pid, child.retiring_reason)

    def task_started(self, child: Child, task: Task) -> None:
        self.history.started(child, task)
        if task.queue:
            self.stats.started(task.queue, task.wait)
        if self.events.enabled:
            fields = {"uuid": task.id, "name": task.name, "queue": task.queue, "pid": child.pid}
            call = event_call(task.extra.rpartition("\t")[2]) if self.opts.event_args else {}
            self.events.emit("task-received", **fields, **call)
            self.events.emit("task-started", **fields)

    def task_finished(self, child: Child, task: Task) -> None:
        if not task.outcome:  # a child from before a reload that did not say how it went
            return
        self.history.finished(child, task)
        self.stats.finished(task.name or "unknown", task.queue or "unknown", task.outcome, task.runtime)
        if self.events.enabled:
            fields: dict = {"uuid": task.id, "name": task.name, "queue": task.queue, "runtime": task.runtime}
            if task.outcome != "succeeded":
                fields["exception"] = task.detail
            self.events.emit(f"task-{task.outcome}", **fields)

    def task_revoked(self, child: Child, task: Task) -> None:
        """A message revoked (or expired) before it ran: its child settled it without running it."""
        self.history.started(child, task)
        self.history.finished(child, task)
        self.stats.finished(task.name, task.queue, "revoked", None)
        if task.id in self.terminated:  # its `revoke --terminate` sent task-revoked already
            del self.terminated[task.id]
            return
        if self.events.enabled:
            self.events.emit("task-revoked", uuid=task.id, name=task.name, queue=task.queue, terminated=False,
                             expired=task.detail == "expired")

    def _close_events(self, child: Child) -> None:
        if child.events is not None:
            self.selector.unregister(child.events)
            os.close(child.events)
            child.events = None

    def stop_child(self, child: Child) -> None:
        """Ask a child to finish its task and leave (close its control pipe); it is killed and
        its task requeued if it is still there after graceful_timeout."""
        if child.control is not None:
            os.close(child.control)
            child.control = None
        if child.state is not State.STOPPING:
            child.transition(State.STOPPING)
        if child.stop_by is None:
            child.stop_by = time.monotonic() + self.opts.graceful_timeout

    def promote(self, child: Child) -> None:
        """Tell a spare to start taking tasks."""
        child.promote()
        child.idle_since = time.monotonic()  # it waited without polling: judge its polling from now
        try:
            os.write(child.control, b"g")  # type: ignore[arg-type]  # None: gone, as below
        except (OSError, TypeError):
            pass  # it is gone: reaped, and its slot refilled, on the next turn

    def kill_child(self, child: Child, why: str) -> None:
        child.killed_for = child.killed_for or why
        signal_pid(child.pid, signal.SIGKILL)

    def reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                if self.beat_child is not None:
                    self.beat_child.reaped(pid, os.waitstatus_to_exitcode(status), time.monotonic())
                continue
            if child.events is not None:
                self.read_events(child)  # the last lines it wrote
                self._close_events(child)
            if child.control is not None:
                os.close(child.control)
            child.transition(State.EXITED)
            self.child_exited(child, os.waitstatus_to_exitcode(status))

    def child_exited(self, child: Child, code: int) -> None:
        clean = code == 0 and not child.killed_for
        reason, detail = exit_reason(child, code)
        if reason is not None:
            self.stats.child_exit(reason)
        for task in child.tasks.values():  # the task over its limit fails; its siblings are requeued
            if task.deadline and task.deadline <= time.monotonic() and child.killed_for.startswith("time limit"):
                self.fail_task(task, "TimeLimitExceeded", child.killed_for, child)
            elif not clean:
                self.history.lost(child, task, f"child {child.pid} exited: {reason} ({detail})", child.killed_for == "revoked")
        if not clean:
            moved = sum(self.requeue(cid) for cid in child.cids)
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            log.warning("child %d exited: %s (%s%s): requeued %d task(s)", child.pid, reason, how,
                        f", {child.killed_for}" if child.killed_for else "", moved)
        else:
            log.info("child %d exited: %s (%s)", child.pid, reason or "stopped", detail)
        if clean or child.killed_for or child.tasks_done:
            return  # stopped, killed by us, or it worked for a while: replaced at once
        # It failed before finishing a single task: at boot, or in its consume loop (a broken
        # queue, a Redis refusing writes...). Back off, so a node never crash-loops.
        why = child.boot_error or (f"killed by signal {-code}" if code < 0 else f"exit code {code}")
        self.failures += 1
        delay = min(0.05 * 2 ** self.failures, MAX_RESPAWN_DELAY)
        self.respawn_at = time.monotonic() + delay
        if child.up and code != CHILD_BOOT_ERROR:
            log.error("child %d failed before finishing a task (%s); %d in a row, next in %.1fs",
                      child.pid, why, self.failures, delay)
            return
        self.boot_failures += 1
        log.error("child failed to start (%s); %d in a row, next try in %.1fs", why, self.boot_failures, delay)
        if self.boot_failures >= MAX_BOOT_FAILURES and not self.stopping:
            self.give_up(f"children keep failing to start: {why}")

    def give_up(self, reason: str) -> None:
        log.critical("%s", reason)
        if self.readiness is not None:
            self.readiness.fail(reason, WORKER_BOOT_ERROR)
        self.exit_code = WORKER_BOOT_ERROR
        self.handle_quit()

    def requeue(self, cid: str) -> int:
        try:
            moved = self.broker.requeue_consumer(cid)
        except _REDIS_DOWN as exc:
            # Our heartbeat lives on, so no other node would ever recover these: beat() retries.
            log.error("cannot requeue tasks of %s now (%s): retrying", cid, exc)
            self.unrequeued.add(cid)
            return 0
        self.unrequeued.discard(cid)
        return moved

    def fail_task(self, task, exc_type: str, reason: str, child: Child | None = None) -> None:
        """A task the master killed is marked FAILURE and acked: never redelivered forever."""
        task_id = task.id
        record = results.record(results.FAILURE, exc_type=exc_type, exc=reason, reason=reason, worker=task.cid,
                                task=task.name or None)  # its name, not '-', in results and dashboards
        self.history.keep_call(task)  # its arguments, for the history's retry: read before the ack drops them
        try:
            self.results.store(task_id, record)
            self.broker.ack(task.cid, task_id, ops=killed_followups(self.app, self.broker, task_id, exc_type, reason,
                                                                    task.queue), queue=task.queue)
        except _REDIS_DOWN as exc:
            log.error("cannot record the failure of task %s (%s)", task_id, exc)
        log.error("task %s killed: %s", task_id, reason)
        task.outcome, task.runtime, task.detail = "failed", time.monotonic() - task.started, f"{exc_type}: {reason}"
        self.history.finished(child, task, killed=reason)
        if task.name:
            self.stats.finished(task.name, task.queue, "failed", task.runtime)
        if self.events.enabled:
            self.events.emit("task-failed", uuid=task_id, name=task.name, queue=task.queue, runtime=task.runtime,
                             exception=task.detail)

    def murder_children(self) -> None:
        """Kill children over their hard time limit, or over the hard memory limit."""
        now = time.monotonic()
        for child in list(self.children.values()):
            for task in child.tasks.values():
                if task.deadline and now >= task.deadline and not child.killed_for:
                    self.kill_child(child, f"time limit exceeded ({task.deadline - task.started:g}s)")
            if child.stop_by and now >= child.stop_by and not child.killed_for:
                self.kill_child(child, "graceful timeout reached")
        hard = self.opts.max_memory_per_child_hard
        if hard and now >= self._next_memory_check:
            self._next_memory_check = now + MEMORY_CHECK_EVERY
            for child in list(self.children.values()):
                rss = rss_kib(child.pid)
                if rss > hard and not child.killed_for:
                    self.kill_child(child, f"memory {rss} KiB > hard limit {hard} KiB")

    def manage_pool(self) -> None:
        """One child serving per slot. A slot whose child retires gets its spare (forked ahead
        when the child said `P`) once the child's last task is done; without a spare, a new
        child is forked, and waits as a spare while that last task still runs."""
        if self.stopping:
            return
        if self.autoscaler is not None:
            self.autoscale()
        own = [c for c in self.children.values() if not c.adopted]
        serving = sorted((c for c in own if c.serving), key=lambda c: c.slot)
        for child in serving[self.target :]:
            self.stop_child(child)
        spares: dict[int, Child] = {}
        for child in own:
            if child.waiting:
                if child.slot > self.target or child.slot in spares:
                    self.stop_child(child)
                else:
                    spares[child.slot] = child
        if time.monotonic() < self.respawn_at:
            return
        used = {c.slot for c in serving[: self.target]}
        finishing = {c.slot for c in own if c.state is State.RETIRING and c.tasks}
        for slot in range(1, self.target + 1):
            if slot in used:
                continue
            if slot in spares:
                if slot not in finishing:
                    self.promote(spares.pop(slot))
                continue
            self.spawn_child(slot, spare=slot in finishing)
            if self.failures:  # one at a time while children fail
                break
        if not self.failures:
            for child in serving[: self.target]:
                if child.wants_spare and child.slot not in spares:
                    self.spawn_child(child.slot, spare=True)
        if not self.ready and sum(c.state is State.IDLE or c.state is State.BUSY for c in self.children.values()) >= self.target:
            self.ready = True
            signals.worker_ready.send(sender=self)
            log.info("worker %s ready: %d children", self.opts.owner, self.target)
            self.notifier.ready(self.status_line())
            if self.readiness is not None:
                self.readiness.ok()

    def autoscale(self) -> None:
        """--autoscale: once a second, size the pool for the tasks running and waiting."""
        now = time.monotonic()
        if now < self._next_scale or self.autoscaler is None:
            return
        self._next_scale = now + autoscale_mod.CHECK_EVERY
        try:
            waiting = autoscale_mod.backlog(self.broker, self.opts.queues)
        except _REDIS_DOWN:
            return  # the heartbeat complains; the pool keeps its size
        running = sum(len(c.tasks) for c in self.children.values() if c.serving)
        size = self.autoscaler.decide(now, self.target, waiting, running, self.opts.threads)
        if size != self.target:
            log.info("autoscale: %d -> %d children (%d tasks waiting, %d running)", self.target, size, waiting, running)
            self.target = size

    def supervise_beat(self) -> None:
        """-B: start, respawn or stop the beat child (worker/embedded_beat.py)."""
        if self.beat_child is not None:
            self._beat_due = self.beat_child.tick(time.monotonic(), bool(self.stopping))

    # -- heartbeat, status ---------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "node": self.opts.node, "owner": self.opts.owner, "pid": os.getpid(), "pool": self.target,
            "tasks_done": self.tasks_done, "started": self.started, "queues": self.opts.queues,
            "child_exits": dict(self.stats.exits), "health": self.health, "events": self.events.enabled,
            "children": [
                {"pid": c.pid, "slot": c.slot, "state": c.state.value, "tasks": sorted(c.tasks),
                 "tasks_done": c.tasks_done, "cids": c.cids}
                for c in sorted(self.children.values(), key=lambda c: c.slot)
            ],
        }

    def status_line(self) -> str:
        busy = sum(c.state is State.BUSY for c in self.children.values())
        spares = sum(c.waiting for c in self.children.values())
        return (f"{len(self.children) - spares} children ({busy} busy{f', {spares} spare' if spares else ''}), "
                f"{self.tasks_done} tasks done")

    def beat(self) -> None:
        now = time.monotonic()
        if now < self._next_beat:
            return
        self._next_beat = now + HEARTBEAT_EVERY
        self.health = health.verdict(self, now)
        info = {k: v for k, v in self.state().items() if k != "children"}
        info["host"] = self.opts.owner.partition("@")[2]
        for cid in list(self.unrequeued):
            if moved := self.requeue(cid):
                log.warning("requeued %d task(s) of %s (after the broker came back)", moved, cid)
        try:
            self.broker.heartbeat(self.opts.owner, self.app.visibility_timeout, info, queues=list(self.opts.queues))
            signals.heartbeat_sent.send(sender=self)
            if self.lease is not None and not self.lease.renew() and not self.stopping:
                self.handle_term()  # another master has this node's name now: leave it to them
            if not self.stopping:
                for cid, moved in self.broker.recover_dead(SWEEP_EVERY).items():
                    log.warning("consumer %s is dead (no heartbeat): requeued %d task(s)", cid, moved)
        except _REDIS_DOWN as exc:
            if not self.beat_failing_since or now >= self._next_beat_complaint:
                log.error("heartbeat failed (%s: %s)%s; retrying every %gs", type(exc).__name__, exc,
                          f" for {now - self.beat_failing_since:.0f}s" if self.beat_failing_since else "",
                          HEARTBEAT_EVERY)
                self._next_beat_complaint = now + 60.0
            self.beat_failing_since = self.beat_failing_since or now
        else:
            if self.beat_failing_since:
                log.info("heartbeat restored after %.0fs", now - self.beat_failing_since)
                self.beat_failing_since = 0.0
                self.stats.reconnects += 1
        if self.health != health.OK:
            log.warning("unhealthy: %s%s", self.health, "; not pinging the systemd watchdog"
                        if self.notifier.watchdog_interval else "")
        self.notifier.status(self.status_line() if self.health == health.OK else f"unhealthy: {self.health}")
        if self.notifier.watchdog_interval and self.health == health.OK:
            self.notifier.watchdog()  # only while healthy: systemd restarts a wedged node
        self.events.worker("worker-heartbeat", self)

    def requeue_previous_incarnation(self) -> None:
        """Consumers registered under our node name but not ours died with a previous master on
        this host: requeue their tasks now instead of after the visibility timeout."""
        mine = {cid for c in self.children.values() for cid in c.cids}
        try:
            for cid, owner in self.broker.consumers().items():
                if owner == self.opts.owner and cid not in mine:
                    moved = self.broker.requeue_consumer(cid)
                    if moved:
                        log.warning("requeued %d task(s) left by %s (a previous run of this node)", moved, cid)
        except _REDIS_DOWN as exc:
            log.warning("cannot look for a previous run's tasks now: %s", exc)

    # -- reload (HUP) and exit -----------------------------------------------------------------
    def reexec(self) -> None:
        """Replace this process image (same pid, so systemd and pid files stay right) with a fresh
        one; the old children finish their current task and are adopted by the new image."""
        self.notifier.reloading()
        self.history.flush(force=True)  # what this image saw; the next one writes the rest
        for child in self.children.values():
            self.stop_child(child)
        for child in self.children.values():
            if child.events is not None:  # the new image reads the old children's last events
                os.set_inheritable(child.events, True)
        state = {
            "children": [{"pid": c.pid, "slot": c.slot, "cids": c.cids, "events": c.events, "tasks_done": c.tasks_done,
                          "tasks": [[t.id, t.cid, t.started, t.deadline, t.name, t.queue] for t in c.tasks.values()]}
                         for c in self.children.values()],
            "pidfile": [str(self.pidfile.path), self.pidfile.keep_across_exec()] if self.pidfile and self.pidfile.fd else None,
            "stats_fd": _to_memfd(self.stats.dump()),  # counters survive the reload
            "beat": self.beat_child.pid if self.beat_child is not None else None,  # -B: adopted, not restarted
        }
        env = dict(os.environ, **{ADOPT_ENV: json.dumps(state)})
        if self.notifier.raw_address:
            env["NOTIFY_SOCKET"] = self.notifier.raw_address
        logging.shutdown()
        signal.set_wakeup_fd(-1)
        # Until the new image installs its handlers, a HUP/TERM/USR1 would kill it and TTIN/TTOU
        # stop it (their default actions): keep them blocked (pending) across the exec.
        signal.pthread_sigmask(signal.SIG_BLOCK, _signal_set())
        os.execve(sys.executable, sys.orig_argv, env)

    def adopt_children(self) -> None:
        raw = os.environ.pop(ADOPT_ENV, None)
        if not raw:
            return
        state = json.loads(raw)
        if isinstance(state.get("stats_fd"), int):
            self.stats = NodeStats.load(_from_memfd(state["stats_fd"]))
        if isinstance(state.get("beat"), int) and self.beat_child is not None:
            self.beat_child.adopt(state["beat"], time.monotonic())
        for item in state["children"]:
            events = item.get("events")
            if isinstance(events, int):
                try:
                    os.set_inheritable(events, False)
                    os.set_blocking(events, False)
                except OSError:
                    events = None
            else:
                events = None
            child = Child(item["pid"], item["slot"], item["cids"], events, None, adopted=True, up=True,
                          tasks_done=int(item.get("tasks_done") or 0))
            for task_id, cid, started, deadline, name, queue in item.get("tasks") or []:
                child.tasks[task_id] = Task(task_id, cid, started, deadline, name, queue)
            self.stop_child(child)
            self.children[child.pid] = child
            if events is not None:
                self.selector.register(events, selectors.EVENT_READ, child)
        log.info("reloaded: %d old children finish their tasks", len(self.children))

    def halt(self) -> None:
        signals.worker_shutdown.send(sender=self)
        self.events.worker("worker-offline", self)
        self.events.flush()
        self.history.flush(force=True)
        if self.httpd is not None:
            self.httpd.close()
        try:
            self.broker.stop_heartbeat(self.opts.owner)
        except _REDIS_DOWN:
            pass
        if self.lease is not None:
            self.lease.release_quietly()
        log.info("worker %s stopped (%s shutdown)", self.opts.owner, self.stopping)


def _signal_set() -> set[int]:
    return {getattr(signal, f"SIG{name}") for name in SIGNALS}


def reexec_blocker() -> str | None:
    """Why a fresh image of this master could not start as the user it runs as (None if it
    can): the interpreter and qdeploy's code must be readable after the privilege drop."""
    import qdeploy

    for path, mode, what in ((sys.executable, os.X_OK, "execute"), (qdeploy.__file__, os.R_OK, "read")):
        if path and not os.access(path, mode):
            return f"this user (uid {os.geteuid()}) cannot {what} {path}"
    return None


def _to_memfd(text: str) -> int:
    """An inheritable in-memory file holding `text`, for the re-exec'd image (no size limit,
    unlike the environment)."""
    fd = os.memfd_create("qdeploy-reexec", 0)
    os.write(fd, text.encode())
    os.set_inheritable(fd, True)
    return fd


def _from_memfd(fd: int) -> bytes:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
