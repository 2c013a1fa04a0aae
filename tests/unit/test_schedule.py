"""Unit tests for qdeploy.beat.schedule (pure logic, no Redis).

Expected fire times are written by hand from the calendar, and compared as
ISO strings with their UTC offset, so "02:30-04:00" and "02:30-05:00" can never
be confused (aware datetimes in one zone compare by wall time, ignoring fold).
"""
from __future__ import annotations

import calendar
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qdeploy.beat.schedule import (
    UTC, CatchUp, Due, catch_up, crontab, every, format_interval, parse_field,
    parse_interval, parse_schedule, resolve_timezone,
)

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(*args: int, tz=UTC) -> datetime:
    return datetime(*args, tzinfo=tz)


def fires(schedule, start: datetime, n: int) -> list[str]:
    """The next ``n`` successive fire times after ``start``, as ISO strings."""
    out, t = [], start
    for _ in range(n):
        t = schedule.next_after(t)
        out.append(t.isoformat())
    return out


def fires_between(schedule, start: datetime, end: datetime) -> list[datetime]:
    out, t = [], schedule.next_after(start - timedelta(microseconds=1))
    while t.astimezone(UTC) < end.astimezone(UTC):
        out.append(t)
        t = schedule.next_after(t)
    return out


# ---- every row of the crontab table in the seed (000_5f05f0aa0c941e66.txt) ----

def test_row_crontab_every_minute():  # crontab() 每分钟执行
    assert fires(crontab(), at(2025, 1, 31, 23, 58, 30), 4) == [
        "2025-01-31T23:59:00+00:00", "2025-02-01T00:00:00+00:00",
        "2025-02-01T00:01:00+00:00", "2025-02-01T00:02:00+00:00"]


def test_row_daily_at_midnight():  # crontab(minute=0, hour=0) 每天凌晨执行
    assert fires(crontab(minute=0, hour=0), at(2025, 12, 30, 12), 4) == [
        "2025-12-31T00:00:00+00:00", "2026-01-01T00:00:00+00:00",
        "2026-01-02T00:00:00+00:00", "2026-01-03T00:00:00+00:00"]


EVERY_THREE_HOURS = [f"2025-06-01T{h:02}:00:00+00:00" for h in (3, 6, 9, 12, 15, 18, 21)] + [
    "2025-06-02T00:00:00+00:00", "2025-06-02T03:00:00+00:00"]


def test_row_every_three_hours():  # hour='*/3': midnight, 3am, ..., 9pm
    assert fires(crontab(minute=0, hour="*/3"), at(2025, 6, 1), 9) == EVERY_THREE_HOURS


def test_row_explicit_hour_list_is_the_same():  # 同上
    explicit = crontab(minute=0, hour="0,3,6,9,12,15,18,21")
    assert fires(explicit, at(2025, 6, 1), 9) == EVERY_THREE_HOURS
    assert explicit == crontab(minute=0, hour="*/3")


def test_row_every_fifteen_minutes():  # minute='*/15'
    assert fires(crontab(minute="*/15"), at(2025, 6, 1, 10, 7), 5) == [
        "2025-06-01T10:15:00+00:00", "2025-06-01T10:30:00+00:00", "2025-06-01T10:45:00+00:00",
        "2025-06-01T11:00:00+00:00", "2025-06-01T11:15:00+00:00"]


def test_row_every_minute_on_sunday():  # day_of_week='sunday' 星期天每分钟执行
    sunday = crontab(day_of_week="sunday")
    # 2025-06-07 is a Saturday, 06-08 and 06-15 are Sundays
    assert fires(sunday, at(2025, 6, 7, 23, 58), 2) == [
        "2025-06-08T00:00:00+00:00", "2025-06-08T00:01:00+00:00"]
    assert fires(sunday, at(2025, 6, 8, 23, 58), 2) == [
        "2025-06-08T23:59:00+00:00", "2025-06-15T00:00:00+00:00"]


def test_row_sun_is_the_same_as_sunday():  # minute='*', hour='*', day_of_week='sun' 同上
    sun = crontab(minute="*", hour="*", day_of_week="sun")
    assert sun == crontab(day_of_week="sunday") == crontab(day_of_week=0) == crontab(day_of_week=7)
    assert fires(sun, at(2025, 6, 8, 23, 58), 2) == [
        "2025-06-08T23:59:00+00:00", "2025-06-15T00:00:00+00:00"]


def test_row_every_ten_minutes_thu_fri_at_3_17_22():
    # 每十分钟执行, 但是只在星期四、五的 3-4 am, 5-6 pm, and 10-11 pm
    c = crontab(minute="*/10", hour="3,17,22", day_of_week="thu,fri")
    # from Wednesday 2025-06-04: Thursday's 3am hour, then 5pm
    assert fires(c, at(2025, 6, 4, 12), 8) == [
        f"2025-06-05T03:{m:02}:00+00:00" for m in (0, 10, 20, 30, 40, 50)] + [
        "2025-06-05T17:00:00+00:00", "2025-06-05T17:10:00+00:00"]
    # Thursday night -> Friday 3am; Friday night -> next Thursday
    assert fires(c, at(2025, 6, 5, 22, 45), 2) == [
        "2025-06-05T22:50:00+00:00", "2025-06-06T03:00:00+00:00"]
    assert fires(c, at(2025, 6, 6, 22, 50), 1) == ["2025-06-12T03:00:00+00:00"]


