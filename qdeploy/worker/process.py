"""What runs in a forked child: set the child up, run the consumer loop, report to the master.

A child ignores the group-wide TERM/INT that supervisord (`stopasgroup`) and systemd send: only
its master tells it to stop, by closing the control pipe, and it then finishes the task in hand.
It dies with the master (PR_SET_PDEATHSIG), so there are never orphans.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import random
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from qdeploy.core import results
from qdeploy.core.connection import fill_stdio
from qdeploy.core.message import TASK_ID
from qdeploy.defaults import EX_UNAVAILABLE
from qdeploy.ops import tracing
from qdeploy.ops.history import ARGS_MAX
from qdeploy.service import logs
from qdeploy.service.daemon import rss_kib
from qdeploy.worker.lifecycle import process_init, process_shutdown
from qdeploy.worker.options import WorkerOptions

log = logging.getLogger("qdeploy.worker")

CHILD_BOOT_ERROR = EX_UNAVAILABLE  # the child could not even start consuming
SPARE_LEAD = 10  # a recycling child asks for its spare successor when this many tasks are left
PR_SET_PDEATHSIG = 1
MAX_LINE = 4000  # an event line stays shorter (the master's MAX_EVENT is 4096, PIPE_BUF too)
_encode_call = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode
CUT_ARGS = 500  # characters of the repr kept of arguments too large for the history (not retryable)


_prctl: Any
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded once, in the master, before forking
except (OSError, AttributeError):  # not Linux: the control pipe's EOF still stops a child
    _prctl = None


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


_setproctitle: Callable[[str], None] | None
try:  # optional (qdeploy[proctitle]). Looked up once, in the master: a failed import costs a
    from setproctitle import setproctitle as _setproctitle  # child ~75 page faults each time
except ImportError:
    _setproctitle = None


def set_title(text: str) -> None:
    if _setproctitle is not None:
        _setproctitle(text)


_stdio: list[tuple[int, int, int]] = []  # (fd, saved copy, (st_dev, st_ino) hash) of fds 0-2


def save_stdio() -> None:
    """In the master, before forking: keep a copy of fds 0-2 (high up, close-on-exec), so each
    child can give a task that closed or replaced them the real ones back (`restore_stdio`)."""
    if _stdio:
        return
    fill_stdio()
    for fd in (0, 1, 2):
        st = os.fstat(fd)
        _stdio.append((fd, fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10), hash((st.st_dev, st.st_ino))))


def restore_stdio() -> None:
    """After each task: fds 0-2 are what the master had (the journal, the log, /dev/null), even
    if the task closed them. A closed fd 1 would otherwise be taken by the next socket, and the
    next task's print() would go to Redis."""
    for fd, saved, identity in _stdio:
        try:
            st = os.fstat(fd)
            if hash((st.st_dev, st.st_ino)) == identity:
                continue
        except OSError:
            pass
        os.dup2(saved, fd)
    logs.restore_redirect()  # print() goes to the log again, also if the task replaced sys.stdout


OUTCOME = {"SUCCESS": "succeeded", "RETRY": "retried"}  # a result state -> the D line's word; else failed


def history_tail(env, with_call: bool, room: int) -> str:
    """The task history's part of an `S` line, after the name (history.FIELDS' last seven, as
    the master stores them): ` retries<TAB>sent<TAB>eta<TAB>parent<TAB>root<TAB>group<TAB>call`
    (sent only with an ETA: the master knows when the task was due). At most `room` characters,
    pure ASCII without newlines: the whole line stays under MAX_LINE, so the master reads it and
    one write() of it is atomic (PIPE_BUF). Cheap when there is nothing to say: it runs for
    every task."""
    if env.parent_id or env.root_id or env.group:
        ids = "\t".join(v if isinstance(v, str) and TASK_ID.fullmatch(v) else ""
                        for v in (env.parent_id, env.root_id, env.group))
    else:
        ids = "\t\t"
    eta = env.eta
    tail = (f" {env.retries}\t{int(env.created * 1e6)}\t{int(eta * 1e6)}\t{ids}\t" if eta  # microseconds
            else f" {env.retries}\t\t\t{ids}\t")
    if len(tail) > room:
        return ""
    return tail + call_text(env, room - len(tail)) if with_call else tail


def call_text(env, room: int = ARGS_MAX) -> str:
    """`[args, kwargs]` as compact ASCII JSON when it fits in ARGS_MAX bytes (and `room`), else
    `~` and the start of it: shown by the dashboard, not retryable."""
    try:
        call = _encode_call([env.args, env.kwargs])
    except (TypeError, ValueError):
        call = "~" + ascii((env.args, env.kwargs))[:CUT_ARGS]
    if len(call) > min(ARGS_MAX, room):
        call = "~" + call.lstrip("~")[:max(0, min(CUT_ARGS, room - 1))]
    return call


