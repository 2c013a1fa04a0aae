"""Celery's ``solar(event, lat, lon)``: a schedule that fires at a solar event at a place.

The astronomy library: astral (``pip install 'qdeploy[solar]'``), chosen over the other two:

* accuracy: astral implements NOAA's solar position algorithm; its sunrise/sunset times match
  published USNO and planetarium tables to within a minute (tests/unit/test_solar.py checks
  three cities against them). Beat sends a task; it needs a minute, not a milli-arcsecond.
* install size and no compiled dependencies: astral is pure Python with no dependencies
  (~0.4 MB installed). ephem, what Celery uses, is a C extension (a compiler or a matching wheel
  on every host); skyfield needs numpy, jplephem and sgp4 plus a 17 MB JPL ephemeris file that
  it downloads on first use (which an offline production host cannot do) or takes from yet
  another package.
* maintenance: astral is a long-lived, widely installed project; its current release (3.2) is
  from 2022, but the maths it implements is settled, and qdeploy uses only three public names
  of it (``Observer``, ``sun.elevation``, ``sun.noon``), so a change of library is local to
  ``_astral()``, ``_noon()`` and ``_elevation()`` below.

The core install does not need it: this module imports astral only when a ``solar`` is built,
and without astral that is one error (:class:`SolarUnavailable`, a ValueError, so a config or
Redis entry fails like any bad entry: one line, exit 2) naming the ``pip install``.

How an event is found. astral's own ``sunrise(observer, date)`` answers "the sunrise on this
date" and raises on a date without one; beat asks "the first event after this instant". So each
day is split at solar noon (astral's transit) and solar midnight (halfway between two noons);
in each half the sun's geometric elevation is read at both ends, and the event is where it
crosses the event's threshold in the event's direction (upwards for dawns and sunrise, downwards
for sunset and dusks), found by bisection and rounded up to the second. The brackets depend only
on the day, never on the time asked about, so the same event is always the same instant (the
run id of a slot is stable across beats). Thresholds are for the centre of the sun: -0°50'
for sunrise and sunset (34' of refraction plus 16' of radius: USNO's and NOAA's definition),
-6°, -12° and -18° for the civil, nautical and astronomical twilights; ``solar_noon`` is the
transit, which every day has.

* Polar day and night: a day without the event is skipped, never an error. ``next_after``
  looks 366 days ahead; the sun's year repeats, so when nothing is found there the event never
  happens there: ``next_after`` returns :data:`NEVER` (9999-01-01 UTC), logs that once, and the
  entry never fires. (With the real sun every event happens at least once a year everywhere.)
* DST: events are instants in UTC, returned in the zone of the datetime asked about; no wall
  clock is involved, so a clock change can neither double nor skip a run.
"""

from __future__ import annotations

import logging
import math
from datetime import date, datetime, timedelta
from typing import Any

from qdeploy.beat.fields import UTC, parse_choice, parse_degrees
from qdeploy.beat.schedule import Schedule, _utc

log = logging.getLogger("qdeploy.beat")

INSTALL = "pip install 'qdeploy[solar]'"
SEARCH_DAYS = 366
NEVER = datetime(9999, 1, 1, tzinfo=UTC)  # "no such event": later than any real fire time
RISE, SET, NOON = "rise", "set", "noon"
_EDGE = -50 / 60  # sunrise/sunset: the centre of the sun 50' below the horizon

# event -> (direction, elevation of the sun's centre in degrees), seed 004's nine events
EVENTS: dict[str, tuple[str, float | None]] = {
    "dawn_astronomical": (RISE, -18.0),
    "dawn_nautical": (RISE, -12.0),
    "dawn_civil": (RISE, -6.0),
    "sunrise": (RISE, _EDGE),
    "solar_noon": (NOON, None),
    "sunset": (SET, _EDGE),
    "dusk_civil": (SET, -6.0),
    "dusk_nautical": (SET, -12.0),
    "dusk_astronomical": (SET, -18.0),
}
_DAY = timedelta(days=1)
_LAST_START = NEVER - (SEARCH_DAYS + 2) * _DAY
_FIRST = datetime.min.replace(tzinfo=UTC)


class SolarUnavailable(ImportError, ValueError):
    """astral is not installed. A ValueError too, so a bad entry's usual handling applies."""


