"""Issue 20, "phone polish": what a person on a small screen reads, through the real Application on
the test Bot API (respx at the transport). Each test sends what a user would send and reads the
exact reply."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from broker.clock import SimClock
from broker.sim import SimBroker, SimFillModel
from handlers.app import summary_job
from storage import ledger
from storage.models import AuditEntry, Fill, Order, SettingChange
from strategy import number_style as num
from strategy.calendar import NY, nyse
from tests.tg_harness import ADMIN, ADMIN2, Call, Tg, bars_oc, open_tg

# two dips whose entries pick the same strike: the second lot holds the first one's contract
SAME_STRIKE_TWICE = [(500, 500), (490, 495), (489.5, 489), (489, 489)]


def section(text: str, title: str) -> list[str]:
    """The lines of one section of a reply (after its bold title, up to the blank line)."""
    lines = text.split("\n")
    start = lines.index(f"<b>{title}</b>") + 1
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


@pytest.fixture
async def two_lots(tmp_path: Path) -> AsyncIterator[Tg]:
    async for t in open_tg(tmp_path, bars_oc(SAME_STRIKE_TWICE), settings={"recycle_enabled": "off"}):
        await t.world.run_days([s.day for s in t.world.path.sessions[:3]])
        yield t


# --- 1. no phantom holding -----------------------------------------------------------------------------


async def test_two_lots_of_one_contract_are_not_shown_again_as_another_holding(two_lots: Tg) -> None:
    tg = two_lots
    first, second = ledger.open_lots()
    assert first.contract == second.contract  # the situation of the issue
    await tg.send(ADMIN, "/start")
    await tg.send(ADMIN, "/positions")
    text = tg.api.last(ADMIN).text
    assert section(text, "Options") == ["SPY 2026-01-16 450P: <code>1</code> · 1,240.00 USD"]
    assert "besides the bot" not in text


# --- 3. the simulated market goes on across restarts -----------------------------------------------------


def _qqq_line(text: str) -> str:
    return next(line for line in text.split("\n") if line.startswith("QQQ:"))


async def test_the_simulated_market_goes_on_across_a_restart(tmp_path: Path) -> None:
    """`qqq-bot run` on the sim broker: a close read before a restart is the previous close after it,
    though the second process starts on another day (the market was built from the day it starts)."""
    cal = nyse()
    day = date(2026, 3, 10)
    after_close = datetime(2026, 3, 10, 17, 0, tzinfo=NY)
    async for tg in open_tg(tmp_path, run_clock=SimClock(after_close)):
        await tg.send(ADMIN, "/start")
        await tg.send(ADMIN, "/status")
        first = _qqq_line(tg.api.last(ADMIN).text)
    close = first.split("<code>")[1].split("</code>")[0]
    next_morning = cal.next_session(day)
    assert next_morning is not None
    async for tg in open_tg(tmp_path, run_clock=SimClock(next_morning.open - timedelta(hours=2))):
        await tg.send(ADMIN, "/status")
        second = _qqq_line(tg.api.last(ADMIN).text)
    assert second == f"QQQ: <code>{close}</code> ⚪ 0.00 % vs prev close {close}"
    # three months later, the same day's close is still what it was
    async for tg in open_tg(tmp_path, run_clock=SimClock(datetime(2026, 6, 10, 12, 0, tzinfo=NY))):
        broker = tg.parts.engine.broker
        assert isinstance(broker, SimBroker)
        assert f"{broker.path.close_of(day):.2f}" == close


# --- 4. a /set that raises the money at risk is confirmed, with the money -----------------------------------


async def test_set_size_asks_to_confirm_with_the_money_at_risk(two_lots: Tg) -> None:
    tg = two_lots
    await tg.enroll_and_login()
    net = (await tg.world.broker.account_summary()).net_liquidation
    one = ledger.open_lots()[-1].avg_price * 100  # the last lot's contract
    fits = int(min(net / 10, Decimal(12_000)) // one)  # 10 % of net liquidation, within Max premium
    assert fits == 2
    await tg.send(ADMIN, "/set size 10%")
    ask = tg.api.last(ADMIN)
    assert ask.text == (
        "Change Position size: <code>1</code> contract → <code>10%</code> of net liquidation?\n"
        f"💵 A new lot: about {num.usd(one)} → <b>about {num.usd(2 * one)}</b>\n"
        f"💵 With 3 lots: about {num.usd(3 * one)} → <b>about {num.usd(6 * one)}</b>\n"
        f"<i>That size is {num.usd(net / 10)}; Max premium caps a lot at 12,000.00 USD.</i>\n"
        f"<i>At the last lot's price of one contract, {num.usd(one)}.</i>")
    assert [[b["text"] for b in row] for row in ask.keyboard] == [["✅ Confirm", "✖ Cancel"], ["🧪 Compare"]]
    assert tg.parts.engine.settings.current.position_size.contracts == 1  # asking stored nothing
    await tg.tap(ADMIN, ask.button("✅ Confirm"))
    assert tg.api.last(ADMIN).text == ("✅ Saved: Position size: <code>1</code> contract → <code>10%</code> of net "
                                       "liquidation\nTakes effect at the next tick.")
    assert tg.parts.engine.settings.current.position_size.pct == 10


async def test_a_change_that_lowers_the_risk_stays_one_step(two_lots: Tg) -> None:
    tg = two_lots
    await tg.enroll_and_login()
    await tg.send(ADMIN, "/set max_positions 2")
    assert tg.api.last(ADMIN).text == "✅ Max lots: <code>3</code> lots → <code>2</code> lots\n" \
                                      "Takes effect at the next tick."
    await tg.send(ADMIN, "/set max_positions 4")
    ask = tg.api.last(ADMIN)
    one = ledger.open_lots()[-1].avg_price * 100
    assert ask.text.split("\n")[:3] == [
        "Change Max lots: <code>2</code> lots → <code>4</code> lots?",
        f"💵 A new lot: about {num.usd(one)}, as now",
        f"💵 With 2 → 4 lots: about {num.usd(2 * one)} → <b>about {num.usd(4 * one)}</b>"]
    assert tg.parts.engine.settings.current.max_positions == 2


# --- 8. alerts people can act on -----------------------------------------------------------------------------


@pytest.fixture
async def slow_fills(tmp_path: Path) -> AsyncIterator[Tg]:
    """Limits at the mid do not fill at once (as at IB): the order's alert goes out before its fill."""
    async for t in open_tg(tmp_path, bars_oc(SAME_STRIKE_TWICE), settings={"recycle_enabled": "off"},
                           fill=SimFillModel(p_at_mid=0.0)):
        await t.drain_alerts()
        t.api.clear()
        t.api.messages.clear()  # what start-up said is not what these tests read
        yield t


