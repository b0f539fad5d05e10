"""Position sizing: a fixed number of contracts (the spec's default), or a share of net liquidation
per new lot, cut down by the existing guards (max premium, funds, the daily premium cap) and
skipped, once alerted per session, when not even one contract fits."""

from __future__ import annotations

from decimal import Decimal

import pytest
from peewee import Database

from bot.engine.alerts import EventKind
from storage import ledger
from storage.models import Lot, Order, OrderPurpose, Roll, RollStatus
from strategy.rules import DailyLimits, capped_quantity, option_commission, sized_quantity
from tests.harness import make_world
from tests.test_engine import bars_oc, days

D = Decimal


# --- the arithmetic ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("netliq", "pct", "limit", "expected"), [
    (D(100_000), D(10), D("100.00"), 1),  # exactly one contract: 10,000 USD at 100 × 100
    (D(100_000), D(10), D("100.01"), 0),  # a cent more and not one fits
    (D(100_000), D(10), D("49.99"), 2),  # 10,000 / 4,999 = 2.0004
    (D(100_000), D("0.1"), D("1.00"), 1),
    (D(0), D(10), D("10.00"), 0),  # no equity, no lot
    (D(-5_000), D(10), D("10.00"), 0),
    (D(100_000), D(10), D(0), 0),  # no price, no lot
])
def test_a_share_of_net_liquidation_buys_whole_contracts(netliq: Decimal, pct: Decimal, limit: Decimal,
                                                         expected: int) -> None:
    assert sized_quantity(pct, netliq, limit, 100) == expected


def test_the_guards_cut_the_size_down() -> None:
    mid = D("20.00")  # 2,000 USD a contract
    plenty = D(1_000_000)
    assert capped_quantity(10, mid, 100, D(12_000), plenty, plenty) == 6  # max premium 12,000: 6 contracts
    assert capped_quantity(10, mid, 100, D(100_000), D("8000.00"), plenty) == 3  # 4 × 2,000 + 2.60 > 8,000
    assert capped_quantity(10, mid, 100, D(100_000), D("8002.60"), plenty) == 4  # exactly enough for 4 with fees
    assert capped_quantity(10, mid, 100, D(100_000), plenty, D(5_000)) == 2  # the day's premium cap left: 5,000
    assert capped_quantity(10, mid, 100, D(100_000), plenty, D(-100)) == 0  # the cap is used up
    assert capped_quantity(3, mid, 100, D(100_000), plenty, plenty) == 3  # never more than asked
    assert capped_quantity(10, mid, 100, D(1_999), plenty, plenty) == 0  # not even one under max premium
    assert option_commission(4) == D("2.60") and option_commission(1) == D(1)


# --- the engine, end to end on the sim broker -----------------------------------------------------------


async def test_ten_percent_of_net_liquidation_buys_several_contracts(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars, settings={"position_size": "10%", "max_premium": "100000"}, capital=D(500_000))
    await w.run_days(days(bars))
    (lot,) = ledger.open_lots()
    order = Order.get(Order.purpose == OrderPurpose.ENTRY)
    # sized at the first limit from the net liquidation of the moment: 50,000 USD of premium at most
    assert lot.qty == order.qty > 1
    assert order.qty * order.limit * 100 <= D(50_000) < (order.qty + 1) * order.limit * 100 * D("1.01")
    bought = [t for t in w.events(EventKind.ENTRY)]
    assert bought and f"Bought {lot.qty} " in bought[0]


async def test_not_one_contract_fits_skips_the_entry_and_alerts_once(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars, settings={"position_size": "0.1%"})  # 100 USD: far less than one LEAPS
    reports = []
    await w.run_days(days(bars)[:1])
    reports = await w.run_session(bars[1].day)
    assert ledger.open_lots() == () and Order.select().count() == 0
    skips = [t for t in w.events(EventKind.SKIPPED) if "net liquidation" in t]
    assert len(skips) == 1 and "less than one contract" in skips[0]  # once for the session, not every tick
    assert any("Entry skipped" in a and "0.1% of net liquidation" in a for r in reports for a in r.actions)


async def test_the_max_premium_caps_a_percentage_size(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars, settings={"position_size": "50%", "max_premium": "15000"}, capital=D(200_000))
    await w.run_days(days(bars))
    (lot,) = ledger.open_lots()
    order = Order.get(Order.purpose == OrderPurpose.ENTRY)
    mid_cost = Lot.get_by_id(lot.id).avg_price * 100
    assert lot.qty * mid_cost <= D(15_000) * D("1.01")  # cut to the max premium, not 50 % of 200,000
    assert order.qty >= 1


async def test_the_daily_premium_cap_caps_a_percentage_size(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars, settings={"position_size": "50%", "max_premium": "1000000"}, capital=D(500_000),
                         limits=DailyLimits(100, D(20_000)))
    await w.run_days(days(bars))
    (lot,) = ledger.open_lots()
    assert lot.qty * Lot.get_by_id(lot.id).avg_price * 100 <= D(20_000) * D("1.01")


async def test_a_fixed_size_over_the_max_premium_is_skipped_as_the_spec_says(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars, settings={"position_size": "5", "max_premium": "12000"})
    await w.run_days(days(bars))
    assert ledger.open_lots() == ()
    assert any("above the max premium" in t for t in w.events(EventKind.SKIPPED))


async def test_a_roll_resizes_its_new_lot(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 490), (460, 458)])
    w = await make_world(bars, settings={"max_positions": "1", "max_premium": "100000"}, capital=D(400_000))
    await w.run_days(days(bars)[:2])
    (old,) = ledger.open_lots()
    assert old.qty == 1
    w.settings.update("position_size", "10%", "test")
    await w.run_days(days(bars)[2:])
    roll = Roll.get()
    assert roll.status == RollStatus.COMPLETED and not roll.combo  # 1 out, several in: two legs
    new = Lot.get_by_id(roll.new_lot_id)
    assert Lot.get_by_id(old.id).qty_open == 0 and new.qty_open > 1
    buy = Order.get((Order.roll == roll.id) & (Order.side == "BUY"))
    assert buy.qty == new.qty_open
