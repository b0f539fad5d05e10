"""The `sim` broker's account: cash by currency, the positions its fills build, and (for a mixed
account) fixed other holdings the bot must show but never trade."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from broker.base import AccountSummary, Execution, Instrument, Position, PositionCategory, StockContract
from broker.sim_options import third_friday
from strategy.model import OptionContract

EUR_USD = Decimal("1.08")  # fixed conversion rate of the simulated account
MIXED_EUR_CASH = Decimal(5000)

MarkFn = Callable[[Instrument], Decimal | None]


def multiplier(ins: Instrument) -> int:
    return ins.multiplier if isinstance(ins, OptionContract) else 1


@dataclass
class Holding:
    """A position built by fills; ``cost`` is the total cost of the open quantity."""

    instrument: Instrument
    qty: int = 0
    cost: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class StaticHolding:
    """A holding the bot did not open, at a constant price."""

    category: PositionCategory
    symbol: str
    description: str
    qty: Decimal
    price: Decimal
    currency: str = "USD"
    multiplier: int = 1
    contract: Instrument | None = None

    @property
    def value(self) -> Decimal:
        return self.price * self.qty * self.multiplier


def mixed_holdings(today: date) -> tuple[StaticHolding, ...]:
    """Stocks, a SPY put (expiring in January two years on) and a Treasury bond."""
    put = OptionContract("SPY", third_friday(today.year + 2, 1), Decimal(450), "P")
    return (
        StaticHolding("stock", "AAPL", "Apple Inc.", Decimal(50), Decimal("190.00"), contract=StockContract("AAPL")),
        StaticHolding("stock", "MSFT", "Microsoft Corp.", Decimal(30), Decimal("410.00"),
                      contract=StockContract("MSFT")),
        StaticHolding("option", "SPY", put.key, Decimal(1), Decimal("12.40"), multiplier=100, contract=put),
        StaticHolding("bond", "US91282CGM73", "US Treasury 3.5% 2033-02-15 (1,000 face each)", Decimal(10),
                      Decimal("965.00")),
    )


@dataclass
class SimAccount:
    cash: dict[str, Decimal]
    static: tuple[StaticHolding, ...] = ()
    holdings: dict[str, Holding] = field(default_factory=dict)

    def held(self, ins: Instrument) -> int:
        h = self.holdings.get(ins.key)
        return h.qty if h is not None else 0

    @property
    def usd(self) -> Decimal:
        return self.cash.get("USD", Decimal(0))

    def adopt(self, ins: Instrument, qty: int, cost: Decimal) -> None:
        if qty <= 0:
            raise ValueError("an adopted position needs a positive quantity")
        h = self.holdings.setdefault(ins.key, Holding(ins))
        h.qty += qty
        h.cost += cost

    def book(self, ex: Execution) -> None:
        """Apply one execution (with its commission) to cash and positions."""
        ins = ex.instrument
        amount = ex.price * ex.qty * multiplier(ins)
        fee = ex.commission or Decimal(0)
        h = self.holdings.setdefault(ins.key, Holding(ins))
        if ex.side == "BUY":
            self.cash["USD"] = self.usd - amount - fee
            h.cost += amount
            h.qty += ex.qty
        else:
            self.cash["USD"] = self.usd + amount - fee
            if h.qty > 0:
                h.cost -= h.cost * min(ex.qty, h.qty) / h.qty
            h.qty -= ex.qty
        if h.qty == 0:
            del self.holdings[ins.key]

    def settle_expired(self, expired: Callable[[OptionContract], bool], mark: MarkFn) -> list[OptionContract]:
        """Options past their expiry leave the account; one in the money is settled in cash at its
        intrinsic value (``mark``). A simplification: real QQQ options are exercised into shares."""
        gone = []
        for key, h in list(self.holdings.items()):
            ins = h.instrument
            if isinstance(ins, OptionContract) and expired(ins):
                value = (mark(ins) or Decimal(0)) * h.qty * multiplier(ins)
                self.cash["USD"] = self.usd + value
                del self.holdings[key]
                gone.append(ins)
        return gone

    def positions(self, mark: MarkFn) -> list[Position]:
        """Every holding: the bot's (marked by ``mark``), the fixed ones, then cash by currency."""
        out: list[Position] = []
        for h in self.holdings.values():
            ins = h.instrument
            mult = multiplier(ins)
            px = mark(ins)
            out.append(Position(
                "option" if isinstance(ins, OptionContract) else "stock", ins.symbol, ins.key, Decimal(h.qty),
                (h.cost / h.qty / mult).quantize(Decimal("0.0001")) if h.qty else Decimal(0), px,
                px * h.qty * mult if px is not None else None, "USD", ins,
            ))
        for s in self.static:
            out.append(Position(s.category, s.symbol, s.description, s.qty, s.price, s.price, s.value, s.currency,
                                s.contract))
        for cur, amount in self.cash.items():
            out.append(Position("cash", cur, f"{cur} cash", amount, Decimal(1), Decimal(1), amount, cur))
        return out

    def summary(self, mark: MarkFn) -> AccountSummary:
        """Net liquidation in USD (EUR at a fixed rate); options are bought with USD cash."""
        value = Decimal(0)
        for h in self.holdings.values():
            px = mark(h.instrument)
            value += (px or Decimal(0)) * h.qty * multiplier(h.instrument)
        value += sum((s.value * (EUR_USD if s.currency == "EUR" else 1) for s in self.static), Decimal(0))
        cash_usd = sum((amt * (EUR_USD if cur == "EUR" else 1) for cur, amt in self.cash.items()), Decimal(0))
        return AccountSummary(
            net_liquidation=(cash_usd + value).quantize(Decimal("0.01")),
            cash_by_currency=dict(self.cash),
            buying_power=self.usd,
            available_funds_usd=self.usd,
            extra={"gross_position_value": value.quantize(Decimal("0.01")), "EURUSD": EUR_USD},
        )
