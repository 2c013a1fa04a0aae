"""The task message: a versioned JSON envelope, and nothing else (never pickle).

An envelope is the only thing a producer and a consumer agree on. `encode()` turns one into the
compact JSON stored in Redis; `decode()` validates raw bytes from Redis and either returns an
`Envelope` or raises `MalformedMessage` with a one-line reason that ends up in the dead-letter
queue. See docs/protocol.md for the field table.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

VERSION = 2  # the newest envelope this code reads and writes
VERSIONS = (1, 2)  # every version it reads; a newer one is left for a worker that can
MAX_BODY = 16 * 1024 * 1024  # a message larger than this is refused, not parsed
MAX_DEPTH = 16  # signatures nested in a message (callbacks of callbacks, chains in chords...)

_ORIGIN = f"{socket.gethostname()}:{os.getpid()}"
TASK_ID = re.compile(r"[!-~]{1,255}")  # visible ASCII: safe in every key, log line and event line
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
LIMITS = {"soft": "soft_time_limit", "hard": "time_limit"}  # envelope key -> option name


class MalformedMessage(ValueError):
    """A message that can never run; `reason` says why, in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UnsupportedVersion(MalformedMessage):
    """A well-formed message of a newer envelope version: not ours to run, nor to dead-letter."""

    def __init__(self, version: int):
        super().__init__(f"envelope v{version} is newer than this worker reads (v{VERSIONS[0]}-v{VERSIONS[-1]})")
        self.version = version


@dataclass(slots=True)
class Envelope:
    id: str
    task: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    queue: str = "default"
    eta: float | None = None
    expires: float | None = None
    retries: int = 0
    max_retries: int | None = None
    limits: dict = field(default_factory=dict)  # {"soft": seconds, "hard": seconds}
    ignore_result: bool = False
    created: float = 0.0
    origin: str = ""
    v: int = 1  # the version it was read as (encode writes v2 only when `ext` holds something)
    # The v2 fields that are set (V2_FIELDS), read and written as attributes (`env.callbacks`):
    # a plain message has none and pays nothing for them.
    ext: dict | None = None

    def is_v2(self) -> bool:
        return bool(self.ext)

    def is_expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (now if now is not None else time.time()) >= self.expires

    def next_retry(self, eta: float | None) -> Envelope:
        data = asdict(self)
        data.update(retries=self.retries + 1, eta=eta)
        return Envelope(**data)

    if TYPE_CHECKING:  # the v2 attributes: properties over `ext` (_v2_attribute), declared for mypy
        headers: dict | None = None
        parent_id: str | None = None
        root_id: str | None = None
        group: str | None = None
        group_index: int | None = None
        callbacks: list | tuple = ()  # link=: signatures called with the result
        errbacks: list | tuple = ()  # link_error=
        chain: list | tuple = ()  # the steps after this one, next first
        chord: dict | None = None  # a chord header task: {"id", "body" (its id), "task", "errbacks"}
        errback: dict | None = None  # this call is an error callback: {"request", "exc", "traceback"}
        unique: str | None = None  # the unique-send key this message holds (released when it settles)


def _empty(value) -> bool:
    return value is None or (isinstance(value, (list, tuple, dict)) and not value)


def _v2_attribute(name: str, default):
    def get(self):
        ext = self.ext
        return ext.get(name, default) if ext else default

    def set(self, value):
        if _empty(value):
            if self.ext:
                self.ext.pop(name, None)
        elif self.ext is None:
            self.ext = {name: value}
        else:
            self.ext[name] = value

    return property(get, set)


