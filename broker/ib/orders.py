"""Orders on IB and their events: DAY limit orders with the bot's reference in ``orderRef``
(combos as BAG contracts), modify and cancel; IB's order status, executions and (possibly late)
commission reports mapped to the `BrokerListener` events, each execution id once; after a
(re)connect the new `Trade` objects re-bound by reference, orders that ended meanwhile settled
from their fills, and executions missed while down replayed; open orders and executions for the
engine's reconciliation."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

from ib_async import ExecutionFilter, Fill, LimitOrder, Trade
from ib_async.objects import CommissionReport as IbCommissionReport

from broker.base import (
    BrokerError,
    BrokerOrder,
    CommissionReport,
    Execution,
    NotSent,
    OrderLeg,
    OrderRequest,
    OrderStatus,
    OrderUpdate,
    limit_problem,
    request_problem,
)
from broker.ib import convert as cv
from broker.ib.connection import IBConnection
from broker.ib.contracts import IBContracts

log = logging.getLogger(__name__)

PENDING = frozenset({"PendingSubmit", "ApiPending"})
BOT_ORDER_REF_PREFIX = "qqqbot-"  # bot.orders.ORDER_REF_PREFIX (a test keeps them equal)


class IBOrders:
    """The bot's orders on IB by order reference, and the events they produce."""

    def __init__(self, conn: IBConnection, contracts: IBContracts) -> None:
        self._conn = conn
        self._contracts = contracts
        self._by_ref: dict[str, Trade] = {}
        self._requests: dict[str, OrderRequest] = {}
        self._last_update: dict[str, tuple[OrderStatus, int]] = {}
        self._emitted_execs: set[str] = set()
        self._emitted_commissions: set[str] = set()
        ib = conn.ib
        ib.execDetailsEvent += self._on_exec
        ib.commissionReportEvent += self._on_commission
        ib.orderStatusEvent += self._on_status

    # --- place, modify, cancel -------------------------------------------------------------------

    async def place_order(self, request: OrderRequest) -> str:
        """Send a DAY limit order (a BAG combo for several legs) with ``orderRef`` = the bot's
        reference, and wait (bounded) for IB's acknowledgement. A rejection emits a REJECTED update
        and raises BrokerError, like the sim. NotSent when the socket is down or IB Gateway has
        lost IB's servers (1100): nothing was sent."""
        self._conn.require_trading()
        ref = request.order_ref
        if ref in self._by_ref or ref in self._requests:
            raise BrokerError(f"ib: order reference {ref} was already used; duplicate refused")
        problem = request_problem(request)
        if problem is not None:
            raise BrokerError(f"ib: {problem}")
        found = await self._contracts.qualify([leg.instrument for leg in request.legs])
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
                           account=self._conn.account, transmit=True)
        self._requests[ref] = request
        try:
            trade = self._conn.ib.placeOrder(contract, order)
        except ConnectionError as e:
            self._requests.pop(ref, None)
            raise NotSent(f"ib: order {ref} not sent, connection lost: {e}") from e
        self._by_ref[ref] = trade
        timeout = self._conn.request_timeout
        acked = await self._conn.until(lambda: trade.orderStatus.status not in PENDING, timeout)
        if not acked:
            log.warning("ib: no acknowledgement of order %s within %.0f s; reconciliation will settle it", ref,
                        timeout)
        mapped = cv.status_of(trade)
        if mapped is not None and mapped[0] == OrderStatus.REJECTED:
            self._emit_update(ref, trade)
            raise BrokerError(f"ib: order {ref} rejected: {mapped[1]}")
        return str(trade.order.orderId)

    def _trade(self, order_ref: str) -> Trade:
        """The working order to modify or cancel; NotSent while no request can reach IB."""
        self._conn.require_trading()
        trade = self._by_ref.get(order_ref)
        if trade is None:
            raise BrokerError(f"ib: no order {order_ref}")
        owner = trade.order.clientId
        if owner and owner != self._conn.client_id:
            raise BrokerError(f"ib: order {order_ref} was placed by API client id {owner}: IB lets only that client "
                              f"(or TWS, IBKR Mobile) modify or cancel it; cancel it there, or run the bot with "
                              f"IB_CLIENT_ID={owner}")
        last = self._last_update.get(order_ref)
        if last is not None and last[0].is_final:  # also when the Trade object is from a previous session
            raise BrokerError(f"ib: order {order_ref} is already {last[0].value}")
        if trade.isDone():
            raise BrokerError(f"ib: order {order_ref} is already {trade.orderStatus.status.lower()}")
        return trade

    async def modify_order(self, order_ref: str, limit: Decimal) -> None:
        """Send the new limit; IB's answer comes as events (a refused modify changes nothing)."""
        trade = self._trade(order_ref)
        problem = limit_problem(limit, trade.contract.secType == "BAG")
        if problem is not None:
            raise BrokerError(f"ib: invalid limit for {order_ref}: {problem}")
        trade.order.lmtPrice = float(limit)
        try:
            self._conn.ib.placeOrder(trade.contract, trade.order)
        except (ConnectionError, AssertionError) as e:
            raise NotSent(f"ib: modify of {order_ref} not sent: {e}") from e

    async def cancel_order(self, order_ref: str) -> None:
        """Ask IB to cancel and wait (bounded) until the order is done; the final status (and any
        late fill) comes as events."""
        trade = self._trade(order_ref)
        try:
            self._conn.ib.cancelOrder(trade.order)
        except ConnectionError as e:
            raise NotSent(f"ib: cancel of {order_ref} not sent: {e}") from e
        await self._conn.until(trade.isDone, self._conn.request_timeout)

    # --- reconciliation --------------------------------------------------------------------------

    async def open_orders(self) -> list[BrokerOrder]:
        """Every order IB still works with a bot reference (``qqqbot-…``), whoever placed it: this
        process, an earlier one (same client id: re-bound, so it can be cancelled) or another API
        client id (listed; `cancel_order` explains it cannot). ``reqAllOpenOrders``, not
        ``reqOpenOrders``, so an order of another client id is never invisible. Orders without the
        bot's reference (the user's own, from TWS or IBKR Mobile) are left out."""
        trades = await self._conn.call(self._conn.ib.reqAllOpenOrdersAsync, "open orders")
        out = []
        for t in trades:
            ref = t.order.orderRef
            if not ref or not ref.startswith(BOT_ORDER_REF_PREFIX) or t.isDone():
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
                ins = await self._contracts.instrument_of(leg.conId)
                if ins is None:
                    return None
                legs.append(OrderLeg(ins, "BUY" if leg.action == "BUY" else "SELL", leg.ratio))
        else:
            ins = cv.from_ib(c)
            if ins is None:
                return None
            legs.append(OrderLeg(ins, "BUY" if t.order.action == "BUY" else "SELL"))
        return OrderRequest(ref, tuple(legs), int(t.order.totalQuantity), limit or Decimal(0))

    async def executions(self, since: datetime | None = None) -> list[Execution]:
        """Executions IB still reports (IB keeps the current day's, up to 7 days in TWS' settings),
        with commissions where known, optionally from ``since``."""
        flt = ExecutionFilter()
        if since is not None:
            flt.time = since.astimezone(UTC).strftime("%Y%m%d-%H:%M:%S")
        ib = self._conn.ib
        fills = await self._conn.call(lambda: ib.reqExecutionsAsync(flt), "executions")
        known = {f.execution.execId: f for f in ib.fills()}
        out = []
        for f in fills:
            stored = known.get(f.execution.execId)
            best = stored if stored is not None and stored.commissionReport.execId else f
            ex = cv.execution(best)
            if ex is not None and (since is None or ex.time >= since):
                out.append(ex)
        return sorted(out, key=lambda e: (e.time, e.exec_id))

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
        self._conn.tell(lambda listener: listener.on_order_update(update), f"the update of {update.order_ref}")

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
        self._conn.tell(lambda listener: listener.on_execution(ex), f"execution {ex.exec_id}")

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
            self._conn.tell(lambda listener: listener.on_commission(report_), f"the commission of {exec_id}")

    # --- after a (re)connect ---------------------------------------------------------------------

    def rebind(self) -> None:
        """After a (re)connect ib_async has new Trade objects: bind them to the bot's references;
        an order the bot was working that is no longer open is settled from its fills."""
        open_by_ref = {t.order.orderRef: t for t in self._conn.ib.openTrades() if t.order.orderRef}
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
        fills = [f for f in self._conn.ib.fills() if f.execution.orderRef == ref]
        bags = [f for f in fills if f.contract.secType == "BAG"]
        if bags:
            return int(sum(f.execution.shares for f in bags))
        req = self._requests.get(ref)
        if req is not None and req.is_combo:
            first = req.legs[0]
            return int(sum(f.execution.shares for f in fills
                           if cv.from_ib(f.contract) == first.instrument) // first.ratio)
        return int(sum(f.execution.shares for f in fills))

    def replay_executions(self) -> None:
        """Executions IB reported at connect that the listener has not seen (missed while down)."""
        for fill in sorted(self._conn.ib.fills(), key=lambda f: f.execution.time):
            self._emit_execution(fill)
            report = fill.commissionReport
            if report.execId:
                self._emit_commission(fill, report)
