"""One truth per fact: the book the rules see can never be stale, the daily summary and /pnl count
realized P&L alike, and every option fill carries its own contract's delta."""

from __future__ import annotations

import json
import random
import tempfile
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from peewee import Database

from bot.app.jobs import daily_summary_text
from bot.engine.alerts import EventKind
from bot.lab.backtest_report import trade_rows
from broker.base import Execution, OrderLeg, OrderRequest, OrderStatus, OrderUpdate
from storage import ledger
from storage.db import close_database, open_database
from storage.models import Expiry, Lot, Order, OrderPurpose, OrderState, Roll, RollStatus
from strategy import number_style as num
from strategy.calendar import NY
from strategy.model import OptionContract, StrategyState
from tests.harness import make_world
from tests.test_engine import bars_oc, days


def derived_state(day: date) -> StrategyState:
    """The book straight from the ledger, with no cache at all."""
    pending = [r for r in ledger.rolls_with_pending_buy() if r.session_day == day]
    return StrategyState(
        open_lots=ledger.open_lots(), entered_this_session=ledger.entered_on(day),
        rolled_this_session=ledger.rolled_on(day), unresolved_order=bool(ledger.unresolved_orders()),
        pool=ledger.recycling_pool(), pending_roll_buy=pending[0].id if pending else None,
    )


# --- the book -------------------------------------------------------------------------------------

