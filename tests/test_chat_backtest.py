"""/backtest and the 🧪 Compare button through the real Application on the test Bot API: the table
and the photo, the current settings beside a change, one backtest at a time, bad arguments refused
like /set, and the data: a CSV from the environment, or the broker's own history."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import AsyncIterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.lab import chat_backtest
from broker.sim_market import synthetic_bars
from storage import kv
from strategy.calendar import nyse
from strategy.settings import StrategySettings
from tests.tg_harness import ADMIN, Tg, bars_oc, make_cfg, open_tg


def write_csv(path: Path, years: int = 2, seed: int = 5) -> Path:
    cal = nyse()
    sessions = cal.sessions_between(date(2024, 3, 4) - timedelta(days=int(365 * years)), date(2024, 3, 1))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Date", "Open", "High", "Low", "Close"])
        for b in synthetic_bars(sessions, seed=seed, s0=400.0):
            w.writerow([b.day.isoformat(), f"{b.open:.2f}", f"{b.high:.2f}", f"{b.low:.2f}", f"{b.close:.2f}"])
    return path


@pytest.fixture
async def tg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Tg]:
    monkeypatch.setenv("BACKTEST_CSV", str(write_csv(tmp_path / "qqq.csv")))
    monkeypatch.setenv("BACKTEST_IV", "0.22")
    async for t in open_tg(tmp_path, bars_oc([(500, 500), (500, 501)])):
        yield t


async def test_backtest_compares_the_current_settings_with_a_change(tg: Tg) -> None:
    await tg.enroll_and_login()
    tg.api.clear()
    await tg.send(ADMIN, "/backtest 1 entry_drop=2")
    progress = tg.api.of("sendMessage", ADMIN)[0]
    assert "Backtesting up to 1 year of QQQ" in progress.text and "side by side" in progress.text
    table = tg.api.of("editMessageText", ADMIN)[-1].text
    assert "CAGR" in table and "Max drawdown" in table and "Sharpe" in table and "Entries" in table
    assert "Realized" in table and "QQQM bought" in table and "buy &amp; hold" in table
    assert "now = current settings; change = Entry drop 2 %" in table
    photo = tg.api.of("sendPhoto", ADMIN)[-1]
    assert photo.files["photo"].startswith(b"\x89PNG")
    assert tg.parts.engine.settings.current.entry_drop_pct == 1  # a comparison changes nothing


async def test_backtest_needs_a_session_and_refuses_bad_arguments(tg: Tg) -> None:
    await tg.send(ADMIN, "/backtest")
    assert "open a session first" in tg.api.last(ADMIN).text
    await tg.enroll_and_login()
    for text, expect in (("/backtest 99", "not a number of years"), ("/backtest delta=2", "Delta of the call to buy"),
                         ("/backtest nonsense=1", "Unknown setting 'nonsense'"),
                         ("/backtest pause=all", "not something a backtest can compare")):
        tg.api.clear()
        await tg.send(ADMIN, text)
        reply = tg.api.last(ADMIN).text
        assert expect in reply and "Nothing was changed" in reply, (text, reply)
        assert not tg.api.of("sendPhoto", ADMIN)


async def test_one_backtest_at_a_time(tg: Tg) -> None:
    await tg.enroll_and_login()
    tg.api.clear()
    first = asyncio.create_task(tg.send(ADMIN, "/backtest 1"))
    for _ in range(200):  # until the first one is running
        if tg.parts.deps.service.backtest_busy():
            break
        await asyncio.sleep(0.01)
    assert tg.parts.deps.service.backtest_busy()
    await tg.send(ADMIN, "/backtest 1 entry_drop=2")
    assert "already running" in tg.api.last(ADMIN).text
    await first
    assert len(tg.api.of("sendPhoto", ADMIN)) == 1  # the first one answered, the second did not run
    assert tg.parts.deps.service.backtest_busy() is None


async def test_the_compare_button_of_a_pending_change(tg: Tg) -> None:
    await tg.enroll_and_login()
    await tg.send(ADMIN, "/settings")
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("📈 Entry"))
    await tg.tap(ADMIN, tg.api.of("editMessageText", ADMIN)[-1].button("Entry drop"))
    await tg.tap(ADMIN, tg.api.of("editMessageText", ADMIN)[-1].button("2 %"))
    confirm = tg.api.of("editMessageText", ADMIN)[-1]
    assert "Change Entry drop" in confirm.text
    tg.api.clear()
    await tg.tap(ADMIN, confirm.button("🧪 Compare"))
    redrawn = tg.api.of("editMessageText", ADMIN)[0]
    assert redrawn.text == ("Change Entry drop: <code>1</code> % → <code>2</code> %?\n"
                            "🧪 <i>Comparing; the confirm comes again below the comparison.</i>")
    assert redrawn.keyboard == []  # its buttons would scroll away above the comparison
    assert any("change = Entry drop 2 %" in c.text for c in tg.api.of("editMessageText", ADMIN))
    assert tg.api.of("sendPhoto", ADMIN)
    assert tg.parts.engine.settings.current.entry_drop_pct == 1
    # the change is still pending: its confirm comes again, below the photo, where the thumb is
    methods = [c.method for c in tg.api.replies(ADMIN)]
    assert methods[-2:] == ["sendPhoto", "sendMessage"]
    again = tg.api.last(ADMIN)
    assert again.text == "Change Entry drop: <code>1</code> % → <code>2</code> %?"
    await tg.tap(ADMIN, again.button("✅ Confirm"))  # and it can still be confirmed
    assert tg.parts.engine.settings.current.entry_drop_pct == 2


async def test_no_data_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKTEST_CSV", str(tmp_path / "missing.csv"))
    async for tg in open_tg(tmp_path, bars_oc([(500, 500), (500, 501)])):
        await tg.enroll_and_login()
        await tg.send(ADMIN, "/backtest 1")
        text = tg.api.of("editMessageText", ADMIN)[-1].text
        assert "BACKTEST_CSV" in text and "missing.csv" in text and "\n" not in text.strip()


async def test_the_brokers_history_is_cached_once_a_day(tmp_path: Path) -> None:
    """With no BACKTEST_CSV the simulated market's own bars are used, asked of the broker once a day."""
    bars = bars_oc([(500 + i % 7, 501 + i % 5) for i in range(60)])
    async for tg in open_tg(tmp_path, bars):
        await tg.world.run_days([s.day for s in tg.world.path.sessions[:50]])
        calls: list[Any] = []
        broker = tg.world.broker
        real = broker.historical_daily_bars

        async def counted(*args: Any, calls: list[Any] = calls, real: Any = real) -> Any:
            calls.append(args)
            return await real(*args)

        broker.historical_daily_bars = counted  # type: ignore[method-assign]
        await tg.enroll_and_login()
        await tg.send(ADMIN, "/backtest 1")
        text = tg.api.of("editMessageText", ADMIN)[-1].text
        assert "2 months of the simulated market (you asked for 1 year: that is all the history there is)" in text
        asked = len(calls)
        assert asked >= 1
        await tg.send(ADMIN, "/backtest 1")
        assert len(calls) == asked and kv.get("backtest_data:bars")  # the second one used the day's cache
        assert "CAGR" in tg.api.of("editMessageText", ADMIN)[-1].text


