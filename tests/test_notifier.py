"""Alert grouping through the real Application and the fake Bot API: an order's alerts are one
message per admin, edited as the order goes on, and its result (an entry, a sale, a recycle) rings:
the story goes on in a new message and the old one is deleted; the admin whose own action raised an alert gets
only the reply; silent kinds stay silent and "off" kinds are never shown, not even inside an
order's message; nothing is lost when an edit is refused, fails, or the bot restarts."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from bot.engine.alerts import Event, EventKind
from handlers.notifier import JOIN_LIMIT, TelegramNotifier
from storage import outbox
from storage.models import AlertRecord
from tests.tg_harness import ADMIN, ADMIN2, Call, Tg, Unanswered, bad_request, bars_oc, open_tg

REF = "qqqbot-00000000000000a1"
SENT = "BUY 7 QQQM @ 190.12 (recycling pool 1,350.00 USD)"
FILLED = "BUY 7 QQQM @ 190.10 (recycle, 7/7 filled)"
RECYCLED = "Recycled profits into 7 QQQM; the bot's core is now 7 shares (1,331.70 USD deployed)"


@pytest.fixture
async def tg(tmp_path: Path) -> AsyncIterator[Tg]:
    async for t in open_tg(tmp_path):
        t.api.strict_edits = True  # Telegram refuses an edit that changes nothing
        await t.drain_alerts()  # what start-up raised (the "started" message) is not what these tests look at
        t.api.clear()
        t.api.messages.clear()
        yield t


def alert_calls(tg: Tg, admin: int, method: str) -> list[Call]:
    return [c for c in tg.api.of(method, admin) if c.ok]


def order_event(tg: Tg, kind: EventKind, text: str, ref: str = REF, **data: object) -> None:
    tg.parts.engine.emit(kind, text, order_ref=ref, **data)  # as the engine raises it


async def live(tg: Tg, kind: EventKind, text: str, ref: str = REF, seconds: float = 2) -> None:
    """One order alert as it happens live: the sender wakes for it alone, then time goes on."""
    order_event(tg, kind, text, ref)
    await tg.drain_alerts()
    tg.clock.advance_to(tg.clock.now() + timedelta(seconds=seconds))


def rings(call: Call) -> bool:
    return call.params.get("disable_notification") != "true"


def restarted(tg: Tg) -> TelegramNotifier:
    """A new notifier on the same database and Bot API, as after a restart (nothing in memory)."""
    n = tg.parts.notifier
    return TelegramNotifier(n.admins, n.render, n.send, n.now, n.quiet_window, edit=n.edit)


def in_order(text: str, *parts: str) -> bool:
    positions = [text.find(p) for p in parts]
    return -1 not in positions and positions == sorted(positions)


# --- one order, one message -----------------------------------------------------------------------


async def test_a_recycle_reaches_each_admin_as_one_message_edited_as_it_fills(tg: Tg) -> None:
    await live(tg, EventKind.ORDER_SENT, SENT)
    await live(tg, EventKind.ORDER_FILLED, FILLED)
    await live(tg, EventKind.RECYCLE, RECYCLED)
    for admin in (ADMIN, ADMIN2):
        sends = alert_calls(tg, admin, "sendMessage")
        edits = alert_calls(tg, admin, "editMessageText")
        # the order rang when sent; the fill was an edit; the result rang again, with the whole story
        assert len(sends) == 2 and rings(sends[0]) and rings(sends[1])
        assert len(edits) == 1 and {int(c.params["message_id"]) for c in edits} == {sends[0].message_id}
        deleted = [int(c.params["message_id"]) for c in tg.api.of("deleteMessage", admin)]
        assert deleted == [sends[0].message_id]  # the story is not shown twice
        assert all(c.params["parse_mode"] == "HTML" for c in edits)
        (shown,) = tg.api.screen(admin)
        assert in_order(shown, "Order sent", SENT, "Filled", FILLED, "Recycling", RECYCLED)
        assert shown.count(SENT) == 1 and shown.count(FILLED) == 1
    assert AlertRecord.select().where(AlertRecord.status == "pending").count() == 0


async def test_alerts_arriving_together_are_one_message_and_later_ones_one_edit(tg: Tg) -> None:
    order_event(tg, EventKind.ORDER_SENT, SENT)
    await tg.drain_alerts()
    order_event(tg, EventKind.ORDER_FILLED, FILLED)
    order_event(tg, EventKind.RECYCLE, RECYCLED)
    await tg.drain_alerts()
    for admin in (ADMIN, ADMIN2):
        assert len(alert_calls(tg, admin, "sendMessage")) == 2  # the order, then its result (it rings)
        assert len(alert_calls(tg, admin, "editMessageText")) == 1  # the fill
        (shown,) = tg.api.screen(admin)
        assert in_order(shown, SENT, FILLED, RECYCLED)


async def test_unrelated_alerts_keep_their_order_and_never_break_an_orders_message(tg: Tg) -> None:
    tg.parts.engine.emit(EventKind.ERROR, "plain one")
    order_event(tg, EventKind.ORDER_SENT, SENT)
    tg.parts.engine.emit(EventKind.DISCONNECT, "plain two")
    order_event(tg, EventKind.ORDER_SENT, "SELL 1 QQQ 20250620C450 @ 61.10", ref="qqqbot-other")
    tg.parts.engine.emit(EventKind.ERROR, "plain three")
    order_event(tg, EventKind.ORDER_FILLED, FILLED)
    order_event(tg, EventKind.ORDER_FILLED, "SELL 1 QQQ 20250620C450 @ 61.00", ref="qqqbot-other")
    await tg.drain_alerts()
    order_event(tg, EventKind.RECYCLE, RECYCLED)
    await tg.drain_alerts()
    for admin in (ADMIN, ADMIN2):
        screen = tg.api.screen(admin)
        ours = [m for m in screen if SENT in m]
        assert len(ours) == 1 and in_order(ours[0], SENT, FILLED, RECYCLED)
        assert "plain" not in ours[0] and "61.10" not in ours[0]  # one order's story only
        other = [m for m in screen if "61.10" in m]
        assert len(other) == 1 and "61.00" in other[0] and "plain" not in other[0]
        plain = "\n".join(m for m in screen if "plain" in m)
        assert in_order(plain, "plain one", "plain two", "plain three")
        assert screen.index(ours[0]) > screen.index(other[0])  # its result rang last: its story is at the bottom
        assert all(len(m) <= 4096 for m in screen)


# --- the acting admin -----------------------------------------------------------------------------


async def test_the_admin_who_acted_is_not_pinged_and_is_not_sent_it_later(tg: Tg) -> None:
    now = tg.clock.now()
    tg.parts.notifier.emit(Event(EventKind.SETTINGS_CHANGED, "target_delta: 0.6 → 0.7 (by admin 1001)", now,
                                 {"actor": ADMIN, "key": "target_delta"}))
    tg.parts.engine.emit(EventKind.ERROR, "something else")
    await tg.drain_alerts()
    assert AlertRecord.get(AlertRecord.kind == "settings_changed").actor == ADMIN
    mine = "\n".join(c.text for c in alert_calls(tg, ADMIN, "sendMessage"))
    theirs = "\n".join(c.text for c in alert_calls(tg, ADMIN2, "sendMessage"))
    assert "0.6 → 0.7" not in mine and "something else" in mine
    assert in_order(theirs, "0.6 → 0.7", "something else")
    assert AlertRecord.select().where(AlertRecord.status == "pending").count() == 0  # delivered to both

    tg.api.clear()
    tg.parts.engine.emit(EventKind.ERROR, "next")
    await tg.drain_alerts()
    await restarted(tg).drain()
    assert [c.text.count("next") for c in alert_calls(tg, ADMIN, "sendMessage")] == [1]
    assert "0.6 → 0.7" not in "\n".join(c.text for c in tg.api.of("sendMessage"))  # never re-sent


async def test_an_order_sent_by_hand_reaches_its_admin_from_the_first_alert_they_did_not_cause(tg: Tg) -> None:
    order_event(tg, EventKind.ORDER_SENT, "SELL 1 QQQ 20250620C450 @ 61.10 (manual, lot #3)", actor=ADMIN)
    await tg.drain_alerts()
    order_event(tg, EventKind.ORDER_CANCELLED, "Order manual SELL 1 (0 filled) cancelled: outside trading hours")
    await tg.drain_alerts()
    (mine,) = tg.api.screen(ADMIN)
    assert "outside trading hours" in mine and "61.10" not in mine  # the reply told them it was sent
    (theirs,) = tg.api.screen(ADMIN2)
    assert in_order(theirs, "61.10", "outside trading hours")
    assert len(alert_calls(tg, ADMIN2, "editMessageText")) == 1


async def test_set_gives_the_acting_admin_only_the_reply_and_the_other_admin_the_alert(tg: Tg) -> None:
    await tg.enroll_and_login(ADMIN)
    await tg.drain_alerts()
    tg.api.clear()
    await tg.send(ADMIN, "/set delta 0.55")
    assert "0.55" in tg.api.last(ADMIN).text
    replies = len(tg.api.replies(ADMIN))
    await tg.drain_alerts()
    assert len(tg.api.replies(ADMIN)) == replies  # the reply, and nothing more
    assert any("0.55" in c.text for c in alert_calls(tg, ADMIN2, "sendMessage"))


# --- sound levels ---------------------------------------------------------------------------------


async def test_silent_kinds_never_ring_and_off_kinds_are_never_shown_in_an_orders_message(tg: Tg) -> None:
    now = tg.clock.now()
    outbox.set_alert_level("order_sent", "silent", "test", now)
    outbox.set_alert_level("order_partial", "off", "test", now)
    await live(tg, EventKind.ORDER_SENT, SENT)
    await live(tg, EventKind.ORDER_PARTIAL, "BUY 3 QQQM @ 190.10 (recycle, 3/7 filled)")
    order_event(tg, EventKind.ORDER_PARTIAL, "BUY 2 QQQM @ 190.10 (recycle, 5/7 filled)")
    outbox.set_alert_level("order_filled", "silent", "test", now)
    order_event(tg, EventKind.ORDER_FILLED, FILLED)
    outbox.set_alert_level("order_filled", "off", "test", now)  # turned off while it waits: not shown
    await tg.drain_alerts()
    await live(tg, EventKind.RECYCLE, RECYCLED)  # "on": it must ring, and an edit cannot
    for admin in (ADMIN, ADMIN2):
        sends = alert_calls(tg, admin, "sendMessage")
        assert [rings(c) for c in sends] == [False, True]  # the silent order never rang; the summary did
        assert SENT in sends[0].text and in_order(sends[1].text, SENT, RECYCLED)  # the story, once
        assert len(tg.api.screen(admin)) == 1
        shown = "\n".join(tg.api.screen(admin))
        assert "3/7" not in shown and "5/7" not in shown and FILLED not in shown


async def test_a_silent_fill_edits_a_ringing_order_message_without_a_new_ring(tg: Tg) -> None:
    outbox.set_alert_level("order_filled", "silent", "test", tg.clock.now())
    await live(tg, EventKind.ORDER_SENT, SENT)
    await live(tg, EventKind.ORDER_FILLED, FILLED)
    for admin in (ADMIN, ADMIN2):
        assert [rings(c) for c in alert_calls(tg, admin, "sendMessage")] == [True]
        assert len(alert_calls(tg, admin, "editMessageText")) == 1
        assert in_order(tg.api.screen(admin)[0], SENT, FILLED)


# --- when an edit is not possible -----------------------------------------------------------------


async def test_a_deleted_message_falls_back_to_a_new_one_and_the_order_goes_on_there(tg: Tg) -> None:
    await live(tg, EventKind.ORDER_SENT, SENT)
    tg.api.delete_by_user(ADMIN, alert_calls(tg, ADMIN, "sendMessage")[0].message_id or 0)
    await live(tg, EventKind.ORDER_FILLED, FILLED)
    await live(tg, EventKind.RECYCLE, RECYCLED)
    assert [c.ok for c in tg.api.of("editMessageText", ADMIN)] == [False]  # refused: a new one, then the result's
    (shown,) = tg.api.screen(ADMIN)
    assert in_order(shown, FILLED, RECYCLED) and SENT not in shown
    (theirs,) = tg.api.screen(ADMIN2)  # the other admin's message is untouched by it
    assert in_order(theirs, SENT, FILLED, RECYCLED)
    assert AlertRecord.select().where(AlertRecord.status == "pending").count() == 0


async def test_an_edit_telegram_refuses_goes_out_as_a_new_message(tg: Tg) -> None:
    await live(tg, EventKind.ORDER_SENT, SENT)
    tg.api.fail_methods = {"editMessageText"}
    tg.api.failures = [bad_request("message can't be edited")]
    await live(tg, EventKind.ORDER_FILLED, FILLED)
    sends = alert_calls(tg, ADMIN, "sendMessage")
    assert len(sends) == 2 and FILLED in sends[1].text and SENT not in sends[1].text
    assert sum(m.count(FILLED) for m in tg.api.screen(ADMIN)) == 1
    assert sum(m.count(FILLED) for m in tg.api.screen(ADMIN2)) == 1


async def test_after_a_restart_the_order_goes_on_in_a_new_message_without_repeating_itself(tg: Tg) -> None:
    await live(tg, EventKind.ORDER_SENT, SENT)
    order_event(tg, EventKind.ORDER_FILLED, FILLED)
    await restarted(tg).drain()
    for admin in (ADMIN, ADMIN2):
        screen = tg.api.screen(admin)
        assert len(screen) == 2 and SENT in screen[0] and FILLED in screen[1] and SENT not in screen[1]
        assert alert_calls(tg, admin, "editMessageText") == []


async def test_a_late_fill_gets_a_new_message_that_rings(tg: Tg) -> None:
    await live(tg, EventKind.ORDER_SENT, SENT, seconds=20 * 60)
    await live(tg, EventKind.ORDER_FILLED, FILLED)
    for admin in (ADMIN, ADMIN2):
        sends = alert_calls(tg, admin, "sendMessage")
        assert len(sends) == 2 and rings(sends[1]) and FILLED in sends[1].text
        assert alert_calls(tg, admin, "editMessageText") == []


async def test_a_late_fill_delivered_with_its_order_after_an_outage_still_gets_its_own_message(tg: Tg) -> None:
    order_event(tg, EventKind.ORDER_SENT, SENT)
    tg.clock.advance_to(tg.clock.now() + timedelta(minutes=20))
    order_event(tg, EventKind.ORDER_FILLED, FILLED)
    await tg.drain_alerts()  # Telegram was out meanwhile: both go now
    for admin in (ADMIN, ADMIN2):
        sends = alert_calls(tg, admin, "sendMessage")
        assert len(sends) == 2 and FILLED in sends[1].text and SENT not in sends[1].text and rings(sends[1])


async def test_edits_are_retried_on_transient_errors_and_not_repeated(tg: Tg) -> None:
    await live(tg, EventKind.ORDER_SENT, SENT)
    tg.api.fail_methods = {"editMessageText"}
    tg.api.failures = [httpx.Response(502, text="bad gateway"), httpx.ReadTimeout("timed out"),
                       Unanswered(httpx.ReadTimeout("timed out"))]  # the last one is carried out, unanswered
    order_event(tg, EventKind.ORDER_FILLED, FILLED)
    waits = await tg.drain_retrying()
    assert len(waits) == 3 and all(w > 0 for w in waits)
    for admin in (ADMIN, ADMIN2):
        assert len(alert_calls(tg, admin, "sendMessage")) == 1  # retried as an edit, never as a new message
        (shown,) = tg.api.screen(admin)
        assert shown.count(FILLED) == 1 and in_order(shown, SENT, FILLED)
    assert AlertRecord.select().where(AlertRecord.status == "pending").count() == 0


async def test_a_long_order_story_continues_in_a_new_message_within_telegrams_limit(tg: Tg) -> None:
    order_event(tg, EventKind.ORDER_SENT, SENT)
    await tg.drain_alerts()
    for i in range(12):
        await live(tg, EventKind.ORDER_PARTIAL, f"fill #{i:02d} " + "x" * 600)
    await live(tg, EventKind.ORDER_FILLED, FILLED)
    for admin in (ADMIN, ADMIN2):
        screen = tg.api.screen(admin)
        assert len(screen) >= 3 and all(len(m) <= JOIN_LIMIT < 4096 for m in screen)
        lines = [int(n) for m in screen for n in re.findall(r"fill #(\d\d)", m)]
        assert lines == list(range(12))  # every partial fill once, in order
        assert sum(m.count(FILLED) for m in screen) == 1
        assert all(len(c.params["text"]) <= 4096 for c in tg.api.of("editMessageText", admin))


# --- end to end with the engine's own alerts ------------------------------------------------------


async def test_a_real_recycle_through_the_engine_reaches_each_admin_as_one_message(tmp_path: Path) -> None:
    """Days of trading through the real engine with the sender running beside it, as `qqq-bot run`
    does: the recycle's order sent, fill and summary share the order's thread and show as one
    message per admin (sent once, then edited), as does every other order's story."""
    bars = bars_oc([(500, 500), (490, 490), (460, 458), (560, 560), (561, 561)])
    async for tg in open_tg(tmp_path, bars, settings={"max_positions": "1"}):
        tg.api.strict_edits = True
        sender = asyncio.create_task(tg.parts.notifier.run())
        try:
            await tg.world.run_days([b.day for b in bars])
            await tg.drain_alerts()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        recycle = AlertRecord.get(AlertRecord.kind == "recycle")
        assert recycle.thread is not None
        story = list(AlertRecord.select().where(AlertRecord.thread == recycle.thread).order_by(AlertRecord.id))
        kinds = [r.kind for r in story]
        assert kinds[0] == "order_sent" and "order_filled" in kinds and kinds[-1] == "recycle"
        for admin in (ADMIN, ADMIN2):
            holding = [m for m in tg.api.screen(admin) if any(r.text in m for r in story)]
            assert len(holding) == 1 and in_order(holding[0], *(r.text for r in story))
            sends = [c for c in alert_calls(tg, admin, "sendMessage") if any(r.text in c.text for r in story)]
            # not three messages within seconds: one, edited as the order goes on; or, when the result
            # came after the first message was out, the result rings as a new one and the first is deleted
            assert len(sends) in (1, 2), sends
            if len(sends) == 2:
                deleted = {c.params.get("message_id") for c in tg.api.of("deleteMessage", admin)}
                assert str(sends[0].message_id) in deleted, deleted
            threads = {r.thread for r in AlertRecord.select().where(AlertRecord.thread.is_null(False))}
            for thread in threads:
                texts = [r.text for r in AlertRecord.select().where(AlertRecord.thread == thread)]
                assert len([m for m in tg.api.screen(admin) if any(t in m for t in texts)]) == 1, thread
        assert AlertRecord.select().where(AlertRecord.status == "pending").count() == 0


