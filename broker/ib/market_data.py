"""Market data from IB: snapshots (``reqTickersAsync``) in paced batches, retried once after a
pacing or no-subscription error; stock quotes, option quotes with IB's model greeks, the previous
close and daily bars from ``reqHistoricalDataAsync``. Quotes of delayed data are dated IB's delay
ago, so the engine's freshness check never trades on them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from ib_async import BarData, Contract, Ticker

from broker.base import BrokerError, DailyBar, StockContract
from broker.clock import Clock
from broker.ib import convert as cv
from broker.ib.connection import COMPETING_SESSION, NO_SUBSCRIPTION, IBConnection
from broker.ib.contracts import IBContracts
from strategy.calendar import NY, SessionCalendar
from strategy.model import OptionContract, OptionQuote, Quote

log = logging.getLogger(__name__)

DELAYED_DATA_AGE = timedelta(minutes=15)  # IB's delayed data lags 15-20 minutes
DELAYED_SENT_ANYWAY = 10167  # a warning: delayed data follows on the same request
PACING = frozenset({100, 162, 420})
NO_SECURITY = 200  # no security definition found for the request
RETRIED = PACING | (NO_SUBSCRIPTION - {DELAYED_SENT_ANYWAY}) | {COMPETING_SESSION}  # asked once more (delayed)


class IBMarketData:
    """Quotes, option quotes, previous closes and daily bars; see the module docstring.

    ``calendar`` lets `prev_close` skip non-session days like the sim does."""

    def __init__(self, conn: IBConnection, contracts: IBContracts, clock: Clock, *,
                 calendar: SessionCalendar | None, pacing_backoff_s: float, snapshot_batch: int) -> None:
        self._conn = conn
        self._contracts = contracts
        self._clock = clock
        self._calendar = calendar
        self._pacing_backoff_s = pacing_backoff_s
        self._batch_size = max(1, snapshot_batch)
        self._req_errors: dict[int, int] = {}  # conId → last error code of a data request
        self._prev_close: dict[tuple[str, date], Decimal] = {}
        conn.ib.errorEvent += self._on_error

    def _on_error(self, req_id: int, code: int, text: str, contract: Contract | None) -> None:
        """Remember why a data request for a contract failed (the request only sees no data)."""
        if contract is None:
            return
        if code in RETRIED or code == NO_SECURITY:
            self._req_errors[contract.conId] = code

    def _today(self) -> date:
        return self._clock.now().astimezone(NY).date()

    def _quote_time(self) -> datetime:
        """When a quote's prices were true: now for live data; for delayed data (no real-time
        subscription) IB's delay ago, so the engine's freshness check never trades on it."""
        now = self._clock.now()
        return now - DELAYED_DATA_AGE if self._conn.delayed else now

    # --- snapshots -------------------------------------------------------------------------------

    async def _snapshots(self, contracts: Sequence[Contract]) -> dict[int, Ticker]:
        """Snapshot tickers by conId, in batches of at most ``snapshot_batch`` requests; the
        requests that failed for a missing subscription, a competing session (10197: delayed data
        then) or pacing (100: after a backoff) are retried once."""
        out: dict[int, Ticker] = {}
        todo = list({c.conId: c for c in contracts}.values())
        for attempt in range(2):
            failed: list[Contract] = []
            for i in range(0, len(todo), self._batch_size):
                batch = todo[i:i + self._batch_size]
                for c in batch:
                    self._req_errors.pop(c.conId, None)
                for c, t in zip(batch, await self._snapshot_batch(batch), strict=True):
                    code = self._req_errors.pop(c.conId, None)
                    if t is not None and cv.has_data(t):
                        out[c.conId] = t
                    elif code in RETRIED:
                        failed.append(c)
            if not failed or attempt:
                break
            if any(self._req_errors.get(c.conId) in PACING for c in failed):
                await asyncio.sleep(self._pacing_backoff_s)
            todo = failed
        return out

    async def _snapshot_batch(self, batch: list[Contract]) -> list[Ticker | None]:
        self._conn.require_connected()
        ib = self._conn.ib
        self._conn.stats["snapshots"] += len(batch)
        limit = self._conn.request_timeout
        try:
            tickers: list[Ticker | None] = list(await asyncio.wait_for(ib.reqTickersAsync(*batch), limit))
        except TimeoutError:
            log.warning("ib: %d market data snapshot(s) did not end within %.0f s; using what arrived",
                        len(batch), limit)
            tickers = [ib.ticker(c) for c in batch]
            self._abandon_snapshots(batch)
        except (ConnectionError, OSError) as e:
            raise BrokerError(f"ib: market data request failed, connection lost: {e}") from e
        finally:
            self._forget_tickers(batch)
        return tickers

    def _abandon_snapshots(self, batch: list[Contract]) -> None:
        """Cancel snapshot requests that never ended (IB sometimes never sends tickSnapshotEnd)."""
        ib = self._conn.ib
        w = ib.wrapper
        for c in batch:
            t = ib.ticker(c)
            req_id = w.endTicker(t, "snapshot") if t is not None else 0
            if req_id:
                with contextlib.suppress(ConnectionError):
                    ib.client.cancelMktData(req_id)  # type: ignore[no-untyped-call]
                w._futures.pop(req_id, None)

    def _forget_tickers(self, batch: list[Contract]) -> None:
        """Snapshot tickers are cached by ib_async for ever; drop them (the bot runs for months)."""
        w = self._conn.ib.wrapper
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

    # --- quotes ----------------------------------------------------------------------------------

    async def quote(self, symbol: str) -> Quote:
        c = await self._contracts.contract(StockContract(symbol))
        t = (await self._snapshots([c])).get(c.conId)
        if t is None:
            raise BrokerError(f"ib: no market data for {symbol} ({self._conn.market_data} data)")
        return Quote(symbol, cv.price(t.bid), cv.price(t.ask), cv.price(t.last), self._quote_time())

    async def option_quotes(self, contracts: Sequence[OptionContract]) -> list[OptionQuote]:
        """Snapshots of exactly these contracts (the caller asks for a narrow window); delta and IV
        from IB's model greeks, both None when IB sent no usable ones."""
        if not contracts:
            return []
        qualified = await self._contracts.qualify(contracts)
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

    # --- history ---------------------------------------------------------------------------------

    async def prev_close(self, symbol: str) -> Decimal:
        """The last daily close before the current session (before the last one on a day without a
        session, when the calendar knows the day); cached for that session."""
        today = self._today()
        current = today
        cal = self._calendar
        if cal is not None and cal.first <= today <= cal.last and not cal.is_session(today):
            prev = cal.previous_session(today)
            current = prev.day if prev is not None else today
        key = (symbol, current)
        cached = self._prev_close.get(key)
        if cached is not None:
            return cached
        bars = await self._history(symbol, "", "10 D")
        before = [b for b in bars if cv.bar_day(b.date) < current]
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
        bars = await self._history(symbol, end_at, duration, max(self._conn.request_timeout, 60.0))
        return [DailyBar(cv.bar_day(b.date), b.open, b.high, b.low, b.close) for b in bars
                if start <= cv.bar_day(b.date) <= end]

    async def historical_implied_vol(self, symbol: str, start: date, end: date) -> dict[date, float]:
        """IB's daily OPTION_IMPLIED_VOLATILITY of the underlying (its close, a fraction a year), or
        {} when IB has none for it (no options data, a pacing error after the retries)."""
        if end < start:
            raise BrokerError("ib: the end of a range is before its start")
        days = (end - start).days + 1
        duration = f"{days} D" if days <= 365 else f"{math.ceil(days / 365)} Y"
        end_at = datetime.combine(end, time(23, 59, 59), NY)
        try:
            bars = await self._history(symbol, end_at, duration, max(self._conn.request_timeout, 60.0),
                                       what="OPTION_IMPLIED_VOLATILITY")
        except BrokerError as e:
            log.warning("ib: no implied volatility history for %s: %s", symbol, e)
            return {}
        return {cv.bar_day(b.date): float(b.close) for b in bars
                if start <= cv.bar_day(b.date) <= end and math.isfinite(b.close) and 0 < b.close < 5}

    async def _history(self, symbol: str, end: datetime | str, duration: str, limit_s: float | None = None,
                       what: str = "TRADES") -> list[BarData]:
        """Daily bars (``what``: TRADES, or OPTION_IMPLIED_VOLATILITY), retried twice (with backoff)
        after a pacing error."""
        c = await self._contracts.contract(StockContract(symbol))
        limit = limit_s or self._conn.request_timeout
        code: int | None = None
        for attempt in range(3):
            self._req_errors.pop(c.conId, None)
            self._conn.stats["history"] += 1
            bars = await self._conn.call(
                lambda: self._conn.ib.reqHistoricalDataAsync(c, end, duration, "1 day", what, True, 1, False, [],
                                                             timeout=limit),
                f"daily bars of {symbol}", limit + 1)
            if bars:
                return list(bars)
            code = self._req_errors.pop(c.conId, None)
            if code not in PACING:
                break
            await asyncio.sleep(self._pacing_backoff_s * 2 ** attempt)
        raise BrokerError(f"ib: no daily bars for {symbol}" + (f" (IB error {code})" if code else ""))