class ChildLink:
    """The child's end of the two pipes, the flags its signal handlers record, and the task
    count and soft deadlines shared by its consumer threads."""

    def __init__(self, events: int, control: int, opts: WorkerOptions, slot: int, beacon=None):
        self.events, self.control, self.opts, self.slot = events, control, opts, slot
        self.mark = beacon[0].marker(beacon[1]) if beacon is not None else None  # "still polling", each turn
        self.stop_reason = ""
        self.reopen_logs = False
        jitter = opts.max_tasks_jitter
        limit = opts.max_tasks_per_child
        self.max_tasks = max(1, round(limit * random.uniform(1 - jitter, 1 + jitter))) if limit else None
        # `P` is sent when task number `spare_at` starts (0: as soon as the child consumes)
        self.spare_at = max(0, self.max_tasks - SPARE_LEAD) if self.max_tasks else None
        self.hard = opts.time_limit
        # the S line carries what the task history keeps, and the arguments when the history or
        # the events want them ("failures": an A line before a failure's D instead)
        self.history = opts.history_max > 0 or opts.event_args
        self.all_args = (opts.history_max > 0 and opts.history_args == "all") or opts.event_args
        self.failure_args = opts.history_max > 0 and opts.history_args == "failures" and not opts.event_args
        self.envs: dict[int, object] = {}  # thread id -> the envelope it runs (for its failure's A line)
        self.started = 0  # tasks started, all threads together
        self.running: dict[int, tuple[float, str]] = {}  # thread id -> (soft deadline, task id)
        self.lock = threading.Lock()
        # A task's `D` line waits for the child's next line (the next task's `S`, normally) and
        # goes in the same write: one wake-up of the master per task instead of two. It waits
        # at most until the consumer has nothing to run (`flush`, before it blocks on Redis) and
        # only in a single-threaded child for a task without a hard time limit: the master,
        # which enforces that limit, hears of the end at once.
        self.held = b""
        self._hold = False  # may the running task's D line wait?

    def send(self, line: str) -> None:
        data = (line.replace("\n", " ") + "\n").encode()
        if self.held and len(self.held) + len(data) <= select.PIPE_BUF:
            data, self.held = self.held + data, b""  # one write, atomic as each line's is
        self.flush()  # (a held line too long to share the write goes first, on its own)
        self._write(data)

    def flush(self) -> None:
        """Write a held `D` line now: the consumer is about to wait (or the child to exit)."""
        if self.held:
            held, self.held = self.held, b""
            self._write(held)

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.events, data)  # atomic: < PIPE_BUF
        except OSError:
            pass  # the master is gone: PDEATHSIG will follow

    def wait_for_go(self) -> bool:
        """A spare's wait for its slot: True on the master's `g`, False when asked to stop
        (the control pipe closed) before that."""
        return os.read(self.control, 1) == b"g"

    def should_stop(self) -> bool:
        if self.mark is not None:
            self.mark(time.monotonic())
        if self.reopen_logs:
            self.reopen_logs = False
            logs.reopen()
        if not self.stop_reason and select.select([self.control], [], [], 0)[0]:
            self.stop_reason = "asked by the master"
        if not self.stop_reason and self.max_tasks and self.started >= self.max_tasks:
            self.stop_reason = f"max_tasks_per_child {self.max_tasks} reached"
        return bool(self.stop_reason)

    def hooks(self, cid: str) -> dict:
        def on_task_start(task_id: str, name: str, started: float, limits: dict, env=None) -> None:
            with self.lock:
                self.started += 1
            soft = limits.get("soft") or self.opts.soft_time_limit
            if soft and threading.current_thread() is not threading.main_thread():
                self.running[threading.get_ident()] = (time.monotonic() + soft, task_id)
            queue, wait = "-", 0.0
            if env is not None:
                queue = env.queue
                wait = max(0.0, started - max(env.created or started, env.eta or 0.0))
            hard = limits.get('hard') or self.hard or 0
            self._hold = not hard and self.opts.threads == 1
            line = f"S {task_id} {hard} {cid} {queue} {wait:.6f} {name}"
            if self.history and env is not None:
                line += history_tail(env, self.all_args, MAX_LINE - len(line))
                if self.failure_args:
                    self.envs[threading.get_ident()] = env
            self.send(line)
            if self.started == self.spare_at:
                self.send("P")
            if self.max_tasks and self.started == self.max_tasks:  # the last one: its successor
                self.send(f"R max_tasks_per_child {self.max_tasks} reached")  # goes once it is done
            if self.opts.threads == 1:
                set_title(f"qdeploy worker {self.opts.node} child {self.slot}: {name}[{task_id}]")

        def on_task_done(task_id: str, name: str, state: str, runtime: float, error=None) -> None:
            self.running.pop(threading.get_ident(), None)
            restore_stdio()
            outcome = OUTCOME.get(state, "failed")
            if self.failure_args:
                env = self.envs.pop(threading.get_ident(), None)
                if env is not None and outcome != "succeeded":  # its arguments, for the history (retry)
                    self.send(f"A {task_id} {call_text(env, MAX_LINE - len(task_id) - 3)}")
            detail = ""
            if error is not None and outcome != "succeeded":
                detail = f" {type(error).__name__}: {results.exc_text(error)}"[:300]
            line = f"D {task_id} {outcome} {max(0.0, runtime):.6f}{detail}"
            if self._hold:
                self.flush()  # never drop a held line (the S in between always wrote it)
                self.held = (line.replace("\n", " ") + "\n").encode()
            else:
                self.send(line)
            if self.opts.threads == 1:
                set_title(f"qdeploy worker {self.opts.node} child {self.slot}: idle")
            limit = self.opts.max_memory_per_child
            if limit and not self.stop_reason and (rss := rss_kib()) > limit:
                self.stop_reason = f"memory {rss} KiB > max_memory_per_child {limit} KiB"

        def on_task_revoked(task_id: str, name: str, queue: str, reason: str) -> None:
            self.send(f"V {task_id} {queue} {reason} {name}")

        return {"on_task_start": on_task_start, "on_task_done": on_task_done, "on_task_revoked": on_task_revoked,
                "on_idle": self.flush}

    def enforce_soft_limits(self) -> None:
        """Raise SoftTimeLimitExceeded in threads past their soft deadline (SIGALRM only reaches
        the main thread). Takes effect at the thread's next Python instruction."""
        from qdeploy.core.app import SoftTimeLimitExceeded

        now = time.monotonic()
        for ident, (deadline, task_id) in list(self.running.items()):
            if now >= deadline and self.running.pop(ident, None) is not None:
                log.warning("task %s: soft time limit exceeded", task_id)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(SoftTimeLimitExceeded))


