"""Solar entries in beat against a private Redis: six simulated weeks (a DST change, the start of
Tromsø's polar night, a killed leader) in a second or two, each event sent exactly once; an event
that never happens never fires and is reported once; `qdeploy schedule add --solar` and bad solar
entries at load, as real processes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from qdeploy.beat.entry import dynamic_spec
from qdeploy.beat.solar import NEVER, solar
from qdeploy.beat.store import run_id
from tests.integration.conftest import REPO, run_cli
from tests.integration.test_beat_ha import Cluster, slots

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")
OSLO = ZoneInfo("Europe/Oslo")


def test_solar_entries_send_one_run_per_event_through_dst_polar_night_and_failover(make_app):
    app = make_app()
    start = datetime(2025, 10, 20, 12, 0, tzinfo=UTC)
    end = datetime(2025, 12, 2, 0, 0, tzinfo=UTC)
    schedule = {  # the three ways an entry is written: a Python object, a config table, Redis JSON
        "paris sunset": {"task": "t.lights_on", "schedule": solar("sunset", 48.85, 2.35), "args": [1]},
        "tromso sunrise": {"task": "t.hello_sun", "schedule": {"solar": "sunrise", "lat": 69.6492, "lon": 18.9553},
                           "options": {"queue": "polar"}},
    }
    # beats wake at each next event (or hourly); a lock of 3 h keeps the simulation short
    c = Cluster(app, 2, schedule, start, tz=PARIS, lock_timeout=3 * 3600.0, max_interval=3600.0)
    c.store.put("melbourne noon", dynamic_spec("melbourne noon", "t.noon", {
        "solar": "solar_noon", "lat": -37.81753, "lon": 144.96715}))
    c.run_until(datetime(2025, 11, 5, 17, 30, tzinfo=UTC))  # after Paris' sunset, hours before the next event
    first = c.leader()
    c.kill(first)
    c.run_until(end)
    assert c.leader() is not None and c.leader() is not first

    sent = c.sent()
    entries = c.beats[1].entries
    assert set(entries) == {"paris sunset", "tromso sunrise", "melbourne noon"}
    for name, entry in entries.items():
        expected = slots(entry.schedule, start, end)
        got = [env.id for env in sent if env.task == entry.task]
        assert len(got) == len(set(got)) == len(expected), (name, len(got), len(expected))
        assert set(got) == {run_id(app.namespace, name, s) for s in expected}, name
    assert all(env.queue == "polar" for env in sent if env.task == "t.hello_sun")

    paris = slots(entries["paris sunset"].schedule, start, end)
    local = [s.astimezone(PARIS).date() for s in paris]  # one a day, across the end of DST on Oct 26
    assert local == [date(2025, 10, 20) + timedelta(days=i) for i in range(len(local))]
    assert local[-1] == date(2025, 12, 1)
    tromso = [s.astimezone(OSLO).date() for s in slots(entries["tromso sunrise"].schedule, start, end)]
    assert tromso[-1] == date(2025, 11, 26)  # then the polar night: five days without a sunrise, no run
    assert len(tromso) == (date(2025, 11, 26) - date(2025, 10, 21)).days + 1
    runs = c.store.runs()
    assert not any(r["skipped"] for r in runs.values())


def test_an_entry_whose_event_never_happens_never_fires_and_is_reported_once(make_app, caplog):
    app = make_app()
    dark = solar("sunrise", 0, 0)
    dark._sun_elevation = lambda observer, when, with_refraction=True: -40.0  # a sun that never rises
    start = datetime(2025, 6, 1, tzinfo=UTC)
    schedule = {"never": {"task": "t.never", "schedule": dark},
                "tick": {"task": "t.tick", "schedule": "1h"}}
    c = Cluster(app, 2, schedule, start, lock_timeout=3 * 3600.0, max_interval=3600.0)
    end = start + timedelta(days=3)
    with caplog.at_level(logging.ERROR, "qdeploy.beat"):
        c.run_until(end)
    sent = c.sent()
    hourly = slots(c.beats[0].entries["tick"].schedule, start, end - timedelta(seconds=1))
    assert {env.task for env in sent} == {"t.tick"} and len(sent) == len(hourly) == 71  # the others go on
    assert len([r for r in caplog.records if "never fires" in r.getMessage()]) == 1
    assert c.leader().next_runs["never"] == NEVER


# -- real processes ------------------------------------------------------------------------------

@pytest.fixture
def world():
    path = Path(tempfile.mkdtemp(prefix="qdeploy-solar-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config(world: Path, redis_url: str, extra: str = "", app: str = "qdeploy.demo:app") -> str:
    path = world / "qdeploy.toml"
    path.write_text(f'app = "{app}"\nbroker = "{redis_url}"\nlog_dir = "{world}/log"\n'
                    f'pid_dir = "{world}/run"\nstate_dir = "{world}/state"\n{extra}')
    return str(path)


def env(namespace: str, *paths: Path) -> dict:
    environ = dict(os.environ, QDEPLOY_NAMESPACE=namespace,
                   PYTHONPATH=os.pathsep.join([str(REPO), *map(str, paths)]))
    environ.pop("NOTIFY_SOCKET", None)
    return environ


def test_schedule_add_solar_lists_it_and_refuses_bad_input_in_one_line(world, redis_server, namespace):
    cfg = config(world, redis_server.url)

    def cli(*args):
        return run_cli("schedule", "--config", cfg, *args, env=env(namespace))

    added = cli("add", "lights", "demo.echo", "--solar", "sunset", "--lat", "-37.81753", "--lon", "144.96715",
                "--args", '["on"]')
    assert added.returncode == 0, added.stderr
    listed = {r["name"]: r for r in json.loads(cli("list", "--json").stdout)["entries"]}
    assert listed["lights"]["kind"] == "solar"
    assert listed["lights"]["schedule"] == "sunset at -37.81753, 144.96715"
    assert "lights  [redis] demo.echo solar sunset at -37.81753, 144.96715" in cli("list").stdout
    for args, message in [
        (("--solar", "sunset", "--lat", "91", "--lon", "2"),
         "redis schedule entry 'x': schedule: latitude 91.0 is out of range (expected a number of degrees from -90 to 90)"),
        (("--solar", "sunset", "--lat", "1", "--lon", "x"), "--lon must be a number of degrees, got 'x'"),
        (("--solar", "sunset", "--lat", "nan", "--lon", "2"), "latitude nan is out of range"),
        (("--solar", "sunsett", "--lat", "1", "--lon", "2"), "unknown solar event 'sunsett' (did you mean 'sunset'?)"),
        (("--solar", "sunset", "--lat", "1"), "--solar needs --lon DEGREES too"),
        (("--every", "5m", "--lat", "1"), "--lat and --lon apply to --solar only"),
        (("--solar", "sunset", "--every", "5m", "--lat", "1", "--lon", "2"), "exactly one of --every INTERVAL, --cron EXPR or --solar EVENT"),
        (("--solar", "sunset", "--lat", "1", "--lon", "2", "--timezone", "UTC"), "--timezone applies to --cron only"),
    ]:
        done = cli("add", "x", "demo.echo", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and done.stderr.count("\n") == 1, (args, done.stderr)
    assert "x" not in {r["name"] for r in json.loads(cli("list", "--json").stdout)["entries"]}


def test_beat_refuses_bad_solar_entries_at_load_with_one_line(world, redis_server, namespace):
    bad = config(world, redis_server.url, '[beat.schedule.dusk]\ntask = "demo.echo"\n'
                 'schedule = { solar = "sunset", lat = 48.85, lon = "east" }\n')
    done = run_cli("beat", "--config", bad, "--allow-root", env=env(namespace))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "config schedule entry 'dusk': schedule: longitude must be a number of degrees from -180 to 180, got str 'east'" in done.stderr

    (world / "solarapp.py").write_text(
        "from qdeploy import App\nfrom qdeploy.beat.schedule import solar\n"
        "app = App('solarapp')\n"
        "app.conf.beat_schedule = {'dusk': {'task': 'demo.echo', 'schedule': solar('dusk_civl', 48.85, 2.35)}}\n")
    typo = config(world, redis_server.url, app="solarapp:app")
    done = run_cli("beat", "--config", typo, "--allow-root", env=env(namespace, world))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "unknown solar event 'dusk_civl' (did you mean 'dusk_civil'?)" in done.stderr
