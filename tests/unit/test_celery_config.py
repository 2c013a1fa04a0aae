"""Celery's configuration on an App (pure logic, no Redis): config_from_object in every form,
app.conf.X / update under new and old names, where each value goes, notes for what qdeploy does
not support, one-line errors for what it cannot use, task_routes, shared_task, autodiscover_tasks,
and `-A` resolution (qdeploy.core.discovery)."""

from __future__ import annotations

import re
import sys
import textwrap
import types

import pytest

from qdeploy import App, shared_task
from qdeploy.core import celery_settings as cs
from qdeploy.core.app import AppImportError
from qdeploy.core.config import ConfigurationError
from qdeploy.core.discovery import AppNotFound, find_app


@pytest.fixture
def package(tmp_path, monkeypatch):
    """Write modules into a directory on sys.path; forget them afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(relative: str, text: str) -> None:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(tmp_path).parents:
            if str(parent) != "." and not (tmp_path / parent / "__init__.py").exists():
                (tmp_path / parent / "__init__.py").write_text("")
        path.write_text(textwrap.dedent(text))
        written.append(relative.removesuffix(".py").removesuffix("/__init__").replace("/", "."))

    yield write
    for name in [m for m in sys.modules if any(m == w.split(".")[0] or m.startswith(w.split(".")[0] + ".")
                                                for w in written)]:
        del sys.modules[name]


# -- config_from_object ------------------------------------------------------------------------


def test_seed_002_old_names_from_a_module(package):
    package("wedo/config.py", """
        BROKER_URL = 'redis://10.8.238.2:6379/0'
        CELERY_RESULT_BACKEND = 'redis://10.8.238.2:6379/0'
        CELERY_RESULT_SERIALIZER = 'json'
        CELERY_TASK_RESULT_EXPIRES = 60 * 60 * 24
        CELERY_TIMEZONE='Asia/Shanghai'
        CELERY_IMPORTS = ('wedo.tasks', 'wedo.period_task')
    """)
    app = App("wedo")
    app.config_from_object("wedo.config")
    assert app.broker == "redis://10.8.238.2:6379/0" and app.conf.broker_url == app.broker
    assert app.result_backend == "redis://10.8.238.2:6379/0"
    assert app.result_ttl == 86400 and app.conf.timezone == "Asia/Shanghai"
    assert app.include == ["wedo.tasks", "wedo.period_task"]
    assert app.conf.BROKER_URL == app.conf.broker_url  # read back under either name
    assert app.conf.source_of("broker_url") == "wedo.config: BROKER_URL"
    assert app.conf.start_notes() == []


def test_django_settings_with_the_celery_namespace(package):
    package("site_settings.py", """
        TIME_ZONE = "Australia/Tasmania"
        DEBUG = True
        CELERY_BROKER_URL = "redis://127.0.0.1:6379/1"
        CELERY_TIMEZONE = TIME_ZONE
        CELERY_ENABLE_UTC = False
        CELERY_TASK_TRACK_STARTED = True
        CELERY_TASK_TIME_LIMIT = 30 * 60
        CELERY_RESULT_BACKEND = "django-db"
        CELERY_CACHE_BACKEND = "django-cache"
        CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
        CELERY_ACCEPT_CONTENT = ['application/json', ]
        CELERY_TASK_SERIALIZER = 'json'
        CELERY_WORKER_MAX_TASKS_PER_CHILD = 100
        CELERY_RESULT_EXPIRES = 0
        CELERY_ALWAYS_EAGER = False
        CELERY_TASK_TIME_LIMT = 5
        DJANGO_CELERY_BEAT_TZ_AWARE = False
    """)
    app = App("izone")
    app.config_from_object("site_settings", namespace="CELERY")
    assert app.broker == "redis://127.0.0.1:6379/1"
    assert app.result_backend is None, "django-db: results stay in the broker's Redis"
    assert app.conf.timezone == "Australia/Tasmania" and app.conf.enable_utc is False
    assert app.track_started is True and app.result_ttl == 0
    assert app.conf.service_settings("worker")["max_tasks_per_child"] == (100, "site_settings: CELERY_WORKER_MAX_TASKS_PER_CHILD")
    assert app.conf.service_settings("worker")["time_limit"][0] == 1800.0
    assert not app.conf.is_set("DEBUG"), "only CELERY_* settings are read with the namespace"

    @app.task
    def t():
        pass

    assert t.time_limit == 1800.0 and t.track_started is True
    notes = "\n".join(app.conf.start_notes())
    assert "CELERY_CACHE_BACKEND is not supported by qdeploy" in notes
    assert "CELERY_BEAT_SCHEDULER" in notes and "Django admin edits it" in notes
    assert "CELERY_RESULT_BACKEND = 'django-db'" in notes and "results stay in Redis" in notes
    assert "CELERY_TASK_TIME_LIMT is not a Celery setting" in notes and "CELERY_TASK_TIME_LIMIT" in notes
    assert "DJANGO_CELERY_BEAT_TZ_AWARE" not in notes  # not in the namespace: not Celery's


def test_dicts_classes_and_module_attributes():
    class Config:
        broker_url = "redis://h:6379/3"
        task_default_queue = "work"
        worker_concurrency = 3

    app = App("x")
    app.config_from_object(Config)
    assert app.broker == "redis://h:6379/3" and app.default_queue == "work"
    app.config_from_object({"task_ignore_result": True, "broker_transport_options": {"visibility_timeout": 120}})
    assert app.visibility_timeout == 120.0
    holder = types.ModuleType("holder_mod")
    holder.settings = {"task_acks_late": False}  # 'module:attr'
    sys.modules["holder_mod"] = holder
    try:
        app.config_from_object("holder_mod:settings")
    finally:
        del sys.modules["holder_mod"]

    @app.task
    def t():
        pass

    assert t.ignore_result is True and t.acks_late is False


def test_conf_attributes_and_update_are_honoured():
    app = App("x")
    app.conf.broker_url = "redis://10.0.0.2:6379/1"  # the issue: silently ignored before
    assert app.broker_url == "redis://10.0.0.2:6379/1"
    app.conf.result_backend = "redis://10.0.0.3:6379/2"
    assert app.result_backend == "redis://10.0.0.3:6379/2"
    app.conf.update(task_default_queue="q1", result_expires=60, CELERYD_PREFETCH_MULTIPLIER=4)
    assert app.default_queue == "q1" and app.result_ttl == 60
    assert any("CELERYD_PREFETCH_MULTIPLIER = 4 is ignored" in n for n in app.conf.start_notes())
    app.conf["task_track_started"] = True
    assert app.track_started is True and app.conf.get("nope", 5) == 5
    assert app.conf.task_default_queue == "q1" and app.conf.worker_concurrency is None  # unset: the default


def test_task_defaults_reach_tasks_defined_before_and_after_but_not_explicit_ones():
    app = App("x")

    @app.task
    def before():
        pass

    @app.task(acks_late=True, ignore_result=False)
    def explicit():
        pass

    app.conf.task_acks_late = False
    app.conf.task_ignore_result = True
    app.conf.task_default_rate_limit = "10/s"

    @app.task
    def after():
        pass

    assert before.acks_late is False and after.acks_late is False and before.ignore_result is True
    assert explicit.acks_late is True and explicit.ignore_result is False
    assert after.rate_limit == "10/s" and after.rate is not None
    app.conf.task_default_rate_limit = None
    assert after.rate_limit is None and after.rate is None


@pytest.mark.parametrize(("setting", "value", "expected"), [
    ("task_time_limit", "abc", "task_time_limit = 'abc': expected a number of seconds"),
    ("worker_concurrency", -1, "worker_concurrency = -1: expected a whole number from 0 to 1024"),
    ("worker_concurrency", "4", "expected a whole number"),
    ("task_acks_late", "maybe", "expected True or False"),
    ("task_serializer", "pickle", "JSON only"),
    ("CELERY_ACCEPT_CONTENT", ["pickle"], "holding 'json'"),
    ("imports", 42, "expected a list of module names"),
    ("task_routes", 42, "expected a dict of patterns"),
    ("task_routes", {"a.*": {"exchange": "media"}}, "no 'queue'"),
    ("broker_url", "amqp://guest:guest@localhost:5672//", "RabbitMQ (AMQP) is not supported"),
    ("BROKER_URL", "sqs://", "the sqs:// transport is not supported"),
    ("broker_transport_options", {"visibility_timeout": -5}, "expected a number of seconds"),
    ("worker_pool", "eventlet", "use 'threads'"),
    ("beat_schedule", ["x"], "expected a dict of entries"),
    ("result_expires", float("inf"), "expected a number of seconds"),
])
def test_a_setting_qdeploy_cannot_use_is_one_line_naming_it(setting, value, expected):
    app = App("x")
    with pytest.raises(ConfigurationError) as info:
        app.conf.update({setting: value})
    message = str(info.value)
    assert expected in message and "\n" not in message and setting in message
    assert "guest:guest" not in message, "a password in a URL is never shown"


def test_accept_content_keeps_json_and_notes_the_rest():
    app = App("x")
    app.conf.accept_content = ["json", "pickle", "yaml"]
    assert any("'pickle', 'yaml' ignored: qdeploy accepts JSON only" in n for n in app.conf.start_notes())


def test_config_objects_that_cannot_be_used(package):
    app = App("x")
    with pytest.raises(ConfigurationError, match=r"config_from_object\('no_such_config'\): cannot import 'no_such_config'"):
        app.config_from_object("no_such_config")
    app.config_from_object("no_such_config", silent=True)  # Celery's silent=True
    package("raising_config.py", "raise RuntimeError('half-written')\n")
    with pytest.raises(ConfigurationError, match="importing 'raising_config' raised RuntimeError: half-written"):
        app.config_from_object("raising_config")
    package("plain_settings.py", "BROKER_URL = 'redis://h/1'\nDEBUG = True\n")
    with pytest.raises(ConfigurationError) as info:
        app.config_from_object("plain_settings", namespace="CELERY")
    assert str(info.value) == ("plain_settings: no setting starts with CELERY_ (namespace='CELERY'); "
                               "BROKER_URL is there: did you mean CELERY_BROKER_URL?")
    with pytest.raises(ConfigurationError, match="has no attribute 'nope'"):
        app.config_from_object("plain_settings:nope")
    with pytest.raises(ConfigurationError, match="namespace must be a name"):
        app.config_from_object({}, namespace="CEL ERY")


def test_every_celery_setting_name_in_the_issue_is_known():
    issue = ["broker_url", "BROKER_URL", "result_backend", "CELERY_RESULT_BACKEND", "timezone", "enable_utc",
             "task_default_queue", "task_routes", "task_time_limit", "task_soft_time_limit", "task_acks_late",
             "task_ignore_result", "result_expires", "task_always_eager", "task_eager_propagates", "beat_schedule",
             "worker_concurrency", "worker_max_tasks_per_child", "worker_max_memory_per_child",
             "worker_prefetch_multiplier", "broker_transport_options", "task_serializer", "result_serializer",
             "accept_content", "imports", "include"]
    for name in issue:
        assert cs.canonical(name) in cs.BY_NAME, name
    assert not set(cs.BY_NAME) & set(cs.UNSUPPORTED)
    assert all(v in cs.UNSUPPORTED for v in cs.OLD_UNSUPPORTED.values())


def test_unsupported_and_unknown_settings_are_noted_once_each():
    app = App("x")
    app.conf.update(task_queues=[], broker_pool_limit=10, worker_hijack_root_logger=False, my_own_setting=1,
                    task_acks_lat=True)
    app.conf.broker_pool_limit = 20
    notes = app.conf.start_notes()
    assert len([n for n in notes if "broker_pool_limit" in n]) == 1
    assert any("task_queues is not supported by qdeploy" in n and "task_routes" in n for n in notes)
    assert any("task_acks_lat is not a Celery setting" in n and "'task_acks_late'" in n for n in notes)
    assert not any("my_own_setting" in n for n in notes), "a project's own setting is kept silently"
    assert app.conf.my_own_setting == 1


# -- task_routes ---------------------------------------------------------------------------------


def test_task_routes_dict_glob_regex_router_and_precedence():
    app = App("x")

    @app.task(name="feed.tasks.import_feed")
    def import_feed():
        pass

    @app.task(name="media.resize", queue="own")
    def resize():
        pass

    def route_task(name, args, kwargs, options, task=None, **kw):
        return {"queue": "routed-by-function"} if name == "other.task" else None

    app.conf.task_routes = [{"feed.tasks.import_feed": {"queue": "feeds"}, "media.*": "media",
                             re.compile(r"(video|image)\.tasks\..*"): {"queue": "av"}}, route_task]
    assert app.envelope(import_feed).queue == "feeds"
    assert app.envelope("video.tasks.cut").queue == "av"
    assert app.envelope("other.task").queue == "routed-by-function"
    assert app.envelope("unrouted.task").queue == "default"
    assert app.envelope(resize).queue == "own", "the task's own queue wins over the routes"
    assert app.envelope(import_feed, queue="now").queue == "now", "and the call's over both"
    app.conf.task_routes = ("tests.unit.test_celery_config._bad_router",)
    with pytest.raises(ValueError, match="gives 'no spaces allowed'"):
        app.envelope("x.y")
    app.conf.task_routes = "no.such.module.router"
    with pytest.raises(ValueError, match="cannot import router 'no.such.module.router'"):
        app.envelope("x.y")


def _bad_router(name, args, kwargs, options, task=None, **kw):
    return "no spaces allowed"


# -- shared_task, autodiscover_tasks ---------------------------------------------------------------


def test_shared_task_before_any_app_is_bound_to_the_current_one():
    @shared_task(name="shared.mul")
    def mul(x, y):
        return x * y

    first = App("first")
    assert "shared.mul" in first.tasks and mul.app is first
    second = App("second")
    assert mul.app is second and "shared.mul" in second.tasks, "the current app: the newest"
    assert mul(3, 4) == 12 and mul.name == "shared.mul"
    assert mul.s(1, 2).task == "shared.mul"

    @shared_task(bind=True)
    def bound(self):
        return self.name

    assert bound.app is second and bound().endswith("bound")
    first.set_default()
    assert mul.app is first
    with pytest.raises(TypeError, match="keyword options only"):
        shared_task("x")


def test_autodiscover_tasks_imports_related_modules_and_skips_missing_ones(package):
    package("pkg_a/tasks.py", "from qdeploy import shared_task\n@shared_task\ndef a():\n    return 'a'\n")
    package("pkg_b/__init__.py", "")
    package("pkg_c/tasks.py", "import no_such_dependency\n")
    app = App("x")
    app.autodiscover_tasks(["pkg_a", "pkg_b"])
    assert "pkg_a.tasks.a" not in app.tasks, "lazy: imported when the worker loads the app"
    app.import_includes()
    assert "pkg_a.tasks.a" in app.tasks
    with pytest.raises(AppImportError, match=r"cannot import pkg_c.tasks .*No module named 'no_such_dependency'"):
        app.autodiscover_tasks(["pkg_c"], force=True)
    with pytest.raises(TypeError):
        app.autodiscover_tasks("pkg_a")
    with pytest.raises(TypeError):
        app.autodiscover_tasks(["pkg_a"], related_name="not a module")


# -- -A ------------------------------------------------------------------------------------------


def test_find_app_resolves_like_celery(package):
    package("proj/__init__.py", "from .celery import app as celery_app\n")
    package("proj/celery.py", "from qdeploy import Celery\napp = Celery('proj')\n")
    package("flat.py", "from qdeploy import Celery\nmy_app = Celery('flat')\n")
    package("tasks_cma/task.py", "from qdeploy import Celery\napp = Celery('cma')\n")
    package("two.py", "from qdeploy import App\na = App('a')\nb = App('b')\n")
    package("none_here.py", "X = 1\n")
    proj = find_app("proj")
    assert proj.main == "proj" and find_app("proj.celery:app") is proj and find_app("proj.celery") is proj
    assert find_app("proj:celery_app") is proj and find_app("proj.celery.app") is proj
    assert find_app("flat").main == "flat", "the only App in the module"
    assert find_app("tasks_cma.task").main == "cma"
    with pytest.raises(AppNotFound) as info:
        find_app("two")
    assert str(info.value) == "'two' holds 2 qdeploy Apps (two:a, two:b): name one with -A module:attribute"
    with pytest.raises(AppNotFound, match="'none_here' names no qdeploy App"):
        find_app("none_here")
    with pytest.raises(AppNotFound, match="cannot import app 'nothing_at_all'.*current directory"):
        find_app("nothing_at_all")
    with pytest.raises(AppNotFound, match="has no attribute 'nope'"):
        find_app("proj.celery:nope")
    with pytest.raises(AppNotFound, match="is not a qdeploy App"):
        find_app("none_here:X")


def test_a_module_raising_while_importing_is_one_line(package):
    package("broken_proj/__init__.py", "")
    package("broken_proj/celery.py", "from qdeploy import Celery\napp = Celery('b')\napp.conf.worker_concurrency = 'many'\n")
    with pytest.raises(AppNotFound) as info:
        find_app("broken_proj")
    assert str(info.value).startswith("cannot import app 'broken_proj.celery': ConfigurationError: app.conf.worker_concurrency")


def test_the_settings_map_in_the_docs_lists_every_setting():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "from-celery.md").read_text()
    for spec in cs.SPECS:
        row = f"| `{spec.name}` | " + (", ".join(f"`{o}`" for o in spec.old) or "—") + " | "
        assert row in doc, f"docs/from-celery.md: no row for {spec.name} (regenerate the settings map)"
