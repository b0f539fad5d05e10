"""The fake gateway's market: QQQ along a `PricePath` (or at a price a test sets), QQQM at a fixed
ratio, QQQ options priced by the sim's Black–Scholes–Merton pricer (`broker.sim_options`), and
daily bars for historical requests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from broker.sim_market import QQQM_RATIO, DailyBar, IvSource, PricePath
from broker.sim_options import OptionPricer, chain_strikes
from strategy.calendar import NY, SessionCalendar, nyse
from strategy.model import OptionContract, OptionQuote

CENT = Decimal("0.01")
STOCKS = {"QQQ": 1.0, "QQQM": QQQM_RATIO}


def _cents(x: float) -> Decimal:
    return Decimal(round(x * 100)) / 100


@dataclass
class StockQuote:
    bid: Decimal
    ask: Decimal
    last: Decimal
    close: Decimal | None


class FakeMarket:
    """Prices as a function of time; ``spot`` (when set) overrides the path."""

    def __init__(self, bars: list[DailyBar], *, calendar: SessionCalendar | None = None, iv: float = 0.22,
                 rate: float = 0.04, dividend_yield: float = 0.006, seed: int = 3) -> None:
        self.calendar = calendar or nyse()
        self.bars = {b.day: b for b in bars}
        self.path = PricePath.from_bars(bars, self.calendar, seed=seed)
        self.iv = IvSource.constant(iv)
        self.pricer = OptionPricer(self.calendar, self.iv, rate, dividend_yield)
        self.spot: float | None = None

    def spot_at(self, now: datetime) -> float:
        return self.spot if self.spot is not None else self.path.price_at(now)

    def stock_quote(self, symbol: str, now: datetime) -> StockQuote | None:
        ratio = STOCKS.get(symbol)
        if ratio is None:
            return None
        last = _cents(self.spot_at(now) * ratio)
        day = now.astimezone(NY).date()
        prev = self.path.prev_close(day)
        return StockQuote(last - CENT, last + CENT, last, _cents(prev * ratio) if prev is not None else None)

    def option_quote(self, c: OptionContract, now: datetime) -> OptionQuote | None:
        return self.pricer.quote(c, now, self.spot_at(now), self.iv.iv(now.astimezone(NY).date()))

    def is_listed(self, c: OptionContract, now: datetime) -> bool:
        return self.pricer.is_listed(c) and c.expiry >= now.astimezone(NY).date()

    def expiries(self, now: datetime) -> tuple[date, ...]:
        return self.pricer.expiries(now)

    def strikes(self, now: datetime) -> tuple[Decimal, ...]:
        return chain_strikes(self.spot_at(now))

    def daily_bars(self, symbol: str, now: datetime, end: datetime | None, days: int) -> list[DailyBar]:
        """Bars of ``symbol`` for sessions up to ``end`` (default now; today's bar is partial)."""
        ratio = STOCKS.get(symbol)
        if ratio is None:
            return []
        end = min(end or now, now)
        out = []
        start = end - timedelta(days=days)
        for s in self.path.sessions:
            if s.open > end or s.day < start.astimezone(NY).date():
                continue
            b = self.bars[s.day]
            close = self.path.close_of(s.day) if end >= s.close else self.path.price_at(end)
            assert close is not None
            out.append(DailyBar(s.day, round(b.open * ratio, 2), round(b.high * ratio, 2), round(b.low * ratio, 2),
                                round(close * ratio, 2)))
        return out


def fixed_now(t: datetime) -> Callable[[], datetime]:
    if t.tzinfo is None:
        raise ValueError("aware datetime needed")
    return lambda: t.astimezone(UTC)
