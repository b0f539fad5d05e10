"""Contract selection from a chain snapshot: the expiry and the strike of a new LEAPS call."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from strategy.model import OptionContract, OptionQuote
from strategy.pricing import bs_delta, implied_vol
from strategy.settings import StrategySettings

HUNDRED = Decimal(100)
DAYS_PER_YEAR = 365.0


def select_expiry(expiries: Sequence[date], today: date, min_dte: int) -> date | None:
    """The earliest listed expiry with DTE ≥ min_dte."""
    eligible = [e for e in expiries if (e - today).days >= min_dte]
    return min(eligible) if eligible else None


def years_to_expiry(expiry: date, today: date) -> float:
    """T in years for pricing: calendar days / 365."""
    return max((expiry - today).days, 0) / DAYS_PER_YEAR


def quote_delta(q: OptionQuote, spot: Decimal, today: date, settings: StrategySettings) -> float | None:
    """The broker's model delta when present, else BSM delta with the volatility implied by the mid."""
    if q.delta is not None and math.isfinite(q.delta):
        return q.delta
    mid = q.mid
    if mid is None or mid <= 0:
        return None
    T = years_to_expiry(q.contract.expiry, today)
    r = float(settings.risk_free_rate / HUNDRED)
    dq = float(settings.dividend_yield / HUNDRED)
    S, K = float(spot), float(q.contract.strike)
    sigma = implied_vol(float(mid), S, K, T, r, dq, q.contract.right)
    if sigma is None:
        return None
    return bs_delta(S, K, T, r, dq, sigma, q.contract.right)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A strike that passed the filters, with the delta it was judged on."""

    quote: OptionQuote
    delta: float

    @property
    def contract(self) -> OptionContract:
        return self.quote.contract


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why no contract could be chosen, for the one alert of the session."""

    reason: str


def spread_ok(q: OptionQuote, settings: StrategySettings) -> bool:
    """(ask − bid) / mid ≤ max_spread_pct."""
    mid, spread = q.mid, q.spread
    if mid is None or spread is None or mid <= 0:
        return False
    return spread / mid <= settings.max_spread_pct / HUNDRED


def select_strike(
    quotes: Sequence[OptionQuote], spot: Decimal, today: date, settings: StrategySettings
) -> Candidate | Rejection:
    """The call with delta closest to target_delta among strikes with |delta − target| ≤
    delta_tolerance, bid > 0 and (ask − bid) / mid ≤ max_spread_pct."""
    target = float(settings.target_delta)
    tol = float(settings.delta_tolerance)
    best: Candidate | None = None
    seen = quoted = in_band = 0
    for q in quotes:
        if q.contract.right != "C":
            continue
        seen += 1
        if q.bid is None or q.bid <= 0 or q.ask is None or q.ask < q.bid:
            continue
        quoted += 1
        d = quote_delta(q, spot, today, settings)
        if d is None or abs(d - target) > tol + 1e-12:
            continue
        in_band += 1
        if not spread_ok(q, settings):
            continue
        if best is None or abs(d - target) < abs(best.delta - target) or (
            abs(d - target) == abs(best.delta - target) and q.contract.strike < best.contract.strike
        ):
            best = Candidate(q, d)
    if best is not None:
        return best
    if seen == 0:
        return Rejection("no call quotes for the chosen expiry")
    if quoted == 0:
        return Rejection(f"none of {seen} calls has a bid")
    if in_band == 0:
        return Rejection(f"no call with delta within {settings.delta_tolerance} of {settings.target_delta}")
    return Rejection(f"every call near delta {settings.target_delta} has a spread above {settings.max_spread_pct} %")


def estimate_target_strike(spot: float, T: float, sigma: float, settings: StrategySettings) -> float:
    """The strike whose BSM call delta equals target_delta (bisection on K; delta falls as K rises)."""
    r = float(settings.risk_free_rate / HUNDRED)
    q = float(settings.dividend_yield / HUNDRED)
    target = float(settings.target_delta)
    lo, hi = spot * 0.05, spot * 5.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if bs_delta(spot, mid, max(T, 1e-6), r, q, sigma, "C") > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def strike_window(
    strikes: Sequence[Decimal], spot: Decimal, T: float, iv_guess: float, settings: StrategySettings, width: int = 8
) -> list[Decimal]:
    """A narrow window of about ``width`` listed strikes around the estimated target strike, so a
    broker need not quote the whole chain."""
    ordered = sorted(set(strikes))
    if not ordered:
        return []
    k = estimate_target_strike(float(spot), T, iv_guess, settings)
    centre = min(range(len(ordered)), key=lambda i: abs(float(ordered[i]) - k))
    lo = max(0, centre - width // 2)
    hi = min(len(ordered), lo + width)
    lo = max(0, hi - width)
    return ordered[lo:hi]


def best_at_window_edge(candidate: Candidate, window: Sequence[Decimal]) -> bool:
    """True when the chosen strike sits at the window's edge, so the window should widen."""
    return bool(window) and candidate.contract.strike in (window[0], window[-1])