async def ticks_with_the_sender_running(tg: Tg, day_index: int, ticks: int) -> None:
    """A session's first ticks with the alert sender running beside them, as `qqq-bot run` does."""
    w = tg.world
    session = w.cal.session(w.path.sessions[day_index].day)
    assert session is not None
    sender = asyncio.create_task(tg.parts.notifier.run())
    try:
        for t in w.cal.tick_times(session, 5, 5)[:ticks]:
            w.clock.advance_to(t)
            await w.engine.tick()
            await asyncio.sleep(0.05)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    await tg.drain_alerts()


def rings(call: Call) -> bool:
    return call.params.get("disable_notification") != "true"


async def test_an_automatic_entry_rings_when_it_fills_names_its_lot_and_offers_buttons(slow_fills: Tg) -> None:
    tg = slow_fills
    await ticks_with_the_sender_running(tg, 1, 3)
    (lot,) = ledger.open_lots()
    fill = Fill.get(Fill.lot == lot.id)
    order = Order.get(Order.lot == lot.id)
    key = lot.contract.key
    sent = [c for c in tg.api.of("sendMessage", ADMIN)]
    assert [rings(c) for c in sent] == [True, True]  # the order when sent, and again when it filled
    assert [c.method for c in tg.api.replies(ADMIN)] == ["sendMessage", "editMessageText", "sendMessage"]
    assert [int(c.params["message_id"]) for c in tg.api.of("deleteMessage", ADMIN)] == [sent[0].message_id]
    (shown,) = tg.api.screen(ADMIN)  # one message, the order's whole story
    paid = num.usd(fill.price * 100)
    blocks = shown.split("\n\n")
    limit = ledger.request_from_json(order.request).limit  # as first sent, before any reprice
    assert blocks[0] == (f"[SIM] <b>📤 Order sent</b>\nBUY 1 {key} @ {limit} (entry, delta "
                         f"{json.loads(order.context)['deltas'][key]:.2f}): {num.usd(limit * 100)}")
    assert blocks[1] == (f"[SIM] <b>✅ Filled</b>\nBUY 1 {key} @ {fill.price}: paid {paid} + "
                         f"{num.usd(fill.commission)} commission (entry, 1/1 filled) · lot #{lot.id}")
    assert blocks[2].startswith(f"[SIM] <b>🟢 Entry</b>\nLot #{lot.id}: bought 1 {key} for "
                                f"{num.usd(fill.price * 100 + fill.commission)} with commissions (QQQ ")
    last = tg.api.last(ADMIN)
    assert [[b["text"] for b in row] for row in last.keyboard] == [["📋 Positions", f"Sell #{lot.id}…"]]
    # the buttons: the sale's confirm as a new message (a session is needed to confirm it), the list
    await tg.send(ADMIN, "/start")
    await tg.tap(ADMIN, last.button("Sell #"), message_id=last.message_id or 0)
    ask = tg.api.last(ADMIN)
    assert ask.method == "sendMessage" and ask.text.startswith(f"<b>Sell lot #{lot.id} now?</b>")
    await tg.tap(ADMIN, last.button("📋 Positions"), message_id=last.message_id or 0)
    assert tg.api.last(ADMIN).text.startswith("<b>Positions</b> [SIM]\n\n<b>#1 ")