def test_row_every_two_and_three_hours():
    # hour='*/2,*/3': every hour except 1am, 5am, 7am, 11am, 1pm, 5pm, 7pm, 11pm
    day = fires_between(crontab(minute=0, hour="*/2,*/3"), at(2025, 6, 1), at(2025, 6, 2))
    assert [t.hour for t in day] == [0, 2, 3, 4, 6, 8, 9, 10, 12, 14, 15, 16, 18, 20, 21, 22]
    assert set(range(24)) - {t.hour for t in day} == {1, 5, 7, 11, 13, 17, 19, 23}


def test_row_every_five_hours():
    # hour='*/5': 0,5,10,15,20. The table's "3pm instead of 5pm" is the Celery docs'
    # typo for 15h ("divisible by 5"): hour 15 fires, hour 17 and 3 do not.
    assert fires(crontab(minute=0, hour="*/5"), at(2025, 6, 1), 6) == [
        "2025-06-01T05:00:00+00:00", "2025-06-01T10:00:00+00:00", "2025-06-01T15:00:00+00:00",
        "2025-06-01T20:00:00+00:00", "2025-06-02T00:00:00+00:00", "2025-06-02T05:00:00+00:00"]


def test_row_every_three_hours_and_office_hours():  # hour='*/3,8-17'
    day = fires_between(crontab(minute=0, hour="*/3,8-17"), at(2025, 6, 1), at(2025, 6, 2))
    assert [t.hour for t in day] == [0, 3, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 21]


def test_row_second_day_of_month():  # crontab(0, 0, day_of_month='2') 每个月的第二天执行
    assert fires(crontab(0, 0, day_of_month="2"), at(2025, 1, 15), 4) == [
        "2025-02-02T00:00:00+00:00", "2025-03-02T00:00:00+00:00",
        "2025-04-02T00:00:00+00:00", "2025-05-02T00:00:00+00:00"]


def test_row_every_third_day_from_the_second():
    # day_of_month='2-30/3' is days 2, 5, 8, ..., 29. The table (like the Celery docs
    # it copies) says "even days" (偶数天), which is wrong: 5, 11, 17 are odd.
    c = crontab(0, 0, day_of_month="2-30/3")
    assert fires(c, at(2025, 1, 1), 10) == [
        f"2025-01-{d:02}T00:00:00+00:00" for d in (2, 5, 8, 11, 14, 17, 20, 23, 26, 29)]
    # February 2025 has no 29th: 26 Feb -> 2 Mar
    assert fires(c, at(2025, 2, 25), 2) == ["2025-02-26T00:00:00+00:00", "2025-03-02T00:00:00+00:00"]


def test_row_first_and_third_week():  # day_of_month='1-7,15-21' 第一个和第三个星期
    month = fires_between(crontab(0, 0, day_of_month="1-7,15-21"), at(2025, 3, 1), at(2025, 4, 1))
    assert [t.day for t in month] == [1, 2, 3, 4, 5, 6, 7, 15, 16, 17, 18, 19, 20, 21]
    assert fires(crontab(0, 0, day_of_month="1-7,15-21"), at(2025, 3, 21), 1) == [
        "2025-04-01T00:00:00+00:00"]


def test_row_eleventh_of_may():  # day_of_month='11', month_of_year='5' 每年五月份的第十一天
    assert fires(crontab(0, 0, day_of_month="11", month_of_year="5"), at(2025, 5, 11), 3) == [
        "2026-05-11T00:00:00+00:00", "2027-05-11T00:00:00+00:00", "2028-05-11T00:00:00+00:00"]


def test_row_first_month_of_each_quarter():
    # month_of_year='*/3' is Jan, Apr, Jul, Oct (the range starts at 1). With the
    # default day_of_month='*' it fires every midnight of those months.
    c = crontab(0, 0, month_of_year="*/3")
    assert fires(c, at(2025, 1, 30), 4) == [
        "2025-01-31T00:00:00+00:00", "2025-04-01T00:00:00+00:00",
        "2025-04-02T00:00:00+00:00", "2025-04-03T00:00:00+00:00"]
    assert fires(c, at(2025, 4, 30), 1) == ["2025-07-01T00:00:00+00:00"]
    assert fires(c, at(2025, 10, 31), 1) == ["2026-01-01T00:00:00+00:00"]
    assert c.month_of_year == {1, 4, 7, 10}


