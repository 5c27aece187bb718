"""rotator.scheduling with an injected clock: cron fields, windows, time zones, jitter, and the one
due-ness rule shared by `rotate --due` and the daemon (rotation.due_reason / next_due_at)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import pytest

from rotator import scheduling
from rotator.backends.base import DestinationState, Payload, Slot
from rotator.config import DestinationSettings, TargetSettings, parse_config
from rotator.errors import ConfigError
from rotator.journal import Journal
from rotator.rotation import Snapshot, due_reason, next_due_at
from rotator.scheduling import (
    ScheduleError,
    due_at,
    in_window,
    is_due,
    jitter_offset,
    next_due,
    next_window_start,
    parse_cron,
    parse_window,
    zone,
)
from rotator.secret import Secret

UTC = timezone.utc


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def target(**overrides) -> TargetSettings:
    values = dict(name="web", client_id="acme", token_name="web", interval=3600.0, grace_period=0.0,
                  destinations=(DestinationSettings("aws", {"secret_id": "x"}),))
    values.update(overrides)
    return TargetSettings(**values)


def fires(expression: str, after: datetime, count: int = 3, tz: str = "UTC") -> list[datetime]:
    return list(scheduling.describe_fire_times(expression, tz, after, count))


# --- cron ---------------------------------------------------------------------------------------

# 2026-12-04 is a Friday.
FRI = utc(2026, 12, 4, 10, 7, 30)


@pytest.mark.parametrize("expression,expected", [
    ("*/15 * * * *", [utc(2026, 12, 4, 10, 15), utc(2026, 12, 4, 10, 30), utc(2026, 12, 4, 10, 45)]),
    ("0 3 * * *", [utc(2026, 12, 5, 3), utc(2026, 12, 6, 3), utc(2026, 12, 7, 3)]),
    ("0 3 * * Mon", [utc(2026, 12, 7, 3), utc(2026, 12, 14, 3), utc(2026, 12, 21, 3)]),
    ("0 3 * * 1", [utc(2026, 12, 7, 3), utc(2026, 12, 14, 3), utc(2026, 12, 21, 3)]),
    ("30 2 * * sat,SUN", [utc(2026, 12, 5, 2, 30), utc(2026, 12, 6, 2, 30), utc(2026, 12, 12, 2, 30)]),
    ("0 0 * * 7", [utc(2026, 12, 6), utc(2026, 12, 13), utc(2026, 12, 20)]),          # 7 is Sunday
    ("0 0 * * 0", [utc(2026, 12, 6), utc(2026, 12, 13), utc(2026, 12, 20)]),
    ("0 9-17/4 * * Mon-Fri", [utc(2026, 12, 4, 13), utc(2026, 12, 4, 17), utc(2026, 12, 7, 9)]),
    ("5/20 10 * * *", [utc(2026, 12, 4, 10, 25), utc(2026, 12, 4, 10, 45), utc(2026, 12, 5, 10, 5)]),
    ("0 0 1 jan,Jul *", [utc(2027, 1, 1), utc(2027, 7, 1), utc(2028, 1, 1)]),
    ("0 0 29 2 *", [utc(2028, 2, 29), utc(2032, 2, 29), utc(2036, 2, 29)]),
    ("@monthly", [utc(2027, 1, 1), utc(2027, 2, 1), utc(2027, 3, 1)]),
    ("@weekly", [utc(2026, 12, 6), utc(2026, 12, 13), utc(2026, 12, 20)]),
    ("@hourly", [utc(2026, 12, 4, 11), utc(2026, 12, 4, 12), utc(2026, 12, 4, 13)]),
    ("7 10 4 12 *", [utc(2027, 12, 4, 10, 7), utc(2028, 12, 4, 10, 7), utc(2029, 12, 4, 10, 7)]),
])
def test_cron_fire_times(expression: str, expected: list[datetime]) -> None:
    assert fires(expression, FRI) == expected


def test_cron_day_of_month_and_day_of_week_restricted_together_means_either() -> None:
    # Vixie cron: "on the 13th, and on Fridays"
    assert fires("0 0 13 * Fri", utc(2026, 12, 1), 3) == [utc(2026, 12, 4), utc(2026, 12, 11), utc(2026, 12, 13)]
    # a starred day-of-month (even with a step) does not widen day-of-week
    assert fires("0 0 */1 * Fri", utc(2026, 12, 1), 2) == [utc(2026, 12, 4), utc(2026, 12, 11)]


def test_next_fire_is_strictly_after() -> None:
    cron = parse_cron("0 3 * * *")
    assert cron.next_after(utc(2026, 12, 4, 3, 0), zone("UTC")) == utc(2026, 12, 5, 3)
    assert cron.next_after(utc(2026, 12, 4, 2, 59, 59), zone("UTC")) == utc(2026, 12, 4, 3)
    assert cron.matches(utc(2026, 12, 4, 3, 0, 42), zone("UTC"))
    assert not cron.matches(utc(2026, 12, 4, 3, 1), zone("UTC"))


def test_cron_in_a_time_zone_follows_daylight_saving() -> None:
    # 03:00 in Sydney: AEDT (+11) in December, AEST (+10) in June
    assert fires("0 3 * * *", utc(2026, 12, 4), 1, tz="Australia/Sydney") == [utc(2026, 12, 4, 16)]
    assert fires("0 3 * * *", utc(2026, 6, 4), 1, tz="Australia/Sydney") == [utc(2026, 6, 4, 17)]


def test_cron_time_skipped_by_dst_fires_after_the_jump_and_repeated_time_fires_once() -> None:
    ny = "America/New_York"
    # 2026-03-08 02:30 does not exist in New York (02:00 EST -> 03:00 EDT): fires at 03:30 EDT
    assert fires("30 2 * * *", utc(2026, 3, 7, 12), 2, tz=ny) == [utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)]
    # 2026-11-01 01:30 happens twice (EDT, then EST): fires once, at the first
    assert fires("30 1 * * *", utc(2026, 10, 31, 12), 2, tz=ny) == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


@pytest.mark.parametrize("expression,fragment", [
    ("0 3 * *", "has 4 fields"),
    ("0 3 * * * *", "has 6 fields"),
    ("60 * * * *", "out of range 0-59"),
    ("* 24 * * *", "out of range 0-23"),
    ("* * 0 * *", "out of range 1-31"),
    ("* * * 13 *", "out of range 1-12"),
    ("* * * * 8", "out of range 0-7"),
    ("*/0 * * * *", "step"),
    ("5-1 * * * *", "runs backwards"),
    ("* * * * Funday", "not valid"),
    ("1,,2 * * * *", "empty list item"),
    ("0 0 30 2 *", "never fires"),
    ("@sometimes", "unknown cron macro"),
    ("", "5-field cron"),
])
def test_bad_cron_expressions_say_why(expression: str, fragment: str) -> None:
    with pytest.raises(ScheduleError, match=fragment):
        parse_cron(expression)


def test_unknown_time_zone() -> None:
    with pytest.raises(ScheduleError, match="unknown time zone"):
        zone("Mars/Olympus_Mons")


# --- windows -------------------------------------------------------------------------------------

MON_0300 = utc(2026, 12, 7, 3)   # a Monday


@pytest.mark.parametrize("window,moment,inside", [
    ("Mon-Fri 02:00-05:00", utc(2026, 12, 7, 3), True),
    ("Mon-Fri 02:00-05:00", utc(2026, 12, 7, 2), True),           # start inclusive
    ("Mon-Fri 02:00-05:00", utc(2026, 12, 7, 5), False),          # end exclusive
    ("Mon-Fri 02:00-05:00", utc(2026, 12, 7, 4, 59, 59), True),
    ("Mon-Fri 02:00-05:00", utc(2026, 12, 7, 1, 59), False),
    ("Mon-Fri 02:00-05:00", utc(2026, 12, 5, 3), False),          # Saturday
    ("02:00-05:00", utc(2026, 12, 5, 3), True),                   # no days: every day
    ("Sat,Sun 00:00-23:59", utc(2026, 12, 6, 12), True),
    ("Sat,Sun 00:00-23:59", utc(2026, 12, 7, 12), False),
    ("sat, sun 00:00-24:00", utc(2026, 12, 6, 23, 59, 30), True),
    ("22:00-02:00", utc(2026, 12, 7, 23), True),                  # crossing midnight, before it
    ("22:00-02:00", utc(2026, 12, 7, 1, 30), True),               # ... and after it
    ("22:00-02:00", utc(2026, 12, 7, 2), False),
    ("22:00-02:00", utc(2026, 12, 7, 21, 59), False),
    ("Fri 22:00-02:00", utc(2026, 12, 5, 1), True),               # Saturday 01:00 belongs to Friday's window
    ("Fri 22:00-02:00", utc(2026, 12, 4, 1), False),              # Friday 01:00 belongs to Thursday's
    ("Fri 22:00-02:00", utc(2026, 12, 4, 23), True),
    ("Fri-Mon 10:00-11:00", utc(2026, 12, 6, 10, 30), True),      # day range wrapping the week
    ("Fri-Mon 10:00-11:00", utc(2026, 12, 8, 10, 30), False),
    ("Mon 01:00-02:00; Wed 03:00-04:00", utc(2026, 12, 9, 3, 30), True),
    ("Mon 01:00-02:00; Wed 03:00-04:00", utc(2026, 12, 9, 1, 30), False),
    ("Monday-Friday 02:00-05:00", utc(2026, 12, 7, 3), True),
])
def test_in_window(window: str, moment: datetime, inside: bool) -> None:
    assert in_window(window, "UTC", moment) is inside


def test_window_is_read_in_the_targets_time_zone() -> None:
    # Monday 03:00 UTC is Monday 14:00 in Sydney (AEDT): outside 02:00-05:00 there
    assert in_window("Mon-Fri 02:00-05:00", "UTC", MON_0300)
    assert not in_window("Mon-Fri 02:00-05:00", "Australia/Sydney", MON_0300)
    # Sunday 16:00 UTC is Monday 03:00 in Sydney: inside there, not in UTC (Sunday)
    sunday = utc(2026, 12, 6, 16)
    assert in_window("Mon-Fri 02:00-05:00", "Australia/Sydney", sunday)
    assert not in_window("Mon-Fri 02:00-05:00", "UTC", sunday)


@pytest.mark.parametrize("window,now,expected", [
    ("Mon-Fri 02:00-05:00", utc(2026, 12, 7, 3), utc(2026, 12, 7, 3)),      # inside: now
    ("Mon-Fri 02:00-05:00", utc(2026, 12, 7, 1), utc(2026, 12, 7, 2)),      # later today
    ("Mon-Fri 02:00-05:00", utc(2026, 12, 7, 6), utc(2026, 12, 8, 2)),      # tomorrow
    ("Mon-Fri 02:00-05:00", utc(2026, 12, 4, 6), utc(2026, 12, 7, 2)),      # Friday after: Monday
    ("Sat,Sun 00:00-23:59", utc(2026, 12, 7, 12), utc(2026, 12, 12, 0)),
    ("22:00-02:00", utc(2026, 12, 7, 12), utc(2026, 12, 7, 22)),
    ("22:00-02:00", utc(2026, 12, 7, 0, 30), utc(2026, 12, 7, 0, 30)),      # inside yesterday's
    ("Fri 22:00-02:00", utc(2026, 12, 5, 3), utc(2026, 12, 11, 22)),
])
def test_next_window_start(window: str, now: datetime, expected: datetime) -> None:
    assert next_window_start(window, "UTC", now) == expected


def test_next_window_start_in_a_time_zone() -> None:
    # Monday 14:00 Sydney -> Tuesday 02:00 Sydney = Monday 15:00 UTC
    assert next_window_start("Mon-Fri 02:00-05:00", "Australia/Sydney", MON_0300) == utc(2026, 12, 7, 15)


@pytest.mark.parametrize("window,fragment", [
    ("02:00", "not of the form"),
    ("Mon-Fri", "not of the form"),
    ("Someday 02:00-05:00", "not a day"),
    ("02:00-02:00", "empty"),
    ("25:00-26:00", "not a time of day"),
    ("02:00-24:01", "not a time of day"),
    ("Mon 02:00-05:00;", "not of the form"),
])
def test_bad_windows_say_why(window: str, fragment: str) -> None:
    with pytest.raises(ScheduleError, match=fragment):
        parse_window(window)


# --- jitter ----------------------------------------------------------------------------------------

def test_jitter_is_deterministic_in_range_and_spreads_targets() -> None:
    offsets = [jitter_offset(f"target-{i}", 600) for i in range(200)]
    assert all(timedelta(0) <= o < timedelta(seconds=600) for o in offsets)
    assert offsets == [jitter_offset(f"target-{i}", 600) for i in range(200)]
    assert len({round(o.total_seconds()) for o in offsets}) > 150
    assert min(offsets) < timedelta(seconds=60) and max(offsets) > timedelta(seconds=540)
    assert jitter_offset("web", 0) == timedelta(0)


def test_jitter_is_the_same_in_another_process() -> None:
    code = "from rotator.scheduling import jitter_offset; print(jitter_offset('web', 3600).total_seconds())"
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={"PYTHONHASHSEED": seed, "PATH": ""}, cwd=str(_repo())).stdout.strip()
               for seed in ("1", "2")}
    assert outputs == {str(jitter_offset("web", 3600).total_seconds())}


def _repo():
    from pathlib import Path
    return Path(__file__).resolve().parent.parent


# --- the due-ness rule -----------------------------------------------------------------------------

ROTATED = utc(2026, 12, 7, 1, 0)   # Monday 01:00


def test_interval_mode() -> None:
    t = target(interval=3600.0)
    assert due_at(t, ROTATED) == ROTATED + timedelta(hours=1)
    assert not is_due(t, ROTATED, ROTATED + timedelta(minutes=59, seconds=59))
    assert is_due(t, ROTATED, ROTATED + timedelta(hours=1))          # exactly the interval: due
    assert next_due(t, ROTATED, ROTATED) == ROTATED + timedelta(hours=1)


def test_schedule_mode_is_due_once_a_fire_time_passed_since_rotated_at() -> None:
    t = target(schedule="0 3 * * *", interval=30 * 86400.0)
    assert not is_due(t, ROTATED, utc(2026, 12, 7, 2, 59))
    assert is_due(t, ROTATED, utc(2026, 12, 7, 3, 0))
    assert is_due(t, ROTATED, utc(2026, 12, 9, 12))                  # missed fire times coalesce: still one
    # rotated at exactly a fire time: that fire time is not in (rotated_at, now]
    assert not is_due(t, utc(2026, 12, 7, 3), utc(2026, 12, 8, 2, 59))
    assert next_due(t, utc(2026, 12, 7, 3), utc(2026, 12, 7, 3)) == utc(2026, 12, 8, 3)
    # the interval does not matter in schedule mode
    assert is_due(target(schedule="*/5 * * * *", interval=30 * 86400.0), ROTATED, ROTATED + timedelta(minutes=5))


def test_schedule_in_a_time_zone() -> None:
    t = target(schedule="0 3 * * *", timezone="Australia/Sydney")
    assert next_due(t, utc(2026, 12, 7, 1), utc(2026, 12, 7, 1)) == utc(2026, 12, 7, 16)


def test_window_holds_a_due_target_until_it_opens() -> None:
    t = target(interval=3600.0, window="Mon-Fri 02:00-05:00")
    sat = utc(2026, 12, 5, 10)                                         # due since Saturday 10:00
    assert not is_due(t, sat - timedelta(hours=2), sat)
    assert next_due(t, sat - timedelta(hours=2), sat) == utc(2026, 12, 7, 2)
    assert is_due(t, sat - timedelta(hours=2), utc(2026, 12, 7, 2))
    # overdue and inside: due, reporting the original due time
    assert next_due(t, utc(2026, 12, 7, 0), utc(2026, 12, 7, 2, 30)) == utc(2026, 12, 7, 1)
    # due inside the window: at the due time
    assert next_due(t, utc(2026, 12, 7, 1, 30), utc(2026, 12, 7, 1, 30)) == utc(2026, 12, 7, 2, 30)
    # due after the window closes: the next opening
    assert next_due(t, utc(2026, 12, 7, 4, 30), utc(2026, 12, 7, 4, 30)) == utc(2026, 12, 8, 2)


def test_window_crossing_midnight_in_a_time_zone() -> None:
    t = target(interval=60.0, window="22:00-02:00", timezone="Europe/Berlin")   # CET, UTC+1 in December
    rotated = utc(2026, 12, 7, 12)
    assert not is_due(t, rotated, utc(2026, 12, 7, 20, 59))           # 21:59 Berlin
    assert is_due(t, rotated, utc(2026, 12, 7, 21, 0))                # 22:00 Berlin
    assert is_due(t, rotated, utc(2026, 12, 8, 0, 59))                # 01:59 Berlin
    assert not is_due(t, rotated, utc(2026, 12, 8, 1, 0))             # 02:00 Berlin
    assert next_due(t, rotated, utc(2026, 12, 8, 1, 0)) == utc(2026, 12, 8, 21)


def test_jitter_delays_the_due_time_deterministically() -> None:
    t = target(interval=3600.0, jitter=900.0)
    offset = jitter_offset("web", 900.0)
    assert offset > timedelta(0)
    assert due_at(t, ROTATED) == ROTATED + timedelta(hours=1) + offset
    assert not is_due(t, ROTATED, ROTATED + timedelta(hours=1) + offset - timedelta(seconds=1))
    assert is_due(t, ROTATED, ROTATED + timedelta(hours=1) + offset)
    s = target(schedule="0 3 * * *", jitter=900.0)
    assert due_at(s, ROTATED) == utc(2026, 12, 7, 3) + offset


def test_never_rotated_token_is_due_now_but_only_inside_the_window() -> None:
    assert is_due(target(), None, ROTATED)
    windowed = target(window="Mon-Fri 02:00-05:00")
    assert not is_due(windowed, None, ROTATED)                        # Monday 01:00
    assert next_due(windowed, None, ROTATED) == utc(2026, 12, 7, 2)
    assert is_due(windowed, None, utc(2026, 12, 7, 2))


# --- rotation.due_reason / next_due_at over stored state ----------------------------------------------

def state(name: str | None, rotated_at: datetime | None, value: str = "v-0123456789") -> DestinationState:
    if name is None and rotated_at is None and value == "":
        return DestinationState(exists=False)
    return DestinationState(current=Slot(Payload(token=Secret(value), token_name=name, client_id="acme",
                                                 rotated_at=rotated_at), version="1"))


def snap(*states: DestinationState) -> Snapshot:
    return Snapshot(states=list(states), journal=Journal({}))


def test_due_reason_uses_the_shared_rule() -> None:
    t = target(interval=3600.0)
    s = snap(state("web-1", ROTATED))
    assert due_reason(s, t, ROTATED + timedelta(minutes=30)) is None
    assert "older than its interval" in due_reason(s, t, ROTATED + timedelta(hours=1))
    assert next_due_at(s, t, ROTATED) == ROTATED + timedelta(hours=1)
    sched = target(schedule="0 3 * * *")
    assert "scheduled time" in due_reason(s, sched, utc(2026, 12, 7, 3))
    assert due_reason(s, sched, utc(2026, 12, 7, 2)) is None


def test_repairs_are_due_at_once_even_outside_the_window() -> None:
    t = target(window="Mon-Fri 02:00-05:00")
    saturday = utc(2026, 12, 5, 12)
    empty = snap(DestinationState(exists=False))
    assert due_reason(empty, t, saturday) == "a destination holds no token yet"
    assert next_due_at(empty, t, saturday) is None
    diverged = snap(state("web-1", saturday), state("web-2", saturday, value="v-other-0123456"))
    assert due_reason(diverged, t, saturday) == "destinations serve different tokens"
    assert next_due_at(diverged, t, saturday) is None


def test_adopted_token_without_rotated_at_waits_for_the_window() -> None:
    t = target(window="Mon-Fri 02:00-05:00")
    adopted = snap(state(None, None))
    assert due_reason(adopted, t, utc(2026, 12, 5, 12)) is None                        # Saturday
    assert next_due_at(adopted, t, utc(2026, 12, 5, 12)) == utc(2026, 12, 7, 2)
    assert "no rotated_at" in due_reason(adopted, t, utc(2026, 12, 7, 3))
    assert next_due_at(adopted, t, utc(2026, 12, 7, 3)) is None                        # due now
    assert "no rotated_at" in due_reason(adopted, target(), utc(2026, 12, 5, 12))


def test_window_respected_by_due_reason() -> None:
    t = target(interval=3600.0, window="Mon-Fri 02:00-05:00")
    s = snap(state("web-1", utc(2026, 12, 4, 12)))                                      # Friday noon
    assert due_reason(s, t, utc(2026, 12, 5, 12)) is None                               # Saturday: hold
    assert next_due_at(s, t, utc(2026, 12, 5, 12)) == utc(2026, 12, 7, 2)
    assert due_reason(s, t, utc(2026, 12, 7, 2)) is not None


# --- config validation ---------------------------------------------------------------------------------

CONFIG = textwrap.dedent("""
    [funnelback]
    url = "https://fb.example.com/admin-api"
    token_env = "FB_TOKEN"

    [backends.aws]
    type = "aws-secrets-manager"

    [[targets]]
    name = "web"
    client_id = "acme"
    token_name = "web"
    destinations = [{ backend = "aws", secret_id = "prod/web" }]
    """)


@pytest.mark.parametrize("line,key,fragment", [
    ('schedule = "0 3 * *"', "targets[web].schedule", "has 4 fields"),
    ('schedule = "0 25 * * *"', "targets[web].schedule", "out of range"),
    ('window = "weekdays 02:00-05:00"', "targets[web].window", "not a day"),
    ('window = "02:00"', "targets[web].window", "HH:MM-HH:MM"),
    ('timezone = "Moon/Base"', "targets[web].timezone", "unknown time zone"),
])
def test_config_rejects_bad_scheduling_keys(line: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(CONFIG + line + "\n", "rotation.toml")
    message = caught.value.one_line()
    assert key in message and fragment in message and "rotation.toml" in message


def test_config_accepts_schedule_window_timezone() -> None:
    config = parse_config(CONFIG + textwrap.dedent("""
        schedule = "0 3 * * Mon-Fri"
        window = "Mon-Fri 02:00-05:00; Sat,Sun 00:00-24:00"
        timezone = "Australia/Sydney"
        jitter = "10m"
        """))
    t = config.target("web")
    assert (t.schedule, t.timezone, t.jitter) == ("0 3 * * Mon-Fri", "Australia/Sydney", 600.0)


def test_rotate_due_does_not_import_apscheduler() -> None:
    code = ("import sys, rotator.cli, rotator.runtime, rotator.rotation, rotator.scheduling\n"
            "assert 'apscheduler' not in sys.modules, 'apscheduler imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_repo()))
