"""`qdeploy worker -B`: beat as a child the master supervises (Celery's embedded beat).

The child is a real `qdeploy beat` (exec'd, so it has its own signal handling, logging and leader
election) with the worker's app, broker (through the environment: no password in `ps`), config
and log settings. Running `-B` on every node is safe: beat's fenced leader lock lets one send,
each run once. The master keeps it in an explicit state machine:

    STARTING --(up for UP_AFTER s)--> RUNNING --(exited)--> EXITED --(back-off)--> STARTING
    STARTING/RUNNING --(stop: TERM, KILL after the graceful timeout)--> STOPPING --> EXITED

A beat that dies is started again, after a back-off that doubles while it keeps dying young (up
to 30 s). It gets PR_SET_PDEATHSIG, so it never outlives a SIGKILLed master. On a reload (HUP)
the new master image adopts it.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import sys
import time

from qdeploy.service.daemon import signal_pid

log = logging.getLogger("qdeploy.worker")

UP_AFTER = 10.0  # a beat that lived this long "worked": its back-off starts over
MAX_DELAY = 30.0


class BeatState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"


MOVES = {
    BeatState.STARTING: {BeatState.RUNNING, BeatState.STOPPING, BeatState.EXITED},
    BeatState.RUNNING: {BeatState.STOPPING, BeatState.EXITED},
    BeatState.STOPPING: {BeatState.EXITED},
    BeatState.EXITED: {BeatState.STARTING},
}


class BeatChild:
    def __init__(self, opts, app):
        self.opts, self.app = opts, app
        self.state = BeatState.EXITED
        self.pid: int | None = None
        self.started = 0.0
        self.failures = 0
        self.respawn_at = 0.0
        self.kill_at: float | None = None
        self.wanted = True

    def transition(self, to: BeatState) -> None:
        assert to in MOVES[self.state], f"beat child: {self.state.value} -> {to.value}"
        self.state = to

    @property
    def done(self) -> bool:
        return self.state is BeatState.EXITED

    def argv(self) -> list[str]:
        o = self.opts
        argv = [sys.executable, "-m", "qdeploy", "beat", "-A", o.app, "-l", o.log_level, "--log-format", o.log_format]
        if o.config_file:
            argv += ["--config", o.config_file]
        if o.logfile:
            argv += ["--logfile", o.logfile]
        if o.allow_root or os.geteuid() == 0:
            argv.append("--allow-root")  # the master already chose who runs tasks; beat runs as that user
        return argv

    def environment(self) -> dict[str, str]:
        env = dict(os.environ, QDEPLOY_BROKER=self.app.broker_url)
        env.pop("NOTIFY_SOCKET", None)  # systemd's notify socket is the master's
        return env

    def spawn(self, now: float) -> None:
        from qdeploy.worker.process import set_pdeathsig

        argv, env = self.argv(), self.environment()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs at once
            try:
                set_pdeathsig(signal.SIGTERM)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        self.transition(BeatState.STARTING)
        self.pid, self.started, self.kill_at = pid, now, None
        log.info("beat child %d started (-B)", pid)

    def adopt(self, pid: int, now: float) -> None:
        self.transition(BeatState.STARTING)
        self.pid, self.started = pid, now

    def tick(self, now: float, stopping: bool) -> float | None:
        """Start, promote, respawn or kill as the state says; the next time this needs a turn."""
        if stopping and self.state in (BeatState.STARTING, BeatState.RUNNING):
            self.stop(now, cold=False)
        if self.state is BeatState.STOPPING:
            if self.kill_at is not None and now >= self.kill_at and self.pid:
                signal_pid(self.pid, signal.SIGKILL)
                self.kill_at = None
            return self.kill_at
        if self.state is BeatState.STARTING and now - self.started >= UP_AFTER:
            self.transition(BeatState.RUNNING)
            self.failures = 0
        if self.state is BeatState.EXITED and self.wanted and not stopping:
            if now >= self.respawn_at:
                self.spawn(now)
            else:
                return self.respawn_at
        return self.started + UP_AFTER if self.state is BeatState.STARTING else None

    def stop(self, now: float, cold: bool) -> None:
        self.wanted = False
        if self.state in (BeatState.STARTING, BeatState.RUNNING) and self.pid:
            self.transition(BeatState.STOPPING)
            signal_pid(self.pid, signal.SIGKILL if cold else signal.SIGTERM)
            self.kill_at = None if cold else now + self.opts.graceful_timeout
        elif self.state is BeatState.STOPPING and cold and self.pid:
            signal_pid(self.pid, signal.SIGKILL)

    def reaped(self, pid: int, code: int, now: float) -> bool:
        """The master reaped `pid`: True if it was this beat (then its exit is handled)."""
        if pid != self.pid:
            return False
        self.pid = None
        stopping = self.state is BeatState.STOPPING
        self.transition(BeatState.EXITED)
        if stopping:
            log.info("beat child %d stopped (exit code %d)", pid, code)
            return True
        young = now - self.started < UP_AFTER
        self.failures = self.failures + 1 if young else 0
        delay = min(0.5 * 2 ** self.failures, MAX_DELAY) if young else 0.5
        self.respawn_at = now + delay
        log.error("beat child %d exited (%s); starting another in %.1fs", pid,
                  f"killed by signal {-code}" if code < 0 else f"exit code {code}", delay)
        return True


def now() -> float:
    return time.monotonic()
