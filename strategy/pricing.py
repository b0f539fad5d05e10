"""Black–Scholes–Merton with a continuous dividend yield.

``S`` spot, ``K`` strike, ``T`` years to expiry, ``r`` risk-free rate and ``q`` dividend yield as
fractions (0.04 = 4 %), ``sigma`` annual volatility as a fraction, ``right`` "C" or "P".
Floats on purpose: this is model arithmetic, not money; callers round to a tick as Decimal.
"""

from __future__ import annotations

import math

_SQRT2 = math.sqrt(2.0)
_MIN_T = 1e-9


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / _SQRT2)


def _norm_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _check_right(right: str) -> None:
    if right not in ("C", "P"):
        raise ValueError(f"right must be 'C' or 'P', got {right!r}")


def _d1_d2(S: float, K: float, T: float, r: float, q: float, sigma: float) -> tuple[float, float]:
    vol_t = sigma * math.sqrt(T)
    d1 = (math.log(S / K) + (r - q + 0.5 * sigma * sigma) * T) / vol_t
    return d1, d1 - vol_t


def bs_price(S: float, K: float, T: float, r: float, q: float, sigma: float, right: str) -> float:
    """Black–Scholes–Merton price of a European option with continuous dividend yield."""
    _check_right(right)
    if S <= 0 or K <= 0:
        raise ValueError("S and K must be positive")
    disc_q = math.exp(-q * max(T, 0.0))
    disc_r = math.exp(-r * max(T, 0.0))
    if T <= _MIN_T or sigma <= 0:
        forward_intrinsic = S * disc_q - K * disc_r
        return max(forward_intrinsic, 0.0) if right == "C" else max(-forward_intrinsic, 0.0)
    d1, d2 = _d1_d2(S, K, T, r, q, sigma)
    if right == "C":
        return S * disc_q * _norm_cdf(d1) - K * disc_r * _norm_cdf(d2)
    return K * disc_r * _norm_cdf(-d2) - S * disc_q * _norm_cdf(-d1)


def bs_delta(S: float, K: float, T: float, r: float, q: float, sigma: float, right: str) -> float:
    """Black–Scholes–Merton delta (dV/dS) with continuous dividend yield."""
    _check_right(right)
    if S <= 0 or K <= 0:
        raise ValueError("S and K must be positive")
    disc_q = math.exp(-q * max(T, 0.0))
    if T <= _MIN_T or sigma <= 0:
        itm = S * disc_q > K * math.exp(-r * max(T, 0.0))
        if right == "C":
            return disc_q if itm else 0.0
        return 0.0 if itm else -disc_q
    d1, _ = _d1_d2(S, K, T, r, q, sigma)
    if right == "C":
        return disc_q * _norm_cdf(d1)
    return disc_q * (_norm_cdf(d1) - 1.0)


def bs_price_delta(
    S: float, K: float, T: float, r: float, q: float, sigma: float, right: str
) -> tuple[float, float]:
    """Price and delta together (one d1/d2 evaluation), for quoting many contracts."""
    if T <= _MIN_T or sigma <= 0:
        return bs_price(S, K, T, r, q, sigma, right), bs_delta(S, K, T, r, q, sigma, right)
    _check_right(right)
    d1, d2 = _d1_d2(S, K, T, r, q, sigma)
    disc_q = math.exp(-q * T)
    disc_r = math.exp(-r * T)
    n1 = _norm_cdf(d1)
    if right == "C":
        return S * disc_q * n1 - K * disc_r * _norm_cdf(d2), disc_q * n1
    return K * disc_r * _norm_cdf(-d2) - S * disc_q * _norm_cdf(-d1), disc_q * (n1 - 1.0)


def bs_time_bound(S: float, K: float, T_min: float, T_max: float, r: float, q: float, sigma: float) -> float:
    """An upper bound of |∂V/∂T| for a call or a put over ``T_min ≤ T ≤ T_max`` (``T_min > 0``):
    ∂V/∂T is a sum of ±q·S·e^(−qT)·N(·), ±r·K·e^(−rT)·N(·) and S·e^(−qT)·φ(d1)·σ / (2√T), each
    bounded with N ≤ 1, φ ≤ 1/√(2π), e^(−xT) ≤ e^(|x|·T_max). So V moves by at most this times the
    time elapsed, whatever the sign of theta."""
    if not 0 < T_min <= T_max:
        raise ValueError("bs_time_bound needs 0 < T_min <= T_max")
    grow_q = math.exp(abs(q) * T_max)
    grow_r = math.exp(abs(r) * T_max)
    return (abs(q) * S * grow_q + abs(r) * K * grow_r
            + S * grow_q * abs(sigma) / (2.0 * math.sqrt(2.0 * math.pi * T_min)))


def bs_vega(S: float, K: float, T: float, r: float, q: float, sigma: float) -> float:
    """dV/dsigma, the same for calls and puts."""
    if T <= _MIN_T or sigma <= 0:
        return 0.0
    d1, _ = _d1_d2(S, K, T, r, q, sigma)
    return S * math.exp(-q * T) * _norm_pdf(d1) * math.sqrt(T)


def implied_vol(
    price: float,
    S: float,
    K: float,
    T: float,
    r: float,
    q: float,
    right: str,
    *,
    low: float = 1e-4,
    high: float = 5.0,
    tol: float = 1e-8,
) -> float | None:
    """The volatility at which ``bs_price`` equals ``price``; None when no volatility can (price
    below the no-arbitrage bound or above the upper bound) or the inputs are unusable."""
    _check_right(right)
    if not (price > 0 and S > 0 and K > 0 and T > _MIN_T) or not math.isfinite(price):
        return None
    lo_price = bs_price(S, K, T, r, q, low, right)
    hi_price = bs_price(S, K, T, r, q, high, right)
    if price < lo_price - tol or price > hi_price + tol:
        return None
    # Newton from a sensible start, guarded by bisection bounds.
    a, b = low, high
    sigma = 0.3
    for _ in range(100):
        p = bs_price(S, K, T, r, q, sigma, right)
        diff = p - price
        if abs(diff) < tol:
            return sigma
        if diff > 0:
            b = sigma
        else:
            a = sigma
        vega = bs_vega(S, K, T, r, q, sigma)
        step_ok = False
        if vega > 1e-12:
            nxt = sigma - diff / vega
            if a < nxt < b:
                sigma, step_ok = nxt, True
        if not step_ok:
            sigma = 0.5 * (a + b)
        if b - a < 1e-12:
            return sigma
    return sigma
