"""The settings parser, as a user types values in the chat or on the backtest's command line."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategy.settings import (
    GROUPS,
    SETTING_SPECS,
    SHORT_KEYS,
    PositionSize,
    SettingChange,
    SettingError,
    StrategySettings,
    display_value,
    format_value,
    group_keys,
    parse_assignment,
    parse_setting,
    resolve_key,
    settings_from_storage,
    settings_to_storage,
    unit_text,
)

S = StrategySettings()
NUMERIC = sorted(k for k, s in SETTING_SPECS.items() if s.kind in ("decimal", "int"))
DIVISORS = "1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60 min"  # the tick interval's valid values
VALIDATOR_WORDS = ("Input should", "Value error", "validation error", "pydantic", "greater_than", "less_than")


def test_defaults_match_the_spec() -> None:
    assert S.target_delta == Decimal("0.60") and S.delta_tolerance == Decimal("0.10")
    assert S.entry_drop_pct == 1 and S.roll_drop_pct == 5 and S.max_positions == 3
    assert S.min_dte == 365 and S.position_size == PositionSize(contracts=1) and S.max_premium == 12000
    assert S.max_spread_pct == 8 and S.force_exit_days == 270 and S.min_exit_dte == 30
    assert S.recycle_threshold == 500 and S.check_interval_min == 5 and S.delay_after_open_min == 5
    assert S.reprice_s == 15 and S.reprice_step_pct == 20 and S.max_slippage_pct == 50
    assert S.order_timeout_s == 120
    assert [(d, int(p)) for d, p in S.tp_tiers] == [(0, 50), (121, 30), (181, 10)]


@pytest.mark.parametrize(("key", "value", "canonical", "expected"), [
    ("delta", "0.6", "target_delta", Decimal("0.6")),
    ("entry_drop", "1.5%", "entry_drop_pct", Decimal("1.5")),
    ("entry_drop", "1.5", "entry_drop_pct", Decimal("1.5")),
    ("DROP", " 2 % ", "entry_drop_pct", Decimal("2")),
    # the decimal comma: the only separator, one or two digits after it
    ("entry_drop", "0,5", "entry_drop_pct", Decimal("0.5")),
    ("delta", "0,6", "target_delta", Decimal("0.6")),
    ("entry_drop", "1,25", "entry_drop_pct", Decimal("1.25")),
    ("entry_drop", "0,5 %", "entry_drop_pct", Decimal("0.5")),
    ("delta", ",65", "target_delta", Decimal("0.65")),
    ("qty", "2,0", "position_size", PositionSize(2)),
    ("threshold", "5,50", "recycle_threshold", Decimal("5.5")),
    ("premium", "12_500", "max_premium", Decimal("12500")),
    ("premium", "$9000", "max_premium", Decimal("9000")),
    ("premium", "12500 usd", "max_premium", Decimal("12500")),
    ("min-dte", "400 days", "min_dte", 400),
    ("qty", "3 contracts", "position_size", PositionSize(3)),
    ("size", "10%", "position_size", PositionSize(contracts=None, pct=Decimal(10))),
    ("position_size", "0,5 %", "position_size", PositionSize(contracts=None, pct=Decimal("0.5"))),
    ("order_quantity", "4", "position_size", PositionSize(4)),
    ("threshold", "-0", "recycle_threshold", Decimal(0)),
    ("recycle", "off", "recycle_enabled", False),
    ("tiers", "0:40, 90:20, 200:5", "tp_tiers", ((0, Decimal(40)), (90, Decimal(20)), (200, Decimal(5)))),
    ("tiers", "0:50.5,121d:30%", "tp_tiers", ((0, Decimal("50.5")), (121, Decimal(30)))),
])
def test_good_values(key: str, value: str, canonical: str, expected: object) -> None:
    change = parse_setting(S, key, value)
    assert isinstance(change, SettingChange), change
    assert change.key == canonical and change.new == expected
    assert getattr(change.settings, canonical) == expected


@pytest.mark.parametrize(("key", "value", "what_to_type"), [
    ("delta", "0,5,5", "e.g. 1.5"),
    ("premium", "1234,567", "type 1234567 or 1234.567"),  # a comma before three digits, not after a group
    ("premium", "1,23,456", "e.g. 1.5"),                 # groups of three, or it is not a thousands separator
    ("premium", "1,234.5.6", "mixes a comma and a point"),
    ("premium", "12.000", "Type 12000 or 12,"),          # a thousand written the European way
    ("force_exit", "1.000", "Type 1000 or 1,"),          # 1 day would sell every lot at the next tick
    ("premium", "12 000", "e.g. 12000"),
    ("premium", "1_000,5", "not a number"),
    ("premium", "99999999999999999999", "too large"),
    ("delta", "0,6²", "digits 0–9"),
    ("delta", "٠٫٦", "digits 0–9"),
    ("delta", "nan", "not a number"),
    ("premium", "inf", "not a number"),
])
def test_ambiguous_numbers_are_refused_with_what_to_type(key: str, value: str, what_to_type: str) -> None:
    result = parse_setting(S, key, value)
    assert isinstance(result, SettingError), result
    assert what_to_type in result.message
    assert f"'{value}'" in result.message and " must be " in result.message


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("premium", "12,000", Decimal(12000)),           # a thousands comma, as the bot writes amounts
    ("threshold", "1,000", Decimal(1000)),
    ("premium", "1,234.5", Decimal("1234.5")),
    ("premium", "1.234,5", Decimal("1234.5")),       # the European way, unambiguous with both marks
    ("premium", "1,000,000", Decimal(1000000)),
    ("premium", "1.000.000", Decimal(1000000)),
    ("premium", "12,500 usd", Decimal(12500)),
    ("tolerance", "0,125", Decimal("0.125")),        # 0 cannot lead a thousands group: a decimal comma
    ("entry_drop", "1,2345", Decimal("1.2345")),
    ("min_dte", "1,000", 1000),
])
def test_a_thousands_separator_is_read_where_it_can_only_be_one(key: str, value: str, expected: object) -> None:
    change = parse_setting(S, key, value)
    assert isinstance(change, SettingChange), change
    assert change.new == expected


def test_a_thousands_comma_out_of_range_names_the_range() -> None:
    """``1,500`` for a percent is 1500 %: refused with the range, never read as 1.5 silently."""
    result = parse_setting(S, "entry_drop", "1,500")
    assert isinstance(result, SettingError)
    assert result.message == "Entry drop = 1500 % refused: it must be 0.1–20 %."


def test_a_point_followed_by_three_digits_stays_decimal_where_three_decimals_make_sense() -> None:
    change = parse_setting(S, "tolerance", "0.125")
    assert isinstance(change, SettingChange) and change.new == Decimal("0.125")
    change = parse_setting(S, "entry_drop", "1.125")
    assert isinstance(change, SettingChange) and change.new == Decimal("1.125")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("delta", "2", "Delta of the call to buy = 2 refused: it must be 0.05–0.95."),
    ("entry_drop", "0", "Entry drop = 0 % refused: it must be 0.1–20 %."),
    ("entry_drop", "50", "Entry drop = 50 % refused: it must be 0.1–20 %."),
    ("qty", "0", "Position size = 0 contracts refused: it must be 1–100 contracts, or 0.1–100 % of net liquidation "
                 "(e.g. 2, or 10 %)."),
    ("size", "150%", "Position size = 150 % of net liquidation refused: it must be 1–100 contracts, or 0.1–100 % of "
                     "net liquidation (e.g. 2, or 10 %)."),
    ("premium", "50", "Max premium per entry = 50 USD refused: it must be 100–1,000,000 USD."),
    ("reprice", "200", "Reprice after = 200 s refused: it must be below Order timeout (120 s), so 1–119 s. "
                       "To go higher, raise Order timeout first."),
    ("timeout", "10", "Order timeout = 10 s refused: it must be above Reprice after (15 s), so 16–3600 s. "
                      "To go lower, lower Reprice after first."),
    ("interval", "7", "Tick interval = 7 min refused: it must be a divisor of 60 so ticks align to the clock: "
                      "1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60 min."),
])
def test_refusals_in_the_products_words(key: str, value: str, message: str) -> None:
    result = parse_setting(S, key, value)
    assert isinstance(result, SettingError)
    assert result.message == message


def test_a_parse_error_names_the_range_valid_now() -> None:
    result = parse_setting(S, "reprice", "soon")
    assert isinstance(result, SettingError)
    assert result.message == "'soon' is not a number. Reprice after must be 1–119 s, below Order timeout (120 s)."
    result = parse_setting(S, "interval", "90")
    assert isinstance(result, SettingError) and DIVISORS in result.message


def test_the_cross_field_limit_follows_the_other_setting() -> None:
    longer = parse_setting(S, "timeout", "300")
    assert isinstance(longer, SettingChange)
    change = parse_setting(longer.settings, "reprice", "200")
    assert isinstance(change, SettingChange) and change.new == 200
    refused = parse_setting(longer.settings, "reprice", "300")
    assert isinstance(refused, SettingError) and "below Order timeout (300 s), so 1–299 s" in refused.message


@pytest.mark.parametrize(("key", "value", "must_mention"), [
    ("delta", "abc", "'abc' is not a number"),
    ("delta", "nan", "not a number"),
    ("delta", "inf", "not a number"),
    ("delta", "1e-1", "not a number"),
    ("delta", "١", "not a number"),
    ("min_dte", "10%", "wrong unit: shortest expiry is in days"),
    ("max_premium", "5 days", "wrong unit"),
    ("qty", "1.5", "whole number"),
    ("qty", "1,5", "whole number"),
    ("tiers", "10:50", "the first tier must start at day 0"),
    ("tiers", "0:50,50:x", "'50:x' is not day:percent"),
    ("tiers", "0:50,5,121:30", "write a decimal with a point, e.g. 0:50.5"),
    ("tiers", "0:50,0:40", "days must increase"),
    ("tiers", "0:0", "above 0 %"),
    ("recycle", "maybe", "'maybe' is not on or off. Recycling into QQQM must be on or off."),
    ("pause", "soon", "Pause must be off, entries or all."),
])
def test_bad_values_name_the_range_and_store_nothing(key: str, value: str, must_mention: str) -> None:
    result = parse_setting(S, key, value)
    assert isinstance(result, SettingError)
    assert must_mention in result.message
    assert " must be " in result.message
    assert S == StrategySettings()  # the settings object is never changed in place


def test_an_unknown_key_suggests_the_closest_and_the_short_names() -> None:
    result = parse_setting(S, "delt", "0.6")
    assert isinstance(result, SettingError)
    assert result.message.startswith("Unknown setting 'delt'. Did you mean delta (Delta of the call to buy)?")
    assert len(result.message) < 250  # not every internal key (issue 20: that was 476 characters)
    assert all(resolve_key(k) is not None for k in SHORT_KEYS)  # the short names it gives all work


@pytest.mark.parametrize("key", NUMERIC)
def test_every_range_refusal_names_the_setting_its_range_and_unit(key: str) -> None:
    spec = SETTING_SPECS[key]
    for value in ("-5", "99999999"):
        result = parse_setting(S, key, value)
        assert isinstance(result, SettingError), (key, value)
        assert result.message.startswith(f"{spec.label} = ")
        assert "refused: it must" in result.message
        assert re.search(r"\d–\d", result.message) or DIVISORS in result.message
        assert spec.unit in result.message
        assert not any(w in result.message for w in VALIDATOR_WORDS)


def test_every_setting_has_a_human_label_and_a_group() -> None:
    assert set(SETTING_SPECS) == {k for g in (*GROUPS, "pause") for k in group_keys(g)}
    for spec in SETTING_SPECS.values():
        assert spec.label and "_" not in spec.label and spec.label[0].isupper(), spec.key
        assert spec.help and spec.presets
    assert len({s.label for s in SETTING_SPECS.values()}) == len(SETTING_SPECS)


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("entry_drop_pct", Decimal("1.5"), "1.5 %"), ("position_size", PositionSize(1), "1 contract"),
    ("position_size", PositionSize(2), "2 contracts"),
    ("position_size", PositionSize(contracts=None, pct=Decimal(10)), "10 % of net liquidation"),
    ("min_dte", 365, "365 days"), ("force_exit_days", 1, "1 day"),
    ("max_premium", Decimal(12000), "12,000 USD"), ("target_delta", Decimal("0.60"), "0.6"),
    ("reprice_step_pct", Decimal(20), "20 % of spread"), ("recycle_enabled", True, "on"),
    ("paused", "entries", "entries"),
])
def test_values_are_shown_with_their_unit(key: str, value: object, shown: str) -> None:
    assert display_value(key, value) == shown


def test_assignment_form() -> None:
    change = parse_assignment(S, "roll_drop=4")
    assert isinstance(change, SettingChange) and change.new == 4
    change = parse_assignment(S, "roll_drop=4,5")
    assert isinstance(change, SettingChange) and change.new == Decimal("4.5")
    assert isinstance(parse_assignment(S, "roll_drop"), SettingError)


def test_storage_round_trip_of_every_setting() -> None:
    s = S.with_value("tp_tiers", ((0, Decimal("45.5")), (100, Decimal(20)))).with_value("paused", True)
    loaded, bad = settings_from_storage(settings_to_storage(s))
    assert loaded == s and bad == []


def test_a_stored_amount_with_three_decimals_still_loads() -> None:
    """Stored text is canonical (written by the bot), never a thousands separator."""
    loaded, bad = settings_from_storage({"max_premium": "100.125", "recycle_threshold": "1.000"})
    assert (loaded.max_premium, loaded.recycle_threshold, bad) == (Decimal("100.125"), Decimal(1), [])


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
    else:
        assert not any(w in result.message for w in VALIDATOR_WORDS)
        assert " must be " in result.message or result.message.startswith("Unknown setting")


numbers = st.one_of(
    st.from_regex(r"[-+]?[0-9]{0,5}([.,_ ][0-9]{0,4}){0,3}", fullmatch=True),
    st.builds("{}{}{}".format, st.sampled_from(["", "0", "1", "3", "12", "45", "120", "1000", "1_000"]),
              st.sampled_from([",", ".", ""]), st.from_regex(r"[0-9]{0,4}", fullmatch=True)),
)


_COMMA_GROUPS = re.compile(r"[-+]?[1-9][0-9]{0,2}(,[0-9]{3})+(\.[0-9]+)?")
_POINT_GROUPS = re.compile(r"[-+]?[1-9][0-9]{0,2}(\.[0-9]{3})+(,[0-9]+)?")


def _thousands(text: str) -> bool:
    """Digits grouped by thousands where the separator can only be one: 12,000; 1,234.5; 1.234,5; 1.000.000."""
    return bool(_COMMA_GROUPS.fullmatch(text)) or (
        bool(_POINT_GROUPS.fullmatch(text)) and (text.count(".") > 1 or "," in text))


def _meant(text: str) -> Decimal:
    """What a number means under the rule: thousands separators where they can only be one, else a
    comma or a point is the decimal mark."""
    if _COMMA_GROUPS.fullmatch(text):
        return Decimal(text.replace(",", ""))
    if _thousands(text):
        return Decimal(text.replace(".", "").replace(",", "."))
    return Decimal(text.replace(",", ".").replace("_", ""))


@given(key=st.sampled_from(NUMERIC), text=numbers)
def test_a_number_is_read_one_way_or_refused(key: str, text: str) -> None:
    result = parse_setting(S, key, text)
    t = text.strip()
    if (text.count(",") + text.count(".") > 1 and not _thousands(t)) or " " in t:
        assert isinstance(result, SettingError), (text, result)
    if re.fullmatch(r"[-+]?[0-9]{4,},[0-9]{3}", t) and t.lstrip("+-0")[:1] != ",":
        assert isinstance(result, SettingError), (text, result)  # 1234,567: mistyped thousands, or decimals?
    if isinstance(result, SettingChange):
        assert result.new == _meant(t)
    else:  # the range valid now (a reprice interval below the order timeout), or the values that divide 60
        assert re.search(r"\d–\d", result.message) or DIVISORS in result.message, result.message
        assert unit_text(key) in result.message
