"""The order and fill ledger: named queries and the atomic writes that keep lots, rolls and the
recycling pool consistent with the fills. Every write of a fill happens once per execution id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from peewee import SQL, fn

from broker.base import Execution, OrderRequest, sec_type
from storage import prepared
from storage.models import (
    ACTIVE_STATES,
    Expiry,
    Fill,
    Lot,
    LotExit,
    Order,
    OrderPurpose,
    OrderState,
    Recycle,
    Roll,
    RollStatus,
    database_proxy,
)
from strategy import accounting
from strategy.model import Lot as LotView
from strategy.model import OptionContract
from strategy.order_lifecycle import after_fill, sources_of

ACTIVE = ACTIVE_STATES
ACTIVE_VALUES = tuple(state.value for state in ACTIVE_STATES)  # as prepared queries take them
ZERO = Decimal(0)
_NY = ZoneInfo("America/New_York")


def write_version(other_connections: bool = True) -> tuple[int, int]:
    """A key that changes whenever anything is written to the database: rows changed through this
    thread's connection (SQLite's ``total_changes``) and commits made by any other connection
    (``PRAGMA data_version``). A cache keyed on it cannot miss a write, wherever the write came from.
    ``other_connections=False`` leaves out the second (a query) for a private database only this
    connection writes: a backtest's."""
    conn = database_proxy.connection()
    if not other_connections:
        return conn.total_changes, 0
    (other,) = database_proxy.execute_sql("PRAGMA data_version").fetchone()
    return conn.total_changes, int(other)


# --- orders ------------------------------------------------------------------------------------


def request_to_json(req: OrderRequest) -> str:
    legs = []
    for leg in req.legs:
        ins = leg.instrument
        if isinstance(ins, OptionContract):
            legs.append({"action": leg.action, "ratio": leg.ratio, "sec_type": "OPT", "symbol": ins.symbol,
                         "expiry": ins.expiry.isoformat(), "strike": str(ins.strike), "right": ins.right,
                         "multiplier": ins.multiplier})
        else:
            legs.append({"action": leg.action, "ratio": leg.ratio, "sec_type": "STK", "symbol": ins.symbol})
    return json.dumps({"order_ref": req.order_ref, "qty": req.qty, "limit": str(req.limit), "legs": legs})


def request_from_json(text: str) -> OrderRequest:
    from broker.base import OrderLeg, StockContract

    data = json.loads(text)
    legs = []
    for leg in data["legs"]:
        if leg["sec_type"] == "OPT":
            ins: Any = OptionContract(leg["symbol"], date.fromisoformat(leg["expiry"]), Decimal(leg["strike"]),
                                      leg["right"], int(leg["multiplier"]))
        else:
            ins = StockContract(leg["symbol"])
        legs.append(OrderLeg(ins, leg["action"], int(leg["ratio"])))
    return OrderRequest(data["order_ref"], tuple(legs), int(data["qty"]), Decimal(data["limit"]))


def create_order(
    req: OrderRequest, purpose: OrderPurpose, session_day: date, now: datetime, *, lot_id: int | None = None,
    roll_id: int | None = None, context: dict[str, Any] | None = None,
) -> Order:
    """Write an order before it is sent (status pending_submit)."""
    first = req.legs[0]
    return prepared.create(
        Order, "create_order", order_ref=req.order_ref, purpose=purpose, session_day=session_day, lot=lot_id,
        roll=roll_id, request=request_to_json(req), side=req.action, sec_type=sec_type(first.instrument),
        qty=req.qty, limit=req.limit, status=OrderState.PENDING_SUBMIT, created_at=now,
        context=json.dumps(context or {}, default=str),
    )


def order_by_ref(order_ref: str) -> Order | None:
    return prepared.first(Order, "order_by_ref", lambda: Order.select().where(Order.order_ref == order_ref),
                          (order_ref,))


def mark_sent(order_ref: str, broker_order_id: str, at: datetime) -> None:
    pending, submitted = OrderState.PENDING_SUBMIT.value, OrderState.SUBMITTED.value
    prepared.execute("mark_sent", lambda: Order.update(
        broker_order_id=broker_order_id, sent_at=at,
        status=fn.IIF(Order.status == pending, submitted, Order.status)).where(Order.order_ref == order_ref),
        (broker_order_id, pending, submitted, Order.sent_at.db_value(at), order_ref))


