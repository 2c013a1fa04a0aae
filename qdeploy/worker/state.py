"""The life of one child process, as an explicit state machine (supervisor's `states.py` idea).

    STARTING ──U──▶ IDLE ──S──▶ BUSY ──D──▶ IDLE
        │  │          │  ◀──────────┘ │
        │  │          └──R──▶ RETIRING ◀──R─┘    (max tasks / memory reached: it leaves by itself)
        │  └──U──▶ SPARE ──go──▶ IDLE             (a spare: booted, waits for its slot to free)
        └──────────── stop ──▶ STOPPING          (the master asked it to finish and leave)
    any state ── reaped ──▶ EXITED

Events arrive from the child on its events pipe, one line each: `U` (up),
`S <id> <hard> <cid> <queue> <wait> <name> [<history>]` (task started by consumer <cid>; hard
limit in seconds or 0; its queue, the seconds it waited there since it was due, the task name,
and with the task history on: `retries sent eta parent root group [call]`),
`D <id> <outcome> <runtime> [<detail>]` (task done: succeeded, failed or retried, the run time
in seconds, and for a failure or retry the exception), `P` (few tasks left: fork my successor
now), `R <reason>` (retiring), `E <reason>` (cannot boot), `A <id> <call>` (the arguments of a
task about to fail or retry, for the task history: just before its `D`), `V <id> <queue> <why>
<name>` (a message revoked or expired before it ran: why is `revoked` or `expired`). The short forms of a child from
before a reload, `S <id> <hard> <cid>` and `D <id>`, are still read. A child with T threads
runs up to T tasks at once, each under its own consumer identity; it is BUSY while any of them
runs.

A spare is forked ahead of a child that recycles (`P`), so the successor has booted and
connected by the time it is needed. It takes no task until the master writes `g` ("go") on its
control pipe, which happens once its predecessor's last task is done: a slot never runs two
tasks at once.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from qdeploy.core.message import QUEUE_NAME, TASK_ID

MAX_EVENT = 4096  # longer than any line a child sends (ids are at most 255 characters)
MAX_LIMIT = 10 * 365 * 86400.0  # a hard time limit beyond ten years is not one
OUTCOMES = ("succeeded", "failed", "retried")
REVOKED_WHY = ("revoked", "expired")  # a V line's reason
MAX_NAME = 200  # task names longer than this are cut
MAX_CALL = 3000  # an A line's arguments (the child keeps them shorter: ops/history.ARGS_MAX)


class State(enum.Enum):
    __hash__ = object.__hash__  # members are singletons: identity hashing is C, Enum's is Python (2 per event)

    STARTING = "starting"
    IDLE = "idle"
    SPARE = "spare"
    BUSY = "busy"
    RETIRING = "retiring"
    STOPPING = "stopping"
    EXITED = "exited"


LEGAL: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.IDLE, State.SPARE, State.STOPPING, State.EXITED}),
    State.SPARE: frozenset({State.IDLE, State.STOPPING, State.EXITED}),
    State.IDLE: frozenset({State.BUSY, State.RETIRING, State.STOPPING, State.EXITED}),
    State.BUSY: frozenset({State.IDLE, State.RETIRING, State.STOPPING, State.EXITED}),
    State.RETIRING: frozenset({State.STOPPING, State.EXITED}),
    State.STOPPING: frozenset({State.EXITED}),
    State.EXITED: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


@dataclass(eq=False, slots=True)
class Task:
    id: str
    cid: str  # the consumer (thread) that holds it in Redis
    started: float  # monotonic
    deadline: float | None  # monotonic time at which the master kills the child
    name: str = ""  # task name ("" from a child that did not say)
    queue: str = ""
    wait: float | None = None  # seconds it waited in its queue since it was due
    outcome: str = ""  # once done: succeeded, failed, retried ("" if the child did not say)
    runtime: float | None = None
    detail: str = ""  # the exception of a failure or retry
    extra: str = ""  # the S line after the name: what the task history keeps (ops/history.FIELDS)
    call: str = ""  # its arguments, from an A line (a failure's, for the task history)


@dataclass(eq=False)
class Child:
    pid: int
    slot: int
    cids: list[str]  # consumer identities in Redis (one per thread): requeued if the child dies
    events: int | None  # read end of the child's events pipe
    control: int | None  # write end of the control pipe; closing it asks the child to stop
    state: State = State.STARTING
    tasks: dict[str, Task] = field(default_factory=dict)  # running, by id
    tasks_done: int = 0
    retiring_reason: str = ""
    boot_error: str = ""
    killed_for: str = ""  # why the master killed it (time limit, memory)
    adopted: bool = False  # inherited across a HUP re-exec: finishing, not supervised by events
    up: bool = False  # said `U`: it booted (and consumes, unless a spare)
    spare: bool = False  # forked ahead of time; takes tasks once the master says go (`promote`)
    wants_spare: bool = False  # said `P`: it will retire soon, a spare should boot for its slot
    stop_by: float | None = None  # monotonic time after which a stopping child is killed
    buffer: bytes = b""  # a partial event line
    ignored: int = 0  # malformed event lines it sent
    beacon: int | None = None  # its slot in the master's Beacons (polling liveness)
    idle_since: float = field(default_factory=time.monotonic)  # last start or end of a task
    last_started: Task | None = None  # the task of the latest S line (for metrics and events)
    last_done: Task | None = None  # the task of the latest D line
    last_revoked: Task | None = None  # the task of the latest V line (revoked before it ran)

    def transition(self, new: State) -> None:
        if new is self.state:
            return
        if new not in LEGAL[self.state]:
            raise IllegalTransition(f"child {self.pid}: {self.state.value} -> {new.value}")
        self.state = new

    @property
    def alive(self) -> bool:
        return self.state is not State.EXITED

    @property
    def serving(self) -> bool:
        """Counts towards the pool size: it will take new tasks."""
        return not self.spare and self.state in (State.STARTING, State.IDLE, State.BUSY)

    @property
    def waiting(self) -> bool:
        """A spare not yet promoted, booting or booted."""
        return self.spare and self.state in (State.STARTING, State.SPARE)

    def promote(self) -> None:
        """The master told this spare to go: from now on it is an ordinary child."""
        self.spare = False
        if self.state is State.SPARE:
            self.transition(State.IDLE)

    def lines(self, data: bytes) -> list[str]:
        """The complete event lines in `data` (bytes from the child's events pipe), the rest
        kept for the next read. A run of bytes with no newline in sight is not one of our lines:
        it is handed on as one line, for `on_event` to refuse."""
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > MAX_EVENT:
            lines.append(self.buffer)
            self.buffer = b""
        return [line.decode("utf-8", "replace") for line in lines]

    def on_event(self, line: str) -> str | None:
        """Apply one event line; returns why it was ignored, else None. The pipe crossed a
        process (a task can write to any fd it finds), so no line is trusted and none raises."""
        kind, _, rest = line.partition(" ")
        if len(line) > MAX_EVENT:
            return f"event of {len(line)} characters"
        if kind == "U" and not rest:
            self.up = True
            if self.state is State.STARTING:
                self.transition(State.SPARE if self.spare else State.IDLE)
        elif kind == "P" and not rest:
            self.wants_spare = True
        elif kind == "S":
            return self._started(rest)
        elif kind == "D":
            return self._done(rest)
        elif kind == "V":
            return self._revoked(rest)
        elif kind == "A":
            task_id, _, call = rest.partition(" ")
            task = self.tasks.get(task_id)
            if task is None or not call or len(call) > MAX_CALL:
                return f"malformed task arguments {_shown(rest)}"
            task.call = call
        elif kind == "R":
            self.retiring_reason = _shown(rest)
            if self.state in (State.IDLE, State.BUSY):
                self.transition(State.RETIRING)
        elif kind == "E":
            self.boot_error = _shown(rest, 500)
        else:
            return f"unknown event {_shown(line)}"
        return None

    def _started(self, rest: str) -> str | None:
        parts = rest.split(" ", 5)
        if len(parts) not in (3, 6) or not TASK_ID.fullmatch(parts[0]) or parts[2] not in self.cids:
            return f"malformed task start {_shown(rest)}"
        try:
            limit = float(parts[1])
        except ValueError:
            return f"malformed time limit {_shown(parts[1])}"
        if not 0 <= limit <= MAX_LIMIT:  # also NaN
            return f"time limit out of range {_shown(parts[1])}"
        name, queue, wait, extra = "", "", None, ""
        if len(parts) == 6:
            name, _, extra = parts[5].partition(" ")  # names have no spaces; the history's fields follow
            queue, name = parts[3], _shown(name, MAX_NAME)
            wait = _seconds(parts[4])
            if wait is None or not name or (queue not in _QUEUES_SEEN and not _known_queue(queue)):
                return f"malformed task start {_shown(rest)}"
        now = time.monotonic()
        task = Task(parts[0], parts[2], now, now + limit if limit > 0 else None, name, queue, wait, extra=extra)
        self.tasks[parts[0]] = self.last_started = task
        self.idle_since = now
        if self.state is State.IDLE:
            self.transition(State.BUSY)
        return None

    def _revoked(self, rest: str) -> str | None:
        parts = rest.split(" ", 3)
        if (len(parts) != 4 or not TASK_ID.fullmatch(parts[0]) or parts[2] not in REVOKED_WHY
                or (parts[1] not in _QUEUES_SEEN and not _known_queue(parts[1])) or not parts[3]):
            return f"malformed revoked task {_shown(rest)}"
        now = time.monotonic()
        self.last_revoked = Task(parts[0], "", now, None, _shown(parts[3], MAX_NAME), parts[1], outcome="revoked",
                                 runtime=None, detail=parts[2])
        return None

    def _done(self, rest: str) -> str | None:
        parts = rest.split(" ", 3)
        task_id = parts[0]
        if (task_id not in self.tasks and not TASK_ID.fullmatch(task_id)) or len(parts) == 2:  # a running id was checked
            return f"malformed task end {_shown(rest)}"
        outcome, runtime, detail = "", None, ""
        if len(parts) > 2:
            outcome, runtime = parts[1], _seconds(parts[2])
            detail = _shown(parts[3], 300) if len(parts) == 4 else ""
            if outcome not in OUTCOMES or runtime is None:
                return f"malformed task end {_shown(rest)}"
        now = time.monotonic()
        task = self.tasks.pop(task_id, None) or Task(task_id, "", now, None)
        task.outcome, task.runtime, task.detail = outcome, runtime, detail
        self.last_done = task
        self.tasks_done += 1
        self.idle_since = now
        if self.state is State.BUSY and not self.tasks:
            self.transition(State.IDLE)
        return None


def exit_reason(child: Child, code: int) -> tuple[str | None, str]:
    """Why a reaped child exited: one of metrics.EXIT_REASONS (None for a child that was asked
    to stop, or stopped by itself without a limit) and the detail for its log line."""
    killed = child.killed_for
    if killed:
        if killed.startswith("time limit"):
            return "time_limit", killed
        if killed.startswith("memory"):
            return "hard_memory", killed
        return "killed", killed
    if code != 0:
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return "crash", f"{how}: {child.boot_error}" if child.boot_error else how
    reason = child.retiring_reason
    if reason.startswith("max_tasks_per_child"):
        return "max_tasks", reason
    if reason.startswith("memory"):
        return "max_memory", reason
    return None, reason or "stopped"


_QUEUES_SEEN: set[str] = set()  # queue names already checked (a node has a handful)


def _known_queue(queue: str) -> bool:
    if not QUEUE_NAME.fullmatch(queue):
        return False
    if len(_QUEUES_SEEN) < 1000:
        _QUEUES_SEEN.add(queue)
    return True


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value <= MAX_LIMIT else None  # also NaN


def _shown(text: str, limit: int = 120) -> str:
    """Text from a child, fit for one log line."""
    if not text.isprintable():  # the common case is one C call: a task name on every start line
        text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."
