"""The NYSE calendar kept in a file for the day (bot/lab/calendar_cache.py): the same sessions as the
`exchange_calendars` library's, and a damaged file is rebuilt rather than trusted."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from bot.lab.calendar_cache import cache_file, cached_nyse
from strategy.calendar import nyse


def test_the_cached_calendar_is_the_library_calendar(tmp_path: Path) -> None:
    today = date(2026, 1, 5)
    built = cached_nyse(tmp_path, today)
    assert cache_file(tmp_path, today).exists()
    read = cached_nyse.__wrapped__(tmp_path, today)  # from the file this time
    real = nyse()
    sessions = real.sessions_between(real.first, real.last)
    assert read.sessions_between(read.first, read.last) == sessions == built.sessions_between(built.first, built.last)
    half_day = read.session(date(2024, 11, 29))  # the day after Thanksgiving closes at 13:00
    assert half_day is not None and half_day == real.session(date(2024, 11, 29))
    assert read.tick_times(half_day, 5, 5) == real.tick_times(half_day, 5, 5)
    assert read.session(date(2024, 12, 25)) is None


def test_a_damaged_or_old_file_is_replaced(tmp_path: Path) -> None:
    today = date(2026, 1, 6)
    old = cache_file(tmp_path, date(2026, 1, 2))
    old.write_text("[]")
    cache_file(tmp_path, today).write_text("[[1, 2")  # torn
    cal = cached_nyse.__wrapped__(tmp_path, today)
    assert cal.session(date(2025, 7, 3)) == nyse().session(date(2025, 7, 3))
    assert not old.exists()
    assert cached_nyse.__wrapped__(tmp_path, today).session(date(2025, 7, 3)) is not None


def test_tick_schedules_are_the_ticks_one_by_one() -> None:
    """A session's ticks as first tick, step and count: the same ticks as stepping from the first
    aligned tick to the close, on normal days, half days and both sides of daylight saving time."""
    from datetime import timedelta

    from strategy.calendar import NY

    cal = nyse()
    days = [date(2024, 3, 8), date(2024, 3, 11), date(2024, 11, 1), date(2024, 11, 4), date(2024, 11, 29),
            date(2024, 12, 24), date(2025, 7, 3)]
    for day in days:
        s = cal.session(day)
        assert s is not None
        for interval, delay in ((5, 5), (5, 0), (7, 3), (15, 1), (60, 0)):
            first = s.open + timedelta(minutes=delay)
            local = first.astimezone(NY)
            minute = local.hour * 60 + local.minute
            t = local.replace(hour=0, minute=0) + timedelta(minutes=-(-minute // interval) * interval)
            want = []
            while t < s.close:
                want.append(t)
                t += timedelta(minutes=interval)
            schedule = cal.tick_schedule(s, interval, delay)
            assert list(schedule) == want == cal.tick_times(s, interval, delay)
            assert len(schedule) == len(want) and schedule[-1] == want[-1] and schedule[1:3] == want[1:3]
