"""Black–Scholes–Merton: known values and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from strategy.pricing import bs_delta, bs_price, implied_vol

spot = st.floats(min_value=5, max_value=2000)
moneyness = st.floats(min_value=0.5, max_value=2.0)
years = st.floats(min_value=0.02, max_value=3.0)
rate = st.floats(min_value=0.0, max_value=0.1)
div = st.floats(min_value=0.0, max_value=0.05)
vol = st.floats(min_value=0.05, max_value=1.5)


def test_textbook_value() -> None:
    # Hull: S=42, K=40, r=10 %, sigma=20 %, T=0.5 → call 4.76, put 0.81.
    assert bs_price(42, 40, 0.5, 0.10, 0.0, 0.20, "C") == pytest.approx(4.76, abs=0.005)
    assert bs_price(42, 40, 0.5, 0.10, 0.0, 0.20, "P") == pytest.approx(0.81, abs=0.005)


def test_bad_right_refused() -> None:
    with pytest.raises(ValueError):
        bs_price(100, 100, 1, 0, 0, 0.2, "X")


@given(S=spot, m=moneyness, T=years, r=rate, q=div, sigma=vol)
def test_put_call_parity(S: float, m: float, T: float, r: float, q: float, sigma: float) -> None:
    K = S * m
    c = bs_price(S, K, T, r, q, sigma, "C")
    p = bs_price(S, K, T, r, q, sigma, "P")
    assert c - p == pytest.approx(S * math.exp(-q * T) - K * math.exp(-r * T), rel=1e-9, abs=1e-9 * S)


@given(S=spot, m=moneyness, T=years, r=rate, q=div, sigma=vol)
def test_call_delta_in_unit_interval(S: float, m: float, T: float, r: float, q: float, sigma: float) -> None:
    d = bs_delta(S, S * m, T, r, q, sigma, "C")
    assert 0.0 <= d <= 1.0
    assert bs_delta(S, S * m, T, r, q, sigma, "P") == pytest.approx(d - math.exp(-q * T), abs=1e-12)


@given(S=spot, m=moneyness, T=years, r=rate, q=div, sigma=vol, bump=st.floats(min_value=1.001, max_value=1.5))
def test_call_price_and_delta_monotone_in_spot(S: float, m: float, T: float, r: float, q: float,
                                                sigma: float, bump: float) -> None:
    K = S * m
    assert bs_price(S * bump, K, T, r, q, sigma, "C") >= bs_price(S, K, T, r, q, sigma, "C") - 1e-9
    assert bs_delta(S * bump, K, T, r, q, sigma, "C") >= bs_delta(S, K, T, r, q, sigma, "C") - 1e-12


@given(S=spot, m=moneyness, T=years, r=rate, q=div, sigma=vol, right=st.sampled_from(["C", "P"]))
def test_implied_vol_recovers_sigma(S: float, m: float, T: float, r: float, q: float, sigma: float,
                                    right: str) -> None:
    K = S * m
    price = bs_price(S, K, T, r, q, sigma, right)
    # Deep out-of-the-money options carry too little vega to pin sigma down.
    assume(price > 1e-4 * S)
    iv = implied_vol(price, S, K, T, r, q, right)
    assert iv is not None
    assert bs_price(S, K, T, r, q, iv, right) == pytest.approx(price, rel=1e-6, abs=1e-6)


def test_implied_vol_none_below_intrinsic() -> None:
    assert implied_vol(1.0, 150, 100, 1.0, 0.04, 0.0, "C") is None
    assert implied_vol(0.0, 100, 100, 1.0, 0.04, 0.0, "C") is None