OPS = ("tick", "order", "fill", "cancel", "reject", "roll_pending", "roll_expire", "expire_lot", "next_day",
       "finish")


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.sampled_from(OPS), min_size=5, max_size=30), seed=st.integers(0, 10_000))
async def test_the_book_is_never_stale_whatever_writes_the_ledger(ops: list[str], seed: int) -> None:
    """Ticks, fills, cancels, rejections, rolls and expiries interleaved, each written through the
    engine's listener or straight to the ledger (as reconciliation and the order runner do): after
    every step the engine's book equals the book derived from the ledger from scratch."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        db = open_database(f"sqlite:///{Path(tmp) / 'bot.db'}")
        try:
            await _interleave(ops, rng)
        finally:
            close_database(db)


async def _interleave(ops: list[str], rng: random.Random) -> None:
    bars = bars_oc([(500, 500)] + [(490, 489), (495, 494), (480, 479), (490, 490)] * 2)
    w = await make_world(bars, settings={"max_positions": "2", "recycle_enabled": "off"})
    sessions = [w.cal.session(d) for d in days(bars)[1:]]
    i = 0
    w.clock.advance_to(sessions[0].open + timedelta(minutes=30))  # type: ignore[union-attr]
    contract = OptionContract("QQQ", date(2025, 6, 20), Decimal(480))
    n = 0
    for op in ops:
        session = sessions[i]
        assert session is not None
        day = session.day
        n += 1
        working = ledger.unresolved_orders()
        if op == "tick":
            t = w.clock.now() + timedelta(minutes=5)
            if t < session.close:
                w.clock.advance_to(t)
                await w.engine.tick()
        elif op == "order":
            purpose = rng.choice([OrderPurpose.ENTRY, OrderPurpose.TAKE_PROFIT, OrderPurpose.RECYCLE])
            req = OrderRequest(f"qqqbot-test{n:04d}", (OrderLeg(contract, "BUY"),), 1, Decimal("10.00"))
            ledger.create_order(req, purpose, day, w.clock.now())
            if rng.random() < 0.5:
                ledger.mark_sent(req.order_ref, str(n), w.clock.now())
        elif op == "fill" and working:
            o = rng.choice(working)
            w.engine.on_execution(Execution(f"x-{n}", o.order_ref, "1", contract, "BUY", o.qty, Decimal("10.00"),
                                            w.clock.now(), Decimal("0.65")))
        elif op in ("cancel", "reject") and working:
            o = rng.choice(working)
            status = OrderStatus.CANCELLED if op == "cancel" else OrderStatus.REJECTED
            w.engine.on_order_update(OrderUpdate(o.order_ref, "1", status, o.filled_qty, o.qty - o.filled_qty))
        elif op == "finish" and working:  # the order runner ends an order itself (a timeout)
            ledger.finish_order(rng.choice(working).order_ref, OrderState.CANCELLED, w.clock.now(), "test")
        elif op == "roll_pending" and ledger.open_lots():
            lot = ledger.open_lots()[0]
            roll = ledger.create_roll(day, lot.id, False, w.clock.now(), contract.expiry, contract.strike)
            ledger.set_roll_status(roll.id, RollStatus.BUY_PENDING)
        elif op == "roll_expire":
            for roll in ledger.rolls_with_pending_buy():
                ledger.set_roll_status(roll.id, RollStatus.BUY_EXPIRED)
        elif op == "expire_lot" and ledger.open_lots():
            lot = ledger.open_lots()[-1]
            ledger.close_expired_lot(lot.id, None, Decimal(0), w.clock.now())
        elif op == "next_day" and i + 1 < len(sessions):
            i += 1
            nxt = sessions[i]
            assert nxt is not None
            w.clock.advance_to(nxt.open + timedelta(minutes=30))
        current = sessions[i]
        assert current is not None
        assert w.engine.state(current.day) == derived_state(current.day), (op, n)


async def test_a_direct_ledger_write_is_seen_at_the_next_look(db: Database) -> None:
    """The case a hand-placed 'changed' call used to miss: an order written behind the engine's back
    makes the very next look see an unresolved order and an entry this session."""
    bars = bars_oc([(500, 500), (499, 499)])
    w = await make_world(bars)
    day = bars[1].day
    before = w.engine.state(day)
    assert not before.unresolved_order and not before.entered_this_session
    req = OrderRequest("qqqbot-behind", (OrderLeg(OptionContract("QQQ", date(2025, 6, 20), Decimal(480)), "BUY"),),
                       1, Decimal("10.00"))
    ledger.create_order(req, OrderPurpose.ENTRY, day, w.clock.now())
    after = w.engine.state(day)
    assert after.unresolved_order and after.entered_this_session


# --- realized P&L: one query for /pnl and the daily summary --------------------------------------------


async def test_the_daily_summary_counts_a_lot_that_expired_unsold(db: Database) -> None:
    pairs = [(500.0, 500.0), (490.0, 489.0)] + [(300.0, 300.0)] * 55
    bars = bars_oc(pairs)
    w = await make_world(bars, settings={"min_dte": "30", "max_positions": "1", "roll_drop_pct": "50",
                                         "recycle_enabled": "off"})
    await w.run_days(days(bars))
    x = Expiry.get()
    assert x.realized_pnl < 0
    day = x.recorded_at.astimezone(NY).date()
    text = daily_summary_text(w.engine, day)
    assert f"Realized today: {num.usd(x.realized_pnl, sign=True)} (1 expiry)" in text.split("\n")
    # and the same figure is what /pnl's ledger query says for that day
    start = x.recorded_at.astimezone(NY).replace(hour=0, minute=0, second=0, microsecond=0)
    assert sum(e.pnl for e in ledger.realized_option_events(start, start + timedelta(days=1))) == x.realized_pnl
    assert "Realized today: 0.00 USD" in daily_summary_text(w.engine, day + timedelta(days=1)).split("\n")


# --- deltas of roll trades -----------------------------------------------------------------------------


async def test_a_combo_rolls_new_lot_carries_its_own_delta(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 490), (460, 458)])
    w = await make_world(bars, settings={"max_positions": "1"})
    await w.run_days(days(bars))
    roll = Roll.get()
    assert roll.status == RollStatus.COMPLETED and roll.combo
    rows = {(r["lot_id"], r["side"]): r for r in trade_rows()}
    old_out = rows[(roll.old_lot_id, "SELL")]
    new_in = rows[(roll.new_lot_id, "BUY")]
    assert old_out["reason"] == "roll_out" and new_in["reason"] == "roll_in"
    s = w.settings.current
    # the bought leg was chosen near the target delta; the sold one had fallen far below it with QQQ
    assert abs(new_in["delta"] - float(s.target_delta)) <= float(s.delta_tolerance)
    assert old_out["delta"] < new_in["delta"] - 0.05
    entry = rows[(roll.old_lot_id, "BUY")]
    assert abs(entry["delta"] - float(s.target_delta)) <= float(s.delta_tolerance)
    (alert,) = [t for t in w.events(EventKind.ROLL) if "Rolled" in t]
    assert f"delta {new_in['delta']:.2f}" in alert


async def test_a_legged_rolls_buy_carries_its_own_delta(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 490), (460, 458)])
    w = await make_world(bars, settings={"max_positions": "1"})
    await w.run_days(days(bars)[:2])
    w.settings.update("order_quantity", "2", "test")  # the lot holds 1: the roll cannot be one combo
    await w.run_days(days(bars)[2:])
    roll = Roll.get()
    assert not roll.combo and roll.status == RollStatus.COMPLETED
    sell = Order.get((Order.roll == roll.id) & (Order.side == "SELL"))
    buy = Order.get((Order.roll == roll.id) & (Order.side == "BUY"))
    new = Lot.get_by_id(roll.new_lot_id)
    new_key = OptionContract(new.symbol, new.expiry, new.strike).key
    assert json.loads(buy.context)["deltas"].keys() == {new_key}
    rows = {(r["lot_id"], r["side"]): r for r in trade_rows()}
    assert rows[(roll.new_lot_id, "BUY")]["delta"] == json.loads(buy.context)["deltas"][new_key]
    assert rows[(roll.old_lot_id, "SELL")]["delta"] == next(iter(json.loads(sell.context)["deltas"].values()))
    assert rows[(roll.new_lot_id, "BUY")]["delta"] > rows[(roll.old_lot_id, "SELL")]["delta"] + 0.05
