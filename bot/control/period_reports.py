"""Reports the chat asks for, derived from the ledger and the journal: realized P&L per day, week or
month (lots that expired unsold included), today's decisions, and one lot's story."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from storage import journal, ledger
from storage.models import Lot
from strategy.calendar import NY

Period = Literal["day", "week", "month"]
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class PeriodRow:
    start: date  # the period's first day (a Monday for weeks, the 1st for months)
    realized: Decimal
    sales: int  # closing sales of options
    expiries: int  # lots that expired unsold
    wins: int  # events with a positive P&L


def period_start(day: date, period: Period) -> date:
    """The first day of the day's, week's (ISO, Monday) or month's period that holds ``day``."""
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def previous_start(start: date, period: Period) -> date:
    if period == "day":
        return start - timedelta(days=1)
    if period == "week":
        return start - timedelta(days=7)
    return (start - timedelta(days=1)).replace(day=1)


def period_starts(period: Period, today: date, n: int) -> list[date]:
    """The first days of the last ``n`` periods up to the one holding ``today``, newest first."""
    starts = [period_start(today, period)]
    while len(starts) < n:
        starts.append(previous_start(starts[-1], period))
    return starts


def by_period(events: Sequence[ledger.RealizedEvent], period: Period, today: date, n: int) -> list[PeriodRow]:
    """The last ``n`` periods up to the one holding ``today``, newest first, every one listed (a
    quiet period shows 0), each with its realized P&L and counts."""
    grouped: dict[date, list[ledger.RealizedEvent]] = {s: [] for s in period_starts(period, today, n)}
    for e in events:
        key = period_start(e.time.astimezone(NY).date(), period)
        if key in grouped:
            grouped[key].append(e)
    return [PeriodRow(start, sum((e.pnl for e in es), ZERO), sum(e.kind == "sale" for e in es),
                      sum(e.kind == "expiry" for e in es), sum(e.pnl > 0 for e in es))
            for start, es in grouped.items()]


def period_report(period: Period, today: date, n: int) -> list[PeriodRow]:
    first = period_starts(period, today, n)[-1]
    start = datetime(first.year, first.month, first.day, tzinfo=NY)
    return by_period(ledger.realized_option_events(start), period, today, n)


def days_report(sessions: Sequence[date], today: date) -> list[PeriodRow]:
    """Realized P&L of each of ``sessions`` (trading days), newest first, with any other day that saw
    a realized result (a weekend or holiday is otherwise left out: nothing trades then)."""
    if not sessions:
        return []
    first = min(sessions)
    start = datetime(first.year, first.month, first.day, tzinfo=NY)
    grouped: dict[date, list[ledger.RealizedEvent]] = {d: [] for d in sessions}
    for e in ledger.realized_option_events(start):
        day = e.time.astimezone(NY).date()
        if day <= today:
            grouped.setdefault(day, []).append(e)
    return [PeriodRow(day, sum((e.pnl for e in es), ZERO), sum(e.kind == "sale" for e in es),
                      sum(e.kind == "expiry" for e in es), sum(e.pnl > 0 for e in es))
            for day, es in sorted(grouped.items(), reverse=True)]


@dataclass(frozen=True, slots=True)
class JournalLine:
    at: datetime
    text: str


@dataclass(frozen=True, slots=True)
class DayJournal:
    day: date
    lines: tuple[JournalLine, ...]


@dataclass(frozen=True, slots=True)
class LotStory:
    lot_id: int
    contract: str
    qty_opened: int
    qty_open: int
    avg_price: Decimal
    opened_at: datetime
    closed_at: datetime | None
    how: str | None  # how it ended, in the user's words
    realized: Decimal
    lines: tuple[JournalLine, ...]


def day_journal(day: date) -> DayJournal:
    return DayJournal(day, tuple(JournalLine(r.at, r.text) for r in journal.day_entries(day)))


def lot_story(lot_id: int) -> LotStory | None:
    row = Lot.get_or_none(Lot.id == lot_id)
    if row is None:
        return None
    from strategy.model import OptionContract

    key = OptionContract(row.symbol, row.expiry, row.strike, "P" if row.right == "P" else "C").key
    return LotStory(row.id, key, row.qty_opened, row.qty_open, row.avg_price, row.opened_at, row.closed_at,
                    row.exit_reason.label if row.exit_reason is not None else None, row.realized_pnl,
                    tuple(JournalLine(r.at, r.text) for r in journal.lot_entries(lot_id)))
