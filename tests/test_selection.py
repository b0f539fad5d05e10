"""Contract selection from a chain snapshot."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from strategy.model import OptionContract, OptionQuote
from strategy.pricing import bs_delta, bs_price
from strategy.selection import (
    Candidate,
    Rejection,
    estimate_target_strike,
    select_expiry,
    select_strike,
    strike_window,
    years_to_expiry,
)
from strategy.settings import StrategySettings

S = StrategySettings()
TODAY = date(2025, 3, 3)
NOW = datetime(2025, 3, 3, 16, tzinfo=UTC)
EXP = date(2026, 6, 18)
D = Decimal


def chain(spot: float, sigma: float = 0.22, spread_pct: float = 0.02, greeks: bool = True) -> list[OptionQuote]:
    T = years_to_expiry(EXP, TODAY)
    out = []
    for k in range(300, 701, 5):
        mid = bs_price(spot, k, T, 0.04, 0.006, sigma, "C")
        half = max(mid * spread_pct / 2, 0.01)
        bid = D(str(round(mid - half, 2)))
        ask = D(str(round(mid + half, 2)))
        delta = bs_delta(spot, k, T, 0.04, 0.006, sigma, "C") if greeks else None
        out.append(OptionQuote(OptionContract("QQQ", EXP, D(k)), bid, ask, NOW, delta=delta))
    return out


def test_expiry_is_the_earliest_with_enough_days() -> None:
    exps = [date(2025, 12, 19), date(2026, 3, 2), date(2026, 3, 3), date(2026, 6, 18), date(2027, 1, 15)]
    assert select_expiry(exps, TODAY, 365) == date(2026, 3, 3)
    assert select_expiry(exps, TODAY, 366) == date(2026, 6, 18)
    assert select_expiry(exps[:2], TODAY, 365) is None


def test_strike_closest_to_target_delta() -> None:
    c = select_strike(chain(500), D(500), TODAY, S)
    assert isinstance(c, Candidate)
    assert abs(c.delta - 0.6) <= 0.02
    others = [q for q in chain(500) if q.delta is not None]
    assert all(abs(c.delta - 0.6) <= abs(q.delta - 0.6) for q in others)


def test_bsm_delta_from_the_mid_when_broker_sends_no_greeks() -> None:
    with_greeks = select_strike(chain(500), D(500), TODAY, S)
    without = select_strike(chain(500, greeks=False), D(500), TODAY, S)
    assert isinstance(with_greeks, Candidate) and isinstance(without, Candidate)
    assert abs(with_greeks.contract.strike - without.contract.strike) <= 5


def test_wide_spreads_and_no_bids_are_rejected() -> None:
    r = select_strike(chain(500, spread_pct=0.10), D(500), TODAY, S)  # above the default 8 %
    assert isinstance(r, Rejection) and "spread" in r.reason
    no_bid = [OptionQuote(q.contract, D(0), q.ask, q.time, q.delta) for q in chain(500)]
    r = select_strike(no_bid, D(500), TODAY, S)
    assert isinstance(r, Rejection) and "bid" in r.reason


def test_tolerance_band() -> None:
    narrow = [q for q in chain(500) if q.delta is not None and abs(q.delta - 0.6) > 0.12]
    r = select_strike(narrow, D(500), TODAY, S)
    assert isinstance(r, Rejection) and "delta" in r.reason


def test_strike_window_contains_the_choice() -> None:
    strikes = [q.contract.strike for q in chain(500)]
    T = years_to_expiry(EXP, TODAY)
    window = strike_window(strikes, D(500), T, 0.22, S, width=8)
    assert len(window) == 8
    best = select_strike(chain(500), D(500), TODAY, S)
    assert isinstance(best, Candidate) and window[0] < best.contract.strike < window[-1]
    k = estimate_target_strike(500, T, 0.22, S)
    assert abs(bs_delta(500, k, T, 0.04, 0.006, 0.22, "C") - 0.6) < 1e-6