def set_limit(order_ref: str, limit: Decimal) -> None:
    prepared.execute("set_limit", lambda: Order.update(limit=limit).where(Order.order_ref == order_ref),
                     (Order.limit.db_value(limit), order_ref))


def finish_order(order_ref: str, status: OrderState, at: datetime, message: str = "") -> bool:
    """Move an order to a final status once, as the lifecycle allows; returns False when it
    already was final (or the move is not allowed)."""
    status = OrderState(status)
    assert status.is_final, status
    return move_order(order_ref, status, at, message)


def move_order(order_ref: str, status: OrderState, at: datetime, message: str | None = None) -> bool:
    """Move an order to ``status`` if the lifecycle allows it from where it stands (one guarded
    UPDATE: a racing writer cannot make it skip a state). A final status stamps ``finished_at``; a
    live one clears it. ``message`` None keeps the order's message. Returns whether it moved."""
    sources = tuple(s.value for s in sources_of(status))
    finished = at if status.is_final else None
    if message is None:
        n = prepared.execute(f"move_order:{status.value}", lambda: Order.update(
            status=status, finished_at=finished).where(
            (Order.order_ref == order_ref) & (Order.status.in_(sources))),
            (OrderState(status).value, Order.finished_at.db_value(finished), order_ref, *sources))
    else:
        n = prepared.execute(f"move_order_msg:{status.value}", lambda: Order.update(
            status=status, finished_at=finished, message=message).where(
            (Order.order_ref == order_ref) & (Order.status.in_(sources))),
            (OrderState(status).value, Order.finished_at.db_value(finished), message, order_ref, *sources))
    return bool(n)


def set_order_message(order_ref: str, message: str) -> None:
    """What the user should know about where an order stands (shown beside its state)."""
    Order.update(message=message).where(Order.order_ref == order_ref).execute()


def orders_unknown_after_disconnect(at: datetime) -> int:
    """The connection to the broker was lost: every order working there is *unknown* until the
    broker's open orders and executions settle it. Returns how many."""
    n = 0
    for order in unresolved_orders():
        if order.status in (OrderState.SUBMITTED, OrderState.PARTIALLY_FILLED):
            n += move_order(order.order_ref, OrderState.UNKNOWN, at)
    return n


def has_cancel_pending() -> bool:
    ((n,),) = prepared.values("has_cancel_pending", lambda: Order.select(fn.COUNT(Order.id)).where(
        Order.status == OrderState.CANCEL_PENDING), (OrderState.CANCEL_PENDING.value,))
    return bool(n)


def unresolved_orders() -> list[Order]:
    return prepared.rows(Order, "unresolved_orders",
                         lambda: Order.select().where(Order.status.in_(ACTIVE)).order_by(Order.id), ACTIVE_VALUES)


def orders_sent_on(day: date) -> int:
    ((n,),) = prepared.values("orders_sent_on", lambda: Order.select(fn.COUNT(Order.id)).where(
        (Order.session_day == day) & (Order.status != OrderState.ABANDONED)
        & (Order.status != OrderState.PENDING_SUBMIT)),
        (day, OrderState.ABANDONED.value, OrderState.PENDING_SUBMIT.value))
    return int(n)


def premium_bought_on(day: date) -> Decimal:
    """Option premium bought in a session: filled buys plus the working remainder at its limit."""
    total = ZERO
    for f in prepared.rows(Fill, "premium_fills", lambda: Fill.select(Fill.price, Fill.qty).join(Order).where(
            (Order.session_day == day) & (Fill.sec_type == "OPT") & (Fill.side == "BUY")), (day, "OPT", "BUY")):
        total += f.price * f.qty * 100
    for o in prepared.rows(Order, "premium_working", lambda: Order.select().where(
            (Order.session_day == day) & Order.status.in_(ACTIVE) & (Order.sec_type == "OPT") & (Order.side == "BUY")),
            (day, *ACTIVE_VALUES, "OPT", "BUY")):
        total += o.limit * max(o.qty - o.filled_qty, 0) * 100
    return total


# --- fills -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recorded:
    """What recording one execution did."""

    fill_id: int | None
    duplicate: bool
    order_ref: str
    lot_id: int | None
    closed_lot: bool = False
    realized_pnl: Decimal | None = None


