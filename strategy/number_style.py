"""The one number style of every reply and alert, so a phone shows the same figure the same way
everywhere:

- money: two decimals, a comma between thousands, the currency after: ``12,000.00 USD``;
- a signed figure (a change, a P&L): ``+`` or a real minus ``−`` (U+2212), and zero unsigned:
  ``+0.30 %``, ``−0.96 %``, ``0.00 %``, ``−380.00 USD``; never ``-0.0``;
- a percent has a space before ``%``: ``1.5 %``;
- a quantity is ``× 1``.

``restyle`` brings a text written elsewhere (an engine alert, a journal line) to this style, so
the replies stay consistent whatever module wrote the words. Pure: no I/O."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal

MINUS = "\u2212"


def _q(value: Decimal, places: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)


def signed(value: Decimal, places: int = 2, thousands: bool = True) -> str:
    """``+1,234.50``, ``−0.96``, ``0.00``: the sign of what is shown (a value that rounds to zero has none)."""
    q = _q(Decimal(value), places)
    body = f"{abs(q):,.{places}f}" if thousands else f"{abs(q):.{places}f}"
    if q == 0:
        return body
    return ("+" if q > 0 else MINUS) + body


def plain(value: Decimal, places: int = 2) -> str:
    """``12,000.00`` (a minus sign only when negative)."""
    q = _q(Decimal(value), places)
    body = f"{abs(q):,.{places}f}"
    return body if q >= 0 else MINUS + body


def usd(value: Decimal | None, *, sign: bool = False, currency: str = "USD") -> str:
    """``12,000.00 USD``; ``+380.00 USD`` / ``−380.00 USD`` with ``sign``; ``—`` for unknown."""
    if value is None:
        return "—"
    text = signed(value) if sign else plain(value)
    return f"{text} {currency}" if currency else text


def percent(value: Decimal | None, places: int = 2, *, sign: bool = True) -> str:
    """``+0.30 %``, ``−1.00 %``, ``0.00 %``; ``1.5 %`` without ``sign``; ``—`` for unknown."""
    if value is None:
        return "—"
    if sign:
        return f"{signed(value, places)} %"
    return f"{plain(value, places)} %"


def price(value: Decimal | None) -> str:
    """A price per share or contract: ``591.05``, ``1,240.50``."""
    return "—" if value is None else plain(value)


def quantity(n: int) -> str:
    return f"× {n}"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 fill``, ``2 fills``, ``0 lots``; ``many`` for an irregular plural (``expiry``/``expiries``)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def pool_text(pool: Decimal, threshold: Decimal) -> str:
    """The recycling pool in words: what it holds, or the losses to earn back first."""
    if pool < 0:
        return f"{usd(-pool)} of losses to earn back before recycling"
    if pool >= threshold:
        return f"{usd(pool)} of profits, enough to buy QQQM"
    return f"{usd(pool)} of profits; QQQM is bought from {usd(threshold)}"


# --- bringing a text written elsewhere to the style -----------------------------------------------------

_PERCENT_GLUED = re.compile(r"(?<=\d)%")
_NEG = re.compile(r"(?<![\w.:/-])-(?=\d)")  # "-0.96", "(-380": a minus, never a date's or a range's dash
_NEG_ZERO = re.compile(r"[" + MINUS + r"+](0(?:\.0+)?)(?=\s?%|\s?USD|\b)(?![.\d])")
_TIMES = re.compile(r"(?<=\s)x(\d+)\b")
_BIG = re.compile(r"(?<![\w.,:/-])(\d{4,})(\.\d{2})?(?=\s?USD\b)")


def _grouped(m: re.Match[str]) -> str:
    return f"{int(m.group(1)):,}" + (m.group(2) or "")


def restyle(text: str) -> str:
    """The number style applied to a text another module wrote: a space before ``%``, a real minus,
    no sign on a zero, ``× N`` for ``xN``, thousands grouped in USD amounts."""
    text = _PERCENT_GLUED.sub(" %", text)
    text = _NEG.sub(MINUS, text)
    text = _NEG_ZERO.sub(r"\1", text)
    text = _TIMES.sub(r"× \1", text)
    return _BIG.sub(_grouped, text)
