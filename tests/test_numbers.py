"""The one reader of numbers typed in chat (strategy/numbers.py): what each way of writing a number
means, what is refused and why, and that whatever the bot itself writes reads back as the same value."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategy.numbers import NotANumber, read_number, read_whole


@pytest.mark.parametrize(("text", "value"), [
    ("0.5", Decimal("0.5")), ("0,5", Decimal("0.5")), (".5", Decimal("0.5")), ("1,25", Decimal("1.25")),
    ("12,000", Decimal(12000)), ("1,234.5", Decimal("1234.5")), ("6,639.00", Decimal("6639")),
    ("1.234,5", Decimal("1234.5")), ("1,000,000", Decimal(1000000)), ("1.000.000", Decimal(1000000)),
    ("12_000", Decimal(12000)), ("0,125", Decimal("0.125")), ("-1,5", Decimal("-1.5")), ("−2", Decimal(-2)),
    ("-0", Decimal(0)), (" 7 ", Decimal(7)),
])
def test_what_a_number_means(text: str, value: Decimal) -> None:
    assert read_number(text) == value


@pytest.mark.parametrize(("text", "why"), [
    ("²", "digits 0–9"), ("①", "digits 0–9"), ("١٢", "digits 0–9"), ("½", "digits 0–9"), ("１２", "digits 0–9"),
    ("nan", "not a number"), ("inf", "not a number"), ("-inf", "not a number"), ("1e5", "not a number"),
    ("0x10", "not a number"), ("", "not a number"), ("5,", "not a number"), ("--5", "not a number"),
    ("99999999999999999999", "too large"), ("0.0000000000001", "too many decimals"),
    ("1234,567", "ambiguous"), ("0,5,5", "several commas"), ("1,23,456", "several commas"),
    ("1,234.5.6", "mixes a comma and a point"), ("12 000", "spaces inside"), ("50%", "no % here"),
])
def test_what_is_refused_and_why(text: str, why: str) -> None:
    result = read_number(text)
    assert isinstance(result, NotANumber) and why in result.why, result


def test_a_point_before_three_digits_is_ambiguous_only_where_the_caller_says_so() -> None:
    assert read_number("1.000") == Decimal(1)
    refused = read_number("1.000", point_thousands_ambiguous=True)
    assert isinstance(refused, NotANumber) and "1000 or 1?" in refused.why


def test_percent_only_where_allowed() -> None:
    assert read_number("1,5 %", percent=True) == Decimal("1.5")
    assert isinstance(read_number("1,5%"), NotANumber)


@pytest.mark.parametrize(("text", "lo", "hi", "expected"), [
    ("3", 1, 50, 3), ("#3", 1, 50, 3), ("1,000", 1, 10**6, 1000), ("50", 1, 50, 50),
    ("0", 1, 50, "is not from 1 to 50"), ("51", 1, 50, "is not from 1 to 50"), ("2.5", 1, 50, "not a whole number"),
    ("1.000", 1, 10**6, "ambiguous"), ("٣", 1, 50, "digits 0–9"), ("99999999999999999999", 1, 50, "too large"),
])
def test_whole_numbers(text: str, lo: int, hi: int, expected: int | str) -> None:
    result = read_whole(text, lo, hi, hash_ok=True)
    if isinstance(expected, int):
        assert result == expected
    else:
        assert isinstance(result, NotANumber) and expected in result.why


amounts = st.decimals(min_value=Decimal("-999999999999.99"), max_value=Decimal("999999999999.99"), places=2,
                      allow_nan=False, allow_infinity=False)


@given(amounts)
def test_what_the_bot_writes_reads_back(x: Decimal) -> None:
    """Amounts as the bot shows them (6,639.00 USD), or as plain digits, are read as that value."""
    assert read_number(f"{x:,.2f}") == x
    assert read_number(f"{x:f}") == x
    assert read_number(f"{x:f}".replace(".", ",")) == x  # two decimals after a comma: a decimal comma


@given(st.integers(1, 10**12))
def test_whole_numbers_as_the_bot_writes_them_read_back(n: int) -> None:
    assert read_whole(f"{n:,}") == n and read_whole(str(n)) == n and read_whole(f"#{n}", hash_ok=True) == n
