"""When a target is due: cron schedules, maintenance windows, jitter, and the one due-ness rule.

Pure functions of (settings, stored `rotated_at`, now) with no clock of their own and no
apscheduler import, so `rotate --due` (a CronJob) and `rotator run` (the daemon) make the same
decision from the same stored state, and tests inject any `now`.

The rule (`due_at`, `next_due`, `is_due`):

- interval mode: due at ``rotated_at + interval``;
- schedule mode (`schedule` = 5-field cron in `timezone`): due at the first cron fire time after
  ``rotated_at``, i.e. due once a fire time lies in ``(rotated_at, now]``;
- both: plus the target's deterministic jitter offset in ``[0, jitter)``;
- with a `window`, a due target waits for the window: rotation happens only inside it.

Cron: ``minute hour day-of-month month day-of-week`` with ``*``, lists ``a,b``, ranges ``a-b``, steps
``*/n`` / ``a-b/n`` / ``a/n``, names ``jan``-``dec`` and ``sun``-``sat`` (0 and 7 are Sunday), and the
macros ``@hourly @daily @midnight @weekly @monthly @yearly @annually``. As in Vixie cron, when both
day-of-month and day-of-week are restricted a day matching either one fires. Times are wall-clock
times in `timezone`: a time skipped by a DST jump fires at the moment after the jump; a time repeated
by a DST fold fires once, at its first occurrence.

Window: one or more clauses separated by ``;``, each ``[DAYS] HH:MM-HH:MM`` where DAYS is a list of
days or day ranges (``Mon-Fri``, ``Sat,Sun``, ``Fri-Mon``); no DAYS means every day. The start is
inclusive and the end exclusive (``00:00-24:00`` is the whole day). A clause whose end is before its
start crosses midnight and belongs to the day it starts on: ``Fri 22:00-02:00`` is Friday 22:00 to
Saturday 02:00.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from rotator.config import TargetSettings

UTC = timezone.utc

_MONTHS = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
# cron numbering: 0 = Sunday ... 6 = Saturday (7 is Sunday too)
_CRON_DAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
# A cron expression that matches nothing within this many years never fires (e.g. "0 0 30 2 *").
_SEARCH_DAYS = 366 * 29
# Wall-clock offsets change by at most this much at a DST transition (with margin).
_MAX_SHIFT = timedelta(hours=3)


class ScheduleError(ValueError):
    """A cron expression, window or timezone that cannot be used; the message says why."""


# --- time zones --------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` ("UTC", "Australia/Sydney"); ScheduleError if unknown."""
    if not isinstance(name, str) or not name.strip():
        raise ScheduleError("a time zone is an IANA name such as \"UTC\" or \"Australia/Sydney\"")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r}; use an IANA name such as \"UTC\" or "
                            "\"Australia/Sydney\"") from None


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("scheduling needs timezone-aware datetimes")
    return moment


def _wall_to_utc(day: date, clock: time, tz: ZoneInfo) -> datetime:
    """A local wall time as an aware UTC moment. A time inside a DST gap maps past the gap; a
    repeated time maps to its first occurrence (fold=0)."""
    return datetime.combine(day, clock, tzinfo=tz).astimezone(UTC)