def test_seed_monday_8am_gotcha_fires_every_minute_of_the_hour():
    # The seed's `crontab(hour=8, day_of_week=1)  # 每周一早八点` keeps minute='*':
    # like Celery, it fires 60 times from 08:00 to 08:59 each Monday, in app timezone.
    c = crontab(hour=8, day_of_week=1, tz="Asia/Shanghai")
    monday = fires_between(c, at(2025, 6, 2, tz=SHANGHAI), at(2025, 6, 3, tz=SHANGHAI))
    assert len(monday) == 60
    assert monday[0].isoformat() == "2025-06-02T08:00:00+08:00"
    assert monday[-1].isoformat() == "2025-06-02T08:59:00+08:00"
    assert fires(crontab(0, 8, day_of_week=1, tz=SHANGHAI), monday[0], 1) == [
        "2025-06-09T08:00:00+08:00"]


# ---- day rules, month ends, leap days ----

def test_day_of_month_and_day_of_week_are_anded_like_celery():
    # Vixie cron would fire on every Friday *and* every 13th; Celery (and we) need both.
    c = crontab.from_string("0 0 13 * fri")
    assert fires(c, at(2025, 1, 1), 4) == [
        "2025-06-13T00:00:00+00:00", "2026-02-13T00:00:00+00:00",
        "2026-03-13T00:00:00+00:00", "2026-11-13T00:00:00+00:00"]


def test_31st_fires_only_in_31_day_months():
    assert fires(crontab.from_string("0 0 31 * *"), at(2025, 1, 1), 8) == [
        f"{d}T00:00:00+00:00" for d in ("2025-01-31", "2025-03-31", "2025-05-31", "2025-07-31",
                                        "2025-08-31", "2025-10-31", "2025-12-31", "2026-01-31")]


def test_leap_day_is_found_quickly():
    leap = crontab.from_string("0 0 29 2 *")
    started = time.perf_counter()
    assert fires(leap, at(2025, 1, 1), 2) == ["2028-02-29T00:00:00+00:00",
                                              "2032-02-29T00:00:00+00:00"]
    assert fires(leap, at(2097, 3, 1), 1) == ["2104-02-29T00:00:00+00:00"]  # 2100 is not leap
    assert time.perf_counter() - started < 0.05


def test_leap_day_that_is_a_monday():
    c = crontab(0, 0, day_of_week="mon", day_of_month=29, month_of_year=2)
    assert fires(c, at(2025, 1, 1), 1) == ["2044-02-29T00:00:00+00:00"]


@pytest.mark.parametrize("expr", ["0 0 30 2 *", "0 0 31 2,4,6,9,11 *", "0 0 31 apr *"])
def test_impossible_dates_are_rejected_at_construction(expr):
    with pytest.raises(ValueError, match=r"day_of_month '3[01]' never occurs in month_of_year"):
        crontab.from_string(expr)


def test_last_minute_of_the_year_rolls_over():
    assert fires(crontab.from_string("59 23 31 12 *"), at(2025, 12, 31, 23, 59), 1) == [
        "2026-12-31T23:59:00+00:00"]


# ---- timezones ----

def test_crontab_is_evaluated_in_asia_shanghai():
    c = crontab(minute=30, hour=8, tz="Asia/Shanghai")
    # 00:00Z is 08:00 in Shanghai: fires 30 minutes later, i.e. 00:30Z
    assert fires(c, at(2025, 6, 1), 2) == ["2025-06-01T08:30:00+08:00", "2025-06-02T08:30:00+08:00"]
    assert c.next_after(at(2025, 6, 1)).astimezone(UTC).isoformat() == "2025-06-01T00:30:00+00:00"
    assert fires(c, at(2025, 6, 1, 0, 30), 1) == ["2025-06-02T08:30:00+08:00"]  # strictly after


def test_result_is_independent_of_the_zone_of_the_argument():
    c = crontab.from_string("0 9 * * mon-fri", tz=SHANGHAI)
    start = at(2025, 6, 6, 2)  # Friday 10:00 in Shanghai
    assert c.next_after(start) == c.next_after(start.astimezone(NY)) == c.next_after(
        start.astimezone(SHANGHAI))
    assert c.next_after(start).isoformat() == "2025-06-09T09:00:00+08:00"


def test_resolve_timezone_follows_enable_utc():
    assert resolve_timezone(None) is UTC
    assert resolve_timezone("Asia/Shanghai") == SHANGHAI
    assert resolve_timezone(None, enable_utc=False) is not None
    with pytest.raises(ValueError, match=r"unknown timezone 'Mars/Olympus'"):
        resolve_timezone("Mars/Olympus")


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="aware datetime"):
        crontab().next_after(datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="aware datetime"):
        every(5).next_after(datetime(2025, 1, 1))


# ---- DST: spring forward (NY 2025-03-09 02:00->03:00, Berlin 2025-03-30 02:00->03:00) ----
#      fall back (NY 2025-11-02 02:00->01:00, Berlin 2025-10-26 03:00->02:00)

def test_ny_spring_forward_daily_0230_fires_once_at_the_jump():
    c = crontab.from_string("30 2 * * *", tz=NY)
    assert fires(c, at(2025, 3, 7, 12, tz=NY), 4) == [
        "2025-03-08T02:30:00-05:00", "2025-03-09T03:00:00-04:00",  # 02:30 does not exist
        "2025-03-10T02:30:00-04:00", "2025-03-11T02:30:00-04:00"]


