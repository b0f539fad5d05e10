"""The settings parser, as a user types values in the chat or on the backtest's command line."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategy.settings import (
    SETTING_SPECS,
    SettingChange,
    SettingError,
    StrategySettings,
    format_value,
    parse_assignment,
    parse_setting,
    settings_from_storage,
    settings_to_storage,
)

S = StrategySettings()


def test_defaults_match_the_spec() -> None:
    assert S.target_delta == Decimal("0.60") and S.delta_tolerance == Decimal("0.10")
    assert S.entry_drop_pct == 1 and S.roll_drop_pct == 5 and S.max_positions == 3
    assert S.min_dte == 365 and S.order_quantity == 1 and S.max_premium == 12000
    assert S.max_spread_pct == 5 and S.force_exit_days == 270 and S.min_exit_dte == 30
    assert S.recycle_threshold == 500 and S.check_interval_min == 5 and S.delay_after_open_min == 5
    assert S.reprice_s == 15 and S.reprice_step_pct == 20 and S.max_slippage_pct == 50
    assert S.order_timeout_s == 120
    assert [(d, int(p)) for d, p in S.tp_tiers] == [(0, 50), (121, 30), (181, 10)]


@pytest.mark.parametrize(("key", "value", "canonical", "expected"), [
    ("delta", "0.6", "target_delta", Decimal("0.6")),
    ("entry_drop", "1.5%", "entry_drop_pct", Decimal("1.5")),
    ("entry_drop", "1.5", "entry_drop_pct", Decimal("1.5")),
    ("DROP", " 2 % ", "entry_drop_pct", Decimal("2")),
    ("max_premium", "12,500", "max_premium", Decimal("12500")),
    ("premium", "$9000", "max_premium", Decimal("9000")),
    ("min-dte", "400 days", "min_dte", 400),
    ("recycle", "off", "recycle_enabled", False),
    ("tiers", "0:40, 90:20, 200:5", "tp_tiers", ((0, Decimal(40)), (90, Decimal(20)), (200, Decimal(5)))),
])
def test_good_values(key: str, value: str, canonical: str, expected: object) -> None:
    change = parse_setting(S, key, value)
    assert isinstance(change, SettingChange)
    assert change.key == canonical and change.new == expected
    assert getattr(change.settings, canonical) == expected


@pytest.mark.parametrize(("key", "value", "must_mention"), [
    ("delta", "2", "0.05–0.95"),
    ("delta", "abc", "not a number"),
    ("entry_drop", "0", "0.1–20 %"),
    ("min_dte", "10%", "wrong unit"),
    ("max_premium", "5 days", "wrong unit"),
    ("qty", "1.5", "whole number"),
    ("tiers", "10:50", "day 0"),
    ("tiers", "0:50,50:x", "day:percent"),
    ("interval", "7", "divide 60"),
    ("reprice", "500", "order_timeout_s"),
    ("nonsense", "1", "Unknown setting"),
    ("delta", "nan", "finite"),
    ("recycle", "maybe", "on or off"),
])
def test_bad_values_name_the_range_and_store_nothing(key: str, value: str, must_mention: str) -> None:
    result = parse_setting(S, key, value)
    assert isinstance(result, SettingError)
    assert must_mention in result.message
    assert S == StrategySettings()  # the settings object is never changed in place


def test_assignment_form() -> None:
    change = parse_assignment(S, "roll_drop=4")
    assert isinstance(change, SettingChange) and change.new == 4
    assert isinstance(parse_assignment(S, "roll_drop"), SettingError)


def test_storage_round_trip_of_every_setting() -> None:
    s = S.with_value("tp_tiers", ((0, Decimal("45.5")), (100, Decimal(20)))).with_value("paused", True)
    loaded, bad = settings_from_storage(settings_to_storage(s))
    assert loaded == s and bad == []


def test_storage_with_a_broken_value_falls_back_to_default_for_it() -> None:
    stored = settings_to_storage(S.with_value("target_delta", Decimal("0.7")))
    stored["max_positions"] = "banana"
    loaded, bad = settings_from_storage(stored)
    assert loaded.target_delta == Decimal("0.7") and loaded.max_positions == 3 and bad == ["max_positions"]


def test_storage_applies_interdependent_values_together() -> None:
    stored = {"reprice_s": "200", "order_timeout_s": "300"}
    loaded, bad = settings_from_storage(stored)
    assert (loaded.reprice_s, loaded.order_timeout_s, bad) == (200, 300, [])


@given(key=st.sampled_from(sorted(SETTING_SPECS)), text=st.text(max_size=30))
def test_any_text_gives_a_change_or_an_error(key: str, text: str) -> None:
    result = parse_setting(S, key, text)
    assert isinstance(result, SettingChange | SettingError)
    if isinstance(result, SettingChange):
        # what was accepted round-trips through its displayed form
        again = parse_setting(S, key, format_value(key, result.new))
        assert isinstance(again, SettingChange) and again.new == result.new
