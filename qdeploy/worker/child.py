"""The consumer loop that runs inside ONE process: reserve -> run -> ack (+ result).

The master's children (qdeploy.worker.process) drive it like this:

    consumer = Consumer(app, ["high", "default"], "node1@host#3", owner="node1@host",
                        on_task_start=report_start, on_task_done=report_done)
    consumer.run(max_tasks=1000, should_stop=lambda: stopping)

`owner` is whoever refreshes the heartbeat that vouches for this consumer: the master for its
children (it calls `broker.requeue_consumer(cid)` after reaping one), or the consumer itself
(`owner` defaults to `consumer_id`; a heartbeat thread is then started). `should_stop` is polled
between tasks only, so a graceful stop always finishes and acks the current task.
"""

from __future__ import annotations

import inspect
import logging
import signal
import threading
import time
from collections.abc import Callable

from qdeploy.core import connection, message, results, signals, trace, workflow
from qdeploy.core.app import App, SoftTimeLimitExceeded, Task, TimeLimitExceeded
from qdeploy.core.broker import Broker, Reserved
from qdeploy.core.connection import BROKER_DOWN, ResponseError, refused_for_now
from qdeploy.worker.heartbeat import Heartbeat

log = logging.getLogger("qdeploy.worker")
_REDIS_DOWN = BROKER_DOWN
Outcome = tuple[str, "str | None", "list | None"]  # (task id, result record, follow-up ops) to ack with
MIN_BACKOFF, MAX_BACKOFF = 0.05, 5.0  # seconds between tries while Redis refuses a step
LEAVE_FOR = 30.0  # seconds before a message of a newer envelope version is offered again
_SIGNATURES: dict[Callable, inspect.Signature] = {}  # inspect.signature is slow: once per function
_BINDING: dict[type, tuple[inspect.Signature, bool]] = {}  # task class -> (its run's signature, takes self)


def signature_of(fn: Callable) -> inspect.Signature:
    signature = _SIGNATURES.get(fn)
    if signature is None:
        signature = _SIGNATURES[fn] = inspect.signature(fn)
    return signature


def binding_of(task: Task) -> tuple[inspect.Signature, bool]:
    """The signature the message's arguments must bind to: the class's `run`, which takes the
    task as `self` unless it is a plain (bind=False) function."""
    cls = type(task)
    known = _BINDING.get(cls)
    if known is None:
        run = cls.run
        known = _BINDING[cls] = (signature_of(run), not isinstance(inspect.getattr_static(cls, "run"), staticmethod))
    return known


def prepare(app: App) -> None:
    """Do once, before forking, what every child would otherwise redo (and copy-on-write)."""
    for task in list(app.tasks.values()):
        binding_of(task)


def _short(value, limit: int = 200) -> str:
    """A task's return value for its log line: repr, cut to `limit` characters."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - user code
        text = f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


class QueueGuard:
    """The consumer's queues, minus those whose keys hold the wrong type (a `SET ns:q:default x`
    by hand): each is reported once and skipped, and looked at again every RECHECK seconds, so
    a repaired queue is served again without a restart."""

    RECHECK = 30.0

    def __init__(self, queues: list[str]):
        self.queues = list(queues)
        self.broken: dict[str, float] = {}  # queue -> when to look at it again (monotonic)

    def usable(self) -> list[str]:
        if self.broken and min(self.broken.values()) <= time.monotonic():
            for queue in [q for q, at in self.broken.items() if at <= time.monotonic()]:
                del self.broken[queue]  # tried again; check() puts it back if still broken
                log.info("trying queue %s again", queue)
        return [q for q in self.queues if q not in self.broken]

    def recheck_in(self) -> float:
        return max(0.1, min(self.broken.values(), default=time.monotonic()) - time.monotonic())

    def check(self, broker: Broker) -> bool:
        """Look at every usable queue's keys; True if one was found broken (and is skipped now)."""
        found = False
        for queue in self.usable():
            wrong = [(key, kind) for key, expected in ((broker.keys.queue(queue), "list"), (broker.keys.eta(queue), "zset"))
                     if (kind := connection.text(broker.fast.command("TYPE", key))) not in (expected, "none")]
            if wrong:
                found = True
                self.broken[queue] = time.monotonic() + self.RECHECK
                key, kind = wrong[0]
                log.error("queue %s is broken: %s holds a %s, not a %s; skipping it (the other queues "
                          "keep running) until the key is repaired", queue, key, kind,
                          "list" if key == broker.keys.queue(queue) else "sorted set")
        return found


