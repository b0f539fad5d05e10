"""Order safety on the chat side (issue 17): a confirm button acts once even when the phone delivers
the tap twice at the same moment; two admins confirming /enter together buy one lot; a manual
/enter obeys the session's entry rule unless "buy another" is tapped; a manual order interrupted by
a dropped connection answers what really happened. Everything goes through the real Telegram
Application (respx at the transport), updates delivered concurrently as the app runs them."""

from __future__ import annotations

import asyncio
import html
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from broker.base import ConnectionState, NotSent, OrderLeg, OrderRequest
from broker.sim import SimFillModel
from storage import ledger, settings_store
from storage.models import AlertRecord, AuditEntry, Order, OrderPurpose
from strategy.model import OptionContract
from tests.tg_harness import ADMIN, ADMIN2, Tg, bars_oc, open_tg

FLAT = [(500, 500), (500, 501), (501, 500), (500, 500)]
DIP_THEN_FLAT = [(500, 500), (490, 489), (492, 493), (493, 494)]


async def inside_a_session(tg: Tg, day_index: int, ticks: int = 3) -> None:
    days = [tg.world.path.sessions[i].day for i in range(day_index + 1)]
    await tg.world.run_days(days[:-1])
    await tg.world.run_session(days[-1], max_ticks=ticks)


async def together(tg: Tg, *taps: tuple[int, str]) -> None:
    """Deliver the taps at the same moment, each Bot API call taking a network round trip (so the
    updates interleave as they do in production, with concurrent updates on)."""
    tg.api.latency = 0.005
    try:
        await asyncio.gather(*(tg.tap(user, data) for user, data in taps))
    finally:
        tg.api.latency = None


def entries() -> list[Order]:
    return list(Order.select().where(Order.purpose == OrderPurpose.ENTRY).order_by(Order.id))


@pytest.fixture
async def flat(tmp_path: Path) -> AsyncIterator[Tg]:
    async for t in open_tg(tmp_path, bars_oc(FLAT), settings={"recycle_enabled": "off"}):
        yield t


# --- item 2: a double tap ------------------------------------------------------------------------------


async def test_a_double_tap_on_buy_places_one_order(flat: Tg) -> None:
    tg = flat
    await inside_a_session(tg, 2)
    await tg.enroll_and_login()
    await tg.send(ADMIN, "/enter")
    buy = tg.api.last(ADMIN).button("✅ Buy")
    tg.api.clear()
    await together(tg, (ADMIN, buy), (ADMIN, buy))  # the phone sent the tap twice
    assert len(entries()) == 1 and len(ledger.open_lots()) == 1
    toasts = [str(c.params.get("text", "")) for c in tg.api.of("answerCallbackQuery")]
    assert any("Already done" in t and "1 QQQ" in t for t in toasts), toasts
    edits = [c.text for c in tg.api.of("editMessageText", ADMIN)]
    assert sum("Bought 1" in t for t in edits) == 1, edits
    # a later tap still answers what was done, and sends nothing
    await tg.tap(ADMIN, buy)
    last = str(tg.api.of("answerCallbackQuery")[-1].params.get("text", ""))
    assert "Already done" in last and "Bought 1" in last, last
    assert len(entries()) == 1


async def test_a_double_tap_on_sell_places_one_order(tmp_path: Path) -> None:
    async for tg in open_tg(tmp_path, bars_oc(DIP_THEN_FLAT), settings={"recycle_enabled": "off"}):
        await inside_a_session(tg, 2)
        await tg.enroll_and_login()
        (lot,) = ledger.open_lots()
        await tg.send(ADMIN, f"/sell {lot.id}")
        sell = tg.api.last(ADMIN).button("✅ Sell")
        tg.api.clear()
        await together(tg, (ADMIN, sell), (ADMIN, sell))
        sells = Order.select().where(Order.side == "SELL")
        assert sells.count() == 1 and ledger.open_lots() == ()
        toasts = [str(c.params.get("text", "")) for c in tg.api.of("answerCallbackQuery")]
        assert any("Already done" in t and f"lot #{lot.id}" in t for t in toasts), toasts


# --- item 5: /enter and the session's entry rule ----------------------------------------------------------


async def test_two_admins_confirming_enter_together_buy_one_lot(flat: Tg) -> None:
    tg = flat
    await inside_a_session(tg, 2)
    await tg.enroll_and_login(ADMIN)
    await tg.enroll_and_login(ADMIN2)
    await tg.send(ADMIN, "/enter")
    first = tg.api.last(ADMIN).button("✅ Buy")
    await tg.send(ADMIN2, "/enter")
    second = tg.api.last(ADMIN2).button("✅ Buy")
    tg.api.clear()
    await together(tg, (ADMIN, first), (ADMIN2, second))
    assert len(entries()) == 1 and len(ledger.open_lots()) == 1
    texts = [c.text for c in tg.api.of("editMessageText")]
    assert sum("Bought 1" in t for t in texts) == 1, texts
    assert any("an entry was just bought" in t.lower() and "nothing was sent" in t.lower() for t in texts), texts