def _lot_for_buy(order: Order | None) -> Lot | None:
    """The lot an option buy adds to: the entry's lot, or a roll's new lot; None → create one."""
    if order is None:
        return None
    if order.roll_id is not None:
        roll = _roll_by_id(order.roll_id)
        return _lot_by_id(roll.new_lot_id) if roll.new_lot_id else None
    return _lot_by_id(order.lot_id) if order.lot_id else None


def _lot_for_sell(order: Order | None) -> Lot | None:
    if order is None:
        return None
    if order.roll_id is not None:
        return _lot_by_id(_roll_by_id(order.roll_id).old_lot_id)
    return _lot_by_id(order.lot_id) if order.lot_id else None


def _lot_by_id(lot_id: int) -> Lot:
    """``Lot.get_by_id``: raises Lot.DoesNotExist when there is none."""
    lot = lot_row(lot_id)
    if lot is None:
        raise Lot.DoesNotExist(f"no lot {lot_id}")  # type: ignore[attr-defined]
    return lot


def _roll_by_id(roll_id: int) -> Roll:
    """``Roll.get_by_id``: raises Roll.DoesNotExist when there is none."""
    roll = prepared.first(Roll, "roll_by_id", lambda: Roll.select().where(Roll.id == roll_id), (roll_id,))
    if roll is None:
        raise Roll.DoesNotExist(f"no roll {roll_id}")  # type: ignore[attr-defined]
    return roll


def record_execution(ex: Execution, recorded_at: datetime) -> Recorded:
    """Record one execution exactly once and apply it to the lots, atomically.

    A second call with the same exec_id changes nothing (``duplicate=True``)."""
    db = database_proxy
    with db.atomic():
        if prepared.values("fill_exists", lambda: Fill.select(SQL("1")).where(Fill.exec_id == ex.exec_id).limit(1),
                           (ex.exec_id, 1)):
            return Recorded(None, True, ex.order_ref, None)
        order = order_by_ref(ex.order_ref)
        ins = ex.instrument
        opt = ins if isinstance(ins, OptionContract) else None
        commission = ex.commission
        lot: Lot | None = None
        realized: Decimal | None = None
        closed = False
        if opt is not None and ex.side == "BUY":
            lot = _lot_for_buy(order)
            if lot is None:
                lot = prepared.create(Lot, "new_lot", symbol=opt.symbol, expiry=opt.expiry, strike=opt.strike,
                                      right=opt.right, multiplier=opt.multiplier, opened_at=ex.time)
                if order is not None:
                    if order.roll_id is not None:
                        Roll.update(new_lot=lot.id).where(Roll.id == order.roll_id).execute()
                    else:
                        Order.update(lot=lot.id).where(Order.id == order.id).execute()
            lot.avg_price = accounting.average_price(lot.qty_opened, lot.avg_price, ex.qty, ex.price)
            lot.qty_opened += ex.qty
            lot.qty_open += ex.qty
            lot.commission += commission or ZERO
            prepared.save(lot, "save_lot")
        elif opt is not None and ex.side == "SELL":
            lot = _lot_for_sell(order)
            if lot is not None:
                qty = min(ex.qty, lot.qty_open)
                share = accounting.entry_commission_share(lot.commission, qty, lot.qty_opened)
                realized = accounting.closing_pnl(lot.avg_price, ex.price, qty, lot.multiplier,
                                                  commission or ZERO, share)
                lot.qty_open -= qty
                lot.realized_pnl += realized
                if lot.qty_open == 0:
                    lot.closed_at = ex.time
                    lot.exit_reason = _exit_of(order)
                    closed = True
                prepared.save(lot, "save_lot")
        fill = prepared.create(
            Fill, "new_fill", exec_id=ex.exec_id, order=order.id if order else None, lot=lot.id if lot else None,
            symbol=ins.symbol, sec_type=sec_type(ins), expiry=opt.expiry if opt else None,
            strike=opt.strike if opt else None, right=opt.right if opt else None,
            side=ex.side, qty=ex.qty, price=ex.price, commission=commission, realized_pnl=realized,
            time=ex.time, recorded_at=recorded_at,
        )
        if order is not None:
            _update_filled(order)
        return Recorded(fill.id, False, ex.order_ref, lot.id if lot else None, closed, realized)


