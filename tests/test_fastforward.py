"""Fast-forward: the core's quiet band at each of its edges, the shell's trigger prices against
the sim's own quotes, and whole backtests that must come out identical to the every-tick run."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import bot.lab.backtest as backtest
from bot.app.cli import main
from bot.engine.engine import Engine
from bot.lab.backtest import BID_MIN_VALUE, BacktestConfig, BacktestRun, FastForward, TerminalProgress, run_backtest
from broker.clock import SimClock
from broker.sim import SimBroker
from broker.sim_market import DailyBar, IvSource, PricePath, synthetic_bars
from strategy.calendar import NY, nyse
from strategy.fastforward import PRICE_MARGIN, Band, drop_trigger, due_exit, quiet_band, take_profit_price, trigger_spot
from strategy.model import ExitReason, Lot, MarketSnapshot, OptionContract, OptionQuote, Quote, StrategyState
from strategy.pricing import bs_price, bs_time_bound
from strategy.rules import DailyLimits, decide_tick, exit_decision, recycle_decision
from strategy.settings import StrategySettings
from tests.conftest import shared_file

D = Decimal
S = StrategySettings()
CAL = nyse()
NOW = datetime(2025, 6, 10, 15, 0, tzinfo=UTC)  # 11:00 New York
TODAY = NOW.astimezone(NY).date()
PREV = D("400.00")


def lot(i: int = 1, days_ago: int = 10, avg: str = "20", expiry_days: int = 400) -> Lot:
    c = OptionContract("QQQ", TODAY + timedelta(days=expiry_days), D(400))
    return Lot(i, c, 1, D(avg), D("1.00"), NOW - timedelta(days=days_ago))


def cents(x: float) -> Decimal:  # the sim's QQQ last
    return D(round(x * 100)) / 100


def snap(last: Decimal, quotes: dict[int, OptionQuote] | None = None, prev: Decimal = PREV) -> MarketSnapshot:
    return MarketSnapshot(NOW, TODAY, Quote("QQQ", last - D("0.01"), last + D("0.01"), last, NOW), prev,
                          quotes or {})


def quote(lt: Lot, bid: str, ask: str) -> OptionQuote:
    return OptionQuote(lt.contract, D(bid), D(ask), NOW)


# --- the band, edge by edge ----------------------------------------------------------------------


def test_entry_band_edge_at_exactly_minus_entry_drop() -> None:
    state = StrategyState(open_lots=())
    band = quiet_band(state, S, TODAY, PREV, {})
    edge = PREV * (1 - S.entry_drop_pct / 100)  # 396.00: change exactly −1 %
    assert band == Band(float(edge) + PRICE_MARGIN, math.inf)
    assert decide_tick(state, snap(edge), S).entry is not None  # the rule enters at the edge...
    assert not band.quiet(float(edge))  # ...so the band evaluates it
    assert not band.quiet(band.low) and band.quiet(band.low + 0.001)
    assert decide_tick(state, snap(edge + D("0.01")), S).entry is None  # one cent above: no entry
    assert band.quiet(float(edge) + 5)


def test_roll_band_when_full_and_no_band_after_the_session_entry() -> None:
    lots = tuple(lot(i) for i in (1, 2, 3))
    state = StrategyState(open_lots=lots)
    triggers = {lt.id: math.inf for lt in lots}
    band = quiet_band(state, S, TODAY, PREV, triggers)
    edge = PREV * (1 - S.roll_drop_pct / 100)  # 380.00
    assert band.low == float(edge) + PRICE_MARGIN and band.high == math.inf
    assert decide_tick(state, snap(edge), S).roll is not None
    assert decide_tick(state, snap(edge + D("0.01")), S).roll is None
    assert decide_tick(state, snap(D("390")), S).is_empty and band.quiet(390.0)  # full: −2.5 % enters nothing
    assert not band.quiet(float(edge))
    done = replace(state, rolled_this_session=True)
    assert quiet_band(done, S, TODAY, PREV, triggers).low == -math.inf
    assert decide_tick(done, snap(D("300")), S).is_empty
    entered = StrategyState(open_lots=(), entered_this_session=True)
    assert quiet_band(entered, S, TODAY, PREV, {}) == Band(-math.inf, math.inf)
    assert decide_tick(entered, snap(D("300")), S).is_empty


@hsettings(max_examples=300, deadline=None)
@given(prev=st.integers(1_000, 200_000), drop=st.sampled_from(["0.1", "0.5", "1", "1.5", "2", "3.3", "20"]),
       roll=st.sampled_from(["0.5", "2", "5", "7.25"]), full=st.booleans(), move=st.floats(-0.25, 0.05))
def test_no_entry_or_roll_inside_the_band(prev: int, drop: str, roll: str, full: bool, move: float) -> None:
    settings = S.with_value("entry_drop_pct", D(drop)).with_value("roll_drop_pct", D(roll))
    prev_close = D(prev) / 100
    lots = tuple(lot(i) for i in range(1, settings.max_positions + 1)) if full else ()
    state = StrategyState(open_lots=lots)
    band = quiet_band(state, settings, TODAY, prev_close, {lt.id: math.inf for lt in lots})
    spot = float(prev_close) * (1 + move)
    if spot > 0.01 and band.quiet(spot):
        assert decide_tick(state, snap(cents(spot), prev=prev_close), settings).is_empty


def test_take_profit_price_per_tier_and_the_rule_at_it() -> None:
    for held, target in ((0, "30"), (120, "30"), (121, "26"), (180, "26"), (181, "22")):
        lt = lot(days_ago=held)
        assert take_profit_price(lt, TODAY, S) == D(target)  # avg 20 × (1 + 50 %, 30 %, 10 %)
        tp = take_profit_price(lt, TODAY, S)
        at = exit_decision(lt, quote(lt, str(tp - D("0.05")), str(tp + D("0.05"))), NOW, S)
        assert at is not None and at.reason == ExitReason.TAKE_PROFIT  # mid exactly at the price
        below = exit_decision(lt, quote(lt, str(tp - D("0.06")), str(tp + D("0.04"))), NOW, S)
        assert below is None  # a cent below


def test_take_profit_band_is_the_lowest_trigger_and_a_lot_without_one_is_always_evaluated() -> None:
    lots = (lot(1), lot(2))
    state = StrategyState(open_lots=lots)
    band = quiet_band(state, S, TODAY, PREV, {1: 450.0, 2: 420.5})
    assert band.high == 420.5 and not band.quiet(420.5) and band.quiet(420.49)
    for triggers in ({1: 450.0}, {1: 450.0, 2: None}, {1: 450.0, 2: math.nan}):
        b = quiet_band(state, S, TODAY, PREV, triggers)
        assert b.always and "lot #2" in b.always and not b.quiet(410.0)


def test_a_lot_due_for_a_time_exit_triggers_where_it_could_show_a_bid() -> None:
    forced = lot(1, days_ago=S.force_exit_days)
    guarded = lot(2, expiry_days=S.min_exit_dte)
    fresh = lot(3, days_ago=S.force_exit_days - 1, expiry_days=S.min_exit_dte + 1)
    assert (due_exit(forced, TODAY, S), due_exit(guarded, TODAY, S), due_exit(fresh, TODAY, S)) == (
        "force_exit", "expiry_guard", "")
    for due, reason in ((forced, ExitReason.FORCE_EXIT), (guarded, ExitReason.EXPIRY_GUARD)):
        assert exit_decision(due, quote(due, "0.01", "0.06"), NOW, S).reason == reason  # type: ignore[union-attr]
        assert exit_decision(due, quote(due, "0", "0.05"), NOW, S) is None  # no bid: no sale at any price
        state = StrategyState(open_lots=(due,), entered_this_session=True)
        band = quiet_band(state, S, TODAY, PREV, {}, bid_triggers={due.id: 370.0})
        assert band.high == 370.0 and band.quiet(369.0) and not band.quiet(370.0)
        b = quiet_band(state, S, TODAY, PREV, {due.id: 500.0})  # a take-profit price does not do
        assert "due for" in b.always


@pytest.mark.parametrize(("state", "words"), [
    (StrategyState(open_lots=(), unresolved_order=True), "unresolved"),
    (StrategyState(open_lots=(), pending_roll_buy=7), "roll #7"),
])
def test_always_evaluated_states(state: StrategyState, words: str) -> None:
    band = quiet_band(state, S, TODAY, PREV, {})
    assert words in band.always and not band.quiet(float(PREV))


def test_recycling_band() -> None:
    pool = StrategyState(open_lots=(), entered_this_session=True, pool=S.recycle_threshold)  # exactly at it
    assert "recycling" in quiet_band(pool, S, TODAY, PREV, {}).always
    band = quiet_band(pool, S, TODAY, PREV, {}, recycle_spot_max=1215.0)
    assert band == Band(1215.0, math.inf) and band.quiet(1215.01) and not band.quiet(1215.0)
    below = replace(pool, pool=S.recycle_threshold - D("0.01"))
    assert quiet_band(below, S, TODAY, PREV, {}) == Band(-math.inf, math.inf)
    off = S.with_value("recycle_enabled", False)
    assert quiet_band(pool, off, TODAY, PREV, {}) == Band(-math.inf, math.inf)


def test_drop_trigger() -> None:
    assert drop_trigger(D("400.00"), D("1.5")) == pytest.approx(394.01)
    assert drop_trigger(D("37.21"), D("5")) == pytest.approx(35.3495 + PRICE_MARGIN)


# --- trigger_spot and the time bound -------------------------------------------------------------


def test_trigger_spot_edges() -> None:
    square: Callable[[float], float] = lambda s: s * s  # noqa: E731
    found = trigger_spot(100.0, square, 1.0, 50.0)
    assert 10.0 - 1e-4 <= found <= 10.0 and square(found) < 100.0
    assert trigger_spot(100.0, square, 1.0, 9.99) == math.inf
    assert trigger_spot(100.0, square, 10.0, 50.0) == 10.0
    with pytest.raises(ValueError):
        trigger_spot(1.0, square, 2.0, 1.0)


@hsettings(max_examples=200, deadline=None)
@given(threshold=st.floats(1, 1000), lo=st.floats(1, 500), width=st.floats(0, 500), step=st.booleans())
def test_every_spot_below_the_trigger_stays_below_the_target(threshold: float, lo: float, width: float,
                                                            step: bool) -> None:
    def value(s: float) -> float:
        return float(math.floor(s / 7) * 7) if step else s * 1.3 - 2

    hi = lo + width
    found = trigger_spot(threshold, value, lo, hi)
    probes = [lo + (hi - lo) * k / 200 for k in range(201)]
    assert all(value(p) < threshold for p in probes if p < found)
    if found != math.inf:
        assert value(hi) >= threshold


@hsettings(max_examples=300, deadline=None)
@given(spot=st.floats(20, 1500), k=st.floats(0.5, 1.5), t=st.floats(1 / 365, 3), span=st.floats(0, 0.01),
       sigma=st.floats(0.05, 3), right=st.sampled_from(["C", "P"]))
def test_time_bound_bounds_the_value_change(spot: float, k: float, t: float, span: float, sigma: float,
                                            right: str) -> None:
    K, r, q = spot * k, 0.04, 0.006
    bound = bs_time_bound(spot, K, t, t + span, r, q, sigma)
    moved = abs(bs_price(spot, K, t + span, r, q, sigma, right) - bs_price(spot, K, t, r, q, sigma, right))
    assert moved <= bound * span + 1e-9 * spot


# --- the shell: the sim's quotes and the trigger prices ----------------------------------------


def sim(days: int = 30, seed: int = 5, iv: float = 0.3, dividend_yield: float = 0.006) -> tuple[
        SimBroker, PricePath, IvSource]:
    sessions = CAL.sessions_between(date(2024, 3, 1), date(2024, 6, 28))[:days]
    path = PricePath.from_bars(synthetic_bars(sessions, seed=seed, s0=440.0), CAL, seed=seed)
    source = IvSource.constant(iv)
    broker = SimBroker(SimClock(sessions[0].open), path, source, calendar=CAL, mixed_account=False,
                       dividend_yield=dividend_yield)
    return broker, path, source


def test_the_sim_quotes_a_mid_within_half_a_cent_of_its_value_and_a_bid_only_above_three_cents() -> None:
    broker, path, iv = sim()
    s = path.sessions[3]
    t = s.open + timedelta(minutes=35)
    seen = 0
    for strike in (300, 400, 440, 480, 600, 800, 1000):
        for expiry in (date(2024, 4, 19), date(2025, 1, 17), date(2026, 1, 16)):
            c = OptionContract("QQQ", expiry, D(strike))
            for spot in (250 + 0.37 * i for i in range(1500)):
                q = broker.pricer.quote(c, t, spot, iv.iv(s.day))
                m = broker.pricer.model(c, t, spot, iv.iv(s.day))
                assert q is not None and m is not None and q.bid is not None and q.mid is not None
                if q.bid > 0:
                    seen += 1
                    assert abs(float(q.mid) - m[0]) <= 0.005 + 1e-9
                    assert m[0] > BID_MIN_VALUE
    assert seen > 10_000


@pytest.mark.parametrize(("days_ago", "dividend_yield"), [(0, 0.006), (150, 0.006), (200, 0.006), (0, 0.09)])
def test_trigger_prices_are_below_every_tick_that_could_sell(days_ago: int, dividend_yield: float) -> None:
    """Also with a dividend yield so high that deep in-the-money calls gain value as the session
    goes by (their theta is positive): the trigger must hold at the session's last tick too."""
    broker, path, iv = sim(dividend_yield=dividend_yield)
    ff = FastForward(None, broker.clock, broker, path, iv)  # type: ignore[arg-type]  # trigger needs no engine
    checked = 0
    for index in (2, 9, 17):
        s = path.sessions[index]
        ticks = CAL.tick_times(s, 5, 5)
        prices = path.session_prices(index, ticks)
        span = (min(prices), max(prices))
        for strike, expiry in ((440, date(2025, 1, 17)), (400, date(2024, 7, 19)), (520, date(2026, 1, 16)),
                               (700, date(2024, 7, 19)), (60, date(2026, 12, 18))):
            c = OptionContract("QQQ", expiry, D(strike))
            mid = broker.pricer.model(c, ticks[0], sum(span) / 2, iv.iv(s.day))
            assert mid is not None
            opened = datetime.combine(s.day - timedelta(days=days_ago), datetime.min.time(), NY)
            lt = Lot(strike, c, 1, D(str(max(round(mid[0] / 1.5, 2), 0.05))), D(1), opened)
            # the session's ticks, and one tick alone (no time passes: only the cent margin is left)
            for value, times in itertools.product((float(take_profit_price(lt, s.day, S)), BID_MIN_VALUE),
                                                  (ticks, ticks[40:41])):
                trigger = ff.trigger(lt, s.day, times, span, value)
                assert trigger is not None
                for t in times:
                    for k in range(101):
                        spot = span[0] + (span[1] - span[0]) * k / 100
                        q = broker.pricer.quote(c, t, spot, iv.iv(s.day))
                        assert q is not None and q.bid is not None and q.mid is not None
                        sells = q.bid > 0 and (value == BID_MIN_VALUE or q.mid >= D(str(value)))
                        if sells:
                            checked += 1
                            assert spot >= trigger, (t, spot, trigger, value)
    assert checked > 1000