def test_berlin_spring_forward_daily_0230_fires_once_at_the_jump():
    c = crontab.from_string("30 2 * * *", tz=BERLIN)
    assert fires(c, at(2025, 3, 29, 12, tz=BERLIN), 2) == [
        "2025-03-30T03:00:00+02:00", "2025-03-31T02:30:00+02:00"]


def test_ny_fall_back_daily_0130_fires_on_the_first_occurrence_only():
    c = crontab.from_string("30 1 * * *", tz=NY)
    assert fires(c, at(2025, 11, 1, 12, tz=NY), 3) == [
        "2025-11-02T01:30:00-04:00", "2025-11-03T01:30:00-05:00", "2025-11-04T01:30:00-05:00"]
    # starting during the repeated hour, after the first 01:30, does not fire again
    second_0115 = datetime(2025, 11, 2, 1, 15, tzinfo=NY, fold=1)
    assert fires(c, second_0115, 1) == ["2025-11-03T01:30:00-05:00"]


def test_ny_fall_back_daily_0230_is_not_ambiguous():
    assert fires(crontab.from_string("30 2 * * *", tz=NY), at(2025, 11, 1, 12, tz=NY), 2) == [
        "2025-11-02T02:30:00-05:00", "2025-11-03T02:30:00-05:00"]


def test_berlin_fall_back_daily_0230_fires_once():
    c = crontab.from_string("30 2 * * *", tz=BERLIN)
    assert fires(c, at(2025, 10, 25, 12, tz=BERLIN), 2) == [
        "2025-10-26T02:30:00+02:00", "2025-10-27T02:30:00+01:00"]


def local_day(tz, y, m, d):
    return datetime(y, m, d, tzinfo=tz), datetime(y, m, d, tzinfo=tz) + timedelta(days=1)


def assert_strictly_increasing(times):
    utc = [t.astimezone(UTC) for t in times]
    assert utc == sorted(set(utc)), "a fire time is repeated or out of order"


@pytest.mark.parametrize("tz, day, expr, count, hours", [
    # spring forward: 23 wall hours; the skipped 02:xx slots collapse into 03:00
    (NY, (2025, 3, 9), "0 * * * *", 23, 23),
    (NY, (2025, 3, 9), "*/15 * * * *", 92, 23),
    (BERLIN, (2025, 3, 30), "0 * * * *", 23, 23),
    (BERLIN, (2025, 3, 30), "*/15 * * * *", 92, 23),
    # fall back: 25 real hours, but each wall time fires once (first occurrence)
    (NY, (2025, 11, 2), "0 * * * *", 24, 25),
    (NY, (2025, 11, 2), "*/15 * * * *", 96, 25),
    (BERLIN, (2025, 10, 26), "0 * * * *", 24, 25),
    (BERLIN, (2025, 10, 26), "*/15 * * * *", 96, 25),
    (NY, (2025, 3, 9), "30 2 * * *", 1, 23),
    (NY, (2025, 11, 2), "30 1 * * *", 1, 25),
    (BERLIN, (2025, 3, 30), "30 2 * * *", 1, 23),
    (BERLIN, (2025, 10, 26), "30 2 * * *", 1, 25),
])
def test_transition_days_neither_skip_nor_double_fire(tz, day, expr, count, hours):
    start, end = local_day(tz, *day)
    assert (end.astimezone(UTC) - start.astimezone(UTC)) == timedelta(hours=hours)
    day_fires = fires_between(crontab.from_string(expr, tz=tz), start, end)
    assert len(day_fires) == count
    assert_strictly_increasing(day_fires)
    walls = [t.replace(tzinfo=None) for t in day_fires]
    assert len(set(walls)) == len(walls)  # no wall time fires twice


def test_ny_spring_forward_quarter_hours_around_the_gap():
    c = crontab.from_string("*/15 * * * *", tz=NY)
    assert fires(c, at(2025, 3, 9, 1, 30, tz=NY), 4) == [
        "2025-03-09T01:45:00-05:00", "2025-03-09T03:00:00-04:00",
        "2025-03-09T03:15:00-04:00", "2025-03-09T03:30:00-04:00"]
    # just before the jump, in UTC: 06:59:59Z is 01:59:59 EST
    assert fires(c, at(2025, 3, 9, 6, 59, 59), 1) == ["2025-03-09T03:00:00-04:00"]


def test_ny_fall_back_quarter_hours_skip_the_repeated_hour():
    c = crontab.from_string("*/15 * * * *", tz=NY)
    assert fires(c, at(2025, 11, 2, 1, 30, tz=NY), 3) == [
        "2025-11-02T01:45:00-04:00", "2025-11-02T02:00:00-05:00", "2025-11-02T02:15:00-05:00"]
    # from inside the second 01:xx (fold=1) the first 01:30 is in the past
    assert fires(c, datetime(2025, 11, 2, 1, 20, tzinfo=NY, fold=1), 1) == [
        "2025-11-02T02:00:00-05:00"]
    # the same instant given in UTC (06:20Z)
    assert fires(c, at(2025, 11, 2, 6, 20), 1) == ["2025-11-02T02:00:00-05:00"]


