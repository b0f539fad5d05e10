"""The one broker interface the engine uses; `broker.sim` and `broker.ib` implement it.

Orders are identified by the bot's own ``order_ref`` (written to the database before the order is
sent); the broker's id is informational. Events (executions, late commission reports, order status
and connection changes) reach the engine through a ``BrokerListener`` and may arrive at any time,
including after a cancel or before ``place_order`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal, Protocol, runtime_checkable

from strategy.model import OptionContract, OptionQuote, Quote, Side

BrokerMode = Literal["sim", "paper", "live"]
MarketDataKind = Literal["live", "delayed"]


@dataclass(frozen=True, slots=True)
class StockContract:
    """A stock or ETF traded in USD, e.g. QQQ or QQQM."""

    symbol: str
    currency: str = "USD"

    @property
    def key(self) -> str:
        return self.symbol


Instrument = StockContract | OptionContract


def sec_type(instrument: Instrument) -> Literal["STK", "OPT"]:
    return "OPT" if isinstance(instrument, OptionContract) else "STK"


class ConnectionState(StrEnum):
    CONNECTED = "connected"
    DEGRADED = "degraded"  # connected but e.g. only delayed data, or the farm is down
    DOWN = "down"


class OrderStatus(StrEnum):
    SUBMITTED = "submitted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        return self in (OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED)


@dataclass(frozen=True, slots=True)
class OrderLeg:
    instrument: Instrument
    action: Side
    ratio: int = 1


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A DAY limit order. One leg: ``limit`` is the price per share of that leg and the order's
    side is the leg's action. Several legs (a combo): the combo is bought ``qty`` times at a net
    ``limit`` per share (positive = debit paid, negative = credit received)."""

    order_ref: str
    legs: tuple[OrderLeg, ...]
    qty: int
    limit: Decimal

    @property
    def is_combo(self) -> bool:
        return len(self.legs) > 1

    @property
    def action(self) -> Side:
        return self.legs[0].action if not self.is_combo else "BUY"


PRICE_TICK = Decimal("0.01")


def limit_problem(limit: Decimal, combo: bool) -> str | None:
    """A single leg's limit is positive (a combo's may be a credit); every limit is on the 0.01 tick."""
    if not limit.is_finite() or (not combo and limit <= 0):
        return f"the limit price must be positive, got {limit}"
    if limit.quantize(PRICE_TICK) != limit:
        return f"limit {limit} does not conform to the 0.01 price increment"
    return None


def request_problem(req: OrderRequest) -> str | None:
    """What is wrong with an order's shape, if anything: a reference, a positive quantity, 1:1 legs,
    a combo of two different options on one underlying (one BUY, one SELL), a valid limit. Every
    broker refuses such an order before it is sent; instruments are the broker's to check."""
    if not req.order_ref:
        return "an order needs an order reference"
    if req.qty <= 0:
        return f"the quantity must be positive, got {req.qty}"
    if not req.legs:
        return "an order needs at least one leg"
    if any(leg.ratio != 1 for leg in req.legs):
        return "only 1:1 legs are supported"
    if req.is_combo:
        a, b = req.legs[0].instrument, req.legs[-1].instrument
        if len(req.legs) != 2 or sorted(leg.action for leg in req.legs) != ["BUY", "SELL"] \
                or not isinstance(a, OptionContract) or not isinstance(b, OptionContract) \
                or a == b or a.symbol != b.symbol:
            return "a combo must have two different option legs on one underlying, one BUY and one SELL"
    return limit_problem(req.limit, req.is_combo)


@dataclass(frozen=True, slots=True)
class Execution:
    """One fill of one leg. ``exec_id`` is unique for ever; ``commission`` may come later in a
    ``CommissionReport``."""

    exec_id: str
    order_ref: str
    broker_order_id: str
    instrument: Instrument
    side: Side
    qty: int
    price: Decimal
    time: datetime
    commission: Decimal | None = None