@hsettings(max_examples=400, deadline=None)
@given(pool=st.integers(100, 500_000), near=st.floats(0.9, 1.1))
def test_no_recycling_buy_above_the_recycling_edge(pool: int, near: float) -> None:
    """At QQQ prices around the one at which the pool pays for one QQQM share (commission included)."""
    money = D(pool) / 100
    spot = float(money) / backtest.QQQM_RATIO * near
    session = CAL.session(date(2025, 3, 7))
    assert session is not None
    path = PricePath([DailyBar(session.day, spot, spot, spot, spot)], [session], [[spot] * 79], 300.0)
    clock = SimClock(session.open + timedelta(hours=2))
    broker = SimBroker(clock, path, IvSource.constant(0.25), calendar=CAL, mixed_account=False)
    settings = S.with_value("recycle_threshold", D(0))
    state = StrategyState(open_lots=(), entered_this_session=True, pool=money)
    band = quiet_band(state, settings, TODAY, PREV, {}, recycle_spot_max=backtest.recycle_spot_max(money))
    if band.quiet(spot):
        assert recycle_decision(money, asyncio.run(broker.quote("QQQM")), clock.now(), settings) is None


@pytest.mark.parametrize(("interval", "delay"), [(5, 5), (5, 0), (10, 5), (15, 10), (1, 5), (2, 7), (3, 5)])
def test_session_prices_are_exactly_the_path_at_each_tick(interval: int, delay: int) -> None:
    days = [date(2024, 11, 27), date(2024, 11, 29), date(2024, 12, 24), date(2025, 3, 7), date(2025, 3, 10)]
    sessions = [CAL.session(d) for d in days]
    path = PricePath.from_bars(synthetic_bars([s for s in sessions if s], seed=2), CAL, seed=2)
    for i, s in enumerate(path.sessions):
        ticks = CAL.tick_times(s, interval, delay)
        got = path.session_prices(i, ticks)
        want = [path.price_at(t) for t in ticks]
        assert got == want and len(got) == len(ticks) > 0
        assert all(a == b for a, b in zip(got, want, strict=True))  # the same floats, not approximately


