"""Campaign: bad input never crashes anything, always gets a clear message, never stores
anything invalid. Case counts scale with `QQQ_CAMPAIGN_EXAMPLES` (default 300 per property)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peewee import Database

from bot.alerts import MemorySink
from bot.settings_service import SettingsService
from broker.sim_market import CsvError, load_ohlc_csv, load_series_csv
from storage.models import Setting, SettingChange
from strategy.settings import SETTING_SPECS, SettingError, StrategySettings, parse_setting, settings_from_storage
from strategy.settings import SettingChange as Change

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


def test_report_counts() -> None:
    print(f"bad-input campaign: {COUNTS}")
