"""Solar schedules (qdeploy.beat.solar, pure logic): published tables, polar day and night, DST,
bad input, and the core install without astral.

Tolerance against the tables: 60 s. Published tables give whole minutes (rounded or truncated),
so a correct computation is within 60 s of the printed minute; an error in the definition of
the event (e.g. the sun's radius forgotten: 16' is 1-2 minutes) is not.
"""
from __future__ import annotations

import logging
import math
import subprocess
import sys
import time as clock
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdeploy.beat.entry import EntryError, describe, dynamic_spec, from_json, load_entries, parse_entry
from qdeploy.beat.schedule import catch_up, parse_schedule
from qdeploy.beat.solar import EVENTS, NEVER, SEARCH_DAYS, SolarUnavailable, solar
from qdeploy.core.app import App
from qdeploy.generator.config import ConfigError, load

UTC = timezone.utc
TOLERANCE = 60.0  # seconds, see the module docstring
PARIS = ZoneInfo("Europe/Paris")
NY = ZoneInfo("America/New_York")
MELBOURNE = ZoneInfo("Australia/Melbourne")
OSLO = ZoneInfo("Europe/Oslo")
TROMSO = (69.6492, 18.9553)


def on_day(event: str, lat: float, lon: float, day: date, tz) -> datetime:
    """The event on the local calendar day ``day`` (the first one after local midnight)."""
    return solar(event, lat, lon).next_after(datetime.combine(day, time(0), tzinfo=tz)).astimezone(tz)


def assert_matches_table(lat: float, lon: float, tz, rows: list[tuple[date, str, str]]) -> None:
    errors = []
    for day, event, hhmm in rows:
        got = on_day(event, lat, lon, day, tz)
        want = datetime.combine(day, time(int(hhmm[:-2]), int(hhmm[-2:])), tzinfo=tz)
        off = (got - want).total_seconds()
        if abs(off) > TOLERANCE:
            errors.append(f"{day} {event}: table {hhmm}, computed {got:%H:%M:%S} ({off:+.0f}s)")
    assert not errors, errors


# ---- published tables ---------------------------------------------------------------------------

# Cupertino, CA, W121°55' N37°24'. U.S. Naval Observatory, Astronomical Applications Dept.,
# "Rise and Set for the Sun for 2008", zone 8h west of Greenwich (standard time all year), as
# reproduced at https://khuang.blogspot.com/2008/09/sunrise-sunset-time-for-one-year.html.
# Days 1-3 of every month: (rise, set) x Jan..Dec.
USNO_CUPERTINO_2008 = """
01  0722 1700  0711 1732  0638 1802  0552 1831  0512 1858  0448 1923  0451 1932  0512 1915  0539 1836  0604 1750  0633 1709  0704 1650
02  0722 1701  0710 1733  0637 1803  0551 1832  0511 1859  0448 1924  0451 1932  0513 1914  0539 1834  0604 1749  0634 1708  0705 1650
03  0722 1702  0710 1734  0635 1804  0549 1833  0510 1900  0448 1924  0452 1932  0514 1913  0540 1833  0605 1747  0635 1707  0706 1650
"""


def test_cupertino_matches_the_usno_table_for_2008():
    rows = []
    for line in USNO_CUPERTINO_2008.strip().splitlines():
        day, *times = line.split()
        for month in range(1, 13):
            rise, sets = times[2 * (month - 1)], times[2 * month - 1]
            rows += [(date(2008, month, int(day)), "sunrise", rise), (date(2008, month, int(day)), "sunset", sets)]
    assert len(rows) == 72
    assert_matches_table(37 + 24 / 60, -(121 + 55 / 60), timezone(timedelta(hours=-8)), rows)


