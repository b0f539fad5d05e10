"""The connection to IB Gateway/TWS: the one owner of the `ib_async.IB` client and of the state
the other parts of `broker.ib` share (connection state and its detail line, paper/live account,
delayed market data, the listener, the reconnect task, request counters).

Connect with a paper/live check (a live account is refused unless ``allow_live``); after a
disconnect a reconnect loop with capped exponential backoff; on IB's connectivity errors
1100/2110 a wait for 1101/1102 (then a resync) or, past a grace period, a reconnect. After every
(re)connect the broker's ``resync`` runs before the state becomes CONNECTED (or DEGRADED) again.
Every request goes through `IBConnection.call`, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ib_async import IB, Contract

from broker.base import (
    BrokerError,
    BrokerListener,
    BrokerMode,
    ConnectionState,
    LiveAccountRefused,
    MarketDataKind,
    NotSent,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECTIVITY_LOST = frozenset({1100, 2110})
CONNECTIVITY_RESTORED = frozenset({1101, 1102})
NO_SUBSCRIPTION = frozenset({354, 10089, 10167, 10168})


class IBConnection:
    """One IB API session and its life cycle; see the module docstring.

    ``resync`` is awaited after every (re)connect or restored connectivity, once the market data
    type is set and before the state is reported (contracts re-qualified, orders re-bound,
    missed executions replayed)."""

    def __init__(
        self, ib: IB, host: str, port: int, client_id: int, *, resync: Callable[[], Awaitable[None]],
        allow_live: bool, account: str, connect_timeout: float, request_timeout: float, reconnect_initial_s: float,
        reconnect_max_s: float, connectivity_grace_s: float, max_requests_per_s: int,
    ) -> None:
        self.ib = ib
        self.host = host
        self.port = int(port)
        self.client_id = int(client_id)
        self.allow_live = allow_live
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.connectivity_grace_s = connectivity_grace_s
        self.max_requests_per_s = max_requests_per_s
        self.mode: BrokerMode = "paper"
        self.account = account
        self.detail = "not connected"
        self.delayed = False  # no real-time subscription: IB sends delayed data
        self.recovery: asyncio.Task[None] | None = None  # the one reconnect or resync under way
        self.stats: dict[str, int] = {"snapshots": 0, "qualify": 0, "history": 0, "reconnects": 0}
        self._account_cfg = account
        self._resync = resync
        self._listener: BrokerListener | None = None
        self._state = ConnectionState.DOWN
        self._closing = True
        self._restored: asyncio.Event | None = None
        self._waiters: list[asyncio.Future[None]] = []
        ib.disconnectedEvent += self.on_disconnected
        ib.errorEvent += self._on_error
        ib.updateEvent += self._wake

    # --- state and listener ----------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def market_data(self) -> MarketDataKind:
        return "delayed" if self.delayed else "live"

    def set_listener(self, listener: BrokerListener | None) -> None:
        self._listener = listener

    def tell(self, event: Callable[[BrokerListener], None], what: str) -> None:
        """Hand one event to the engine's listener; its failure is logged, never raised into ib_async."""
        listener = self._listener
        if listener is None:
            return
        try:
            event(listener)
        except Exception:
            log.exception("ib: the listener failed on %s", what)

    def _set_state(self, state: ConnectionState, detail: str) -> None:
        self.detail = detail
        if state == self._state:
            return
        self._state = state
        log.info("ib: %s (%s)", state.value, detail)
        self.tell(lambda listener: listener.on_connection(state, detail), "a connection change")

    # --- connect, close, reconnect ---------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, check the account, resynchronise; raises BrokerError when IB Gateway cannot be
        reached, LiveAccountRefused when the account is live and live trading is not allowed."""
        self._closing = False
        try:
            await self._connect_once()
        except BrokerError:
            self._closing = True
            raise

    async def close(self) -> None:
        self._closing = True
        task, self.recovery = self.recovery, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.ib.isConnected() or self.ib.client.isConnected():  # type: ignore[no-untyped-call]
            self.ib.disconnect()
        self._wake()
        self._set_state(ConnectionState.DOWN, "closed")

    async def sync(self) -> None:
        """One round trip to IB Gateway: every message it sent before has been processed after this."""
        await self.call(self.ib.reqCurrentTimeAsync, "current time")

    async def _connect_once(self) -> None:
        ib = self.ib
        try:
            await asyncio.wait_for(
                ib.connectAsync(self.host, self.port, self.client_id, timeout=self.connect_timeout,
                                account=self._account_cfg),
                self.connect_timeout * 4)
        except (OSError, TimeoutError, ConnectionError) as e:
            ib.disconnect()
            raise BrokerError(f"ib: cannot connect to IB Gateway at {self.host}:{self.port} "
                              f"(client id {self.client_id}): {type(e).__name__}: {e}") from e
        accounts = ib.managedAccounts()
        account = self._account_cfg or (accounts[0] if accounts else "")
        if not account or account not in accounts:
            self._drop()
            raise BrokerError(f"ib: account {account or '(none)'} is not managed by this login ({accounts})")
        self.account = account
        self.mode = "paper" if account.startswith("D") else "live"
        if self.mode == "live" and not self.allow_live:
            self._drop()
            raise LiveAccountRefused(f"ib: {account} is a LIVE account and live trading is not allowed; refusing to "
                              "trade it (use a paper account, or set ALLOW_LIVE_TRADING=true deliberately)")
        ib.client.MaxRequests = self.max_requests_per_s
        ib.client.RequestsInterval = 1
        await self._after_connect("connected")

    def _drop(self) -> None:
        closing, self._closing = self._closing, True
        try:
            self.ib.disconnect()
        finally:
            self._closing = closing

    async def _after_connect(self, what: str) -> None:
        """Resynchronise after a (re)connect or restored connectivity: market data type, then the
        broker's resync; only then report the state."""
        self.delayed = False  # try live data again; a no-subscription error switches back
        self.ib.reqMarketDataType(1)
        await self._resync()
        detail = f"{what} to {self.host}:{self.port} as client {self.client_id}, account {self.account} ({self.mode})"
        if self.delayed:
            self._set_state(ConnectionState.DEGRADED, detail + "; delayed market data")
        else:
            self._set_state(ConnectionState.CONNECTED, detail)

    def on_disconnected(self) -> None:
        """``disconnectedEvent`` (it may fire more than once): one reconnect loop, unless closing."""
        self._wake()
        if self._closing:
            return
        self._set_state(ConnectionState.DOWN, "connection to IB Gateway lost; reconnecting")
        self._start_recovery(self._reconnect_loop())

    def _start_recovery(self, work: Awaitable[None]) -> None:
        """One recovery (reconnect or resync) at a time; a second trigger while one runs is dropped."""
        if self.recovery is not None and not self.recovery.done():
            if asyncio.iscoroutine(work):
                work.close()
            return
        self.recovery = asyncio.ensure_future(work)

    async def _reconnect_loop(self) -> None:
        delay = self.reconnect_initial_s
        attempt = 0
        while not self._closing:
            await asyncio.sleep(delay)
            if self._closing:
                return
            attempt += 1
            self.stats["reconnects"] += 1
            try:
                await self._connect_once()
                return
            except BrokerError as e:
                log.warning("ib: reconnect attempt %d failed: %s", attempt, e)
                self.detail = f"reconnecting (attempt {attempt} failed: {e})"
                if self.mode == "live" and not self.allow_live:
                    self._closing = True
                    self._set_state(ConnectionState.DOWN, str(e))
                    return
            except Exception:
                log.exception("ib: reconnect attempt %d failed", attempt)
            delay = min(delay * 2, self.reconnect_max_s)

    async def _await_restore(self, code: int, text: str) -> None:
        """IB Gateway lost IB's servers: wait for 1101/1102, then resync; past the grace period,
        reconnect the socket."""
        restored = self._restored = asyncio.Event()
        try:
            await asyncio.wait_for(restored.wait(), self.connectivity_grace_s)
        except TimeoutError:
            log.warning("ib: connectivity not restored %.0f s after error %d (%s); reconnecting",
                        self.connectivity_grace_s, code, text)
            self._drop()
            await self._reconnect_loop()
            return
        finally:
            self._restored = None
        if self.ib.isConnected():
            await self._after_connect("connectivity restored")

    def _on_error(self, req_id: int, code: int, text: str, contract: Contract | None) -> None:
        """Connectivity and subscription errors; errors of one request are the requester's."""
        try:
            if code in CONNECTIVITY_LOST:
                self._set_state(ConnectionState.DOWN, f"IB Gateway lost its connection to IB (error {code}: {text})")
                self._start_recovery(self._await_restore(code, text))
            elif code in CONNECTIVITY_RESTORED:
                if self._restored is not None:
                    self._restored.set()
                else:
                    self._start_recovery(self._after_connect(f"connectivity restored (error {code})"))
            elif code in NO_SUBSCRIPTION:
                self._go_delayed(code, text)
        except Exception:
            log.exception("ib: handling error %d failed", code)

    def _go_delayed(self, code: int, text: str) -> None:
        if self.delayed:
            return
        self.delayed = True
        log.warning("ib: no market data subscription (error %d: %s); using delayed data", code, text)
        if self.ib.isConnected():
            self.ib.reqMarketDataType(3)
        if self._state != ConnectionState.DOWN:
            self._set_state(ConnectionState.DEGRADED, f"delayed market data: no real-time subscription (error {code})")

    # --- requests and waiting --------------------------------------------------------------------

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    async def until(self, cond: Callable[[], bool], wait_s: float) -> bool:
        """Wait until ``cond()`` holds, re-checking after every batch of messages from IB; at most
        ``wait_s`` (less once the connection drops). Returns ``cond()`` at the end."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not cond():
            remaining = deadline - loop.time()
            if remaining <= 0 or not self.ib.isConnected():
                return cond()
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                return cond()
        return True

    def require_connected(self) -> None:
        if not self.ib.isConnected():
            raise NotSent(f"ib: not connected to IB Gateway ({self.detail})")

    async def call(self, make: Callable[[], Awaitable[T]], what: str, limit_s: float | None = None) -> T:
        """One request, bounded by ``limit_s`` (default ``request_timeout``); no connection, a
        timeout or a lost connection become BrokerError."""
        self.require_connected()
        limit = limit_s or self.request_timeout
        try:
            return await asyncio.wait_for(make(), limit)
        except TimeoutError as e:
            raise BrokerError(f"ib: {what} timed out after {limit:.0f} s") from e
        except (ConnectionError, OSError) as e:
            raise BrokerError(f"ib: {what} failed, connection lost: {e}") from e
