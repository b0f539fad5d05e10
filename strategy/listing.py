"""Which QQQ option expiries are listed on a given day: weeklies and monthlies near, quarter-ends,
and LEAPS in the months QQQ really uses.

The pattern is fitted to the real QQQ chain of February 2026 (issue 19): on 2026-02-11/12/13 the
expiries 365 days or more away were 2027-06-17, 2027-09-17, 2027-12-17, 2028-01-21 and 2028-06-16,
with nothing between January 2027 (338 days) and June 2027, so the first LEAPS the live bot could
buy was about 490 days out. ``ListingRules``' defaults reproduce exactly that set (a test checks
it); the near-dated part (weeklies, monthlies, quarter-ends) is the usual ETF pattern and matters
only for `qqq-bot chain`: the strategy buys at ≥ ``min_dte`` (365) days. The same pattern is applied
to the whole history (QQQ's real listing in 2005 differed: fewer LEAPS months): a backtest thus buys
the expiry the live bot would get today.

Every date is moved to the session before when it falls on an exchange holiday (Good Friday,
Juneteenth: the only holidays that can fall on a third Friday), with the exchange calendar
within its range and, beyond it, the two rules themselves. Pure: the caller passes the day.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, timedelta

from strategy.calendar import SessionCalendar

__all__ = ["ListingRules", "is_expiry_date", "listed_expiries", "monthly_expiry", "quarter_end_expiry",
           "third_friday", "weekly_expiry"]


@dataclass(frozen=True, slots=True)
class ListingRules:
    """How many expiries of each kind are listed (defaults fitted to QQQ's February 2026 chain).

    - ``weekly_weeks``: Friday expiries over the next this many weeks (QQQ also lists Monday to
      Thursday dailies; they are left out: nothing here trades them).
    - ``monthly_months``: the standard (third-Friday) expiry of the current month and the next
      ``monthly_months − 1`` months: 12 lists January 2027 on 2026-02-12 (338 days) but not
      February or March 2027, as the real chain.
    - ``quarter_ends``: the last session of the next this many quarter months (QQQ's "quarterly"
      expiries); 4 never reaches 365 days.
    - ``leaps_months`` / ``leaps_horizon_months``: standard expiries of these months (January,
      June, September, December) up to this many months ahead (counted by calendar month): 28
      lists June 2028 but not September or December 2028 on 2026-02-12, as the real chain.
    """

    weekly_weeks: int = 6
    monthly_months: int = 12
    quarter_ends: int = 4
    leaps_months: tuple[int, ...] = (1, 6, 9, 12)
    leaps_horizon_months: int = 28


def third_friday(year: int, month: int) -> date:
    """The month's third Friday (15th–21st)."""
    d = date(year, month, 15)
    return d + timedelta(days=(4 - d.weekday()) % 7)


def _easter(year: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    ell = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ell) // 451
    month = (h + ell - 7 * m + 114) // 31
    day = (h + ell - 7 * m + 114) % 31 + 1
    return date(year, month, day)


def _rule_holiday(d: date) -> bool:
    """A weekday the NYSE is shut, by rule, for dates past the calendar's range: Good Friday,
    Juneteenth (observed, since 2022), New Year's Day, Independence Day, Christmas (observed)."""
    if d.weekday() >= 5:
        return True
    if d == _easter(d.year) - timedelta(days=2):
        return True
    fixed = [(1, 1), (7, 4), (12, 25)] + ([(6, 19)] if d.year >= 2022 else [])
    for month, day in fixed:
        h = date(d.year, month, day)
        observed = h - timedelta(days=1) if h.weekday() == 5 else h + timedelta(days=1) if h.weekday() == 6 else h
        if d == observed:
            return True
    return False


def _closed(calendar: SessionCalendar, d: date) -> bool:
    if calendar.first <= d <= calendar.last:
        return not calendar.is_session(d)
    return _rule_holiday(d)


def _session_on_or_before(calendar: SessionCalendar, d: date) -> date:
    for _ in range(10):
        if not _closed(calendar, d):
            return d
        d -= timedelta(days=1)
    return d


def monthly_expiry(calendar: SessionCalendar, year: int, month: int) -> date:
    """The month's standard expiry: its third Friday, or the session before when that Friday is a
    holiday (2027-06-18, Juneteenth observed: 2027-06-17)."""
    return _session_on_or_before(calendar, third_friday(year, month))


def weekly_expiry(calendar: SessionCalendar, friday: date) -> date:
    """A week's Friday expiry, or the session before when the exchange is shut that Friday."""
    return _session_on_or_before(calendar, friday)


def quarter_end_expiry(calendar: SessionCalendar, year: int, month: int) -> date:
    """The last session of a quarter month (March, June, September, December)."""
    nxt = date(year + month // 12, month % 12 + 1, 1)
    return _session_on_or_before(calendar, nxt - timedelta(days=1))


def _month(year: int, month: int, ahead: int) -> tuple[int, int]:
    k = year * 12 + month - 1 + ahead
    return k // 12, k % 12 + 1


@functools.lru_cache(maxsize=4096)
def _listed(calendar: SessionCalendar, today: date, rules: ListingRules) -> tuple[date, ...]:
    out: set[date] = set()
    friday = today + timedelta(days=(4 - today.weekday()) % 7)
    for w in range(rules.weekly_weeks):
        out.add(weekly_expiry(calendar, friday + timedelta(weeks=w)))
    for k in range(rules.monthly_months):
        out.add(monthly_expiry(calendar, *_month(today.year, today.month, k)))
    found, k = 0, 0
    while found < rules.quarter_ends and k < 24:
        y, m = _month(today.year, today.month, k)
        k += 1
        if m % 3 == 0:
            e = quarter_end_expiry(calendar, y, m)
            if e >= today:
                out.add(e)
                found += 1
    for k in range(rules.leaps_horizon_months + 1):
        y, m = _month(today.year, today.month, k)
        if m in rules.leaps_months:
            out.add(monthly_expiry(calendar, y, m))
    return tuple(sorted(e for e in out if e >= today))


def listed_expiries(calendar: SessionCalendar, today: date, rules: ListingRules | None = None) -> tuple[date, ...]:
    """The expiries listed on ``today`` (New York date), ascending, today's included (the caller
    drops those already past their close)."""
    return _listed(calendar, today, rules or ListingRules())


def is_expiry_date(calendar: SessionCalendar, d: date) -> bool:
    """Whether ``d`` is a date some QQQ expiry falls on: a standard monthly, a weekly Friday (or the
    session before a Friday holiday), or a quarter-end."""
    if d == monthly_expiry(calendar, d.year, d.month):
        return True
    friday = d + timedelta(days=(4 - d.weekday()) % 7)
    if d == weekly_expiry(calendar, friday):
        return True
    return d.month % 3 == 0 and d == quarter_end_expiry(calendar, d.year, d.month)