# Cleveland, OH, 41°29'N 81°40'W (the coordinates of Cornell's copy of the USNO Cleveland table,
# https://www.cs.cornell.edu/insight/FVL/InsightData/11_1/SunriseSunsetData.zip ReadMe.txt).
# Times "according to the United States Naval Observatory", local clock time (EDT, then EST from
# Nov 4): https://www.cleveland.com/datacentral/2018/12/getting-out-of-the-dark-cleveland-sunsets-begin-getting-later-on-saturday.html
CLEVELAND_2018 = [
    ("2018-11-01", "0758", "1822"), ("2018-11-02", "0800", "1820"), ("2018-11-03", "0801", "1819"),
    ("2018-11-04", "0702", "1718"), ("2018-11-05", "0703", "1717"), ("2018-11-06", "0704", "1716"),
    ("2018-11-07", "0706", "1715"), ("2018-11-08", "0707", "1713"), ("2018-11-09", "0708", "1712"),
    ("2018-11-10", "0709", "1711"), ("2018-11-11", "0710", "1710"), ("2018-11-12", "0712", "1709"),
    ("2018-11-13", "0713", "1709"), ("2018-11-14", "0714", "1708"), ("2018-11-15", "0715", "1707"),
    ("2018-11-16", "0717", "1706"), ("2018-12-21", "0750", "1700"), ("2019-06-21", "0553", "2104"),
]


def test_cleveland_matches_the_usno_times_across_the_end_of_dst():
    rows = []
    for day, rise, sets in CLEVELAND_2018:
        rows += [(date.fromisoformat(day), "sunrise", rise), (date.fromisoformat(day), "sunset", sets)]
    assert_matches_table(41 + 29 / 60, -(81 + 40 / 60), NY, rows)


# Melbourne, 37°50'S 145°E (the Melbourne Planetarium's location for its tables:
# http://museumvictoria.com.au/planetarium/discoverycentre/rise-and-set-times/). Skynotes of the
# Melbourne Planetarium (Museums Victoria), local clock time (AEDT; AEST until 5 Oct 2025):
# https://museumvictoria.com.au/scienceworks/visiting/melbourne-planetarium/skynotes/skynotes-december-2016/
# and Skynotes October 2025 (rise, set, solar noon), museumsvictoria.com.au.
MELBOURNE_DEC_2016 = [("2016-12-01", "0552", "2027"), ("2016-12-11", "0552", "2036"),
                      ("2016-12-21", "0555", "2042"), ("2016-12-31", "0601", "2045")]
MELBOURNE_OCT_2025 = [("2025-10-01", "0555", "1824", "1209"), ("2025-10-11", "0640", "1933", "1306"),
                      ("2025-10-21", "0626", "1943", "1304"), ("2025-10-31", "0614", "1953", "1303")]


def test_melbourne_matches_the_planetarium_tables_with_solar_noon_and_the_start_of_dst():
    rows = []
    for day, rise, sets in MELBOURNE_DEC_2016:
        rows += [(date.fromisoformat(day), "sunrise", rise), (date.fromisoformat(day), "sunset", sets)]
    for day, rise, sets, noon in MELBOURNE_OCT_2025:
        d = date.fromisoformat(day)
        rows += [(d, "sunrise", rise), (d, "sunset", sets), (d, "solar_noon", noon)]
    assert_matches_table(-(37 + 50 / 60), 145.0, MELBOURNE, rows)


# Twilights: Keck Observatory (Mauna Kea, 19°49.6'N 155°28.5'W) calendar for 2008, UCO/Lick
# Observatory, http://npm.ucolick.org/Cal2K/Keck/keck2008.12, HST (UTC-10). Columns: 12° and 18°
# twilight ends (evening), 18° and 12° dawn begins (morning). Twilights are defined by the sun's
# geometric altitude, so the observatory's 4145 m altitude does not change them.
KECK_JAN_2008 = """
01 1845 1912 0539 0606
02 1846 1913 0539 0606
03 1847 1914 0539 0606
04 1847 1914 0540 0607
05 1848 1915 0540 0607
06 1848 1915 0540 0607
07 1849 1916 0541 0607
08 1849 1916 0541 0608
09 1850 1917 0541 0608
10 1851 1918 0541 0608
11 1851 1918 0542 0608
12 1852 1919 0542 0609
13 1852 1919 0542 0609
14 1853 1920 0542 0609
15 1854 1920 0542 0609
16 1854 1921 0542 0609
17 1855 1922 0542 0609
"""