async def test_a_sale_by_hand_reaches_the_other_admin_by_name_with_the_commission_paid(two_lots: Tg) -> None:
    tg = two_lots
    session = tg.world.cal.session(tg.world.path.sessions[3].day)
    assert session is not None
    tg.clock.advance_to(session.open + timedelta(minutes=30))
    await tg.enroll_and_login()
    first = ledger.open_lots()[0]
    await tg.drain_alerts()
    tg.api.clear()
    tg.api.messages.clear()
    await tg.send(ADMIN, f"/sell {first.id}")
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("✅ Sell"))
    await tg.drain_alerts()
    seen = "\n\n".join(tg.api.screen(ADMIN2))
    assert f"Manual sale of lot #{first.id} {first.contract.key} × 1 sent" in seen
    assert "(by u1001)" in seen and "telegram:" not in seen
    sale = Fill.get((Fill.lot == first.id) & (Fill.side == "SELL"))
    assert (f"SELL 1 {first.contract.key} @ {sale.price}: received {num.usd(sale.price * 100)}, less "
            f"{num.usd(sale.commission)} commission (manual sale, 1/1 filled) · lot #{first.id}") in seen


# --- 9. the daily summary, /daily -----------------------------------------------------------------------------


async def test_the_daily_summary_is_lines_with_buttons(two_lots: Tg) -> None:
    tg = two_lots
    day = tg.world.path.sessions[2].day
    await tg.drain_alerts()
    tg.api.clear()
    tg.clock.advance_to(tg.clock.now() + timedelta(minutes=10))  # 16:10 ET
    await summary_job(SimpleNamespace(application=tg.parts.app, job=None))  # type: ignore[arg-type]
    await tg.drain_alerts()
    summary = tg.api.last(ADMIN)
    close, prev = Decimal(str(SAME_STRIKE_TWICE[2][1])), Decimal(str(SAME_STRIKE_TWICE[1][1]))
    net = (await tg.world.broker.account_summary()).net_liquidation
    positions = await tg.parts.deps.service.positions()
    _, last = tg.parts.engine.last_tick()
    assert summary.text.split("\n") == [
        "[SIM] <b>📊 Daily summary</b>",
        f"{day:%a %Y-%m-%d} · QQQ closed at {close:.2f}, {num.percent((close / prev - 1) * 100)} on the day",
        "Realized today: 0.00 USD",
        "Fills today: 1 fill",
        f"Lots: 2 of 3 open, unrealized {num.usd(positions.lots_pnl, sign=True)}",
        f"Net liquidation: {num.usd(net)}",
        "Recycling pool: 0.00 USD of profits; QQQM is bought from 500.00 USD",
        "Automatic orders: running",
        f"Last tick (15:55 ET): {num.restyle(last or '')}",
    ]
    assert "−1.21 % on the day" in summary.text  # 489 after 495
    assert [[b["text"] for b in row] for row in summary.keyboard] == [["📋 Positions", "🧭 Why"]]
    await tg.send(ADMIN, "/start")
    await tg.tap(ADMIN, summary.button("🧭 Why"), message_id=summary.message_id or 0)
    assert tg.api.last(ADMIN).text.startswith(f"<b>Decisions of {day:%a %Y-%m-%d}</b> [SIM]\n")


