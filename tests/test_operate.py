"""Operating the bot with confidence: the two pause modes, the decision journal (one row per change,
not per tick), the "started" message, and a sim account that survives a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import pytest
from peewee import Database

from bot.app.runner import adopt_ledger
from bot.engine.alerts import EventKind
from broker.sim import SimBroker
from broker.sim_market import IvSource
from storage import journal, ledger
from storage.models import AlertRecord, JournalEntry, Lot, LotExit, Order, OrderPurpose
from tests.harness import make_world
from tests.test_engine import bars_oc, days
from tests.tg_harness import ADMIN, Tg, open_tg
from tests.tg_harness import bars_oc as tg_bars


async def test_pause_entries_still_takes_profit_but_buys_nothing(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489), (575, 575), (560, 555)])
    w = await make_world(bars, settings={"recycle_enabled": "off"})
    await w.run_days(days(bars)[:2])
    (lot,) = ledger.open_lots()
    w.settings.update("pause", "entries", "test")
    await w.run_days(days(bars)[2:])
    assert Lot.get_by_id(lot.id).exit_reason == LotExit.TAKE_PROFIT  # the exit ran
    assert Order.select().where(Order.purpose == OrderPurpose.ENTRY).count() == 1  # no entry on the last dip
    assert ledger.open_lots() == ()


async def test_pause_all_alerts_a_due_exit_once_and_sells_nothing(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489), (575, 575), (576, 576)])
    w = await make_world(bars, settings={"recycle_enabled": "off"})
    await w.run_days(days(bars)[:2])
    (lot,) = ledger.open_lots()
    w.settings.update("pause", "all", "test")
    await w.run_days(days(bars)[2:])
    assert ledger.open_lots() == (lot,)  # nothing sold
    held = w.events(EventKind.EXIT_HELD)
    assert len(held) == 2  # once per lot and session (two sessions above the target), not every tick
    assert f"Lot #{lot.id} reached its take-profit target" in held[0] and "paused, not sold" in held[0]


async def test_the_journal_writes_a_row_per_decision_change_not_per_tick(db: Database) -> None:
    # a flat session (no entry all day), then a session that dips through the trigger
    bars = bars_oc([(500, 500), (500.5, 499.8), (500, 494)])
    w = await make_world(bars, settings={"recycle_enabled": "off"})
    await w.run_days(days(bars)[:2])
    flat = journal.day_entries(bars[1].day)
    assert len([r for r in flat if r.topic == "entry"]) == 1, [r.text for r in flat]
    (row,) = [r for r in flat if r.topic == "entry"]
    assert "entry needs −1" in row.text and "QQQ ≤" in row.text
    ticks = len(w.cal.tick_times(w.cal.session(bars[1].day), 5, 5))  # type: ignore[arg-type]
    assert ticks > 70  # ... from 77 ticks
    await w.run_days(days(bars)[2:])
    dip = [r.key for r in journal.day_entries(bars[2].day) if r.topic == "entry"]
    assert dip[0] == "no_signal" and "signal" in dip and dip[-1] == "entered"
    assert all(a != b for a, b in pairwise(dip))  # a row only when the decision changed
    (lot,) = ledger.open_lots()
    story = [r.text for r in JournalEntry.select().where(JournalEntry.lot == lot.id)]
    assert any(t.startswith("bought 1") for t in story)
    assert any("tier from day 0" in t for t in story)


async def test_a_sim_restart_keeps_cash_and_net_liquidation(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489), (495, 495)])
    w = await make_world(bars, settings={"recycle_enabled": "off"})
    await w.run_days(days(bars))
    assert ledger.open_lots()
    before = await w.broker.account_summary()
    fresh = SimBroker(w.clock, w.path, IvSource.constant(0.22), calendar=w.cal, starting_cash=Decimal(100_000),
                      mixed_account=False, seed=3)
    adopt_ledger(fresh, Decimal(100_000))
    after = await fresh.account_summary()
    assert after.cash_by_currency["USD"] == before.cash_by_currency["USD"]
    assert abs(after.net_liquidation - before.net_liquidation) <= Decimal("0.01")
    assert before.cash_by_currency["USD"] < Decimal(100_000)  # the lot was paid for: cash is not reset


@pytest.fixture
async def tg(tmp_path: Path) -> AsyncIterator[Tg]:
    async for t in open_tg(tmp_path, tg_bars([(500, 500), (500, 501)]), settings={"paused": "entries"}):
        yield t


async def test_every_start_says_so_with_its_mode(tg: Tg) -> None:
    (row,) = list(AlertRecord.select().where(AlertRecord.kind == EventKind.STARTED.value))
    assert "Bot started" in row.text and "simulated broker" in row.text
    assert "Entries paused" in row.text and "exits keep running" in row.text
    await tg.drain_alerts()
    for admin in (ADMIN,):
        assert any("Bot started" in c.text for c in tg.api.of("sendMessage", admin))


async def test_status_shows_the_pause_and_the_session(tg: Tg) -> None:
    await tg.send(ADMIN, "/status")
    text = tg.api.last(ADMIN).text
    assert "entries paused" in text and "Your session: none" in text
    await tg.enroll_and_login()
    await tg.send(ADMIN, "/status")
    assert "Your session: open until" in tg.api.last(ADMIN).text


async def test_a_sim_restart_keeps_the_interest_earned(db: Database) -> None:
    from bot.app.runner import SIM_INTEREST_KEY
    from broker.sim_market import CashRate
    from storage import kv

    bars = bars_oc([(500, 500), (500, 501), (501, 502), (502, 502)])
    w = await make_world(bars)
    first = SimBroker(w.clock, w.path, IvSource.constant(0.22), calendar=w.cal, starting_cash=Decimal(100_000),
                      mixed_account=False, seed=3, cash_rate=CashRate.constant(0.05))
    adopt_ledger(first, Decimal(100_000))  # wires the interest into the database
    w.clock.advance_to(w.clock.now() + timedelta(minutes=1))
    w.clock.advance_to(w.clock.now() + timedelta(days=3))
    assert first.interest > 0 and Decimal(kv.get(SIM_INTEREST_KEY) or "0") == first.interest
    again = SimBroker(w.clock, w.path, IvSource.constant(0.22), calendar=w.cal, starting_cash=Decimal(100_000),
                      mixed_account=False, seed=3)
    adopt_ledger(again, Decimal(100_000))
    assert again.account.usd == first.account.usd  # cash does not fall back by the interest


async def test_check_says_why_not_and_previews_the_next_open(tmp_path: Path) -> None:
    bars = tg_bars([(500, 500), (490, 483), (483, 484)])
    async for tg in open_tg(tmp_path, bars, settings={"recycle_enabled": "off"}):
        await tg.world.run_days([tg.world.path.sessions[0].day])
        await tg.world.run_session(tg.world.path.sessions[1].day, max_ticks=6)  # the dip: one entry
        await tg.send(ADMIN, "/check")
        text = tg.api.last(ADMIN).text
        assert "already entered this session" in text and "<b>Why</b>" in text
        assert "tier from day 0" in text  # the lot's exit rule, and how far it is
        await tg.world.close_session(tg.world.path.sessions[1].day)
        await tg.send(ADMIN, "/check")
        text = tg.api.last(ADMIN).text
        assert "The market is closed: this is the first tick of" in text
        assert "entry needs −1 %" in text and "QQQ ≤" in text  # at the next open, from the last price


async def test_period_reports_logs_and_version(tmp_path: Path) -> None:
    import logging

    from bot.logs import setup_logging

    bars = tg_bars([(500, 500), (490, 489), (575, 575), (576, 576)])
    async for tg in open_tg(tmp_path, bars, settings={"recycle_enabled": "off"}):
        await tg.world.run_days([s.day for s in tg.world.path.sessions])
        await tg.send(ADMIN, "/daily 10")
        text = tg.api.last(ADMIN).text
        assert "Realized P&amp;L by trading day" in text and "1 sale, 1 won" in text and "(nothing closed)" in text
        await tg.send(ADMIN, "/monthly")
        assert "March 2024" in tg.api.last(ADMIN).text
        await tg.send(ADMIN, "/weekly 0")
        assert "Usage" in tg.api.last(ADMIN).text
        setup_logging("INFO", secrets=["s3cr3t-value"])
        logging.getLogger("bot.test").info("a line with s3cr3t-value inside")
        logging.getLogger("apscheduler.executors.default").info('Running job "tick" (scheduled at …)')
        await tg.send(ADMIN, "/logs 5")
        text = tg.api.of("sendMessage", ADMIN)[-1].text
        assert "a line with *** inside" in text and "s3cr3t-value" not in text
        assert "Running job" not in text  # the scheduler's per-run chatter is DEBUG
        full = tg.api.last(ADMIN).files["document"].decode()  # the full lines, as written, come as a file
        assert "a line with *** inside" in full and "s3cr3t-value" not in full
        assert "+00:00" in full  # every line's time carries its zone
        await tg.send(ADMIN, "/version")
        assert "qqq-leaps-bot" in tg.api.last(ADMIN).text
