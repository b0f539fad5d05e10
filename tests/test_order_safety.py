"""Issue 17's symptoms, each as it was seen, through the real `ib_async` client against the fake
IB Gateway (and the sim broker where the gateway cannot play the part): a cancel that cannot be
sent, `/stop` racing an automatic entry, a lot sold outside the bot."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from peewee import Database

from bot.control import manual
from bot.control.views import OrdersView
from bot.engine.alerts import EventKind
from broker.base import ConnectionState, OptionChain
from handlers import format as fmt
from storage import ledger
from storage.models import Lot, Order
from strategy.model import OptionContract
from tests.fake_gateway import FillMode
from tests.fake_gateway.testing import IbErrorGuard, ib_errors
from tests.harness import make_world
from tests.test_engine import bars_oc, days
from tests.test_ib_engine import IbWorld, WorldFactory, ib_world

__all__ = ["ib_errors", "ib_world"]

SOCKET_ERRORS = ("Peer closed connection|Connection reset by peer|Connect call failed|Failed to connect"
                 "|API connection failed")
NEVER_ON_ITS_OWN = FillMode("delayed", delay_s=10**9)  # fills only when the test releases it


async def _until(cond: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def drop_socket_at_cancel(w: IbWorld) -> Callable[[], Awaitable[None]]:
    """The next cancel meets a dead socket: the gateway drops the connection (and refuses new ones)
    just as the bot is about to send it. Returns a coroutine that lets the gateway back."""
    real = w.broker.cancel_order

    async def cancel(ref: str) -> None:
        w.broker.cancel_order = real  # type: ignore[method-assign]
        await w.gw.stop_listening()
        w.gw.drop_connections()
        await _until(lambda: w.broker.state == ConnectionState.DOWN, "the broker to see the drop")
        await real(ref)

    w.broker.cancel_order = cancel  # type: ignore[method-assign]

    async def restore() -> None:
        await w.gw.start_listening()
        await _until(lambda: w.broker.state != ConnectionState.DOWN, "the reconnect")

    return restore


async def _option_position(w: IbWorld) -> dict[str, int]:
    return {p.description: int(p.qty) for p in await w.broker.positions() if isinstance(p.contract, OptionContract)}


async def test_an_entry_whose_cancel_cannot_be_sent_is_never_bought_twice(
        ib_world: WorldFactory, ib_errors: IbErrorGuard) -> None:
    """Symptom 1, entry: the timeout's cancel meets a dead socket. The order keeps working at IB, so
    the ledger keeps it live (cancel pending): no second entry is sent while it may still fill; after
    the reconnect the reconciliation cancels it, and at most one lot is ever bought."""
    ib_errors.allow_text(SOCKET_ERRORS)
    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars, fill=NEVER_ON_ITS_OWN)
    restore = drop_socket_at_cancel(w)
    day = bars[1].day
    await w.run_session(day, max_ticks=1)
    first = Order.get()
    assert first.status == "cancel_pending"  # not "cancelled": IB never heard the cancel
    assert [o.order_ref for o in w.gw.working_orders()] == [first.order_ref]
    (shown,) = manual.working_orders()  # /orders shows it, and that it can still fill
    listing = fmt.orders_text(OrdersView((shown,), {}, w.clock.now(), ()), "[PAPER]")
    assert "⚠️ Cancel pending (can still fill)" in listing
    await restore()
    w.gw.fill = FillMode("immediate")  # from now on the market fills at once
    await w.run_session(day)
    w.gw.release(first.order_ref)  # whatever the bot believes, the first order fills if it still works
    await w.engine.reconcile()
    assert sum((await _option_position(w)).values()) == 1 == len(Lot.select())
    assert Order.get_by_id(first.id).status == "cancelled"
    assert not w.gw.working_orders()


async def test_a_take_profit_whose_cancel_cannot_be_sent_never_leaves_the_account_short(
        ib_world: WorldFactory, ib_errors: IbErrorGuard) -> None:
    """Symptom 1, take profit: a second sell for the same one-contract lot would make the account
    short one call once both fill. The first sale stays live (cancel pending) until IB settles it."""
    ib_errors.allow_text(SOCKET_ERRORS)
    bars = bars_oc([(500, 500), (490, 490), (575, 575)])
    w = await ib_world(bars, settings={"recycle_enabled": "off"})
    await w.run_days(days(bars)[:2])
    assert len(ledger.open_lots()) == 1
    w.gw.fill = NEVER_ON_ITS_OWN
    restore = drop_socket_at_cancel(w)
    day = bars[2].day
    await w.run_session(day, max_ticks=1)
    sale = Order.get(Order.side == "SELL")
    assert sale.status == "cancel_pending"
    await restore()
    w.gw.fill = FillMode("immediate")
    await w.run_session(day)
    w.gw.release(sale.order_ref)
    await w.engine.reconcile()
    positions = await _option_position(w)
    assert all(q >= 0 for q in positions.values()), positions  # never short
    assert ledger.open_lots() == () and Lot.get().exit_reason == "take_profit"
    assert Order.select().where(Order.side == "SELL", Order.filled_qty > 0).count() == 1


async def test_stop_a_moment_before_an_automatic_entry_is_sent_holds_it_back(ib_world: WorldFactory) -> None:
    """Symptom 3: the tick decided an entry and is choosing the contract when /stop comes. Once the
    reply says stopped, no order reaches IB."""
    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars)
    asked, go = asyncio.Event(), asyncio.Event()
    real = w.broker.option_chain

    async def slow_chain(symbol: str) -> OptionChain:
        asked.set()
        await go.wait()
        return await real(symbol)

    w.broker.option_chain = slow_chain  # type: ignore[method-assign]
    day = bars[1].day
    tick = asyncio.create_task(w.run_session(day, max_ticks=1))
    await asyncio.wait_for(asked.wait(), 10)
    lines = await manual.stop(w.engine, "telegram:1 (@admin)")
    assert lines == ["every automatic order is paused, exits included", "no order was working"]
    go.set()
    await tick
    assert w.gw.orders == {} and Lot.select().count() == 0  # nothing reached IB
    assert all(o.status == "abandoned" for o in Order.select())
    assert not w.events(EventKind.ORDER_SENT)


async def test_stop_names_the_order_at_the_broker_and_what_became_of_it(ib_world: WorldFactory) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars, fill=NEVER_ON_ITS_OWN)
    seen: list[list[str]] = []
    real_sleep = w.clock.sleep

    async def sleep_then_stop(seconds: float) -> None:  # /stop while the entry works at IB
        if not seen and w.gw.working_orders():
            seen.append(await manual.stop(w.engine, "telegram:1 (@admin)"))
        await real_sleep(seconds)

    w.clock.sleep = sleep_then_stop  # type: ignore[method-assign]
    await w.run_session(bars[1].day, max_ticks=2)
    order = Order.get()
    assert seen and seen[0][0] == "every automatic order is paused, exits included"
    assert seen[0][1].startswith(f"order {order.id} (entry, BUY QQQ ") and seen[0][1].endswith(": cancelled; "
                                 "the strategy may enter again at a later tick while the signal holds "
                                 "(/pause entries stops it)")
    assert not w.gw.working_orders() and Order.select().count() == 1  # paused: no new entry at the next tick


async def test_a_lot_sold_outside_the_bot_is_never_sold_again_and_is_closed_as_such(db: Database) -> None:
    """Symptom 4: the lot was sold by hand in TWS. The take profit must not sell it again (on IB that
    opens a short call); the reconciliation closes the lot at the broker's execution, alerted."""
    bars = bars_oc([(500, 500), (490, 490), (575, 575), (576, 576)])
    w = await make_world(bars, settings={"recycle_enabled": "off"})
    await w.run_days(days(bars)[:2])
    (lot,) = ledger.open_lots()
    price = Decimal("80.00")
    w.broker.trade_outside(lot.contract, "SELL", lot.qty, price)
    await w.run_session(bars[2].day)
    assert Order.select().where(Order.side == "SELL").count() == 0  # nothing sent: the account holds none
    assert w.events(EventKind.SKIPPED) and "would open a short call" in w.events(EventKind.SKIPPED)[0]
    row = Lot.get_by_id(lot.id)
    assert row.exit_reason == "outside" and row.qty_open == 0
    closed = w.events(EventKind.EXTERNAL_CLOSE)
    assert len(closed) == 1 and f"Lot #{lot.id}" in closed[0] and "80.00" in closed[0]
    assert "the broker's execution" in closed[0]
    assert row.realized_pnl == (price - lot.avg_price) * 100 - lot.commission - _commission_of_outside_sale(w)
    await w.run_session(bars[3].day)
    assert len(w.events(EventKind.EXTERNAL_CLOSE)) == 1  # once