async def test_daily_lists_trading_days_only(two_lots: Tg) -> None:
    tg = two_lots  # Wed 2024-03-06: the week before holds a weekend
    await tg.send(ADMIN, "/start")
    await tg.send(ADMIN, "/daily 4")
    lines = tg.api.last(ADMIN).text.split("\n")
    assert lines[2:] == ["Wed 2024-03-06: ⚪ <code>0.00 USD</code> (nothing closed)",
                         "Tue 2024-03-05: ⚪ <code>0.00 USD</code> (nothing closed)",
                         "Mon 2024-03-04: ⚪ <code>0.00 USD</code> (nothing closed)",
                         "Fri 2024-03-01: ⚪ <code>0.00 USD</code> (nothing closed)",
                         "Total: ⚪ <code>0.00 USD</code>"]


# --- 6. what people guess, plain words ------------------------------------------------------------------------


@pytest.fixture
async def tg(tmp_path: Path) -> AsyncIterator[Tg]:
    async for t in open_tg(tmp_path):
        yield t


@pytest.mark.parametrize(("typed", "answer"), [
    ("/balance", "There is no /balance. Did you mean /account? (net liquidation, cash, buying power)"),
    ("/profit", "There is no /profit. Did you mean /pnl? (realized and unrealized P&amp;L)"),
    ("/forceexit", "There is no /forceexit. Did you mean /sell? (/sell N sells lot N now)"),
    ("/stopbuy", "There is no /stopbuy. Did you mean /pause? (/pause entries holds back new lots; exits go on)"),
    ("/buy", "There is no /buy. Did you mean /enter? (buy a new lot now, after a confirm)"),
    ("/menu", "There is no /menu. Did you mean /help? (the commands)"),
    ("/postions", "There is no /postions. Did you mean /positions?"),
    ("/frobnicate", "Unknown command. /help lists what I understand."),
])
async def test_a_guessed_command_gets_the_right_one(tg: Tg, typed: str, answer: str) -> None:
    await tg.send(ADMIN, "/start")
    await tg.send(ADMIN, typed)
    assert tg.api.last(ADMIN).text == answer


async def test_plain_words_point_to_the_next_step(tg: Tg) -> None:
    await tg.send(ADMIN, "hi")  # a new admin, not enrolled yet
    assert tg.api.last(ADMIN).text == ("Hello! To begin, send /start: it sets up your authenticator app "
                                       "(two-factor), then /login CODE opens a session.")
    await tg.enroll_and_login()
    await tg.send(ADMIN, "status")
    assert tg.api.last(ADMIN).text == "Did you mean /status?"
    await tg.send(ADMIN, "balance")
    assert tg.api.last(ADMIN).text == "Did you mean /account? (net liquidation, cash, buying power)"
    await tg.send(ADMIN, "what is going on")
    assert tg.api.last(ADMIN).text == "Send a command; /help lists them."


# --- 10. screens that fit ----------------------------------------------------------------------------------------


async def test_help_is_grouped_one_line_each(tg: Tg) -> None:
    await tg.send(ADMIN, "/start")
    await tg.send(ADMIN, "/help")
    assert tg.api.last(ADMIN).text.split("\n") == [
        "<b>QQQ LEAPS bot</b> [SIM]",
        "👀 Watch: /status /positions /account /trades /pnl /why /daily /weekly /monthly /orders",
        "🖐 Trade: /pause /resume /sell /enter /cancel /stop",
        "⚙️ Settings: /settings /set",
        "🧪 Lab: /check /backtest",
        "🔐 Admin: /start /help /login /logout /logs /version",
        "Changes need a session (/login CODE). <code>/help sell</code> explains one command.",
    ]
    await tg.send(ADMIN, "/help sell")
    assert tg.api.last(ADMIN).text == "/sell — /sell N: sell lot N now (needs a session; asks to confirm)"


