"""Fitting the option market's parameters to real quotes (`qqq-bot calibrate`). Pure.

Two stages, each a small Nelder–Mead search (no dependency; a handful of parameters):

1. **Prices**: ``long_run_vol``, ``reversion`` and ``skew`` minimise the squared log error of the
   model's value against each quote's mid.
2. **Spreads**: ``spread_floor``, ``spread_pct``, ``spread_wing`` and ``spread_stress`` minimise
   the squared error of the model's spread, in percent of the mid, against the quote's.

Quotes used: calls and puts with a bid, an ask above it and an implied volatility (so a delta);
every other parameter (rate, dividend yield, listing, caps) is kept as given. The report compares
the median errors before and after, by delta band and by expiry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from statistics import median

from strategy.option_market import MarketDay, MarketParams, model_value, spread, vol_years
from strategy.pricing import bs_delta, implied_vol

__all__ = ["ErrorRow", "Fit", "RealQuote", "error_table", "fit", "nelder_mead", "quote_errors"]

PRICE_KEYS = ("long_run_vol", "reversion", "skew")
SPREAD_KEYS = ("spread_floor", "spread_pct", "spread_wing", "spread_stress")
DELTA_BANDS = ((0.0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 1.01))


@dataclass(frozen=True, slots=True)
class RealQuote:
    """One real quote and what the model knows at its time: QQQ's price, the 30-day index level
    known then, the rate and dividend yield, and the exact years to the expiry's close."""

    day: date
    expiry: date
    strike: float
    right: str
    bid: float
    ask: float
    spot: float
    index: float
    rate: float
    dividend_yield: float
    T: float

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2

    @property
    def spread_pct(self) -> float:
        return 100 * (self.ask - self.bid) / self.mid

    def delta(self) -> float | None:
        """The real quote's delta (from its mid's implied volatility); None without one."""
        iv = implied_vol(self.mid, self.spot, self.strike, self.T, self.rate, self.dividend_yield, self.right)
        if iv is None:
            return None
        return bs_delta(self.spot, self.strike, self.T, self.rate, self.dividend_yield, iv, self.right)


def usable(quotes: Sequence[RealQuote]) -> list[tuple[RealQuote, float]]:
    """The quotes a fit can use, each with its delta."""
    out = []
    for q in quotes:
        if q.bid > 0 and q.ask > q.bid and q.T > 0:
            d = q.delta()
            if d is not None:
                out.append((q, d))
    return out


def model_of(p: MarketParams, q: RealQuote) -> tuple[float, float]:
    """(model value, model spread in percent of the model value) for a real quote's contract."""
    m = MarketDay(q.day, q.index, q.rate, q.dividend_yield)
    value, _, _, x = model_value(p, m, q.spot, q.strike, q.expiry, q.T, q.right)
    width = spread(p, q.spot, value, q.index, vol_years(q.day, q.expiry), x)
    return value, (100 * width / value if value > 0 else math.inf)


def nelder_mead(f: Callable[[list[float]], float], x0: Sequence[float], step: Sequence[float], *,
                iterations: int = 2000, tol: float = 1e-12) -> tuple[list[float], float]:
    """Minimise ``f`` from ``x0`` (initial simplex ``x0 + step_i e_i``); (best point, its value)."""
    n = len(x0)
    simplex = [list(x0)] + [[x0[j] + (step[i] if j == i else 0.0) for j in range(n)] for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iterations):
        order = sorted(range(n + 1), key=lambda i: values[i])
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        if abs(values[-1] - values[0]) <= tol * (abs(values[0]) + tol):
            break
        centroid = [sum(x[j] for x in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]
        reflected = [c + (c - w) for c, w in zip(centroid, worst, strict=True)]
        fr = f(reflected)
        if fr < values[0]:
            expanded = [c + 2 * (c - w) for c, w in zip(centroid, worst, strict=True)]
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            inside = fr >= values[-1]
            contracted = ([c + 0.5 * (w - c) for c, w in zip(centroid, worst, strict=True)] if inside
                          else [c + 0.5 * (r - c) for c, r in zip(centroid, reflected, strict=True)])
            fc = f(contracted)
            if fc < min(values[-1], fr):
                simplex[-1], values[-1] = contracted, fc
            else:  # shrink toward the best
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (x - b) for b, x in zip(best, xs, strict=True)] for xs in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    i = min(range(n + 1), key=lambda k: values[k])
    return simplex[i], values[i]


