"""`IBBroker`: the `Broker` on Interactive Brokers, one collaborator per concern (see
`broker.ib`). This class only builds them, runs the resync after a (re)connect, and forwards."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal

from ib_async import IB

from broker.base import (
    AccountSummary,
    BrokerListener,
    BrokerMode,
    BrokerOrder,
    ConnectionState,
    DailyBar,
    Execution,
    MarketDataKind,
    OptionChain,
    OrderRequest,
    Position,
)
from broker.clock import Clock, WallClock
from broker.ib.account import IBAccount
from broker.ib.connection import IBConnection
from broker.ib.contracts import IBContracts
from broker.ib.market_data import IBMarketData
from broker.ib.orders import IBOrders
from strategy.calendar import SessionCalendar
from strategy.model import OptionContract, OptionQuote, Quote


class IBBroker:
    """A `Broker` on Interactive Brokers through `ib_async` and IB Gateway/TWS.

    ``host``/``port``/``client_id`` locate IB Gateway (paper 4002/4004, live 4001/4003). ``account``
    picks one of several managed accounts (default: the first). ``calendar`` lets `prev_close`
    skip non-session days like the sim does. Every request waits at most ``request_timeout``.
    ``login_alert_after_s``: how long IB Gateway may refuse connections (its daily restart) before
    the outage is announced again with what to do (the weekly login waits for the phone)."""

    name = "ib"
    supports_combo = True

    def __init__(
        self, host: str, port: int, client_id: int, *, allow_live: bool = False, connect_timeout: float = 10.0,
        request_timeout: float = 10.0, clock: Clock | None = None, account: str = "",
        calendar: SessionCalendar | None = None, reconnect_initial_s: float = 1.0, reconnect_max_s: float = 60.0,
        connectivity_grace_s: float = 120.0, pacing_backoff_s: float = 1.0, max_requests_per_s: int = 40,
        snapshot_batch: int = 40, login_alert_after_s: float = 900.0, ib: IB | None = None,
    ) -> None:
        clock_ = clock or WallClock()
        self._conn = IBConnection(
            ib or IB(), host, port, client_id, resync=self._resync, allow_live=allow_live, account=account,
            connect_timeout=connect_timeout, request_timeout=request_timeout,
            reconnect_initial_s=reconnect_initial_s, reconnect_max_s=reconnect_max_s,
            connectivity_grace_s=connectivity_grace_s, max_requests_per_s=max_requests_per_s,
            login_alert_after_s=login_alert_after_s, clock=clock_)
        self._contracts = IBContracts(self._conn, clock_)
        self._market = IBMarketData(self._conn, self._contracts, clock_, calendar=calendar,
                                    pacing_backoff_s=pacing_backoff_s, snapshot_batch=snapshot_batch)
        self._orders = IBOrders(self._conn, self._contracts)
        self._account = IBAccount(self._conn)

    async def _resync(self) -> None:
        """After every (re)connect, before the state is reported: contracts, then orders, then the
        executions missed while down."""
        await self._contracts.requalify()
        self._orders.rebind()
        self._orders.replay_executions()

    # --- connection (IBConnection) ---------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._conn.state

    @property
    def detail(self) -> str:
        return self._conn.detail

    @property
    def market_data(self) -> MarketDataKind:
        return self._conn.market_data

    @property
    def down_since(self) -> datetime | None:
        """When the state last became DOWN (socket lost or IB's servers unreachable); None while up."""
        return self._conn.down_since

    @property
    def servers_reachable(self) -> bool | None:
        """Whether IB Gateway reaches IB's servers: False after a 1100/2110 not yet restored, None
        while the socket to the gateway is down (unknown)."""
        if self._conn.state == ConnectionState.DOWN and self._conn.servers_lost is None:
            return None
        return self._conn.servers_lost is None

    @property
    def mode(self) -> BrokerMode:
        """"paper" or "live", known once connected (D… accounts are paper)."""
        return self._conn.mode

    @property
    def account(self) -> str:
        return self._conn.account

    @property
    def stats(self) -> dict[str, int]:
        """Requests sent so far: snapshots, qualify, history, reconnects."""
        return self._conn.stats

    def set_listener(self, listener: BrokerListener | None) -> None:
        self._conn.set_listener(listener)

    async def connect(self) -> None:
        await self._conn.connect()

    async def close(self) -> None:
        await self._conn.close()

    async def sync(self) -> None:
        """One round trip to IB Gateway: every message it sent before has been processed after this."""
        await self._conn.sync()

    @property
    def _recovery(self) -> asyncio.Task[None] | None:  # for tests: the one reconnect task
        return self._conn.recovery

    def _on_disconnected(self) -> None:  # for tests: what ``disconnectedEvent`` calls
        self._conn.on_disconnected()

    # --- contracts and market data (IBContracts, IBMarketData) -----------------------------------

    async def option_chain(self, symbol: str) -> OptionChain:
        return await self._contracts.option_chain(symbol)

    async def quote(self, symbol: str) -> Quote:
        return await self._market.quote(symbol)

    async def option_quotes(self, contracts: Sequence[OptionContract]) -> list[OptionQuote]:
        return await self._market.option_quotes(contracts)

    async def prev_close(self, symbol: str) -> Decimal:
        return await self._market.prev_close(symbol)

    async def historical_daily_bars(self, symbol: str, start: date, end: date) -> list[DailyBar]:
        return await self._market.historical_daily_bars(symbol, start, end)

    async def historical_implied_vol(self, symbol: str, start: date, end: date) -> dict[date, float]:
        return await self._market.historical_implied_vol(symbol, start, end)

    # --- orders (IBOrders) -----------------------------------------------------------------------

    async def place_order(self, request: OrderRequest) -> str:
        return await self._orders.place_order(request)

    async def modify_order(self, order_ref: str, limit: Decimal) -> None:
        await self._orders.modify_order(order_ref, limit)

    async def cancel_order(self, order_ref: str) -> None:
        await self._orders.cancel_order(order_ref)

    async def open_orders(self) -> list[BrokerOrder]:
        return await self._orders.open_orders()

    async def executions(self, since: datetime | None = None) -> list[Execution]:
        return await self._orders.executions(since)

    # --- account (IBAccount) ---------------------------------------------------------------------

    async def positions(self) -> list[Position]:
        return await self._account.positions()

    async def account_summary(self) -> AccountSummary:
        return await self._account.account_summary()