def _exit_of(order: Order | None) -> LotExit:
    """How a lot closed by a sale of ``order`` is recorded."""
    if order is None:
        return LotExit.UNKNOWN
    if order.roll_id is not None:
        return LotExit.ROLL
    if order.purpose == OrderPurpose.MANUAL:
        return LotExit.MANUAL
    return LotExit(order.purpose.value) if order.purpose.is_exit else LotExit.UNKNOWN


def _update_filled(order: Order) -> None:
    """filled_qty of an order: units of its first leg filled (a combo counts in combo units)."""
    req = request_from_json(order.request)
    first = req.legs[0]
    ins = first.instrument
    def leg_fills() -> Any:
        return Fill.select(fn.COALESCE(fn.SUM(Fill.qty), 0)).where(
            (Fill.order == order.id) & (Fill.side == first.action) & (Fill.symbol == ins.symbol))

    if isinstance(ins, OptionContract):
        opt = ins
        ((total,),) = prepared.values("filled_option", lambda: leg_fills().where(
            (Fill.expiry == opt.expiry) & (Fill.strike == opt.strike)),
            (0, order.id, first.action, ins.symbol, opt.expiry, Fill.strike.db_value(opt.strike)))
    else:
        ((total,),) = prepared.values("filled_stock", leg_fills, (0, order.id, first.action, ins.symbol))
    filled = int(total or 0) // max(first.ratio, 1)
    status = order.status
    if status in ACTIVE:
        status = after_fill(status, filled, order.qty)
    prepared.execute("set_filled", lambda: Order.update(filled_qty=filled, status=status).where(Order.id == order.id),
                     (OrderState(status).value, filled, order.id))


def record_commission(exec_id: str, commission: Decimal) -> bool:
    """Apply a commission report that arrived after its fill; once per fill. False if unknown or
    already known."""
    with database_proxy.atomic():
        fill = Fill.get_or_none(Fill.exec_id == exec_id)
        if fill is None or fill.commission is not None:
            return False
        fill.commission = commission
        if fill.lot_id is not None and fill.sec_type == "OPT":
            lot = Lot.get_by_id(fill.lot_id)
            if fill.side == "BUY":
                lot.commission += commission
            else:
                fill.realized_pnl = (fill.realized_pnl or ZERO) - commission
                lot.realized_pnl -= commission
            lot.save()
        fill.save()
        return True


def fill_delta(fill: Fill, context: dict[str, Any]) -> float | None:
    """The delta an option fill was judged at, from its order's context: per contract (a combo's two
    legs each have their own), or the one delta older orders recorded."""
    if fill.sec_type != "OPT" or fill.expiry is None or fill.strike is None:
        return None
    key = OptionContract(fill.symbol, fill.expiry, fill.strike, "P" if fill.right == "P" else "C").key
    deltas = context.get("deltas")
    if isinstance(deltas, dict):
        value = deltas.get(key)
        return float(value) if isinstance(value, int | float) else None
    value = context.get("delta")
    return float(value) if isinstance(value, int | float) else None


def cash_flow() -> Decimal:
    """All the cash the bot's trades moved since the first: sales and lots settled at expiry in,
    buys out, commissions out (what a broker that keeps no account of its own, the sim, must be
    told after a restart)."""
    total = ZERO
    for f in Fill.select(Fill.side, Fill.price, Fill.qty, Fill.commission, Fill.sec_type):
        amount = f.price * f.qty * (100 if f.sec_type == "OPT" else 1)
        total += (amount if f.side == "SELL" else -amount) - (f.commission or ZERO)
    for x in Expiry.select(Expiry.settlement, Expiry.qty):
        total += x.settlement * x.qty * 100
    return total


def order_instruments(order_ref: str) -> list[Any]:
    """The instruments an order trades (one, or a combo's two legs), from its stored request."""
    order = order_by_ref(order_ref)
    if order is None:
        return []
    return [leg.instrument for leg in request_from_json(order.request).legs]


def order_cash(order_ref: str) -> Decimal:
    """The cash an order's fills moved, commissions included: positive when it received money (a sale),
    negative when it paid (a buy). Commissions not reported yet count as 0."""
    order = order_by_ref(order_ref)
    if order is None:
        return ZERO
    total = ZERO
    for f in Fill.select().where(Fill.order == order.id):
        amount = f.price * f.qty * (100 if f.sec_type == "OPT" else 1)
        total += (amount if f.side == "SELL" else -amount) - (f.commission or ZERO)
    return total


