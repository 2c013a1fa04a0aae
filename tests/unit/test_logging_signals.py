"""Celery's logging signals around a service's logging setup (qdeploy.service.logs.setup)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from qdeploy import signals
from qdeploy.service import logs


def opts():
    return SimpleNamespace(logfile=None, node="w1", owner="w1@h", log_level="warning", log_format="text")


def test_a_setup_logging_receiver_configures_logging_instead_of_qdeploy(monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    seen = []

    def mine(sender=None, loglevel=None, logfile=None, format=None, colorize=None, **kw):  # noqa: A002
        seen.append((loglevel, logfile, format, colorize))

    signals.setup_logging.connect(mine)
    try:
        logs.setup(opts())
    finally:
        signals.setup_logging.disconnect(mine)
    assert seen == [(logging.WARNING, None, "text", False)] and root.handlers == []


def test_after_setup_logger_and_task_logger_get_the_configured_loggers(monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(logs, "_state", {})
    seen = []

    def after(sender=None, logger=None, loglevel=None, **kw):
        seen.append((kw["signal"].name, logger.name, loglevel, bool(logging.getLogger().handlers)))

    signals.after_setup_logger.connect(after)
    signals.after_setup_task_logger.connect(after)
    try:
        logs.setup(opts())
    finally:
        signals.after_setup_logger.disconnect(after)
        signals.after_setup_task_logger.disconnect(after)
    assert seen == [("after_setup_logger", "root", logging.WARNING, True),
                    ("after_setup_task_logger", "qdeploy.task", logging.WARNING, True)]