def new_id() -> str:
    """A random (version 4) UUID string, as str(uuid.uuid4()) but ~3x cheaper."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def build(task: str, args=(), kwargs=None, *, queue: str, task_id: str | None = None,
          eta: float | None = None, expires: float | None = None, retries: int = 0,
          max_retries: int | None = None, limits: dict | None = None,
          ignore_result: bool = False, **v2) -> Envelope:
    """A new envelope for `task`, every option checked here, at the producer: TypeError for a
    value of the wrong type, ValueError for one out of range. `args` must be JSON-serialisable
    (checked by `encode`)."""
    if not isinstance(kwargs, (dict, type(None))):
        raise TypeError(f"kwargs must be a dict, not {type(kwargs).__name__}")
    if isinstance(args, (str, bytes, dict)) or not hasattr(args, "__iter__"):
        raise TypeError(f"args must be a list or tuple, not {type(args).__name__}")
    check_text("task name", task, _is_task_name)
    check_text("queue", queue, QUEUE_NAME.fullmatch)
    if task_id is not None:
        check_text("task_id", task_id, TASK_ID.fullmatch)
    eta = check_number("eta", eta, expected="a datetime or a unix time")
    expires = check_number("expires", expires, expected="a datetime or a unix time")
    check_count("retries", retries)
    if max_retries is not None:
        check_count("max_retries", max_retries)
    limits = dict(limits or {})
    for key in limits:
        if key not in LIMITS:
            raise ValueError(f"unknown time limit {key!r} (expected {' or '.join(LIMITS)})")
        limits[key] = check_number(LIMITS[key], limits[key], minimum=0.0)
    if not isinstance(ignore_result, bool):
        raise TypeError(f"ignore_result must be True or False, not {type(ignore_result).__name__}")
    extra = None
    if v2:
        unknown = v2.keys() - V2_FIELDS
        if unknown:
            raise TypeError(f"unknown envelope fields {sorted(unknown)}")
        extra = {k: v for k, v in v2.items() if not _empty(v)} or None
        if extra:
            try:
                _check_v2(extra)
            except MalformedMessage as exc:
                raise ValueError(exc.reason) from None
    return Envelope(id=task_id or new_id(), task=task, args=list(args), kwargs=dict(kwargs or {}),
                    queue=queue, eta=eta, expires=expires, retries=retries,
                    max_retries=max_retries, limits={k: v for k, v in limits.items() if v is not None},
                    ignore_result=ignore_result, created=time.time(), origin=_ORIGIN, v=2 if extra else 1,
                    ext=extra)


_NAME = re.compile(r"\S{1,255}")  # \S: not str.isspace(), whatever the script


def _is_task_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None and name.isprintable()


def check_text(what: str, value, valid) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    if not valid(value):
        raise ValueError(f"invalid {what} {value[:60]!r}")
    return value


def check_number(what: str, value, minimum: float | None = None, expected: str = "a number of seconds") -> float | None:
    """None, or a finite int/float (not a bool) >= minimum."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be {expected}, not {type(value).__name__} {str(value)[:40]!r}")
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise ValueError(f"{what} must be a finite number{f' >= {minimum:g}' if minimum is not None else ''}, not {value!r}")
    return value


def check_count(what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, not {value}")
    return value


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode(env: Envelope, version: int | None = None) -> str:
    """Compact JSON; raises TypeError naming the field when a value is not JSON. A message that
    needs nothing of v2 is written as v1 (fields at their default left out, as every v1 reader
    allows), so a worker of the previous release still runs it during a rolling upgrade;
    `version=1` refuses a message that needs v2 (`app.conf.task_protocol = 1`)."""
    v2 = bool(env.ext)
    if v2 and version == 1:
        raise ValueError(f"task {env.task!r}: this message needs envelope v2 ({', '.join(_v2_fields(env))}), "
                         "but app.conf.task_protocol is 1 (set while workers of the previous release run)")
    data: dict[str, object] = {"v": 2 if v2 else 1, "id": env.id, "task": env.task}
    if env.ignore_result:  # right after the name: the reserve script reads both there (reserve.lua)
        data["ignore_result"] = True
    data["args"], data["kwargs"], data["queue"] = env.args, env.kwargs, env.queue
    # The optional fields only when they differ from the default a reader assumes (every release
    # reads them so): a plain task's message is ~60 bytes shorter, cheaper to write, store and read.
    if env.eta is not None:
        data["eta"] = env.eta
    if env.expires is not None:
        data["expires"] = env.expires
    if env.retries:
        data["retries"] = env.retries
    if env.max_retries is not None:
        data["max_retries"] = env.max_retries
    if env.limits:
        data["limits"] = env.limits
    data["created"], data["origin"] = env.created, env.origin
    if v2:
        data.update(_v2_fields(env))
    try:
        return _dumps(data)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"task {env.task!r}: arguments must be JSON-serialisable ({exc})") from None


def _v2_fields(env: Envelope) -> dict:
    ext = env.ext or {}
    return {name: list(ext[name]) if isinstance(ext[name], tuple) else ext[name] for name in _V2_ORDER
            if name in ext and not _empty(ext[name])}