def known_exec_ids() -> set[str]:
    return {f.exec_id for f in Fill.select(Fill.exec_id)}


def fills_in_order(limit: int | None = None) -> list[Fill]:
    q = Fill.select().order_by(Fill.time, Fill.id)
    if limit is not None:
        q = Fill.select().order_by(Fill.time.desc(), Fill.id.desc()).limit(limit)
        return list(reversed(list(q)))
    return list(q)


# --- lots, pool --------------------------------------------------------------------------------


def lot_view(row: Lot) -> LotView:
    return LotView(
        id=row.id,
        contract=OptionContract(row.symbol, row.expiry, row.strike, "P" if row.right == "P" else "C", row.multiplier),
        qty=row.qty_open, avg_price=row.avg_price, commission=row.commission, opened_at=row.opened_at,
    )


def open_lots() -> tuple[LotView, ...]:
    rows = prepared.rows(Lot, "open_lots", lambda: Lot.select().where(Lot.qty_open > 0).order_by(Lot.opened_at, Lot.id),
                         (0,))
    return tuple(lot_view(r) for r in rows)


def realized_option_pnl() -> Decimal:
    """Realized option P&L: closing fills plus lots that expired unsold (the P&L of
    ``realized_option_events``, read without their times: it is read at every ledger change)."""
    fills = prepared.values("realized_fill_pnl", lambda: Fill.select(Fill.realized_pnl).where(
        (Fill.sec_type == "OPT") & Fill.realized_pnl.is_null(False)), ("OPT",))
    expiries = prepared.values("realized_expiry_pnl", lambda: Expiry.select(Expiry.realized_pnl), ())
    pnl = [Fill.realized_pnl.python_value(v) for (v,) in fills]
    pnl += [Expiry.realized_pnl.python_value(v) for (v,) in expiries]
    return sum((p for p in pnl if p is not None), ZERO)


def close_expired_lot(lot_id: int, underlying_close: Decimal | None, settlement: Decimal, at: datetime) -> Decimal:
    """Close a lot that expired unsold at ``settlement`` per share; returns its realized P&L (net
    of the entry commissions not yet realized). Idempotent: a lot is closed by expiry once."""
    with database_proxy.atomic():
        lot = Lot.get_by_id(lot_id)
        if lot.qty_open <= 0 or Expiry.select().where(Expiry.lot == lot_id).exists():
            return ZERO
        qty = lot.qty_open
        share = accounting.entry_commission_share(lot.commission, qty, lot.qty_opened)
        realized = accounting.closing_pnl(lot.avg_price, settlement, qty, lot.multiplier, ZERO, share)
        Expiry.create(lot=lot_id, expiry=lot.expiry, qty=qty, underlying_close=underlying_close,
                      settlement=settlement, realized_pnl=realized, recorded_at=at)
        lot.qty_open = 0
        lot.realized_pnl += realized
        lot.closed_at = at
        lot.exit_reason = LotExit.EXPIRED
        lot.save()
        return realized


