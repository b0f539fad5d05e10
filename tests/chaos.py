"""A broker with a socket that can die at any moment, for the order-safety campaign.

`ChaosBroker` puts a connection in front of a `SimBroker` (the "exchange" and the account, which go
on whatever the socket does), and behaves as `ib_async` against IB Gateway does:
- while the socket is down, every request raises `NotSent` (nothing reaches the exchange) and the
  exchange's events are lost (orders keep working and may fill: the bot learns of those fills only
  through `executions()` after the reconnect);
- a cancel can meet a socket that dies just before it (the cancel is lost, the order keeps working)
  or just after it (the order is cancelled but the confirmation is lost);
- connection changes reach the listener as IB's do (DOWN, then CONNECTED).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from broker.base import (
    AccountSummary,
    BrokerListener,
    BrokerMode,
    BrokerOrder,
    CommissionReport,
    ConnectionState,
    DailyBar,
    Execution,
    MarketDataKind,
    NotSent,
    OptionChain,
    OrderRequest,
    OrderUpdate,
    Position,
)
from broker.sim import SimBroker
from strategy.model import OptionContract, OptionQuote, Quote

CancelFate = Literal["ok", "drop_before", "drop_after"]


class ChaosBroker:
    """A `Broker` whose socket the test (or a random schedule) takes down and up."""

    name = "chaos"
    supports_combo = True

    def __init__(self, inner: SimBroker, rng: random.Random | None = None) -> None:
        self.inner = inner
        self.rng = rng or random.Random(0)
        self.up = False
        self.listener: BrokerListener | None = None
        self._deaf = False  # events of the exchange are lost (the socket died mid-call)
        self.next_cancel: CancelFate = "ok"
        self.lost_events = 0
        inner.set_listener(self)

    # --- the socket ---------------------------------------------------------------------------------

    def go_down(self, why: str = "socket closed") -> None:
        if not self.up:
            return
        self.up = False
        if self.listener is not None:
            self.listener.on_connection(ConnectionState.DOWN, f"chaos: {why}")

    def go_up(self) -> None:
        if self.up:
            return
        self.up = True
        if self.listener is not None:
            self.listener.on_connection(ConnectionState.CONNECTED, "chaos: reconnected")

    def _require(self) -> None:
        if not self.up:
            raise NotSent("chaos: not connected to the gateway")

    # --- events from the exchange, through the socket ---------------------------------------------------

    def on_execution(self, execution: Execution) -> None:
        if self.up and not self._deaf and self.listener is not None:
            self.listener.on_execution(execution)
        else:
            self.lost_events += 1

    def on_commission(self, report: CommissionReport) -> None:
        if self.up and not self._deaf and self.listener is not None:
            self.listener.on_commission(report)

    def on_order_update(self, update: OrderUpdate) -> None:
        if self.up and not self._deaf and self.listener is not None:
            self.listener.on_order_update(update)
        else:
            self.lost_events += 1

    def on_connection(self, state: ConnectionState, detail: str) -> None:  # the sim never sends it
        pass

    # --- the Broker interface ---------------------------------------------------------------------------

    @property
    def mode(self) -> BrokerMode:
        return "paper"

    @property
    def state(self) -> ConnectionState:
        return ConnectionState.CONNECTED if self.up else ConnectionState.DOWN

    @property
    def detail(self) -> str:
        return "" if self.up else "chaos: socket down"

    @property
    def market_data(self) -> MarketDataKind | None:
        return "live"

    def set_listener(self, listener: BrokerListener | None) -> None:
        self.listener = listener

    async def connect(self) -> None:
        await self.inner.connect()
        self.up = True

    async def close(self) -> None:
        self.up = False

    async def quote(self, symbol: str) -> Quote:
        self._require()
        return await self.inner.quote(symbol)

    async def prev_close(self, symbol: str) -> Decimal:
        self._require()
        return await self.inner.prev_close(symbol)

    async def historical_daily_bars(self, symbol: str, start: date, end: date) -> list[DailyBar]:
        self._require()
        return await self.inner.historical_daily_bars(symbol, start, end)

    async def historical_implied_vol(self, symbol: str, start: date, end: date) -> dict[date, float]:
        self._require()
        return await self.inner.historical_implied_vol(symbol, start, end)

    async def option_chain(self, symbol: str) -> OptionChain:
        self._require()
        return await self.inner.option_chain(symbol)

    async def option_quotes(self, contracts: Sequence[OptionContract]) -> list[OptionQuote]:
        self._require()
        return await self.inner.option_quotes(contracts)

    async def place_order(self, request: OrderRequest) -> str:
        self._require()
        return await self.inner.place_order(request)

    async def modify_order(self, order_ref: str, limit: Decimal) -> None:
        self._require()
        await self.inner.modify_order(order_ref, limit)

    async def cancel_order(self, order_ref: str) -> None:
        self._require()
        fate, self.next_cancel = self.next_cancel, "ok"
        if fate == "drop_before":  # the socket dies as the cancel is written: it never leaves
            self.go_down("dropped as a cancel was sent")
            raise NotSent("chaos: the connection dropped; the cancel was not sent")
        if fate == "drop_after":  # the exchange cancels it, the confirmation is lost with the socket
            self._deaf = True
            try:
                await self.inner.cancel_order(order_ref)
            finally:
                self._deaf = False
            self.go_down("dropped right after a cancel")
            return
        await self.inner.cancel_order(order_ref)

    async def open_orders(self) -> list[BrokerOrder]:
        self._require()
        return await self.inner.open_orders()

    async def executions(self, since: datetime | None = None) -> list[Execution]:
        self._require()
        return await self.inner.executions(since)

    async def positions(self) -> list[Position]:
        self._require()
        return await self.inner.positions()

    async def account_summary(self) -> AccountSummary:
        self._require()
        return await self.inner.account_summary()