def test_nautical_and_astronomical_twilights_match_the_keck_calendar():
    rows = []
    for line in KECK_JAN_2008.strip().splitlines():
        day, *times = line.split()
        d = date(2008, 1, int(day))
        rows += list(zip([d] * 4, ["dusk_nautical", "dusk_astronomical", "dawn_astronomical", "dawn_nautical"],
                         times))
    assert_matches_table(19.8259, -155.4744, timezone(timedelta(hours=-10)), rows)


# ---- the search: one instant per event, brute force agrees, polar days skipped --------------------

def chain(schedule: solar, start: datetime, end: datetime) -> list[datetime]:
    out, t = [], start
    while (t := schedule.next_after(t)) < end:
        out.append(t)
    return out


def brute_force(schedule: solar, start: datetime, end: datetime, step: float = 300.0) -> list[datetime]:
    """Crossings of the event's threshold found by sampling the elevation every ``step`` seconds
    (astral's elevation, as the schedule uses; the point is the search, not the astronomy)."""
    from astral.sun import elevation, noon

    observer = schedule._observer
    if schedule.event == "solar_noon":
        days = [start.date() + timedelta(days=i) for i in range(-1, (end - start).days + 2)]
        return [n for n in (noon(observer, d) for d in days) if start < n < end]
    direction, threshold = EVENTS[schedule.event]

    def above(ts: float) -> float:
        return elevation(observer, datetime.fromtimestamp(ts, UTC), with_refraction=False) - threshold

    out, t = [], start.timestamp()
    prev = above(t)
    while t < end.timestamp():
        cur = above(t + step)
        if (prev < 0 <= cur) if direction == "rise" else (prev > 0 >= cur):
            lo, hi = t, t + step  # then narrow that one sample interval down to a second
            while hi - lo > 0.5:
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if (above(mid) >= 0) == (direction == "rise") else (mid, hi)
            out.append(datetime.fromtimestamp(hi, UTC))
        prev, t = cur, t + step
    return [e for e in out if start < e < end]


def assert_same_events(got: list[datetime], want: list[datetime], slack: float = 2.0) -> None:
    assert len(got) == len(want), (len(got), len(want), got[:3], want[:3])
    worst = max((abs((g - w).total_seconds()) for g, w in zip(got, want)), default=0.0)
    assert worst <= slack, worst


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=st.sampled_from(sorted(EVENTS)),
       lat=st.floats(-80, 80), lon=st.floats(-180, 180),
       start=st.datetimes(datetime(1990, 1, 1), datetime(2060, 1, 1), timezones=st.just(UTC)))
def test_next_after_finds_every_crossing_that_sampling_finds_anywhere(event, lat, lon, start):
    schedule = solar(event, lat, lon)
    end = start + timedelta(days=4)
    got = chain(schedule, start, end)
    assert all(a < b for a, b in zip(got, got[1:]))
    assert_same_events(got, brute_force(schedule, start, end))
    for e in got:  # the same event from any earlier moment is the same instant: stable run ids
        assert schedule.next_after(e - timedelta(microseconds=1)) == e
        assert schedule.next_after(e - timedelta(hours=3)) in (e, *got)
        assert schedule.next_after(e) > e