def close_lots_outside(contract: OptionContract, qty: int, executions: list[Execution], estimate: Decimal,
                       at: datetime) -> list[tuple[int, int, Decimal, str]]:
    """The account holds ``qty`` fewer of ``contract`` than the bot's lots: close that many, oldest
    lot first, as "closed outside the bot". Each closing is a fill without an order of the bot's, at
    the broker's execution (``executions``: sales made outside the bot, oldest first) where there is
    one, else at ``estimate`` per share. Returns (lot id, qty closed, price, where the price came from)."""
    out: list[tuple[int, int, Decimal, str]] = []
    execs = sorted(executions, key=lambda e: (e.time, e.exec_id))
    used = [0] * len(execs)  # how much of each execution was already applied
    left = qty
    with database_proxy.atomic():
        ids = [v.id for v in sorted(open_lots(), key=lambda v: (v.opened_at, v.id)) if v.contract == contract]
        for lot in (_lot_by_id(i) for i in ids):
            while left > 0 and lot.qty_open > 0:
                n = min(lot.qty_open, left)
                i = next((k for k, e in enumerate(execs) if used[k] < e.qty), None)
                ex = execs[i] if i is not None else None
                part = 0
                if i is not None and ex is not None:
                    part = used[i]
                    n = min(n, ex.qty - part)
                    used[i] += n
                price = ex.price if ex is not None else estimate
                commission = (ex.commission or ZERO) if ex is not None and part == 0 else ZERO
                exec_id = (ex.exec_id if part == 0 else f"{ex.exec_id}#{part}") if ex is not None \
                    else f"outside:{lot.id}:{at.isoformat()}"
                share = accounting.entry_commission_share(lot.commission, n, lot.qty_opened)
                realized = accounting.closing_pnl(lot.avg_price, price, n, lot.multiplier, commission, share)
                Fill.create(exec_id=exec_id, order=None, lot=lot.id, symbol=contract.symbol, sec_type="OPT",
                            expiry=contract.expiry, strike=contract.strike, right=contract.right, side="SELL",
                            qty=n, price=price, commission=commission, realized_pnl=realized,
                            time=ex.time if ex is not None else at, recorded_at=at)
                lot.qty_open -= n
                lot.realized_pnl += realized
                if lot.qty_open == 0:
                    lot.closed_at = at
                    lot.exit_reason = LotExit.OUTSIDE
                lot.save()
                left -= n
                out.append((lot.id, n, price, "the broker's execution" if ex is not None else "an estimate: the mid"))
            if left <= 0:
                break
    return out


def adopt_order(req: OrderRequest, broker_order_id: str, now: datetime) -> Order:
    """An order of the bot's found working at the broker that the ledger does not know: written as
    working, so it counts as live and its fills land where they belong (a sale on the oldest open lot
    of its contract, a buy on a new lot)."""
    lot_id = None
    first = req.legs[0].instrument
    if not req.is_combo and req.action == "SELL" and isinstance(first, OptionContract):
        held = sorted((v for v in open_lots() if v.contract == first), key=lambda v: (v.opened_at, v.id))
        lot_id = held[0].id if held else None
    day = now.astimezone(_NY).date()
    order = create_order(req, OrderPurpose.ADOPTED, day, now, lot_id=lot_id,
                         context={"adopted": True, "broker_order_id": broker_order_id})
    mark_sent(req.order_ref, broker_order_id, now)
    return order


class RealizedEvent(NamedTuple):
    """One realized option P&L: a closing sale (``lot_id`` when the bot's) or a lot that expired unsold."""

    time: datetime
    pnl: Decimal
    kind: str  # "sale" or "expiry"
    lot_id: int | None


def realized_option_events(start: datetime | None = None, end: datetime | None = None) -> list[RealizedEvent]:
    """Every realized option P&L in ``[start, end)`` (all when not given), in time order: closing
    fills and lots that expired unsold. The one source of realized P&L for /pnl, the daily summary
    and the period reports."""
    fills = Fill.select(Fill.time, Fill.realized_pnl, Fill.lot).where(
        (Fill.sec_type == "OPT") & Fill.realized_pnl.is_null(False))
    expired = Expiry.select(Expiry.recorded_at, Expiry.realized_pnl, Expiry.lot)
    if start is not None:
        fills = fills.where(Fill.time >= start)
        expired = expired.where(Expiry.recorded_at >= start)
    if end is not None:
        fills = fills.where(Fill.time < end)
        expired = expired.where(Expiry.recorded_at < end)
    events = [RealizedEvent(f.time, f.realized_pnl, "sale", f.lot_id) for f in fills]
    events += [RealizedEvent(x.recorded_at, x.realized_pnl, "expiry", x.lot_id) for x in expired]
    return sorted(events, key=lambda e: e.time)


def fills_between(start: datetime, end: datetime) -> list[Fill]:
    """Fills with ``start <= time < end``, in time order."""
    return list(Fill.select().where((Fill.time >= start) & (Fill.time < end)).order_by(Fill.time, Fill.id))


def expiries() -> list[Expiry]:
    return list(Expiry.select().order_by(Expiry.recorded_at, Expiry.id))


def closed_lot_pnls() -> list[Decimal]:
    """Realized P&L of every fully closed lot, oldest first."""
    rows = Lot.select(Lot.realized_pnl).where((Lot.qty_open == 0) & Lot.closed_at.is_null(False)).order_by(Lot.id)
    return [r.realized_pnl for r in rows]