def test_berlin_fall_back_hourly():
    c = crontab.from_string("0 * * * *", tz=BERLIN)
    assert fires(c, at(2025, 10, 26, 1, 30, tz=BERLIN), 3) == [
        "2025-10-26T02:00:00+02:00", "2025-10-26T03:00:00+01:00", "2025-10-26T04:00:00+01:00"]


def test_interval_is_elapsed_time_across_dst():
    hourly = every("1h")
    assert hourly.next_after(at(2025, 11, 2, 1, 30, tz=NY)).isoformat() == \
        "2025-11-02T01:30:00-05:00"
    assert hourly.next_after(at(2025, 3, 9, 1, 30, tz=NY)).isoformat() == \
        "2025-03-09T03:30:00-04:00"
    assert every("1d").next_after(at(2025, 3, 8, 12, tz=NY)).isoformat() == \
        "2025-03-09T13:00:00-04:00"  # 24 real hours, not "same wall time tomorrow"


# ---- intervals ----

@pytest.mark.parametrize("value, seconds", [
    ("30s", 30), ("5m", 300), ("1h30m", 5400), ("1h 30m", 5400), ("2d", 172800), ("1w", 604800),
    ("1.5h", 5400), ("90", 90), (" 10S ", 10), ("0.5s", 0.5), (90, 90), (2.5, 2.5),
    (timedelta(seconds=3), 3), (timedelta(minutes=2), 120),
])
def test_interval_parsing(value, seconds):
    assert parse_interval(value) == timedelta(seconds=seconds)
    assert every(value).next_after(at(2025, 1, 1)) == at(2025, 1, 1) + timedelta(seconds=seconds)


@pytest.mark.parametrize("seconds, text", [(5400, "1h30m"), (30, "30s"), (90061, "1d1h1m1s"),
                                           (0.5, "0.5s")])
def test_format_interval_round_trips(seconds, text):
    assert format_interval(timedelta(seconds=seconds)) == text
    assert parse_interval(text) == timedelta(seconds=seconds)
    assert repr(every(seconds)) == f"every({text!r})"


@pytest.mark.parametrize("value, message", [
    ("0s", r"interval '0s' must be positive"),
    (0, r"interval 0 must be positive"),
    (-5, r"interval -5 must be positive"),
    (timedelta(seconds=-1), r"must be positive"),
    ("", r"bad interval ''"),
    ("5x", r"bad interval '5x'"),
    ("1h30", r"bad interval '1h30'"),
    ("-5s", r"bad interval '-5s'"),
    ("1m1m", r"a unit is repeated"),
    (float("nan"), r"not a finite number"),
    (float("inf"), r"not a finite number"),
    (10**30, r"too large"),
    (timedelta(days=36526), r"is too large \(at most 100 years\)"),
    ("5300w", r"interval '5300w' is too large"),
    ("9" * 400 + "d", r"not a finite number|too large"),
    (True, r"interval must be seconds"),
    (None, r"interval must be seconds"),
])
def test_bad_intervals(value, message):
    with pytest.raises(ValueError, match=message):
        parse_interval(value)


# ---- cron strings and fields ----

@pytest.mark.parametrize("expr, kwargs", [
    ("*/15 3,17,22 * * thu,fri", dict(minute="*/15", hour="3,17,22", day_of_week="thu,fri")),
    ("0 0 2-30/3 * *", dict(minute=0, hour=0, day_of_month="2-30/3")),
    ("0 0 11 5 *", dict(minute=0, hour=0, day_of_month=11, month_of_year=5)),
    ("0 0 1 */3 *", dict(minute=0, hour=0, day_of_month=1, month_of_year="*/3")),
    ("0 8 * * 1", dict(minute=0, hour=8, day_of_week="mon")),
    ("0 0 * jan-mar sun", dict(minute=0, hour=0, month_of_year="1-3", day_of_week=0)),
    ("@hourly", dict(minute=0)),
    ("@daily", dict(minute=0, hour=0)),
    ("@midnight", dict(minute=0, hour=0)),
    ("@weekly", dict(minute=0, hour=0, day_of_week="sunday")),
    ("@monthly", dict(minute=0, hour=0, day_of_month=1)),
    ("@yearly", dict(minute=0, hour=0, day_of_month=1, month_of_year=1)),
    ("@ANNUALLY", dict(minute=0, hour=0, day_of_month=1, month_of_year="jan")),
])
def test_cron_string_equals_kwargs_form(expr, kwargs):
    from_string, from_kwargs = crontab.from_string(expr), crontab(**kwargs)
    assert from_string == from_kwargs
    assert fires(from_string, at(2025, 2, 27), 5) == fires(from_kwargs, at(2025, 2, 27), 5)


