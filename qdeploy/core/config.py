"""`app.conf`: Celery's configuration object, and `config_from_object`'s loading.

    app.config_from_object('django.conf:settings', namespace='CELERY')   # CELERY_BROKER_URL, ...
    app.config_from_object('proj.celeryconfig')                          # broker_url or BROKER_URL
    app.conf.update(task_time_limit=60, worker_concurrency=4)
    app.conf.broker_url = 'redis://10.0.0.2:6379/1'

Every setting is stored under Celery's new name (an old upper-case name, or a namespaced one,
is translated: `qdeploy.core.celery_settings`), checked when it is set (a wrong type raises
`ConfigurationError`, one line naming the setting and where it came from), and applied where it
belongs: an App attribute (the broker URL...), the defaults of the app's tasks, or a worker/beat
setting that `qdeploy worker`/`qdeploy beat` read below qdeploy.toml, $QDEPLOY_* and flags.
Celery settings qdeploy does not support, and values it takes differently, are kept as notes
that the worker and beat log once each at start (`start_notes`).
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from qdeploy.core import celery_settings as cs


class ConfigurationError(ValueError):
    """A setting that cannot be used as given (wrong type, unusable value, a config object that
    does not import): one line naming it and where it came from."""


class Conf:
    """Celery's `app.conf`: attributes and items under Celery's names (new or old), `update()`,
    `get()`, `setdefault()`. Unknown keys are kept too (a custom setting of the project)."""

    def __init__(self, **settings):
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_sources", {})
        object.__setattr__(self, "_notes", {})  # setting -> the note logged at start
        object.__setattr__(self, "_app", None)
        if settings:
            self.update(settings)

    def _bind(self, app) -> None:
        object.__setattr__(self, "_app", weakref.ref(app))
        for name, value in list(self._values.items()):  # set before the app existed (Conf(...) given)
            self._apply(name, value)

    # -- reading -----------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        key = cs.canonical(name) or name
        if key in self._values:
            return self._values[key]
        spec = cs.BY_NAME.get(key)
        if spec is not None:
            if isinstance(spec.default, (dict, list)):  # app.conf.beat_schedule[name] = ... must stick
                value = self._values[key] = _copy(spec.default)
                return value
            return spec.default
        raise AttributeError(f"app.conf has no setting {name!r}")

    def fast(self, key: str, default: Any) -> Any:
        """The value of `key`, a setting's new (canonical) name, without the translation of old
        and namespaced names: for what every send reads. `default` is the setting's own."""
        return self._values.get(key, default)

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (cs.canonical(name) or name) in self._values

    def keys(self) -> list[str]:
        return list(self._values)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._values))

    def source_of(self, name: str) -> str | None:
        """Where the value of `name` came from ("app.conf.broker_url", "proj.settings: CELERY_BROKER_URL")."""
        return self._sources.get(cs.canonical(name) or name)

    def is_set(self, name: str) -> bool:
        return (cs.canonical(name) or name) in self._values

    # -- writing -----------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        self.set(name, value, f"app.conf.{name}")

    def __setitem__(self, name: str, value: Any) -> None:
        self.set(name, value, f"app.conf[{name!r}]")

    def __delattr__(self, name: str) -> None:
        self._values.pop(cs.canonical(name) or name, None)

    def setdefault(self, name: str, value: Any) -> Any:
        if name not in self:
            self.set(name, value, f"app.conf.setdefault({name!r})")
        return self[name]

    def update(self, mapping: Mapping | None = None, **settings) -> None:
        """`app.conf.update({...}, key=value)` (Celery's); each checked as it is set."""
        items = {**dict(mapping or {}), **settings}
        for name, value in items.items():
            self.set(name, value, f"app.conf.update: {name}")

    def set(self, name: str, value: Any, source: str) -> None:
        """Set `name` (any of Celery's spellings) from `source`: checked, stored, applied."""
        if not isinstance(name, str):
            raise ConfigurationError(f"{source}: setting names are strings, not {type(name).__name__}")
        key = cs.canonical(name)
        if key is None:
            if cs.looks_like_a_setting(name):
                close = cs.suggestion(name)
                self._notes[name] = (f"{source} is not a Celery setting qdeploy knows"
                                     + (f" (did you mean {close!r}?)" if close else "") + "; it is kept but unused")
            self._values[name] = value
            self._sources[name] = source
            return
        if key in cs.UNSUPPORTED:
            self._notes[key] = f"{source} is not supported by qdeploy, ignored: {cs.UNSUPPORTED[key]}"
            self._values[key] = value
            self._sources[key] = source
            return
        spec = cs.BY_NAME[key]
        try:
            checked = spec.check(value)
        except ValueError as exc:
            raise ConfigurationError(f"{source} = {_show(value)}: {exc}") from None
        self._values[key] = checked
        self._sources[key] = source
        self._notes.pop(key, None)
        note = _note(key, checked, name, source)
        if note:
            self._notes[key] = note
        self._apply(key, checked)

    def _store(self, key: str, value: Any, source: str) -> None:
        """Record a value the app set itself (App(broker=...), app.configure): no re-apply."""
        self._values[key] = value
        self._sources[key] = source

    def _apply(self, key: str, value: Any) -> None:
        app = self._app() if self._app is not None else None
        spec = cs.BY_NAME.get(key)
        if app is None or spec is None:
            return
        for target in spec.targets:
            kind, _, attr = target.partition(".")
            try:
                if kind == "app":
                    app._setting_changed(attr, value, key)
                elif kind == "task":
                    app._task_default_changed(attr, value)
            except ValueError as exc:
                raise ConfigurationError(f"{self._sources.get(key, key)} = {_show(value)}: {exc}") from None

    # -- what the services read ----------------------------------------------------------------
    def service_settings(self, section: str) -> dict[str, tuple[Any, str]]:
        """{qdeploy key: (value, source)} of the settings that go to `worker.<key>` or `beat.<key>`."""
        out = {}
        for key, value in self._values.items():
            spec = cs.BY_NAME.get(key)
            if spec is None or value is None:
                continue
            for target in spec.targets:
                if target.startswith(section + "."):
                    out[target.partition(".")[2]] = (value, self._sources.get(key, key))
        return out

    def start_notes(self) -> list[str]:
        """The notes the worker and beat log once each at start (unsupported settings...)."""
        return list(self._notes.values())

    def add_note(self, key: str, text: str) -> None:
        self._notes[key] = text

    def __repr__(self) -> str:
        return f"<Conf {sorted(self._values)}>"


