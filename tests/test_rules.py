"""The strategy's rules, at their boundaries."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategy.model import (
    NY,
    ExitReason,
    Lot,
    MarketSnapshot,
    OptionContract,
    OptionQuote,
    Quote,
    StrategyState,
)
from strategy.rules import (
    DailyLimits,
    daily_limit_breach,
    decide_tick,
    entry_signal,
    exit_decision,
    limit_price,
    recycle_decision,
    roll_signal,
    round_to_tick,
    stock_commission,
    take_profit_target,
)
from strategy.settings import DEFAULT_TIERS, StrategySettings

S = StrategySettings()
NOW = datetime(2025, 6, 10, 15, 0, tzinfo=UTC)  # 11:00 New York
TODAY = NOW.astimezone(NY).date()
D = Decimal


def lot(i: int = 1, days_ago: int = 10, avg: str = "50", expiry_days: int = 400, qty: int = 1) -> Lot:
    opened = (NOW - timedelta(days=days_ago))
    c = OptionContract("QQQ", TODAY + timedelta(days=expiry_days), D(450))
    return Lot(i, c, qty, D(avg), D("0.65"), opened)


def oq(lt: Lot, mid: str, spread: str = "0.20", age_s: int = 0) -> OptionQuote:
    m = D(mid)
    h = D(spread) / 2
    return OptionQuote(lt.contract, m - h, m + h, NOW - timedelta(seconds=age_s), delta=0.6)


def snap(change_pct: str, lot_quotes: dict[int, OptionQuote] | None = None, age_s: int = 0,
         qqqm: Quote | None = None) -> MarketSnapshot:
    prev = D(500)
    last = prev * (1 + D(change_pct) / 100)
    q = Quote("QQQ", last - D("0.01"), last + D("0.01"), last, NOW - timedelta(seconds=age_s))
    return MarketSnapshot(NOW, TODAY, q, prev, lot_quotes or {}, qqqm)


# --- take profit tiers ---------------------------------------------------------------------

@pytest.mark.parametrize(("held", "target"), [
    (0, 50), (120, 50), (121, 30), (180, 30), (181, 10), (269, 10), (5000, 10),
])
def test_take_profit_tier_boundaries(held: int, target: int) -> None:
    assert take_profit_target(held, DEFAULT_TIERS) == D(target)


def test_take_profit_sells_at_target_not_below() -> None:
    lt = lot(days_ago=10, avg="50")
    assert exit_decision(lt, oq(lt, "74.98"), NOW, S) is None  # +49.96 %
    d = exit_decision(lt, oq(lt, "75.00"), NOW, S)  # +50 %
    assert d is not None and d.reason == ExitReason.TAKE_PROFIT and d.target_pct == 50


def test_take_profit_uses_tier_of_held_days() -> None:
    young, old = lot(days_ago=120, avg="50"), lot(days_ago=121, avg="50")
    assert exit_decision(young, oq(young, "65"), NOW, S) is None  # +30 % but tier is 50 %
    d = exit_decision(old, oq(old, "65"), NOW, S)
    assert d is not None and d.reason == ExitReason.TAKE_PROFIT and d.target_pct == 30


def test_force_exit_at_270_days_whatever_the_pnl() -> None:
    lt = lot(days_ago=269, avg="50")
    assert exit_decision(lt, oq(lt, "30"), NOW, S) is None
    lt = lot(days_ago=270, avg="50")
    d = exit_decision(lt, oq(lt, "30"), NOW, S)
    assert d is not None and d.reason == ExitReason.FORCE_EXIT


def test_expiry_guard_at_min_exit_dte() -> None:
    lt = lot(days_ago=5, avg="50", expiry_days=31)
    assert exit_decision(lt, oq(lt, "40"), NOW, S) is None
    lt = lot(days_ago=5, avg="50", expiry_days=30)
    d = exit_decision(lt, oq(lt, "40"), NOW, S)
    assert d is not None and d.reason == ExitReason.EXPIRY_GUARD


def test_stale_option_quote_never_triggers_an_exit() -> None:
    lt = lot(days_ago=300, avg="50")
    assert exit_decision(lt, oq(lt, "80", age_s=61), NOW, S) is None
    assert exit_decision(lt, oq(lt, "80", age_s=60), NOW, S) is not None


def test_held_days_are_new_york_calendar_days() -> None:
    # 23:30 New York on day 0 is already the next day in UTC; held_days must not count it.
    opened = datetime(2025, 1, 2, 23, 30, tzinfo=NY)
    lt = Lot(1, OptionContract("QQQ", date(2026, 6, 1), D(400)), 1, D(10), D(1), opened.astimezone(UTC))
    assert lt.held_days(date(2025, 1, 3)) == 1


# --- entry -----------------------------------------------------------------------------------

def test_entry_needs_the_drop() -> None:
    st0 = StrategyState(open_lots=())
    assert entry_signal(st0, D("-0.0099"), 0, S) is None
    assert entry_signal(st0, D("-0.01"), 0, S) is not None


def test_no_second_entry_in_a_session() -> None:
    st1 = StrategyState(open_lots=(), entered_this_session=True)
    assert entry_signal(st1, D("-0.03"), 0, S) is None
    st2 = StrategyState(open_lots=(), rolled_this_session=True)
    assert entry_signal(st2, D("-0.03"), 0, S) is None


def test_no_entry_at_max_positions() -> None:
    st0 = StrategyState(open_lots=())
    assert entry_signal(st0, D("-0.03"), 2, S) is not None
    assert entry_signal(st0, D("-0.03"), 3, S) is None


def test_no_entry_with_an_unresolved_order() -> None:
    assert entry_signal(StrategyState(open_lots=(), unresolved_order=True), D("-0.03"), 0, S) is None


def test_stale_qqq_quote_never_triggers_an_entry() -> None:
    plan = decide_tick(StrategyState(open_lots=()), snap("-2", age_s=61), S)
    assert plan.entry is None and plan.notes
    plan = decide_tick(StrategyState(open_lots=()), snap("-2", age_s=5), S)
    assert plan.entry is not None


# --- roll ------------------------------------------------------------------------------------

def test_roll_only_when_full_and_drop_deep_enough() -> None:
    lots3 = (lot(1, 100), lot(2, 50), lot(3, 20))
    st0 = StrategyState(open_lots=lots3)
    assert roll_signal(st0, D("-0.0499"), lots3, S) is None
    r = roll_signal(st0, D("-0.05"), lots3, S)
    assert r is not None and r.lot_id == 1  # the oldest
    assert roll_signal(st0, D("-0.08"), lots3[:2], S) is None  # below max_positions: no roll


def test_roll_once_per_session_and_it_uses_the_entry() -> None:
    lots3 = (lot(1, 100), lot(2, 50), lot(3, 20))
    assert roll_signal(StrategyState(open_lots=lots3, rolled_this_session=True), D("-0.06"), lots3, S) is None
    assert roll_signal(StrategyState(open_lots=lots3, entered_this_session=True), D("-0.06"), lots3, S) is None


def test_full_book_on_a_small_dip_does_nothing() -> None:
    lots3 = (lot(1, 100), lot(2, 50), lot(3, 20))
    quotes = {lt.id: oq(lt, "50") for lt in lots3}
    plan = decide_tick(StrategyState(open_lots=lots3), snap("-2", quotes), S)
    assert plan.is_empty


def test_exits_come_first_and_block_new_orders_that_tick() -> None:
    lots3 = (lot(1, 100, avg="10"), lot(2, 50), lot(3, 20))
    quotes = {lt.id: oq(lt, "50") for lt in lots3}
    plan = decide_tick(StrategyState(open_lots=lots3), snap("-6", quotes), S)
    assert [e.lot_id for e in plan.exits] == [1]
    assert plan.roll is None and plan.entry is None


def test_pending_roll_buy_is_retried() -> None:
    plan = decide_tick(StrategyState(open_lots=(lot(2, 50), lot(3, 20)), rolled_this_session=True,
                                     pending_roll_buy=7), snap("-0.2", {}), S)
    assert plan.retry_roll_buy == 7 and plan.entry is None


# --- recycling -------------------------------------------------------------------------------

def qqqm(ask: str) -> Quote:
    a = D(ask)
    return Quote("QQQM", a - D("0.02"), a, a, NOW)


def test_recycle_needs_threshold_and_one_share() -> None:
    assert recycle_decision(D("499.99"), qqqm("200"), NOW, S) is None
    d = recycle_decision(D("500"), qqqm("200"), NOW, S)
    assert d is not None and d.shares == 2
    assert recycle_decision(D("600"), qqqm("700"), NOW, S) is None


def test_recycle_never_spends_unearned_money() -> None:
    for pool in ("-100", "0", "520", "1000", "12345.67"):
        d = recycle_decision(D(pool), qqqm("205.37"), NOW, S)
        if d is not None:
            assert d.shares * d.limit + stock_commission(d.shares, d.limit) <= D(pool)


def test_recycle_off_when_disabled() -> None:
    assert recycle_decision(D(5000), qqqm("200"), NOW, S.with_value("recycle_enabled", False)) is None


@given(pool=st.decimals(min_value=-10000, max_value=1_000_000, places=2),
       ask=st.decimals(min_value=1, max_value=2000, places=2))
def test_recycle_property_never_exceeds_pool(pool: Decimal, ask: Decimal) -> None:
    d = recycle_decision(pool, qqqm(str(ask)), NOW, S)
    if d is not None:
        assert d.shares >= 1
        assert d.shares * d.limit + stock_commission(d.shares, d.limit) <= pool


# --- orders ----------------------------------------------------------------------------------

def test_limit_steps_toward_far_side_and_stops_at_max_slippage() -> None:
    bid, ask = D("10.00"), D("11.00")
    tick = D("0.01")
    steps = [limit_price(bid, ask, "BUY", i, S, tick) for i in range(5)]
    assert steps == [D("10.50"), D("10.70"), D("10.90"), D("11.00"), D("11.00")]
    sells = [limit_price(bid, ask, "SELL", i, S, tick) for i in range(4)]
    assert sells == [D("10.50"), D("10.30"), D("10.10"), D("10.00")]
    tight = S.with_value("max_slippage_pct", D(30))
    assert limit_price(bid, ask, "BUY", 9, tight, tick) == D("10.80")


def test_round_to_tick_never_worsens_price() -> None:
    assert round_to_tick(D("10.505"), D("0.01"), "BUY") == D("10.50")
    assert round_to_tick(D("10.505"), D("0.01"), "SELL") == D("10.51")
    assert round_to_tick(D("3.07"), D("0.05"), "BUY") == D("3.05")


def test_daily_limits() -> None:
    lim = DailyLimits(3, D(10000))
    assert daily_limit_breach(2, D(0), D(5000), lim) is None
    assert daily_limit_breach(3, D(0), D(0), lim) is not None
    assert daily_limit_breach(0, D(6000), D(5000), lim) is not None
    assert daily_limit_breach(0, D(5000), D(5000), lim) is None


def test_stock_commission_ibkr_like() -> None:
    assert stock_commission(10, D(200)) == D("1.00")
    assert stock_commission(1000, D(200)) == D("5.00")
    assert stock_commission(1, D(50)) == D("0.50")  # capped at 1 % of value