class Consumer:
    def __init__(self, app: App, queues: list[str], consumer_id: str, *, owner: str | None = None,
                 on_task_start: Callable | None = None, on_task_done: Callable | None = None,
                 on_task_revoked: Callable | None = None, on_idle: Callable[[], None] | None = None,
                 poll_interval: float = 0.1, heartbeat: bool | None = None,
                 broker: Broker | None = None, default_limits: tuple = (None, None),
                 fresh: bool = False):
        if not queues:
            raise ValueError("a consumer needs at least one queue")
        self.fresh = fresh
        self.app, self.queues, self.id = app, list(queues), consumer_id
        self.owner = owner or consumer_id
        self.on_task_start, self.on_task_done = on_task_start, on_task_done
        self.on_task_revoked = on_task_revoked  # a message revoked or expired before it ran
        self.on_idle = on_idle or _nothing  # called before the loop waits (for Redis, a message, a retry)
        self.poll_interval = poll_interval
        self.broker = broker or app.connect_broker(retries=0)
        self.results = app.results_for(self.broker)
        own = heartbeat if heartbeat is not None else self.owner == consumer_id
        self.heartbeat = Heartbeat(self.broker, self.owner, app.visibility_timeout) if own else None
        self.default_soft, self.default_hard = default_limits  # when a message has none
        # fleet-wide rate limits, applied by the reserve script: "task\ninterval\n..." (see reserve.lua)
        self.rates = "".join(f"{name}\n{1.0 / task.rate!r}\n" for name, task in app.tasks.items() if task.rate)
        self._limits: tuple = (None, None)
        self._soft_fired = False
        self._pending: Outcome | None = None  # (id, result, ops) to ack with the next reserve
        self._dirty = False  # a call failed mid-flight: we may hold a reservation we never saw
        self.guard = QueueGuard(self.queues)
        self._refused_since = 0.0  # Redis has refused writes since (monotonic), or 0
        self._refused_delay = MIN_BACKOFF

    # -- the loop ----------------------------------------------------------------------------
    def run(self, max_tasks: int | None = None, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Consume until `should_stop()` or `max_tasks` tasks; returns how many were handled."""
        if self.heartbeat:
            self._until_up(self.heartbeat.start, should_stop)
        if not self.fresh:  # an identity never used before holds nothing: skip the round trip
            self._until_up(lambda: self._leftovers(), should_stop)
        done, left = 0, False
        try:
            while True:
                stopping = should_stop() or (max_tasks is not None and done >= max_tasks)
                try:
                    if self._dirty:
                        self._clean_up_after_error()
                    if stopping:  # ack the last task, give back anything held, unregister
                        self._step([], leave=True)
                        left = True
                        break
                    queues = self.guard.usable()
                    if not queues:  # every queue is broken: wait for someone to repair one
                        self._sleep(self.guard.recheck_in(), should_stop)
                        continue
                    msg = self._step(queues) or self._wait(queues[0])
                    if msg is None:
                        continue
                    done += 1
                    self._pending = self.handle(msg)
                except _REDIS_DOWN as exc:
                    self._dirty = True  # a lost reply may have carried an id we now hold
                    if stopping:
                        log.warning("stopping while Redis is unreachable (%s): unacked work "
                                    "will be recovered after the visibility timeout", exc)
                        break
                    self._wait_for_redis(exc, should_stop)
                except ResponseError as exc:
                    if stopping and refused_for_now(exc):
                        log.warning("stopping while Redis refuses writes (%s): unacked work "
                                    "will be recovered after the visibility timeout", exc)
                        self._dirty = True
                        break
                    self._after_refusal(exc, should_stop)
        finally:
            if not self._dirty and not left:
                try:
                    self.broker.unregister(self.id)
                except _REDIS_DOWN + (ResponseError,):
                    pass
            if self.heartbeat:
                self.heartbeat.stop(forget=not self._dirty)
        return done

    def _after_refusal(self, exc: ResponseError, should_stop: Callable[[], bool]) -> None:
        """Redis answered with an error. A queue key of the wrong type is reported once and
        skipped (the other queues keep running); a server that cannot write now (maxmemory,
        a replica, a long script) is waited for with back-off. Anything else is a bug: raise."""
        if "WRONGTYPE" in str(exc):
            if not self.guard.check(self.broker):  # not a queue of ours: our own keys, or a race
                log.error("Redis refused a step (%s); retrying in %.1fs", exc, self._refused_delay)
                self._sleep(self._refused_delay, should_stop)
                self._refused_delay = min(self._refused_delay * 2, MAX_BACKOFF)
            return
        if not refused_for_now(exc):
            raise exc
        self._dirty = True  # the step may have half-happened (a script stops at its first refused write)
        if not self._refused_since:
            self._refused_since = time.monotonic()
            log.error("Redis refuses writes (%s: %s): tasks wait in Redis; retrying with back-off",
                      type(exc).__name__, exc)
        self._sleep(self._refused_delay, should_stop)
        self._refused_delay = min(self._refused_delay * 2, MAX_BACKOFF)

    def _sleep(self, seconds: float, should_stop: Callable[[], bool]) -> None:
        self.on_idle()
        deadline = time.monotonic() + seconds
        while not should_stop() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    def _step(self, queues: list[str], leave: bool = False) -> Reserved | None:
        ack_id, ack_result, ops = self._pending or (None, None, None)
        msg = self.broker.reserve(self.id, self.owner, queues, ack_id=ack_id, ack_result=ack_result,
                                  track=self.results.colocated, leave=leave, ops=ops, rates=self.rates)
        self._pending = None
        if self._refused_since:
            log.info("Redis accepts writes again (after %.1fs)", time.monotonic() - self._refused_since)
            self._refused_since, self._refused_delay = 0.0, MIN_BACKOFF
        return msg

    def _wait(self, queue: str) -> Reserved | None:
        """Nothing was ready: wait up to `poll_interval` for a message on the first (highest
        priority) queue with BLMOVE, which moves its id into our in-flight list atomically, then
        reserve that id (delivery count, revoked mark, RECEIVED). A new message thus starts
        within a round trip or two; the timeout keeps lower-priority queues and due ETA
        messages served at most `poll_interval` late, as polling did."""
        self.on_idle()
        claimed = self.broker.wait(self.id, queue, self.poll_interval)
        if claimed is None:
            return None
        return self.broker.reserve(self.id, self.owner, [queue], claimed=claimed,
                                   track=self.results.colocated, rates=self.rates)

    def _leftovers(self) -> None:
        moved = self.broker.requeue_consumer(self.id, unregister=False)
        if moved:
            log.warning("requeued %d message(s) left in-flight by a previous %s", moved, self.id)

    def _clean_up_after_error(self) -> None:
        """After a lost reply we may hold reservations we never saw: ack what we finished,
        give the rest back."""
        if self._pending:
            self._step([])
        self._leftovers()
        self._dirty = False

    def _wait_for_redis(self, exc: Exception, should_stop: Callable[[], bool]) -> None:
        self.on_idle()
        log.error("lost connection to Redis (%s); reconnecting", exc)
        self._until_up(self.broker.ping, should_stop)
        log.info("connection to Redis restored")

    @staticmethod
    def _until_up(call: Callable, should_stop: Callable[[], bool]) -> None:
        delay = 0.05
        while True:
            try:
                return call()
            except _REDIS_DOWN as exc:
                if should_stop():
                    raise
                log.debug("redis unavailable (%s), retrying in %.2fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- one message -------------------------------------------------------------------------
    def handle(self, msg: Reserved) -> Outcome | None:
        """Decide what to do with one reservation. Returns (id, result) to ack with the next
        reserve, or None when the message was already settled (retried, dead-lettered...)."""
        if not (msg.raw_id.isascii() and message.TASK_ID.fullmatch(msg.id)):  # pushed by hand: binary, spaces...
            return self._dead(msg, None, f"invalid task id {msg.id[:80]!r} in queue {msg.queue}")
        if msg.body is None:
            if (self.results.get(msg.id) or {}).get("state") in results.READY_STATES:
                # A copy requeued by a recovery while a slow (stopped) node still ran it; that
                # run acked it since. Dead-lettering would overwrite its result with FAILURE.
                log.info("dropping %s: already finished and acked (a recovered copy)", msg.id)
                self.broker.ack(self.id, msg.id)
                return None
            return self._dead(msg, None, "no envelope stored for this id")
        try:
            env = message.decode(msg.body)
        except message.UnsupportedVersion as exc:
            self._leave(msg, exc)
            return None
        except message.MalformedMessage as exc:
            if signals.task_rejected._receivers:
                signals.task_rejected.send(sender=self, message=msg, exc=exc)
            return self._dead(msg, None, f"malformed message: {exc.reason}")
        if env.id != msg.id:  # acking env.id would leave msg.id in flight forever
            return self._dead(msg, None, f"envelope id {env.id[:80]!r} differs from the queued id")
        task = self.app.tasks.get(env.task)
        if msg.revoked or env.is_expired():  # before the delivery count: `revoke --terminate` redelivers it
            reason = "revoked" if msg.revoked else "expired"
            if reason == "expired":
                log.info("task %s[%s] expired, not run", env.task, env.id)
            if signals.task_revoked._receivers:
                signals.task_revoked.send(sender=task, request=trace.request_for(task, env, msg.deliveries, self.id)
                                          if task is not None else None, terminated=False, signum=None,
                                          expired=reason == "expired")
            if self.on_task_revoked:
                self.on_task_revoked(env.id, env.task, env.queue, reason)
            return self._settle(env, results.REVOKED, reason=reason)
        if msg.deliveries > self.app.max_deliveries:
            return self._dead(msg, env, f"delivered {msg.deliveries} times without an ack "
                              f"(max_deliveries={self.app.max_deliveries}); poison message?")
        if task is None:
            if signals.task_unknown._receivers:
                signals.task_unknown.send(sender=self, message=msg, exc=KeyError(env.task), name=env.task, id=env.id)
            return self._dead(msg, env, f"unknown task {env.task!r}")
        args = env.args if env.errback is None else trace.call_args(task, env)
        try:
            sig, takes_self = binding_of(task)
            sig.bind(*((task,) if takes_self else ()), *args, **env.kwargs)
        except TypeError as exc:
            return self._dead(msg, env, f"wrong arguments for {env.task}: {exc}")
        if not task.acks_late:  # at-most-once, by request: forget the message before running
            self.broker.ack(self.id, env.id)
            outcome = self.execute(task, env, msg, args)
            if outcome is not None and outcome[1]:
                self.results.store(outcome[0], outcome[1])
            if outcome is not None and outcome[2]:
                self.broker.carry_out(self.id, outcome[2])
            return None
        return self.execute(task, env, msg, args)

    def _leave(self, msg: Reserved, exc: message.UnsupportedVersion) -> None:
        """A newer envelope version: not ours to run, nor to dead-letter. Put it back for a
        worker that reads it (rolling upgrades), offered again in LEAVE_FOR seconds."""
        log.warning("message %s: %s; left in queue %s for a worker that reads it (offered again in %gs)",
                    msg.id[:80], exc.reason, msg.queue, LEAVE_FOR)
        waiting = results.record(results.PENDING, reason=f"left by {self.id}: {exc.reason}", worker=self.id)
        self.broker.retry(self.id, msg.raw_id, msg.queue, msg.body, time.time() + LEAVE_FOR,  # type: ignore[arg-type]
                          self._result_arg((msg.id, waiting, None))[1])

    def execute(self, task: Task, env: message.Envelope, msg: Reserved, args: list | None = None):
        request = trace.request_for(task, env, msg.deliveries, self.id)
        if signals.task_received._receivers:
            signals.task_received.send(sender=self, request=request)
        started = time.time()
        track = not env.ignore_result
        if track and task.track_started:
            self.results.store(env.id, results.record(results.STARTED, task=env.task,
                                                      worker=self.id, retries=env.retries))
        if self.on_task_start:
            self.on_task_start(env.id, env.task, started, env.limits, env)
        if args is None:
            args = env.args if env.errback is None else trace.call_args(task, env)
        state, outcome = results.SUCCESS, None
        error: BaseException | None = None  # for the on_task_done hook
        done = trace.Outcome(results.FAILURE)
        try:
            limited = env.limits or self.default_soft or self.default_hard
            done = trace.run(task, request, args, env.kwargs, self._arm_for(env) if limited else None, self._disarm)
            outcome, done = self._conclude(task, env, request, done, track, started)
            state = done.state
            error = done.cause if done.auto else done.exc
        finally:
            trace.finish(task, request, done, args, env.kwargs)
            if self.on_task_done:
                self.on_task_done(env.id, env.task, state, time.time() - started, error)
        return self._result_arg(outcome)

    def _arm_for(self, env: message.Envelope) -> Callable[[], None]:
        return lambda: self._arm(env.limits.get("soft", self.default_soft), env.limits.get("hard", self.default_hard))

    def _conclude(self, task: Task, env: message.Envelope, request, done: trace.Outcome, track: bool,
                  started: float) -> tuple[Outcome | None, trace.Outcome]:
        """Settle an outcome: (id, record, follow-up ops) to ack with, or None when a retry was
        stored already. A return value that cannot be stored (not JSON) fails the task."""
        if done.state == results.SUCCESS:
            try:
                ops = workflow.after_success(self.app, env, done.value) if env.ext and _continues(env) else []
                rec = results.record(results.SUCCESS, result=done.value, task=env.task, worker=self.id,
                                     retries=env.retries, children=_children(request, ops) if ops or request.children
                                     else None, parent_id=env.parent_id) if track else None
            except (TypeError, ValueError) as exc:
                done = trace.Outcome(results.FAILURE, exc=exc, einfo=trace.ExceptionInfo(exc))
            else:
                self._log_outcome(env, "succeeded", started, f": {_short(done.value)}")
                return (env.id, rec, self._ops(ops)), done
        if done.state == results.RETRY:
            assert isinstance(done.exc, trace.Retry)
            exc_type, text, _ = results.describe(done.cause or done.exc)
            self._log_outcome(env, "retry", started, f": {exc_type}: {text}" if done.auto else f": {done.exc}")
            return self._retry(task, env, done.exc.countdown, done.cause), done
        error = done.exc
        assert error is not None
        exc_type, text, tb = results.describe(error)
        ops = []
        if env.ext and _continues(env):
            ops = workflow.after_failure(self.app, env, request.as_dict(), workflow.exc_info(error), tb)
        rec = self._failure(env, error, children=_children(request, ops)) if track else None
        self._log_outcome(env, "failed", started, f": {exc_type}: {text}\n{tb.rstrip()}", level=logging.ERROR)
        return (env.id, rec, self._ops(ops)), done

    def _ops(self, ops: list) -> list | None:
        """Follow-up operations as the ack's ARGV; a chord that does not exist is reported."""
        if not ops:
            return None
        for op in ops:
            if isinstance(op, workflow.ChordPart) and not self.broker.fast.command(
                    "HEXISTS", self.broker.keys.chord(op.group_id), " n"):
                log.warning("task %s reports to chord %s, which does not exist (expired, finished or never created): "
                            "its own result is kept, no chord body runs for it", op.task_id, op.group_id)
        return workflow.encode_ops(self.app, ops)

    def _log_outcome(self, env: message.Envelope, outcome: str, started: float, detail: str,
                     level: int = logging.INFO) -> None:
        """One line per task, as Celery writes it (`Task proj.add[<id>] succeeded in 0.0021s: 4`);
        the JSON log format gets the fields too."""
        if not log.isEnabledFor(level):
            return
        runtime = time.time() - started
        words = {"succeeded": "succeeded in", "failed": "raised unexpected in", "retry": "retry after"}
        log.log(level, "Task %s[%s] %s %.4fs%s", env.task, env.id, words[outcome], runtime, detail,
                extra={"task_id": env.id, "task_name": env.task, "queue": env.queue, "outcome": outcome,
                       "duration_s": round(runtime, 6), "node": self.owner.partition("@")[0],
                       "consumer": self.id})

    def _failure(self, env: message.Envelope, exc: BaseException, reason: str | None = None,
                 children: list | None = None) -> str:
        exc_type, text, traceback = results.describe(exc)
        return results.record(results.FAILURE, exc_type=exc_type, exc=text, traceback=traceback,
                              reason=reason, task=env.task, worker=self.id, retries=env.retries,
                              module=type(exc).__module__, children=children, parent_id=env.parent_id)

    def _retry(self, task: Task, env: message.Envelope, countdown: float, exc) -> Outcome | None:
        eta = time.time() + countdown if countdown > 0 else None
        nxt = env.next_retry(eta)
        rec = None if env.ignore_result else results.record(
            results.RETRY, task=env.task, worker=self.id, retries=nxt.retries,
            reason=f"retry in {countdown:.3f}s" + (f": {results.describe(exc)[1]}" if exc else ""))
        stored = self._result_arg((env.id, rec, None))  # written elsewhere first if not colocated
        self.broker.retry(self.id, env.id, env.queue, message.encode(nxt), eta, stored[1])
        return None

    def _settle(self, env: message.Envelope, state: str, reason: str):
        rec = None if env.ignore_result else results.record(state, reason=reason, task=env.task,
                                                             worker=self.id, retries=env.retries)
        return self._result_arg((env.id, rec, self._ops(workflow.after_revoked(self.app, env, reason))))

    def _dead(self, msg: Reserved, env: message.Envelope | None, reason: str) -> Outcome | None:
        log.error("dead-lettering message %s: %s", msg.id[:80], reason)
        stored = None
        if msg.raw_id.isascii() and message.TASK_ID.fullmatch(msg.id):  # a junk id gets no result record
            rec = results.record(results.FAILURE, exc_type="DeadLettered", exc=reason, reason=reason,
                                 task=env.task if env else None, worker=self.id)
            stored = self._result_arg((msg.id, rec, None))[1]
        self.broker.dead_letter(self.id, msg.raw_id, msg.body, reason, msg.queue, stored)
        ops = self._ops(workflow.after_revoked(self.app, env, f"dead-lettered: {reason}")) if env else None
        if ops:  # a chord it belonged to fails now instead of waiting forever
            self.broker.carry_out(self.id, ops)
        return None

    def _result_arg(self, outcome):
        """With results in another Redis, write them there first and ack without them."""
        if outcome is None or self.results.colocated or not outcome[1]:
            return outcome
        self.results.store(outcome[0], outcome[1])
        return (outcome[0], None, outcome[2])

    # -- time limits (SIGALRM; main thread only) ----------------------------------------------
    def _arm(self, soft: float | None, hard: float | None) -> None:
        if not (soft or hard) or threading.current_thread() is not threading.main_thread():
            return
        self._limits, self._soft_fired = (soft, hard), False
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.setitimer(signal.ITIMER_REAL, soft or hard or 0.0)

    def _disarm(self) -> None:
        if self._limits != (None, None):
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._limits = (None, None)

    def _on_alarm(self, signum, frame) -> None:
        soft, hard = self._limits
        if soft and not self._soft_fired:
            self._soft_fired = True
            if hard and hard > soft:
                signal.setitimer(signal.ITIMER_REAL, hard - soft)
            raise SoftTimeLimitExceeded(f"soft time limit ({soft}s) exceeded")
        if hard:
            self._limits = (None, None)
            raise TimeLimitExceeded(f"time limit ({hard}s) exceeded")


def _nothing() -> None:
    pass


def _continues(env: message.Envelope) -> bool:
    """Does anything follow this message (callbacks, a chain, a chord, a unique key)?"""
    return bool(env.callbacks or env.errbacks or env.chain or env.chord or env.unique)


def _children(request, ops: list) -> list:
    return [*request.children, *(op.env.id for op in ops if isinstance(op, workflow.Publish))]