def _astral():
    try:
        from astral import Observer
        from astral.sun import elevation, noon
    except ImportError:
        raise SolarUnavailable(f"solar schedules need the astral package: {INSTALL}") from None
    return Observer, elevation, noon


class solar(Schedule):
    """``solar('sunset', -37.81753, 144.96715)``: at each sunset in Melbourne (north and east
    positive), as Celery's ``celery.schedules.solar``."""

    def __init__(self, event: str, lat: float, lon: float) -> None:
        self.event = parse_choice("solar event", event, tuple(EVENTS))
        self.lat = parse_degrees("latitude", lat, 90)
        self.lon = parse_degrees("longitude", lon, 180)
        self._direction, self._threshold = EVENTS[self.event]
        observer, self._sun_elevation, self._sun_noon = _astral()
        self._observer = observer(latitude=self.lat, longitude=self.lon, elevation=0.0)
        self._noons: dict[date, datetime] = {}
        self._known: tuple[datetime, datetime] | None = None  # (t, e): e is the first event after t
        self._reported = False

    # -- Schedule --------------------------------------------------------------------------------
    def next_after(self, dt: datetime) -> datetime:
        start = _utc(dt)
        known = self._known
        if known is None or not known[0] <= start < known[1]:
            found = self._search(start)
            # "never within a year" is never at all (the sun's year repeats): no search again
            known = self._known = (start if found < NEVER else _FIRST, found)
        return known[1].astimezone(dt.tzinfo)

    def first_slot_from(self, last_run: datetime, start: datetime) -> datetime:
        after = max(_utc(last_run), _utc(start) - timedelta(microseconds=1))
        return self.next_after(after).astimezone(last_run.tzinfo)

    # -- the search ------------------------------------------------------------------------------
    def _search(self, start: datetime) -> datetime:
        if start >= _LAST_START:
            raise ValueError(f"{self!r}: no events are computed after {_LAST_START.date().isoformat()}")
        try:
            day = start.date() - _DAY
            for _ in range(SEARCH_DAYS + 2):
                for instant in self._events_of(day):
                    if instant > start:
                        return instant
                day += _DAY
        except OverflowError:  # the first days of year 1
            raise ValueError(f"{self!r}: no events are computed as early as "
                             f"{start.date().isoformat()}") from None
        if not self._reported:
            self._reported = True
            log.error("%r: the sun does not reach that event there within %d days of %s, so an "
                      "entry on it never fires", self, SEARCH_DAYS, start.isoformat())
        return NEVER

    def _events_of(self, day: date) -> list[datetime]:
        """This event in the solar day of ``day`` (its noon), in time order: 0, 1 or 2 of them."""
        noon = self._noon(day)
        if self._direction == NOON:
            return [noon]
        before, after = self._noon(day - _DAY), self._noon(day + _DAY)
        halves = ((before + (noon - before) / 2, noon), (noon, noon + (after - noon) / 2))
        return [t for t in (self._crossing(a, b) for a, b in halves) if t is not None]

    def _noon(self, day: date) -> datetime:
        if day not in self._noons:
            if len(self._noons) > 64:
                self._noons.clear()
            self._noons[day] = self._sun_noon(self._observer, day)
        return self._noons[day]

    def _elevation(self, ts: float) -> float:
        when = datetime.fromtimestamp(ts, UTC)
        return self._sun_elevation(self._observer, when, with_refraction=False) - self._threshold

    def _crossing(self, a: datetime, b: datetime) -> datetime | None:
        """Where the elevation crosses the threshold in our direction within [a, b], if it does."""
        lo, hi = a.timestamp(), b.timestamp()
        up = self._direction == RISE
        ea, eb = self._elevation(lo), self._elevation(hi)
        if not (ea < 0 <= eb if up else ea > 0 >= eb):
            return None
        while hi - lo > 0.5:
            mid = (lo + hi) / 2
            e = self._elevation(mid)
            if (e >= 0 if up else e <= 0):
                hi = mid
            else:
                lo = mid
        return datetime.fromtimestamp(math.ceil(hi), UTC)

    # -- identity --------------------------------------------------------------------------------
    def _key(self) -> tuple[Any, ...]:
        return (self.event, self.lat, self.lon)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, solar) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(("solar", *self._key()))

    def __str__(self) -> str:
        return f"{self.event} at {self.lat!r}, {self.lon!r}"

    def __repr__(self) -> str:
        return f"solar({self.event!r}, {self.lat!r}, {self.lon!r})"
