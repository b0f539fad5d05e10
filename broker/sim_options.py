"""The `sim` broker's QQQ option chain: the expiries QQQ lists at each date (`strategy.listing`),
strikes, and quotes from the calibrated option market (`strategy.option_market`).

No look-ahead: a quote sees the 30-day index (VXN) of the last close before it. During a session
that is the previous session's close (today's close is not known before 16:00); at or after the
close, and on days without a session, the latest close on or before the day. The rate from a dated
series is read ``RATE_LAG_DAYS`` before the day, so a monthly average (FRED's TB3MS is dated the
first of its month) is used only once its month is over."""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from broker.sim_market import CashRate, IvSource
from strategy.calendar import NY, SessionCalendar
from strategy.listing import is_expiry_date, listed_expiries, monthly_expiry, third_friday
from strategy.model import OPTION_MULTIPLIER, OptionContract, OptionQuote
from strategy.option_market import DEFAULT_PARAMS, MarketDay, MarketParams, model_value, quote_cents

__all__ = ["CENT", "RATE_LAG_DAYS", "YEAR_S", "OptionPricer", "chain_strikes", "expiry_close", "listed_expiry",
           "third_friday"]

CENT = Decimal("0.01")
YEAR_S = 365.0 * 86400
RATE_LAG_DAYS = 32


def listed_expiry(calendar: SessionCalendar, year: int, month: int) -> date:
    """The month's standard expiry: its third Friday, or the session before when that Friday is
    a holiday."""
    return monthly_expiry(calendar, year, month)


@functools.lru_cache(maxsize=4096)
def expiry_close(expiry: date) -> datetime:
    """When a contract stops trading: 16:00 New York on its expiry day (UTC)."""
    return datetime.combine(expiry, time(16, 0), NY).astimezone(UTC)


def chain_strikes(spot: float) -> tuple[Decimal, ...]:
    """Whole-dollar strikes (step 1 below a 150 spot, else 5) over ~0.5×–1.5× spot (real QQQ
    LEAPS are listed every 5 dollars: 17–18 strikes within 0.6 ± 0.1 delta in February 2026)."""
    step = 1 if spot < 150 else 5
    lo = max(int(spot * 0.5 // step * step), step)
    hi = int(spot * 1.5 // step * step) + step
    return tuple(Decimal(k) for k in range(lo, hi + 1, step))


class OptionPricer:
    """Prices any listed QQQ option (listed once means quotable until it expires) with the
    option market's parameters. ``rate``/``dividend_yield``, when given, replace the parameters'
    constants; ``rate_series`` (a dated series) replaces the rate."""

    def __init__(self, calendar: SessionCalendar, iv: IvSource, rate: float | None = None,
                 dividend_yield: float | None = None, *, params: MarketParams | None = None,
                 rate_series: CashRate | None = None) -> None:
        params = params or DEFAULT_PARAMS
        if rate is not None:
            params = params.replace(rate=rate)
        if dividend_yield is not None:
            params = params.replace(dividend_yield=dividend_yield)
        self.params = params
        self.calendar = calendar
        self.iv = iv
        self.rate_series = rate_series
        self.q = params.dividend_yield
        self._contracts: dict[OptionContract, tuple[float, datetime] | None] = {}
        self._days: dict[tuple[date, bool], MarketDay] = {}

    def rate(self, day: date) -> float:
        """The rate in force on ``day`` (a series is read ``RATE_LAG_DAYS`` earlier)."""
        if self.rate_series is None:
            return self.params.rate
        return self.rate_series.rate(day - timedelta(days=RATE_LAG_DAYS))

    def index_at(self, now: datetime) -> float:
        """The 30-day index level known at ``now``: the last close strictly before it."""
        day = now.astimezone(NY).date()
        s = self.calendar.session(day)
        return self.iv.before(day) if s is not None and now < s.close else self.iv.iv(day)

    def state(self, now: datetime) -> MarketDay:
        """What a quote at ``now`` knows (cached per day and side of the close)."""
        day = now.astimezone(NY).date()
        s = self.calendar.session(day)
        before_close = s is not None and now < s.close
        key = (day, before_close)
        m = self._days.get(key)
        if m is None:
            index = self.iv.before(day) if before_close else self.iv.iv(day)
            m = self._days[key] = MarketDay(day, index, self.rate(day), self.q)
        return m

    def _day(self, now: datetime, base: float | MarketDay) -> MarketDay:
        if isinstance(base, MarketDay):
            return base
        day = now.astimezone(NY).date()  # a bare index level: the pricer's own rate and yield
        return MarketDay(day, float(base), self.rate(day), self.q)

    def expiries(self, now: datetime) -> tuple[date, ...]:
        """Listed as of ``now`` and not yet expired (``strategy.listing``)."""
        today = now.astimezone(NY).date()
        return tuple(e for e in listed_expiries(self.calendar, today, self.params.listing) if expiry_close(e) > now)

    def _terms(self, c: OptionContract) -> tuple[float, datetime] | None:
        """(strike, expiry instant) of a contract this market lists, else None (cached)."""
        try:
            return self._contracts[c]
        except KeyError:
            pass
        ok = (
            c.symbol == "QQQ" and c.right in ("C", "P") and c.multiplier == OPTION_MULTIPLIER
            and c.strike > 0 and c.strike == c.strike.to_integral_value()
            and is_expiry_date(self.calendar, c.expiry)
        )
        terms = (float(c.strike), expiry_close(c.expiry)) if ok else None
        self._contracts[c] = terms
        return terms

    def is_listed(self, c: OptionContract) -> bool:
        return self._terms(c) is not None

    def _model(self, c: OptionContract, now: datetime, spot: float,
               m: MarketDay) -> tuple[float, float, float, float] | None:
        terms = self._terms(c)
        if terms is None:
            return None
        K, close = terms
        T = (close - now).total_seconds() / YEAR_S
        if T <= 0:
            return None
        return model_value(self.params, m, spot, K, c.expiry, T, c.right)

    def model(self, c: OptionContract, now: datetime, spot: float,
              base: float | MarketDay) -> tuple[float, float, float] | None:
        """(model value, delta, volatility) the quote is made of, before any rounding; None when not
        listed or expired. A quote with a positive bid has its mid within half a cent of the value
        (the bid is rounded to the cent, the ask is bid + spread), and its bid is positive only
        when the value exceeds 3 cents (bid = round(value − spread / 2), spread ≥ 5 cents).
        ``base`` is what the quote knows (``state(now)``), or a bare 30-day index level."""
        r = self._model(c, now, spot, self._day(now, base))
        return None if r is None else r[:3]

    def quote(self, c: OptionContract, now: datetime, spot: float, base: float | MarketDay) -> OptionQuote | None:
        """A quote, or None when the contract is not listed or has expired."""
        m = self._day(now, base)
        r = self._model(c, now, spot, m)
        if r is None:
            return None
        value, delta, sigma, x = r
        bid, ask = quote_cents(self.params, m, spot, value, c.expiry, x)
        return OptionQuote(c, Decimal(bid) / 100, Decimal(ask) / 100, now, delta=delta, iv=sigma, min_tick=CENT)

    def mark(self, c: OptionContract, now: datetime, spot: float, base: float | MarketDay) -> Decimal | None:
        """The mid of the quote; an expired contract is worth its intrinsic value."""
        q = self.quote(c, now, spot, base)
        if q is not None:
            return q.mid
        if self._terms(c) is None:
            return None
        K = float(c.strike)
        value = max(spot - K, 0.0) if c.right == "C" else max(K - spot, 0.0)
        return Decimal(round(value * 100)) / 100
