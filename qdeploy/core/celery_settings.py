"""Celery's settings, under their new names and their old upper-case ones, and what qdeploy does
with each: the table `app.conf`, `config_from_object` and docs/from-celery.md's settings map use.

A setting qdeploy has an equivalent for is a `Spec`: its checker (a wrong type is one
`ValueError("expected ...")`), where its value goes (`targets`) and its default. Where it goes:

    app.<attr>     an App attribute (the broker URL, the result store, the default queue...)
    task.<attr>    a default of every task of the app that does not set the option itself
    worker.<key>   a `qdeploy worker` setting, below qdeploy.toml, $QDEPLOY_* and flags
    beat.<key>     a `qdeploy beat` setting, the same way
    conf           kept in `app.conf` and read where it is used (timezone, eager mode...)

A Celery setting with no equivalent is in `UNSUPPORTED` with what to do instead: the worker and
beat log one warning per such setting at start (never silence). Pure data and checkers: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

# -- checkers: value -> normalised value, or ValueError("expected ...") --------------------------


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise ValueError("expected True or False")


def seconds(value: Any, *, none_ok: bool = True) -> float | None:
    if value is None and none_ok:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError("expected a number of seconds >= 0 (or a timedelta)")
    return float(value)


def whole(low: int = 0, high: int = 10**9, none_ok: bool = True) -> Callable[[Any], int | None]:
    def check(value: Any) -> int | None:
        if value is None and none_ok:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value
    return check


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise ValueError("expected a non-empty string")
    return value


def optional_text(value: Any) -> str | None:
    return None if value in (None, "") else text(value)


def module_list(value: Any) -> list[str]:
    """`imports`/`include`: a list or tuple of module names (one name alone is taken too)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(m, str) and m for m in value):
        raise ValueError("expected a list of module names, e.g. ('proj.tasks',)")
    return list(value)


def json_serializer(value: Any) -> str:
    if isinstance(value, str) and value.lower() in ("json", "application/json"):
        return "json"
    raise ValueError(f"expected 'json': qdeploy's messages and results are JSON only ({value!r} would run code "
                     "chosen by whoever can write to Redis, or is not spoken here)")


