"""The life of one child process, as an explicit state machine (supervisor's `states.py` idea).

    STARTING ──U──▶ IDLE ──S──▶ BUSY ──D──▶ IDLE
        │  │          │  ◀──────────┘ │
        │  │          └──R──▶ RETIRING ◀──R─┘    (max tasks / memory reached: it leaves by itself)
        │  └──U──▶ SPARE ──go──▶ IDLE             (a spare: booted, waits for its slot to free)
        └──────────── stop ──▶ STOPPING          (the master asked it to finish and leave)
    any state ── reaped ──▶ EXITED

Events arrive from the child on its events pipe, one line each: `U` (up), `S <id> <hard> <cid>`
(task started by consumer <cid>; hard limit in seconds or 0), `D <id>` (task done),
`P` (few tasks left: fork my successor now), `R <reason>` (retiring), `E <reason>` (cannot
boot). A child with T threads runs up to T tasks at once, each under its own consumer identity;
it is BUSY while any of them runs.

A spare is forked ahead of a child that recycles (`P`), so the successor has booted and
connected by the time it is needed. It takes no task until the master writes `g` ("go") on its
control pipe, which happens once its predecessor's last task is done: a slot never runs two
tasks at once.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from qdeploy.core.message import TASK_ID

MAX_EVENT = 4096  # longer than any line a child sends (ids are at most 255 characters)
MAX_LIMIT = 10 * 365 * 86400.0  # a hard time limit beyond ten years is not one


class State(enum.Enum):
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


@dataclass(eq=False)
class Task:
    id: str
    cid: str  # the consumer (thread) that holds it in Redis
    started: float  # monotonic
    deadline: float | None  # monotonic time at which the master kills the child


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
            parts = rest.split(" ")
            if len(parts) != 3 or not TASK_ID.fullmatch(parts[0]) or parts[2] not in self.cids:
                return f"malformed task start {_shown(rest)}"
            try:
                limit = float(parts[1])
            except ValueError:
                return f"malformed time limit {_shown(parts[1])}"
            if not 0 <= limit <= MAX_LIMIT:  # also NaN
                return f"time limit out of range {_shown(parts[1])}"
            now = time.monotonic()
            self.tasks[parts[0]] = Task(parts[0], parts[2], now, now + limit if limit > 0 else None)
            if self.state is State.IDLE:
                self.transition(State.BUSY)
        elif kind == "D":
            if not TASK_ID.fullmatch(rest):
                return f"malformed task end {_shown(rest)}"
            self.tasks.pop(rest, None)
            self.tasks_done += 1
            if self.state is State.BUSY and not self.tasks:
                self.transition(State.IDLE)
        elif kind == "R":
            self.retiring_reason = _shown(rest)
            if self.state in (State.IDLE, State.BUSY):
                self.transition(State.RETIRING)
        elif kind == "E":
            self.boot_error = _shown(rest, 500)
        else:
            return f"unknown event {_shown(line)}"
        return None


def _shown(text: str, limit: int = 120) -> str:
    """Text from a child, fit for one log line."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."
