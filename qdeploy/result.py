"""Celery's `celery.result` under qdeploy's name: `from qdeploy.result import AsyncResult`."""

from qdeploy.core.groupresult import GroupResult
from qdeploy.core.results import AsyncResult

__all__ = ["AsyncResult", "GroupResult"]