def content_types(value: Any) -> list[str]:
    """accept_content: JSON must be in it; other types are noted (`notes`)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of content types, e.g. ['json']")
    if not any(v.lower() in ("json", "application/json") for v in value):
        raise ValueError("expected a list holding 'json' (or 'application/json'): qdeploy speaks JSON only")
    return list(value)


def mapping(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError("expected a dict")
    return value


def beat_schedule(value: Any) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError("expected a dict of entries: {'name': {'task': ..., 'schedule': ...}}")
    return value


def routes(value: Any):
    """task_routes: a dict (names or glob patterns -> {'queue': ...} or a queue name), a router
    callable, a 'module.function' path, or a list/tuple of those (checked again when used)."""
    if value is None or isinstance(value, (dict, str)) or callable(value):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(r, (dict, str)) or callable(r) for r in value):
        return list(value)
    raise ValueError("expected a dict of patterns, a router function, or a list of them")


def task_protocol(value: Any) -> int:
    if value in (1, 2) and not isinstance(value, bool):
        return int(value)
    raise ValueError("expected 1 or 2")


def timezone(value: Any) -> str | None:
    """A zone name (checked where it is used: beat refuses an unknown one at start, a send with a
    naive eta= datetime raises)."""
    if value in (None, ""):
        return None
    if isinstance(value, str) and value.isprintable() and len(value) <= 100:
        return value
    raise ValueError("expected an IANA time zone name such as 'Asia/Shanghai' or 'UTC'")


def pool(value: Any) -> str:
    if value in ("eventlet", "gevent"):
        raise ValueError(f"expected prefork, threads or solo: qdeploy has no {value} pool; use 'threads' "
                         "(worker_concurrency threads in one supervised child) for I/O-bound tasks")
    if value not in ("prefork", "threads", "solo"):
        raise ValueError("expected 'prefork', 'threads' or 'solo'")
    return value


def rate(value: Any) -> str | None:
    if value is None:
        return None
    from qdeploy.core.task import parse_rate

    try:
        parse_rate(value)
    except (ValueError, TypeError):
        raise ValueError("expected a rate such as '100/m' (or None)") from None
    return value


def transport_options(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError("expected a dict such as {'visibility_timeout': 3600}")
    if "visibility_timeout" in value:
        seconds(value["visibility_timeout"], none_ok=False)
        if not value["visibility_timeout"]:
            raise ValueError("expected visibility_timeout > 0 seconds")
    return value


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    name: str  # Celery's (new, lower-case) name
    check: Callable[[Any], Any]
    targets: tuple[str, ...]  # where the value goes (see the module docstring)
    default: Any = None  # what app.conf.<name> reads when nothing set it
    old: tuple[str, ...] = ()  # Celery's old upper-case names
    meaning: str = ""  # what qdeploy does with it (docs/from-celery.md's settings map)


def _s(name: str, check, targets, default=None, old=(), meaning="") -> Spec:
    return Spec(name, check, tuple(targets) if not isinstance(targets, str) else (targets,), default,
                (old,) if isinstance(old, str) else tuple(old), meaning)


SPECS: tuple[Spec, ...] = (
    _s("broker_url", optional_text, "app.broker", None, "BROKER_URL",
       "the broker: a redis://, rediss://, unix://, sentinel:// or sentinels:// URL (amqp:// is refused)"),
    _s("result_backend", optional_text, "app.result_backend", None, "CELERY_RESULT_BACKEND",
       "where results live: a Redis URL; 'django-db'/'django-cache'/'rpc://' keep them in the broker's Redis "
       "(a note at start; the Django admin shows them with qdeploy.contrib.django)"),
    _s("timezone", timezone, "conf", None, "CELERY_TIMEZONE", "the zone of crontabs and of naive eta= datetimes"),
    _s("enable_utc", boolean, "conf", True, "CELERY_ENABLE_UTC", "as in Celery"),
    _s("task_default_queue", text, "app.default_queue", "default", "CELERY_DEFAULT_QUEUE",
       "the queue of tasks without a queue (qdeploy's default: 'default'; Celery's: 'celery')"),
    _s("task_routes", routes, "app.routes", None, "CELERY_ROUTES",
       "a dict of task names or glob patterns -> {'queue': ...} (or a queue name), a router function "
       "(name, args, kwargs, options, task=None, **kw) -> {'queue': ...} or a queue name, or a list of them"),
    _s("task_time_limit", seconds, ("task.time_limit", "worker.time_limit"), None, "CELERYD_TASK_TIME_LIMIT",
       "hard time limit of every task (and the worker's default)"),
    _s("task_soft_time_limit", seconds, ("task.soft_time_limit", "worker.soft_time_limit"), None,
       "CELERYD_TASK_SOFT_TIME_LIMIT", "soft time limit of every task (and the worker's default)"),
    _s("task_acks_late", boolean, "task.acks_late", True, "CELERY_ACKS_LATE",
       "qdeploy's default is True (at-least-once); False acks a task before it runs"),
    _s("task_ignore_result", boolean, "task.ignore_result", False, "CELERY_IGNORE_RESULT", "as in Celery"),
    _s("task_track_started", boolean, "app.track_started", False, "CELERY_TRACK_STARTED", "as in Celery"),
    _s("task_default_rate_limit", rate, "task.rate_limit", None, "CELERY_DEFAULT_RATE_LIMIT",
       "the rate limit of tasks without one (fleet-wide in qdeploy)"),
    _s("result_expires", seconds, "app.result_ttl", 86400, "CELERY_TASK_RESULT_EXPIRES",
       "seconds (or a timedelta) results are kept; 0 or None: forever. Redis expires them: no cleanup task"),
    _s("task_always_eager", boolean, "conf", False, "CELERY_ALWAYS_EAGER", "as in Celery"),
    _s("task_eager_propagates", boolean, "conf", False, "CELERY_EAGER_PROPAGATES_EXCEPTIONS", "as in Celery"),
    _s("task_protocol", task_protocol, "conf", 2, "CELERY_TASK_PROTOCOL",
       "1 while workers of the previous qdeploy release run"),
    _s("task_serializer", json_serializer, "conf", "json", "CELERY_TASK_SERIALIZER", "'json' only"),
    _s("result_serializer", json_serializer, "conf", "json", "CELERY_RESULT_SERIALIZER", "'json' only"),
    _s("event_serializer", json_serializer, "conf", "json", "CELERY_EVENT_SERIALIZER", "'json' only"),
    _s("accept_content", content_types, "conf", ["json"], "CELERY_ACCEPT_CONTENT",
       "must hold 'json'; other types are noted at start and never accepted"),
    _s("result_accept_content", content_types, "conf", None, (), "as accept_content"),
    _s("imports", module_list, "app.include", [], "CELERY_IMPORTS", "modules the worker and beat import at start"),
    _s("include", module_list, "app.include", [], "CELERY_INCLUDE", "as imports"),
    _s("beat_schedule", beat_schedule, "conf", {}, "CELERYBEAT_SCHEDULE",
       "periodic tasks: interval, crontab, solar (checked when beat starts)"),
    _s("beat_max_loop_interval", seconds, "beat.max_interval", None, "CELERYBEAT_MAX_LOOP_INTERVAL",
       "the longest sleep between schedule checks"),
    _s("beat_scheduler", text, "conf", None, "CELERYBEAT_SCHEDULER",
       "noted at start: beat's schedule lives in Redis; the Django admin edits it with qdeploy.contrib.django"),
    _s("beat_schedule_filename", text, "conf", None, "CELERYBEAT_SCHEDULE_FILENAME",
       "noted at start: beat keeps its state in Redis, not in a file"),
    _s("worker_concurrency", whole(0, 1024), "worker.concurrency", None, "CELERYD_CONCURRENCY",
       "children per node (0/None: one per CPU)"),
    _s("worker_max_tasks_per_child", whole(0), "worker.max_tasks_per_child", None, "CELERYD_MAX_TASKS_PER_CHILD",
       "recycle a child after this many tasks"),
    _s("worker_max_memory_per_child", whole(0), "worker.max_memory_per_child", None,
       "CELERYD_MAX_MEMORY_PER_CHILD", "KiB; recycle a child whose current (not peak) memory is above it"),
    _s("worker_prefetch_multiplier", whole(0, 10**6), "conf", 1, "CELERYD_PREFETCH_MULTIPLIER",
       "qdeploy reserves one task per free thread (as 1, always fair); another value is noted at start"),
    _s("worker_send_task_events", boolean, "worker.task_events", False, "CELERY_SEND_EVENTS",
       "publish task events, as -E"),
    _s("worker_pool", pool, "worker.pool", None, "CELERYD_POOL", "prefork, threads or solo"),
    _s("broker_transport_options", transport_options, "app.transport_options", {}, "BROKER_TRANSPORT_OPTIONS",
       "visibility_timeout: how long before the tasks of a worker that stopped heartbeating are redelivered "
       "(qdeploy's default 30 s: a live worker's long or ETA tasks are never redelivered); other keys are noted"),
    _s("task_create_missing_queues", boolean, "conf", True, "CELERY_CREATE_MISSING_QUEUES",
       "queues need no declaration in qdeploy (False is noted)"),
)

BY_NAME: dict[str, Spec] = {s.name: s for s in SPECS}
OLD_NAMES: dict[str, str] = {old: s.name for s in SPECS for old in s.old}

# Celery settings qdeploy has no equivalent for: one warning at start, with what to do.
_AMQP = "qdeploy's broker is Redis: there are no exchanges or bindings; route with task_routes / queue="
_REDIS_URL = "put connection options in the broker URL (rediss:// for TLS, ?socket_timeout=...)"
_LOGGING = "use -l/--loglevel, --log-format text|json, or a setup_logging receiver"
UNSUPPORTED: dict[str, str] = {
    **dict.fromkeys((
        "task_queues", "task_default_exchange", "task_default_exchange_type", "task_default_routing_key",
        "task_default_delivery_mode", "worker_direct", "event_exchange", "control_exchange", "result_exchange",
        "result_exchange_type", "task_queue_max_priority", "task_default_priority", "task_inherit_parent_priority",
        "broker_native_delayed_delivery_queue_type", "task_default_queue_type", "worker_detect_quorum_queues",
    ), _AMQP),
    **dict.fromkeys((
        "broker_use_ssl", "broker_connection_timeout", "broker_heartbeat", "broker_heartbeat_checkrate",
        "broker_pool_limit", "broker_login_method", "broker_read_url", "broker_write_url",
        "broker_failover_strategy", "broker_transport", "redis_backend_use_ssl", "redis_max_connections",
        "redis_socket_connect_timeout", "redis_socket_timeout", "redis_retry_on_timeout", "redis_socket_keepalive",
        "redis_backend_health_check_interval", "result_backend_transport_options", "broker_channel_error_retry",
    ), _REDIS_URL),
    **dict.fromkeys((
        "worker_hijack_root_logger", "worker_log_color", "worker_log_format", "worker_task_log_format",
        "worker_redirect_stdouts", "worker_redirect_stdouts_level",
    ), _LOGGING),
    "broker_connection_retry": "a worker reconnects by itself while running; at start an unreachable broker is exit 3",
    "broker_connection_retry_on_startup": "an unreachable broker at start is exit 3, so systemd's restart "
                                          "policy retries (Restart=on-failure in the rendered units)",
    "broker_connection_max_retries": "a running worker retries forever; at start see broker_connection_retry_on_startup",
    "cache_backend": "qdeploy keeps results in Redis only; there is no cache backend",
    "cache_backend_options": "qdeploy keeps results in Redis only; there is no cache backend",
    "result_extended": "qdeploy's result records always carry the task name, worker and dates",
    "result_persistent": "results live in Redis with a TTL (result_expires)",
    "result_compression": "messages and results are plain JSON",
    "task_compression": "messages and results are plain JSON",
    "result_cache_max": "AsyncResult reads Redis each time; nothing is cached",
    "result_chord_join_timeout": "a chord's body is sent by the ack of its last header task: nothing joins",
    "result_chord_retry_interval": "a chord's body is sent by the ack of its last header task: nothing polls",
    "result_backend_always_retry": "a result is stored in the same script as the ack",
    "result_backend_max_retries": "a result is stored in the same script as the ack",
    "result_backend_thread_safe": "the result store's client is thread-safe",
    "task_publish_retry": "pass retry=/retry_policy= to apply_async",
    "task_publish_retry_policy": "pass retry=/retry_policy= to apply_async",
    "task_annotations": "set the option on the task (@app.task(rate_limit=...)) or its base class",
    "task_store_eager_result": "an eager task's result stays in its EagerResult",
    "task_store_errors_even_if_ignored": "qdeploy stores failures of ignore_result tasks always",
    "task_remote_tracebacks": "AsyncResult.traceback holds the worker's traceback text",
    "task_acks_on_failure_or_timeout": "a failed or timed-out task is acked with its FAILURE result",
    "task_reject_on_worker_lost": "a task whose child dies is always requeued (acks_late)",
    "task_send_sent_event": "task-sent events are published while events are on (-E)",
    "task_allow_error_cb_on_chord_header": "error callbacks run for the chord's body",
    "worker_disable_rate_limits": "rate limits are fleet-wide in Redis; remove rate_limit= instead",
    "worker_enable_remote_control": "the control channel is always on (qdeploy control / inspect)",
    "worker_state_db": "revokes and results live in Redis: nothing to keep on disk",
    "worker_timer_precision": "ETA tasks are due to the millisecond in Redis",
    "worker_lost_wait": "a dead child's tasks are requeued at once",
    "worker_pool_restarts": "`qdeploy worker` reloads on HUP",
    "worker_autoscaler": "use --autoscale=MAX,MIN",
    "worker_consumer": "not configurable",
    "worker_timer": "not configurable",
    "worker_agent": "not configurable",
    "worker_cancel_long_running_tasks_on_connection_loss": "tasks keep running; their acks wait for Redis",
    "worker_soft_shutdown_timeout": "use graceful_timeout ([worker] in qdeploy.toml, --graceful-timeout)",
    "worker_enable_soft_shutdown_on_idle": "a warm shutdown of an idle worker is immediate",
    "worker_deduplicate_successful_tasks": "use unique_for= on the task",
    "worker_proc_alive_timeout": "a child that does not come up is reported by the master",
    "worker_enable_prefetch_count_reduction": "qdeploy never prefetches more than one task per thread",
    "beat_sync_every": "beat's state is written to Redis with every run",
    "beat_cron_starting_deadline": "use misfire_grace ([beat] in qdeploy.toml)",
    "event_queue_ttl": "events are pub/sub: nothing is queued", "event_queue_expires": "events are pub/sub",
    "event_queue_prefix": "events are pub/sub", "control_queue_ttl": "control is pub/sub",
    "control_queue_expires": "control is pub/sub", "control_queue_durable": "control is pub/sub",
    "control_queue_exclusive": "control is pub/sub",
    "security_key": "message signing is not supported: use rediss:// and Redis ACLs",
    "security_certificate": "message signing is not supported: use rediss:// and Redis ACLs",
    "security_cert_store": "message signing is not supported: use rediss:// and Redis ACLs",
    "security_digest": "message signing is not supported", "security_key_password": "message signing is not supported",
    "override_backends": "results live in Redis only",
    "database_url": "results live in Redis only", "database_engine_options": "results live in Redis only",
    "database_short_lived_sessions": "results live in Redis only", "database_table_names": "results live in Redis only",
    "database_table_schemas": "results live in Redis only",
}
# Old upper-case names of the unsupported ones (so they are named in the warning as written).
OLD_UNSUPPORTED: dict[str, str] = {
    "BROKER_USE_SSL": "broker_use_ssl", "BROKER_CONNECTION_TIMEOUT": "broker_connection_timeout",
    "BROKER_HEARTBEAT": "broker_heartbeat", "BROKER_POOL_LIMIT": "broker_pool_limit",
    "BROKER_CONNECTION_RETRY": "broker_connection_retry", "BROKER_CONNECTION_MAX_RETRIES": "broker_connection_max_retries",
    "BROKER_FAILOVER_STRATEGY": "broker_failover_strategy", "BROKER_LOGIN_METHOD": "broker_login_method",
    "BROKER_TRANSPORT": "broker_transport", "CELERY_CACHE_BACKEND": "cache_backend",
    "CELERY_CACHE_BACKEND_OPTIONS": "cache_backend_options", "CELERY_QUEUES": "task_queues",
    "CELERY_DEFAULT_EXCHANGE": "task_default_exchange", "CELERY_DEFAULT_EXCHANGE_TYPE": "task_default_exchange_type",
    "CELERY_DEFAULT_ROUTING_KEY": "task_default_routing_key", "CELERY_DEFAULT_DELIVERY_MODE": "task_default_delivery_mode",
    "CELERY_RESULT_PERSISTENT": "result_persistent", "CELERY_MESSAGE_COMPRESSION": "result_compression",
    "CELERY_MAX_CACHED_RESULTS": "result_cache_max", "CELERY_TASK_PUBLISH_RETRY": "task_publish_retry",
    "CELERY_TASK_PUBLISH_RETRY_POLICY": "task_publish_retry_policy", "CELERY_ANNOTATIONS": "task_annotations",
    "CELERY_SEND_TASK_SENT_EVENT": "task_send_sent_event", "CELERY_WORKER_DIRECT": "worker_direct",
    "CELERY_DISABLE_RATE_LIMITS": "worker_disable_rate_limits",
    "CELERY_ENABLE_REMOTE_CONTROL": "worker_enable_remote_control",
    "CELERYD_HIJACK_ROOT_LOGGER": "worker_hijack_root_logger", "CELERYD_LOG_COLOR": "worker_log_color",
    "CELERYD_LOG_FORMAT": "worker_log_format", "CELERYD_TASK_LOG_FORMAT": "worker_task_log_format",
    "CELERYD_REDIRECT_STDOUTS": "worker_redirect_stdouts", "CELERYD_STATE_DB": "worker_state_db",
    "CELERYD_TIMER_PRECISION": "worker_timer_precision", "CELERYD_WORKER_LOST_WAIT": "worker_lost_wait",
    "CELERYD_POOL_RESTARTS": "worker_pool_restarts", "CELERYD_AUTOSCALER": "worker_autoscaler",
    "CELERYBEAT_SYNC_EVERY": "beat_sync_every", "CELERY_SECURITY_KEY": "security_key",
    "CELERY_SECURITY_CERTIFICATE": "security_certificate", "CELERY_SECURITY_CERT_STORE": "security_cert_store",
    "CELERY_RESULT_EXTENDED": "result_extended", "CELERY_EVENT_QUEUE_TTL": "event_queue_ttl",
}
# The prefixes of Celery's setting names: an unknown name with one of them is probably a typo.
PREFIXES = ("broker_", "result_", "task_", "worker_", "beat_", "event_", "control_", "security_", "redis_",
            "database_", "cache_", "celery", "celeryd_", "celerybeat_")


def canonical(name: str) -> str | None:
    """Celery's new name of `name` (a new name, an old upper-case one, or either upper-cased as a
    namespace leaves it); None if it is no Celery setting at all."""
    if name in BY_NAME or name in UNSUPPORTED:
        return name
    if name in OLD_NAMES:
        return OLD_NAMES[name]
    if name in OLD_UNSUPPORTED:
        return OLD_UNSUPPORTED[name]
    lower = name.lower()
    if name.isupper() and (lower in BY_NAME or lower in UNSUPPORTED):
        return lower
    return None


def looks_like_a_setting(name: str) -> bool:
    return name.lower().startswith(PREFIXES) or name.upper().startswith(("CELERY", "BROKER_"))


def suggestion(name: str) -> str | None:
    import difflib

    close = difflib.get_close_matches(name.lower(), list(BY_NAME) + list(UNSUPPORTED), n=1, cutoff=0.75)
    return close[0] if close else None
