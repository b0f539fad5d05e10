"""Benchmark: a 10-year 5-minute backtest through the engine, beside the bare rules over the same
ticks in a tight loop (the limit: no broker, no database, no engine; fills are instant at the mid).

    python bench/backtest.py [--years 10] [--seed 1]

Prints both wall times and their ratio. Targets: engine under 10 s, within 5x of the bare loop.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.backtest import BacktestConfig, load_bars, run_backtest
from broker.sim_market import PricePath
from strategy.calendar import NY, nyse
from strategy.model import Lot, MarketSnapshot, OptionContract, OptionQuote, Quote, StrategyState
from strategy.pricing import bs_delta, bs_price
from strategy.rules import decide_tick
from strategy.selection import select_expiry, select_strike, strike_window, years_to_expiry
from strategy.settings import StrategySettings


def _third_friday(y: int, m: int) -> date:
    d = date(y, m, 15)
    return d + timedelta(days=(4 - d.weekday()) % 7)


def bare_loop(path: PricePath, settings: StrategySettings, sigma: float) -> tuple[int, int]:
    """The rules alone over every tick: quotes by BSM, instant fills at the mid."""
    cal = nyse()
    lots: list[Lot] = []
    entered_day: date | None = None
    ticks = trades = 0
    next_id = 1
    r, q = 0.04, 0.006
    for session in path.sessions:
        prev = path.prev_close(session.day)
        if prev is None:
            continue
        prev_d = Decimal(str(round(prev, 4)))
        for t in cal.tick_times(session, settings.check_interval_min, settings.delay_after_open_min):
            ticks += 1
            s = path.price_at(t)
            sd = Decimal(str(round(s, 4)))
            today = t.astimezone(NY).date()
            quotes = {}
            for lot in lots:
                T = max((lot.contract.expiry - today).days, 0) / 365
                mid = Decimal(str(round(bs_price(s, float(lot.contract.strike), T, r, q, sigma, "C"), 2)))
                quotes[lot.id] = OptionQuote(lot.contract, mid - Decimal("0.05"), mid + Decimal("0.05"), t)
            state = StrategyState(open_lots=tuple(lots), entered_this_session=entered_day == today)
            snap = MarketSnapshot(t, today, Quote("QQQ", sd, sd, sd, t), prev_d, quotes)
            plan = decide_tick(state, snap, settings)
            for e in plan.exits:
                lots = [lt for lt in lots if lt.id != e.lot_id]
                trades += 1
            if plan.entry is not None or plan.roll is not None:
                if plan.roll is not None:
                    lots = [lt for lt in lots if lt.id != plan.roll.lot_id]
                expiries = [_third_friday(y, 1) for y in range(today.year + 1, today.year + 4)]
                expiry = select_expiry(expiries, today, settings.min_dte)
                assert expiry is not None
                T = years_to_expiry(expiry, today)
                strikes = [Decimal(k) for k in range(int(s * 0.5), int(s * 1.5), 5 if s > 150 else 1)]
                window = strike_window(strikes, sd, T, sigma, settings)
                chain = []
                for k in window:
                    mid = bs_price(s, float(k), T, r, q, sigma, "C")
                    m = Decimal(str(round(mid, 2)))
                    c = OptionContract("QQQ", expiry, k)
                    chain.append(OptionQuote(c, m - Decimal("0.05"), m + Decimal("0.05"), t,
                                             delta=bs_delta(s, float(k), T, r, q, sigma, "C")))
                choice = select_strike(chain, sd, today, settings)
                if hasattr(choice, "quote"):
                    mid = choice.quote.mid  # type: ignore[union-attr]
                    assert mid is not None
                    lots.append(Lot(next_id, choice.contract, 1, mid, Decimal(1), t))  # type: ignore[union-attr]
                    next_id += 1
                    trades += 1
                    entered_day = today
    return ticks, trades


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    cfg = BacktestConfig(synthetic_years=args.years, seed=args.seed, iv="0.25")

    t0 = time.perf_counter()
    run = asyncio.run(run_backtest(cfg))
    engine_s = time.perf_counter() - t0
    s = run.result["summary"]

    bars = load_bars(cfg)
    path = PricePath.from_bars(bars, nyse(), seed=args.seed)
    t0 = time.perf_counter()
    ticks, trades = bare_loop(path, StrategySettings(), 0.25)
    bare_s = time.perf_counter() - t0

    print(f"{args.years}-year 5-minute backtest, seed {args.seed}: {s['sessions']} sessions, {ticks} ticks")
    print(f"{'':28}{'wall time':>12}{'per tick':>12}{'trades':>10}")
    n_trades = len(run.result["trades"])
    print(f"{'engine + sim broker + db':28}{engine_s:>11.2f}s{engine_s / ticks * 1e6:>10.1f}us{n_trades:>10}")
    print(f"{'bare rules, tight loop':28}{bare_s:>11.2f}s{bare_s / ticks * 1e6:>10.1f}us{trades:>10}")
    print(f"ratio engine / bare: {engine_s / bare_s:.2f}x   (targets: engine < 10 s, ratio <= 5x)")
    print(f"run at {datetime.now(UTC).isoformat(timespec='seconds')}")


if __name__ == "__main__":
    main()
