"""The one reader of numbers typed in chat: every command argument (``/why 3``, ``/trades 20``,
``/backtest 10``) and every setting value (``/set delta 0,6``, ``--set max_premium=12,000``).

How a number is read:
- ASCII digits ``0``–``9`` only, with an optional sign (``-``, ``+``, the typographic ``−``). Other
  scripts' digits (``١٢``), superscripts (``²``), circled digits (``①``), fractions (``½``), ``nan``,
  ``inf`` and exponents (``1e5``) are refused: they are not what a phone's number pad types.
- ``.`` or ``,`` is the decimal mark: ``0.5``, ``0,5``, ``1,25``, ``.5``.
- A thousands separator is accepted where it can only be one: a comma followed by exactly three
  digits after a first group of one to three digits (``12,000`` is 12000, ``1,234.5`` is 1234.5,
  ``1,000,000``), as the bot itself writes amounts (``6,639.00 USD``), and the European way when
  both marks are there or a point repeats (``1.234,5``, ``1.000.000``). ``0,125`` has no other
  reading than 0.125.
- What could be read two ways is refused with what to type instead: ``1234,567`` (a comma before
  three digits that do not follow a group), several separators out of place (``0,5,5``), digits
  grouped by spaces (``12 000``), and, where the caller says so (whole numbers and USD amounts, none
  of which has three decimals), a point before exactly three digits (``1.000``: one or a thousand?).
- ``_`` may group the digits of the whole part, as in Python (``12_000``).
- ``%`` at the end only where the caller allows it (a percent).
- At most 15 digits before the decimal mark and 12 after it: ``99999999999999999999`` is refused as
  too large rather than overflowing whatever stores it.

A refusal is a value, ``NotANumber``, whose ``why`` follows the quoted text in a message
("'²' is not a number: type it with the digits 0–9"). Nothing here raises on any text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

MAX_WHOLE_DIGITS = 15
MAX_DECIMALS = 12
_ASCII = frozenset("0123456789")
_ALLOWED = frozenset("0123456789+-.,_%")
_UNDERSCORED = re.compile(r"(?:[0-9]+(?:_[0-9]+)*)?(?:\.[0-9]*)?")
_SPACE_GROUPED = re.compile(r"[+-]?[1-9][0-9]{0,2}(?: [0-9]{3})+(?:[.,][0-9]+)?%?")
_LEAD_GROUP = re.compile(r"[1-9][0-9]{0,2}")


@dataclass(frozen=True, slots=True)
class NotANumber:
    """Why a text is not a number (the caller quotes the text before it)."""

    why: str


def read_number(text: str, *, percent: bool = False, point_thousands_ambiguous: bool = False) -> Decimal | NotANumber:
    """A number as a user types it, or why it is not one (see the module's docstring).
    ``percent`` allows a trailing ``%``; ``point_thousands_ambiguous`` refuses ``1.000`` (for
    whole numbers and USD amounts)."""
    s = text.strip().replace("\u2212", "-")
    if _SPACE_GROUPED.fullmatch(s):
        return NotANumber(f"has spaces inside: type it without them, e.g. {s.replace(' ', '')}")
    if percent and s.endswith("%"):
        s = s[:-1].rstrip()
    if not s or any(c not in _ALLOWED for c in s):
        if any(c.isdigit() or c.isnumeric() for c in s if c not in _ASCII):
            return NotANumber("is not a number: type it with the digits 0–9")
        return NotANumber("is not a number")
    if "%" in s:
        return NotANumber("is not a number (no % here)" if not percent else "is not a number")
    sign = ""
    if s[0] in "+-":
        sign, s = s[0], s[1:]
    if not s or not any(c in _ASCII for c in s) or any(c in "+-" for c in s):
        return NotANumber("is not a number")
    parts = _split(s, point_thousands_ambiguous)
    if isinstance(parts, NotANumber):
        return parts
    whole, frac = parts
    whole = whole.lstrip("0")
    if len(whole) > MAX_WHOLE_DIGITS:
        return NotANumber(f"is too large (at most {MAX_WHOLE_DIGITS} digits before the decimal mark)")
    if len(frac) > MAX_DECIMALS:
        return NotANumber(f"has too many decimals (at most {MAX_DECIMALS})")
    value = Decimal(f"{sign}{whole or '0'}.{frac or '0'}")
    value = abs(value) if value == 0 else value  # "-0" is 0
    return value.quantize(Decimal(1)) if not frac else value


def _split(s: str, point_thousands_ambiguous: bool) -> tuple[str, str] | NotANumber:
    """(whole digits, decimal digits) of an unsigned number, its separators read."""
    commas, points = s.count(","), s.count(".")
    if "_" in s:
        if commas or not _UNDERSCORED.fullmatch(s):
            return NotANumber("is not a number")
        whole, _, frac = s.replace("_", "").partition(".")
        return whole, frac
    if commas and points:
        mark = "," if s.rfind(",") > s.rfind(".") else "."
        group = "." if mark == "," else ","
        whole, _, frac = s.rpartition(mark)
        if s.count(mark) != 1 or not frac or not _grouped(whole, group):
            return NotANumber(f"mixes a comma and a point: type it without a thousands separator, e.g. {_example(s)}")
        return whole.replace(group, ""), frac
    if commas > 1 or points > 1:
        sep = "," if commas else "."
        if not _grouped(s, sep):
            name = "commas" if commas else "points"
            return NotANumber(f"has several {name}: type it without a thousands separator, e.g. 1.5")
        return s.replace(sep, ""), ""
    if commas:
        whole, _, frac = s.partition(",")
        if not frac:
            return NotANumber("is not a number")
        if len(frac) == 3 and _LEAD_GROUP.fullmatch(whole):
            return whole + frac, ""  # 12,000: thousands, as the bot writes amounts
        if len(frac) == 3 and whole.strip("0"):
            return NotANumber(f"is ambiguous: a comma before three digits separates thousands; type "
                              f"{whole}{frac} or {whole}.{frac}")
        return whole, frac
    whole, _, frac = s.partition(".")
    if point_thousands_ambiguous and len(frac) == 3 and _LEAD_GROUP.fullmatch(whole):
        small = _plain(Decimal(f"{whole}.{frac}"))
        return NotANumber(f"is ambiguous: {whole}{frac} or {small}? Type {whole}{frac} or {small}, without a "
                          "thousands separator")
    if not whole and not frac:
        return NotANumber("is not a number")
    return whole, frac


def _grouped(text: str, sep: str) -> bool:
    """``1,234,567``: a first group of one to three digits, then groups of exactly three."""
    head, *rest = text.split(sep)
    return bool(rest) and bool(_LEAD_GROUP.fullmatch(head)) and all(len(g) == 3 and g.isascii() and g.isdigit()
                                                                    for g in rest)


def _example(s: str) -> str:
    """``1,234.5`` and ``1.234,5`` as one would write them here: 1234.5."""
    cut = max(s.rfind(","), s.rfind("."))
    return (s[:cut].replace(",", "").replace(".", "") or "0") + "." + s[cut + 1:]


def _plain(d: Decimal) -> str:
    return f"{d.normalize():f}"


def read_whole(text: str, lo: int = 1, hi: int = 10**MAX_WHOLE_DIGITS - 1, *,
               hash_ok: bool = False) -> int | NotANumber:
    """A whole number from ``lo`` to ``hi`` (a count, a lot or order number, years); ``hash_ok``
    allows a leading ``#`` (``/why #3``)."""
    s = text.strip()
    if hash_ok and s.startswith("#"):
        s = s[1:]
    value = read_number(s, point_thousands_ambiguous=True)
    if isinstance(value, NotANumber):
        return value
    if value != value.to_integral_value():
        return NotANumber("is not a whole number")
    if not lo <= value <= hi:
        return NotANumber(f"is not from {lo:,} to {hi:,}" if hi < 10**MAX_WHOLE_DIGITS - 1 else
                          f"is less than {lo:,}")
    return int(value)