# --- whole runs: the fast run is the every-tick run ---------------------------------------------


def both(cfg: BacktestConfig, tmp: Path) -> tuple[BacktestRun, BacktestRun]:
    fast = asyncio.run(run_backtest(replace(cfg, every_tick=False), workdir=tmp / "fast"))
    slow = asyncio.run(run_backtest(replace(cfg, every_tick=True), workdir=tmp / "slow"))
    return fast, slow


def assert_identical(fast: BacktestRun, slow: BacktestRun) -> None:
    assert fast.result["summary"] == slow.result["summary"]
    assert fast.result["trades"] == slow.result["trades"]  # time, lot, contract, side, qty, price, reason…
    assert fast.result["equity"] == slow.result["equity"]
    assert fast.result == slow.result
    assert fast.positions == slow.positions
    assert slow.ticks_evaluated == slow.ticks_total == fast.ticks_total
    assert fast.ticks_evaluated < fast.ticks_total


def iv_csv(tmp: Path, start: date, end: date, seed: int) -> str:
    """A synthetic implied-volatility series (a seeded random walk, percent points like VXN)."""
    rng = random.Random(seed)
    level = 24.0
    rows = ["Date,IV"]
    day = start
    while day <= end:
        if day.weekday() < 5:
            level = min(max(level * math.exp(rng.gauss(0, 0.06)), 11.0), 85.0)
            rows.append(f"{day.isoformat()},{level:.2f}")
        day += timedelta(days=1)
    path = tmp / "iv.csv"
    path.write_text("\n".join(rows) + "\n")
    return f"{path}:IV"