def test_cron_string_round_trips_through_repr_and_str():
    c = crontab.from_string(" */15  3,17,22 * *   thu,fri ", tz="Asia/Shanghai")
    assert str(c) == "*/15 3,17,22 * * thu,fri"
    assert eval(repr(c), {"crontab": crontab}) == c
    assert c != crontab.from_string("*/15 3,17,22 * * thu,fri")  # UTC is another schedule


@pytest.mark.parametrize("name, spec, values", [
    ("minute", "*/15", {0, 15, 30, 45}),
    ("minute", "5/20", {5, 25, 45}),
    ("hour", "*/3,8-17", {0, 3, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 21}),
    ("hour", "22-2", {22, 23, 0, 1, 2}),  # reversed ranges wrap, as in Celery
    ("day_of_week", "fri-mon", {5, 6, 0, 1}),
    ("day_of_week", "mon-fri", {1, 2, 3, 4, 5}),
    ("day_of_week", "5-7", {5, 6, 0}),
    ("day_of_week", "SUNDAY,Sat", {0, 6}),
    ("day_of_week", "*/2", {0, 2, 4, 6}),
    ("day_of_month", "2-30/3", set(range(2, 31, 3))),
    ("day_of_month", "1-7,15-21", set(range(1, 8)) | set(range(15, 22))),
    ("month_of_year", "*/3", {1, 4, 7, 10}),
    ("month_of_year", "jan,december", {1, 12}),
    ("minute", [0, "30"], {0, 30}),
    ("minute", 7, {7}),
])
def test_parse_field(name, spec, values):
    assert parse_field(name, spec) == values


@pytest.mark.parametrize("kwargs, message", [
    (dict(minute="61"), r"minute '61' is out of range 0-59"),
    (dict(minute=61), r"minute '61' is out of range 0-59"),
    (dict(hour=24), r"hour '24' is out of range 0-23"),
    (dict(hour="-1"), r"bad hour '-1'"),
    (dict(day_of_week="thurs"), r"unknown day_of_week 'thurs' \(expected 0-7"),
    (dict(day_of_week="8"), r"day_of_week '8' is out of range 0-7"),
    (dict(day_of_month=0), r"day_of_month '0' is out of range 1-31"),
    (dict(day_of_month="32"), r"day_of_month '32' is out of range 1-31"),
    (dict(month_of_year="13"), r"month_of_year '13' is out of range 1-12"),
    (dict(month_of_year="smarch"), r"unknown month_of_year 'smarch'"),
    (dict(minute=""), r"minute is empty"),
    (dict(hour="1,,2"), r"hour '1,,2' has an empty list item"),
    (dict(minute="*/0"), r"minute step in '\*/0' must be at least 1"),
    (dict(minute="1-"), r"bad minute '1-'"),
    (dict(minute="**"), r"bad minute '\*\*'"),
    (dict(minute="9" * 50), r"minute '9{50}' is out of range"),
    (dict(minute=[]), r"minute is an empty list"),
    (dict(minute=True), r"minute must be a number"),
    (dict(minute=1.5), r"minute must be a number"),
    (dict(minute="abc"), r"unknown minute 'abc' \(expected 0-59\)"),
])
def test_bad_crontab_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        crontab(**kwargs)


@pytest.mark.parametrize("expr, message", [
    ("* * * *", r"cron expression '\* \* \* \*' has 4 fields; expected 5"),
    ("* * * * * *", r"has 6 fields"),
    ("", r"has 0 fields"),
    ("@reboot", r"unknown cron alias '@reboot'"),
    ("61 * * * *", r"minute '61' is out of range 0-59"),
    ("* * * * thurs", r"unknown day_of_week 'thurs'"),
    ("0 0 ? * *", r"bad day_of_month '\?'"),
    ("0 0 L * *", r"unknown day_of_month 'l'"),
])
def test_bad_cron_strings(expr, message):
    with pytest.raises(ValueError, match=message):
        crontab.from_string(expr)


# ---- parse_schedule: config values ----

def test_parse_schedule_kinds():
    assert parse_schedule("30s") == every(30)
    assert parse_schedule(10) == every(10) == parse_schedule(10.0)
    assert parse_schedule(timedelta(seconds=3)) == every(3)  # the seeds' timedelta(seconds=3)
    assert parse_schedule("*/15 * * * *") == crontab(minute="*/15")
    assert parse_schedule("@daily") == crontab(0, 0)
    assert parse_schedule({"every": "1h30m"}) == every(5400)
    assert parse_schedule({"minutes": 5, "seconds": 30}) == every(330)
    assert parse_schedule({"cron": "0 8 * * mon"}) == crontab(0, 8, "mon")
    assert parse_schedule({"hour": 8, "minute": 30, "day_of_week": 1}) == crontab(30, 8, 1)
    schedule = crontab(minute=5)
    assert parse_schedule(schedule) is schedule


