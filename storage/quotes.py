"""The long-dated option quotes the bot saw at its broker (IB), for `qqq-bot calibrate --from-db`:
written as the bot asks for them, capped at ``MAX_ROWS`` (the oldest go first)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from decimal import Decimal

from storage.models import LeapsQuote, database_proxy
from strategy.model import NY, OptionQuote

MAX_ROWS = 20_000
MIN_DAYS = 300  # only long-dated options are kept: the calibration is about LEAPS


def record(at: datetime, underlying: Decimal | None, quotes: Iterable[OptionQuote]) -> int:
    """Keep the two-sided quotes of options at least ``MIN_DAYS`` out; returns how many were kept."""
    today = at.astimezone(NY).date()
    rows = [{"at": at, "symbol": q.contract.symbol, "expiry": q.contract.expiry, "strike": q.contract.strike,
             "right": q.contract.right, "bid": q.bid, "ask": q.ask, "underlying": underlying}
            for q in quotes if q.bid is not None and q.ask is not None and q.bid > 0 and q.ask >= q.bid
            and q.contract.expiry - today >= timedelta(days=MIN_DAYS)]
    if not rows:
        return 0
    with database_proxy.atomic():
        LeapsQuote.insert_many(rows).execute()
        newest = LeapsQuote.select(LeapsQuote.id).order_by(LeapsQuote.id.desc()).offset(MAX_ROWS).limit(1).first()
        if newest is not None:
            LeapsQuote.delete().where(LeapsQuote.id <= newest.id).execute()
    return len(rows)


def recorded(symbol: str = "QQQ") -> list[dict[str, str]]:
    """Every kept quote as the rows of a quotes CSV (date, time in New York, expiry, strike, right,
    bid, ask, underlying), oldest first."""
    out = []
    for q in LeapsQuote.select().where(LeapsQuote.symbol == symbol).order_by(LeapsQuote.id):
        local = q.at.astimezone(NY)
        out.append({"date": local.date().isoformat(), "time": f"{local:%H:%M}", "expiry": _iso(q.expiry),
                    "strike": str(q.strike), "right": q.right, "bid": str(q.bid), "ask": str(q.ask),
                    "underlying": "" if q.underlying is None else str(q.underlying)})
    return out


def _iso(d: date | str) -> str:
    return d if isinstance(d, str) else d.isoformat()