@pytest.mark.parametrize("event, lat, lon, start, days", [
    ("sunset", *TROMSO, datetime(2025, 5, 1, tzinfo=UTC), 100),  # the midnight sun
    ("sunrise", *TROMSO, datetime(2025, 11, 10, tzinfo=UTC), 75),  # the polar night
    ("dusk_astronomical", 48.85, 2.35, datetime(2025, 5, 15, tzinfo=UTC), 80),  # Paris' June nights
    ("dawn_civil", -77.85, 166.67, datetime(2025, 4, 15, tzinfo=UTC), 130),  # McMurdo's winter
])
def test_days_without_the_event_are_skipped_and_no_event_is_lost(event, lat, lon, start, days):
    schedule = solar(event, lat, lon)
    end = start + timedelta(days=days)
    got = chain(schedule, start, end)
    gaps = [b - a for a, b in zip(got, got[1:])]
    assert max(gaps) > timedelta(days=10), "the test window should contain days without the event"
    assert_same_events(got, brute_force(schedule, start, end, step=600.0))


@pytest.mark.parametrize("event, lat, start", [
    ("sunrise", 90, datetime(2025, 3, 8, tzinfo=UTC)), ("sunset", 89.5, datetime(2025, 9, 14, tzinfo=UTC)),
    ("sunset", -89.5, datetime(2025, 3, 10, tzinfo=UTC)), ("sunrise", -90, datetime(2025, 9, 12, tzinfo=UTC)),
    ("dusk_civil", 88, datetime(2025, 9, 25, tzinfo=UTC)),
])
def test_at_the_poles_the_crossings_near_an_equinox_are_the_ones_sampling_finds(event, lat, start):
    schedule = solar(event, lat, 0)
    end = start + timedelta(days=20)
    got = chain(schedule, start, end)
    assert got, "the window should contain the event"
    assert_same_events(got, brute_force(schedule, start, end))


def test_tromso_polar_night_and_the_north_pole_match_what_is_published():
    # "January 15 was when people in Tromsø could see the sun again ... those in the North Pole
    # must wait until March 18" (Nordlys via https://norwaytoday.info/news/sun-returns-in-tromso-the-dark-season-is-now-over/)
    rise = solar("sunrise", *TROMSO)
    first = rise.next_after(datetime(2025, 11, 30, tzinfo=OSLO))
    assert first.astimezone(OSLO).date() == date(2026, 1, 15)
    assert first.tzinfo is OSLO
    assert solar("sunrise", 90, 0).next_after(datetime(2025, 1, 1, tzinfo=UTC)).date() == date(2025, 3, 18)
    # Svalbard (Longyearbyen) "does not return until mid-February"
    back = solar("sunrise", 78.2232, 15.6267).next_after(datetime(2025, 11, 30, tzinfo=UTC))
    assert date(2026, 2, 10) <= back.date() <= date(2026, 2, 20)
    # and in midsummer Tromsø has neither sunset nor dusk: the next ones are in late July
    sunset = solar("sunset", *TROMSO).next_after(datetime(2025, 6, 21, tzinfo=UTC))
    assert date(2025, 7, 20) <= sunset.date() <= date(2025, 7, 31)


def test_an_event_that_never_happens_is_reported_once_and_never_fires(caplog):
    schedule = solar("sunrise", 0, 0)
    calls = []

    def never_up(observer, when, with_refraction=True):
        calls.append(when)
        return -30.0

    schedule._sun_elevation = never_up
    now = datetime(2025, 6, 1, tzinfo=UTC)
    started = clock.monotonic()
    with caplog.at_level(logging.ERROR, "qdeploy.beat"):
        assert schedule.next_after(now) == NEVER
        assert schedule.next_after(now + timedelta(days=3)) == NEVER
        assert schedule.next_after(now.astimezone(PARIS)).tzinfo is PARIS
        due = schedule.is_due(now - timedelta(days=1), now)
        missed = catch_up(schedule, now - timedelta(days=30), now, grace=None)
    assert clock.monotonic() - started < 2.0
    assert len(calls) <= 2 * 2 * (SEARCH_DAYS + 2)  # one bounded search: 2 ends of 2 halves a day
    assert not due.due and due.next_run == NEVER
    assert not missed.run and missed.next_run == NEVER
    errors = [r for r in caplog.records if "never fires" in r.getMessage()]
    assert len(errors) == 1 and "solar('sunrise', 0.0, 0.0)" in errors[0].getMessage()