V2_FIELDS = frozenset({"headers", "parent_id", "root_id", "group", "group_index", "callbacks", "errbacks",
                       "chain", "chord", "errback", "unique"})
_V2_ORDER = ("headers", "parent_id", "root_id", "group", "group_index", "callbacks", "errbacks", "chain", "chord",
             "errback", "unique")
for _name in _V2_ORDER:
    setattr(Envelope, _name, _v2_attribute(_name, () if _name in ("callbacks", "errbacks", "chain") else None))

# field -> (accepted types, required)
_NUM = (int, float)
_SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "id": ((str,), True), "task": ((str,), True), "args": ((list,), True),
    "kwargs": ((dict,), True), "queue": ((str,), True), "eta": (_NUM + (type(None),), False),
    "expires": (_NUM + (type(None),), False), "retries": ((int,), False),
    "max_retries": ((int, type(None)), False), "limits": ((dict,), False),
    "ignore_result": ((bool,), False), "created": (_NUM, False), "origin": ((str,), False),
}


_V1_KEYS = frozenset(_SCHEMA) | {"v"}
_V2_KEYS = _V1_KEYS | V2_FIELDS


def decode(raw: bytes | str) -> Envelope:
    """Validate and parse one stored message; MalformedMessage says what is wrong."""
    if isinstance(raw, bytes):
        if raw[:1] == b"\x80":
            raise MalformedMessage("pickle payloads are never accepted (JSON only)")
        if len(raw) > MAX_BODY:
            raise MalformedMessage(f"message is {len(raw)} bytes, larger than {MAX_BODY}")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessage("message is not UTF-8 text") from None
    try:
        data = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError as exc:
        raise MalformedMessage(f"message is not valid JSON ({exc.args[0][:80]})") from None
    except RecursionError:
        raise MalformedMessage("message is nested too deeply") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"message is a JSON {type(data).__name__}, expected an object")
    version = data.get("v")
    if type(version) is int and version > VERSION and isinstance(data.get("id"), str):
        raise UnsupportedVersion(version)
    if type(version) is not int or version not in VERSIONS:  # `true == 1` in Python: not a version
        raise MalformedMessage(f"unsupported envelope version {version!r} (this worker reads v1-v{VERSION})")
    for name, (types, required) in _SCHEMA.items():
        if name not in data:
            if required:
                raise MalformedMessage(f"envelope field {name!r} is missing")
            continue
        value = data[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise MalformedMessage(f"envelope field {name!r} has type {type(value).__name__}")
    unknown = data.keys() - (_V2_KEYS if version == 2 else _V1_KEYS)
    if unknown:
        raise MalformedMessage(f"envelope v{version} has unknown fields {sorted(unknown)[:10]}")
    if version == 2:
        extra = {name: data.pop(name) for name in _V2_ORDER if name in data}
        if extra:
            _check_v2(extra)
            data["ext"] = extra
    if not data["id"] or not data["task"]:
        raise MalformedMessage("envelope 'id' and 'task' must be non-empty")
    try:  # the values, as the producer checked them (a message may come from anywhere)
        check_text("task id", data["id"], TASK_ID.fullmatch)
        check_text("task name", data["task"], _is_task_name)
        check_text("queue", data["queue"], QUEUE_NAME.fullmatch)
        check_count("retries", data.get("retries", 0))
        if data.get("max_retries") is not None:
            check_count("max_retries", data["max_retries"])
        for key, value in data.get("limits", {}).items():
            if key not in LIMITS:
                raise ValueError(f"unknown time limit {key[:20]!r}")
            check_number(LIMITS[key], value, minimum=0.0)
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"envelope: {exc}") from None
    return Envelope(**data)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN/Infinity; encode() refuses them


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def peek_id(raw: bytes | str) -> str | None:
    """Best effort: the id of a possibly malformed message, for recording a FAILURE result."""
    try:
        data = json.loads(raw)
        return data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
    except (ValueError, TypeError, UnicodeDecodeError):
        return None



def _check_v2(extra: dict) -> None:
    """The v2 fields, as strictly as the v1 ones: MalformedMessage says which and why."""
    from qdeploy.core import sigform

    try:
        sigform.check_v2_fields(extra)
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"envelope: {exc}") from None