def _commission_of_outside_sale(w: Any) -> Decimal:
    return sum((e.commission or Decimal(0) for e in w.broker._executions if e.order_ref == "tws"), Decimal(0))


async def test_a_lot_sold_in_tws_is_never_sold_again_on_ib(ib_world: WorldFactory) -> None:
    """Symptom 4 on IB: the account may go short (uncovered calls allowed), so a second sale would
    open a short call. The bot reads IB's position before the take profit and sends nothing."""
    bars = bars_oc([(500, 500), (490, 490), (575, 575), (576, 576)])
    w = await ib_world(bars, settings={"recycle_enabled": "off"})
    await w.run_days(days(bars)[:2])
    (lot,) = ledger.open_lots()
    w.gw.allow_short = True
    w.gw.outside_trade(lot.contract, "SELL", lot.qty, Decimal("80.00"))
    await w.broker.sync()
    await w.run_days(days(bars)[2:])
    assert w.gw.position(lot.contract) == 0  # not -1
    assert Order.select().where(Order.side == "SELL").count() == 0
    row = Lot.get_by_id(lot.id)
    assert row.exit_reason == "outside" and row.qty_open == 0
    (closed,) = w.events(EventKind.EXTERNAL_CLOSE)
    assert f"Lot #{lot.id}" in closed and "at 80.00 per share (the broker's execution)" in closed