def qqqm_bought() -> tuple[int, Decimal]:
    """QQQM shares the bot bought and what they cost (fills + commissions)."""
    shares, deployed = 0, ZERO
    fills = prepared.values("qqqm_fills", lambda: Fill.select(Fill.qty, Fill.price, Fill.commission).where(
        (Fill.symbol == "QQQM") & (Fill.side == "BUY")), ("QQQM", "BUY"))
    for q, p, c in fills:
        qty, price, commission = int(q), Fill.price.python_value(p), Fill.commission.python_value(c)
        assert price is not None  # a NOT NULL column
        shares += qty
        deployed += price * qty + (commission or ZERO)
    return shares, deployed


def recycling_pool() -> Decimal:
    """pool = Σ realized option P&L − Σ QQQM deployed, from the fill ledger."""
    _, deployed = qqqm_bought()
    return accounting.recycling_pool([realized_option_pnl()], [deployed])


def create_recycle(order: Order, pool_before: Decimal, shares: int, now: datetime) -> None:
    Recycle.create(order=order.id, pool_before=pool_before, shares_planned=shares, created_at=now)


# --- session flags, rolls ----------------------------------------------------------------------


def entered_on(day: date) -> bool:
    """An entry this session: one with a fill, or one still working."""
    return bool(prepared.values("entered_on", lambda: Order.select(SQL("1")).where(
        (Order.session_day == day) & (Order.purpose == OrderPurpose.ENTRY)
        & ((Order.filled_qty > 0) | Order.status.in_(ACTIVE))).limit(1),
        (day, OrderPurpose.ENTRY.value, 0, *ACTIVE_VALUES, 1)))


def rolled_on(day: date) -> bool:
    """A roll this session: any roll started today that sold something or is still working."""
    return bool(prepared.values("rolled_on", lambda: Roll.select(SQL("1")).where(
        (Roll.session_day == day) & (Roll.status != RollStatus.FAILED)).limit(1), (day, RollStatus.FAILED.value, 1)))


def create_roll(day: date, old_lot_id: int, combo: bool, now: datetime, expiry: date, strike: Decimal) -> Roll:
    return Roll.create(session_day=day, old_lot=old_lot_id, status=RollStatus.WORKING, combo=combo, created_at=now,
                       new_expiry=expiry, new_strike=strike)


def set_roll_status(roll_id: int, status: RollStatus) -> None:
    Roll.update(status=status).where(Roll.id == roll_id).execute()


def rolls_with_pending_buy() -> list[Roll]:
    return prepared.rows(Roll, "rolls_pending",
                         lambda: Roll.select().where(Roll.status == RollStatus.BUY_PENDING).order_by(Roll.id),
                         (RollStatus.BUY_PENDING.value,))


def working_rolls() -> list[Roll]:
    """Rolls whose legs were being sent when the bot stopped (for reconciliation)."""
    return list(Roll.select().where(Roll.status == RollStatus.WORKING).order_by(Roll.id))


def roll_leg_qty(roll_id: int, side: str) -> int:
    """Contracts filled on one side (BUY or SELL) of a roll's orders."""
    q = Fill.select(fn.COALESCE(fn.SUM(Fill.qty), 0)).join(Order).where((Order.roll == roll_id) & (Fill.side == side))
    return int(q.scalar() or 0)


def lot_row(lot_id: int) -> Lot | None:
    return prepared.first(Lot, "lot_row", lambda: Lot.select().where(Lot.id == lot_id), (lot_id,))


def last_contract_cost() -> Decimal | None:
    """One contract's premium in USD at the average price of the last lot bought (None before the
    first): what a new lot's contracts cost, near enough to show the money a size puts at risk."""
    row = Lot.select().order_by(Lot.opened_at.desc(), Lot.id.desc()).first()
    return None if row is None else Decimal(row.avg_price) * int(row.multiplier)


def lot_of_order(order_ref: str) -> int | None:
    """The lot an order opened or closed (None for a QQQM or unknown order)."""
    order = order_by_ref(order_ref)
    if order is None:
        return None
    lot = _lot_for_buy(order) if order.side == "BUY" else _lot_for_sell(order)
    return None if lot is None else int(lot.id)
