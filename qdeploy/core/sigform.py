"""The JSON form of signatures and of `apply_async` options, checked the same way where a
producer builds them and where a consumer reads them from a message (a message may come from
anywhere: a signature in it is data, never trusted).

A signature is Celery's dict: `{"task", "args", "kwargs", "options", "subtask_type",
"immutable"}`; `subtask_type` is None for a task, or "chain" / "group" (kwargs `{"tasks": [...]}`)
or "chord" (kwargs `{"header": <group>, "body": <signature>}`).
"""

from __future__ import annotations

import math
from typing import Any

from qdeploy.core import message

KEYS = frozenset({"task", "args", "kwargs", "options", "subtask_type", "immutable"})
TYPES = (None, "chain", "group", "chord")
MAX_NODES = 100_000  # signatures in one message, all nested levels together

_ID_OPTIONS = ("task_id", "group_id", "parent_id", "root_id")
_SECONDS = ("countdown", "eta", "expires")
_LIMITS = ("time_limit", "soft_time_limit")


def _number(name: str, value, minimum: float | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"option {name} must be a finite number, not {str(value)[:40]!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"option {name} must be >= {minimum:g}, not {value!r}")


def _check_id(name: str, value) -> None:
    if value is not None:
        message.check_text(name, value, message.TASK_ID.fullmatch)


def check_options(options: Any, depth: int = 0, budget: list | None = None) -> None:
    """The options of a signature (what `apply_async` takes), as JSON values."""
    from qdeploy.core.producer import OPTIONS

    if not isinstance(options, dict):
        raise TypeError(f"signature options must be an object, not {type(options).__name__}")
    for name, value in options.items():
        if name not in OPTIONS:
            raise ValueError(f"unknown option {str(name)[:40]!r} in a signature")
        if name in _SECONDS:
            _number(name, value)
        elif name in _LIMITS:
            _number(name, value, 0.0)
        elif name == "unique_for":
            _number(name, value, 0.0)
        elif name in _ID_OPTIONS:
            _check_id(name, value)
        elif name == "queue" and value is not None:
            message.check_text("queue", value, message.QUEUE_NAME.fullmatch)
        elif name in ("max_retries", "group_index", "retries") and value is not None:
            message.check_count(name, value)
        elif name in ("ignore_result", "retry", "immutable") and value is not None and not isinstance(value, bool):
            raise TypeError(f"option {name} must be true or false")
        elif name in ("headers", "retry_policy") and value is not None and not isinstance(value, dict):
            raise TypeError(f"option {name} must be an object")
        elif name == "serializer" and value not in (None, "json"):
            raise ValueError(f"option serializer must be 'json', not {str(value)[:20]!r}")
        elif name == "priority" and value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError("option priority must be an integer")
        elif name in ("link", "link_error", "chain"):
            check_signatures(value if isinstance(value, list) else [value] if value is not None else [],
                             depth, budget)
        elif name == "chord" and value is not None:
            check_chord(value, depth, budget)


def check_signature(sig: Any, depth: int = 0, budget: list | None = None) -> None:
    """One signature (and everything nested in it), or TypeError/ValueError saying what is wrong."""
    budget = budget if budget is not None else [MAX_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"more than {MAX_NODES} signatures in one message")
    if depth > message.MAX_DEPTH:
        raise ValueError(f"signatures nested more than {message.MAX_DEPTH} levels deep")
    if not isinstance(sig, dict):
        raise TypeError(f"a signature must be an object, not {type(sig).__name__}")
    unknown = set(sig) - KEYS
    if unknown:
        raise ValueError(f"a signature has unknown keys {sorted(map(str, unknown))[:5]}")
    message.check_text("signature task name", sig.get("task"), message._is_task_name)
    kind = sig.get("subtask_type")
    if kind not in TYPES:
        raise ValueError(f"unknown signature type {str(kind)[:20]!r}")
    args, kwargs = sig.get("args", []), sig.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise TypeError("a signature's args must be a list and its kwargs an object")
    if not isinstance(sig.get("immutable", False), bool):
        raise TypeError("a signature's immutable must be true or false")
    check_options(sig.get("options", {}), depth + 1, budget)
    if kind in ("chain", "group"):
        tasks = kwargs.get("tasks")
        if not isinstance(tasks, list) or set(kwargs) != {"tasks"}:
            raise ValueError(f"a {kind} signature needs kwargs {{'tasks': [...]}}")
        check_signatures(tasks, depth + 1, budget)
    elif kind == "chord":
        if set(kwargs) - {"header", "body", "kwargs"} or "header" not in kwargs or "body" not in kwargs:
            raise ValueError("a chord signature needs kwargs {'header': group, 'body': signature}")
        check_signature(kwargs["header"], depth + 1, budget)
        if kwargs["header"].get("subtask_type") != "group":
            raise ValueError("a chord's header must be a group")
        check_signature(kwargs["body"], depth + 1, budget)


def check_signatures(sigs: Any, depth: int = 0, budget: list | None = None) -> None:
    if not isinstance(sigs, list):
        raise TypeError(f"expected a list of signatures, not {type(sigs).__name__}")
    budget = budget if budget is not None else [MAX_NODES]
    for sig in sigs:
        check_signature(sig, depth, budget)


def check_chord(chord: Any, depth: int = 0, budget: list | None = None) -> None:
    if not isinstance(chord, dict) or set(chord) - {"id", "body", "task", "errbacks"}:
        raise ValueError("chord must be an object with id, body, task and errbacks")
    message.check_text("chord id", chord.get("id"), message.TASK_ID.fullmatch)
    message.check_text("chord body id", chord.get("body"), message.TASK_ID.fullmatch)
    message.check_text("chord body task", chord.get("task"), message._is_task_name)
    check_signatures(chord.get("errbacks", []), depth + 1, budget)


def check_v2_fields(extra: dict) -> None:
    """The v2 fields of an envelope (message.V2_FIELDS)."""
    budget = [MAX_NODES]
    for name, value in extra.items():
        if name == "headers":
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise TypeError("headers must be an object")
        elif name in ("parent_id", "root_id", "group"):
            message.check_text(name, value, message.TASK_ID.fullmatch)
        elif name == "group_index":
            message.check_count("group_index", value)
        elif name in ("callbacks", "errbacks", "chain"):
            check_signatures(value, 0, budget)
        elif name == "chord":
            check_chord(value, 0, budget)
        elif name == "errback":
            check_errback(value)
        elif name == "unique":
            message.check_text("unique key", value, lambda v: 0 < len(v) <= 512 and v.isprintable())


def check_errback(value: Any) -> None:
    if not isinstance(value, dict) or set(value) != {"request", "exc", "traceback"}:
        raise ValueError("errback must be an object with request, exc and traceback")
    exc, request = value["exc"], value["request"]
    if not isinstance(request, dict) or not isinstance(request.get("id"), str):
        raise TypeError("errback request must be an object with an id")
    if not isinstance(exc, dict) or not isinstance(exc.get("type"), str) or not isinstance(exc.get("message"), str):
        raise TypeError("errback exc must be an object with type and message")
    if not isinstance(value["traceback"], (str, type(None))):
        raise TypeError("errback traceback must be a string")