# --- cron --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cron:
    """A parsed 5-field cron expression. Use `parse_cron`."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]          # day of month, 1-31
    months: frozenset[int]        # 1-12
    weekdays: frozenset[int]      # cron numbering, 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def matches(self, moment: datetime, tz: ZoneInfo) -> bool:
        """Whether `moment` (to the minute, as wall time in `tz`) is a fire time."""
        local = _aware(moment).astimezone(tz)
        return self.day_matches(local.date()) and local.hour in self.hours and local.minute in self.minutes

    def next_after(self, moment: datetime, tz: ZoneInfo) -> datetime | None:
        """The first fire time strictly after `moment` (aware, UTC), or None if there is none."""
        after = _aware(moment).astimezone(UTC)
        local = after.astimezone(tz)
        # Start a day early: a DST fold can put a fire time of the previous wall day after `after`.
        day = local.date() - timedelta(days=1)
        for _ in range(_SEARCH_DAYS):
            if self.day_matches(day):
                found = self._first_on(day, tz, after)
                if found is not None:
                    return found
            day += timedelta(days=1)
        return None

    def _first_on(self, day: date, tz: ZoneInfo, after: datetime) -> datetime | None:
        best: datetime | None = None
        best_wall: datetime | None = None
        floor = after.astimezone(tz).replace(tzinfo=None) - _MAX_SHIFT
        for hour in self.hours:
            for minute in self.minutes:
                wall = datetime.combine(day, time(hour, minute))
                if wall < floor:
                    continue
                if best_wall is not None and wall > best_wall + _MAX_SHIFT:
                    return best
                moment = _wall_to_utc(day, time(hour, minute), tz)
                if moment > after and (best is None or moment < best):
                    best, best_wall = moment, wall
        return best


def parse_cron(expression: str) -> Cron:
    """Parse a 5-field cron expression (or an @macro); ScheduleError says what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise ScheduleError("a schedule is a 5-field cron expression such as \"0 3 * * Mon\"")
    text = expression.strip()
    expanded = _MACROS.get(text.lower(), text)
    if expanded.startswith("@"):
        raise ScheduleError(f"unknown cron macro {text!r}; use one of {', '.join(sorted(_MACROS))}")
    fields = expanded.split()
    if len(fields) != 5:
        raise ScheduleError(f"{text!r} has {len(fields)} fields; a cron expression has 5: "
                            "minute hour day-of-month month day-of-week, e.g. \"0 3 * * Mon\"")
    minute, hour, dom, month, dow = fields
    weekdays = _cron_field(dow, "day-of-week", 0, 7, _CRON_DAYS)
    weekdays = {d % 7 for d in weekdays}  # 7 is Sunday too
    cron = Cron(
        expression=text,
        minutes=tuple(sorted(_cron_field(minute, "minute", 0, 59))),
        hours=tuple(sorted(_cron_field(hour, "hour", 0, 23))),
        days=frozenset(_cron_field(dom, "day-of-month", 1, 31)),
        months=frozenset(_cron_field(month, "month", 1, 12, _MONTHS)),
        weekdays=frozenset(weekdays),
        days_restricted=not dom.startswith("*"),
        weekdays_restricted=not dow.startswith("*"),
    )
    if cron.next_after(datetime(2000, 1, 1, tzinfo=UTC), zone("UTC")) is None:
        raise ScheduleError(f"{text!r} never fires (no such date)")
    return cron


def _cron_field(text: str, what: str, low: int, high: int, names: dict[str, int] | None = None) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"{what} field {text!r} has an empty list item")
        body, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ScheduleError(f"{what} field {text!r}: the step after '/' must be a whole number >= 1")
            step = int(step_text)
        if body == "*":
            start, end = low, high
        elif "-" in body:
            first, _, last = body.partition("-")
            start, end = _cron_value(first, what, low, high, names), _cron_value(last, what, low, high, names)
            if start > end:
                raise ScheduleError(f"{what} field {text!r}: range {body!r} runs backwards")
        else:
            start = _cron_value(body, what, low, high, names)
            end = high if slash else start  # "5/15" means 5, 20, 35, 50
        values.update(range(start, end + 1, step))
    return values


def _cron_value(text: str, what: str, low: int, high: int, names: dict[str, int] | None) -> int:
    key = text.lower()
    if names and key[:3] in names and (key == key[:3] or _full_name(key)):
        return names[key[:3]]
    if not text.isdigit():
        allowed = f"{low}-{high}" + (" or a name such as " + ", ".join(list(names)[:2]) if names else "")
        raise ScheduleError(f"{what} value {text!r} is not valid (use {allowed})")
    value = int(text)
    if not low <= value <= high:
        raise ScheduleError(f"{what} value {value} is out of range {low}-{high}")
    return value


