"""qdeploy: a Redis-backed task queue runtime and the tooling that deploys it."""

from qdeploy._imports import defer_redis_asyncio

__version__ = "0.1.0"

defer_redis_asyncio()  # ~25 ms of start-up that qdeploy never uses (see _imports.py)

__all__ = ["App", "AsyncResult", "__version__"]


def __getattr__(name):  # lazy, so `import qdeploy` (e.g. for the CLI) stays cheap
    if name == "App":
        from qdeploy.core.app import App
        return App
    if name == "AsyncResult":
        from qdeploy.core.results import AsyncResult
        return AsyncResult
    raise AttributeError(f"module 'qdeploy' has no attribute {name!r}")
