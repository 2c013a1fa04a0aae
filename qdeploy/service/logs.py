"""Logging for the master and its children: stderr (for journald) or `--logfile` with `%n %h %i
%I` expansion (a template with `%i`/`%I` gives every child its own file), text or JSON lines,
and reopening on SIGUSR2 after logrotate."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from qdeploy.core.urls import redact_text
from qdeploy.generator.nodes import expand

_state: dict = {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            line["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(line)


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
    _install(path, opts)


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
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(opts.log_format))
    handler.addFilter(Redact())
    root.addHandler(handler)
    root.setLevel(opts.log_level.upper())