async def test_settings_shows_the_groups_and_each_group_its_values(tg: Tg) -> None:
    await tg.send(ADMIN, "/start")
    await tg.send(ADMIN, "/settings")
    menu = tg.api.last(ADMIN)
    assert menu.text == ("<b>Settings</b> [SIM]\nAutomatic orders: ▶️ running\n"
                         "Tap a group to see its settings and change one.")
    await tg.tap(ADMIN, menu.button("🔄 Roll"))
    roll = tg.api.last(ADMIN)
    assert [[b["text"] for b in row] for row in roll.keyboard] == [["Roll drop: 5 %"], ["« Settings"]]
    await tg.tap(ADMIN, roll.button("« Settings"))
    assert tg.api.last(ADMIN).text == menu.text  # not a 37-line list on every way back


async def test_logs_are_short_lines_in_new_york_time_and_a_file(tg: Tg) -> None:
    from bot.logs import setup_logging

    await tg.send(ADMIN, "/start")
    setup_logging("INFO")
    logging.getLogger("bot.engine.engine").warning("a warning " + "x" * 300)
    await tg.send(ADMIN, "/logs 1")
    text, document = tg.api.replies(ADMIN)[-2:]
    written = document.files["document"].decode().strip().split("\n")
    full = written[-1]
    assert full.endswith("WARNING bot.engine.engine: a warning " + "x" * 300)  # as written, in UTC
    at = datetime.fromisoformat(full.split(" ")[0]).astimezone(NY).strftime("%H:%M:%S")
    assert text.text.split("\n") == ["<b>Last 1 log line</b> (ET, redacted; in full in the file)",
                                     f"{at} ⚠️ engine: a warning " + "x" * 99 + "…"]
    assert document.method == "sendDocument"
    assert document.text == f"The last {num.plural(len(written), 'log line')} in full (times in UTC, redacted)"


async def test_sell_now_under_positions_asks_in_a_new_message(two_lots: Tg) -> None:
    tg = two_lots
    session = tg.world.cal.session(tg.world.path.sessions[3].day)
    assert session is not None
    tg.clock.advance_to(session.open + timedelta(minutes=30))
    await tg.send(ADMIN, "/start")
    await tg.send(ADMIN, "/positions")
    listing = tg.api.last(ADMIN)
    first, second = ledger.open_lots()
    await tg.tap(ADMIN, listing.button(f"Sell #{second.id} now"), message_id=listing.message_id or 0)
    ask = tg.api.last(ADMIN)
    assert ask.method == "sendMessage" and ask.text.startswith(f"<b>Sell lot #{second.id} now?</b>")
    assert tg.api.of("editMessageText", ADMIN) == []  # the list is as it was
    await tg.tap(ADMIN, listing.button(f"Sell #{first.id} now"), message_id=listing.message_id or 0)
    assert tg.api.last(ADMIN).text.startswith(f"<b>Sell lot #{first.id} now?</b>")  # its other buttons still work


# --- 11. one number style, in every reply ------------------------------------------------------------------------

STYLE_FAULTS = [
    (re.compile(r"(?<![\w.:/\-–])-\d"), "an ASCII hyphen as a minus (a real minus is −)"),
    (re.compile(r"\d%"), "a percent without its space"),
    (re.compile(r"[−+]0(?:\.0+)?(?![\d.])"), "a sign on a zero"),
    (re.compile(r"(?<![\w/])x\d"), "x1 for a quantity (× 1)"),
    (re.compile(r"(?<![\d,.])\d{4,}(?:\.\d+)? USD"), "an amount without its thousands separator"),
    (re.compile(r"(?<![\d.,/])1 (?:lots|fills|sales|contracts|orders|shares|results)\b"), "a plural for one"),
    (re.compile(r"telegram:\d"), "an actor shown as an id"),
]


def style_faults(text: str) -> list[str]:
    text = re.sub(r"Treasury [\d.]+%", "Treasury", text)  # a bond's name is the issuer's, not a figure of ours
    text = re.sub(r"<code>[^<]*</code>", "<code/>", text)  # a value as typed: what /set takes
    return [f"{why}: …{text[max(m.start() - 30, 0):m.end() + 30]}…" for pattern, why in STYLE_FAULTS
            for m in pattern.finditer(text)]


def test_the_style_checker_finds_what_the_issue_saw() -> None:
    seen = "+0.30 % vs (+0.30% vs 582); −1 % vs -0.96 %; 12000 USD vs 6,639.00 USD; × 1 vs x1; (-0.0 %)"
    assert len(style_faults(seen)) == 5
    assert style_faults("+0.30 % · −0.96 % · 12,000.00 USD · × 1 · 0.0 % · 2024-03-06 · 0.05–0.95") == []


