"""Performance figures of an equity curve, as pure functions (used by the backtest report)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from itertools import pairwise

TRADING_DAYS = 252


def cagr(start_value: float, end_value: float, start: date, end: date) -> float:
    """Compound annual growth rate between two dates (calendar years of 365.25 days)."""
    years = (end - start).days / 365.25
    if start_value <= 0 or years <= 0:
        return 0.0
    if end_value <= 0:
        return -1.0
    return float((end_value / start_value) ** (1.0 / years) - 1.0)


def max_drawdown_pct(values: Sequence[float]) -> float:
    """The largest peak-to-trough fall of the curve, in percent (a positive number)."""
    peak = -math.inf
    worst = 0.0
    for v in values:
        peak = max(peak, v)
        if peak > 0:
            worst = max(worst, (peak - v) / peak)
    return worst * 100.0


def daily_returns(values: Sequence[float]) -> list[float]:
    return [b / a - 1.0 for a, b in pairwise(values) if a > 0]


def sharpe(values: Sequence[float], risk_free_rate: float = 0.0) -> float:
    """Annualized Sharpe ratio of daily returns (sample standard deviation; 0 if undefined)."""
    rets = daily_returns(values)
    if len(rets) < 2:
        return 0.0
    rf_daily = risk_free_rate / TRADING_DAYS
    excess = [r - rf_daily for r in rets]
    mean = sum(excess) / len(excess)
    var = sum((r - mean) ** 2 for r in excess) / (len(excess) - 1)
    sd = math.sqrt(var)
    return 0.0 if sd == 0 else mean / sd * math.sqrt(TRADING_DAYS)


def win_rate(pnls: Sequence[float]) -> float:
    """Share of closed lots with a positive realized P&L (0 when none closed)."""
    return sum(1 for p in pnls if p > 0) / len(pnls) if pnls else 0.0


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ascending; tied values share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on the tie-averaged ranks); None with fewer than three
    pairs or when either side is all ties."""
    if len(xs) != len(ys):
        raise ValueError("spearman needs two sequences of the same length")
    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def _years_later(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def worst_window_cagr(days: Sequence[date], values: Sequence[float], years: int = 5) -> float | None:
    """The worst CAGR over any stretch of ``years`` calendar years of the curve: from each day to the
    first day at least ``years`` later (None when the curve is shorter than that)."""
    if len(days) != len(values):
        raise ValueError("worst_window_cagr needs one value per day")
    worst: float | None = None
    j = 0
    for i, start in enumerate(days):
        target = _years_later(start, years)
        j = max(j, i + 1)
        while j < len(days) and days[j] < target:
            j += 1
        if j == len(days):
            break
        c = cagr(values[i], values[j], start, days[j])
        worst = c if worst is None else min(worst, c)
    return worst


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) by linear interpolation between the closest ranks (the
    common definition, numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be 0–100")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