def child_main(app, opts: WorkerOptions, slot: int, cids: list[str], events: int, control: int,
               broker=None, spare: bool = False, beacon=None) -> NoReturn:
    """Entry point in the forked child; never returns. `broker`: the master's unconnected
    consumer-side Broker, so a child only opens its own connection. A `spare` boots, connects,
    then waits for the master's go before it takes a task. `beacon`: (Beacons, slot)."""
    code = 0
    link = ChildLink(events, control, opts, slot, beacon)
    try:
        set_pdeathsig()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGUSR2, lambda *_: setattr(link, "reopen_logs", True))
        try:
            logs.child_started(opts, slot)
        except OSError as exc:  # e.g. --logfile=/dir/%n%I.log in a directory it cannot write
            link.send(f"E cannot open its log file {exc.filename or ''}: {exc.strerror or exc}")
            os._exit(CHILD_BOOT_ERROR)
        logs.redirect_stdio()  # a task's print() reaches the log at once, line by line
        if opts.task_events:  # what its tasks send is a task-sent event
            from qdeploy.ops.events import send_sent_events

            send_sent_events(app)
        set_title(f"qdeploy worker {opts.node} child {slot}: {'spare' if spare else 'idle'}")
        code = _consume(app, opts, cids, link, broker, spare)
    except BaseException as exc:
        link.send(f"E crashed: {type(exc).__name__}: {exc}")  # the master logs it: our log may be gone
        log.exception("child %s crashed: %s", cids[0], exc)
        code = 1
    finally:
        link.flush()
        process_shutdown(code)  # issue 19: worker_process_shutdown, before every exit (recycling too)
        tracing.flush()  # spans still in a batch processor: a recycled child loses none (os._exit skips atexit)
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()  # type: ignore[union-attr]  # a partial last line of a task's output
            except (OSError, ValueError, AttributeError):
                pass
        logging.shutdown()
    os._exit(code)


def _consume(app, opts: WorkerOptions, cids: list[str], link: ChildLink, broker=None,
             spare: bool = False) -> int:
    """One consumer per thread, each under its own identity; a single-threaded child runs its
    consumer in the main thread (where SIGALRM enforces the time limits)."""
    from qdeploy.worker.child import Consumer

    if failed := process_init():  # issue 19: before it consumes (spares too); only this stops a child
        link.send(f"E worker_process_init failed: {failed}")
        return CHILD_BOOT_ERROR
    try:
        consumers = [
            Consumer(app, opts.queues, cid, owner=opts.owner, heartbeat=False, fresh=True, broker=broker,
                     default_limits=(opts.soft_time_limit or None, opts.time_limit or None), **link.hooks(cid))
            for cid in cids
        ]
    except Exception as exc:  # noqa: BLE001 - e.g. a bad broker URL: tell the master why
        link.send(f"E cannot start consumer: {exc}")
        return CHILD_BOOT_ERROR
    link.send("U")
    if spare:
        if len(consumers) == 1:  # it consumes in this thread: connect while waiting
            consumers[0].broker.open()
        if not link.wait_for_go():
            return 0
        set_title(f"qdeploy worker {opts.node} child {link.slot}: idle")
    if link.spare_at == 0:
        link.send("P")
    if len(consumers) == 1:
        consumers[0].run(should_stop=link.should_stop)
    else:
        threads = [threading.Thread(target=c.run, kwargs={"should_stop": link.should_stop}, name=c.id, daemon=True)
                   for c in consumers]
        for thread in threads:
            thread.start()
        while alive := [thread for thread in threads if thread.is_alive()]:
            link.enforce_soft_limits()
            alive[0].join(0.05)
    link.send(f"R {link.stop_reason or 'stopped'}")
    return 0
