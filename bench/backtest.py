"""Benchmark: 5-minute backtests through the engine, fast-forwarded and at every tick, beside the
bare rules over the same ticks in a tight loop (the limit: no broker, no database, no engine;
fills are instant at the mid).

    python bench/backtest.py [--years 10] [--seed 1]
    python bench/backtest.py --csv ../shared/data/qqq_daily.csv --start 2005-01-01 \
        --iv 0.25 --iv ../shared/data/vxn_daily.csv:VXN

Each run is done twice in the same process, fast-forwarded (the default) and with --every-tick,
and must give the same result. Printed: wall and CPU time of each, the ticks the engine evaluated
of all the sessions' ticks, the ratio, and (synthetic) the bare loop. The NYSE calendar is loaded
once before any timing. Targets: the fast 2005 → 2026 run under 5 s and at least 8x faster than
every tick; the every-tick engine within 5x of the bare loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.lab.backtest import BacktestConfig, BacktestRun, load_bars, run_backtest
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


def timed(cfg: BacktestConfig) -> tuple[BacktestRun, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run = asyncio.run(run_backtest(cfg))
    return run, time.perf_counter() - wall, time.process_time() - cpu


def compare(cfg: BacktestConfig, label: str) -> tuple[BacktestRun, float]:
    """Both runs of one configuration; returns the every-tick run and its wall time."""
    fast, fast_s, fast_cpu = timed(replace(cfg, every_tick=False))
    slow, slow_s, slow_cpu = timed(replace(cfg, every_tick=True))
    same = fast.result == slow.result
    s = slow.result["summary"]
    print(f"{label}: {s['start']} → {s['end']}, {s['sessions']:,} sessions, {slow.ticks_total:,} ticks, "
          f"{len(slow.result['trades'])} trades")
    print(f"  {'':26}{'wall':>9}{'cpu':>9}{'ticks evaluated':>26}")
    for name, run, w, c in (("engine, fast-forward", fast, fast_s, fast_cpu),
                            ("engine, every tick", slow, slow_s, slow_cpu)):
        print(f"  {name:26}{w:>8.2f}s{c:>8.2f}s{run.ticks_evaluated:>14,} of {run.ticks_total:,}")
    print(f"  every tick / fast: {slow_s / fast_s:.1f}x wall, {slow_cpu / fast_cpu:.1f}x cpu; "
          f"identical result: {'yes' if same else 'NO'}")
    return slow, slow_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--csv", type=Path, help="daily bars instead of the synthetic path (no bare loop then)")
    ap.add_argument("--start", type=date.fromisoformat)
    ap.add_argument("--end", type=date.fromisoformat)
    ap.add_argument("--iv", action="append", help="implied volatility, as --iv of qqq-bot backtest (repeatable)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    nyse()
    print(f"NYSE calendar loaded in {time.perf_counter() - t0:.2f}s (once per process, before the timings)")
    for iv in args.iv or ["0.25"]:
        cfg = BacktestConfig(csv=args.csv, synthetic_years=args.years, seed=args.seed, start=args.start,
                             end=args.end, iv=iv)
        label = f"{args.csv or f'{args.years}-year synthetic, seed {args.seed}'}, iv {iv}"
        slow, slow_s = compare(cfg, label)
        if args.csv is None and iv == "0.25":
            bars = load_bars(cfg)
            path = PricePath.from_bars(bars, nyse(), seed=args.seed)
            t0 = time.perf_counter()
            ticks, trades = bare_loop(path, StrategySettings(), 0.25)
            bare_s = time.perf_counter() - t0
            print(f"  {'bare rules, tight loop':26}{bare_s:>8.2f}s{'':9}{ticks:>14,} ticks, {trades} trades")
            print(f"  engine every tick / bare: {slow_s / bare_s:.2f}x (target <= 5x), "
                  f"{slow_s / slow.ticks_total * 1e6:.1f} us a tick")
    print(f"run at {datetime.now(UTC).isoformat(timespec='seconds')} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