CASES: list[tuple[int, list[str]]] = [
    (1, []),
    (2, ["max_positions=2", "roll_drop=2"]),
    (3, ["entry_drop=0.5", "recycle_threshold=0", "qty=2", "tp_tiers=0:20,60:10,90:5"]),
    (4, ["force_exit=60", "exit_dte=200", "min_dte=400", "interval=10", "open_delay=7"]),
]


@pytest.mark.parametrize("with_iv_series", [False, True], ids=["iv-constant", "iv-series"])
@pytest.mark.parametrize(("seed", "overrides"), CASES, ids=[f"seed{s}" for s, _ in CASES])
def test_identical_to_every_tick_on_synthetic_markets(tmp_path: Path, seed: int, overrides: list[str],
                                                      with_iv_series: bool) -> None:
    start, end = date(2023, 7, 1), date(2025, 6, 30)
    iv = iv_csv(tmp_path, date(2023, 1, 2), end, seed) if with_iv_series else "0.25"
    cfg = BacktestConfig(synthetic_years=2, seed=seed, start=start, end=end, iv=iv, overrides=overrides,
                         capital=D(250_000))
    fast, slow = both(cfg, tmp_path)
    assert_identical(fast, slow)
    assert len(slow.result["trades"]) > 10


def test_identical_with_one_minute_ticks_daily_limits_and_rolls(tmp_path: Path) -> None:
    """Ticks between the path's points, the hard daily limits halting sessions, legged rolls."""
    cfg = BacktestConfig(synthetic_years=1, seed=6, start=date(2024, 7, 1), end=date(2024, 12, 31),
                         overrides=["interval=1", "max_positions=2", "roll_drop=1.5", "entry_drop=0.7"],
                         limits=DailyLimits(max_orders_per_day=1, max_premium_per_day=D(3000)))
    fast, slow = both(cfg, tmp_path)
    assert_identical(fast, slow)
    assert slow.result["summary"]["entries"] > 3


