"""NYSE sessions (regular hours, early closes, holidays) from the `exchange_calendars` library,
flattened once into plain Python values so the tick path never touches pandas.

Pure: the caller passes ``now``; nothing here reads the clock.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import overload

from strategy.model import NY

__all__ = ["NY", "Session", "SessionCalendar", "TickSchedule", "nyse"]


@dataclass(frozen=True, slots=True)
class Session:
    """One regular trading session: its date and its open and close as aware datetimes (UTC)."""

    day: date
    open: datetime
    close: datetime


@dataclass(frozen=True, slots=True)
class TickSchedule(Sequence[datetime]):
    """A session's ticks as arithmetic: ``first``, ``first + step``, … (``size`` of them). Each
    tick is made when it is asked for, so a backtest that looks at a few ticks of a session does
    not build the others."""

    first: datetime
    step: timedelta
    size: int

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, i: int) -> datetime: ...
    @overload
    def __getitem__(self, i: slice) -> list[datetime]: ...
    def __getitem__(self, i: int | slice) -> datetime | list[datetime]:
        if isinstance(i, slice):
            return [self.first + k * self.step for k in range(*i.indices(self.size))]
        if i < 0:
            i += self.size
        if not 0 <= i < self.size:
            raise IndexError("tick index out of range")
        return self.first + i * self.step

    def __iter__(self) -> Iterator[datetime]:
        t, step = self.first, self.step
        for _ in range(self.size):
            yield t
            t += step


class SessionCalendar:
    """The sessions of one exchange between two dates."""

    def __init__(self, sessions: list[Session]) -> None:
        if not sessions:
            raise ValueError("a calendar needs at least one session")
        self._sessions = sessions
        self._days = [s.day for s in sessions]
        self._by_day = {s.day: s for s in sessions}
        self._ticks: dict[tuple[date, int, int], TickSchedule] = {}

    @property
    def first(self) -> date:
        return self._days[0]

    @property
    def last(self) -> date:
        return self._days[-1]

    def session(self, day: date) -> Session | None:
        """The session on ``day``, or None on a weekend or holiday."""
        return self._by_day.get(day)

    def is_session(self, day: date) -> bool:
        return day in self._by_day

    def sessions_between(self, start: date, end: date) -> list[Session]:
        """Sessions with ``start <= day <= end``."""
        i = bisect.bisect_left(self._days, start)
        j = bisect.bisect_right(self._days, end)
        return self._sessions[i:j]

    def previous_session(self, day: date) -> Session | None:
        """The last session strictly before ``day``."""
        i = bisect.bisect_left(self._days, day)
        return self._sessions[i - 1] if i > 0 else None

    def next_session(self, day: date) -> Session | None:
        """The first session strictly after ``day``."""
        i = bisect.bisect_right(self._days, day)
        return self._sessions[i] if i < len(self._sessions) else None

    def open_session(self, now: datetime) -> Session | None:
        """The session that is open at ``now`` (open <= now < close), if any."""
        s = self._by_day.get(now.astimezone(NY).date())
        if s is not None and s.open <= now < s.close:
            return s
        return None

    def tick_times(self, session: Session, interval_min: int, delay_min: int) -> list[datetime]:
        """The session's ticks: wall-clock aligned to ``interval_min`` (09:35, 09:40, …), the
        first no earlier than ``delay_min`` after the open, the last strictly before the close."""
        return list(self.tick_schedule(session, interval_min, delay_min))

    def tick_schedule(self, session: Session, interval_min: int, delay_min: int) -> TickSchedule:
        """``tick_times`` as a ``TickSchedule`` (first tick, step, count), computed once per
        session and settings without building the ticks themselves."""
        key = (session.day, interval_min, delay_min)
        known = self._by_day.get(session.day) is session
        cached = self._ticks.get(key) if known else None
        if cached is None:
            cached = self._schedule(session, interval_min, delay_min)
            if known:
                self._ticks[key] = cached
        return cached

    @staticmethod
    def _schedule(session: Session, interval_min: int, delay_min: int) -> TickSchedule:
        first = session.open + timedelta(minutes=delay_min)
        local = first.astimezone(NY)
        minute = local.hour * 60 + local.minute
        aligned = -(-minute // interval_min) * interval_min
        if local.second or local.microsecond:
            aligned = max(aligned, minute + 1 if minute % interval_min else minute + interval_min)
        start_local = local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(minutes=aligned)
        t = start_local.astimezone(session.open.tzinfo)
        step = timedelta(minutes=interval_min)
        size = -(-(session.close - t) // step) if t < session.close else 0
        return TickSchedule(t, step, size)

    def next_tick(self, now: datetime, interval_min: int, delay_min: int) -> datetime | None:
        """The first tick strictly after ``now`` (in this or a later session)."""
        day = now.astimezone(NY).date()
        s = self._by_day.get(day) or self.next_session(day)
        for _ in range(2):
            if s is None:
                return None
            for t in self.tick_times(s, interval_min, delay_min):
                if t > now:
                    return t
            s = self.next_session(s.day)
        return None


@lru_cache(maxsize=4)
def nyse(start: date = date(1999, 1, 1), end: date | None = None) -> SessionCalendar:
    """The NYSE (XNYS) calendar from the `exchange_calendars` library, cached."""
    import exchange_calendars as xcals

    cal = xcals.get_calendar("XNYS", start=start.isoformat())
    sched = cal.schedule
    if end is not None:
        sched = sched[sched.index <= end.isoformat()]
    sessions = [
        Session(day=idx.date(), open=o.to_pydatetime(), close=c.to_pydatetime())
        for idx, o, c in zip(sched.index, sched["open"], sched["close"], strict=True)
    ]
    return SessionCalendar(sessions)