async def test_enter_after_this_sessions_entry_needs_buy_another(tmp_path: Path) -> None:
    async for tg in open_tg(tmp_path, bars_oc(DIP_THEN_FLAT), settings={"recycle_enabled": "off"}):
        await inside_a_session(tg, 1)  # the dip: the strategy entered this session
        assert len(entries()) == 1
        await tg.enroll_and_login()
        await tg.send(ADMIN, "/enter")
        ask = tg.api.last(ADMIN)
        assert "already" in ask.text.lower() and "this session" in ask.text, ask.text
        labels = [b["text"] for row in ask.keyboard for b in row]
        assert not any(label.startswith("✅ Buy 1") for label in labels), labels
        await tg.tap(ADMIN, ask.button("✅ Buy another"))
        assert len(entries()) == 2 and len(ledger.open_lots()) == 2
        assert "Bought 1" in tg.api.of("editMessageText", ADMIN)[-1].text


async def test_a_plain_buy_confirmed_after_the_automatic_entry_sends_nothing(flat: Tg) -> None:
    """The confirm was drawn before the strategy's entry of this session: it no longer holds."""
    tg = flat
    await inside_a_session(tg, 2)
    await tg.enroll_and_login()
    await tg.send(ADMIN, "/enter")
    buy = tg.api.last(ADMIN).button("✅ Buy")
    await tg.send(ADMIN2, "/enter")  # ADMIN2 has no session: refused, nothing drawn
    await tg.enroll_and_login(ADMIN2)
    await tg.send(ADMIN2, "/enter")
    await tg.tap(ADMIN2, tg.api.last(ADMIN2).button("✅ Buy"))
    assert len(entries()) == 1
    await tg.tap(ADMIN, buy)
    assert len(entries()) == 1 and len(ledger.open_lots()) == 1
    text = tg.api.of("editMessageText", ADMIN)[-1].text.lower()
    assert "an entry was just bought" in text and "nothing was sent" in text, text


# --- item 6: numbers typed in chat --------------------------------------------------------------------------

BAD_NUMBERS = [
    ("/why ²", "/why N"),
    ("/why 99999999999999999999", "/why N"),
    ("/why ١٢", "/why N"),
    ("/sell ①", "/sell N"),
    ("/sell 99999999999999999999", "/sell N"),
    ("/cancel ²", "/cancel ID"),
    ("/trades ٣", "/trades [N]"),
    ("/trades 99999999999999999999", "/trades [N]"),
    ("/daily ²", "/daily [N]"),
    ("/weekly ⁵", "/weekly [N]"),
    ("/monthly ৩", "/monthly [N]"),
    ("/logs ¹", "/logs [N]"),
    ("/backtest ²", "/backtest [YEARS]"),
    ("/backtest 99999999999999999999", "/backtest [YEARS]"),
    ("/set delta ⁰.⁶", "Delta of the call to buy must be"),
    ("/set premium 99999999999999999999", "Max premium per entry must be"),
]


@pytest.mark.parametrize(("text", "usage"), BAD_NUMBERS)
async def test_odd_digits_answer_the_usage_change_nothing_and_alert_no_one(tmp_path: Path, text: str,
                                                                          usage: str) -> None:
    errors: list[BaseException] = []
    async for tg in open_tg(tmp_path, bars_oc(DIP_THEN_FLAT), settings={"recycle_enabled": "off"},
                            handler_errors=errors):
        await inside_a_session(tg, 2)
        await tg.enroll_and_login()
        before = (Order.select().count(), settings_store.load_raw(), AuditEntry.select().count())
        await tg.drain_alerts()
        tg.api.clear()
        await tg.send(ADMIN, text)
        reply = html.unescape(tg.api.last(ADMIN).text)
        await tg.drain_alerts()
        assert usage in reply and "Sorry" not in reply, reply
        assert errors == []
        assert (Order.select().count(), settings_store.load_raw(), AuditEntry.select().count()) == before
        assert not tg.api.of("sendMessage", ADMIN2), "an admin was alerted"
        assert AlertRecord.select().where(AlertRecord.kind == "error").count() == 0


# --- item 6, second half: a partial fill, then the connection drops -----------------------------------------


def drop_after_first_fill(tg: Tg, side: str) -> list[str]:
    """The broker fills 1 contract of the next ``side`` order, then the connection to it drops: every
    request after that fails (NotSent), nothing more fills. Returns the refs of the orders it cut."""
    broker = tg.world.broker
    execute = broker._execute
    cut: list[str] = []

    async def down(*args: object, **kwargs: object) -> Any:
        raise NotSent("sim: not connected (the connection to the broker dropped)")

    def execute_then_drop(o: Any, qty: int, now: Any, fills: Any) -> None:
        execute(o, qty, now, fills)
        if o.req.action == side and not cut:
            cut.append(o.req.order_ref)
            broker.fill = SimFillModel(never_fill=True)
            broker._state = ConnectionState.DOWN
            for name in ("option_quotes", "modify_order", "cancel_order", "place_order", "positions"):
                setattr(broker, name, down)

    broker.fill = SimFillModel(always_fill_at_mid=True, partial_max_qty=1)
    broker._execute = execute_then_drop  # type: ignore[method-assign]
    return cut


