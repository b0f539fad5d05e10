"""The engine end to end on the sim broker and a real SQLite file: entries, exits, rolls,
recycling, partial fills, pause, limits, and crashes at the two dangerous moments."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from peewee import Database

from bot.engine.alerts import EventKind
from broker.base import Execution
from broker.sim import SimFillModel
from broker.sim_market import DailyBar
from storage import ledger
from storage.models import Fill, Lot, Order, Roll
from strategy.calendar import nyse
from strategy.rules import DailyLimits
from tests.harness import SimulatedCrash, World, make_world

START = date(2024, 3, 4)  # a Monday


def bars_oc(pairs: list[tuple[float, float]], start: date = START) -> list[DailyBar]:
    """Bars from (open, close) pairs on consecutive sessions, with a tight high/low."""
    sessions = nyse().sessions_between(start, start + timedelta(days=len(pairs) * 2 + 30))[: len(pairs)]
    return [DailyBar(s.day, o, max(o, c) * 1.001, min(o, c) * 0.999, c) for s, (o, c) in zip(sessions, pairs,
                                                                                             strict=True)]


def days(bars: list[DailyBar]) -> list[date]:
    return [b.day for b in bars]


async def test_entry_on_a_dip_buys_one_leaps_call_once_per_session(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars)
    await w.run_days(days(bars))
    lots = ledger.open_lots()
    assert len(lots) == 1
    lot = lots[0]
    assert lot.qty == 1 and lot.contract.right == "C"
    assert lot.contract.dte(bars[1].day) >= 365
    entries = Order.select().where(Order.purpose == "entry")
    assert entries.count() == 1  # the dip lasted all session: still one entry
    assert len(await w.broker.executions()) == 1
    assert any("entry" in t for t in w.events(EventKind.ORDER_FILLED))


async def test_no_entry_above_the_drop_or_on_a_stale_day(db: Database) -> None:
    bars = bars_oc([(500, 500), (496, 496), (497, 497)])  # −0.8 % then +0.2 %
    w = await make_world(bars)
    await w.run_days(days(bars))
    assert ledger.open_lots() == ()
    assert Order.select().count() == 0


async def test_no_entry_above_max_positions(db: Database) -> None:
    pairs = [(500.0, 500.0)]
    price = 500.0
    for _ in range(5):
        price *= 0.98
        pairs.append((price, price))
    bars = bars_oc(pairs)
    w = await make_world(bars, settings={"max_positions": "2"})
    await w.run_days(days(bars))
    assert len(ledger.open_lots()) == 2
    assert Order.select().where(Order.purpose == "entry").count() == 2


async def test_take_profit_sells_the_whole_lot_and_books_pnl(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 490), (575, 575)])
    w = await make_world(bars, settings={"recycle_enabled": "off"})
    await w.run_days(days(bars))
    assert ledger.open_lots() == ()
    lot = Lot.get()
    assert lot.exit_reason == "take_profit" and lot.qty_open == 0
    fills = list(Fill.select().where(Fill.lot == lot.id).order_by(Fill.id))
    buy = [f for f in fills if f.side == "BUY"]
    sell = [f for f in fills if f.side == "SELL"]
    expected = sum((f.price - lot.avg_price) * f.qty * 100 for f in sell) - sum(f.commission for f in fills)
    assert lot.realized_pnl == expected
    assert sell[0].price / buy[0].price - 1 >= Decimal("0.5") * Decimal("0.97")  # at least ~the 50 % tier
    assert w.events(EventKind.TAKE_PROFIT)


async def test_force_exit_after_270_days(db: Database) -> None:
    pairs = [(500.0, 500.0), (490.0, 490.0)] + [(490.0, 490.0)] * 200
    bars = bars_oc(pairs)
    w = await make_world(bars, settings={"check_interval_min": "30", "recycle_enabled": "off"})
    await w.run_days(days(bars))
    lot = Lot.get()
    assert lot.exit_reason == "force_exit"
    held = (lot.closed_at.date() - lot.opened_at.date()).days
    assert held == 270 or (held > 270 and held <= 273)  # the first session on or after day 270


async def test_roll_when_full_and_qqq_falls_five_percent(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 490), (460, 458)])
    w = await make_world(bars, settings={"max_positions": "1"})
    await w.run_days(days(bars))
    roll = Roll.get()
    assert roll.status == "completed" and roll.combo
    old = Lot.get_by_id(roll.old_lot_id)
    new = Lot.get_by_id(roll.new_lot_id)
    assert old.qty_open == 0 and old.exit_reason == "roll"
    assert new.qty_open == 1 and new.strike < old.strike
    assert len(ledger.open_lots()) == 1
    assert Order.select().where(Order.purpose == "roll").count() == 1  # one combo order
    assert w.events(EventKind.ROLL)


async def test_no_roll_below_max_positions(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 490), (460, 458)])
    w = await make_world(bars, settings={"max_positions": "3"})
    await w.run_days(days(bars))
    assert Roll.select().count() == 0
    assert len(ledger.open_lots()) == 2  # the deep dip is a plain entry


async def test_profit_is_recycled_into_qqqm_and_never_more(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 490), (575, 575), (576, 576)])
    w = await make_world(bars)
    await w.run_days(days(bars))
    shares, deployed = ledger.qqqm_bought()
    realized = ledger.realized_option_pnl()
    assert realized > 500
    assert shares > 0
    assert deployed <= realized
    assert ledger.recycling_pool() >= 0
    assert w.events(EventKind.RECYCLE)


async def test_partial_fills_are_each_recorded(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars, settings={"order_quantity": "3", "max_premium": "50000"},
                         fill=SimFillModel(partial_max_qty=1))
    await w.run_days(days(bars))
    lot = Lot.get()
    fills = list(Fill.select().where(Fill.lot == lot.id))
    assert len(fills) >= 2
    assert sum(f.qty for f in fills) == lot.qty_opened == lot.qty_open
    assert lot.qty_open == 3
    assert w.events(EventKind.ORDER_PARTIAL)


async def test_a_duplicate_execution_is_recorded_once(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars)
    await w.run_days(days(bars))
    execs = await w.broker.executions()
    assert execs
    for ex in execs:
        w.engine.on_execution(ex)  # the broker replays its fills (as IB does after a reconnect)
    await w.engine.reconcile()
    assert Fill.select().count() == len(execs)
    assert Lot.get().qty_open == 1


async def test_a_fill_after_cancel_is_still_recorded(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars, fill=SimFillModel(never_fill=True))
    await w.run_days(days(bars))
    order = Order.get(Order.purpose == "entry")
    assert order.status == "cancelled" and order.filled_qty == 0
    req = ledger.request_from_json(order.request)
    late = Execution("late-1", order.order_ref, order.broker_order_id or "", req.legs[0].instrument, "BUY", 1,
                     order.limit, w.clock.now(), Decimal("0.65"))
    w.engine.on_execution(late)
    assert Lot.get().qty_open == 1
    assert Order.get_by_id(order.id).filled_qty == 1


async def test_pause_sends_nothing_but_reports(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars, settings={"paused": "on"})
    reports = await w.run_session(bars[1].day, max_ticks=3)
    assert Order.select().count() == 0
    assert "would enter" in reports[-1].summary()


async def test_daily_order_cap_halts_the_session(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 490), (575, 575)])
    w = await make_world(bars, limits=DailyLimits(1, Decimal(100_000)))
    await w.run_days(days(bars))
    per_day = {}
    for o in Order.select():
        per_day[o.session_day] = per_day.get(o.session_day, 0) + 1
    assert max(per_day.values()) == 1
    assert w.events(EventKind.LIMIT_REACHED)


async def test_daily_premium_cap(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars, limits=DailyLimits(10, Decimal(1000)))
    await w.run_days(days(bars))
    assert Order.select().count() == 0
    assert w.events(EventKind.LIMIT_REACHED)


async def test_entry_skipped_when_the_account_cannot_pay(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars, capital=Decimal(2000))
    await w.run_days(days(bars))
    assert Order.select().count() == 0
    assert len(w.events(EventKind.SKIPPED)) == 1  # once for the session, not every tick


async def test_no_eligible_contract_alerts_once_per_session(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars, settings={"max_spread_pct": "0.1"})
    await w.run_days(days(bars))
    assert Order.select().count() == 0
    assert len(w.events(EventKind.NO_CONTRACT)) == 1


# --- crashes -----------------------------------------------------------------------------------


async def test_crash_between_persisted_and_sent_leaves_no_duplicate(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars)
    real_place = w.broker.place_order

    async def crash(req: object) -> str:
        raise SimulatedCrash

    w.broker.place_order = crash  # type: ignore[method-assign]
    with pytest.raises(SimulatedCrash):
        await w.run_session(bars[1].day)
    assert Order.get().status == "pending_submit"  # persisted, never sent
    w.broker.place_order = real_place  # type: ignore[method-assign]
    w2 = w.restart()
    await w2.engine.start()
    assert Order.get().status == "abandoned"
    await w2.run_session(bars[1].day)
    await w2.close_session(bars[1].day)
    sent = [o for o in Order.select() if o.status != "abandoned"]
    assert len(sent) == 1  # exactly one order reached the broker
    assert len(await w.broker.executions()) == Fill.select().count()
    assert len(ledger.open_lots()) == 1


async def test_crash_after_send_before_the_ack_adopts_the_order(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars)
    real_place = w.broker.place_order

    async def send_then_crash(req: object) -> str:
        await real_place(req)  # type: ignore[arg-type]
        raise SimulatedCrash

    w.broker.place_order = send_then_crash  # type: ignore[method-assign]
    w.broker.set_listener(None)  # the process dies with the order in flight: no events reach it
    with pytest.raises(SimulatedCrash):
        await w.run_session(bars[1].day)
    w.broker.place_order = real_place  # type: ignore[method-assign]
    w2 = w.restart()
    await w2.engine.start()
    order = Order.get()
    assert order.status in ("filled", "cancelled")
    await w2.run_session(bars[1].day)
    assert Order.select().where(Order.purpose == "entry").count() == 1  # no second entry after restart
    assert Fill.select().count() == len(await w.broker.executions())


async def test_crash_between_fill_and_ledger_loses_no_fill(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489), (491, 491)])
    w = await make_world(bars)

    def die(_: object) -> None:
        raise SimulatedCrash

    w.engine.on_execution = die  # type: ignore[method-assign]
    with pytest.raises(SimulatedCrash):
        await w.run_session(bars[1].day)
    assert Fill.select().count() == 0
    w2 = w.restart()
    await w2.engine.start()  # reconciliation reads the broker's executions
    assert Fill.select().count() == len(await w.broker.executions()) >= 1
    assert len(ledger.open_lots()) == 1
    await w2.run_days(days(bars)[1:])
    assert Order.select().where(Order.purpose == "entry").count() == 1
    await w2.engine.reconcile()
    assert Fill.select().count() == len(await w.broker.executions())


async def world_inside_the_dip_session(bars: list[DailyBar]) -> World:
    """A world ten minutes into its second session (the first only gives the previous close)."""
    w = await make_world(bars)
    session = w.cal.session(bars[1].day)
    assert session is not None
    w.clock.advance_to(session.open + timedelta(minutes=10))
    return w


async def test_a_check_in_flight_delays_the_real_tick_instead_of_skipping_it(db: Database) -> None:
    import asyncio

    bars = bars_oc([(500, 500), (490, 489)])
    w = await world_inside_the_dip_session(bars)
    gate = asyncio.Event()
    real_quote = w.broker.quote

    async def slow_quote(symbol: str) -> object:
        await gate.wait()
        return await real_quote(symbol)

    w.broker.quote = slow_quote  # type: ignore[method-assign,assignment]
    check = asyncio.create_task(w.engine.tick(dry_run=True))
    await asyncio.sleep(0)
    real = asyncio.create_task(w.engine.tick())
    await asyncio.sleep(0.01)
    assert not real.done()  # waiting for the check, not skipped
    again = await w.engine.tick(dry_run=True)  # a second check while one runs is skipped
    assert "still running" in again.skipped
    w.broker.quote = real_quote  # type: ignore[method-assign]
    gate.set()
    dry, report = await check, await real
    assert dry.dry_run and not report.skipped
    assert len(ledger.open_lots()) == 1


async def test_a_worthless_lot_that_expires_unsold_is_closed_and_frees_its_slot(db: Database) -> None:
    from storage.models import Expiry

    pairs = [(500.0, 500.0), (490.0, 489.0)] + [(300.0, 300.0)] * 55 + [(296.0, 295.0)]
    bars = bars_oc(pairs)
    w = await make_world(bars, settings={"min_dte": "30", "max_positions": "1", "roll_drop_pct": "50",
                                         "recycle_enabled": "off"})
    await w.run_days(days(bars)[:2])
    (lot,) = ledger.open_lots()
    assert lot.contract.dte(bars[1].day) < 70
    await w.run_days(days(bars)[2:])
    row = Lot.get_by_id(lot.id)
    assert row.exit_reason == "expired" and row.qty_open == 0
    x = Expiry.get()
    assert x.settlement == 0 and x.underlying_close is not None
    cost = lot.avg_price * 100 + lot.commission
    assert x.realized_pnl == row.realized_pnl == -cost
    assert ledger.realized_option_pnl() == -cost
    assert any("expired unsold" in t for t in w.events(EventKind.EXPIRED))
    assert lot.contract not in [p.contract for p in await w.broker.positions()]  # gone at the broker too
    # the slot is free again: the last day's dip is an entry
    assert Order.select().where(Order.purpose == "entry").count() == 2


async def test_a_lot_that_expires_in_the_money_is_settled_at_intrinsic_and_flagged(db: Database) -> None:
    pairs = [(500.0, 500.0), (490.0, 489.0)] + [(520.0, 520.0)] * 50
    bars = bars_oc(pairs)
    w = await make_world(bars, settings={"min_dte": "30", "max_positions": "1", "recycle_enabled": "off"})
    await w.run_days(days(bars)[:2])
    (lot,) = ledger.open_lots()
    w.settings.update("paused", "on", "test")  # nothing sells it before expiry
    await w.run_days(days(bars)[2:])
    row = Lot.get_by_id(lot.id)
    assert row.exit_reason == "expired"
    (text,) = [t for t in w.events(EventKind.EXPIRED)]
    assert "in the money" in text and "exercised" in text
    settle = Decimal(520) - lot.contract.strike
    assert row.realized_pnl == (settle - lot.avg_price) * 100 - lot.commission


async def test_ticks_during_a_slow_start_are_skipped_not_run_beside_it(db: Database) -> None:
    import asyncio

    bars = bars_oc([(500, 500), (490, 489)])
    w = await world_inside_the_dip_session(bars)
    gate = asyncio.Event()
    real_connect = w.broker.connect

    async def slow_connect() -> None:
        await gate.wait()
        await real_connect()

    w.broker.connect = slow_connect  # type: ignore[method-assign]
    restarted = w.restart()
    start = asyncio.create_task(restarted.engine.start())
    await asyncio.sleep(0)
    report = await restarted.engine.tick()
    assert report.skipped.startswith("connecting and reconciling")
    assert Order.select().count() == 0
    gate.set()
    await start
    report = await restarted.engine.tick()
    assert not report.skipped and Order.select().where(Order.purpose == "entry").count() == 1
