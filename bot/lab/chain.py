"""`qqq-bot chain`: the option chain the simulator quotes at one moment, from the same price data,
volatility input and option market parameters as a backtest (the same `sim` broker answers)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from bot.lab.backtest import BacktestConfig, BacktestError, load_bars, load_iv, load_pricing_inputs
from broker.clock import SimClock
from broker.sim import SimBroker
from broker.sim_market import PricePath
from strategy.calendar import NY, nyse
from strategy.model import OptionContract, OptionQuote, Right

DEFAULT_TIME = time(15, 45)


@dataclass(frozen=True)
class ChainView:
    at: datetime
    underlying: float
    quotes: list[OptionQuote]


def _num(x: Decimal | None) -> float:
    return float(x) if x is not None else 0.0


async def _quotes(broker: SimBroker) -> tuple[float, list[OptionQuote]]:
    chain = await broker.option_chain("QQQ")
    rights: tuple[Right, ...] = ("C", "P")
    contracts = [OptionContract("QQQ", e, k, right) for e in chain.expiries for k in chain.strikes for right in rights]
    quotes = await broker.option_quotes(contracts)
    spot = float((await broker.quote("QQQ")).last or 0)
    return spot, quotes


def build_chain(cfg: BacktestConfig, day: date, at: time = DEFAULT_TIME) -> ChainView:
    """Every listed expiry and strike, calls and puts, quoted at ``day`` ``at`` New York time.
    Raises BacktestError when the day is not a session of the data."""
    bars = load_bars(cfg)
    iv = load_iv(cfg)
    pricing, option_rate = load_pricing_inputs(cfg)
    cal = nyse()
    session = cal.session(day)
    if session is None:
        raise BacktestError(f"--date {day}: not a trading session")
    if not any(b.day == day for b in bars):
        raise BacktestError(f"--date {day}: outside the price data ({bars[0].day} → {bars[-1].day})")
    when = datetime.combine(day, at, NY)
    if not session.open <= when <= session.close:
        local_open, local_close = session.open.astimezone(NY), session.close.astimezone(NY)
        raise BacktestError(f"--time {at:%H:%M}: outside the session ({local_open:%H:%M}–{local_close:%H:%M} "
                            "New York)")
    path = PricePath.from_bars(bars, cal, seed=cfg.seed)
    clock = SimClock(when)
    broker = SimBroker(clock, path, iv, calendar=cal, mixed_account=False, seed=cfg.seed, pricing=pricing,
                       option_rate=option_rate)
    spot, quotes = asyncio.run(_quotes(broker))
    return ChainView(when, spot, quotes)


def chain_json(view: ChainView) -> dict[str, Any]:
    """``{"at", "underlying", "options": [{"expiry", "strike", "right", "bid", "ask", "iv", "delta"}]}``."""
    return {
        "at": view.at.isoformat(),
        "underlying": view.underlying,
        "options": [{"expiry": q.contract.expiry.isoformat(), "strike": float(q.contract.strike),
                     "right": q.contract.right, "bid": _num(q.bid), "ask": _num(q.ask),
                     "iv": round(q.iv or 0.0, 6), "delta": round(q.delta or 0.0, 6)} for q in view.quotes],
    }


def format_chain(view: ChainView, width_pct: float = 5.0) -> str:
    """A readable table: per expiry, the strikes within ``width_pct`` % of QQQ, calls beside puts."""
    spot = view.underlying
    lines = [f"QQQ {spot:,.2f} at {view.at:%Y-%m-%d %H:%M} New York; strikes within {width_pct:g} % of it",
             "", f"{'expiry':10} {'days':>5} {'strike':>7}   {'call bid':>9} {'ask':>8} {'iv':>6} {'delta':>6}"
             f"   {'put bid':>9} {'ask':>8} {'iv':>6} {'delta':>6}"]
    by_key = {(q.contract.expiry, q.contract.strike, q.contract.right): q for q in view.quotes}
    today = view.at.astimezone(NY).date()
    for expiry in sorted({q.contract.expiry for q in view.quotes}):
        strikes = sorted({q.contract.strike for q in view.quotes if q.contract.expiry == expiry
                          and abs(float(q.contract.strike) / spot - 1) * 100 <= width_pct})
        for k in strikes:
            cells = []
            for right in ("C", "P"):
                q = by_key.get((expiry, k, right))
                if q is None:
                    cells.append(f"{'':>9} {'':>8} {'':>6} {'':>6}")
                else:
                    cells.append(f"{_num(q.bid):>9.2f} {_num(q.ask):>8.2f} {(q.iv or 0) * 100:>5.1f}% "
                                 f"{q.delta or 0:>6.2f}")
            lines.append(f"{expiry.isoformat():10} {(expiry - today).days:>5} {float(k):>7.0f}   "
                         f"{cells[0]}   {cells[1]}")
        lines.append("")
    lines.append("Simulated quotes (the calibrated option market), not a real chain.")
    return "\n".join(lines)
