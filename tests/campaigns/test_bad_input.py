"""Campaign: bad input never crashes anything, always gets a clear message, never stores
anything invalid. Case counts scale with `QQQ_CAMPAIGN_EXAMPLES` (default 300 per property)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peewee import Database

from bot.engine.alerts import MemorySink
from bot.engine.settings_service import SettingsService
from broker.sim_market import CsvError, load_ohlc_csv, load_series_csv
from storage import settings_store
from storage.models import AlertRecord, AuditEntry, Order, Setting, SettingChange
from strategy.numbers import NotANumber, read_number, read_whole
from strategy.settings import SETTING_SPECS, SettingError, StrategySettings, parse_setting, settings_from_storage
from strategy.settings import SettingChange as Change
from tests.tg_harness import ADMIN, Tg, bars_oc, open_tg

N = int(os.environ.get("QQQ_CAMPAIGN_EXAMPLES", "300"))
NOW = datetime(2025, 1, 6, 15, tzinfo=UTC)
COUNTS: dict[str, int] = {}

keys = st.one_of(st.sampled_from(sorted(SETTING_SPECS)), st.sampled_from(["delta", "drop", "qty", "tiers"]),
                 st.text(max_size=20))
values = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"-?[0-9]{0,7}(\.[0-9]{0,4})?\s?(%|usd|\$|days|d|s|min)?", fullmatch=True),
    st.from_regex(r"([0-9]{1,4}:-?[0-9]{1,4}(\.[0-9])?,?){0,5}", fullmatch=True),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "0x10", "١٢", "½", "on", "off", "", " "]),
)


@settings(max_examples=N, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(key=keys, value=values)
def test_set_never_stores_an_invalid_value(db: Database, key: str, value: str) -> None:
    COUNTS["set"] = COUNTS.get("set", 0) + 1
    svc = SettingsService(MemorySink(), lambda: NOW)
    before = svc.current
    rows = SettingChange.select().count()
    result = svc.update(key, value, "fuzz")
    if isinstance(result, SettingError):
        assert result.message and len(result.message) < 1000
        assert svc.current == before
        assert SettingChange.select().count() == rows
    else:
        assert isinstance(result, Change)
        # what was stored loads back to exactly the same settings
        stored = {r.key: r.value for r in Setting.select()}
        loaded, bad = settings_from_storage(stored)
        assert bad == [] and loaded == svc.current
    Setting.delete().execute()
    SettingChange.delete().execute()


@settings(max_examples=N, deadline=None)
@given(key=keys, value=values)
def test_parser_messages_name_the_range(key: str, value: str) -> None:
    COUNTS["parse"] = COUNTS.get("parse", 0) + 1
    result = parse_setting(StrategySettings(), key, value)
    if isinstance(result, SettingError) and not result.message.startswith("Unknown setting"):
        assert " must be " in result.message


cells = st.one_of(st.text(alphabet="0123456789.-e,nul \"", max_size=12), st.floats(allow_nan=True).map(str),
                  st.dates().map(str), st.just("null"))
rows = st.lists(st.lists(cells, min_size=0, max_size=8).map(lambda r: ",".join(r)), max_size=12)
headers = st.sampled_from(["Date,Open,High,Low,Close,Adj Close,Volume", "date,open,high,low,close", "Date,Close",
                           "", "Date;Open;High;Low;Close", "\ufeffDate,Open,High,Low,Close"])


@settings(max_examples=N, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(header=headers, body=rows)
def test_any_csv_loads_or_says_why(tmp_path: Path, header: str, body: list[str]) -> None:
    COUNTS["csv"] = COUNTS.get("csv", 0) + 1
    p = tmp_path / "in.csv"
    p.write_text(header + "\n" + "\n".join(body) + "\n")
    try:
        bars = load_ohlc_csv(p)
    except CsvError as e:
        assert str(p) in str(e)
    else:
        assert bars and all(b.low <= b.close <= b.high * (1 + 1e-6) and b.low > 0 for b in bars)
        assert [b.day for b in bars] == sorted({b.day for b in bars})
    try:
        load_series_csv(p, "Close")
    except CsvError as e:
        assert str(p) in str(e)


# --- numbers typed in chat: every command, through the real Telegram application ------------------------

CHAT_COMMANDS = {  # command → what its usage says (a refusal always shows it)
    "/why": "Usage: <code>/why</code>", "/sell": "Usage: <code>/sell N</code>",
    "/cancel": "Usage: <code>/cancel ID</code>", "/trades": "Usage: <code>/trades [N]</code>",
    "/daily": "Usage: <code>/daily [N]</code>", "/weekly": "Usage: <code>/weekly [N]</code>",
    "/monthly": "Usage: <code>/monthly [N]</code>", "/logs": "Usage: <code>/logs [N]</code>",
    "/backtest": "Usage: /backtest [YEARS]", "/set delta": "Delta of the call to buy must be",
    "/set max_premium": "Max premium per entry must be", "/set max_positions": "Max lots must be",
}
odd = st.one_of(
    st.text(min_size=1, max_size=12),
    st.text(alphabet="0123456789²³¹⁰⁴①⑫٣٤۵০৩१२๓½⅓.,%-", min_size=1, max_size=10),
    st.sampled_from(["99999999999999999999", "nan", "inf", "-inf", "1e999", "١٢", "²", "①", "٣", "12,000.5.5"]),
)


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[tuple[Tg, list[BaseException]]]:
    errors: list[BaseException] = []
    async for tg in open_tg(tmp_path, bars_oc([(500, 500), (490, 489), (492, 493)]),
                            settings={"recycle_enabled": "off"}, handler_errors=errors):
        days = [s.day for s in tg.world.path.sessions[:3]]
        await tg.world.run_days(days[:2])
        await tg.world.run_session(days[2], max_ticks=2)  # inside a session, holding one lot
        await tg.enroll_and_login()
        await tg.drain_alerts()
        yield tg, errors


def _state() -> tuple[object, ...]:
    return (Order.select().count(), settings_store.load_raw(), AuditEntry.select().count(),
            SettingChange.select().count())


@settings(max_examples=N, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(command=st.sampled_from(sorted(CHAT_COMMANDS)), text=odd)
async def test_odd_numbers_in_any_command_answer_its_usage_and_change_nothing(
        chat: tuple[Tg, list[BaseException]], command: str, text: str) -> None:
    """Any text after any command: never an exception, never an alert. Text with anything but ASCII
    digits, signs and separators (other scripts' digits, superscripts, letters) is refused with the
    command's usage and changes nothing; so is a number too large to be one."""
    COUNTS["chat"] = COUNTS.get("chat", 0) + 1
    tg, errors = chat
    if command == "/backtest" and text.strip().isascii():
        return  # a valid number of years would run a backtest; parse_request's own test covers those
    before = _state()
    tg.api.clear()
    await tg.send(ADMIN, f"{command} {text}")
    replies = [c.text for c in tg.api.replies(ADMIN)]
    assert replies, (command, text)
    assert errors == [], errors
    assert not any("Sorry" in r for r in replies), replies
    word = "".join(text.split())
    refused = (word and not word.isascii()) or len(word.lstrip("+-#0")) >= 20
    if refused:
        assert any(CHAT_COMMANDS[command] in r for r in replies), (command, text, replies)
        assert _state() == before
    await tg.drain_alerts()
    assert AlertRecord.select().where(AlertRecord.kind == "error").count() == 0
    if command not in ("/set delta", "/set max_premium", "/set max_positions"):
        assert _state() == before  # reading commands and confirms change nothing


@settings(max_examples=N, deadline=None)
@given(text=st.text(max_size=30), lo=st.integers(0, 5), hi=st.integers(5, 10**6), percent=st.booleans(),
       point=st.booleans())
def test_the_number_reader_never_raises_and_refuses_other_digits(text: str, lo: int, hi: int, percent: bool,
                                                                  point: bool) -> None:
    COUNTS["numbers"] = COUNTS.get("numbers", 0) + 1
    number = read_number(text, percent=percent, point_thousands_ambiguous=point)
    whole = read_whole(text, lo, hi, hash_ok=True)
    if isinstance(number, Decimal):
        assert number.is_finite() and abs(number) < Decimal(10) ** 15
        assert set(text.strip()) <= set("0123456789+-.,_%\u2212 ")
    else:
        assert number.why and len(number.why) < 200
    if isinstance(whole, int):
        assert lo <= whole <= hi
    if any(not c.isascii() and (c.isdigit() or c.isnumeric()) for c in text):
        assert isinstance(number, NotANumber) and isinstance(whole, NotANumber)


def test_report_counts() -> None:
    print(f"bad-input campaign: {COUNTS}")
