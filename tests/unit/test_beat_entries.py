"""Beat entries (pure logic): where they come from, how they are validated, one-line errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from qdeploy.core.app import App
from qdeploy.beat.entry import EntryError, dynamic_spec, from_json, load_entries, parse_entry
from qdeploy.beat.store import from_us, run_id, to_us
from qdeploy.generator.config import ConfigError, load
from qdeploy.beat.schedule import crontab, every

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_celery_style_beat_schedule_with_every_schedule_form():
    app = App("u")
    app.conf.timezone, app.conf.enable_utc = "Asia/Shanghai", False
    app.conf.beat_schedule = {
        "low-task": {"task": "celery_task.tasks.low", "schedule": timedelta(seconds=3), "args": (300, 150)},
        "add-every-30-seconds": {"task": "tasks.add", "schedule": 30.0, "args": (16, 16)},
        "monday": {"task": "tasks.add", "schedule": crontab(hour=7, minute=30, day_of_week=1)},
        "quarter": {"task": "tasks.add", "schedule": "*/15 * * * *", "kwargs": {"x": 1},
                    "options": {"queue": "periodic", "expires": 10}},
        "five": {"task": "tasks.add", "schedule": "5m"},
    }
    entries = load_entries(app.conf.beat_schedule, tz=SHANGHAI, source="app")
    assert entries["low-task"].schedule == every(3) and entries["low-task"].args == [300, 150]
    assert entries["add-every-30-seconds"].schedule == every(30)
    assert entries["five"].schedule == every("5m")
    quarter = entries["quarter"]
    assert quarter.schedule == crontab.from_string("*/15 * * * *", tz=SHANGHAI)
    assert quarter.options == {"queue": "periodic", "expires": 10.0} and quarter.kwargs == {"x": 1}
    assert entries["monday"].source == "app"


def test_add_periodic_task_and_decorator_fill_the_same_table():
    app = App("u")

    @app.task(name="t.hello")
    def hello(arg):
        return arg

    app.add_periodic_task(10.0, hello, args=("hello",), name="add every 10")
    app.add_periodic_task(30.0, "t.hello", args=("world",), expires=10)

    @app.periodic_task("1h", kwargs={"n": 2}, name="hourly", queue="q1")
    def hourly(n):
        return n

    entries = load_entries(app.conf.beat_schedule, tz=timezone.utc, source="app")
    assert set(entries) == {"add every 10", "t.hello", "hourly"}
    assert entries["t.hello"].options == {"expires": 10.0}
    assert entries["hourly"].kwargs == {"n": 2} and hourly.queue == "q1"
    assert app.tasks["tests.unit.test_beat_entries.test_add_periodic_task_and_decorator_fill_the_same_table.<locals>.hourly"]


@pytest.mark.parametrize("name, raw, message", [
    ("x", {"schedule": "5m"}, "app schedule entry 'x': missing 'task'"),
    ("x", {"task": "t"}, "app schedule entry 'x': missing 'schedule'"),
    ("x", {"task": "t", "schedule": "soon"}, "app schedule entry 'x': schedule: bad schedule 'soon'"),
    ("x", {"task": "t", "schedule": "61 * * * *"}, "app schedule entry 'x': schedule: minute '61' is out of range 0-59"),
    ("x", {"task": "t", "schedule": {"minit": 5}}, "(did you mean 'minute'?)"),
    ("x", {"task": "t", "schedule": "5m", "arg": [1]}, "app schedule entry 'x': unknown key 'arg'"),
    ("x", {"task": "t", "schedule": "5m", "args": "1,2"}, "app schedule entry 'x': args must be a list"),
    ("x", {"task": "t", "schedule": "5m", "kwargs": [1]}, "kwargs must be a table with string keys"),
    ("x", {"task": "t", "schedule": "5m", "args": [object()]}, "args and kwargs must be JSON-serialisable"),
    ("x", {"task": "t", "schedule": "5m", "options": {"queue": "a b"}}, "queue must be a queue name"),
    ("x", {"task": "t", "schedule": "5m", "options": {"priority": 1}}, "unknown option 'priority'"),
    ("x", {"task": "t", "schedule": "5m", "options": {"expires": -1}}, "expires must be a positive number"),
    ("x", {"task": "", "schedule": "5m"}, "task must be a task name"),
    ("x", {"task": "t", "schedule": 0}, "must be positive"),
    ("x", "5m", "expected a table with 'task' and 'schedule'"),
    ("bad\nname", {"task": "t", "schedule": "5m"}, "must be printable text on one line"),
    (" padded", {"task": "t", "schedule": "5m"}, "without leading or trailing spaces"),
    ("n" * 201, {"task": "t", "schedule": "5m"}, "is too long (201 characters; at most 200)"),
    ("", {"task": "t", "schedule": "5m"}, "must be a non-empty string"),
    (3, {"task": "t", "schedule": "5m"}, "must be a non-empty string"),
])
def test_bad_entries_are_one_line_naming_the_entry(name, raw, message):
    with pytest.raises(EntryError) as err:
        parse_entry(name, raw, tz=None, source="app")
    text = str(err.value)
    assert message in text and "\n" not in text and len(text) < 300


def test_unicode_and_spaces_inside_names_are_fine():
    assert parse_entry("每天 早上", {"task": "t", "schedule": "@daily"}, tz=None, source="app").name == "每天 早上"


def test_config_file_schedule_is_validated_at_load_time(isolated, write_config):
    write_config('[beat.schedule.report]\ntask = "proj.report"\nschedule = "0 8 * * mon"\n'
                 'args = [1]\n[beat.schedule.report.options]\nqueue = "reports"\n')
    cfg = load()
    assert cfg["beat.schedule"]["report"]["options"] == {"queue": "reports"}
    write_config('[beat.schedule.report]\ntask = "proj.report"\nschedule = "0 8 * * moon"\n')
    with pytest.raises(ConfigError) as err:
        load()
    text = str(err.value)
    assert "config schedule entry 'report': schedule: unknown day_of_week 'moon'" in text
    assert "\n" not in text and err.value.exit_code == 2
    write_config('timezone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError, match="timezone = 'Mars/Olympus': expected an IANA timezone"):
        load()


def test_dynamic_specs_round_trip_and_refuse_garbage():
    spec = dynamic_spec("d", "t.add", {"cron": "0 8 * * *", "timezone": "Asia/Shanghai"}, args=[1],
                        kwargs={"k": 2}, queue="q", expires=30)
    entry = from_json("d", spec, tz=None)
    assert entry.schedule == crontab.from_string("0 8 * * *", tz="Asia/Shanghai") and entry.source == "redis"
    assert entry.options == {"queue": "q", "expires": 30.0}
    with pytest.raises(EntryError, match="stored value is not JSON"):
        from_json("d", b"\x80garbage", tz=None)
    with pytest.raises(EntryError, match="too large"):
        dynamic_spec("d", "t.add", {"every": "5m"}, args=["x" * 70000])
    with pytest.raises(EntryError, match="'every': .*|bad interval"):
        dynamic_spec("d", "t.add", {"every": "soon"})


def test_run_ids_are_per_entry_and_slot_and_times_round_trip_exactly():
    slot = datetime(2025, 3, 9, 7, 0, 0, 123456, tzinfo=timezone.utc)
    assert run_id("ns", "a", slot) == run_id("ns", "a", slot.astimezone(SHANGHAI))
    assert len({run_id("ns", "a", slot), run_id("ns", "b", slot), run_id("ns2", "a", slot),
                run_id("ns", "a", slot + timedelta(microseconds=1))}) == 4
    assert from_us(to_us(slot)) == slot and to_us(slot) == 1741503600123456


def test_rendered_effective_config_keeps_the_schedule_and_reloads(isolated, write_config):
    from click.testing import CliRunner

    from qdeploy.cli import main

    write_config('executable = "/usr/bin/qdeploy"\ntimezone = "Asia/Shanghai"\n'
                 '[beat.schedule."every morning"]\ntask = "proj.report"\n'
                 'schedule = { cron = "0 8 * * mon-fri", timezone = "Europe/Berlin" }\n'
                 'args = [1, "two"]\nkwargs = { flag = true }\noptions = { queue = "reports", expires = 60 }\n')
    done = CliRunner().invoke(main, ["render", "--only", "config", "--out", "build"])
    assert done.exit_code == 0, done.output
    rendered = next((isolated / "build").rglob("qdeploy.toml"))
    cfg = load(str(rendered))
    assert cfg["timezone"] == "Asia/Shanghai"
    assert cfg["beat.schedule"] == {"every morning": {
        "task": "proj.report", "schedule": {"cron": "0 8 * * mon-fri", "timezone": "Europe/Berlin"},
        "args": [1, "two"], "kwargs": {"flag": True}, "options": {"queue": "reports", "expires": 60}}}
