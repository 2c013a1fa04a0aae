"""`qdeploy events` without --dump: a live, top-like view of the event stream (as `celery events`).

The model (`View`) is plain Python, fed one event at a time and rendered to lines, so it is
tested without a terminal; `run` draws it with curses, redrawing at most every half second and
at least every second. Keys: q quits, c clears the task list.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

MAX_TASKS = 500  # tasks remembered (the newest)
OFFLINE_AFTER = 10.0  # seconds without a heartbeat: shown as offline


@dataclass
class WorkerRow:
    hostname: str
    seen: float = 0.0
    online: bool = True
    active: int = 0
    processed: int = 0
    pool: int | None = None


@dataclass
class TaskRow:
    uuid: str
    name: str = ""
    state: str = ""
    hostname: str = ""
    runtime: float | None = None
    detail: str = ""
    at: float = 0.0


@dataclass
class View:
    workers: dict[str, WorkerRow] = field(default_factory=dict)
    tasks: OrderedDict[str, TaskRow] = field(default_factory=OrderedDict)
    counts: dict[str, int] = field(default_factory=dict)
    events: int = 0

    def feed(self, event: dict) -> None:
        self.events += 1
        kind = str(event.get("type"))
        host = str(event.get("hostname", "?"))[:80]
        stamp = event.get("timestamp")
        now = float(stamp) if isinstance(stamp, (int, float)) else time.time()
        if kind.startswith("worker-"):
            if not event.get("hostname"):
                return  # a worker event naming no worker
            worker = self.workers.setdefault(host, WorkerRow(host))
            worker.seen, worker.online = now, kind != "worker-offline"
            for name in ("active", "processed", "pool"):
                value = event.get(name)
                if isinstance(value, int) and not isinstance(value, bool):
                    setattr(worker, name, value)
            return
        uuid = event.get("uuid")
        if not isinstance(uuid, str):
            return
        state = kind.removeprefix("task-").upper()
        self.counts[state] = self.counts.get(state, 0) + 1
        row = self.tasks.pop(uuid, None) or TaskRow(uuid)
        row.state, row.at = state, now
        if isinstance(event.get("name"), str) and event["name"]:
            row.name = event["name"][:80]
        if kind != "task-sent":
            row.hostname = host
        if isinstance(event.get("runtime"), (int, float)):
            row.runtime = float(event["runtime"])
        if isinstance(event.get("exception"), str):
            row.detail = event["exception"][:120]
        self.tasks[uuid] = row
        while len(self.tasks) > MAX_TASKS:
            self.tasks.popitem(last=False)

    def lines(self, width: int, height: int, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        online = [w for w in self.workers.values() if w.online and now - w.seen <= OFFLINE_AFTER]
        counts = "  ".join(f"{k.lower()} {v}" for k, v in sorted(self.counts.items()))
        out = [f"qdeploy events: {len(online)} worker(s) online, {self.events} event(s)  {counts}", ""]
        out.append(f"{'WORKER':40} {'STATE':8} {'POOL':>5} {'ACTIVE':>6} {'PROCESSED':>9}")
        for w in sorted(self.workers.values(), key=lambda w: w.hostname):
            state = "online" if w in online else "offline"
            out.append(f"{w.hostname[:40]:40} {state:8} {w.pool if w.pool is not None else '-':>5} "
                       f"{w.active:>6} {w.processed:>9}")
        out += ["", f"{'UUID':36} {'TASK':24} {'STATE':10} {'RUNTIME':>9}  WORKER / DETAIL"]
        room = max(0, height - len(out) - 1)
        for row in list(reversed(self.tasks.values()))[:room]:
            runtime = f"{row.runtime:.4f}s" if row.runtime is not None else "-"
            out.append(f"{row.uuid[:36]:36} {row.name[:24]:24} {row.state[:10]:10} {runtime:>9}  "
                       f"{row.detail or row.hostname}")
        out.append("q: quit  c: clear tasks")
        return ["".join(c if c.isprintable() else "?" for c in line)[: max(1, width - 1)] for line in out[:height]]


def run(broker) -> int:
    """Draw the view until q (or Ctrl-C); returns the exit code."""
    import curses

    from qdeploy.ops import events

    view = View()

    def main(screen) -> None:
        curses.curs_set(0)
        screen.nodelay(True)
        last = 0.0
        for event in events.listen(broker, timeout=0.5):
            if event is not None:
                view.feed(event)
            key = screen.getch()
            if key in (ord("q"), ord("Q")):
                return
            if key in (ord("c"), ord("C")):
                view.tasks.clear()
            if time.monotonic() - last >= 0.5 or event is None:
                last = time.monotonic()
                height, width = screen.getmaxyx()
                screen.erase()
                for y, line in enumerate(view.lines(width, height)):
                    screen.addstr(y, 0, line, curses.A_BOLD if y in (0, 2) else 0)
                screen.refresh()

    for name in ("LINES", "COLUMNS"):  # the terminal's real size, not a stale value a script exported
        os.environ.pop(name, None)
    try:
        curses.wrapper(main)
    except KeyboardInterrupt:
        pass
    return 0