async def test_the_sender_delivers_as_alerts_arrive_and_stops_when_cancelled_even_as_one_arrives(tg: Tg) -> None:
    sender = asyncio.create_task(tg.parts.notifier.run())
    tg.parts.engine.emit(EventKind.ERROR, "while running")
    for _ in range(100):
        await asyncio.sleep(0.01)
        if alert_calls(tg, ADMIN2, "sendMessage"):
            break
    assert any("while running" in c.text for c in alert_calls(tg, ADMIN2, "sendMessage"))
    tg.parts.engine.emit(EventKind.ERROR, "at shutdown")  # wakes the sender in the same turn as the cancel
    sender.cancel()
    done, _ = await asyncio.wait({sender}, timeout=5)
    assert sender in done and sender.cancelled()  # shutdown is not held up for ever
    await tg.drain_alerts()  # what `_post_stop` does: the last alert still goes out
    assert any("at shutdown" in c.text for c in alert_calls(tg, ADMIN2, "sendMessage"))


async def test_emit_stores_the_actor_and_the_order_of_an_event(tg: Tg) -> None:
    now: datetime = tg.clock.now()
    tg.parts.notifier.emit(Event(EventKind.PAUSED, "Paused (by admin 1002)", now, {"actor": ADMIN2}))
    tg.parts.notifier.emit(Event(EventKind.ORDER_FILLED, "filled", now, {"order_ref": REF}))
    tg.parts.notifier.emit(Event(EventKind.ERROR, "odd data", now, {"actor": "not an id", "order_ref": ""}))
    rows = list(AlertRecord.select().order_by(AlertRecord.id.desc()).limit(3))[::-1]
    assert [(r.actor, r.thread) for r in rows] == [(ADMIN2, None), (None, REF), (None, None)]