async def test_a_partial_buy_then_a_drop_answers_what_was_bought(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    async for tg in open_tg(tmp_path, bars_oc(FLAT), settings={"recycle_enabled": "off", "position_size": "2"},
                            handler_errors=errors):
        await inside_a_session(tg, 2)
        await tg.enroll_and_login()
        await tg.send(ADMIN, "/enter")
        buy = tg.api.last(ADMIN).button("✅ Buy 2")
        cut = drop_after_first_fill(tg, "BUY")
        await tg.tap(ADMIN, buy)
        assert errors == []
        text = html.unescape(tg.api.of("editMessageText", ADMIN)[-1].text)
        assert "Sorry" not in text and "Bought 1 of 2" in text, text
        assert "connection to the broker dropped" in text and "can still fill" in text and "/orders" in text, text
        (lot,) = ledger.open_lots()
        assert lot.qty == 1 and cut
        await tg.drain_alerts()
        to_other = "\n".join(c.text for c in tg.api.of("sendMessage", ADMIN2))
        # the other admin hears what was sent and what filled; a dropped connection is no error (the
        # order is cancel pending, settled when the bot reconnects)
        assert "Manual entry sent" in to_other and "Partial fill" in to_other and "Error" not in to_other, to_other


async def test_a_partial_sale_then_a_drop_answers_what_was_sold(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    async for tg in open_tg(tmp_path, bars_oc(DIP_THEN_FLAT),
                            settings={"recycle_enabled": "off", "position_size": "2"},
                            fill=SimFillModel(always_fill_at_mid=True), handler_errors=errors):
        await inside_a_session(tg, 2)
        await tg.enroll_and_login()
        (lot,) = ledger.open_lots()
        assert lot.qty == 2
        await tg.send(ADMIN, f"/sell {lot.id}")
        sell = tg.api.last(ADMIN).button("✅ Sell")
        drop_after_first_fill(tg, "SELL")
        await tg.tap(ADMIN, sell)
        assert errors == []
        text = html.unescape(tg.api.of("editMessageText", ADMIN)[-1].text)
        assert "Sorry" not in text and f"lot #{lot.id}: 1 of 2 sold" in text.lower(), text
        assert "connection to the broker dropped" in text and "can still fill" in text and "/orders" in text, text
        (left,) = ledger.open_lots()
        assert left.qty == 1


async def test_a_buy_confirmed_while_the_strategys_entry_works_sends_nothing(flat: Tg) -> None:
    tg = flat
    await inside_a_session(tg, 2)
    await tg.enroll_and_login()
    await tg.send(ADMIN, "/enter")
    buy = tg.api.last(ADMIN).button("✅ Buy")
    # meanwhile the strategy's entry was sent and works at the broker (its limit far under the bid)
    broker = tg.world.broker
    chain = await broker.option_chain("QQQ")
    contract = OptionContract("QQQ", chain.expiries[-1], min(chain.strikes, key=lambda k: abs(k - 500)))
    req = OrderRequest("qqqbot-autoentry001", (OrderLeg(contract, "BUY"),), 1, Decimal("1.00"))
    day = tg.world.cal.open_session(tg.clock.now()).day  # type: ignore[union-attr]
    ledger.create_order(req, OrderPurpose.ENTRY, day, tg.clock.now())
    ledger.mark_sent(req.order_ref, await broker.place_order(req), tg.clock.now())
    await tg.tap(ADMIN, buy)
    assert len(entries()) == 1 and ledger.open_lots() == ()
    text = tg.api.of("editMessageText", ADMIN)[-1].text.lower()
    assert "an entry was just sent this session" in text and "still working" in text and "nothing was sent" in text
    await tg.send(ADMIN, "/enter")  # asked again: refused while it works
    text = tg.api.last(ADMIN).text.lower()
    assert "still working" in text and "nothing was sent" in text, text
    assert len(entries()) == 1


async def test_two_admins_selling_the_same_lot_together_send_one_sale(tmp_path: Path) -> None:
    async for tg in open_tg(tmp_path, bars_oc(DIP_THEN_FLAT), settings={"recycle_enabled": "off"},
                            fill=SimFillModel(always_fill_at_mid=True)):
        await inside_a_session(tg, 2)
        await tg.enroll_and_login(ADMIN)
        await tg.enroll_and_login(ADMIN2)
        (lot,) = ledger.open_lots()
        await tg.send(ADMIN, f"/sell {lot.id}")
        first = tg.api.last(ADMIN).button("✅ Sell")
        await tg.send(ADMIN2, f"/sell {lot.id}")
        second = tg.api.last(ADMIN2).button("✅ Sell")
        tg.api.clear()
        await together(tg, (ADMIN, first), (ADMIN2, second))
        assert Order.select().where(Order.side == "SELL").count() == 1 and ledger.open_lots() == ()
        texts = [c.text for c in tg.api.of("editMessageText")]
        assert sum(f"Sold lot #{lot.id}" in t for t in texts) == 1, texts
        assert any("Already done" in t and "sold by hand" in t for t in texts), texts
