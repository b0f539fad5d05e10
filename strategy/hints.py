"""What people mean when a value reads as something else: ``/set tp 50%`` (one target for every
day?) and ``/set delta 60`` or ``60%`` (a delta is 0.05–0.95: 0.60?). Each is answered with the
exact command to send; nothing is stored. Pure."""

from __future__ import annotations

import re
from decimal import Decimal

from strategy.settings import SettingError, StrategySettings, format_value, parse_setting, resolve_key, valid_text

_NUMBER = re.compile(r"\s*([0-9]+(?:[.,][0-9]+)?)\s*(%?)\s*")
_DELTAS = ("target_delta", "delta_tolerance")


def _number(text: str) -> Decimal | None:
    m = _NUMBER.fullmatch(text)
    return Decimal(m.group(1).replace(",", ".")) if m else None


def _tiers_words(settings: StrategySettings) -> str:
    return ", ".join(f"+{p.normalize():f} % from day {d}" for d, p in settings.tp_tiers)


def typing_hint(settings: StrategySettings, key_text: str, value_text: str) -> str | None:
    """The command the person most likely meant, in words with the command to send (HTML-free), or
    None when the value is not one of these slips."""
    key = resolve_key(key_text)
    value = _number(value_text)
    if key is None or value is None:
        return None
    typed = key_text.strip()
    if key == "tp_tiers":
        now = format_value(key, settings.tp_tiers)
        return (f"Take-profit tiers are day:percent pairs, now {now} ({_tiers_words(settings)}). One target "
                f"for every day, whatever the holding? Send /set {typed} 0:{value.normalize():f}. To change one tier, "
                f"send them all, e.g. /set {typed} {now}")
    if key in _DELTAS and Decimal(1) < value <= Decimal(100):
        meant = (value / 100).quantize(Decimal("0.01"))
        if isinstance(parse_setting(settings, key, str(meant)), SettingError):
            return None  # not a percent of a valid delta either: the range is the answer
        return (f"A delta is a number from 0 to 1 ({valid_text(settings, key)}). Did you mean {meant}? Send "
                f"/set {typed} {meant}")
    return None
