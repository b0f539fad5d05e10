"""The connection to IB Gateway/TWS: the one owner of the `ib_async.IB` client and of the state
the other parts of `broker.ib` share (connection state and its detail line, paper/live account,
delayed market data, the listener, the recovery task, request counters).

Two links can fail, and the state tells them apart:

- the **socket** to IB Gateway (the gateway's daily restart, a crash, the weekly login): DOWN,
  "no connection to IB Gateway", and a reconnect loop with capped exponential backoff; an outage
  longer than ``login_alert_after_s`` is announced once more with what to do (approve the IBKR
  login on the phone);
- **IB's servers** behind a gateway whose socket stays up (errors 1100/2110, e.g. the nightly server
  reset): DOWN, "IB servers unreachable"; no order, modify or cancel is sent (`NotSent`); 1101
  (restored, data lost) resubscribes the account data, 1102 (restored, data kept) does not; both
  resynchronise. Not restored within ``connectivity_grace_s``: the socket is dropped and reconnected.

After every (re)connect or restore the broker's ``resync`` runs before the state becomes CONNECTED
(or DEGRADED) again; one recovery task at a time re-checks both links until both are up, so a 1100
arriving during a reconnect is never lost. Every request goes through `IBConnection.call`, bounded
by a timeout. The account id and the gateway's host:port never appear in a detail line or an error
(`mask_account`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
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
from broker.clock import Clock, WallClock

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECTIVITY_LOST = frozenset({1100, 2110})
CONNECTIVITY_RESTORED = frozenset({1101, 1102})
DATA_LOST = 1101  # restored, but market and account data subscriptions must be resubmitted
NO_SUBSCRIPTION = frozenset({354, 10089, 10167, 10168})
COMPETING_SESSION = 10197  # no market data: a live session elsewhere (TWS, IBKR Mobile) holds it
FARM_STATUS = frozenset(range(2103, 2109)) | {2119, 2157, 2158}  # information, never a state change
LOGIN_DETAIL = ("IB Gateway refuses connections for longer than its daily restart: approve the IBKR login on "
                "your phone (IBKR Mobile). IB asks for a full login once a week and the gateway waits for it; "
                "the bot reconnects by itself and says when it is back")


def mask_account(account: str) -> str:
    """An IB account id as alerts and logs may show it: ``DU1234567`` → ``DU•••4567``."""
    if len(account) <= 4:
        return "•••"
    digits = len(account) - len(account.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    return f"{account[:digits]}•••{account[-4:]}"


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return f"{int(seconds)} s"
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _why(e: BaseException) -> str:
    """Why a connection attempt failed, without the address (which the exception's text carries)."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (IB Gateway is not running, restarting, or not logged in)"
    if isinstance(e, TimeoutError):
        return "no answer from IB Gateway (it accepted the connection but did not start the API session)"
    if isinstance(e, ConnectionError):
        return "IB Gateway closed the connection during the handshake"
    if isinstance(e, OSError) and e.strerror:
        return f"{type(e).__name__}: {e.strerror}"
    return type(e).__name__

class IBConnection:
    """One IB API session and its life cycle; see the module docstring.

    ``resync`` is awaited after every (re)connect or restored connectivity, once the market data
    type is set and before the state is reported (contracts re-qualified, orders re-bound,
    missed executions replayed)."""

    def __init__(
        self, ib: IB, host: str, port: int, client_id: int, *, resync: Callable[[], Awaitable[None]],
        allow_live: bool, account: str, connect_timeout: float, request_timeout: float, reconnect_initial_s: float,
        reconnect_max_s: float, connectivity_grace_s: float, max_requests_per_s: int,
        login_alert_after_s: float = 900.0, clock: Clock | None = None,
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
        self.login_alert_after_s = login_alert_after_s
        self.max_requests_per_s = max_requests_per_s
        self.clock = clock or WallClock()
        self.mode: BrokerMode = "paper"
        self.account = account
        self.detail = "not connected"
        self.delayed = False  # no real-time subscription: IB sends delayed data
        self.competing = False  # 10197: a live session elsewhere holds the market data
        self.servers_lost: int | None = None  # 1100/2110 in effect: IB Gateway has lost IB's servers
        self.down_since: datetime | None = None  # when the state last became DOWN (None while up)
        self.recovery: asyncio.Task[None] | None = None  # the one recovery (reconnect, restore, resync)
        self.stats: dict[str, int] = {"snapshots": 0, "qualify": 0, "history": 0, "reconnects": 0,
                                      "resubscribed": 0}
        self._account_cfg = account
        self._resync = resync
        self._listener: BrokerListener | None = None
        self._state = ConnectionState.DOWN
        self._closing = True
        self._connecting = False  # connect() is under way: it checks what a recovery would
        self._ready = False  # connected and resynchronised
        self._resync_needed = False
        self._resubscribe = False  # 1101 seen: account data must be asked for again
        self._socket_detail = "not connected"
        self._changed = asyncio.Event()  # an IB connectivity message arrived
        self._outage_t0: float | None = None  # loop time the socket was lost
        self._login_alerted = False
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

    @property
    def who(self) -> str:
        """This session as alerts and logs may show it (the account masked, no host:port)."""
        return f"IB Gateway as client {self.client_id}, account {mask_account(self.account)} ({self.mode})"

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
        if state == ConnectionState.DOWN:
            self.down_since = self.down_since or self.clock.now()
        else:
            self.down_since = None
        log.info("ib: %s (%s)", state.value, detail)
        self.tell(lambda listener: listener.on_connection(state, detail), "a connection change")

    def _publish(self, what: str = "connected to") -> None:
        """The state and detail line from the two links (socket, IB's servers) and the market data."""
        if not self.ib.isConnected() or not self._ready:
            self._set_state(ConnectionState.DOWN, self._socket_detail)
        elif self.servers_lost is not None:
            self._set_state(ConnectionState.DOWN,
                            f"IB servers unreachable: IB Gateway is up but has lost its connection to IB "
                            f"(error {self.servers_lost}); no order is sent until IB reports it restored")
        else:
            back = ""
            if self._state == ConnectionState.DOWN and self.down_since is not None:
                back = f"; back after {_duration((self.clock.now() - self.down_since).total_seconds())} down"
            detail = f"{what} {self.who}{back}"
            if self.competing:
                self._set_state(ConnectionState.DEGRADED, detail + "; no market data: a live session elsewhere "
                                "(TWS or IBKR Mobile with the same username) holds it (error 10197); log it out")
            elif self.delayed:
                self._set_state(ConnectionState.DEGRADED, detail + "; delayed market data: no real-time "
                                "subscription")
            else:
                self._set_state(ConnectionState.CONNECTED, detail)
            self._outage_t0 = None
            self._login_alerted = False

    # --- connect, close, reconnect ---------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, check the account, resynchronise; raises BrokerError when IB Gateway cannot be
        reached, LiveAccountRefused when the account is live and live trading is not allowed."""
        self._closing = False
        self._connecting = True
        try:
            await self._connect_once()
            self._resync_needed = False
            await self._after_connect("connected to")
        except BrokerError as e:
            self._closing = True
            self._socket_detail = f"no connection to IB Gateway: {e}"
            self._set_state(ConnectionState.DOWN, self._socket_detail)
            self.down_since = self.down_since or self.clock.now()
            if not isinstance(e, LiveAccountRefused):  # the caller retries connect(): the same outage
                if self._outage_t0 is None:
                    self._outage_t0 = asyncio.get_running_loop().time()
                self._login_alert()
            raise
        finally:
            self._connecting = False
        if self.servers_lost is not None or self._resync_needed or not self._ready:
            self._start_recovery()  # e.g. a 1100 during the handshake: wait for its restore

    async def close(self) -> None:
        self._closing = True
        task, self.recovery = self.recovery, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.ib.isConnected() or self.ib.client.isConnected():  # type: ignore[no-untyped-call]
            self.ib.disconnect()
        self._ready = False
        self._wake()
        self._socket_detail = "closed"
        self._set_state(ConnectionState.DOWN, "closed")

    async def sync(self) -> None:
        """One round trip to IB Gateway: every message it sent before has been processed after this."""
        await self.call(self.ib.reqCurrentTimeAsync, "current time")

    async def _connect_once(self) -> None:
        """Open the socket and check the account (no resync); BrokerError when it fails."""
        ib = self.ib
        self.servers_lost = None  # a new session: the gateway tells a new client what it lost
        self.competing = False
        try:
            await asyncio.wait_for(
                ib.connectAsync(self.host, self.port, self.client_id, timeout=self.connect_timeout,
                                account=self._account_cfg),
                self.connect_timeout * 4)
        except (OSError, TimeoutError, ConnectionError) as e:
            ib.disconnect()
            raise BrokerError(f"ib: cannot connect to IB Gateway (client id {self.client_id}): {_why(e)}") from e
        accounts = ib.managedAccounts()
        account = self._account_cfg or (accounts[0] if accounts else "")
        if not account or account not in accounts:
            self._drop()
            raise BrokerError(f"ib: account {mask_account(account) if account else '(none)'} is not managed by "
                              f"this login ({', '.join(mask_account(a) for a in accounts) or 'none'})")
        self.account = account
        self.mode = "paper" if account.startswith("D") else "live"
        if self.mode == "live" and not self.allow_live:
            self._drop()
            raise LiveAccountRefused(f"ib: {mask_account(account)} is a LIVE account and live trading is not "
                                     "allowed; refusing to trade it (use a paper account, or set "
                                     "ALLOW_LIVE_TRADING=true deliberately)")
        ib.client.MaxRequests = self.max_requests_per_s
        ib.client.RequestsInterval = 1

    def _drop(self) -> None:
        closing, self._closing = self._closing, True
        try:
            self.ib.disconnect()
        finally:
            self._closing = closing

    async def _after_connect(self, what: str) -> None:
        """Resynchronise after a (re)connect or restored connectivity: market data type, account
        data again after a 1101, then the broker's resync; only then report the state."""
        self._ready = False
        self.delayed = False  # try live data again; a no-subscription error switches back
        self.ib.reqMarketDataType(1)
        if self._resubscribe:
            self._resubscribe = False
            await self._resubscribe_account()
        await self._resync()
        self._ready = self.ib.isConnected()
        self._publish(what)

    async def _resubscribe_account(self) -> None:
        """1101: IB dropped the account and position subscriptions; ask for them again."""
        ib, account = self.ib, self.account
        self.stats["resubscribed"] += 1
        try:
            await self.call(lambda: ib.reqAccountUpdatesAsync(account), "account updates")
            await self.call(ib.reqPositionsAsync, "positions")
        except BrokerError as e:
            log.warning("ib: resubscribing the account data after error 1101 failed: %s", e)

    def on_disconnected(self) -> None:
        """``disconnectedEvent`` (it may fire more than once): one recovery, unless closing."""
        self._wake()
        self._ready = False
        if self._closing:
            return
        if self._outage_t0 is None:
            self._outage_t0 = asyncio.get_running_loop().time()
        self._socket_detail = "no connection to IB Gateway (the connection closed); reconnecting"
        self._publish()
        self._start_recovery()

    def _start_recovery(self) -> None:
        """One recovery at a time; a trigger while it runs is seen by its next check."""
        self._changed.set()
        if self._closing or self._connecting or (self.recovery is not None and not self.recovery.done()):
            return
        self.recovery = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        """Until both links are up (or closing): reconnect the socket with backoff, wait for IB's
        servers (dropping the socket past the grace period), resynchronise."""
        delay = self.reconnect_initial_s
        attempt = 0
        while not self._closing:
            if not self.ib.isConnected():
                self._ready = False
                if self._outage_t0 is None:
                    self._outage_t0 = asyncio.get_running_loop().time()
                await asyncio.sleep(delay)
                if self._closing:
                    return
                attempt += 1
                self.stats["reconnects"] += 1
                try:
                    await self._connect_once()
                    self._resync_needed = False
                    await self._after_connect("connected to")
                except LiveAccountRefused as e:
                    self._closing = True
                    self._socket_detail = str(e)
                    self._set_state(ConnectionState.DOWN, str(e))
                    return
                except BrokerError as e:
                    log.warning("ib: reconnect attempt %d failed: %s", attempt, e)
                    self._login_alert()
                    self._socket_detail = (f"{LOGIN_DETAIL}; reconnecting (attempt {attempt} failed)"
                                           if self._login_alerted else
                                           f"no connection to IB Gateway; reconnecting (attempt {attempt} failed: {e})")
                    self._publish()
                    delay = min(delay * 2, self.reconnect_max_s)
                    continue
                except Exception:
                    log.exception("ib: reconnect attempt %d failed", attempt)
                    self._drop()
                    delay = min(delay * 2, self.reconnect_max_s)
                    continue
                delay, attempt = self.reconnect_initial_s, 0
                continue
            if self.servers_lost is not None:
                self._publish()
                code = self.servers_lost
                if not await self._await_restore():
                    log.warning("ib: IB's servers not restored %.0f s after error %d; reconnecting the socket",
                                self.connectivity_grace_s, code)
                    self._socket_detail = (f"IB servers unreachable for {self.connectivity_grace_s:.0f} s "
                                           f"(error {code}); reconnecting to IB Gateway")
                    self._ready = False
                    self._drop()
                    self._publish()
                continue
            if self._resync_needed or not self._ready:
                self._resync_needed = False
                try:
                    await self._after_connect("IB servers reachable again; connected to")
                except Exception:
                    log.exception("ib: resynchronising after IB's servers came back failed; retrying")
                    self._resync_needed = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.reconnect_max_s)
                continue
            return

    async def _await_restore(self) -> bool:
        """Wait for 1101/1102 (or a lost socket) up to the grace period; True when restored."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connectivity_grace_s
        while self.servers_lost is not None and self.ib.isConnected():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return False
        return True

    def _login_alert(self) -> None:
        """Once per outage, when the gateway refuses connections past its daily restart: say what
        to do (the weekly full login waits for an approval on the phone)."""
        if self._outage_t0 is None or self._login_alerted:
            return
        down_s = asyncio.get_running_loop().time() - self._outage_t0
        if down_s < self.login_alert_after_s:
            return
        self._login_alerted = True
        detail = f"{LOGIN_DETAIL} (for {_duration(down_s)})"
        self._socket_detail = detail
        self.detail = detail
        log.warning("ib: %s", detail)
        self.tell(lambda listener: listener.on_connection(ConnectionState.DOWN, detail), "the login alert")

    def _on_error(self, req_id: int, code: int, text: str, contract: Contract | None) -> None:
        """Connectivity and subscription errors; errors of one request are the requester's."""
        try:
            if code in CONNECTIVITY_LOST:
                self.servers_lost = code
                log.warning("ib: IB servers unreachable (error %d: %s)", code, text)
                self._publish()
                self._start_recovery()
            elif code in CONNECTIVITY_RESTORED:
                log.info("ib: IB servers reachable again (error %d: %s)", code, text)
                self.servers_lost = None
                self._resync_needed = True
                if code == DATA_LOST:
                    self._resubscribe = True
                self._start_recovery()
            elif code in NO_SUBSCRIPTION:
                self._go_delayed(code, text)
            elif code == COMPETING_SESSION:
                self._competing(text)
            elif code in FARM_STATUS:
                log.info("ib: farm status (error %d: %s)", code, text)
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

    def _competing(self, text: str) -> None:
        """10197: another live session (TWS, IBKR Mobile) of the same username holds the market
        data; delayed data is asked for (never traded on) and the state says what to do."""
        if self.competing:
            return
        self.competing = True
        log.warning("ib: no market data during a competing live session (error 10197: %s)", text)
        if not self.delayed:
            self.delayed = True
            if self.ib.isConnected():
                self.ib.reqMarketDataType(3)
        if self._state != ConnectionState.DOWN:
            self._publish()

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
        """The socket to IB Gateway is up (NotSent when not: nothing left the bot)."""
        if not self.ib.isConnected():
            raise NotSent(f"ib: not connected to IB Gateway ({self.detail})")

    def require_trading(self) -> None:
        """An order, modify or cancel may be sent: the socket is up and IB Gateway reaches IB's
        servers (after a 1100 the gateway could only hold the request: NotSent, nothing sent)."""
        self.require_connected()
        if self.servers_lost is not None:
            raise NotSent(f"ib: not sent: IB servers unreachable (IB Gateway reported error {self.servers_lost}; "
                          "it is up but has lost its connection to IB)")

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
