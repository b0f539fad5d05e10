"""What the chat's service returns for the formatters: plain, frozen views of the bot's state (no
logic, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from bot.control.manual import WorkingOrder
from bot.lab import chat_backtest
from broker.base import AccountSummary, Position
from strategy.settings import PauseMode

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class StatusView:
    mode: str
    broker: str
    connection: str
    paused: PauseMode
    market_open: bool
    qqq_last: Decimal | None
    prev_close: Decimal | None
    change_pct: Decimal | None
    next_tick: datetime | None
    last_tick_time: str | None
    last_tick_summary: str | None
    open_lots: int
    max_positions: int
    notes: tuple[str, ...] = ()
    connection_detail: str = ""
    connection_down_for: timedelta | None = None  # how long the broker has been down, when known
    market_data: str | None = None
    session_until: datetime | None = None  # the asking admin's /login session, when open


@dataclass(frozen=True, slots=True)
class LotRow:
    id: int
    contract: str
    qty: int
    entry: Decimal
    mid: Decimal | None
    pnl_pct: Decimal | None
    pnl_usd: Decimal | None
    held_days: int
    target_pct: Decimal
    days_to_force_exit: int
    dte: int
    value: Decimal | None = None  # at the mid


@dataclass(frozen=True, slots=True)
class PositionsView:
    lots: tuple[LotRow, ...]
    others: dict[str, tuple[Position, ...]]
    cash: dict[str, Decimal]
    notes: tuple[str, ...] = ()

    @property
    def lots_value(self) -> Decimal | None:
        """The bot's lots at the mid (None when one has no quote)."""
        if any(lot.value is None for lot in self.lots):
            return None
        return sum((lot.value or ZERO for lot in self.lots), ZERO)

    @property
    def lots_pnl(self) -> Decimal | None:
        if any(lot.pnl_usd is None for lot in self.lots):
            return None
        return sum((lot.pnl_usd or ZERO for lot in self.lots), ZERO)


@dataclass(frozen=True, slots=True)
class AccountView:
    account: AccountSummary | None
    qqqm_shares: int
    qqqm_cost: Decimal
    qqqm_value: Decimal | None
    pool: Decimal
    notes: tuple[str, ...] = ()
    threshold: Decimal = Decimal(500)  # the recycling threshold, to say what the pool means


@dataclass(frozen=True, slots=True)
class TradeRow:
    time: datetime
    side: str
    qty: int
    what: str
    price: Decimal
    commission: Decimal | None
    realized: Decimal | None
    purpose: str


@dataclass(frozen=True, slots=True)
class OrdersView:
    """The working orders, each with the quote of what it trades (bid, ask) when the broker gave one."""

    orders: tuple[WorkingOrder, ...]
    quotes: dict[str, tuple[Decimal | None, Decimal | None]]
    now: datetime
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PnlView:
    realized_options: Decimal
    unrealized_options: Decimal | None
    qqqm_cost: Decimal
    qqqm_value: Decimal | None
    pool: Decimal
    closed_lots: int
    wins: int
    curve: tuple[tuple[datetime, Decimal], ...] = field(default=())
    notes: tuple[str, ...] = ()
    threshold: Decimal = Decimal(500)


@dataclass(frozen=True, slots=True)
class ComparisonView:
    years: int
    start: str
    end: str
    source: str
    capital: Decimal
    curves: tuple[chat_backtest.Curve, ...]
    png: bytes
    notes: tuple[str, ...]
    wall_s: float