async def test_every_reply_and_alert_has_one_number_style(tmp_path: Path) -> None:
    """A week's worth of replies and alerts: an entry, a take-profit sale, every command, every
    settings screen, the confirms; each is read for the number style of strategy/number_style.py."""
    bars = bars_oc([(500, 500), (490, 489), (560, 560), (489.5, 484), (484, 484)])
    async for tg in open_tg(tmp_path, bars, settings={"recycle_enabled": "off"}):
        await tg.world.run_days([s.day for s in tg.world.path.sessions[:4]])
        session = tg.world.cal.session(tg.world.path.sessions[4].day)
        assert session is not None
        tg.clock.advance_to(session.open + timedelta(minutes=30))
        await tg.enroll_and_login()
        await summary_job(SimpleNamespace(application=tg.parts.app, job=None))  # type: ignore[arg-type]
        lot = ledger.open_lots()[0].id
        for command in ("/status", "/positions", "/account", "/trades", "/pnl", "/check", "/why", "/why 1",
                        f"/why {lot}", "/daily", "/weekly", "/monthly", "/orders", "/version", "/help",
                        "/set size 10%", "/set max_positions 5", "/set entry_drop 2", f"/sell {lot}", "/enter",
                        "/stop", "/set delta 60", "/balance", "hello"):
            await tg.send(ADMIN, command)
        await tg.send(ADMIN, "/settings")
        menu = tg.api.last(ADMIN)
        for group in ("📈 Entry", "🎯 Exits", "🔄 Roll", "♻️ Recycling", "🧾 Orders"):
            await tg.tap(ADMIN, menu.button(group))
            screen = tg.api.last(ADMIN)
            for i in range(len(screen.keyboard) - 1):  # each setting's screen, and back
                await tg.tap(ADMIN, screen.keyboard[i][0]["callback_data"])
                await tg.tap(ADMIN, tg.api.last(ADMIN).button("« "))
                screen = tg.api.last(ADMIN)
            await tg.tap(ADMIN, screen.button("« Settings"))
            menu = tg.api.last(ADMIN)
        await tg.drain_alerts()
        texts = [c.text for c in tg.api.calls if c.chat_id in (ADMIN, ADMIN2) and c.text]
        texts += [b["text"] for c in tg.api.calls for row in c.keyboard for b in row]
        assert len(texts) > 120
        assert "Take profit" in "\n".join(texts)  # a sale's alerts are among them
        faults = [f for t in texts for f in style_faults(t)]
        assert faults == [], "\n".join(faults)


# --- 2. /backtest says what it really covered -----------------------------------------------------------------------


async def test_backtest_on_the_simulated_market_says_what_it_covered_up_front(tmp_path: Path) -> None:
    async for tg in open_tg(tmp_path, run_clock=SimClock(datetime(2026, 3, 10, 17, 0, tzinfo=NY))):
        await tg.enroll_and_login()
        tg.api.clear()
        await tg.send(ADMIN, "/backtest 10")
        started = tg.api.of("sendMessage", ADMIN)[0].text
        assert started == ("⏳ Backtesting up to 10 years of QQQ (as far back as the data goes): the current "
                           "settings… (this takes a few seconds)")
        table = tg.api.of("editMessageText", ADMIN)[-1].text.split("\n")
        broker = tg.parts.engine.broker
        assert isinstance(broker, SimBroker)
        first = broker.path.first_day
        assert table[0] == "<b>Backtest</b> [SIM]"
        assert table[1].startswith(f"{first.isoformat()} → 2026-03-10: 13 months of the simulated market (you asked "
                                   "for 10 years: that is all the history there is), ")
        assert not any("years of QQQ history" in line for line in table)  # said once, up front


# --- 7. an expired session --------------------------------------------------------------------------------------