def test_the_extremes_of_time_are_one_clear_error():
    schedule = solar("sunset", 48.85, 2.35)
    for dt in (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)):
        with pytest.raises(ValueError, match="no events are computed"):
            schedule.next_after(dt)
    with pytest.raises(ValueError, match="aware datetime"):
        schedule.next_after(datetime(2025, 1, 1))
    assert schedule.next_after(datetime(2, 1, 1, tzinfo=UTC)).year == 2


# ---- DST: instants, never wall clock ----------------------------------------------------------------

@pytest.mark.parametrize("first, last", [(date(2025, 10, 20), date(2025, 11, 2)),  # fall back, Oct 26
                                         (date(2025, 3, 24), date(2025, 4, 6))])   # spring forward, Mar 30
def test_one_sunset_per_day_through_a_dst_change(first, last):
    schedule = solar("sunset", 48.85, 2.35)
    got = chain(schedule, datetime.combine(first, time(0), tzinfo=PARIS),
                datetime.combine(last + timedelta(days=1), time(0), tzinfo=PARIS))
    assert [t.date() for t in got] == [first + timedelta(days=i) for i in range((last - first).days + 1)]
    assert all(t.tzinfo is PARIS for t in got)
    for a, b in zip(got, got[1:]):  # a day of sunsets is 24 h of elapsed time, give or take minutes
        assert timedelta(hours=23, minutes=55) < b.astimezone(UTC) - a.astimezone(UTC) < timedelta(hours=24, minutes=5)
    walls = [t.hour * 60 + t.minute for t in got]
    jumps = [b - a for a, b in zip(walls, walls[1:])]
    assert sum(1 for j in jumps if abs(j) > 30) == 1  # the wall clock jumps once, by an hour


def test_the_repeated_hour_gives_the_same_instant_in_either_reading():
    schedule = solar("solar_noon", 48.85, 2.35)
    first = datetime(2025, 10, 26, 2, 30, fold=0, tzinfo=PARIS)
    second = datetime(2025, 10, 26, 2, 30, fold=1, tzinfo=PARIS)
    assert schedule.next_after(first) == schedule.next_after(second) == schedule.next_after(first.astimezone(UTC))
    assert schedule.next_after(second).isoformat().startswith("2025-10-26T12:")
    assert schedule.next_after(second).utcoffset() == timedelta(hours=1)


def test_catch_up_runs_a_missed_event_once():
    schedule = solar("sunrise", 48.85, 2.35)
    last = schedule.next_after(datetime(2025, 6, 1, tzinfo=UTC))
    nxt = schedule.next_after(last)
    late = catch_up(schedule, last, nxt + timedelta(seconds=30), grace=60)
    assert late.run and late.slot == nxt and late.next_run == schedule.next_after(nxt)
    later = catch_up(schedule, last, nxt + timedelta(days=3), grace=60)
    assert not later.run
    assert schedule.first_slot_from(last, nxt - timedelta(hours=1)) == nxt


# ---- as an entry: Python object, config table, Redis spec -----------------------------------------

