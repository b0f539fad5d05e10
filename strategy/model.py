"""Plain data the functional core reasons about: contracts, quotes, lots, snapshots, decisions.

Everything here is a frozen dataclass with no behaviour beyond derived values, so the same
objects flow through the live bot, the simulator and the backtest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal
from zoneinfo import ZoneInfo

Right = Literal["C", "P"]
Side = Literal["BUY", "SELL"]
SecType = Literal["STK", "OPT"]

OPTION_MULTIPLIER = 100
NY = ZoneInfo("America/New_York")


@dataclass(frozen=True, slots=True)
class OptionContract:
    """A listed option: underlying symbol, expiry, strike and right."""

    symbol: str
    expiry: date
    strike: Decimal
    right: Right = "C"
    multiplier: int = OPTION_MULTIPLIER

    @property
    def key(self) -> str:
        """A stable, human-readable identifier, e.g. ``QQQ 2027-12-17 500C``."""
        return f"{self.symbol} {self.expiry.isoformat()} {self.strike.normalize():f}{self.right}"

    def dte(self, today: date) -> int:
        """Calendar days to the contract's expiry."""
        return (self.expiry - today).days


@dataclass(frozen=True, slots=True)
class Quote:
    """Top of book for a stock or ETF."""

    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    last: Decimal | None
    time: datetime

    @property
    def mid(self) -> Decimal | None:
        if self.bid is None or self.ask is None or self.bid <= 0 or self.ask <= 0:
            return None
        return (self.bid + self.ask) / 2

    @property
    def price(self) -> Decimal | None:
        """The last trade price; if missing, the bid/ask mid (spec: Terms/change)."""
        return self.last if self.last is not None and self.last > 0 else self.mid


@dataclass(frozen=True, slots=True)
class OptionQuote:
    """Quote of one option, with the broker's model delta when it sent one."""

    contract: OptionContract
    bid: Decimal | None
    ask: Decimal | None
    time: datetime
    delta: float | None = None
    iv: float | None = None
    min_tick: Decimal = Decimal("0.01")

    @property
    def mid(self) -> Decimal | None:
        if self.bid is None or self.ask is None or self.ask <= 0 or self.bid < 0:
            return None
        return (self.bid + self.ask) / 2

    @property
    def spread(self) -> Decimal | None:
        if self.bid is None or self.ask is None:
            return None
        return self.ask - self.bid


@dataclass(frozen=True, slots=True)
class Lot:
    """One option position the bot opened."""

    id: int
    contract: OptionContract
    qty: int
    avg_price: Decimal
    commission: Decimal
    opened_at: datetime

    def held_days(self, today: date) -> int:
        """Calendar days from the lot's first fill to today (America/New_York)."""
        return (today - self.opened_at.astimezone(NY).date()).days


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """What the shell saw of the market at one tick."""

    now: datetime
    session: date
    qqq: Quote
    prev_close: Decimal
    lot_quotes: dict[int, OptionQuote] = field(default_factory=dict)
    qqqm: Quote | None = None


@dataclass(frozen=True, slots=True)
class StrategyState:
    """What the shell knows of the bot's own book when a tick starts."""

    open_lots: tuple[Lot, ...]
    entered_this_session: bool = False
    rolled_this_session: bool = False
    unresolved_order: bool = False
    pool: Decimal = Decimal(0)
    pending_roll_buy: int | None = None  # roll id whose buy leg is still to be bought


class ExitReason(StrEnum):
    TAKE_PROFIT = "take_profit"
    FORCE_EXIT = "force_exit"
    EXPIRY_GUARD = "expiry_guard"

    @property
    def label(self) -> str:
        """The rule in the user's words."""
        return self.value.replace("_", " ")


@dataclass(frozen=True, slots=True)
class ExitDecision:
    """Sell the whole lot, and why."""

    lot_id: int
    reason: ExitReason
    pnl_pct: Decimal | None
    target_pct: Decimal | None
    held_days: int
    dte: int


@dataclass(frozen=True, slots=True)
class EntrySignal:
    """The dip is deep enough to buy a new LEAPS call."""

    change: Decimal


@dataclass(frozen=True, slots=True)
class RollSignal:
    """Full and the dip is very deep: sell the oldest lot and buy a new contract."""

    lot_id: int
    change: Decimal


@dataclass(frozen=True, slots=True)
class RecycleDecision:
    """Buy QQQM shares with the realized-profit pool."""

    shares: int
    limit: Decimal
    pool: Decimal


@dataclass(frozen=True, slots=True)
class TickPlan:
    """Everything one tick decided, in the spec's order: exits, roll, entry, recycle."""

    change: Decimal | None
    exits: tuple[ExitDecision, ...] = ()
    roll: RollSignal | None = None
    entry: EntrySignal | None = None
    recycle: RecycleDecision | None = None
    retry_roll_buy: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.exits or self.roll or self.entry or self.recycle or self.retry_roll_buy)
