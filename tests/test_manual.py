"""Manual control from the phone, through the real Application on the test Bot API: /sell N and the
"Sell now" button, /orders and /cancel, /enter, /stop; each needs a session and a confirm, is
audited, and reaches the other admins as an alert."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from broker.base import OrderLeg, OrderRequest
from broker.sim import SimFillModel
from storage import ledger
from storage.models import AlertRecord, AuditEntry, Lot, LotExit, Order, OrderPurpose, OrderState
from tests.fake_gateway.testing import IbErrorGuard, ib_errors
from tests.tg_harness import ADMIN, ADMIN2, Tg, bars_oc, open_tg

__all__ = ["ib_errors"]

DIP_THEN_FLAT = [(500, 500), (490, 489), (492, 493), (493, 494)]


async def inside_a_session(tg: Tg, day_index: int, ticks: int = 3) -> None:
    """Run the sessions before ``day_index`` whole, then ``ticks`` ticks of that one: the clock is
    inside its session."""
    bars_days = [tg.world.path.sessions[i].day for i in range(day_index + 1)]
    await tg.world.run_days(bars_days[:-1])
    await tg.world.run_session(bars_days[-1], max_ticks=ticks)


@pytest.fixture
async def tg(tmp_path: Path) -> AsyncIterator[Tg]:
    async for t in open_tg(tmp_path, bars_oc(DIP_THEN_FLAT), settings={"recycle_enabled": "off"}):
        yield t


async def test_sell_a_lot_now_with_a_confirm(tg: Tg) -> None:
    await inside_a_session(tg, 2)
    await tg.enroll_and_login()
    (lot,) = ledger.open_lots()
    tg.api.clear()
    await tg.send(ADMIN, f"/sell {lot.id}")
    ask = tg.api.last(ADMIN)
    assert f"Sell lot #{lot.id} now?" in ask.text and "mid" in ask.text and "Estimated P&amp;L" in ask.text
    assert "Value at the mid" in ask.text and "USD" in ask.text
    assert ledger.open_lots() == (lot,)  # asking sends nothing
    await tg.tap(ADMIN, ask.button("✅ Sell"))
    assert ledger.open_lots() == ()
    row = Lot.get_by_id(lot.id)
    assert row.exit_reason == LotExit.MANUAL
    order = Order.get(Order.lot == lot.id, Order.side == "SELL")
    assert order.purpose == OrderPurpose.MANUAL and order.status == OrderState.FILLED
    edits = [c for c in tg.api.of("editMessageText", ADMIN)]
    assert edits and f"Sold lot #{lot.id}" in edits[-1].text and "realized" in edits[-1].text
    audit = AuditEntry.get(AuditEntry.action == "sell")
    assert audit.who.startswith(f"telegram:{ADMIN}") and f"lot #{lot.id}" in audit.detail
    manual_alerts = list(AlertRecord.select().where(AlertRecord.kind == "manual"))
    assert manual_alerts and all(a.actor == ADMIN for a in manual_alerts)  # for the other admins
    # the button is dead once used: a second tap says what the first one did, and sends nothing
    await tg.tap(ADMIN, ask.button("✅ Sell"))
    again = tg.api.of("answerCallbackQuery")[-1].params.get("text", "")
    assert again.startswith("Already done: Sold lot #") and Order.select().count() == 2, again


async def test_sell_needs_a_session_and_refuses_a_bad_lot(tg: Tg) -> None:
    await inside_a_session(tg, 2)
    await tg.send(ADMIN, "/sell 1")
    assert "open a session first" in tg.api.last(ADMIN).text
    await tg.enroll_and_login()
    await tg.send(ADMIN, "/sell 9")
    assert "lot #9 is not an open lot" in tg.api.last(ADMIN).text.lower() and "Nothing was sent" in \
        tg.api.last(ADMIN).text
    await tg.send(ADMIN, "/sell lots")
    assert "Usage" in tg.api.last(ADMIN).text
    assert Order.select().where(Order.purpose == OrderPurpose.MANUAL).count() == 0


async def test_sell_now_button_under_positions(tg: Tg) -> None:
    await inside_a_session(tg, 2)
    await tg.enroll_and_login()
    (lot,) = ledger.open_lots()
    await tg.send(ADMIN, "/positions")
    text = tg.api.last(ADMIN)
    await tg.tap(ADMIN, text.button(f"Sell #{lot.id}"))
    preview = tg.api.last(ADMIN)  # a new message: the list stays as it was
    assert preview.method == "sendMessage" and f"Sell lot #{lot.id} now?" in preview.text
    await tg.tap(ADMIN, preview.button("✖ Keep"))
    assert ledger.open_lots() == (lot,)
    assert "nothing was sent" in tg.api.of("editMessageText", ADMIN)[-1].text


async def test_sell_outside_a_session_is_refused(tg: Tg) -> None:
    await tg.world.run_days([s.day for s in tg.world.path.sessions[:2]])  # the clock is at the close
    await tg.enroll_and_login()
    await tg.send(ADMIN, "/sell 1")
    assert "market is closed" in tg.api.last(ADMIN).text and "next open" in tg.api.last(ADMIN).text


def _working_order(tg: Tg) -> Order:
    """An order the broker works and will not fill (as one left by an earlier tick)."""
    (lot,) = ledger.open_lots()
    ref = "qqqbot-working0001"
    req = OrderRequest(ref, (OrderLeg(lot.contract, "SELL"),), lot.qty, Decimal("999.00"))
    ledger.create_order(req, OrderPurpose.TAKE_PROFIT, tg.world.cal.open_session(tg.clock.now()).day,  # type: ignore[union-attr]
                        tg.clock.now(), lot_id=lot.id)
    return Order.get(Order.order_ref == ref)


async def test_orders_lists_and_cancels_a_working_order(tmp_path: Path) -> None:
    async for tg in open_tg(tmp_path, bars_oc(DIP_THEN_FLAT), settings={"recycle_enabled": "off"}):
        await inside_a_session(tg, 2)
        await tg.enroll_and_login()  # a session lasts 30 minutes: open it once inside the session
        order = _working_order(tg)
        broker_id = await tg.world.broker.place_order(ledger.request_from_json(order.request))
        ledger.mark_sent(order.order_ref, broker_id, tg.clock.now())
        tg.clock.advance_to(tg.clock.now() + timedelta(seconds=45))
        await tg.send(ADMIN, "/orders")
        listing = tg.api.last(ADMIN)
        assert f"<b>#{order.id}</b> take profit" in listing.text and "limit <code>999.00</code>" in listing.text
        assert "bid" in listing.text and "working for 45 s" in listing.text
        await tg.tap(ADMIN, listing.button(f"✖ Cancel order {order.id}"))
        confirm = tg.api.of("editMessageText", ADMIN)[-1]
        assert "Cancel this order?" in confirm.text
        await tg.tap(ADMIN, confirm.button("✅ Cancel order"))
        assert Order.get_by_id(order.id).status == OrderState.CANCELLED
        assert ": cancelled" in tg.api.of("editMessageText", ADMIN)[-1].text  # confirmed by the broker
        assert AuditEntry.get(AuditEntry.action == "cancel").who.startswith(f"telegram:{ADMIN}")
        await tg.send(ADMIN, "/orders")
        assert "No order is working." in tg.api.last(ADMIN).text


async def test_cancel_all_and_bad_ids(tg: Tg) -> None:
    await inside_a_session(tg, 2)
    await tg.enroll_and_login()
    await tg.send(ADMIN, "/cancel all")
    assert "No order is working." in tg.api.last(ADMIN).text
    await tg.send(ADMIN, "/cancel 77")
    assert "Usage" in tg.api.last(ADMIN).text


async def test_enter_buys_the_strategys_contract_after_a_confirm(tmp_path: Path) -> None:
    flat = [(500, 500), (500, 501), (501, 500), (500, 500)]
    async for tg in open_tg(tmp_path, bars_oc(flat), settings={"recycle_enabled": "off"}):
        await inside_a_session(tg, 2)
        await tg.enroll_and_login()  # a session lasts 30 minutes: open it once inside the session
        assert ledger.open_lots() == ()  # no dip: the strategy bought nothing
        await tg.send(ADMIN, "/enter")
        ask = tg.api.last(ADMIN)
        assert "Buy 1 QQQ" in ask.text and "delta" in ask.text and "Premium at the mid" in ask.text
        assert Order.select().count() == 0
        await tg.tap(ADMIN, ask.button("✅ Buy"))
        (lot,) = ledger.open_lots()
        assert "Bought 1" in tg.api.of("editMessageText", ADMIN)[-1].text
        entry = Order.get(Order.purpose == OrderPurpose.ENTRY)
        assert "manual" in entry.context
        assert lot.contract.dte(tg.world.path.sessions[2].day) >= 365
        # it counts as the session's entry, and max positions still applies to the next /enter
        await tg.send(ADMIN, "/set max_positions 1")
        await tg.send(ADMIN, "/enter")
        assert "maximum" in tg.api.last(ADMIN).text and "Nothing was sent" in tg.api.last(ADMIN).text


async def test_enter_respects_the_premium_cap(tmp_path: Path) -> None:
    async for tg in open_tg(tmp_path, bars_oc([(500, 500), (500, 501), (501, 500)]),
                            settings={"max_premium": "100"}):
        await inside_a_session(tg, 2)
        await tg.enroll_and_login()  # a session lasts 30 minutes: open it once inside the session
        await tg.send(ADMIN, "/enter")
        text = tg.api.last(ADMIN).text
        assert "above the max premium" in text and "Nothing was sent" in text


async def test_stop_pauses_cancels_and_offers_to_sell_everything(tmp_path: Path) -> None:
    async for tg in open_tg(tmp_path, bars_oc(DIP_THEN_FLAT), settings={"recycle_enabled": "off"},
                            fill=SimFillModel(always_fill_at_mid=True)):
        await inside_a_session(tg, 2)
        await tg.enroll_and_login()  # a session lasts 30 minutes: open it once inside the session
        order = _working_order(tg)
        broker_id = await tg.world.broker.place_order(ledger.request_from_json(order.request))
        ledger.mark_sent(order.order_ref, broker_id, tg.clock.now())
        await tg.send(ADMIN, "/stop")
        ask = tg.api.last(ADMIN)
        assert "Emergency stop" in ask.text and "cancel 1 working order" in ask.text
        await tg.tap(ADMIN, ask.button("⛔ Stop now"))
        stopped = tg.api.of("editMessageText", ADMIN)[-1]
        assert "Stopped" in stopped.text and "paused" in stopped.text
        assert tg.parts.engine.settings.current.paused.holds_exits
        assert Order.get_by_id(order.id).status == OrderState.CANCELLED
        await tg.tap(ADMIN, stopped.button("Also sell"))
        second = tg.api.of("editMessageText", ADMIN)[-1]
        assert "Sell the lot now?" in second.text
        await tg.tap(ADMIN, second.button("✅ Sell"))
        assert ledger.open_lots() == ()
        assert AuditEntry.select().where(AuditEntry.action == "stop").count() == 1


async def test_a_second_admin_hears_of_the_first_ones_manual_sale(tg: Tg) -> None:
    await inside_a_session(tg, 2)
    await tg.enroll_and_login()
    (lot,) = ledger.open_lots()
    await tg.send(ADMIN, f"/sell {lot.id}")
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("✅ Sell"))
    tg.api.clear()
    await tg.drain_alerts()
    to_second = "\n".join(c.text for c in tg.api.of("sendMessage", ADMIN2))
    assert f"Manual sale of lot #{lot.id}" in to_second


# --- the same on the fake IB Gateway (the real ib_async client over a socket) -------------------------


@pytest.fixture
async def ib_tg(tmp_path: Path, ib_errors: IbErrorGuard) -> AsyncIterator[Tg]:
    async for t in open_tg(tmp_path, bars_oc(DIP_THEN_FLAT), settings={"recycle_enabled": "off"}, ib=True):
        yield t


async def test_ib_sell_a_lot_now(ib_tg: Tg) -> None:
    tg = ib_tg
    await inside_a_session(tg, 2)
    await tg.enroll_and_login()
    (lot,) = ledger.open_lots()
    await tg.send(ADMIN, f"/sell {lot.id}")
    ask = tg.api.last(ADMIN)
    assert f"Sell lot #{lot.id} now?" in ask.text
    await tg.tap(ADMIN, ask.button("✅ Sell"))
    assert ledger.open_lots() == ()
    assert Lot.get_by_id(lot.id).exit_reason == LotExit.MANUAL
    assert f"Sold lot #{lot.id}" in tg.api.of("editMessageText", ADMIN)[-1].text
    positions = await tg.parts.engine.broker.positions()
    assert lot.contract not in [p.contract for p in positions]  # gone at the gateway too


async def test_ib_cancel_and_stop(ib_tg: Tg) -> None:
    tg = ib_tg
    await inside_a_session(tg, 2)
    await tg.enroll_and_login()
    order = _working_order(tg)
    broker_id = await tg.parts.engine.broker.place_order(ledger.request_from_json(order.request))
    ledger.mark_sent(order.order_ref, broker_id, tg.clock.now())
    await tg.send(ADMIN, "/cancel all")
    ask = tg.api.last(ADMIN)
    assert "Cancel this order?" in ask.text
    await tg.tap(ADMIN, ask.button("✅ Cancel all"))
    await tg.parts.engine.broker.sync()  # the gateway's answer has been processed
    assert Order.get_by_id(order.id).status == OrderState.CANCELLED
    # /stop: paused, nothing working, then every lot sold on the second confirm
    await tg.send(ADMIN, "/stop")
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("⛔ Stop now"))
    stopped = tg.api.of("editMessageText", ADMIN)[-1]
    assert "no order was working" in stopped.text and tg.parts.engine.settings.current.paused.holds_exits
    await tg.tap(ADMIN, stopped.button("Also sell"))
    await tg.tap(ADMIN, tg.api.of("editMessageText", ADMIN)[-1].button("✅ Sell"))
    assert ledger.open_lots() == ()