_BAD = 1e12


def _with(p: MarketParams, keys: Sequence[str], values: Sequence[float]) -> MarketParams | None:
    try:
        return p.replace(**dict(zip(keys, values, strict=True)))
    except ValueError:
        return None  # out of range: the search is told it is bad


def _price_loss(p: MarketParams, data: list[tuple[RealQuote, float]]) -> float:
    total = 0.0
    for q, _ in data:
        value, _ = model_of(p, q)
        if value <= 0:
            return _BAD
        total += math.log(value / q.mid) ** 2
    return total / len(data)


def _spread_loss(p: MarketParams, data: list[tuple[RealQuote, float]]) -> float:
    total = 0.0
    for q, _ in data:
        _, pct = model_of(p, q)
        if not math.isfinite(pct):
            return _BAD
        total += (pct - q.spread_pct) ** 2
    return total / len(data)


def _stage(p: MarketParams, keys: Sequence[str], loss: Callable[[MarketParams], float],
           restarts: int = 3) -> MarketParams:
    """Nelder–Mead over ``keys`` (on a log scale for positive ones), restarted from its own best."""
    logs = [getattr(p, k) > 0 and k != "skew" for k in keys]

    def to_params(x: list[float]) -> MarketParams | None:
        vals = [math.exp(v) if lg else v for v, lg in zip(x, logs, strict=True)]
        return _with(p, keys, vals)

    def f(x: list[float]) -> float:
        q = to_params(x)
        return _BAD if q is None else loss(q)

    x = [math.log(getattr(p, k)) if lg else getattr(p, k) for k, lg in zip(keys, logs, strict=True)]
    for _ in range(restarts):
        x, _ = nelder_mead(f, x, [0.3 if lg else 0.1 for lg in logs])
    best = to_params(x)
    return best if best is not None else p


@dataclass(frozen=True, slots=True)
class Fit:
    start: MarketParams
    params: MarketParams
    quotes: int  # used by the fit


def fit(start: MarketParams, quotes: Sequence[RealQuote]) -> Fit:
    """Fit the price, then the spread parameters, starting from ``start``."""
    data = usable(quotes)
    if not data:
        raise ValueError("no usable quote (each needs a bid, an ask above it and an implied volatility)")
    p = _stage(start, PRICE_KEYS, lambda q: _price_loss(q, data))
    p = _stage(p, SPREAD_KEYS, lambda q: _spread_loss(q, data))
    return Fit(start, p, len(data))


@dataclass(frozen=True, slots=True)
class ErrorRow:
    """Median errors of one group of quotes: mid error in % of the real mid, spreads in % of mid."""

    group: str
    count: int
    mid_error: float
    real_spread: float
    model_spread: float


def quote_errors(p: MarketParams, q: RealQuote) -> tuple[float, float]:
    """(mid error in %, model spread in % of its mid) for one quote."""
    value, pct = model_of(p, q)
    return 100 * (value / q.mid - 1), pct


def error_table(p: MarketParams, quotes: Sequence[RealQuote], *, min_days: int = 0) -> list[ErrorRow]:
    """Median errors by delta band and by expiry (quotes at least ``min_days`` from expiry), and all."""
    data = [(q, d) for q, d in usable(quotes) if (q.expiry - q.day).days >= min_days]
    groups: dict[str, list[RealQuote]] = {}
    for q, d in data:
        band = next(f"delta {lo:.1f}–{min(hi, 1.0):.1f}" for lo, hi in DELTA_BANDS if lo <= abs(d) < hi)
        groups.setdefault(band, []).append(q)
    for q, _ in sorted(data, key=lambda x: x[0].expiry):
        groups.setdefault(f"expiry {q.expiry.isoformat()}", []).append(q)
    groups["all"] = [q for q, _ in data]
    rows = []
    for name, qs in groups.items():
        errs = [quote_errors(p, q) for q in qs]
        rows.append(ErrorRow(name, len(qs), median(e[0] for e in errs), median(q.spread_pct for q in qs),
                             median(e[1] for e in errs)))
    return rows
