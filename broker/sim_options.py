"""The `sim` broker's QQQ option chain: listed expiries (monthly third Fridays and LEAPS) and
strikes, and Black–Scholes–Merton quotes with a mild skew and a realistic spread."""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from broker.sim_market import IvSource
from strategy.calendar import NY, SessionCalendar
from strategy.model import OPTION_MULTIPLIER, OptionContract, OptionQuote
from strategy.pricing import bs_price_delta

CENT = Decimal("0.01")
YEAR_S = 365.0 * 86400
LEAPS_MONTHS = (1, 6, 12)


def third_friday(year: int, month: int) -> date:
    d = date(year, month, 15)
    return d + timedelta(days=(4 - d.weekday()) % 7)


def listed_expiry(calendar: SessionCalendar, year: int, month: int) -> date:
    """The month's standard expiry: its third Friday, or the session before when that Friday is
    a holiday (within the calendar's range)."""
    d = third_friday(year, month)
    if calendar.first <= d <= calendar.last and not calendar.is_session(d):
        prev = calendar.previous_session(d)
        if prev is not None:
            return prev.day
    return d


@functools.lru_cache(maxsize=4096)
def expiry_close(expiry: date) -> datetime:
    """When a contract stops trading: 16:00 New York on its expiry day (UTC)."""
    return datetime.combine(expiry, time(16, 0), NY).astimezone(UTC)


def chain_strikes(spot: float) -> tuple[Decimal, ...]:
    """Whole-dollar strikes (step 1 below a 150 spot, else 5) over ~0.5×–1.5× spot."""
    step = 1 if spot < 150 else 5
    lo = max(int(spot * 0.5 // step * step), step)
    hi = int(spot * 1.5 // step * step) + step
    return tuple(Decimal(k) for k in range(lo, hi + 1, step))


class OptionPricer:
    """Prices any listed QQQ option (listed once means quotable until it expires)."""

    def __init__(self, calendar: SessionCalendar, iv: IvSource, rate: float, dividend_yield: float) -> None:
        self.calendar = calendar
        self.iv = iv
        self.r = rate
        self.q = dividend_yield
        self._contracts: dict[OptionContract, tuple[float, datetime] | None] = {}

    def expiries(self, now: datetime) -> tuple[date, ...]:
        """Listed as of ``now``: the next 13 monthly expiries and Jan/Jun/Dec of the next 3 years."""
        today = now.astimezone(NY).date()
        out: set[date] = set()
        y, m = today.year, today.month
        for k in range(13):
            out.add(listed_expiry(self.calendar, y + (m - 1 + k) // 12, (m - 1 + k) % 12 + 1))
        for yy in range(y + 1, y + 4):
            for mm in LEAPS_MONTHS:
                out.add(listed_expiry(self.calendar, yy, mm))
        return tuple(sorted(e for e in out if expiry_close(e) > now))

    def _terms(self, c: OptionContract) -> tuple[float, datetime] | None:
        """(strike, expiry instant) of a contract this market lists, else None (cached)."""
        try:
            return self._contracts[c]
        except KeyError:
            pass
        ok = (
            c.symbol == "QQQ" and c.right in ("C", "P") and c.multiplier == OPTION_MULTIPLIER
            and c.strike > 0 and c.strike == c.strike.to_integral_value()
            and listed_expiry(self.calendar, c.expiry.year, c.expiry.month) == c.expiry
        )
        terms = (float(c.strike), expiry_close(c.expiry)) if ok else None
        self._contracts[c] = terms
        return terms

    def is_listed(self, c: OptionContract) -> bool:
        return self._terms(c) is not None

    def model(
        self, c: OptionContract, now: datetime, spot: float, base_iv: float
    ) -> tuple[float, float, float] | None:
        """(model value, delta, volatility) the quote is made of, before any rounding; None when not
        listed or expired. A quote with a positive bid has its mid within half a cent of the value
        (the bid is rounded to the cent, the ask is bid + spread), and its bid is positive only
        when the value exceeds 3 cents (bid = round(value − spread / 2), spread ≥ 5 cents)."""
        terms = self._terms(c)
        if terms is None:
            return None
        K, close = terms
        T = (close - now).total_seconds() / YEAR_S
        if T <= 0:
            return None
        skew = min(max(-0.06 * (K / spot - 1.0), -0.05), 0.08)  # low strikes richer, like QQQ's smile
        sigma = max(base_iv + skew, 0.05)
        mid, delta = bs_price_delta(spot, K, T, self.r, self.q, sigma, c.right)
        return mid, delta, sigma

    def quote(self, c: OptionContract, now: datetime, spot: float, base_iv: float) -> OptionQuote | None:
        """A quote, or None when the contract is not listed or has expired."""
        m = self.model(c, now, spot, base_iv)
        if m is None:
            return None
        mid, delta, sigma = m
        cents = mid * 100
        spread = max(5, round(cents * 0.015))  # 1.5 % of the mid, at least 0.05
        bid = round(cents - spread / 2)
        if bid >= 1:
            ask = bid + spread
        else:
            bid, ask = 0, max(1, round(cents + spread / 2))
        return OptionQuote(c, Decimal(bid) / 100, Decimal(ask) / 100, now, delta=delta, iv=sigma, min_tick=CENT)

    def mark(self, c: OptionContract, now: datetime, spot: float, base_iv: float) -> Decimal | None:
        """The mid of the quote; an expired contract is worth its intrinsic value."""
        q = self.quote(c, now, spot, base_iv)
        if q is not None:
            return q.mid
        if self._terms(c) is None:
            return None
        K = float(c.strike)
        value = max(spot - K, 0.0) if c.right == "C" else max(K - spot, 0.0)
        return Decimal(round(value * 100)) / 100