def test_parse_schedule_timezones():
    app_tz = parse_schedule("30 8 * * *", timezone="Asia/Shanghai")
    assert app_tz.tz == SHANGHAI
    assert app_tz.next_after(at(2025, 6, 1)).isoformat() == "2025-06-01T08:30:00+08:00"
    own_tz = parse_schedule({"cron": "30 8 * * *", "timezone": "Europe/Berlin"},
                            timezone="Asia/Shanghai")
    assert own_tz.next_after(at(2025, 6, 1)).isoformat() == "2025-06-01T08:30:00+02:00"
    assert parse_schedule({"hour": 8}, timezone=NY).tz == NY
    assert parse_schedule("30 8 * * *").tz is UTC


@pytest.mark.parametrize("value, message", [
    ("", r"bad schedule ''"),
    ("*/5", r"bad schedule '\*/5' \(expected an interval like '30s'"),
    ("soon", r"bad schedule 'soon'"),
    ("0s", r"must be positive"),
    ("-5s", r"bad schedule '-5s'"),
    (-1, r"must be positive"),
    (None, r"bad schedule None of type NoneType"),
    (True, r"bad schedule True of type bool"),
    ([1, 2], r"bad schedule \[1, 2\]"),
    ("61 * * * *", r"minute '61' is out of range 0-59"),
    ({"minit": 5}, r"unknown schedule key 'minit' \(did you mean 'minute'\?\)"),
    ({"zzz": 5}, r"unknown schedule key 'zzz' \(expected one of"),
    ({}, r"needs exactly one of .* got none"),
    ({"every": "5m", "cron": "* * * * *"}, r"got every and cron"),
    ({"every": "5m", "timezone": "UTC"}, r"'timezone' applies to crontab schedules only"),
    ({"seconds": "5"}, r"schedule seconds must be a number, got '5'"),
    ({"seconds": 0}, r"must be positive"),
    ({"days": 10**12}, r"not a usable duration"),
    ({"cron": 5}, r"cron expression must be a string"),
    ({"hour": 8, "timezone": "Nowhere/Land"}, r"unknown timezone 'Nowhere/Land'"),
])
def test_parse_schedule_errors(value, message):
    with pytest.raises(ValueError, match=message):
        parse_schedule(value)


# ---- is_due and catch_up ----

def test_is_due_crontab():
    c = crontab(minute=0)  # hourly
    assert c.is_due(at(2025, 1, 1, 10), at(2025, 1, 1, 10, 59)) == Due(False, at(2025, 1, 1, 11))
    assert c.is_due(at(2025, 1, 1, 10), at(2025, 1, 1, 11)) == Due(True, at(2025, 1, 1, 12))
    assert c.is_due(at(2025, 1, 1, 10), at(2025, 1, 1, 11, 30)) == Due(True, at(2025, 1, 1, 12))
    # never run: anchored at now, like Celery
    assert c.is_due(None, at(2025, 1, 1, 10, 30)) == Due(False, at(2025, 1, 1, 11))


def test_is_due_interval_resets_from_now():
    e = every("10m")
    assert e.is_due(at(2025, 1, 1, 10), at(2025, 1, 1, 10, 9)) == Due(False, at(2025, 1, 1, 10, 10))
    assert e.is_due(at(2025, 1, 1, 10), at(2025, 1, 1, 10, 13)) == Due(True, at(2025, 1, 1, 10, 23))


def test_is_due_across_fall_back_compares_instants_not_wall_times():
    c = crontab.from_string("30 1 * * *", tz=NY)
    last = datetime(2025, 11, 2, 1, 30, tzinfo=NY)  # first 01:30 (EDT)
    now = datetime(2025, 11, 2, 1, 40, tzinfo=NY, fold=1)  # second 01:40 (EST)
    assert c.is_due(last, now).due is False


def test_catch_up_runs_once_within_grace_and_skips_beyond():
    c = crontab(minute=0)  # hourly; beat was down from 10:00 to 13:00:20
    last, now = at(2025, 1, 1, 10), at(2025, 1, 1, 13, 0, 20)
    assert catch_up(c, last, now, grace=None) == CatchUp(True, at(2025, 1, 1, 11), at(2025, 1, 1, 14))
    assert catch_up(c, last, now, grace=30) == CatchUp(True, at(2025, 1, 1, 13), at(2025, 1, 1, 14))
    assert catch_up(c, last, now, grace=timedelta(seconds=10)) == CatchUp(
        False, at(2025, 1, 1, 11), at(2025, 1, 1, 14))
    assert catch_up(c, last, at(2025, 1, 1, 10, 30), grace=10) == CatchUp(
        False, None, at(2025, 1, 1, 11))
    assert catch_up(c, None, now, grace=10) == CatchUp(False, None, at(2025, 1, 1, 14))
    with pytest.raises(ValueError, match="must not be negative"):
        catch_up(c, last, now, grace=-1)


def test_catch_up_interval_uses_slots_anchored_at_last_run():
    e = every("1h")  # slots 11:00, 12:00, 13:00 after a 10:00 run
    last = at(2025, 1, 1, 10)
    assert catch_up(e, last, at(2025, 1, 1, 13, 0, 20), grace=30).run is True
    assert catch_up(e, last, at(2025, 1, 1, 13, 0, 20), grace=30).slot == at(2025, 1, 1, 13)
    assert catch_up(e, last, at(2025, 1, 1, 13, 40), grace=60).run is False
    assert catch_up(e, last, at(2025, 1, 1, 13, 40), grace=60).next_run == at(2025, 1, 1, 14, 40)


