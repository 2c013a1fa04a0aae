"""Unique sends: `add.apply_async((2, 2), unique_for=60)` (or `@app.task(unique_for=60)`).

While a message with the same task and arguments is queued or running (at most `unique_for`
seconds), a second send returns the first's result handle instead of queueing a duplicate.
The key is the task name and a hash of the arguments (JSON, keys sorted), or what the task's
`unique_key(args, kwargs)` returns. One script checks the key and publishes (broker
`publish_unique`); the ack that settles the message deletes the key in the same script
(`reserve.lua`, op `u`), so a crash between the two cannot leave a duplicate or a stale lock
beyond `unique_for`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from qdeploy.core import message

if TYPE_CHECKING:
    from qdeploy.core.app import App

MAX_KEY = 200  # characters of a key function's result
MAX_FOR = 10 * 365 * 86400


def unique_key(app: App, task: Any, args, kwargs, unique_for: Any) -> str:
    message.check_number("unique_for", unique_for, minimum=0.001)
    if unique_for > MAX_FOR:
        raise ValueError(f"unique_for must be at most {MAX_FOR} seconds (10 years), not {unique_for!r}")
    known = task if hasattr(task, "name") else app.tasks.get(task)
    name = known.name if known is not None else str(task)
    keyfn = getattr(known, "unique_key", None)
    if keyfn is not None:
        key = keyfn(list(args or ()), dict(kwargs or {}))
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY or not key.isprintable():
            raise ValueError(f"task {name}: unique_key must return a printable string of 1-{MAX_KEY} "
                             f"characters, not {str(key)[:40]!r}")
    else:
        try:
            text = json.dumps([list(args or ()), kwargs or {}], sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"task {name}: arguments must be JSON-serialisable ({exc})") from None
        import hashlib  # here: hashlib maps OpenSSL's libcrypto (~3.7 MiB) into every process that imports it

        key = hashlib.sha256(text.encode()).hexdigest()[:32]
    return f"{name}:{key}"[:512]
