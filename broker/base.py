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


class NotSent(BrokerError):
    """The request never left the bot (no connection to the broker): nothing changed at the broker.
    A cancel that raises it leaves the order working there."""


class LiveAccountRefused(BrokerError):
    """The account is live (real money) and ALLOW_LIVE_TRADING is not set: the bot must not run."""


@runtime_checkable
class BrokerListener(Protocol):
    """Where a broker sends its events; see `Broker` ("Events") for when they come.

    Called synchronously on the event loop, from inside the broker: a method must return quickly,
    must not block or await, and should not raise (a broker logs the exception and drops it)."""

    def on_execution(self, execution: Execution) -> None:
        """A fill of one leg, at most once per ``exec_id`` per broker object (a new process or
        `Broker.executions` may show it again: record fills by ``exec_id``)."""
        ...

    def on_commission(self, report: CommissionReport) -> None:
        """The commission of an execution delivered without one; only after that execution, at
        most once. An execution that carried its commission gets no report."""
        ...

    def on_order_update(self, update: OrderUpdate) -> None:
        """A change of an order's status or filled quantity; nothing after its final status. Its
        ``filled`` and the executions are not ordered against each other: count fills from the
        executions."""
        ...

    def on_connection(self, state: ConnectionState, detail: str) -> None:
        """The connection state changed (not sent when only the detail line changes; the sim never
        sends it). One exception: IB sends DOWN once more when IB Gateway has refused connections
        for longer than its daily restart, with what to do (approve the weekly login on the phone)."""
        ...