# ---- properties ----

def brute_force_next(minutes, hours, dows, doms, months, start: datetime) -> datetime:
    """Independent oracle for UTC: walk whole days, then hours, then minutes."""
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    for _ in range(366 * 30):
        cron_dow = (day.weekday() + 1) % 7
        if day.month in months and day.day in doms and cron_dow in dows:
            for h in sorted(hours):
                for m in sorted(minutes):
                    candidate = day.replace(hour=h, minute=m)
                    if candidate > start:
                        return candidate
        day += timedelta(days=1)
    raise AssertionError("oracle found nothing")


def subsets(lo, hi):
    return st.sets(st.integers(lo, hi), min_size=1, max_size=4) | st.just(set(range(lo, hi + 1)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(minutes=subsets(0, 59), hours=subsets(0, 23), dows=subsets(0, 6), doms=subsets(1, 31),
       months=subsets(1, 12),
       start=st.datetimes(datetime(2000, 1, 1), datetime(2030, 1, 1), timezones=st.just(UTC)))
def test_next_after_matches_brute_force_in_utc(minutes, hours, dows, doms, months, start):
    assume(any(d <= (29 if m == 2 else calendar.monthrange(2001, m)[1])
               for m in months for d in doms))
    c = crontab(sorted(minutes), sorted(hours), sorted(dows), sorted(doms), sorted(months))
    assert c.next_after(start) == brute_force_next(minutes, hours, dows, doms, months, start)


@settings(max_examples=200, deadline=None)
@given(expr=st.sampled_from(["*/15 * * * *", "0 * * * *", "30 2 * * *", "30 1 * * *",
                             "*/7 1-3 * * *", "0 0 * * *", "59 1,2 * * *"]),
       tz=st.sampled_from([NY, BERLIN, ZoneInfo("Australia/Lord_Howe"), SHANGHAI]),
       start=st.datetimes(datetime(2024, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)))
def test_fires_match_the_wall_clock_or_a_jump_and_never_repeat(expr, tz, start):
    c = crontab.from_string(expr, tz=tz)
    times = fires_between(c, start, start + timedelta(days=2))
    assert times and times[0].astimezone(UTC) > start - timedelta(microseconds=1)
    assert_strictly_increasing(times)
    for t in times:
        jumped = (t - timedelta(seconds=1)).astimezone(tz).utcoffset() < t.utcoffset()
        matches = t.minute in c.minute and t.hour in c.hour
        assert matches or jumped, t.isoformat()
        assert t.fold == 0  # never the second occurrence of a repeated wall time


CRONISH = st.text(alphabet="0123456789*/-, abcdefghijklmnopqrstuvwxyz@?LW\t", max_size=40)


@settings(max_examples=500, deadline=None)
@given(value=st.one_of(st.text(max_size=40), CRONISH, st.integers(), st.floats(),
                       st.dictionaries(st.sampled_from(["minute", "hour", "every", "cron",
                                                        "seconds", "timezone", "bogus"]),
                                       st.one_of(CRONISH, st.integers(), st.floats()),
                                       max_size=3)))
def test_parse_schedule_only_ever_raises_value_error(value):
    try:
        schedule = parse_schedule(value)
    except ValueError:
        return
    # whatever parsed must be usable
    assert schedule.next_after(at(2025, 1, 1)).astimezone(UTC) > at(2025, 1, 1)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["minute", "hour", "day_of_week", "day_of_month", "month_of_year"]),
       spec=CRONISH)
def test_parse_field_only_ever_raises_value_error(field, spec):
    try:
        values = parse_field(field, spec)
    except ValueError:
        return
    assert values and all(isinstance(v, int) for v in values)


def test_fixed_offset_timezones_work():
    c = crontab(0, 9, tz=timezone(timedelta(hours=8)))
    assert fires(c, at(2025, 6, 1), 1) == ["2025-06-01T09:00:00+08:00"]


def test_first_slot_from():
    e, c = every("1h"), crontab(minute=0)
    last = at(2025, 1, 1, 10)
    assert e.first_slot_from(last, at(2025, 1, 1, 9)) == at(2025, 1, 1, 11)  # never last_run
    assert e.first_slot_from(last, at(2025, 1, 1, 12)) == at(2025, 1, 1, 12)  # slot == start
    assert e.first_slot_from(last, at(2025, 1, 1, 12, 0, 1)) == at(2025, 1, 1, 13)
    assert c.first_slot_from(last, at(2025, 1, 1, 9)) == at(2025, 1, 1, 11)
    assert c.first_slot_from(last, at(2025, 1, 1, 12)) == at(2025, 1, 1, 12)
    assert c.first_slot_from(last, at(2025, 1, 1, 12, 0, 1)) == at(2025, 1, 1, 13)
    assert catch_up(e, last, at(2025, 1, 1, 11, 0, 20), grace=7200).slot == at(2025, 1, 1, 11)
