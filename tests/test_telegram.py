"""The control plane end to end: real python-telegram-bot Application, real SQLite, the sim broker,
respx at the Bot API transport. Each test sends what a user would send and checks the Bot API
calls that come out."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from bot.engine.alerts import EventKind
from storage import outbox, settings_store
from storage.models import Admin, AlertRecord, Order, Setting, SettingChange
from tests.tg_harness import ADMIN, ADMIN2, STRANGER, Tg, bars_oc, open_tg


@pytest.fixture
async def tg(tmp_path: Path) -> AsyncIterator[Tg]:
    async for t in open_tg(tmp_path):
        yield t


# --- enrollment, login, sessions ------------------------------------------------------------------


async def test_enrollment_and_login_flow(tg: Tg) -> None:
    await tg.send(ADMIN, "/start")
    photo = tg.api.of("sendPhoto", ADMIN)[-1]
    assert photo.files["photo"].startswith(b"\x89PNG")
    assert photo.params["protect_content"] == "true"
    assert "otpauth://totp/" in photo.text and "/login CODE" in photo.text
    secret = tg.secret_from_enrollment(ADMIN)
    assert Admin.get(Admin.user_id == ADMIN).totp_active is False
    assert secret not in (Admin.get(Admin.user_id == ADMIN).totp_secret_enc or "")

    await tg.send(ADMIN, "/login 000000" if tg.code(secret) != "000000" else "/login 111111")
    assert "❌" in tg.api.last(ADMIN).text
    assert Admin.get(Admin.user_id == ADMIN).totp_active is False

    await tg.send(ADMIN, f"/login {tg.code(secret)}")
    assert "enrollment complete" in tg.api.last(ADMIN).text and "Session open until" in tg.api.last(ADMIN).text
    deleted = {int(c.params["message_id"]) for c in tg.api.of("deleteMessage", ADMIN)}
    assert photo.message_id in deleted  # the QR message is deleted once the secret is active
    assert Admin.get(Admin.user_id == ADMIN).totp_active is True
    # the /login messages themselves are deleted too (the code should not stay in the chat)
    assert tg.message_id in deleted

    # a second /start does not hand out a new secret
    tg.api.clear()
    await tg.send(ADMIN, "/start")
    assert tg.api.of("sendPhoto") == [] and "/status" in tg.api.last(ADMIN).text


async def test_a_second_start_before_login_replaces_and_deletes_the_first_qr(tg: Tg) -> None:
    await tg.send(ADMIN, "/start")
    first = tg.api.of("sendPhoto", ADMIN)[-1]
    old_secret = tg.secret_from_enrollment(ADMIN)
    await tg.send(ADMIN, "/start")
    assert first.message_id in {int(c.params["message_id"]) for c in tg.api.of("deleteMessage", ADMIN)}
    new_secret = tg.secret_from_enrollment(ADMIN)
    assert new_secret != old_secret
    await tg.send(ADMIN, f"/login {tg.code(old_secret)}")
    assert "❌" in tg.api.last(ADMIN).text  # the replaced secret is worthless
    await tg.send(ADMIN, f"/login {tg.code(new_secret)}")
    assert "Session open" in tg.api.last(ADMIN).text


async def test_replayed_code_is_refused(tg: Tg) -> None:
    secret = await tg.enroll_and_login()
    used = tg.code(secret)
    await tg.send(ADMIN, "/logout")
    assert tg.api.last(ADMIN).text == "Session closed."
    await tg.send(ADMIN, f"/login {used}")
    assert "already used" in tg.api.last(ADMIN).text
    await tg.send(ADMIN, "/resume")
    assert "open a session first" in tg.api.last(ADMIN).text
    tg.clock.advance_to(tg.clock.now() + timedelta(seconds=30))
    await tg.send(ADMIN, f"/login {tg.code(secret)}")
    opened, resumed = tg.api.replies(ADMIN)[-2:]  # and the refused /resume runs now
    assert "Session open" in opened.text and resumed.text == "Already running."


async def test_five_wrong_codes_lock_out_and_alert(tg: Tg) -> None:
    secret = await tg.enroll_and_login()
    await tg.send(ADMIN, "/logout")
    good = tg.code(secret, 40)
    wrong = "123456" if good != "123456" and tg.code(secret) != "123456" else "654321"
    for _ in range(5):
        tg.clock.advance_to(tg.clock.now() + timedelta(seconds=2))
        await tg.send(ADMIN, f"/login {wrong}")
    assert "locked" in tg.api.last(ADMIN).text.lower()
    tg.clock.advance_to(tg.clock.now() + timedelta(seconds=30))
    await tg.send(ADMIN, f"/login {good}")
    assert "locked" in tg.api.last(ADMIN).text.lower()
    assert any("locked out" in r.text for r in AlertRecord.select().where(AlertRecord.kind == "unauthorized"))
    tg.clock.advance_to(tg.clock.now() + timedelta(minutes=16))
    await tg.send(ADMIN, f"/login {tg.code(secret)}")
    assert "Session open" in tg.api.last(ADMIN).text


async def test_session_expires(tg: Tg) -> None:
    await tg.enroll_and_login()
    tg.clock.advance_to(tg.clock.now() + timedelta(minutes=31))
    await tg.send(ADMIN, "/set delta 0.7")
    assert "open a session first" in tg.api.last(ADMIN).text
    assert tg.parts.engine.settings.current.target_delta == Decimal("0.6")


# --- who gets an answer ---------------------------------------------------------------------------


async def test_a_non_admin_gets_nothing_and_admins_hear_once_a_day(tg: Tg) -> None:
    tg.api.clear()  # start-up's getMe and setMyCommands
    for text in ("/start", "/status", "/positions", "/set delta 0.9", "hello"):
        await tg.send(STRANGER, text)
    await tg.tap(STRANGER, "s:whatever")
    assert [c for c in tg.api.calls if c.method not in ("answerCallbackQuery",)] == []
    assert tg.api.replies(STRANGER) == []
    alerts = list(AlertRecord.select().where(AlertRecord.kind == "unauthorized"))
    assert len(alerts) == 1 and str(STRANGER) in alerts[0].text
    await tg.drain_alerts()
    assert {c.chat_id for c in tg.api.of("sendMessage")} == {ADMIN, ADMIN2}
    assert Admin.select().where(Admin.user_id == STRANGER).count() == 0


async def test_a_group_chat_gets_no_data(tg: Tg) -> None:
    await tg.enroll_and_login()
    tg.api.clear()
    for text in ("/status", "/positions", "/account", "/start"):
        await tg.send(ADMIN, text, chat_type="group", chat_id=-100)
    texts = [c.text for c in tg.api.replies(-100)]
    assert texts and all(t == "I only talk in a private chat with an admin." for t in texts)
    assert tg.api.of("sendPhoto") == []
    # someone else in the group claiming nothing: ignored entirely
    await tg.send(STRANGER, "/status", chat_type="group", chat_id=-100)
    assert len(tg.api.replies(-100)) == len(texts)


async def test_changing_commands_need_a_session(tg: Tg) -> None:
    await tg.send(ADMIN, "/start")  # enrolled, not logged in
    for text in ("/set delta 0.7", "/resume", "/enter"):
        tg.api.clear()
        await tg.send(ADMIN, text)
        assert "open a session first" in tg.api.last(ADMIN).text
    assert Setting.select().count() == 0 and SettingChange.select().count() == 0
    # pausing only lowers the risk: it needs no session (tests/test_phone.py)
    # read-only commands only need the whitelist
    await tg.send(ADMIN, "/status")
    assert "<b>Status</b>" in tg.api.last(ADMIN).text


# --- every command on the sim broker --------------------------------------------------------------


async def test_read_only_commands(tmp_path: Path) -> None:
    bars = bars_oc([(500, 500), (490, 489), (575, 575), (576, 576)])
    async for tg in open_tg(tmp_path, bars):
        await tg.world.run_days([b.day for b in bars[:2]])
        await tg.send(ADMIN, "/start")
        for cmd in ("/help", "/status", "/positions", "/account", "/trades", "/trades 3", "/pnl", "/check"):
            tg.api.clear()
            await tg.send(ADMIN, cmd)
            out = tg.api.replies(ADMIN)
            assert out, cmd
            for c in out:
                assert c.params.get("parse_mode") in (None, "HTML")
                assert len(c.text) <= 4096
        tg.api.clear()
        await tg.send(ADMIN, "/status")
        text = tg.api.last(ADMIN).text
        assert "[SIM]" in text and "sim" in text and "running" in text and "QQQ:" in text
        assert "Next tick:" in text and "Lots: 1 / 3" in text
        await tg.send(ADMIN, "/positions")
        text = tg.api.last(ADMIN).text
        assert "#1 QQQ " in text and "target +50 %" in text and "force exit in 270 d" in text
        assert "<b>Bonds</b>" in text and "<b>Cash</b>" in text  # the sim account is mixed
        await tg.send(ADMIN, "/account")
        text = tg.api.last(ADMIN).text
        assert "Net liquidation" in text and "Recycling pool" in text
        await tg.send(ADMIN, "/trades")
        text = tg.api.last(ADMIN).text
        assert "<b>BUY</b> 1 QQQ" in text and "(entry)" in text
        await tg.send(ADMIN, "/trades 0")
        assert "Usage" in tg.api.last(ADMIN).text
        await tg.send(ADMIN, "/trades lots")
        assert "Usage" in tg.api.last(ADMIN).text
        # a profit is taken and recycled; with one realized result /pnl says so instead of a chart
        await tg.world.run_days([b.day for b in bars[2:]])
        tg.api.clear()
        await tg.send(ADMIN, "/pnl")
        assert not tg.api.of("sendPhoto", ADMIN)
        text = tg.api.last(ADMIN).text
        assert "Realized" in text and "+" in text and "Only 1 realized result, so no chart yet" in text
        tg.api.clear()
        await tg.send(ADMIN, "/check")
        text = tg.api.last(ADMIN).text
        assert "nothing was sent" in text
        await tg.send(ADMIN, "/nonsense")
        assert "Unknown command" in tg.api.last(ADMIN).text


async def test_set_pause_resume_with_a_session(tg: Tg) -> None:
    await tg.enroll_and_login()
    await tg.send(ADMIN, "/set delta 0.7")
    assert "0.6</code> → <code>0.7" in tg.api.last(ADMIN).text
    assert tg.parts.engine.settings.current.target_delta == Decimal("0.6")  # a deeper call: confirmed first
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("✅ Confirm"))
    assert tg.parts.engine.settings.current.target_delta == Decimal("0.7")
    change = SettingChange.select().order_by(SettingChange.id.desc()).get()
    assert (change.key, change.old_value, change.new_value) == ("target_delta", "0.6", "0.7")
    assert change.who.startswith(f"telegram:{ADMIN}")
    await tg.send(ADMIN, "/set entry_drop 1.5%")
    assert tg.parts.engine.settings.current.entry_drop_pct == Decimal("1.5")
    await tg.send(ADMIN, "/pause")
    assert "Paused" in tg.api.last(ADMIN).text and tg.parts.engine.settings.current.paused
    await tg.send(ADMIN, "/pause")
    assert tg.api.last(ADMIN).text == "Already paused."
    await tg.send(ADMIN, "/resume")
    assert "Resumed" in tg.api.last(ADMIN).text and not tg.parts.engine.settings.current.paused
    kinds = [r.kind for r in AlertRecord.select().order_by(AlertRecord.id)]
    assert kinds.count("paused") == 1 and kinds.count("resumed") == 1 and "settings_changed" in kinds


@pytest.mark.parametrize(("text", "expect"), [
    ("/set colour blue", "Unknown setting"),
    ("/set delta 1.5", "0.05–0.95"),
    ("/set delta abc", "not a number"),
    ("/set max_premium 5000 EUR", "USD"),
    ("/set entry_drop 50", "%"),
    ("/set delta", "Usage"),
])
async def test_set_with_bad_values_stores_nothing(tg: Tg, text: str, expect: str) -> None:
    await tg.enroll_and_login()
    before = settings_store.load_raw()
    await tg.send(ADMIN, text)
    reply = tg.api.last(ADMIN).text
    assert expect.lower() in reply.lower(), reply
    assert settings_store.load_raw() == before
    assert SettingChange.select().count() == 0


# --- the settings keyboard -------------------------------------------------------------------------


async def test_settings_keyboard_end_to_end_and_the_next_tick_uses_it(tmp_path: Path) -> None:
    bars = bars_oc([(500, 500), (496, 496)])  # −0.8 %: no entry at the default 1 % drop
    async for tg in open_tg(tmp_path, bars):
        await tg.enroll_and_login()
        await tg.send(ADMIN, "/settings")
        menu = tg.api.last(ADMIN)
        assert menu.button("📈 Entry") and menu.button("🎯 Exits")
        datas = [b["callback_data"] for row in menu.keyboard for b in row]
        assert datas and all(len(d.encode()) <= 64 for d in datas)
        await tg.tap(ADMIN, menu.button("📈 Entry"))
        await tg.tap(ADMIN, tg.api.last(ADMIN).button("Entry drop: 1 %"))
        edit = tg.api.last(ADMIN)
        assert edit.method == "editMessageText" and "Now: <code>1</code> %" in edit.text
        await tg.tap(ADMIN, edit.button("0.5 %"))
        confirm = tg.api.last(ADMIN)
        assert "Entry drop: <code>1</code> % → <code>0.5</code> %" in confirm.text
        assert tg.parts.engine.settings.current.entry_drop_pct == Decimal(1)  # not before confirming
        await tg.tap(ADMIN, confirm.button("✅ Confirm"))
        assert "Saved" in tg.api.last(ADMIN).text
        assert settings_store.load_raw()["entry_drop_pct"] == "0.5"
        assert SettingChange.get(SettingChange.key == "entry_drop_pct").who.startswith(f"telegram:{ADMIN}")
        await tg.world.run_days([b.day for b in bars])
        assert Order.select().where(Order.purpose == "entry").count() == 1


async def test_typed_value_with_a_mistake_then_confirm(tg: Tg) -> None:
    await tg.enroll_and_login()
    await tg.send(ADMIN, "/settings")
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("📈 Entry"))
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("Delta of the call to buy: 0.6"))
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("✏️ Type a value"))
    assert "Send the new value for <b>Delta of the call to buy</b>" in tg.api.last(ADMIN).text
    await tg.send(ADMIN, "abc")
    assert "not a number" in tg.api.last(ADMIN).text.lower()
    await tg.send(ADMIN, "0.99")
    assert "0.05–0.95" in tg.api.last(ADMIN).text
    await tg.send(ADMIN, "0,65")  # a decimal comma
    confirm = tg.api.last(ADMIN)
    assert "<code>0.6</code> → <code>0.65</code>" in confirm.text
    await tg.tap(ADMIN, confirm.button("✅ Confirm"))
    assert tg.parts.engine.settings.current.target_delta == Decimal("0.65")


async def test_forged_stale_and_foreign_buttons_change_nothing(tg: Tg) -> None:
    await tg.enroll_and_login(ADMIN)
    await tg.enroll_and_login(ADMIN2)
    await tg.send(ADMIN, "/settings")
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("📈 Entry"))
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("Delta of the call to buy"))
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("0.7"))
    confirm = tg.api.last(ADMIN).button("✅ Confirm")

    await tg.tap(ADMIN, "s:forgedtoken")
    await tg.tap(ADMIN, "anything-else")
    await tg.tap(ADMIN2, confirm)  # another admin's button
    answers = [c.params.get("text", "") for c in tg.api.of("answerCallbackQuery")]
    assert "expired" in answers[-3] and "not valid" in answers[-2] and "another admin" in answers[-1]
    assert tg.parts.engine.settings.current.target_delta == Decimal("0.6")

    # the value changed meanwhile (through /set): the old confirm is refused
    await tg.send(ADMIN2, "/set delta 0.5")  # lower: no confirm needed
    await tg.tap(ADMIN, confirm)
    assert "Not changed" in tg.api.last(ADMIN).text
    assert tg.parts.engine.settings.current.target_delta == Decimal("0.5")

    # an expired button
    await tg.send(ADMIN, "/settings")
    button = tg.api.last(ADMIN).button("📈 Entry")
    tg.clock.advance_to(tg.clock.now() + timedelta(minutes=11))
    await tg.tap(ADMIN, button)
    assert "expired" in tg.api.of("answerCallbackQuery")[-1].params["text"]


async def test_alert_levels_from_the_keyboard(tg: Tg) -> None:
    await tg.enroll_and_login()
    await tg.send(ADMIN, "/settings")
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("🔔 Alerts"))
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("⚙️ System"))
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("🔔 Setting changed"))
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("🚫 Off"))
    assert outbox.alert_level("settings_changed") == "off"
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("🔔 Paused"))
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("🔕 Silent"))
    await tg.drain_alerts()
    tg.api.clear()
    await tg.send(ADMIN, "/set delta 0.7")
    await tg.send(ADMIN, "/pause")
    await tg.drain_alerts()
    alerts = [c for c in tg.api.of("sendMessage") if c.text.startswith("[SIM]")]
    assert [c.chat_id for c in alerts] == [ADMIN2]  # only the pause, to the other admin (ADMIN has the reply)
    assert all("Paused" in c.text and c.params["disable_notification"] == "true" for c in alerts)
    assert SettingChange.get(SettingChange.key == "alert.settings_changed").new_value == "off"


async def test_pnl_chart_once_there_are_three_results(tmp_path: Path) -> None:
    """Three lots bought on dips and sold at a +5 % target: /pnl sends the chart of realized P&L."""
    pairs = [(500, 500), (490, 489), (500, 501), (490, 489), (500, 501), (490, 489), (500, 501)]
    async for tg in open_tg(tmp_path, bars_oc(pairs), settings={"tp_tiers": "0:5", "recycle_enabled": "off"}):
        await tg.world.run_days([s.day for s in tg.world.path.sessions])
        tg.api.clear()
        await tg.send(ADMIN, "/pnl")
        photo = tg.api.of("sendPhoto", ADMIN)[-1]
        assert photo.files["photo"].startswith(b"\x89PNG")
        assert "Realized" in photo.text and "3/3 lots won" in photo.text


# --- push alerts ------------------------------------------------------------------------------------


async def test_alerts_on_fill_roll_and_recycle(tmp_path: Path) -> None:
    bars = bars_oc([(500, 500), (490, 490), (460, 458), (560, 560), (561, 561)])
    async for tg in open_tg(tmp_path, bars, settings={"max_positions": "1"}):
        await tg.world.run_days([b.day for b in bars])
        await tg.drain_alerts()
        sent = tg.api.of("sendMessage")
        for admin in (ADMIN, ADMIN2):
            text = "\n".join(c.text for c in sent if c.chat_id == admin)
            assert "[SIM] <b>✅ Filled</b>" in text
            assert "Roll" in text
            assert "Recycling" in text
        assert all(len(c.text) <= 4096 for c in sent)
        assert AlertRecord.select().where(AlertRecord.status == "pending").count() == 0


async def test_alerts_are_retried_in_order_after_failures(tg: Tg) -> None:
    tg.api.failures = [httpx.Response(502, text="bad gateway"),
                       httpx.Response(429, json={"ok": False, "error_code": 429, "description": "Too Many Requests",
                                                 "parameters": {"retry_after": 1}})]
    tg.parts.engine.emit(EventKind.ERROR, "first")
    tg.parts.engine.emit(EventKind.ERROR, "second")
    waits = []
    for _ in range(5):
        wait = await tg.parts.notifier.drain()
        if wait == 0:
            break
        waits.append(wait)
    assert waits and all(w > 0 for w in waits)
    delivered = [c.text for c in tg.api.of("sendMessage")]
    assert delivered[-2:] == [delivered[-2], delivered[-1]]
    ok = [t for t in delivered if "first" in t]
    assert ok and "second" in ok[-1] and ok[-1].index("first") < ok[-1].index("second")
    assert AlertRecord.select().where(AlertRecord.status == "pending").count() == 0


async def test_a_hung_broker_does_not_delay_status(tg: Tg) -> None:
    never = asyncio.Event()

    async def hang(*args: object, **kwargs: object) -> None:
        await never.wait()

    session = tg.world.cal.session(tg.world.path.first_day)
    assert session is not None
    tg.clock.advance_to(session.open + timedelta(minutes=20))
    await tg.send(ADMIN, "/status")  # the broker answers: its answer is remembered
    assert "QQQ: <code>" in tg.api.last(ADMIN).text
    real_quote = tg.world.broker.quote
    tg.world.broker.quote = hang  # type: ignore[method-assign]
    tg.world.broker.option_quotes = hang  # type: ignore[method-assign]
    try:
        tick = asyncio.create_task(tg.parts.engine.tick())  # stuck on the quote
        await asyncio.sleep(0)
        await asyncio.wait_for(tg.send(ADMIN, "/status"), timeout=5)  # a guard against hanging, not a timing
        text = tg.api.last(ADMIN).text
        assert "<b>Status</b>" in text and "QQQ: <code>" in text
        assert "QQQ quote: the broker is slow; showing its answer from" in text
        # with nothing remembered (a fresh start), the reply says so instead of waiting for ever
        cache = tg.parts.deps.service.cache
        cache._last.clear()
        cache.first_budget_s = 0.2
        await asyncio.wait_for(tg.send(ADMIN, "/status"), timeout=5)
        assert "QQQ quote unavailable: the broker is slow (it has not answered yet)" in tg.api.last(ADMIN).text
        assert not tick.done()
        tick.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tick
    finally:
        never.set()
        tg.world.broker.quote = real_quote  # type: ignore[method-assign]


async def test_commands_are_registered_and_settings_keyboard_json(tg: Tg) -> None:
    calls = tg.api.of("setMyCommands")
    assert calls
    names = [c["command"] for c in json.loads(calls[-1].params["commands"])]
    # one table builds the menu, /help and the handlers: every command in it is in all three
    from handlers.commands import COMMANDS

    assert names == [c.name for c in COMMANDS]
    assert {"start", "help", "login", "logout", "status", "positions", "account", "trades", "pnl", "settings",
            "set", "pause", "resume", "check"} <= set(names)
    await tg.send(ADMIN, "/help")
    help_text = tg.api.last(ADMIN).text
    assert all(re.search(rf"/{n}\b", help_text) for n in names)
    for name in names:
        tg.api.clear()
        await tg.send(ADMIN, f"/{name}")
        assert "Unknown command" not in "\n".join(c.text for c in tg.api.of("sendMessage", ADMIN)), name


async def test_connection_alerts_are_quiet_in_the_gateways_restart_window(tg: Tg) -> None:
    from datetime import datetime

    from bot.engine.alerts import Event
    from strategy.calendar import NY

    n = tg.parts.notifier
    n.emit(Event(EventKind.DISCONNECT, "nightly restart", datetime(2024, 3, 4, 23, 59, tzinfo=NY)))
    n.emit(Event(EventKind.RECONNECT, "back", datetime(2024, 3, 5, 0, 5, tzinfo=NY)))
    n.emit(Event(EventKind.DISCONNECT, "in the session", datetime(2024, 3, 5, 11, 0, tzinfo=NY)))
    n.emit(Event(EventKind.ERROR, "an error at night", datetime(2024, 3, 5, 0, 6, tzinfo=NY)))
    tg.api.clear()
    await tg.drain_alerts()
    sent = tg.api.of("sendMessage", ADMIN)
    quiet = [c for c in sent if c.params.get("disable_notification") == "true"]
    loud = [c for c in sent if c.params.get("disable_notification") != "true"]
    assert len(quiet) == 1 and "nightly restart" in quiet[0].text and "back" in quiet[0].text
    assert "in the session" not in quiet[0].text and "error at night" not in quiet[0].text
    loud_text = "\n".join(c.text for c in loud)
    assert "in the session" in loud_text and "error at night" in loud_text  # errors always ring