def _copy(value: Any) -> Any:
    return type(value)(value) if isinstance(value, (dict, list)) else value


def _show(value: Any) -> str:
    from qdeploy.core.urls import redact_text

    shown = redact_text(repr(value))
    return shown if len(shown) <= 60 else shown[:57] + "..."


_DJANGO_BACKENDS = ("django-db", "django-cache")


def _note(key: str, value: Any, name: str, source: str) -> str | None:
    """A value qdeploy takes, but differently from Celery: said once at start."""
    if key == "worker_prefetch_multiplier" and value not in (None, 1):
        return (f"{source} = {value} is ignored: a qdeploy worker reserves one task per free thread "
                "(as 1: a long task never holds back others)")
    if key == "beat_scheduler":
        return (f"{source} = {value!r} is ignored: beat's schedule lives in Redis (qdeploy schedule ...); "
                "with 'qdeploy.contrib.django' in INSTALLED_APPS the Django admin edits it live")
    if key == "beat_schedule_filename":
        return f"{source} is ignored: beat keeps its state in Redis, not in a file"
    if key in ("accept_content", "result_accept_content"):
        others = [v for v in value if v.lower() not in ("json", "application/json")]
        if others:
            return f"{source}: {', '.join(map(repr, others))} ignored: qdeploy accepts JSON only"
    if key == "task_create_missing_queues" and value is False:
        return f"{source} = False is ignored: qdeploy queues exist as soon as a task is sent to them"
    if key == "broker_transport_options":
        others = sorted(k for k in value if k != "visibility_timeout")
        vt = value.get("visibility_timeout")
        parts = []
        if vt is not None and vt > 300:
            parts.append(f"visibility_timeout = {vt:g}: the tasks of a worker that stopped heartbeating come back "
                         f"after {vt:g} s; a live worker's long or ETA tasks are never redelivered in qdeploy, so "
                         "the default (30 s) is safe")
        if others:
            parts.append(f"{', '.join(others)} ignored (Redis transport options of Celery)")
        return f"{source}: " + "; ".join(parts) if parts else None
    if key == "result_backend" and isinstance(value, str) and (value in _DJANGO_BACKENDS or value.startswith(
            ("rpc://", "db+", "cache+", "django"))):
        return (f"{source} = {value!r}: results stay in Redis (the broker's, or a redis:// result_backend); "
                "the Django admin shows them with 'qdeploy.contrib.django' in INSTALLED_APPS")
    return None


def result_store_url(value: str | None) -> str | None:
    """result_backend as the App takes it: a Redis URL, or None (the broker's Redis) for the
    stores qdeploy replaces (django-db, django-cache, rpc://, db+...)."""
    if value is None:
        return None
    if value in _DJANGO_BACKENDS or value.startswith(("rpc://", "db+", "cache+", "django")):
        return None
    return value


