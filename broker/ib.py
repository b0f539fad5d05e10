"""The `ib` broker: Interactive Brokers through `ib_async` 2.1.0 and IB Gateway/TWS.

Runs inside the bot's asyncio loop: only `ib_async`'s ``*Async`` requests and its non-blocking
calls (``placeOrder``, ``cancelOrder``, ``reqMarketDataType``) are used, and every wait is bounded
by ``asyncio.wait_for``. What it adds to `ib_async`:

- connection life cycle: paper/live detection (a live account is refused unless ``allow_live``),
  a reconnect loop with capped exponential backoff on ``disconnectedEvent``, recovery on IB's
  connectivity errors 1100/1101/1102/2110, and after every (re)connect: contracts re-qualified,
  market data type re-applied, orders re-bound by order reference and missed executions replayed
  to the listener, before the state becomes CONNECTED (or DEGRADED) again;
- market data by snapshots (``reqTickersAsync``) in paced batches, with delayed data as fallback
  on the no-subscription errors (354/10089/10167/10168), reported as DEGRADED;
- option chains from ``reqSecDefOptParams``, option quotes with IB's model greeks (delta and IV are
  None when IB sends none: the strategy computes a missing delta, `strategy.selection.quote_delta`);
- DAY limit orders with the bot's order reference in ``orderRef``, combos (BAG) for rolls, and the
  mapping of IB's order status, executions and (possibly late) commission reports to the
  `BrokerListener` events, each execution id once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from ib_async import IB, Contract, ExecutionFilter, Fill, LimitOrder, Ticker, Trade
from ib_async.objects import CommissionReport as IbCommissionReport

from broker import ib_convert as cv
from broker.base import (
    AccountSummary,
    BrokerError,
    BrokerListener,
    BrokerMode,
    BrokerOrder,
    CommissionReport,
    ConnectionState,
    DailyBar,
    Execution,
    Instrument,
    LiveAccountRefused,
    MarketDataKind,
    OptionChain,
    OrderLeg,
    OrderRequest,
    OrderStatus,
    OrderUpdate,
    Position,
    StockContract,
    limit_problem,
    request_problem,
)
from broker.clock import Clock, WallClock
from strategy.calendar import NY, SessionCalendar
from strategy.model import OptionContract, OptionQuote, Quote

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECTIVITY_LOST = frozenset({1100, 2110})
CONNECTIVITY_RESTORED = frozenset({1101, 1102})
NO_SUBSCRIPTION = frozenset({354, 10089, 10167, 10168})
DELAYED_DATA_AGE = timedelta(minutes=15)  # IB's delayed data lags 15-20 minutes
DELAYED_SENT_ANYWAY = 10167  # a warning: delayed data follows on the same request
PACING = frozenset({100, 162, 420})
PENDING = frozenset({"PendingSubmit", "ApiPending"})


class IBBroker:
    """A `Broker` on Interactive Brokers; see the module docstring.

    ``host``/``port``/``client_id`` locate IB Gateway (paper 4002/4004, live 4001/4003). ``account``
    picks one of several managed accounts (default: the first). ``calendar`` lets `prev_close`
    skip non-session days like the sim does."""

    name = "ib"
    supports_combo = True

    def __init__(
        self, host: str, port: int, client_id: int, *, allow_live: bool = False, connect_timeout: float = 10.0,
        request_timeout: float = 10.0, clock: Clock | None = None, account: str = "",
        calendar: SessionCalendar | None = None, reconnect_initial_s: float = 1.0, reconnect_max_s: float = 60.0,
        connectivity_grace_s: float = 120.0, pacing_backoff_s: float = 1.0, max_requests_per_s: int = 40,
        snapshot_batch: int = 40, ib: IB | None = None,
    ) -> None:
        self.host = host
        self.port = int(port)
        self.client_id = int(client_id)
        self.allow_live = allow_live
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.clock: Clock = clock or WallClock()
        self.calendar = calendar
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.connectivity_grace_s = connectivity_grace_s
        self.pacing_backoff_s = pacing_backoff_s
        self.max_requests_per_s = max_requests_per_s
        self.snapshot_batch = max(1, snapshot_batch)
        self.mode: BrokerMode = "paper"
        self.account = account
        self._account_cfg = account
        self._ib = ib or IB()
        self._listener: BrokerListener | None = None
        self._state = ConnectionState.DOWN
        self.detail = "not connected"
        self._closing = True
        self._delayed = False
        self._recovery: asyncio.Task[None] | None = None
        self._restored: asyncio.Event | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._qualified: dict[str, Contract] = {}
        self._instruments: dict[int, Instrument] = {}  # conId → instrument
        self._by_ref: dict[str, Trade] = {}
        self._requests: dict[str, OrderRequest] = {}
        self._last_update: dict[str, tuple[OrderStatus, int]] = {}
        self._emitted_execs: set[str] = set()
        self._emitted_commissions: set[str] = set()
        self._req_errors: dict[int, int] = {}  # conId → last error code of a data request
        self._prev_close: dict[tuple[str, date], Decimal] = {}
        self._chain: dict[tuple[str, date], OptionChain] = {}
        self.stats: dict[str, int] = {"snapshots": 0, "qualify": 0, "history": 0, "reconnects": 0}
        ib_ = self._ib
        ib_.disconnectedEvent += self._on_disconnected
        ib_.errorEvent += self._on_error
        ib_.execDetailsEvent += self._on_exec
        ib_.commissionReportEvent += self._on_commission
        ib_.orderStatusEvent += self._on_status
        ib_.updateEvent += self._on_update

    # --- connection ------------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def market_data(self) -> MarketDataKind:
        """"live" or "delayed" (for /status)."""
        return "delayed" if self._delayed else "live"

    def set_listener(self, listener: BrokerListener | None) -> None:
        self._listener = listener

    async def connect(self) -> None:
        """Connect, check the account, resynchronise; raises BrokerError when IB Gateway cannot be
        reached or the account is live and live trading is not allowed."""
        self._closing = False
        try:
            await self._connect_once()
        except BrokerError:
            self._closing = True
            raise

    async def close(self) -> None:
        self._closing = True
        task, self._recovery = self._recovery, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._ib.isConnected() or self._ib.client.isConnected():  # type: ignore[no-untyped-call]
            self._ib.disconnect()
        self._wake()
        self._set_state(ConnectionState.DOWN, "closed")

    async def sync(self) -> None:
        """One round trip to IB Gateway: every message it sent before has been processed after this."""
        await self._call(self._ib.reqCurrentTimeAsync, "current time")

    async def _connect_once(self) -> None:
        ib = self._ib
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
            self._ib.disconnect()
        finally:
            self._closing = closing

    async def _after_connect(self, what: str) -> None:
        """Resynchronise after a (re)connect or restored connectivity: market data type, contracts,
        orders by reference, executions missed meanwhile; only then report the state."""
        ib = self._ib
        self._delayed = False  # try live data again; a no-subscription error switches back
        ib.reqMarketDataType(1)
        instruments = list({c.conId: self._instruments[c.conId] for c in self._qualified.values()
                            if c.conId in self._instruments}.values())
        self._qualified.clear()
        if instruments:
            try:
                await self._qualify(instruments)
            except BrokerError as e:
                log.warning("ib: re-qualifying contracts failed: %s", e)
        self._rebind_orders()
        self._replay_executions()
        detail = f"{what} to {self.host}:{self.port} as client {self.client_id}, account {self.account} ({self.mode})"
        if self._delayed:
            self._set_state(ConnectionState.DEGRADED, detail + "; delayed market data")
        else:
            self._set_state(ConnectionState.CONNECTED, detail)

    def _set_state(self, state: ConnectionState, detail: str) -> None:
        self.detail = detail
        if state == self._state:
            return
        self._state = state
        log.info("ib: %s (%s)", state.value, detail)
        self._tell(lambda listener: listener.on_connection(state, detail), "a connection change")

    def _tell(self, event: Callable[[BrokerListener], None], what: str) -> None:
        """Hand one event to the engine's listener; its failure is logged, never raised into ib_async."""
        listener = self._listener
        if listener is None:
            return
        try:
            event(listener)
        except Exception:
            log.exception("ib: the listener failed on %s", what)

    def _on_disconnected(self) -> None:
        self._wake()
        if self._closing:
            return
        self._set_state(ConnectionState.DOWN, "connection to IB Gateway lost; reconnecting")
        self._start_recovery(self._reconnect_loop())

    def _start_recovery(self, work: Awaitable[None]) -> None:
        """One recovery (reconnect or resync) at a time; a second trigger while one runs is dropped."""
        if self._recovery is not None and not self._recovery.done():
            if asyncio.iscoroutine(work):
                work.close()
            return
        self._recovery = asyncio.ensure_future(work)

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
        if self._ib.isConnected():
            await self._after_connect("connectivity restored")

    def _on_error(self, req_id: int, code: int, text: str, contract: Contract | None) -> None:
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
                if contract is not None and code != DELAYED_SENT_ANYWAY:
                    self._req_errors[contract.conId] = code
                self._go_delayed(code, text)
            elif code in PACING and contract is not None:
                self._req_errors[contract.conId] = code
            elif code == 200 and contract is not None:
                self._req_errors[contract.conId] = code
        except Exception:
            log.exception("ib: handling error %d failed", code)

    def _go_delayed(self, code: int, text: str) -> None:
        if self._delayed:
            return
        self._delayed = True
        log.warning("ib: no market data subscription (error %d: %s); using delayed data", code, text)
        if self._ib.isConnected():
            self._ib.reqMarketDataType(3)
        if self._state != ConnectionState.DOWN:
            self._set_state(ConnectionState.DEGRADED, f"delayed market data: no real-time subscription (error {code})")

    # --- waiting ---------------------------------------------------------------------------------

    def _on_update(self) -> None:
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    async def _until(self, cond: Callable[[], bool], wait_s: float) -> bool:
        """Wait until ``cond()`` holds, re-checking after every batch of messages from IB."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not cond():
            remaining = deadline - loop.time()
            if remaining <= 0 or not self._ib.isConnected():
                return cond()
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                return cond()
        return True

    def _require_connected(self) -> None:
        if not self._ib.isConnected():
            raise BrokerError(f"ib: not connected to IB Gateway ({self.detail})")

    async def _call(self, make: Callable[[], Awaitable[T]], what: str, limit_s: float | None = None) -> T:
        """One request, bounded by a timeout; connection problems become BrokerError."""
        self._require_connected()
        limit = limit_s or self.request_timeout
        try:
            return await asyncio.wait_for(make(), limit)
        except TimeoutError as e:
            raise BrokerError(f"ib: {what} timed out after {limit:.0f} s") from e
        except (ConnectionError, OSError) as e:
            raise BrokerError(f"ib: {what} failed, connection lost: {e}") from e

    def _now(self) -> datetime:
        return self.clock.now()

    def _quote_time(self) -> datetime:
        """When a quote's prices were true: now for live data; for delayed data (no real-time
        subscription) IB's delay ago, so the engine's freshness check never trades on it."""
        now = self._now()
        return now - DELAYED_DATA_AGE if self._delayed else now

    def _today(self) -> date:
        return self._now().astimezone(NY).date()

    # --- contracts -------------------------------------------------------------------------------

    async def _qualify(self, instruments: Sequence[Instrument]) -> dict[str, Contract]:
        """Qualified IB contracts by instrument key; unknown instruments are left out."""
        missing = [i for i in dict.fromkeys(instruments) if i.key not in self._qualified]
        if missing:
            contracts = [cv.to_ib(i) for i in missing]
            self.stats["qualify"] += len(contracts)
            result = await self._call(lambda: self._ib.qualifyContractsAsync(*contracts), "contract lookup")
            for ins, c in zip(missing, result, strict=True):
                if isinstance(c, Contract) and c.conId:
                    self._qualified[ins.key] = c
                    self._instruments[c.conId] = ins
        return {i.key: self._qualified[i.key] for i in instruments if i.key in self._qualified}

    async def _contract(self, ins: Instrument) -> Contract:
        found = await self._qualify([ins])
        c = found.get(ins.key)
        if c is None:
            raise BrokerError(f"ib: {ins.key} is not a known contract")
        return c

    async def _instrument_of(self, con_id: int) -> Instrument | None:
        ins = self._instruments.get(con_id)
        if ins is None:
            details = await self._call(lambda: self._ib.reqContractDetailsAsync(Contract(conId=con_id)),
                                       "contract lookup")
            if details and details[0].contract is not None:
                ins = cv.from_ib(details[0].contract)
                if ins is not None:
                    self._instruments[con_id] = ins
                    self._qualified[ins.key] = details[0].contract
        return ins

    # --- market data -----------------------------------------------------------------------------

    async def _snapshots(self, contracts: Sequence[Contract]) -> dict[int, Ticker]:
        """Snapshot tickers by conId, in batches of at most ``snapshot_batch`` requests; the
        requests that failed for a missing subscription or pacing are retried once."""
        out: dict[int, Ticker] = {}
        todo = list({c.conId: c for c in contracts}.values())
        for attempt in range(2):
            failed: list[Contract] = []
            for i in range(0, len(todo), self.snapshot_batch):
                batch = todo[i:i + self.snapshot_batch]
                for c in batch:
                    self._req_errors.pop(c.conId, None)
                for c, t in zip(batch, await self._snapshot_batch(batch), strict=True):
                    code = self._req_errors.pop(c.conId, None)
                    if t is not None and _has_data(t):
                        out[c.conId] = t
                    elif code in PACING or code in NO_SUBSCRIPTION:
                        failed.append(c)
            if not failed or attempt:
                break
            if any(self._req_errors.get(c.conId) in PACING for c in failed):
                await asyncio.sleep(self.pacing_backoff_s)
            todo = failed
        return out

    async def _snapshot_batch(self, batch: list[Contract]) -> list[Ticker | None]:
        self._require_connected()
        ib = self._ib
        self.stats["snapshots"] += len(batch)
        try:
            tickers: list[Ticker | None] = list(
                await asyncio.wait_for(ib.reqTickersAsync(*batch), self.request_timeout))
        except TimeoutError:
            log.warning("ib: %d market data snapshot(s) did not end within %.0f s; using what arrived",
                        len(batch), self.request_timeout)
            tickers = [ib.ticker(c) for c in batch]
            self._abandon_snapshots(batch)
        except (ConnectionError, OSError) as e:
            raise BrokerError(f"ib: market data request failed, connection lost: {e}") from e
        finally:
            self._forget_tickers(batch)
        return tickers

    def _abandon_snapshots(self, batch: list[Contract]) -> None:
        """Cancel snapshot requests that never ended (IB sometimes never sends tickSnapshotEnd)."""
        w = self._ib.wrapper
        for c in batch:
            t = self._ib.ticker(c)
            req_id = w.endTicker(t, "snapshot") if t is not None else 0
            if req_id:
                with contextlib.suppress(ConnectionError):
                    self._ib.client.cancelMktData(req_id)  # type: ignore[no-untyped-call]
                w._futures.pop(req_id, None)

    def _forget_tickers(self, batch: list[Contract]) -> None:
        """Snapshot tickers are cached by ib_async for ever; drop them (the bot runs for months)."""
        w = self._ib.wrapper
        streaming = w.ticker2ReqId.get("mktData", {})
        done = set()
        for c in batch:
            t = w.tickers.get(hash(c))
            if t is not None and t not in streaming:
                w.tickers.pop(hash(c), None)
                done.add(id(t))
        if done:
            for req_id in [r for r, t in w.reqId2Ticker.items() if id(t) in done]:
                w.reqId2Ticker.pop(req_id, None)

    async def quote(self, symbol: str) -> Quote:
        c = await self._contract(StockContract(symbol))
        t = (await self._snapshots([c])).get(c.conId)
        if t is None:
            raise BrokerError(f"ib: no market data for {symbol} ({self.market_data} data)")
        return Quote(symbol, cv.price(t.bid), cv.price(t.ask), cv.price(t.last), self._quote_time())

    async def prev_close(self, symbol: str) -> Decimal:
        today = self._today()
        current = today
        cal = self.calendar
        if cal is not None and cal.first <= today <= cal.last and not cal.is_session(today):
            prev = cal.previous_session(today)
            current = prev.day if prev is not None else today
        key = (symbol, current)
        cached = self._prev_close.get(key)
        if cached is not None:
            return cached
        bars = await self._history(symbol, "", "10 D")
        before = [b for b in bars if _bar_day(b.date) < current]
        if not before:
            raise BrokerError(f"ib: no daily bar of {symbol} before {current}")
        close = cv.dec(before[-1].close)
        assert close is not None
        close = close.quantize(cv.CENT)
        self._prev_close = {k: v for k, v in self._prev_close.items() if k[1] >= current}
        self._prev_close[key] = close
        return close

    async def historical_daily_bars(self, symbol: str, start: date, end: date) -> list[DailyBar]:
        """Daily TRADES bars (regular hours) from ``start`` to ``end`` inclusive, for
        ``qqq-bot backtest --source ib``. One request (IB allows years of daily bars per request)."""
        if end < start:
            raise BrokerError("ib: the end of a bar range is before its start")
        days = (end - start).days + 1
        duration = f"{days} D" if days <= 365 else f"{math.ceil(days / 365)} Y"
        end_at = datetime.combine(end, time(23, 59, 59), NY)
        bars = await self._history(symbol, end_at, duration, max(self.request_timeout, 60.0))
        return [DailyBar(_bar_day(b.date), b.open, b.high, b.low, b.close) for b in bars
                if start <= _bar_day(b.date) <= end]

    async def _history(self, symbol: str, end: datetime | str, duration: str, limit_s: float | None = None
                       ) -> list[Any]:
        c = await self._contract(StockContract(symbol))
        limit = limit_s or self.request_timeout
        code: int | None = None
        for attempt in range(3):
            self._req_errors.pop(c.conId, None)
            self.stats["history"] += 1
            bars = await self._call(
                lambda: self._ib.reqHistoricalDataAsync(c, end, duration, "1 day", "TRADES", True, 1, False, [],
                                                        timeout=limit),
                f"daily bars of {symbol}", limit + 1)
            if bars:
                return list(bars)
            code = self._req_errors.pop(c.conId, None)
            if code not in PACING:
                break
            await asyncio.sleep(self.pacing_backoff_s * 2 ** attempt)
        raise BrokerError(f"ib: no daily bars for {symbol}" + (f" (IB error {code})" if code else ""))

    async def option_chain(self, symbol: str) -> OptionChain:
        today = self._today()
        cached = self._chain.get((symbol, today))
        if cached is not None:
            return cached
        und = await self._contract(StockContract(symbol))
        chains = await self._call(lambda: self._ib.reqSecDefOptParamsAsync(symbol, "", "STK", und.conId),
                                  f"option chain of {symbol}")
        picked = [ch for ch in chains if ch.exchange == "SMART" and ch.tradingClass == symbol] or \
            [ch for ch in chains if ch.tradingClass == symbol] or list(chains)
        if not picked:
            raise BrokerError(f"ib: IB lists no options on {symbol}")
        ch = picked[0]
        expiries = tuple(sorted({d for e in ch.expirations if (d := cv.ib_date(e)) >= today}))
        strikes = tuple(sorted({k for s in ch.strikes if (k := cv.dec(s)) is not None and k > 0}))
        chain = OptionChain(symbol, expiries, strikes)
        self._chain = {(symbol, today): chain}
        return chain

    async def option_quotes(self, contracts: Sequence[OptionContract]) -> list[OptionQuote]:
        """Snapshots of exactly these contracts (the caller asks for a narrow window); delta and IV
        from IB's model greeks, both None when IB sent no usable ones."""
        if not contracts:
            return []
        qualified = await self._qualify(contracts)
        listed = [(oc, qualified[oc.key]) for oc in contracts if oc.key in qualified]
        tickers = await self._snapshots([c for _, c in listed])
        now = self._quote_time()
        out = []
        for oc, c in listed:
            t = tickers.get(c.conId)
            if t is None:
                continue
            bid, ask = cv.price(t.bid), cv.price(t.ask)
            if ask is None:
                continue
            delta, iv = cv.model_delta_iv(t.modelGreeks)
            out.append(OptionQuote(oc, bid if bid is not None else Decimal(0), ask, now, delta, iv, cv.CENT))
        return out

    # --- orders ----------------------------------------------------------------------------------

    async def place_order(self, request: OrderRequest) -> str:
        """Send a DAY limit order (a BAG combo for several legs) with ``orderRef`` = the bot's
        reference, and wait (bounded) for IB's acknowledgement. A rejection emits a REJECTED update
        and raises BrokerError, like the sim."""
        self._require_connected()
        ref = request.order_ref
        if ref in self._by_ref or ref in self._requests:
            raise BrokerError(f"ib: order reference {ref} was already used; duplicate refused")
        problem = request_problem(request)
        if problem is not None:
            raise BrokerError(f"ib: {problem}")
        found = await self._qualify([leg.instrument for leg in request.legs])
        missing = [leg.instrument.key for leg in request.legs if leg.instrument.key not in found]
        if missing:
            raise BrokerError(f"ib: unknown contract(s) {', '.join(missing)}")
        if request.is_combo:
            symbol = request.legs[0].instrument.symbol
            contract = cv.bag(symbol, [(found[leg.instrument.key].conId, leg.ratio, leg.action)
                                       for leg in request.legs])
        else:
            contract = found[request.legs[0].instrument.key]
        order = LimitOrder(request.action, request.qty, float(request.limit), orderRef=ref, tif="DAY",
                           account=self.account, transmit=True)
        self._requests[ref] = request
        try:
            trade = self._ib.placeOrder(contract, order)
        except ConnectionError as e:
            self._requests.pop(ref, None)
            raise BrokerError(f"ib: order {ref} not sent, connection lost: {e}") from e
        self._by_ref[ref] = trade
        acked = await self._until(lambda: trade.orderStatus.status not in PENDING, self.request_timeout)
        if not acked:
            log.warning("ib: no acknowledgement of order %s within %.0f s; reconciliation will settle it", ref,
                        self.request_timeout)
        mapped = cv.status_of(trade)
        if mapped is not None and mapped[0] == OrderStatus.REJECTED:
            self._emit_update(ref, trade)
            raise BrokerError(f"ib: order {ref} rejected: {mapped[1]}")
        return str(trade.order.orderId)

    def _trade(self, order_ref: str) -> Trade:
        self._require_connected()
        trade = self._by_ref.get(order_ref)
        if trade is None:
            raise BrokerError(f"ib: no order {order_ref}")
        last = self._last_update.get(order_ref)
        if last is not None and last[0].is_final:  # also when the Trade object is from a previous session
            raise BrokerError(f"ib: order {order_ref} is already {last[0].value}")
        if trade.isDone():
            raise BrokerError(f"ib: order {order_ref} is already {trade.orderStatus.status.lower()}")
        return trade

    async def modify_order(self, order_ref: str, limit: Decimal) -> None:
        trade = self._trade(order_ref)
        problem = limit_problem(limit, trade.contract.secType == "BAG")
        if problem is not None:
            raise BrokerError(f"ib: invalid limit for {order_ref}: {problem}")
        trade.order.lmtPrice = float(limit)
        try:
            self._ib.placeOrder(trade.contract, trade.order)
        except (ConnectionError, AssertionError) as e:
            raise BrokerError(f"ib: modify of {order_ref} not sent: {e}") from e

    async def cancel_order(self, order_ref: str) -> None:
        trade = self._trade(order_ref)
        try:
            self._ib.cancelOrder(trade.order)
        except ConnectionError as e:
            raise BrokerError(f"ib: cancel of {order_ref} not sent: {e}") from e
        await self._until(trade.isDone, self.request_timeout)

    async def open_orders(self) -> list[BrokerOrder]:
        trades = await self._call(self._ib.reqOpenOrdersAsync, "open orders")
        out = []
        for t in trades:
            ref = t.order.orderRef
            if not ref or t.isDone():
                continue
            self._by_ref[ref] = t
            req = await self._request_of(t)
            if req is None:
                continue
            mapped = cv.status_of(t)
            status = mapped[0] if mapped is not None else OrderStatus.SUBMITTED
            out.append(BrokerOrder(ref, str(t.order.orderId), req, status, int(t.orderStatus.filled)))
        return out

    async def _request_of(self, t: Trade) -> OrderRequest | None:
        ref = t.order.orderRef
        limit = cv.dec(t.order.lmtPrice)
        known = self._requests.get(ref)
        if known is not None and limit is not None:
            return OrderRequest(ref, known.legs, int(t.order.totalQuantity), limit)
        c = t.contract
        legs: list[OrderLeg] = []
        if c.secType == "BAG":
            for leg in c.comboLegs or []:
                ins = await self._instrument_of(leg.conId)
                if ins is None:
                    return None
                legs.append(OrderLeg(ins, "BUY" if leg.action == "BUY" else "SELL", leg.ratio))
        else:
            ins = cv.from_ib(c)
            if ins is None:
                return None
            legs.append(OrderLeg(ins, "BUY" if t.order.action == "BUY" else "SELL"))
        return OrderRequest(ref, tuple(legs), int(t.order.totalQuantity), limit or Decimal(0))

    # --- events from IB --------------------------------------------------------------------------

    def _on_status(self, trade: Trade) -> None:
        ref = trade.order.orderRef
        if ref and ref in self._by_ref:
            self._emit_update(ref, trade)

    def _emit_update(self, ref: str, trade: Trade) -> None:
        mapped = cv.status_of(trade)
        if mapped is None:
            return
        status, message = mapped
        filled = int(trade.orderStatus.filled)
        last = self._last_update.get(ref)
        if last is not None and (last[0].is_final or last == (status, filled)):
            return
        self._last_update[ref] = (status, filled)
        qty = int(trade.order.totalQuantity)
        self._notify(OrderUpdate(ref, str(trade.order.orderId), status, filled, max(qty - filled, 0), message))

    def _notify(self, update: OrderUpdate) -> None:
        self._tell(lambda listener: listener.on_order_update(update), f"the update of {update.order_ref}")

    def _on_exec(self, trade: Trade, fill: Fill) -> None:
        self._emit_execution(fill)

    def _emit_execution(self, fill: Fill) -> None:
        try:
            ex = cv.execution(fill)
        except Exception:
            log.exception("ib: cannot read execution %s", fill.execution.execId)
            return
        if ex is None or ex.exec_id in self._emitted_execs:
            return
        self._emitted_execs.add(ex.exec_id)
        if ex.commission is not None:
            self._emitted_commissions.add(ex.exec_id)
        self._tell(lambda listener: listener.on_execution(ex), f"execution {ex.exec_id}")

    def _on_commission(self, trade: Trade, fill: Fill, report: IbCommissionReport) -> None:
        self._emit_commission(fill, report)

    def _emit_commission(self, fill: Fill, report: IbCommissionReport) -> None:
        if fill.contract.secType == "BAG" or not report.execId:
            return
        exec_id = report.execId
        if exec_id in self._emitted_commissions:
            return
        if exec_id not in self._emitted_execs:  # the fill first, with its commission
            self._emit_execution(fill)
            return
        self._emitted_commissions.add(exec_id)
        commission = cv.dec(report.commission)
        if commission is not None:
            report_ = CommissionReport(exec_id, commission)
            self._tell(lambda listener: listener.on_commission(report_), f"the commission of {exec_id}")

    def _rebind_orders(self) -> None:
        """After a (re)connect ib_async has new Trade objects: bind them to the bot's references;
        an order the bot was working that is no longer open is settled from its fills."""
        open_by_ref = {t.order.orderRef: t for t in self._ib.openTrades() if t.order.orderRef}
        for ref, old in list(self._by_ref.items()):
            new = open_by_ref.get(ref)
            if new is not None:
                self._by_ref[ref] = new
                self._emit_update(ref, new)
                continue
            last = self._last_update.get(ref)
            if last is not None and last[0].is_final:
                continue
            qty = int(old.order.totalQuantity)
            filled = self._filled(ref)
            status = OrderStatus.FILLED if filled >= qty else OrderStatus.CANCELLED
            self._last_update[ref] = (status, filled)
            self._notify(OrderUpdate(ref, str(old.order.orderId), status, filled, max(qty - filled, 0),
                                     "settled after reconnect" if status == OrderStatus.CANCELLED else ""))
        for ref, t in open_by_ref.items():
            self._by_ref.setdefault(ref, t)

    def _filled(self, ref: str) -> int:
        """Quantity filled of an order (combo units for a BAG) from the executions ib_async holds."""
        fills = [f for f in self._ib.fills() if f.execution.orderRef == ref]
        bags = [f for f in fills if f.contract.secType == "BAG"]
        if bags:
            return int(sum(f.execution.shares for f in bags))
        req = self._requests.get(ref)
        if req is not None and req.is_combo:
            first = req.legs[0]
            return int(sum(f.execution.shares for f in fills
                           if cv.from_ib(f.contract) == first.instrument) // first.ratio)
        return int(sum(f.execution.shares for f in fills))

    def _replay_executions(self) -> None:
        """Executions IB reported at connect that the listener has not seen (missed while down)."""
        for fill in sorted(self._ib.fills(), key=lambda f: f.execution.time):
            self._emit_execution(fill)
            report = fill.commissionReport
            if report.execId:
                self._emit_commission(fill, report)

    # --- reconciliation and account --------------------------------------------------------------

    async def executions(self, since: datetime | None = None) -> list[Execution]:
        """Executions IB still reports (IB keeps the current day's, up to 7 days in TWS' settings),
        with commissions where known, optionally from ``since``."""
        flt = ExecutionFilter()
        if since is not None:
            flt.time = since.astimezone(UTC).strftime("%Y%m%d-%H:%M:%S")
        fills = await self._call(lambda: self._ib.reqExecutionsAsync(flt), "executions")
        known = {f.execution.execId: f for f in self._ib.fills()}
        out = []
        for f in fills:
            stored = known.get(f.execution.execId)
            best = stored if stored is not None and stored.commissionReport.execId else f
            ex = cv.execution(best)
            if ex is not None and (since is None or ex.time >= since):
                out.append(ex)
        return sorted(out, key=lambda e: (e.time, e.exec_id))

    async def _account_values(self) -> dict[tuple[str, str], str]:
        values = self._ib.accountValues(self.account)
        if not values:
            await self._call(lambda: self._ib.reqAccountUpdatesAsync(self.account), "account values")
            values = self._ib.accountValues(self.account)
        return {(v.tag, v.currency): v.value for v in values}

    async def positions(self) -> list[Position]:
        """Every holding of the account (stocks, options, bonds), then cash by currency."""
        self._require_connected()
        out: list[Position] = []
        items = self._ib.portfolio(self.account)
        if items:
            for it in items:
                c = it.contract
                ins = cv.from_ib(c)
                mult = int(float(c.multiplier or 1)) if c.secType in ("OPT", "FOP") else 1
                avg = cv.dec(it.averageCost)
                out.append(Position(cv.category(c.secType), c.symbol, cv.description(c, ins),
                                    cv.dec(it.position) or Decimal(0),
                                    (avg / mult).quantize(Decimal("0.0001")) if avg is not None else Decimal(0),
                                    cv.dec(it.marketPrice), cv.dec(it.marketValue), c.currency or "USD", ins))
        else:
            for pos in self._ib.positions(self.account):
                c = pos.contract
                ins = cv.from_ib(c)
                mult = int(float(c.multiplier or 1)) if c.secType in ("OPT", "FOP") else 1
                avg = cv.dec(pos.avgCost) or Decimal(0)
                out.append(Position(cv.category(c.secType), c.symbol, cv.description(c, ins),
                                    cv.dec(pos.position) or Decimal(0), (avg / mult).quantize(Decimal("0.0001")),
                                    None, None, c.currency or "USD", ins))
        values = await self._account_values()
        for (tag, cur), value in sorted(values.items()):
            amount = _decimal(value)
            if tag == "CashBalance" and cur != "BASE" and amount is not None:
                out.append(Position("cash", cur, f"{cur} cash", amount, Decimal(1), Decimal(1), amount, cur))
        return out

    async def account_summary(self) -> AccountSummary:
        self._require_connected()
        values = await self._account_values()
        base = next((cur for (tag, cur) in values if tag == "NetLiquidation" and cur != "BASE"), "USD")

        def get(tag: str, cur: str = base) -> Decimal | None:
            v = values.get((tag, cur))
            return _decimal(v) if v is not None else None

        net = get("NetLiquidation")
        if net is None:
            raise BrokerError(f"ib: account {self.account} reported no net liquidation value yet")
        cash = {cur: a for (tag, cur), v in values.items()
                if tag == "CashBalance" and cur != "BASE" and (a := _decimal(v)) is not None}
        available = get("AvailableFunds") or Decimal(0)
        if base != "USD":  # IB reports funds in the base currency; the engine checks USD
            rate = get("ExchangeRate", "USD")
            available = cash.get("USD", available / rate if rate else Decimal(0))
        extra = {k: v for k in ("TotalCashValue", "GrossPositionValue", "ExcessLiquidity", "MaintMarginReq")
                 if (v := get(k)) is not None}
        return AccountSummary(net, cash, get("BuyingPower") or Decimal(0), available, base, extra)


def _has_data(t: Ticker) -> bool:
    return any(cv.price(x) is not None for x in (t.bid, t.ask, t.last, t.close))


def _bar_day(d: date | datetime) -> date:
    return d.astimezone(NY).date() if isinstance(d, datetime) else d


def _decimal(text: str) -> Decimal | None:
    try:
        d = Decimal(text)
    except (ArithmeticError, ValueError):
        return None
    return d if d.is_finite() else None


__all__ = ["IBBroker"]