def test_identical_when_a_due_lot_gets_a_bid_in_mid_session(tmp_path: Path) -> None:
    """A lot bought before a crash is worthless (no bid) when its force exit falls due; days later
    QQQ rallies within one session and its quote shows a bid again: it is sold then, not at the
    session's first tick, and the fast run sells it at the same tick."""
    sessions = CAL.sessions_between(date(2024, 3, 4), date(2024, 4, 30))[:14]
    closes = [500, 494, 420, 340, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300]
    rows, prev = [], 500
    for i, (s, c) in enumerate(zip(sessions, closes, strict=True)):
        o = prev
        hi = 455 if i == 9 else max(o, c) * 1.002  # a rally high enough for the skewed OTM call to show a bid
        rows.append(f"{s.day},{o},{hi},{min(o, c) * 0.998},{c}")
        prev = c
    csv = tmp_path / "crash.csv"
    csv.write_text("Date,Open,High,Low,Close\n" + "\n".join(rows) + "\n")
    cfg = BacktestConfig(csv=csv, overrides=["min_dte=45", "force_exit=5", "tp_tiers=0:900", "max_positions=1",
                                             "roll_drop=50"])
    fast, slow = both(cfg, tmp_path)
    assert_identical(fast, slow)
    sale = [t for t in slow.result["trades"] if t["side"] == "SELL"]
    assert [t["reason"] for t in sale] == ["force_exit"] and sale[0]["held_days"] > 5  # due days before
    sold_at = datetime.fromisoformat(sale[0]["time"])
    assert sold_at.astimezone(NY).date() == sessions[9].day
    assert sold_at > CAL.tick_times(sessions[9], 5, 5)[0] + timedelta(minutes=30)  # well after the first tick