# Broker URL schemes of Celery's other transports: each is refused with what to use instead.
OTHER_TRANSPORTS = ("amqp", "amqps", "pyamqp", "librabbitmq", "qpid", "sqs", "kafka", "mongodb", "zookeeper",
                    "filesystem", "memory", "sqla", "sqlalchemy", "consul", "etcd", "azurestoragequeues",
                    "azureservicebus", "gcpubsub", "django")


def check_transport(url: str | None, where: str) -> None:
    """An AMQP (RabbitMQ) or other non-Redis broker URL: one error saying what to use instead."""
    if not isinstance(url, str):
        return
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme.partition("+")[0] in OTHER_TRANSPORTS:
        what = "RabbitMQ (AMQP)" if "amqp" in scheme else f"the {scheme}:// transport"
        prefix = f"{where}: " if where else ""
        raise ConfigurationError(f"{prefix}qdeploy's broker is Redis; {what} is not supported: expected a URL "
                                 "starting with redis://, rediss://, unix://, sentinel:// or sentinels://, such as "
                                 "redis://127.0.0.1:6379/0 (queues and task_routes replace exchanges)")


# -- config_from_object ------------------------------------------------------------------------


def load_object(obj: Any) -> Any:
    """`'module'`, `'module:attr'`, `'module.attr'`, `'django.conf:settings'` or the object itself."""
    if not isinstance(obj, str):
        return obj
    module_name, sep, attr = obj.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not sep and "." in obj and exc.name == module_name:  # 'module.attr'
            parent, _, attr = obj.rpartition(".")
            try:
                return getattr(importlib.import_module(parent), attr)
            except (ImportError, AttributeError):
                pass
        raise ConfigurationError(f"config_from_object({obj!r}): cannot import {module_name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the config module itself raising while importing
        raise ConfigurationError(f"config_from_object({obj!r}): importing {module_name!r} raised "
                                 f"{type(exc).__name__}: {exc}") from None
    if not sep:
        return module
    try:
        target: Any = module
        for part in attr.split("."):
            target = getattr(target, part)
        return target
    except AttributeError:
        raise ConfigurationError(f"config_from_object({obj!r}): {module_name!r} has no attribute {attr!r}") from None
    except Exception as exc:  # noqa: BLE001 - django.conf.settings raises ImproperlyConfigured when read
        raise ConfigurationError(f"config_from_object({obj!r}): reading {attr!r} raised "
                                 f"{type(exc).__name__}: {exc}") from None


def items_of(obj: Any, namespace: str | None, where: str) -> dict[str, Any]:
    """The settings an object holds: a dict's items, else its public attributes (a module, a
    class, Django's settings). With `namespace='CELERY'` only `CELERY_*` keys, the prefix cut."""
    if isinstance(obj, Mapping):
        raw = dict(obj)
    else:
        try:
            names = [n for n in dir(obj) if not n.startswith("_")]
            raw = {}
            for n in names:
                value = getattr(obj, n)
                if not (callable(value) and not isinstance(value, type) and n.islower() and cs.canonical(n) is None):
                    raw[n] = value
        except Exception as exc:  # noqa: BLE001 - a settings object raising when read (ImproperlyConfigured)
            raise ConfigurationError(f"{where}: reading the settings raised {type(exc).__name__}: {exc}") from None
    if not namespace:
        return {k: v for k, v in raw.items() if isinstance(k, str) and (cs.canonical(k) or cs.looks_like_a_setting(k))
                and not _is_module(v)}
    prefix = namespace.rstrip("_") + "_"
    found = {k[len(prefix):]: v for k, v in raw.items() if isinstance(k, str) and k.startswith(prefix)}
    if not found:
        unprefixed = sorted((k for k in raw if isinstance(k, str) and cs.canonical(k) and not k.startswith(prefix)),
                            key=lambda k: (cs.canonical(k) != "broker_url", k))
        hint = ""
        if unprefixed:
            key = unprefixed[0]
            spelled = key.removeprefix("CELERY_") if key.isupper() else str(cs.canonical(key)).upper()
            hint = f"; {key} is there: did you mean {prefix}{spelled}?"
        raise ConfigurationError(f"{where}: no setting starts with {prefix} (namespace={namespace!r}){hint}")
    out = {}
    for short, value in found.items():
        # CELERY_BROKER_URL -> BROKER_URL -> broker_url; CELERY_ALWAYS_EAGER (an old name) as it is
        out[short if cs.canonical(short) else prefix + short if cs.canonical(prefix + short) else short] = value
    return out


def _is_module(value: Any) -> bool:
    import types

    return isinstance(value, types.ModuleType)
