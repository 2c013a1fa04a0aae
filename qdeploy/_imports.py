"""Start-up time: import redis-py's package body only where a process uses it.

redis-py's `redis/__init__.py` imports its whole client stack (the sync, asyncio, cluster and
sentinel clients, keyspace notifications, OpenTelemetry hooks, `importlib.metadata`): ~100 ms
and ~14 MiB of RSS in every process. A worker's master and children on one server talk to Redis
through qdeploy's own connection (`qdeploy.core.resp`) and need only `redis.exceptions`, so
`defer_redis()` registers module objects for `redis` and `redis.asyncio` whose bodies run on
first use of one of their names: `import redis` then `redis.Redis(...)`, `from redis import
Redis`, `from redis.asyncio import Redis` behave as before for code that uses them, and
`from redis.exceptions import RedisError` or `from redis import exceptions` (or any other
submodule) loads just that submodule.
Nothing is done when redis is already imported or cannot be found.

The body runs once, under a lock: a second thread that asks for a name while the first is
loading waits for it instead of seeing a half-made module.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import threading
import types
from typing import Any

# Dunder names the package bodies define: asking for one loads the body. Any other dunder is
# what the import system, pickle or inspect probe for, and is answered "no" without loading.
_DEFINED_DUNDERS = frozenset({"__version__", "__all__"})
_LOCK = threading.RLock()


class _DeferredPackage(types.ModuleType):
    def __dir__(self):
        """What the body defines (completion, `inspect.getmembers`): asking loads it."""
        getattr(self, "__all__", None)
        return sorted(self.__dict__)

    def __getattr__(self, name: str):
        if name.startswith("__") and name not in _DEFINED_DUNDERS:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        spec: Any = self.__spec__
        with _LOCK:
            state = getattr(spec, "_qdeploy_state", None)
            if state is None and importlib.machinery.PathFinder.find_spec(name, self.__path__) is not None:
                # `from redis import exceptions`: the submodule alone, as `import redis.exceptions`
                return importlib.import_module(f"{self.__name__}.{name}")
            if state is None:
                spec._qdeploy_state = "loading"
                try:
                    spec.loader.exec_module(self)  # the real package body, into this very module object
                except BaseException as exc:
                    spec._qdeploy_state = exc
                    raise
                spec._qdeploy_state = "loaded"
            elif isinstance(state, BaseException):
                raise ImportError(f"{self.__name__} could not be loaded: {state}") from state
        try:  # while this thread is loading it: what the body defined so far, as any import
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None


def loaded(name: str) -> bool:
    """True once `name`'s package body ran (always, for a package that was not deferred)."""
    module = sys.modules.get(name)
    return module is not None and (not isinstance(module, _DeferredPackage)
                                   or getattr(module.__spec__, "_qdeploy_state", None) == "loaded")


def package_path(name: str) -> list[str]:
    """The files a deferred package's body reads first (its directory and `__init__`); [] if
    it is not deferred."""
    module = sys.modules.get(name)
    if not isinstance(module, _DeferredPackage) or not module.__file__:
        return []
    return [*module.__path__, module.__file__]


def load(name: str) -> None:
    """Run `name`'s deferred package body now (before a privilege drop, say)."""
    module = sys.modules.get(name)
    if isinstance(module, _DeferredPackage):
        getattr(module, "__version__", None)


def _defer(name: str, search: list[str] | None) -> list[str] | None:
    try:
        spec = importlib.machinery.PathFinder.find_spec(name, search)
    except (ImportError, AttributeError, ValueError):
        return None
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return None
    module = _DeferredPackage(spec.name)
    module.__spec__, module.__loader__, module.__file__ = spec, spec.loader, spec.origin
    module.__path__, module.__package__ = spec.submodule_search_locations, spec.name
    sys.modules[spec.name] = module
    return list(spec.submodule_search_locations)


def defer_redis() -> None:
    if "redis" in sys.modules or "redis.asyncio" in sys.modules:
        return
    search = _defer("redis", None)
    if search is not None:
        _defer("redis.asyncio", search)