def test_identical_when_the_pool_pays_for_a_share_only_after_qqq_falls(tmp_path: Path) -> None:
    """Recycling on from any pool: what is left after a buy is less than one QQQM share, until QQQ
    falls far enough, in the middle of a later session, that it pays for one."""
    sessions = CAL.sessions_between(date(2024, 3, 4), date(2024, 8, 30))[:40]
    closes = [100.0, 79.0] + [79 * 1.04 ** k for k in range(1, 9)]
    while len(closes) < len(sessions):
        closes.append(closes[-1] * 0.86)  # never −20 %: no new entry
    rows, prev = [], 100.0
    for s, c in zip(sessions, closes, strict=True):
        rows.append(f"{s.day},{prev:.4f},{max(prev, c) * 1.001:.4f},{min(prev, c) * 0.999:.4f},{c:.4f}")
        prev = c
    csv = tmp_path / "fall.csv"
    csv.write_text("Date,Open,High,Low,Close\n" + "\n".join(rows) + "\n")
    fast, slow = both(BacktestConfig(csv=csv, overrides=["entry_drop=20", "recycle_threshold=0"]), tmp_path)
    assert_identical(fast, slow)
    buys = [t for t in slow.result["trades"] if t["reason"] == "recycle"]
    sale = next(t for t in slow.result["trades"] if t["reason"] == "take_profit")
    assert len(buys) == 2 and buys[0]["time"][:10] == sale["time"][:10]  # right after the profit...
    late = datetime.fromisoformat(buys[1]["time"])  # ...and one share weeks later, in mid-session
    day = CAL.session(late.astimezone(NY).date())
    assert day is not None and late > CAL.tick_times(day, 5, 5)[0] + timedelta(minutes=30)


@pytest.mark.parametrize("iv", ["0.25", "VXN"])
def test_identical_on_real_history(tmp_path: Path, iv: str) -> None:
    qqq = shared_file("qqq_daily.csv")
    source = f"{shared_file('vxn_daily.csv')}:VXN" if iv == "VXN" else iv
    cfg = BacktestConfig(csv=qqq, start=date(2020, 1, 1), end=date(2022, 12, 31), iv=source)
    fast, slow = both(cfg, tmp_path)
    assert_identical(fast, slow)
    assert fast.ticks_evaluated * 8 < fast.ticks_total


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("QQQ_FULL_HISTORY"), reason="set QQQ_FULL_HISTORY=1 (about a minute)")
@pytest.mark.parametrize("iv", ["0.25", "VXN"])
def test_identical_on_the_whole_real_history(tmp_path: Path, iv: str) -> None:
    source = f"{shared_file('vxn_daily.csv')}:VXN" if iv == "VXN" else iv
    fast, slow = both(BacktestConfig(csv=shared_file("qqq_daily.csv"), start=date(2005, 1, 1), iv=source), tmp_path)
    assert_identical(fast, slow)


