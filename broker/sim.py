"""The `sim` broker: a simulated market and account that behave like IB from the engine's side.

QQQ follows a `PricePath`, QQQM is QQQ × 0.4115, QQQ options are quoted by the calibrated option
market (`strategy.option_market`, through `broker.sim_options`). DAY limit orders fill against
those quotes on placement, on modification and on every clock step (marketable limits at once,
limits inside the spread with a seeded probability, optional partial fills), with IBKR-like
commissions. The object keeps every
order and execution, so a restarted engine reconciles against it as it would against IB."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from broker.base import (
    AccountSummary,
    BrokerError,
    BrokerListener,
    BrokerMode,
    BrokerOrder,
    ConnectionState,
    DailyBar,
    Execution,
    Instrument,
    MarketDataKind,
    NotSent,
    OptionChain,
    OrderLeg,
    OrderRequest,
    OrderStatus,
    OrderUpdate,
    Position,
    StockContract,
)
from broker.clock import Clock
from broker.sim_account import MIXED_EUR_CASH, SimAccount, mixed_holdings, multiplier
from broker.sim_fills import SimFillModel, base36, check_limit, check_request, combo_prices, crosses, order_commission
from broker.sim_market import QQQM_RATIO, CashRate, IvSource, PricePath
from broker.sim_options import CENT, OptionPricer, chain_strikes, expiry_close
from strategy.calendar import NY, Session, SessionCalendar
from strategy.model import OptionContract, OptionQuote, Quote, Side
from strategy.option_market import MarketParams

log = logging.getLogger(__name__)

STOCKS = {"QQQ": 1.0, "QQQM": QQQM_RATIO}


def _cents(x: float) -> Decimal:
    return Decimal(round(x * 100)) / 100


@dataclass
class _Order:
    req: OrderRequest
    broker_id: str
    limit: Decimal
    session: Session
    placed_at: datetime
    filled: int = 0
    status: OrderStatus = OrderStatus.SUBMITTED
    fees: dict[int, tuple[int, Decimal]] = field(default_factory=dict)  # leg → (qty filled, fee charged)


class SimBroker:
    """A `Broker` over a simulated market; see the module docstring."""

    name = "sim"
    mode: BrokerMode = "sim"
    supports_combo = True
    market_data: MarketDataKind = "live"  # simulated quotes are never delayed

    def __init__(
        self, clock: Clock, path: PricePath, iv: IvSource, *, calendar: SessionCalendar,
        starting_cash: Decimal = Decimal(100_000), mixed_account: bool = True, seed: int = 0,
        fill: SimFillModel | None = None, rate: float | None = None, dividend_yield: float | None = None,
        cash_rate: CashRate | None = None, pricing: MarketParams | None = None,
        option_rate: CashRate | None = None, short_options: bool = False,
    ) -> None:
        self.clock = clock
        # Like an IB account allowed to write uncovered calls: a sale of an option beyond the holding
        # opens a short position instead of being rejected (the order-safety campaign uses it to see
        # a short the bot must never open).
        self.short_options = short_options
        self.path = path
        self.iv = iv
        self.calendar = calendar
        self.fill = fill or SimFillModel()
        self.pricer = OptionPricer(calendar, iv, rate, dividend_yield, params=pricing, rate_series=option_rate)
        self._rng = random.Random(seed)
        cash = {"USD": Decimal(starting_cash)}
        if mixed_account:
            cash["EUR"] = MIXED_EUR_CASH
        static = mixed_holdings(clock.now().astimezone(NY).date()) if mixed_account else ()
        self.account = SimAccount(cash, static)
        self._settled_day: date | None = None
        self.cash_rate = cash_rate or CashRate.none()
        self._accrued_to: date | None = None  # interest is credited up to (not including) this day
        self.interest = Decimal(0)  # all the interest credited so far, USD
        self.on_interest: Callable[[Decimal], None] | None = None  # told the total after each credit
        self._orders: dict[str, _Order] = {}
        self._working: dict[str, _Order] = {}
        self._executions: list[Execution] = []
        self._listener: BrokerListener | None = None
        self._state = ConnectionState.DOWN
        self._next_id = 1
        self._next_exec = 1
        self._task: asyncio.Task[None] | None = None
        # Execution ids must be unique for ever, also across processes sharing one database: they
        # carry the instant this broker was created (deterministic on a simulated clock).
        self._run = base36(int(clock.now().timestamp()))
        add_listener = getattr(clock, "add_listener", None)
        self._clock_driven = add_listener is not None
        if add_listener is not None:
            add_listener(self._on_time)

    # --- connection ------------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def detail(self) -> str:
        return "simulated market and account" if self._state == ConnectionState.CONNECTED else "not connected"

    @property
    def down_since(self) -> datetime | None:
        return None  # the sim is never down while the bot runs

    def set_listener(self, listener: BrokerListener | None) -> None:
        self._listener = listener

    async def connect(self) -> None:
        self._state = ConnectionState.CONNECTED
        if not self._clock_driven and self._task is None:
            self._task = asyncio.create_task(self._wall_clock_matcher(), name="sim-matcher")

    async def close(self) -> None:
        """Disconnect; orders, executions and the account stay as they are."""
        self._state = ConnectionState.DOWN
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _wall_clock_matcher(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self._on_time(self.clock.now())
            except Exception:
                log.exception("sim matcher failed")

    # --- market data ---------------------------------------------------------------------------

    def _stock_bid_ask_last(self, symbol: str, now: datetime) -> tuple[Decimal, Decimal, Decimal]:
        ratio = STOCKS.get(symbol)
        if ratio is None:
            raise BrokerError(f"sim: no market data for {symbol} (only QQQ, QQQM and QQQ options)")
        last = _cents(self.path.price_at(now) * ratio)
        return last - CENT, last + CENT, last

    async def quote(self, symbol: str) -> Quote:
        now = self.clock.now()
        bid, ask, last = self._stock_bid_ask_last(symbol, now)
        return Quote(symbol, bid, ask, last, now)

    async def prev_close(self, symbol: str) -> Decimal:
        """The close of the session before today's (on a non-session day: before the last one)."""
        ratio = STOCKS.get(symbol)
        if ratio is None:
            raise BrokerError(f"sim: no history for {symbol}")
        day = self.clock.now().astimezone(NY).date()
        current = day if self.calendar.is_session(day) else self.path.last_session_day(day)
        close = self.path.prev_close(current) if current is not None else None
        if close is None:
            raise BrokerError(f"sim: no close before {day} in the price history")
        return _cents(close * ratio)

    async def historical_daily_bars(self, symbol: str, start: date, end: date) -> list[DailyBar]:
        """The daily bars the price path was built from, ``start`` to ``end`` inclusive, of the
        sessions closed by now (the simulator never shows the future); QQQM's are QQQ's × its ratio."""
        ratio = STOCKS.get(symbol)
        if ratio is None:
            raise BrokerError(f"sim: no history for {symbol}")
        if end < start:
            raise BrokerError("sim: the end of a bar range is before its start")
        now = self.clock.now()
        return [b if ratio == 1.0 else DailyBar(b.day, b.open * ratio, b.high * ratio, b.low * ratio, b.close * ratio)
                for s, b in zip(self.path.sessions, self.path.bars, strict=True)
                if start <= s.day <= end and s.close <= now]

    async def historical_implied_vol(self, symbol: str, start: date, end: date) -> dict[date, float]:
        """The volatility input the simulated QQQ options are priced with, by closed session."""
        if symbol != "QQQ":
            return {}
        bars = await self.historical_daily_bars(symbol, start, end)
        return {b.day: self.iv.iv(b.day) for b in bars}

    async def option_chain(self, symbol: str) -> OptionChain:
        if symbol != "QQQ":
            raise BrokerError(f"sim: no options on {symbol}")
        now = self.clock.now()
        return OptionChain("QQQ", self.pricer.expiries(now), chain_strikes(self.path.price_at(now)))

    async def option_quotes(self, contracts: Sequence[OptionContract]) -> list[OptionQuote]:
        now = self.clock.now()
        spot = self.path.price_at(now)
        state = self.pricer.state(now)
        quote = self.pricer.quote
        return [q for c in contracts if (q := quote(c, now, spot, state)) is not None]

    def _bid_ask(self, ins: Instrument, now: datetime) -> tuple[Decimal, Decimal] | None:
        if isinstance(ins, OptionContract):
            q = self.pricer.quote(ins, now, self.path.price_at(now), self.pricer.state(now))
            return None if q is None or q.bid is None or q.ask is None else (q.bid, q.ask)
        bid, ask, _ = self._stock_bid_ask_last(ins.symbol, now)
        return bid, ask

    def _expiry_value(self, ins: Instrument) -> Decimal | None:
        """An expired option's value: intrinsic at the underlying's price at its expiry close."""
        assert isinstance(ins, OptionContract)
        at = expiry_close(ins.expiry)
        return self.pricer.mark(ins, at, self.path.price_at(at), self.pricer.state(at))

    def _marker(self) -> Callable[[Instrument], Decimal | None]:
        """Marks at this instant (the clock, the price and the day's volatility read once)."""
        now = self.clock.now()
        spot = self.path.price_at(now)
        state = self.pricer.state(now)

        def mark(ins: Instrument) -> Decimal | None:
            if isinstance(ins, OptionContract):
                return self.pricer.mark(ins, now, spot, state)
            return _cents(spot * STOCKS.get(ins.symbol, 0.0)) if ins.symbol in STOCKS else None

        return mark

    # --- orders --------------------------------------------------------------------------------

    def _check_instrument(self, ins: Instrument, now: datetime) -> None:
        if isinstance(ins, OptionContract):
            if not self.pricer.is_listed(ins):
                raise BrokerError(f"sim: {ins.key} is not a listed contract")
            if expiry_close(ins.expiry) <= now:
                raise BrokerError(f"sim: {ins.key} has expired")
        elif not isinstance(ins, StockContract) or ins.symbol not in STOCKS or ins.currency != "USD":
            raise BrokerError(f"sim: {getattr(ins, 'symbol', ins)} is not traded here (only QQQ, QQQM, QQQ options)")

    def _validate(self, req: OrderRequest, now: datetime) -> None:
        check_request(req)
        for leg in req.legs:
            self._check_instrument(leg.instrument, now)

    async def place_order(self, request: OrderRequest) -> str:
        """Accept a DAY limit order and match it at once. Malformed orders raise BrokerError; account
        problems (funds, selling more than held) emit a REJECTED update and then raise BrokerError."""
        now = self.clock.now()
        if self._state != ConnectionState.CONNECTED:
            raise NotSent("sim: not connected")
        if request.order_ref in self._orders:
            raise BrokerError(f"sim: order reference {request.order_ref} was already used; duplicate refused")
        self._validate(request, now)
        session = self.calendar.open_session(now)
        if session is None:
            raise BrokerError("sim: the market is closed; DAY orders are taken during a session only")
        broker_id = str(self._next_id)
        self._next_id += 1
        o = _Order(request, broker_id, request.limit, session, now)
        self._orders[request.order_ref] = o
        problem = self._account_problem(o, request.qty, request.limit, reserve=True)
        if problem:  # like IB: the order is rejected (REJECTED update); the caller hears it at once too
            self._finish(o, OrderStatus.REJECTED, problem)
            raise BrokerError(f"sim: order {request.order_ref} rejected: {problem}")
        self._working[request.order_ref] = o
        self._match(o, now)
        return broker_id

    def _working_order(self, order_ref: str) -> _Order:
        o = self._orders.get(order_ref)
        if o is None:
            raise BrokerError(f"sim: no order {order_ref}")
        if o.status.is_final:
            raise BrokerError(f"sim: order {order_ref} is already {o.status.value}")
        return o

    async def modify_order(self, order_ref: str, limit: Decimal) -> None:
        o = self._working_order(order_ref)
        check_limit(o.req, limit)
        o.limit = limit
        self._match(o, self.clock.now())

    async def cancel_order(self, order_ref: str) -> None:
        o = self._working_order(order_ref)
        self._finish(o, OrderStatus.CANCELLED, "cancelled on request")

    def _account_problem(self, o: _Order, qty: int, limit: Decimal, *, reserve: bool) -> str | None:
        """Why the account cannot take ``qty`` more of this order at ``limit``, if it cannot."""
        req = o.req
        cost = Decimal(0)
        for leg in req.legs:
            ins = leg.instrument
            if leg.action == "SELL" and not (self.short_options and isinstance(ins, OptionContract)):
                held = self.account.held(ins)
                offered = self._offered(ins, o) if reserve else 0
                if qty > held - offered:
                    also = f", {offered} already offered" if offered else ""
                    return f"cannot sell {qty} {ins.key}: the account holds {held}{also}"
            if isinstance(ins, OptionContract) or leg.action == "BUY":  # a stock sale pays from its proceeds
                cost += order_commission(ins, 0, Decimal(0), qty, limit)
        if req.is_combo or req.action == "BUY":
            cost += limit * qty * (100 if req.is_combo else multiplier(req.legs[0].instrument))
            if cost > self.account.usd:
                return f"insufficient funds: {cost:.2f} USD needed, {self.account.usd:.2f} USD available"
        return None

    def _offered(self, ins: Instrument, other_than: _Order) -> int:
        """The unfilled quantity of working orders, other than ``other_than``, that sell ``ins``."""
        return sum(w.req.qty - w.filled for w in self._working.values() if w is not other_than
                   and any(leg.action == "SELL" and leg.instrument == ins for leg in w.req.legs))

    def _finish(self, o: _Order, status: OrderStatus, message: str) -> None:
        o.status = status
        self._working.pop(o.req.order_ref, None)
        self._emit([], OrderUpdate(o.req.order_ref, o.broker_id, status, o.filled, o.req.qty - o.filled, message))

    def _emit(self, executions: list[Execution], update: OrderUpdate) -> None:
        listener = self._listener
        if listener is None:
            return
        try:
            for ex in executions:
                listener.on_execution(ex)
            listener.on_order_update(update)
        except Exception:
            log.exception("sim: the listener failed on %s", update.order_ref)

    def _accrue_interest(self, today: date) -> None:
        """Credit interest on positive USD cash for every calendar day since the last credit (ACT/365,
        each day at that day's rate on the balance carried into it), once per day."""
        start = self._accrued_to
        self._accrued_to = today
        if start is None or start >= today or self.cash_rate.is_zero:
            return
        day = start
        while day < today:
            cash = self.account.usd
            if cash > 0:
                credit = (cash * Decimal(str(self.cash_rate.rate(day))) / 365).quantize(Decimal("0.000001"))
                self.account.cash["USD"] = cash + credit
                self.interest += credit
            day += timedelta(days=1)
        if self.on_interest is not None:
            try:
                self.on_interest(self.interest)
            except Exception:
                log.exception("sim: could not record the interest credited")

    def _on_time(self, now: datetime) -> None:
        """A clock step: credit interest on idle cash, settle options past their expiry, expire DAY
        orders at the close, match the others."""
        day = now.astimezone(NY).date()
        if day != self._accrued_to:
            self._accrue_interest(day)
        if day != self._settled_day and self.account.holdings:  # expiries settle once a day, not every step
            self._settled_day = day
            for ins in self.account.settle_expired(lambda c: expiry_close(c.expiry) <= now, self._expiry_value):
                log.info("sim: %s expired and left the account", ins.key)
        for o in list(self._working.values()):
            if o.status.is_final:
                continue
            if now >= o.session.close:
                self._finish(o, OrderStatus.CANCELLED, "DAY order expired at the close")
            else:
                self._match(o, now)

    def _match(self, o: _Order, now: datetime) -> None:
        if o.status.is_final or self.fill.never_fill or not o.session.open <= now < o.session.close:
            return
        if (now - o.placed_at).total_seconds() < self.fill.delay_s:
            return
        quotes = [self._bid_ask(leg.instrument, now) for leg in o.req.legs]
        if any(q is None for q in quotes):
            return
        legs = list(zip(o.req.legs, [q for q in quotes if q is not None], strict=True))
        if o.req.is_combo:
            (_, (bb, ba)), (_, (sb, sa)) = sorted(legs, key=lambda x: x[0].action)  # BUY leg first
            bid, ask = bb - sa, ba - sb
        else:
            bid, ask = legs[0][1]
        if not crosses(self.fill, self._rng, o.limit, bid, ask, o.req.action):
            return
        qty = o.req.qty - o.filled
        if self.fill.partial_max_qty is not None:
            qty = min(qty, self.fill.partial_max_qty)
        problem = self._account_problem(o, qty, o.limit, reserve=False)
        if problem:
            self._finish(o, OrderStatus.REJECTED, problem)
            return
        prices = combo_prices(o.limit, [(leg.action, q) for leg, q in legs]) if o.req.is_combo else [o.limit]
        self._execute(o, qty, now, [(leg, px) for (leg, _), px in zip(legs, prices, strict=True)])

    def _commission(self, o: _Order, i: int, ins: Instrument, qty: int, price: Decimal) -> Decimal:
        """IBKR-like, with the minimum applied per order leg: partial fills add up to one fee."""
        done, charged = o.fees.get(i, (0, Decimal(0)))
        fee = order_commission(ins, done, charged, qty, price)
        o.fees[i] = (done + qty, charged + fee)
        return fee

    def _execute(self, o: _Order, qty: int, now: datetime, fills: list[tuple[OrderLeg, Decimal]]) -> None:
        req = o.req
        executions = []
        for i, (leg, price) in enumerate(fills):
            n = qty * leg.ratio
            ex = Execution(f"sim-{self._run}-{self._next_exec:08d}", req.order_ref, o.broker_id, leg.instrument,
                           leg.action, n, price, now, self._commission(o, i, leg.instrument, n, price))
            self._next_exec += 1
            self._executions.append(ex)
            self.account.book(ex)
            executions.append(ex)
        o.filled += qty
        if o.filled >= req.qty:
            o.status = OrderStatus.FILLED
            self._working.pop(req.order_ref, None)
        else:
            o.status = OrderStatus.PARTIALLY_FILLED
        self._emit(executions, OrderUpdate(req.order_ref, o.broker_id, o.status, o.filled, req.qty - o.filled))

    # --- reconciliation and account ------------------------------------------------------------

    async def open_orders(self) -> list[BrokerOrder]:
        return [BrokerOrder(o.req.order_ref, o.broker_id, dataclasses.replace(o.req, limit=o.limit), o.status,
                            o.filled) for o in self._working.values()]

    async def executions(self, since: datetime | None = None) -> list[Execution]:
        """Every execution this broker ever made (with commissions), optionally from ``since``."""
        return [e for e in self._executions if since is None or e.time >= since]

    async def positions(self) -> list[Position]:
        return self.account.positions(self._marker())

    async def account_summary(self) -> AccountSummary:
        return self.account.summary(self._marker())

    def adopt_position(self, instrument: Instrument, qty: int, avg_price: Decimal) -> None:
        """Put a holding into the account without a fill: a new sim process on an existing database
        can hand it the bot's open lots, so that selling them is not refused."""
        self._check_instrument(instrument, self.clock.now())
        self.account.adopt(instrument, qty, avg_price * qty * multiplier(instrument))

    def trade_outside(self, instrument: Instrument, side: Side, qty: int, price: Decimal,
                      order_ref: str = "tws") -> Execution:
        """A trade made outside the bot (in TWS or the mobile app): it changes the account and shows
        among the executions with a reference that is not the bot's; the bot gets no event for it."""
        now = self.clock.now()
        ex = Execution(f"sim-{self._run}-{self._next_exec:08d}", order_ref, "0", instrument, side, qty, price, now,
                       order_commission(instrument, 0, Decimal(0), qty, price))
        self._next_exec += 1
        self._executions.append(ex)
        self.account.book(ex)
        return ex

    def order_status(self, order_ref: str) -> tuple[OrderStatus, int] | None:
        """(status, filled) of any order this broker has seen, for tests and diagnostics."""
        o = self._orders.get(order_ref)
        return None if o is None else (o.status, o.filled)


__all__ = ["SimBroker", "SimFillModel"]