_FULL_NAMES = {"sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "january",
               "february", "march", "april", "june", "july", "august", "september", "october", "november",
               "december"}


def _full_name(key: str) -> bool:
    return key in _FULL_NAMES


# --- windows -----------------------------------------------------------------------------------

# Python numbering: Monday = 0 ... Sunday = 6
_DAYS = {name: i for i, name in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))}
_CLAUSE = re.compile(r"^(?:(?P<days>[A-Za-z,\-\s]+?)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})$")


@dataclass(frozen=True)
class WindowClause:
    days: frozenset[int]          # weekdays the clause starts on, Monday = 0
    start: int                    # minutes after midnight, inclusive
    end: int                      # minutes after midnight, exclusive (1440 = end of day)

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def contains(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        today = local.weekday()
        if not self.crosses_midnight:
            return today in self.days and self.start <= minute < self.end
        yesterday = (today - 1) % 7
        return (today in self.days and minute >= self.start) or (yesterday in self.days and minute < self.end)


@dataclass(frozen=True)
class Window:
    text: str
    clauses: tuple[WindowClause, ...]


@lru_cache(maxsize=256)
def parse_window(text: str) -> Window:
    """Parse a window such as "Mon-Fri 02:00-05:00"; ScheduleError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError("a window is e.g. \"Mon-Fri 02:00-05:00\" or \"22:00-02:00\"")
    clauses = []
    for raw in text.split(";"):
        clause_text = raw.strip()
        match = _CLAUSE.match(clause_text)
        if not match:
            raise ScheduleError(f"window {clause_text!r} is not of the form \"[DAYS] HH:MM-HH:MM\", "
                                "e.g. \"Mon-Fri 02:00-05:00\" or \"Sat,Sun 00:00-24:00\"")
        days = _window_days(match.group("days")) if match.group("days") else frozenset(range(7))
        start, end = _hhmm(match.group("start"), end=False), _hhmm(match.group("end"), end=True)
        if start == end or (start == 0 and end == 0):
            raise ScheduleError(f"window {clause_text!r} is empty (start equals end); "
                                "for a whole day write 00:00-24:00")
        clauses.append(WindowClause(days=days, start=start, end=end))
    return Window(text=text.strip(), clauses=tuple(clauses))


def _window_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if "-" in part:
            first, _, last = part.partition("-")
            a, b = _day(first), _day(last)
            days.update((a + i) % 7 for i in range((b - a) % 7 + 1))  # Fri-Mon wraps round the week
        else:
            days.add(_day(part))
    return frozenset(days)


def _day(text: str) -> int:
    key = text.lower()
    if key[:3] in _DAYS and (len(key) == 3 or key in _FULL_NAMES):
        return _DAYS[key[:3]]
    raise ScheduleError(f"{text!r} is not a day; use Mon, Tue, Wed, Thu, Fri, Sat, Sun (or ranges like Mon-Fri)")


def _hhmm(text: str, *, end: bool) -> int:
    hours_text, _, minutes_text = text.partition(":")
    hours, minutes = int(hours_text), int(minutes_text)
    if end and hours == 24 and minutes == 0:
        return 24 * 60
    if hours > 23 or minutes > 59:
        raise ScheduleError(f"{text!r} is not a time of day (00:00-23:59{', or 24:00 as an end' if end else ''})")
    return hours * 60 + minutes


def in_window(window: str | Window, tz: str | ZoneInfo, now: datetime) -> bool:
    """Whether `now` lies inside `window`, read as wall-clock time in `tz`."""
    parsed = parse_window(window) if isinstance(window, str) else window
    local = _aware(now).astimezone(zone(tz) if isinstance(tz, str) else tz)
    return any(clause.contains(local) for clause in parsed.clauses)


def next_window_start(window: str | Window, tz: str | ZoneInfo, now: datetime) -> datetime:
    """The earliest moment >= `now` inside `window` (`now` itself when inside)."""
    parsed = parse_window(window) if isinstance(window, str) else window
    zone_info = zone(tz) if isinstance(tz, str) else tz
    now = _aware(now).astimezone(UTC)
    if in_window(parsed, zone_info, now):
        return now
    local_day = now.astimezone(zone_info).date()
    candidates = []
    for offset in range(-1, 9):
        day = local_day + timedelta(days=offset)
        for clause in parsed.clauses:
            if day.weekday() not in clause.days:
                continue
            start = _wall_to_utc(day, time(clause.start // 60, clause.start % 60), zone_info)
            if start > now:
                candidates.append(start)
    for start in sorted(candidates):
        if in_window(parsed, zone_info, start):
            return start
    # Only reachable when every window opening falls in a DST gap; a minute later is inside.
    for start in sorted(candidates):
        later = start + timedelta(minutes=1)
        if in_window(parsed, zone_info, later):
            return later
    raise ScheduleError(f"window {parsed.text!r} never opens")  # pragma: no cover - parse rejects empty windows


# --- jitter and the due-ness rule ----------------------------------------------------------------


def jitter_offset(name: str, jitter: float) -> timedelta:
    """A deterministic offset in [0, jitter) seconds for target `name`: the same in every process
    and on every machine (SHA-256, not Python's seeded hash), different across targets."""
    if not jitter or jitter <= 0:
        return timedelta(0)
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2.0 ** 64   # [0, 1)
    return timedelta(seconds=fraction * jitter)


def due_at(target: TargetSettings, rotated_at: datetime) -> datetime | None:
    """When the token rotated at `rotated_at` becomes due, ignoring the window (None: never)."""
    rotated_at = _aware(rotated_at).astimezone(UTC)
    if target.schedule:
        fire = parse_cron_cached(target.schedule).next_after(rotated_at, zone(target.timezone))
        if fire is None:
            return None
        base = fire
    else:
        base = rotated_at + timedelta(seconds=target.interval)
    return base + jitter_offset(target.name, target.jitter)


def allowed_from(target: TargetSettings, moment: datetime) -> datetime:
    """The earliest moment >= `moment` at which the target's window allows rotating."""
    if not target.window:
        return moment
    return next_window_start(target.window, target.timezone, moment)


def next_due(target: TargetSettings, rotated_at: datetime | None, now: datetime) -> datetime | None:
    """When the target is (or was) due: `<= now` means due now. None: no future fire time.

    `rotated_at` None (a token not rotated by rotator yet) is due at once, inside the window.
    An overdue target inside its window reports its original due time (in the past); outside the
    window, the window's next opening.
    """
    now = _aware(now).astimezone(UTC)
    if rotated_at is None:
        return allowed_from(target, now)
    base = due_at(target, rotated_at)
    if base is None:
        return None
    if not target.window:
        return base
    if base > now:
        return next_window_start(target.window, target.timezone, base)
    return base if in_window(target.window, target.timezone, now) else next_window_start(
        target.window, target.timezone, now)


def is_due(target: TargetSettings, rotated_at: datetime | None, now: datetime) -> bool:
    """The one rule `rotate --due` and the daemon share (see the module docstring)."""
    when = next_due(target, rotated_at, now)
    return when is not None and when <= _aware(now)


@lru_cache(maxsize=512)
def parse_cron_cached(expression: str) -> Cron:
    return parse_cron(expression)


def validate(schedule: str | None, timezone_name: str, window: str | None) -> None:
    """Config-time validation of a target's scheduling keys (raises ScheduleError)."""
    zone(timezone_name)
    if schedule is not None:
        parse_cron_cached(schedule)
    if window is not None:
        parse_window(window)


def describe_fire_times(expression: str, tz: str, after: datetime, count: int = 3) -> Iterable[datetime]:
    """The next `count` fire times after `after` (for messages and tests)."""
    cron = parse_cron_cached(expression)
    zone_info = zone(tz)
    moment = after
    for _ in range(count):
        fire = cron.next_after(moment, zone_info)
        if fire is None:
            return
        yield fire
        moment = fire
