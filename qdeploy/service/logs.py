"""Logging for the master and its children: stderr (for journald) or `--logfile` with `%n %h %i
%I` expansion (a template with `%i`/`%I` gives every child its own file), text or JSON lines,
and reopening on SIGUSR2 after logrotate.

On systemd's journal (stderr is the stream named by $JOURNAL_STREAM) every line starts with the
sd-daemon priority prefix (`<3>` error ... `<7>` debug), so `journalctl -p err` shows errors only,
also each line of a traceback. In a child, `redirect_stdio()` sends a task's `print()` and its
writes to `sys.stderr` to the log, one record per line as it is written (Celery's
`worker_redirect_stdouts`, at WARNING like Celery's default).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
import time

from qdeploy.core.urls import redact_text
from qdeploy.generator.nodes import expand

_state: dict = {}


# The fields the consumer's per-task line carries (`extra=`): copied into JSON lines.
TASK_FIELDS = ("task_id", "task_name", "queue", "outcome", "duration_s", "node", "consumer")
JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
REDIRECT_LEVEL = logging.WARNING  # Celery's worker_redirect_stdouts_level
MAX_PARTIAL_LINE = 64 * 1024  # a write with no newline this long is logged as it is


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if getattr(record, "task_id", None) is not None:  # a task's line: which child ran it, too
            line.update({name: getattr(record, name, None) for name in TASK_FIELDS})
            line["child_pid"] = record.process
        if record.exc_info or record.exc_text:
            line["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(line)


class JournalFormatter(logging.Formatter):
    """Another formatter's lines, each with the journal's priority prefix (`<3>` for ERROR):
    a traceback's lines keep the record's priority instead of falling back to info."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (a custom level gets the next standard one's)."""
    for level in sorted(JOURNAL_PRIORITY):
        if levelno <= level:
            return JOURNAL_PRIORITY[level]
    return 2


def on_journal(stream=None, environ=os.environ) -> bool:
    """Is `stream` (default stderr) the journal stream systemd connected us to ($JOURNAL_STREAM
    is `device:inode` of it)? Not when a --logfile or a shell redirect replaced it."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class LoggingProxy(io.TextIOBase):
    """A text stream whose complete lines become log records (sys.stdout/sys.stderr of a child).
    Each thread has its own partial line; a record that logging itself writes here while
    emitting (an error in a handler) is dropped instead of recursing."""

    encoding = "utf-8"

    def __init__(self, name: str, original, level: int = REDIRECT_LEVEL):
        super().__init__()
        self.name, self.original, self.level = name, original, level
        self.logger = logging.getLogger("qdeploy.redirected")
        self._local = threading.local()
        self.partial = False  # some thread holds a line without its newline yet

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.original.fileno()  # subprocess/faulthandler want a real fd: the one restored after each task

    def write(self, text) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        local = self._local
        if getattr(local, "busy", False):
            return len(text)
        buffer = getattr(local, "buffer", "") + text
        *lines, buffer = buffer.split("\n")
        if len(buffer) > MAX_PARTIAL_LINE:
            lines.append(buffer)
            buffer = ""
        local.buffer = buffer
        if buffer:
            self.partial = True  # restore_redirect() flushes it after the task
        if lines:
            self._emit(lines)
        return len(text)

    def flush(self) -> None:
        buffer = getattr(self._local, "buffer", "")
        self.partial = False
        if buffer and not getattr(self._local, "busy", False):
            self._local.buffer = ""
            self._emit([buffer])

    def close(self) -> None:
        self.flush()  # a task's sys.stdout.close() must not silence the next task's print()

    def _emit(self, lines: list[str]) -> None:
        self._local.busy = True
        try:
            for line in lines:
                line = line.rstrip("\r")
                if line:
                    self.logger.log(self.level, "%s", line)
        finally:
            self._local.busy = False


_proxies: dict[str, LoggingProxy] = {}


def redirect_stdio() -> None:
    """In a child: `print()` and sys.stderr writes go to the log, line by line, at once."""
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if not isinstance(current, LoggingProxy):
            try:
                current.flush()
            except (OSError, ValueError):
                pass
            _proxies[name] = LoggingProxy(name, getattr(sys, f"__{name}__") or current)
        setattr(sys, name, _proxies[name])


def restore_redirect() -> None:
    """After a task: a task that replaced sys.stdout/sys.stderr gets the proxies back, and a
    last line printed without its newline is logged now. Cheap: it runs after every task."""
    if not _proxies:
        return
    out, err = _proxies["stdout"], _proxies["stderr"]
    if sys.stdout is not out:
        sys.stdout = out
    if sys.stderr is not err:
        sys.stderr = err
    if out.partial:
        out.flush()
    if err.partial:
        err.flush()


class Redact(logging.Filter):
    """Every credential in a URL, in a message or a traceback, becomes *** before any handler
    formats the record (installed on every handler of the master, its children and beat)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    text = logging.Formatter("[%(asctime)s.%(msecs)03d %(levelname)s/%(processName)s %(process)d] %(message)s",
                             "%Y-%m-%d %H:%M:%S")
    text.converter = time.localtime
    return text


def setup(opts, *, owner_uid: int | None = None, owner_gid: int | None = None) -> None:
    """Configure the root logger of the master (before privileges are dropped: the log file is
    opened, and handed to the service user, while we may still be root)."""
    _state.update(opts=opts, uid=owner_uid, gid=owner_gid)
    path = expand(opts.logfile, opts.node, opts.owner.partition("@")[2]) if opts.logfile else None
    from qdeploy.core.signals import logging_configured  # issue 19: Celery's logging signals

    if logging_configured(opts.log_level, path, opts.log_format):  # a setup_logging receiver did it
        return
    _install(path, opts)
    logging_configured(opts.log_level, path, opts.log_format, after=True)


def child_started(opts, slot: int) -> None:
    """A child with a per-child log file template opens its own file."""
    logging.getLogger().handlers  # noqa: B018
    if opts.logfile and ("%i" in opts.logfile or "%I" in opts.logfile):
        _install(expand(opts.logfile, opts.node, opts.owner.partition("@")[2], slot), opts)
    _state["slot"] = slot


def reopen() -> None:
    """Reopen the log file (SIGUSR2 after rotation); stderr needs nothing."""
    opts = _state.get("opts")
    if opts is None or not opts.logfile:
        return
    slot = _state.get("slot")
    per_child = slot is not None and ("%i" in opts.logfile or "%I" in opts.logfile)
    _install(expand(opts.logfile, opts.node, opts.owner.partition("@")[2], slot if per_child else None), opts)


def _install(path: str | None, opts) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    handler: logging.Handler
    if path:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        if _state.get("uid") is not None and os.geteuid() == 0:
            os.chown(path, _state["uid"], _state["gid"])
    else:
        stream = sys.stderr.original if isinstance(sys.stderr, LoggingProxy) else sys.stderr
        handler = logging.StreamHandler(stream)
    formatter = _formatter(opts.log_format)
    if not path and on_journal(handler.stream):
        formatter = JournalFormatter(formatter)
    handler.setFormatter(formatter)
    handler.addFilter(Redact())
    root.addHandler(handler)
    root.setLevel(opts.log_level.upper())
