"""The simulated QQQ option market: one model, used by the `sim` broker and the backtest, of how
real QQQ options are quoted (issue 19). Pure: every input is passed in.

What a quote is made of, for a contract of strike ``K`` expiring in ``T`` years, when QQQ is at
``S`` and the 30-day volatility index (VXN) last closed at ``I``:

1. **Term structure.** The at-the-money variance for ``T`` mean-reverts from the index's toward a
   long-run level, as the expected average variance of a mean-reverting (Heston-type) variance:
   ``v(T) = θ² + (I² − θ²) · g(κT) / g(κτ₀)``, ``g(x) = (1 − e^(−x)) / x``, ``τ₀`` = 30 days,
   ``σ_atm = √v``. So a one-year option moves far less than the index: with the defaults, VXN
   23 → 27 moves the 16-month ATM volatility by about 0.6 point (real February 2026 LEAPS: ~23 %
   on both days).
2. **Skew.** ``σ = σ_atm − s · ln(K/F) / √T`` (``F = S·e^((r−q)T)``), kept within
   [``vol_floor_ratio`` · σ_atm, σ_atm + ``skew_cap``]. Real QQQ LEAPS calls: s ≈ 0.27 on every
   expiry and day of February 2026.
3. **Price and delta**: Black–Scholes–Merton at σ with the rate ``r`` and dividend yield ``q``.
4. **Spread**: ``(spread_floor · S · e^(−z²/2) + spread_pct · mid) · (1 + spread_wing · |z|)
   · (1 + spread_stress · max(0, I/θ − 1))`` with ``z = ln(K/F) / (σ_atm√T)`` (the dollar part
   falls away from the money like vega, as market makers quote in volatility; so a far
   out-of-the-money LEAPS worth a dollar or two still shows a bid), shrunk in proportion to ``T`` below
   ``spread_tenor_years``, at least ``MIN_SPREAD`` (5 cents). Real 0.55–0.65-delta LEAPS:
   median $5.00, about 5.6 % of the mid, on a calm and a stressed day alike (on the first LEAPS
   expiry only 2–3 of the 17–18 strikes within 0.6 ± 0.1 delta quoted under 5 % of their mid).

The volatility and the moneyness use ``T`` counted in whole days from the quote's date, so within
one session a contract's volatility depends on QQQ's price only, not on the time of day (the
backtest's fast-forward bounds the value's time decay at a fixed volatility). The price uses the
exact time to the expiry's close.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import date
from typing import Any

from strategy.listing import ListingRules
from strategy.pricing import bs_price_delta

__all__ = ["DEFAULT_PARAMS", "MIN_SPREAD", "MarketDay", "MarketParams", "atm_vol", "quote_cents", "spread",
           "surface_vol"]

MIN_SPREAD = 0.05  # dollars: the sim never quotes tighter (6 cents once made even; its fast-forward relies on ≥ 5)
INDEX_TENOR_DAYS = 30  # VXN is a 30-day volatility
_MIN_VAR = 0.02 ** 2


@dataclass(frozen=True, slots=True)
class MarketParams:
    """The option market's parameters, each with its default and its reason.

    - ``long_run_vol`` θ = 0.219: where long-dated at-the-money QQQ volatility settles; fitted
      (`qqq-bot calibrate`, κ held at 6) to the February 2026 LEAPS fixture built from issue 19's
      figures (``tests/chains/``). The median VXN close of 2001-02 → 2026-04 is 21.2 % (the
      shared ``vxn_daily.csv``): the same order.
    - ``reversion`` κ = 6.0 a year (half-life of an index shock ln 2/κ ≈ 6 weeks): fitted so that
      VXN 23 → 27 moves ~16-month ATM volatility by well under a point, as on the real chain of
      2026-02-11/13; fast-factor estimates of VIX mean reversion are of this order.
    - ``skew`` s = 0.27: real QQQ LEAPS calls, IV falls 0.27 × ln(K/F)/√T (February 2026).
    - ``skew_cap`` = 0.30, ``vol_floor_ratio`` = 0.5: bounds of the linear skew, which would
      otherwise run away on short expiries far from the money (not calibrated; nothing here
      trades them).
    - ``spread_floor`` = 0.0039 (of QQQ's price: 2.34 USD at 600, at the money) and
      ``spread_pct`` = 0.0246: fitted to the same fixture (0.55–0.65-delta LEAPS quoted a median
      ~5.6 % of their mid on the calm and the −2 % day; the model gives 5.5–5.6 %). Out of the
      money the dollar part makes the spread a larger share of a smaller mid, as on the real
      chain. It scales with QQQ's price, so QQQ at 40 (2005) is not quoted 2 USD wide.
    - ``spread_wing`` = 0.25: spreads widen away from the money (per standard deviation of
      moneyness); a modest guess, real deep in- and out-of-the-money LEAPS quote wider.
    - ``spread_stress`` = 0.25: spreads widen when the index is above θ (per 100 % above);
      small because real LEAPS spreads were the same on the calm and the −2 % day (the fit gives
      0.21; the guess is kept, erring wide).
    - ``spread_tenor_years`` = 1.0: spreads of expiries shorter than a year shrink in proportion
      (the calibration is of LEAPS; near-dated spreads are not calibrated).
    - ``rate`` = 3.5 % and ``dividend_yield`` = 0.6 %: r − q = 2.9 %, what real February 2026 QQQ
      LEAPS prices implied (2.8–3 %); QQQ's yield is about 0.5–0.7 %. A backtest can take the
      rate from a dated series instead (``--rate PATH:COLUMN``, e.g. the 3-month T-bill).
    - ``listing``: the expiries listed (``strategy.listing.ListingRules``).
    """

    long_run_vol: float = 0.219
    reversion: float = 6.0
    skew: float = 0.27
    skew_cap: float = 0.30
    vol_floor_ratio: float = 0.5
    spread_floor: float = 0.0039
    spread_pct: float = 0.0246
    spread_wing: float = 0.25
    spread_stress: float = 0.25
    spread_tenor_years: float = 1.0
    rate: float = 0.035
    dividend_yield: float = 0.006
    listing: ListingRules = dataclasses.field(default_factory=ListingRules)

    def __post_init__(self) -> None:
        checks = {
            "long_run_vol": 0.01 <= self.long_run_vol <= 3, "reversion": 0 <= self.reversion <= 100,
            "skew": -2 <= self.skew <= 2, "skew_cap": 0 <= self.skew_cap <= 3,
            "vol_floor_ratio": 0 < self.vol_floor_ratio <= 1, "spread_floor": 0 <= self.spread_floor <= 0.5,
            "spread_pct": 0 <= self.spread_pct <= 1, "spread_wing": 0 <= self.spread_wing <= 10,
            "spread_stress": 0 <= self.spread_stress <= 10, "spread_tenor_years": 0 < self.spread_tenor_years <= 10,
            "rate": -0.05 <= self.rate <= 0.5, "dividend_yield": 0 <= self.dividend_yield <= 0.5,
        }
        bad = [k for k, ok in checks.items() if not (ok and math.isfinite(float(getattr(self, k))))]
        if bad:
            raise ValueError(f"option market parameter(s) out of range: {', '.join(bad)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON), the listing rules as a nested object."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "listing"}
        out["listing"] = {f.name: (list(v) if isinstance(v := getattr(self.listing, f.name), tuple) else v)
                          for f in dataclasses.fields(self.listing)}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MarketParams:
        """The inverse of ``to_dict``; unknown keys raise ValueError, missing ones keep their default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown option market parameter(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for k, v in data.items():
            if k == "listing":
                if not isinstance(v, dict):
                    raise ValueError("listing must be an object")
                lk = {f.name for f in dataclasses.fields(ListingRules)}
                if set(v) - lk:
                    raise ValueError(f"unknown listing rule(s): {', '.join(sorted(set(v) - lk))}")
                rules: dict[str, Any] = {n: (tuple(int(m) for m in x) if isinstance(x, list) else int(x))
                                         for n, x in v.items()}
                values[k] = ListingRules(**rules)
            else:
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise ValueError(f"{k} must be a number")
                values[k] = float(v)
        return cls(**values)

    def replace(self, **changes: float) -> MarketParams:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


DEFAULT_PARAMS = MarketParams()


@dataclass(frozen=True, slots=True)
class MarketDay:
    """What a quote may know at its instant: its New York date (the volatility's clock), the
    30-day index level known then (a fraction), the rate and the dividend yield."""

    day: date
    index: float
    rate: float
    dividend_yield: float


def _g(x: float) -> float:
    return 1.0 - x / 2 + x * x / 6 if abs(x) < 1e-6 else (1.0 - math.exp(-x)) / x


def atm_vol(p: MarketParams, index: float, T: float) -> float:
    """At-the-money volatility for ``T`` years from the 30-day index level (term structure)."""
    theta2 = p.long_run_vol * p.long_run_vol
    ratio = _g(p.reversion * T) / _g(p.reversion * INDEX_TENOR_DAYS / 365.0)
    return math.sqrt(max(theta2 + (index * index - theta2) * ratio, _MIN_VAR))


def surface_vol(p: MarketParams, index: float, T: float, log_moneyness: float) -> float:
    """The volatility of strike ``K`` at ``ln(K/F)`` and ``T`` years (term structure and skew)."""
    atm = atm_vol(p, index, T)
    vol = atm - p.skew * log_moneyness / math.sqrt(T)
    return min(max(vol, p.vol_floor_ratio * atm), atm + p.skew_cap)


def spread(p: MarketParams, spot: float, mid: float, index: float, T: float, log_moneyness: float) -> float:
    """The bid/ask spread in dollars (before rounding to the cent)."""
    z = log_moneyness / (atm_vol(p, index, T) * math.sqrt(T))  # standard deviations from the money
    dollars = p.spread_floor * spot * math.exp(-0.5 * z * z)  # like vega: a far strike is quoted in fewer dollars
    wing = 1.0 + p.spread_wing * abs(z)
    stress = 1.0 + p.spread_stress * max(0.0, index / p.long_run_vol - 1.0)
    tenor = min(1.0, T / p.spread_tenor_years)
    return max(MIN_SPREAD, (dollars + p.spread_pct * max(mid, 0.0)) * wing * stress * tenor)


def vol_years(day: date, expiry: date) -> float:
    """The time the volatility is taken at: whole days from ``day`` to ``expiry`` (at least one)."""
    return max((expiry - day).days, 1) / 365.0


def model_value(p: MarketParams, m: MarketDay, spot: float, strike: float, expiry: date, T: float,
                right: str) -> tuple[float, float, float, float]:
    """(value, delta, volatility, ln(K/F)) of a contract ``T`` years (exact) from its expiry."""
    tv = vol_years(m.day, expiry)
    x = math.log(strike / (spot * math.exp((m.rate - m.dividend_yield) * tv)))
    sigma = surface_vol(p, m.index, tv, x)
    value, delta = bs_price_delta(spot, strike, T, m.rate, m.dividend_yield, sigma, right)
    return value, delta, sigma, x


def quote_cents(p: MarketParams, m: MarketDay, spot: float, value: float, expiry: date,
                x: float) -> tuple[int, int]:
    """(bid, ask) in cents around a model value: the bid rounded to the cent, the ask bid + spread,
    the spread an even number of cents (at least 6), so the mid is a whole cent and a limit at the mid
    is exactly the mid; a value too small for a positive bid is quoted 0 / its value plus half the
    spread."""
    cents = value * 100
    width = max(6, 2 * round(spread(p, spot, value, m.index, vol_years(m.day, expiry), x) * 50))
    bid = round(cents - width / 2)
    if bid >= 1:
        return bid, bid + width
    return 0, max(1, round(cents + width / 2))