def test_the_current_settings_become_the_backtests_overrides() -> None:
    s = StrategySettings().with_value("entry_drop_pct", 2).with_value("paused", "all")
    assert chat_backtest.overrides_of(s) == ["entry_drop_pct=2"]  # a paused bot's backtest still trades
    assert make_cfg  # the harness builds the config the bot reads BACKTEST_* from


def test_a_chat_backtest_prices_with_the_sim_brokers_parameters_file(tmp_path: Path) -> None:
    """SIM_PRICING reaches /backtest's runs: with spreads four times wider, fewer contracts pass
    max_spread_pct and the run enters less than on the built-in market."""
    from dataclasses import replace
    from decimal import Decimal

    from bot.lab.pricing import save_pricing
    from strategy.option_market import DEFAULT_PARAMS
    from strategy.rules import DailyLimits

    wide = tmp_path / "wide.json"
    save_pricing(replace(DEFAULT_PARAMS, spread_pct=DEFAULT_PARAMS.spread_pct * 4,
                         spread_floor=DEFAULT_PARAMS.spread_floor * 4), wide, {"quotes": "test"})
    bars = synthetic_bars(nyse().sessions_between(date(2023, 1, 3), date(2024, 12, 31)), seed=5, s0=400.0)
    runs = (("current settings", ()),)
    base = chat_backtest.Job(bars, "0.22", Decimal(100_000), "0", DailyLimits(), runs)
    plain = chat_backtest.run_job(base).curves[0].summary
    widened = chat_backtest.run_job(replace(base, pricing=str(wide))).curves[0].summary
    assert plain["entries"] > widened["entries"]
