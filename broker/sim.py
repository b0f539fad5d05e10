"""The `sim` broker: a simulated market and account that behave like IB from the engine's side.

QQQ follows a `PricePath`, QQQM is QQQ × 0.4115, QQQ options are priced with Black–Scholes–Merton
plus a spread. Limit orders fill against those quotes on every clock step (marketable limits at
once, limits inside the spread with a seeded probability, optional partial fills), with IBKR-like
commissions. The object keeps every order and execution, so a restarted engine reconciles against
it as it would against IB."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from broker.base import (
    AccountSummary,
    BrokerError,
    BrokerListener,
    BrokerMode,
    BrokerOrder,
    ConnectionState,
    Execution,
    Instrument,
    OptionChain,
    OrderRequest,
    OrderStatus,
    OrderUpdate,
    Position,
    StockContract,
)
from broker.clock import Clock, SimClock
from broker.sim_market import QQQM_RATIO, IvSource, PricePath
from strategy.calendar import NY, SessionCalendar
from strategy.model import OptionContract, OptionQuote, Quote
from strategy.pricing import bs_price_delta
from strategy.rules import stock_commission

log = logging.getLogger(__name__)

CENT = Decimal("0.01")
OPTION_FEE = Decimal("0.65")
EUR_USD = Decimal("1.08")
YEAR_S = 365.0 * 86400


def _d(x: float) -> Decimal:
    return Decimal(f"{x:.2f}")


@dataclass(frozen=True, slots=True)
class SimFillModel:
    """How eagerly limits inside the spread fill; switches for tests."""

    p_at_mid: float = 0.3
    always_fill_at_mid: bool = False
    partial_max_qty: int | None = None
    never_fill: bool = False


@dataclass
class _Working:
    req: OrderRequest
    broker_id: str
    limit: Decimal
    day: date
    filled: int = 0
    status: OrderStatus = OrderStatus.SUBMITTED


@dataclass
class _Holding:
    instrument: Instrument
    qty: int = 0
    cost: Decimal = Decimal(0)  # total cost of the open quantity


@dataclass(frozen=True, slots=True)
class _Static:
    category: str
    symbol: str
    description: str
    qty: Decimal
    price: Decimal
    currency: str = "USD"
    multiplier: int = 1


MIXED_HOLDINGS = (
    _Static("stock", "AAPL", "Apple Inc.", Decimal(50), Decimal("190.00")),
    _Static("stock", "MSFT", "Microsoft Corp.", Decimal(30), Decimal("410.00")),
    _Static("option", "SPY", "SPY 2027-01-15 450P", Decimal(1), Decimal("12.40"), multiplier=100),
    _Static("bond", "US912828ZT0", "US Treasury 2.5% 2030", Decimal(10000), Decimal("0.9850")),
)


@dataclass
class _Account:
    cash: dict[str, Decimal]
    holdings: dict[str, _Holding] = field(default_factory=dict)
    static: tuple[_Static, ...] = ()


class SimBroker:
    name = "sim"
    mode: BrokerMode = "sim"
    supports_combo = True

    def __init__(
        self, clock: Clock, path: PricePath, iv: IvSource, *, calendar: SessionCalendar,
        starting_cash: Decimal = Decimal(100_000), mixed_account: bool = True, seed: int = 0,
        fill: SimFillModel | None = None, rate: float = 0.04, dividend_yield: float = 0.006,
    ) -> None:
        self.clock = clock
        self.path = path
        self.iv = iv
        self.calendar = calendar
        self.fill = fill or SimFillModel()
        self.r = rate
        self.q = dividend_yield
        self._rng = random.Random(seed)
        cash = {"USD": Decimal(starting_cash)}
        if mixed_account:
            cash["EUR"] = Decimal(5000)
        self.account = _Account(cash, static=MIXED_HOLDINGS if mixed_account else ())
        self._orders: dict[str, _Working] = {}
        self._working: dict[str, _Working] = {}
        self._executions: list[Execution] = []
        self._listener: BrokerListener | None = None
        self._state = ConnectionState.DOWN
        self._next_id = 1
        self._next_exec = 1
        self._task: asyncio.Task[None] | None = None
        self._expiry_t: dict[date, datetime] = {}
        if isinstance(clock, SimClock):
            clock.add_listener(self._on_time)

    # --- connection ------------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    def set_listener(self, listener: BrokerListener | None) -> None:
        self._listener = listener

    async def connect(self) -> None:
        self._state = ConnectionState.CONNECTED
        if not self.clock.simulated and self._task is None:
            self._task = asyncio.create_task(self._wall_clock_matcher(), name="sim-matcher")

    async def close(self) -> None:
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

    def _spot(self, now: datetime) -> float:
        return self.path.price_at(now)

    async def quote(self, symbol: str) -> Quote:
        now = self.clock.now()
        if symbol == "QQQ":
            p = self._spot(now)
            last = _d(p)
            return Quote("QQQ", last - CENT, last + CENT, last, now)
        if symbol == "QQQM":
            last = _d(self._spot(now) * QQQM_RATIO)
            return Quote("QQQM", last - CENT, last + CENT, last, now)
        raise BrokerError(f"sim: no market data for {symbol}")

    async def prev_close(self, symbol: str) -> Decimal:
        day = self.clock.now().astimezone(NY).date()
        close = self.path.prev_close(day)
        if close is None:
            raise BrokerError(f"sim: no close before {day}")
        if symbol == "QQQM":
            close *= QQQM_RATIO
        elif symbol != "QQQ":
            raise BrokerError(f"sim: no history for {symbol}")
        return _d(close)

    def _expiries(self, today: date) -> tuple[date, ...]:
        out: set[date] = set()
        y, m = today.year, today.month
        for k in range(13):
            yy, mm = y + (m - 1 + k) // 12, (m - 1 + k) % 12 + 1
            out.add(self._listed_friday(yy, mm))
        for yy in range(today.year + 1, today.year + 4):
            out.add(self._listed_friday(yy, 1))
            out.add(self._listed_friday(yy, 6))
            out.add(self._listed_friday(yy, 12))
        return tuple(sorted(e for e in out if e > today))

    def _listed_friday(self, y: int, m: int) -> date:
        """The third Friday, or the session before it when that Friday is a holiday."""
        d = date(y, m, 15)
        d += timedelta(days=(4 - d.weekday()) % 7)
        if self.calendar.first <= d <= self.calendar.last and not self.calendar.is_session(d):
            prev = self.calendar.previous_session(d)
            if prev is not None:
                return prev.day
        return d

    async def option_chain(self, symbol: str) -> OptionChain:
        if symbol != "QQQ":
            raise BrokerError(f"sim: no options on {symbol}")
        now = self.clock.now()
        spot = self._spot(now)
        step = 1 if spot < 150 else 5
        lo = int(spot * 0.5 // step * step)
        hi = int(spot * 1.5 // step * step) + step
        strikes = tuple(Decimal(k) for k in range(max(lo, step), hi + 1, step))
        return OptionChain("QQQ", self._expiries(now.astimezone(NY).date()), strikes)

    def _years(self, expiry: date, now: datetime) -> float:
        t = self._expiry_t.get(expiry)
        if t is None:
            t = datetime.combine(expiry, time(16, 0), NY).astimezone(UTC)
            self._expiry_t[expiry] = t
        return (t - now).total_seconds() / YEAR_S

    def _option_quote(self, c: OptionContract, now: datetime, spot: float, base_iv: float) -> OptionQuote | None:
        T = self._years(c.expiry, now)
        if T <= 0 or c.symbol != "QQQ":
            return None
        K = float(c.strike)
        skew = min(max(-0.06 * (K / spot - 1.0), -0.05), 0.08)  # puts and low strikes richer
        sigma = max(base_iv + skew, 0.05)
        mid, delta = bs_price_delta(spot, K, T, self.r, self.q, sigma, c.right)
        half = max(0.025, mid * 0.0075)
        bid = max(round(mid - half, 2), 0.0)
        ask = max(round(mid + half, 2), 0.01)
        return OptionQuote(c, _d(bid), _d(ask), now, delta=delta, iv=sigma, min_tick=CENT)

    async def option_quotes(self, contracts: Sequence[OptionContract]) -> list[OptionQuote]:
        now = self.clock.now()
        spot = self._spot(now)
        base_iv = self.iv.iv(now.astimezone(NY).date())
        out = []
        for c in contracts:
            q = self._option_quote(c, now, spot, base_iv)
            if q is not None:
                out.append(q)
        return out

    def _bid_ask(self, ins: Instrument, now: datetime) -> tuple[Decimal, Decimal]:
        spot = self._spot(now)
        if isinstance(ins, OptionContract):
            q = self._option_quote(ins, now, spot, self.iv.iv(now.astimezone(NY).date()))
            if q is None or q.bid is None or q.ask is None:
                raise BrokerError(f"sim: {ins.key} is not quoted (expired?)")
            return q.bid, q.ask
        p = _d(spot * QQQM_RATIO) if ins.symbol == "QQQM" else _d(spot) if ins.symbol == "QQQ" else None
        if p is None:
            raise BrokerError(f"sim: {ins.symbol} is not traded here")
        return p - CENT, p + CENT

    # --- orders --------------------------------------------------------------------------------

    async def place_order(self, request: OrderRequest) -> str:
        now = self.clock.now()
        if self._state != ConnectionState.CONNECTED:
            raise BrokerError("sim: not connected")
        if request.order_ref in self._orders:
            raise BrokerError(f"sim: order reference {request.order_ref} already used")
        if request.qty <= 0 or not request.legs:
            raise BrokerError("sim: an order needs a positive quantity and at least one leg")
        if not request.is_combo and request.limit <= 0:
            raise BrokerError("sim: a limit price must be positive")
        session = self.calendar.open_session(now)
        if session is None:
            raise BrokerError("sim: the market is closed")
        for leg in request.legs:
            self._bid_ask(leg.instrument, now)  # unknown or expired instruments are refused
        cost = self._max_cost(request)
        if cost > self.account.cash["USD"]:
            raise BrokerError(f"sim: insufficient funds ({cost:.2f} USD needed, "
                              f"{self.account.cash['USD']:.2f} available)")
        bid = str(self._next_id)
        self._next_id += 1
        w = _Working(request, bid, request.limit, session.day)
        self._orders[request.order_ref] = w
        self._working[request.order_ref] = w
        self._match(w, now)
        return bid

    def _max_cost(self, req: OrderRequest) -> Decimal:
        if req.is_combo or req.action != "BUY":
            return Decimal(0) if req.limit <= 0 else req.limit * req.qty * 100
        ins = req.legs[0].instrument
        mult = ins.multiplier if isinstance(ins, OptionContract) else 1
        return req.limit * req.qty * mult

    async def modify_order(self, order_ref: str, limit: Decimal) -> None:
        w = self._orders.get(order_ref)
        if w is None or w.status.is_final:
            raise BrokerError(f"sim: no working order {order_ref}")
        w.limit = limit
        self._match(w, self.clock.now())

    async def cancel_order(self, order_ref: str) -> None:
        w = self._orders.get(order_ref)
        if w is None or w.status.is_final:
            raise BrokerError(f"sim: no working order {order_ref}")
        self._finish(w, OrderStatus.CANCELLED, "cancelled")

    def _finish(self, w: _Working, status: OrderStatus, message: str) -> None:
        w.status = status
        self._working.pop(w.req.order_ref, None)
        if self._listener is not None:
            self._listener.on_order_update(OrderUpdate(w.req.order_ref, w.broker_id, status, w.filled,
                                                       w.req.qty - w.filled, message))

    def _on_time(self, now: datetime) -> None:
        if not self._working:
            return
        for w in list(self._working.values()):
            s = self.calendar.session(w.day)
            if s is not None and now >= s.close:
                self._finish(w, OrderStatus.CANCELLED, "DAY order expired at the close")
            else:
                self._match(w, now)

    def _match(self, w: _Working, now: datetime) -> None:
        if w.status.is_final or self.fill.never_fill:
            return
        req = w.req
        if req.is_combo:
            legs = [(leg, *self._bid_ask(leg.instrument, now)) for leg in req.legs]
            net_bid = sum((b if leg.action == "BUY" else -a) * leg.ratio for leg, b, a in legs)
            net_ask = sum((a if leg.action == "BUY" else -b) * leg.ratio for leg, b, a in legs)
            if not self._fills(w.limit, net_bid, net_ask, "BUY"):
                return
        else:
            bid, ask = self._bid_ask(req.legs[0].instrument, now)
            if not self._fills(w.limit, bid, ask, req.action):
                return
        qty = req.qty - w.filled
        if self.fill.partial_max_qty is not None:
            qty = min(qty, self.fill.partial_max_qty)
        self._execute(w, qty, now)

    def _fills(self, limit: Decimal, bid: Decimal, ask: Decimal, side: str) -> bool:
        mid = (bid + ask) / 2
        if side == "BUY":
            if limit >= ask:
                return True
            if limit < mid:
                return False
            frac = float((limit - mid) / (ask - mid)) if ask > mid else 1.0
        else:
            if limit <= bid:
                return True
            if limit > mid:
                return False
            frac = float((mid - limit) / (mid - bid)) if mid > bid else 1.0
        if self.fill.always_fill_at_mid:
            return True
        p = self.fill.p_at_mid + (1 - self.fill.p_at_mid) * frac
        return self._rng.random() < p

    def _execute(self, w: _Working, qty: int, now: datetime) -> None:
        req = w.req
        if req.is_combo:
            sell_px = {leg.instrument.key: (self._bid_ask(leg.instrument, now)) for leg in req.legs}
            prices: dict[str, Decimal] = {}
            sells = [leg for leg in req.legs if leg.action == "SELL"]
            for leg in sells:
                b, a = sell_px[leg.instrument.key]
                prices[leg.instrument.key] = ((b + a) / 2).quantize(CENT)
            buys = [leg for leg in req.legs if leg.action == "BUY"]
            credit = sum(prices[leg.instrument.key] * leg.ratio for leg in sells)
            for leg in buys:  # the buy leg carries the net limit
                prices[leg.instrument.key] = ((w.limit + credit) / leg.ratio).quantize(CENT)
            fills = [(leg.instrument, leg.action, qty * leg.ratio, prices[leg.instrument.key]) for leg in req.legs]
        else:
            fills = [(req.legs[0].instrument, req.action, qty, w.limit)]
        executions = []
        for ins, side, n, price in fills:
            commission = self._commission(ins, n, price)
            ex = Execution(f"sim-{self._next_exec:08d}", req.order_ref, w.broker_id, ins, side, n, price, now,
                           commission)
            self._next_exec += 1
            self._book(ex)
            executions.append(ex)
        w.filled += qty
        if w.filled >= req.qty:
            w.status = OrderStatus.FILLED
            self._working.pop(req.order_ref, None)
        else:
            w.status = OrderStatus.PARTIALLY_FILLED
        if self._listener is not None:
            for ex in executions:
                self._listener.on_execution(ex)
            self._listener.on_order_update(OrderUpdate(req.order_ref, w.broker_id, w.status, w.filled,
                                                       req.qty - w.filled))

    @staticmethod
    def _commission(ins: Instrument, qty: int, price: Decimal) -> Decimal:
        if isinstance(ins, OptionContract):
            return max(OPTION_FEE * qty, Decimal(1))
        return stock_commission(qty, price)

    def _book(self, ex: Execution) -> None:
        self._executions.append(ex)
        ins = ex.instrument
        mult = ins.multiplier if isinstance(ins, OptionContract) else 1
        amount = ex.price * ex.qty * mult
        h = self.account.holdings.setdefault(ins.key, _Holding(ins))
        fee = ex.commission or Decimal(0)
        if ex.side == "BUY":
            self.account.cash["USD"] -= amount + fee
            h.qty += ex.qty
            h.cost += amount
        else:
            self.account.cash["USD"] += amount - fee
            if h.qty > 0:
                h.cost -= h.cost * min(ex.qty, h.qty) / h.qty
            h.qty -= ex.qty
        if h.qty == 0:
            self.account.holdings.pop(ins.key, None)

    # --- reconciliation and account ------------------------------------------------------------

    async def open_orders(self) -> list[BrokerOrder]:
        return [BrokerOrder(w.req.order_ref, w.broker_id, w.req, w.status, w.filled) for w in self._working.values()]

    async def executions(self, since: datetime | None = None) -> list[Execution]:
        return [e for e in self._executions if since is None or e.time >= since]

    def _mark(self, h: _Holding, now: datetime) -> Decimal | None:
        try:
            bid, ask = self._bid_ask(h.instrument, now)
        except BrokerError:
            return None
        return (bid + ask) / 2

    async def positions(self) -> list[Position]:
        now = self.clock.now()
        out: list[Position] = []
        for h in self.account.holdings.values():
            ins = h.instrument
            is_opt = isinstance(ins, OptionContract)
            mult = ins.multiplier if isinstance(ins, OptionContract) else 1
            px = self._mark(h, now)
            out.append(Position("option" if is_opt else "stock", ins.symbol, ins.key, Decimal(h.qty),
                                h.cost / h.qty / mult if h.qty else Decimal(0), px,
                                px * h.qty * mult if px is not None else None, "USD", ins))
        for s in self.account.static:
            out.append(Position(s.category, s.symbol, s.description, s.qty, s.price, s.price,  # type: ignore[arg-type]
                                s.price * s.qty * s.multiplier, s.currency))
        for cur, amount in self.account.cash.items():
            out.append(Position("cash", cur, f"{cur} cash", amount, Decimal(1), Decimal(1), amount, cur))
        return out

    async def account_summary(self) -> AccountSummary:
        now = self.clock.now()
        value = Decimal(0)
        for h in self.account.holdings.values():
            px = self._mark(h, now)
            mult = h.instrument.multiplier if isinstance(h.instrument, OptionContract) else 1
            value += (px if px is not None else Decimal(0)) * h.qty * mult
        for s in self.account.static:
            value += s.price * s.qty * s.multiplier
        usd = self.account.cash.get("USD", Decimal(0))
        eur = self.account.cash.get("EUR", Decimal(0))
        net = usd + eur * EUR_USD + value
        return AccountSummary(net_liquidation=net, cash_by_currency=dict(self.account.cash), buying_power=usd,
                              available_funds_usd=usd)

    # --- for tests -------------------------------------------------------------------------------

    def order_count(self) -> int:
        return len(self._orders)

    def working(self, order_ref: str) -> _Working | None:
        return self._orders.get(order_ref)


__all__ = ["SimBroker", "SimFillModel", "StockContract"]
