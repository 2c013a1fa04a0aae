"""qdeploy: a Redis-backed task queue runtime and the tooling that deploys it."""

from qdeploy._imports import defer_redis

__version__ = "0.1.0"

defer_redis()  # ~100 ms and ~14 MiB that a worker on one server never uses (see _imports.py)

# Celery's task API under Celery's names (`from qdeploy import Celery, Task, chain`): name -> module
_LAZY = {
    "App": "qdeploy.core.app", "Celery": "qdeploy.core.app", "current_app": "qdeploy.core.app",
    "Task": "qdeploy.core.task", "Retry": "qdeploy.core.task", "SoftTimeLimitExceeded": "qdeploy.core.task",
    "TimeLimitExceeded": "qdeploy.core.task", "MaxRetriesExceededError": "qdeploy.core.task",
    "AsyncResult": "qdeploy.core.results", "GroupResult": "qdeploy.core.groupresult",
    "Signature": "qdeploy.core.canvas", "signature": "qdeploy.core.canvas", "maybe_signature": "qdeploy.core.canvas",
    "chain": "qdeploy.core.canvas", "group": "qdeploy.core.canvas", "chord": "qdeploy.core.canvas",
    "chunks": "qdeploy.core.canvas", "ChordError": "qdeploy.core.canvas",
    "shared_task": "qdeploy.core.shared",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name):  # lazy, so `import qdeploy` (e.g. for the CLI) stays cheap
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qdeploy' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), "App" if name == "Celery" else name)