class Broker(Protocol):
    """What the engine needs of a broker (`broker.sim.SimBroker`, `broker.ib.IBBroker`).

    **Calls.** ``name``, ``supports_combo``, ``mode``, ``state``, ``detail`` and ``market_data`` are
    plain reads and ``set_listener`` is a plain call: none waits or raises. Every other method is a
    coroutine. None blocks the event loop (no synchronous I/O, no sleeping); calls may overlap
    (the chat asks beside a running tick). Failures the user should hear about raise
    ``BrokerError``; nothing else is raised on purpose.

    **Waiting.** Every coroutine returns or raises within a bound. The sim never waits for
    anything: each call completes at once. IB bounds each wait for IB by its ``request_timeout``
    (T, 10 s by default), so a method answers within a small multiple of T: ``modify_order`` at
    once (it does not wait for IB's answer); T for ``sync``, ``cancel_order`` (the wait for the
    cancel), ``executions``, ``positions`` and ``account_summary`` (when `ib_async` holds no account
    values yet, else at once); T plus T per unknown combo leg for ``open_orders``; 2T for
    ``option_chain`` and ``place_order`` (qualification, then the request or the acknowledgement);
    3T + 1 s for ``quote`` and for ``option_quotes`` of up to 40 contracts (one retry after a pacing
    or subscription error; 2T more per further 40); 4T + 10 s for ``prev_close`` (up to three
    requests on pacing errors; at once when cached for the session); ``historical_daily_bars`` as
    ``prev_close`` but with at least 60 s per request; ``connect`` 4 × ``connect_timeout`` + T.
    Qualification costs nothing for contracts qualified before. A timeout raises ``BrokerError``,
    except in ``place_order`` and ``cancel_order`` (see there).

    **Disconnected.** ``state`` is DOWN before ``connect``, after ``close``, while the broker
    reconnects, and (IB) while IB Gateway has lost IB's servers (errors 1100/2110). ``place_order``,
    ``modify_order`` and ``cancel_order`` raise ``NotSent`` then (nothing left the bot), also while
    only IB's servers are lost (socket up); IB's data requests look at the socket only, so while
    only IB's servers are lost they are still sent and may time out. With the socket down
    every IB method that needs IB raises ``BrokerError`` at once ("not connected ..."), except
    ``prev_close`` and ``option_chain`` answering from the same day's cache and
    ``option_quotes([])``. The sim answers everything but ``place_order`` from its simulation
    whatever the state.

    **Threading.** Not thread-safe: call every method from the one asyncio loop the broker was
    connected on. Listener callbacks run on that loop too, synchronously: IB's inside `ib_async`'s
    handling of IB's messages, the sim's inside the call that caused them (``place_order``,
    ``modify_order``, ``cancel_order``) or inside a step of its clock (a `SimClock` step, or once a
    second on the wall clock).

    **Events** go to the one listener of ``set_listener`` (none set: they are dropped; the
    reconciliation through ``open_orders`` and ``executions`` recovers them) and may arrive at any
    time: before ``place_order`` returns (the sim fills a marketable order inside the call; a
    REJECTED update comes before the call raises), during any await, after ``cancel_order`` (a fill
    that raced the cancel, a late commission report), and after a reconnect (IB replays the
    executions this broker object has not delivered and settles the orders that ended meanwhile,
    before the state becomes CONNECTED again).
    """

    name: str
    supports_combo: bool  # rolls can go as one combo order (both brokers: True)

    @property
    def mode(self) -> BrokerMode:
        """"sim", "paper" or "live" (IB: known once connected)."""
        ...

    @property
    def state(self) -> ConnectionState:
        """CONNECTED; DEGRADED (connected, but e.g. only delayed market data); DOWN."""
        ...

    @property
    def detail(self) -> str:
        """A human line about the connection, shown beside a state that is not CONNECTED (e.g.
        "reconnecting (attempt 3 failed: ...)"); may be ""; may change without an event."""
        ...

    @property
    def down_since(self) -> datetime | None:
        """When the state last became DOWN (IB: the socket lost, or IB's servers unreachable with
        the socket up, as ``detail`` says); None while up, or when the broker cannot tell."""
        ...

    @property
    def market_data(self) -> MarketDataKind | None:
        """"live", or "delayed" while the broker only gets delayed data (its quotes are then dated
        15 minutes back, so they never trade); None when the broker cannot tell."""
        ...

    def set_listener(self, listener: BrokerListener | None) -> None:
        """Send the events to ``listener`` from now on (None: to nobody)."""
        ...

    async def connect(self) -> None:
        """Connect and get ready to trade. IB: checks the account and resynchronises (contracts,
        orders, missed executions) before the state becomes CONNECTED or DEGRADED, then reconnects
        by itself after any loss until ``close``; raises ``BrokerError`` when IB Gateway cannot be
        reached or the account is not managed, ``LiveAccountRefused`` for a live account without
        ``ALLOW_LIVE_TRADING`` (found on a reconnect, it stops reconnecting and stays DOWN)."""
        ...

    async def close(self) -> None:
        """Disconnect and stop reconnecting; state DOWN; closing twice is harmless. The sim keeps
        its orders, executions and account."""
        ...

    async def quote(self, symbol: str) -> Quote:
        """A stock's bid, ask and last (each None when the broker has none) and when they were
        true; raises ``BrokerError`` when there is no market data for it."""
        ...

    async def prev_close(self, symbol: str) -> Decimal:
        """The official close of the session before the current (or, outside hours, last) one;
        raises ``BrokerError`` when there is none."""
        ...

    async def historical_daily_bars(self, symbol: str, start: date, end: date) -> list[DailyBar]:
        """Daily bars of ``symbol`` from ``start`` to ``end`` inclusive, oldest first. IB may
        include the current session's bar so far; the sim gives closed sessions only. Raises
        ``BrokerError`` when ``end < start`` or the broker has no bars of the symbol at all."""
        ...

    async def historical_implied_vol(self, symbol: str, start: date, end: date) -> dict[date, float]:
        """The underlying's daily implied volatility (a fraction a year) from ``start`` to ``end``:
        IB's historical ``OPTION_IMPLIED_VOLATILITY``, the sim's own input. Empty when the broker has
        none (the caller falls back to a constant); ``BrokerError`` as ``historical_daily_bars``."""
        ...

    async def option_chain(self, symbol: str) -> OptionChain:
        """Listed expiries (none before today) and strikes, ascending; raises ``BrokerError`` when
        the broker lists no options on ``symbol``."""
        ...

    async def option_quotes(self, contracts: Sequence[OptionContract]) -> list[OptionQuote]:
        """Quotes of these listed contracts, in their order; unlisted or unquoted (no ask)
        contracts are left out. ``delta``/``iv`` are the broker's model greeks, None when it has
        none: `strategy.selection.quote_delta` computes a missing delta."""
        ...

    async def place_order(self, request: OrderRequest) -> str:
        """Send a new DAY limit order; returns the broker's order id (informational). Raises
        ``BrokerError`` for a reference used before, a malformed request (`request_problem`), an
        unknown contract, no connection, or a rejection (a REJECTED update is emitted first). IB
        waits up to ``request_timeout`` for the acknowledgement and returns the id without it (the
        reconciliation settles such an order); the sim refuses orders outside a session."""
        ...

    async def modify_order(self, order_ref: str, limit: Decimal) -> None:
        """Move a working order's limit. Raises ``BrokerError`` for an unknown or finished order or
        an invalid limit (`limit_problem`). The sim applies it at once (and may fill); IB sends it
        without waiting, its answer comes as events (a refused modify changes nothing)."""
        ...

    async def cancel_order(self, order_ref: str) -> None:
        """Cancel a working order. Raises ``NotSent`` when the cancel could not be sent (no
        connection: the order keeps working at the broker), ``BrokerError`` for an unknown or
        finished order. The
        CANCELLED update is an event (the sim's inside the call); IB waits up to
        ``request_timeout`` for the cancel to be done and returns without raising when it is not
        (fills may still come)."""
        ...

    async def open_orders(self) -> list[BrokerOrder]:
        """The orders the broker still works that carry a bot reference, for reconciliation (IB
        leaves out one whose contract it cannot map to an instrument)."""
        ...

    async def executions(self, since: datetime | None = None) -> list[Execution]:
        """Executions (with commissions where known) since ``since``, oldest first, for
        reconciliation: all of them for the sim, what IB still reports (the current day's) for IB."""
        ...

    async def positions(self) -> list[Position]:
        """Every holding of the account (stocks, options, bonds; the bot's or not), then cash by
        currency."""
        ...

    async def account_summary(self) -> AccountSummary:
        """Net liquidation, cash by currency, buying power, available funds in USD; IB raises
        ``BrokerError`` while the account has reported no net liquidation value yet."""
        ...
