"""`GroupResult`: the results of a group (or a chord's header), read in batches."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from qdeploy.core.results import FAILURE, PENDING, READY_STATES, REVOKED, SUCCESS, AsyncResult, ResultTimeout, _app_or_current

if TYPE_CHECKING:
    from qdeploy.core.app import App


class GroupResult:
    """The results of a group, in order: `get` (all values), `ready`, `successful`, `failed`,
    `waiting`, `completed_count`, `revoke`, `forget`; `results`/`children` the members."""

    def __init__(self, id: str | None = None, results: list | None = None, app: App | None = None,
                 parent: AsyncResult | GroupResult | None = None):
        self.id = id
        self.results: list = list(results or [])
        self.app = _app_or_current(app)
        self.parent = parent

    children = property(lambda self: self.results)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results[:5])}{', ...' if len(self.results) > 5 else ''}]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self):
        return iter(self.results)

    def __getitem__(self, index):
        return self.results[index]

    def _metas(self) -> list[dict]:
        """Each member's record (one MGET per 1000; ready ones are cached)."""
        flat = [r for r in self.results if isinstance(r, AsyncResult)]
        todo = [r for r in flat if r._cache is None]
        fresh = {}
        for res, meta in zip(todo, self.app.results.get_many([r.id for r in todo]), strict=True):
            res._seen(meta or {"state": PENDING})
            fresh[id(res)] = meta or {"state": PENDING}
        return [r._cache or fresh[id(r)] for r in flat]

    def _states(self) -> list[str]:
        out = [m["state"] for m in self._metas()]
        for member in self.results:
            if isinstance(member, GroupResult):
                out += member._states()
        return out

    def ready(self) -> bool:
        return all(s in READY_STATES for s in self._states())

    def successful(self) -> bool:
        return all(s == SUCCESS for s in self._states())

    def failed(self) -> bool:
        return any(s == FAILURE for s in self._states())

    def waiting(self) -> bool:
        return not self.ready()

    def completed_count(self) -> int:
        """How many members finished successfully (Celery's meaning)."""
        return sum(s == SUCCESS for s in self._states())

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.05, **_ignored) -> list:
        """Wait for every member; their values in order (the first error raised if `propagate`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while True:
            states = self._states()
            if propagate and any(s in (FAILURE, REVOKED) for s in states):
                break
            if all(s in READY_STATES for s in states):
                break
            if deadline is not None and time.monotonic() >= deadline:
                done = sum(s in READY_STATES for s in states)
                raise ResultTimeout(f"group {self.id}: {done} of {len(states)} results ready after {timeout}s")
            time.sleep(delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, interval)
        out = []
        for member in self.results:
            if isinstance(member, GroupResult):
                out.append(member.get(timeout=0, propagate=propagate) if member.ready() or propagate else None)
                continue
            meta = member._meta()
            if propagate and meta["state"] in (FAILURE, REVOKED):
                member.maybe_throw()
            out.append(member._value(meta))
        return out

    join = get

    def revoke(self, terminate: bool = False, signal: Any = None, **_ignored) -> None:
        for member in self.results:
            member.revoke(terminate=terminate)

    def forget(self) -> None:
        for member in self.results:
            member.forget()

    def save(self) -> GroupResult:
        """Keep the member ids in Redis, so `app.GroupResult.restore(id)` finds them later."""
        if not self.id:
            raise ValueError("a GroupResult needs an id to be saved")
        self.app.results.client.set(self.app.results.keys.group(self.id), json.dumps([r.id for r in self.results]),
                                    ex=self.app.results.ttl or None)
        return self

    @classmethod
    def restore(cls, id: str, app: App | None = None) -> GroupResult | None:
        app = _app_or_current(app)
        raw = app.results.client.get(app.results.keys.group(id))
        if not raw:
            return None
        ids = json.loads(raw)
        return cls(id, [AsyncResult(i, app) for i in ids if isinstance(i, str)], app=app)


def bound_to(app: App) -> type:
    """`app.GroupResult`: the class with this app as the default (Celery's bound classes)."""
    class Bound(GroupResult):
        def __init__(self, id=None, results=None, app=app, parent=None):
            super().__init__(id, results, app=app, parent=parent)

        @classmethod
        def restore(cls, id: str, app: App | None = app) -> GroupResult | None:
            return GroupResult.restore(id, app)

    Bound.__name__ = Bound.__qualname__ = "GroupResult"
    return Bound