@dataclass(frozen=True, slots=True)
class CommissionReport:
    exec_id: str
    commission: Decimal


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    order_ref: str
    broker_order_id: str
    status: OrderStatus
    filled: int
    remaining: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """An order the broker still works (for reconciliation)."""

    order_ref: str
    broker_order_id: str
    request: OrderRequest
    status: OrderStatus
    filled: int


@dataclass(frozen=True, slots=True)
class DailyBar:
    """One session's open, high, low and close."""

    day: date
    open: float
    high: float
    low: float
    close: float


@dataclass(frozen=True, slots=True)
class OptionChain:
    """Listed expiries and strikes of an underlying (strikes may be a superset for some expiries)."""

    symbol: str
    expiries: tuple[date, ...]
    strikes: tuple[Decimal, ...]


PositionCategory = Literal["stock", "option", "bond", "cash"]


@dataclass(frozen=True, slots=True)
class Position:
    """A holding of the account, whoever opened it. ``avg_cost`` and ``market_price`` are per
    share (an option's per-contract figure divided by its multiplier)."""

    category: PositionCategory
    symbol: str
    description: str
    qty: Decimal
    avg_cost: Decimal
    market_price: Decimal | None
    market_value: Decimal | None
    currency: str = "USD"
    contract: Instrument | None = None


@dataclass(frozen=True, slots=True)
class AccountSummary:
    net_liquidation: Decimal
    cash_by_currency: dict[str, Decimal]
    buying_power: Decimal
    available_funds_usd: Decimal
    base_currency: str = "USD"
    extra: dict[str, Decimal] = field(default_factory=dict)


class BrokerError(Exception):
    """A broker answer the user should hear about (rejected order, no market data, ...)."""


class LiveAccountRefused(BrokerError):
    """The account is live (real money) and ALLOW_LIVE_TRADING is not set: the bot must not run."""


@runtime_checkable
class BrokerListener(Protocol):
    def on_execution(self, execution: Execution) -> None: ...

    def on_commission(self, report: CommissionReport) -> None: ...

    def on_order_update(self, update: OrderUpdate) -> None: ...

    def on_connection(self, state: ConnectionState, detail: str) -> None: ...


class Broker(Protocol):
    """What the engine needs of a broker. Every method may raise ``BrokerError``."""

    name: str
    supports_combo: bool

    @property
    def mode(self) -> BrokerMode: ...

    @property
    def state(self) -> ConnectionState: ...

    @property
    def detail(self) -> str:
        """A human line about the connection (shown beside a state that is not CONNECTED); may be ""."""
        ...

    @property
    def market_data(self) -> MarketDataKind | None:
        """"live" or "delayed" (15 minutes old, never traded on); None when the broker cannot tell."""
        ...

    def set_listener(self, listener: BrokerListener | None) -> None: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def quote(self, symbol: str) -> Quote: ...

    async def prev_close(self, symbol: str) -> Decimal:
        """The official close of the session before the current (or, outside hours, last) one."""
        ...

    async def historical_daily_bars(self, symbol: str, start: date, end: date) -> list[DailyBar]:
        """Daily bars of ``symbol`` from ``start`` to ``end`` inclusive, oldest first."""
        ...

    async def option_chain(self, symbol: str) -> OptionChain: ...

    async def option_quotes(self, contracts: Sequence[OptionContract]) -> list[OptionQuote]:
        """Quotes (with model greeks when the broker has them) for listed contracts; unlisted or
        unquoted contracts are left out."""
        ...

    async def place_order(self, request: OrderRequest) -> str:
        """Send a new order; returns the broker's order id."""
        ...

    async def modify_order(self, order_ref: str, limit: Decimal) -> None: ...

    async def cancel_order(self, order_ref: str) -> None: ...

    async def open_orders(self) -> list[BrokerOrder]: ...

    async def executions(self, since: datetime | None = None) -> list[Execution]:
        """Executions (with commissions where known) since ``since``, for reconciliation."""
        ...

    async def positions(self) -> list[Position]: ...

    async def account_summary(self) -> AccountSummary: ...