async def test_pause_and_stop_work_when_the_session_has_expired_and_are_audited(two_lots: Tg) -> None:
    tg = two_lots
    await tg.enroll_and_login()
    tg.clock.advance_to(tg.clock.now() + timedelta(minutes=31))  # the session has expired
    await tg.send(ADMIN, "/pause entries")
    assert tg.api.last(ADMIN).text == ("⏸ Entries paused: no new entries, rolls or recycling buys; exits keep "
                                       "running, until /resume. Ticks still run and report what they would do.")
    change = SettingChange.select().order_by(SettingChange.id.desc()).get()
    assert (change.key, change.new_value) == ("paused", "entries") and change.who.startswith(f"telegram:{ADMIN} ")
    await tg.send(ADMIN, "/stop")
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("⛔ Stop now"))
    assert tg.api.last(ADMIN).text.startswith("⛔ <b>Stopped</b>")
    assert tg.parts.engine.settings.current.paused.holds_exits
    assert AuditEntry.get(AuditEntry.action == "stop").who.startswith(f"telegram:{ADMIN} (u{ADMIN}")
    # selling is a trade: it still needs a session
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("Also sell"))
    assert "open a session first" in tg.api.of("answerCallbackQuery")[-1].params["text"]
    assert len(ledger.open_lots()) == 2


async def test_a_change_refused_for_want_of_a_session_runs_after_login(two_lots: Tg) -> None:
    tg = two_lots
    secret = await tg.enroll_and_login()
    tg.clock.advance_to(tg.clock.now() + timedelta(minutes=31))
    await tg.send(ADMIN, "/set entry_drop 2")
    assert tg.api.last(ADMIN).text == (
        "This changes something: open a session first with /login CODE (your authenticator code).\n"
        "Then I will do it: <code>/set entry_drop 2</code> (if you log in within 5 minutes; nothing to retype).")
    assert tg.parts.engine.settings.current.entry_drop_pct == 1
    await tg.send(ADMIN, f"/login {tg.code(secret)}")
    opened, done = tg.api.replies(ADMIN)[-2:]
    assert opened.text.endswith("\nNow doing what you asked: <code>/set entry_drop 2</code>")
    assert done.text == "✅ Entry drop: <code>1</code> % → <code>2</code> %\nTakes effect at the next tick."
    assert tg.parts.engine.settings.current.entry_drop_pct == 2
    # once only, and not after the 5 minutes
    await tg.send(ADMIN, "/logout")
    await tg.send(ADMIN, "/set entry_drop 3")
    tg.clock.advance_to(tg.clock.now() + timedelta(minutes=6))
    await tg.send(ADMIN, f"/login {tg.code(secret)}")
    assert tg.api.last(ADMIN).text.startswith("✅ Session open until ")
    assert "Now doing" not in tg.api.last(ADMIN).text
    assert tg.parts.engine.settings.current.entry_drop_pct == 2


# --- 5. what people type ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("typed", "answer"), [
    ("/set tp 50%", "❓ Take-profit tiers are day:percent pairs, now 0:50,121:30,181:10 (+50 % from day 0, +30 % "
                    "from day 121, +10 % from day 181). One target for every day, whatever the holding? Send /set tp "
                    "0:50. To change one tier, send them all, e.g. /set tp 0:50,121:30,181:10\nNothing was changed."),
    ("/set delta 60%", "❓ A delta is a number from 0 to 1 (0.05–0.95). Did you mean 0.60? Send /set delta 0.60\n"
                       "Nothing was changed."),
    ("/set delta 60", "❓ A delta is a number from 0 to 1 (0.05–0.95). Did you mean 0.60? Send /set delta 0.60\n"
                      "Nothing was changed."),
    ("/set take_profit 50", "❌ Unknown setting 'take_profit'. Did you mean tp (Take-profit tiers)? Short names: "
                            "drop, delta, size, premium, positions, tp, force_exit, roll, recycle, threshold; "
                            "/settings shows every setting and its name.\nNothing was changed."),
])
async def test_what_people_type_is_answered_with_the_command_to_send(tg: Tg, typed: str, answer: str) -> None:
    await tg.enroll_and_login()
    await tg.send(ADMIN, typed)
    assert tg.api.last(ADMIN).text == answer
    assert SettingChange.select().count() == 0


async def test_backtest_takes_key_value_as_set_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_chat_backtest import write_csv

    monkeypatch.setenv("BACKTEST_CSV", str(write_csv(tmp_path / "qqq.csv")))
    monkeypatch.setenv("BACKTEST_IV", "0.22")
    async for tg in open_tg(tmp_path, bars_oc([(500, 500), (500, 501)])):
        await tg.enroll_and_login()
        await tg.send(ADMIN, "/backtest 1 delta 0.7")
        table = tg.api.of("editMessageText", ADMIN)[-1].text
        assert "now = current settings; change = Delta of the call to buy 0.7" in table