def test_seed_004_beat_schedule_and_add_periodic_task_take_solar_objects():
    from qdeploy.beat.schedule import solar as from_schedule_module  # Celery: celery.schedules

    assert from_schedule_module is solar
    app = App("u")
    app.conf.beat_schedule = {
        "add-at-melbourne-sunset": {"task": "tasks.add", "schedule": solar("sunset", -37.81753, 144.96715),
                                    "args": (16, 16)},
    }
    name = app.add_periodic_task(solar("dawn_civil", 48.85, 2.35), "tasks.ping", name="paris dawn", expires=60)
    entries = load_entries(app.conf.beat_schedule, tz=None, source="app")
    seed = entries["add-at-melbourne-sunset"]
    assert seed.schedule == solar("sunset", -37.81753, 144.96715) and seed.args == [16, 16]
    assert hash(seed.schedule) == hash(solar("sunset", -37.81753, 144.96715))
    assert seed.describe() == "sunset at -37.81753, 144.96715"
    assert repr(seed.schedule) == "solar('sunset', -37.81753, 144.96715)"
    assert entries[name].options == {"expires": 60.0}
    assert solar("sunset", 1, 2) != solar("sunrise", 1, 2) != solar("sunrise", 1, 3)


def test_config_tables_and_redis_specs_build_the_same_schedule(isolated, write_config):
    table = {"solar": "sunset", "lat": 48.85, "lon": 2.35}
    assert parse_schedule(table) == solar("sunset", 48.85, 2.35)
    assert parse_schedule({"solar": "solar_noon", "lat": -90, "lon": 180}) == solar("solar_noon", -90.0, 180.0)
    spec = dynamic_spec("dyn", "tasks.add", table)
    entry = from_json("dyn", spec, tz="Asia/Shanghai")
    assert entry.schedule == solar("sunset", 48.85, 2.35) and describe(entry.schedule) == "sunset at 48.85, 2.35"
    write_config('[beat.schedule.dusk]\ntask = "proj.lights_on"\n'
                 'schedule = { solar = "dusk_civil", lat = 48.85, lon = 2.35 }\n')
    assert load()["beat.schedule"]["dusk"]["schedule"] == {"solar": "dusk_civil", "lat": 48.85, "lon": 2.35}


@pytest.mark.parametrize("schedule, message", [
    ({"solar": "sunsett", "lat": 1, "lon": 2}, "unknown solar event 'sunsett' (did you mean 'sunset'?)"),
    ({"solar": "Sunset", "lat": 1, "lon": 2}, "(did you mean 'sunset'?)"),
    ({"solar": "solar noon", "lat": 1, "lon": 2}, "(did you mean 'solar_noon'?)"),
    ({"solar": "midnight", "lat": 1, "lon": 2}, "(expected one of: dawn_astronomical, dawn_nautical,"),
    ({"solar": 5, "lat": 1, "lon": 2}, "solar event must be one of dawn_astronomical"),
    ({"solar": "sunset", "lat": 91, "lon": 2}, "latitude 91 is out of range (expected a number of degrees from -90 to 90)"),
    ({"solar": "sunset", "lat": -90.5, "lon": 2}, "latitude -90.5 is out of range"),
    ({"solar": "sunset", "lat": 1, "lon": 180.01}, "longitude 180.01 is out of range (expected a number of degrees from -180 to 180)"),
    ({"solar": "sunset", "lat": 1, "lon": "x"}, "longitude must be a number of degrees from -180 to 180, got str 'x'"),
    ({"solar": "sunset", "lat": "48.85", "lon": 2}, "latitude must be a number of degrees"),
    ({"solar": "sunset", "lat": True, "lon": 2}, "latitude must be a number of degrees from -90 to 90, got bool True"),
    ({"solar": "sunset", "lat": None, "lon": 2}, "got NoneType None"),
    ({"solar": "sunset", "lat": math.nan, "lon": 2}, "latitude nan is out of range"),
    ({"solar": "sunset", "lat": 1, "lon": -math.inf}, "longitude -inf is out of range"),
    ({"solar": "sunset", "lat": 10 ** 400, "lon": 2}, "latitude 10000000000000000"),
    ({"solar": "sunset", "lat": 1, "lon": "x" * 10000}, "got str 'xxxxxxxxxxxxxxxx"),
    ({"solar": "\x1b[31msunset", "lat": 1, "lon": 2}, "unknown solar event '\\x1b[31msunset'"),
    ({"solar": "sunset", "lat": 1}, "a solar schedule needs 'lon' (degrees, north and east positive)"),
    ({"solar": "sunset"}, "needs 'lat' and 'lon'"),
    ({"solar": "sunset", "lat": 1, "lon": 2, "timezone": "Europe/Paris"}, "'timezone' does not apply to solar"),
    ({"solar": "sunset", "lat": 1, "lon": 2, "every": "5m"}, "exactly one of 'every', 'cron', 'solar'"),
    ({"every": "5m", "lat": 1}, "'lat' and 'lon' apply to solar schedules only"),
    ({"cron": "@daily", "lon": 1}, "'lat' and 'lon' apply to solar schedules only"),
    ({"solar": "sunset", "latitude": 1, "lon": 2}, "unknown schedule key 'latitude'"),
    ({"solar": "sunset", "lat": 1, "lonn": 2}, "unknown schedule key 'lonn' (did you mean 'lon'?)"),
])
def test_bad_solar_entries_are_one_line_naming_the_entry(schedule, message):
    with pytest.raises(EntryError) as err:
        parse_entry("lights", {"task": "t", "schedule": schedule}, tz=None, source="config")
    text = str(err.value)
    assert text.startswith("config schedule entry 'lights': schedule: ")
    assert message in text and "\n" not in text and "\x1b" not in text and len(text) < 400
    assert err.value.exit_code == 2