# --- the driver's always-evaluated ticks ---------------------------------------------------------


def test_day_boundary_ticks_ticks_after_fills_and_after_lost_readiness_are_evaluated(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    evaluated: list[datetime] = []
    dropped: list[datetime] = []
    original = Engine.tick

    async def recording(self: Engine, **kw: Any) -> Any:
        now = self.clock.now()
        evaluated.append(now)
        report = await original(self, **kw)
        if len(evaluated) % 7 == 0:  # as after a failed action: the engine must reconcile next tick
            self.ready = False
            dropped.append(now)
        return report

    monkeypatch.setattr(Engine, "tick", recording)
    cfg = BacktestConfig(synthetic_years=1, seed=8, start=date(2024, 1, 1), end=date(2024, 12, 31))
    run = asyncio.run(run_backtest(cfg, workdir=tmp_path))
    assert run.ticks_evaluated == len(evaluated) < run.ticks_total / 4
    seen = set(evaluated)
    settings = StrategySettings()
    sessions = CAL.sessions_between(date(2024, 1, 1), date(2024, 12, 31))
    ticks = {s.day: CAL.tick_times(s, settings.check_interval_min, settings.delay_after_open_min)
             for s in sessions[1:]}
    # a session's first tick is evaluated when it has day-boundary work (a lot past its expiry is
    # settled there, at that tick and never later); a quiet first tick is skipped like any other
    expired = [datetime.fromisoformat(t["time"]) for t in run.result["trades"] if t["reason"] == "expired"]
    for at in expired:
        assert at in seen and at == ticks[at.astimezone(NY).date()][0], at
    assert 0 < sum(ts[0] in seen for ts in ticks.values()) < len(ticks)

    def next_tick(after: datetime) -> datetime | None:
        return next((t for t in ticks.get(after.astimezone(NY).date(), []) if t > after), None)

    fills = [datetime.fromisoformat(t["time"]) for t in run.result["trades"] if t["reason"] != "expired"]
    assert len(fills) > 20 and len(dropped) > 3
    for at in fills + dropped:
        t = next_tick(at)
        assert t is None or t in seen, at


# --- command line and progress -------------------------------------------------------------------


def test_every_tick_flag_gives_the_same_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["backtest", "--synthetic-years", "1", "--seed", "4", "--json"]
    assert main(args) == 0
    fast = json.loads(capsys.readouterr().out)
    assert main([*args, "--every-tick"]) == 0
    slow = json.loads(capsys.readouterr().out)
    assert fast == slow and len(fast["trades"]) > 5


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_waits_then_shows_done_rate_and_time_left_then_clears() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = TerminalProgress(out, clock=clock)
    progress(0, 192)
    for done in range(1, 32):
        clock.t += 1 / 16  # 16 sessions a second
        progress(done, 192)
    assert out.getvalue() == ""  # under 2 s: nothing
    for done in range(32, 60):
        clock.t += 1 / 16
        progress(done, 192)
    drawn = [line for line in out.getvalue().split("\r") if line.strip()]
    assert 2 <= len(drawn) <= 8  # 1.75 s more, at most four a second
    assert "32/192 sessions (17 %)" in drawn[0] and "16 sessions/s" in drawn[0] and "about 10 s left" in drawn[0]
    progress(192, 192)
    assert out.getvalue().endswith("\r") and "\n" not in out.getvalue()
    assert out.getvalue().rsplit("\r", 2)[-2].strip() == ""  # the line is blanked


def test_json_stays_clean_with_progress_on_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr(backtest, "TerminalProgress",
                        lambda stream: TerminalProgress(stream, after_s=0, every_s=0))
    assert main(["backtest", "--synthetic-years", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # stdout: the JSON alone
    assert result["summary"]["sessions"] > 200
    assert "sessions" in err.getvalue() and "left" in err.getvalue()
