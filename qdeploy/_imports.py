"""Start-up time: import redis-py without running `redis.asyncio`'s package body.

redis-py's `redis/__init__.py` imports `redis.asyncio`, whose package body pulls in the whole
asyncio client (and cluster, sentinel, keyspace notification) stack: ~25 ms and ~1.3 MB in
every qdeploy process, none of which qdeploy uses. `defer_redis_asyncio()` registers a module
object for `redis.asyncio` whose body runs on first use of any of its names, so
`import redis.asyncio` / `from redis.asyncio import Redis` / `redis.asyncio.Redis` behave as before
for code that does use it. Submodules (`redis.asyncio.client`) import as usual. Nothing is done
when redis is already imported or cannot be found.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Any


class _DeferredPackage(types.ModuleType):
    def __getattr__(self, name: str):
        spec: Any = self.__spec__
        if name.startswith("__") or getattr(spec, "_qdeploy_loaded", False):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        spec._qdeploy_loaded = True
        spec.loader.exec_module(self)  # the real package body, into this very module object
        return getattr(self, name)


def defer_redis_asyncio() -> None:
    if "redis" in sys.modules or "redis.asyncio" in sys.modules:
        return
    try:
        parent: Any = importlib.util.find_spec("redis")
        spec = importlib.machinery.PathFinder.find_spec("redis.asyncio", parent.submodule_search_locations)
    except (ImportError, AttributeError, ValueError):
        return
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    module = _DeferredPackage(spec.name)
    module.__spec__, module.__loader__, module.__file__ = spec, spec.loader, spec.origin
    module.__path__, module.__package__ = spec.submodule_search_locations, spec.name
    sys.modules[spec.name] = module