def test_python_objects_check_their_arguments_too():
    with pytest.raises(ValueError, match=r"unknown solar event 'sunsett' \(did you mean 'sunset'\?\)"):
        solar("sunsett", 1, 2)
    with pytest.raises(ValueError, match="latitude 91 is out of range"):
        solar("sunset", 91, 2)
    with pytest.raises(TypeError):
        solar("sunset", 1)  # Celery's signature: event, lat, lon


def test_a_bad_config_solar_entry_exits_2_at_load(isolated, write_config):
    write_config('[beat.schedule.dusk]\ntask = "proj.lights_on"\n'
                 'schedule = { solar = "sunset", lat = 91, lon = 2.35 }\n')
    with pytest.raises(ConfigError) as err:
        load()
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
    assert "config schedule entry 'dusk': schedule: latitude 91 is out of range" in str(err.value)


# ---- the core install: no astral needed --------------------------------------------------------

def test_without_astral_solar_is_one_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "astral", None)  # `import astral` now raises ImportError
    monkeypatch.setitem(sys.modules, "astral.sun", None)
    with pytest.raises(SolarUnavailable, match=r"solar schedules need the astral package: pip install 'qdeploy\[solar\]'"):
        solar("sunset", 48.85, 2.35)
    with pytest.raises(EntryError) as err:
        parse_entry("dusk", {"task": "t", "schedule": {"solar": "sunset", "lat": 1, "lon": 2}}, tz=None, source="redis")
    assert str(err.value) == ("redis schedule entry 'dusk': schedule: solar schedules need the astral package: "
                              "pip install 'qdeploy[solar]'")
    assert parse_schedule("5m") is not None and parse_schedule("@daily") is not None  # the rest is unaffected


def test_importing_the_beat_modules_never_imports_astral():
    code = ("import sys; sys.modules['astral'] = None\n"
            "import qdeploy.beat.schedule, qdeploy.beat.entry, qdeploy.beat.solar, qdeploy.beat.scheduler\n"
            "from qdeploy.beat.schedule import parse_schedule, solar\n"
            "assert parse_schedule('*/5 * * * *')\n"
            "try:\n    solar('sunset', 1, 2)\nexcept ValueError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "solar schedules need the astral package: pip install 'qdeploy[solar]'"
    probe = "import sys, qdeploy.beat.entry, qdeploy.beat.schedule; print('astral' in sys.modules)"
    plain = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert plain.stdout.strip() == "False", plain.stderr
