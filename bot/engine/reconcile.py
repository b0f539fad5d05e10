"""Reconciliation: the broker's open orders, executions and positions are the truth.

It runs at start-up, after every reconnect and every few minutes while connected, always under the
engine's lock (no order of the bot's is being worked meanwhile):
1. Every open order of the bot's at the broker (matched by order reference, whatever the ledger
   believes) that the ledger does not know is *adopted*: written to the ledger, so its fills are
   recorded and it counts as working, then cancelled, with an alert.
2. Every execution of the bot's orders that the ledger lacks is recorded (exactly once, by id).
3. Every order the ledger holds live is settled by the broker's word: still working at the broker
   → its cancel is asked (the loop that worked it is gone; the next tick decides afresh) and it stays
   *cancel pending* until the broker confirms; not working there → final, as its fills say (an order
   that never reached the broker → *not sent*). An order the ledger holds final but that still works
   at the broker is live again (cancel pending) and cancelled, with an alert.
4. Rolls caught between legs are marked so their buy leg is retried, never forgotten.
5. Every lot of the bot's is compared with the account's position in its contract: a lot the account
   no longer holds (sold in TWS or the mobile app, exercised, assigned) is closed as "closed outside
   the bot", at the broker's execution where one exists, with an alert. A shortfall must be seen by
   two reconciliations in a row before a lot is closed (positions and executions are separate
   messages at IB: one read can lag the other).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from bot.engine.alerts import Emit, EventKind
from bot.engine.orders import ORDER_REF_PREFIX, OrderRunner
from broker.base import Broker, BrokerOrder, Execution
from broker.clock import Clock
from storage import kv, ledger
from storage.models import OrderState, RollStatus
from strategy.model import OptionContract
from strategy.rules import sellable_qty

log = logging.getLogger(__name__)
CONFIRM_GAP_AFTER_S = 60  # a position shortfall is acted on when seen again at least this much later


@dataclass
class Reconciliation:
    """What one reconciliation did, one note per thing (for the log and the alert)."""

    notes: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    closed_outside: list[int] = field(default_factory=list)


def is_ours(order_ref: str) -> bool:
    return order_ref.startswith(ORDER_REF_PREFIX)


async def reconcile(broker: Broker, clock: Clock, runner: OrderRunner, record: Callable[[Execution], None],
                    emit: Emit) -> list[str]:
    """Align the ledger with ``broker``; ``record`` files a missed execution as the live listener
    would. Returns what was done, one note per thing."""
    now = clock.now()
    done = Reconciliation()
    executions = await broker.executions()
    working = {o.order_ref: o for o in await broker.open_orders() if is_ours(o.order_ref)}
    final_but_working = []  # the ledger believes these over; the broker still works them
    for ref, bo in working.items():
        row = ledger.order_by_ref(ref)
        if row is None:
            _adopt(bo, now, done)
        elif row.status.is_final:
            final_but_working.append(ref)
    known = ledger.known_exec_ids()
    for ex in sorted(executions, key=lambda e: (e.time, e.exec_id)):
        if ex.exec_id in known:
            continue
        if not is_ours(ex.order_ref) and ledger.order_by_ref(ex.order_ref) is None:
            continue
        record(ex)
        done.notes.append(f"recorded a fill the bot had missed: {ex.side} {ex.qty} {ex.instrument.key} @ {ex.price}")
    executed_refs = {ex.order_ref for ex in executions}
    for order in ledger.unresolved_orders():
        ref = order.order_ref
        if ref in working:
            if order.status in (OrderState.PENDING_SUBMIT, OrderState.UNKNOWN):
                ledger.move_order(ref, OrderState.SUBMITTED, now)  # the broker says it works
                if working[ref].broker_order_id:
                    ledger.mark_sent(ref, working[ref].broker_order_id, now)
            result = await runner.cancel(ref, "found working at reconciliation")
            what = f"order {order.id} ({order.purpose.label})"
            if ref in done.adopted:
                continue
            done.notes.append(f"{what} was still working at the broker: cancel "
                              + ("sent" if result.sent else f"not sent ({result.problem}); retried"))
        elif order.status == OrderState.PENDING_SUBMIT and ref not in executed_refs:
            ledger.finish_order(ref, OrderState.ABANDONED, now, "never reached the broker")
            done.notes.append(f"order {order.id} ({order.purpose.label}) never reached the broker: not sent, "
                              "and not resent")
        else:
            fresh = ledger.order_by_ref(ref)
            if fresh is not None and fresh.status.is_active:
                status = OrderState.FILLED if fresh.filled_qty >= fresh.qty else OrderState.CANCELLED
                ledger.finish_order(ref, status, now, "over at the broker (settled at reconciliation)")
                done.notes.append(f"order {order.id} ({order.purpose.label}) is over at the broker: "
                                  f"{fresh.filled_qty} of {fresh.qty} filled")
    for ref in final_but_working:
        row = ledger.order_by_ref(ref)
        if row is not None and row.status.is_final:
            believed = row.status.label
            ledger.move_order(ref, OrderState.CANCEL_PENDING, now, f"working at the broker although {believed}")
            result = await runner.cancel(ref, "found working at reconciliation")
            done.notes.append(f"order {row.id} ({row.purpose.label}) was working at the broker although the "
                              f"ledger had it {believed}: cancel " + ("sent" if result.sent else "not sent; retried"))
    _settle_rolls(done)
    await _check_positions(broker, now, emit, done)
    for note in done.notes:
        log.info("reconciliation: %s", note)
    if done.notes:
        emit(EventKind.RECONNECT, "Reconciled with the broker: " + "; ".join(done.notes))
    return done.notes


def _adopt(bo: BrokerOrder, now: datetime, done: Reconciliation) -> None:
    """An open order of the bot's that the ledger does not know (e.g. the database was restored from
    a backup): written to the ledger so it counts as working and its fills land on a lot."""
    order = ledger.adopt_order(bo.request, bo.broker_order_id, now)
    done.adopted.append(bo.order_ref)
    legs = " / ".join(f"{leg.action} {leg.instrument.key}" for leg in bo.request.legs)
    done.notes.append(f"adopted order {order.id} ({legs} x{bo.request.qty}), working at the broker but unknown "
                      "to the bot; it is cancelled")


def _settle_rolls(done: Reconciliation) -> None:
    for roll in ledger.working_rolls():
        if any(o.roll_id == roll.id for o in ledger.unresolved_orders()):
            continue  # a leg is still live: the broker has not said how it ends
        sold = ledger.roll_leg_qty(roll.id, "SELL")
        bought = ledger.roll_leg_qty(roll.id, "BUY")
        if sold and not bought:
            ledger.set_roll_status(roll.id, RollStatus.BUY_PENDING)
            done.notes.append(f"roll #{roll.id}: sold but not bought; the buy leg will be retried")
        elif bought:
            ledger.set_roll_status(roll.id, RollStatus.COMPLETED)
        else:
            ledger.set_roll_status(roll.id, RollStatus.FAILED)


def _gap_key(contract: OptionContract) -> str:
    return f"position_gap:{contract.key}"


async def _check_positions(broker: Broker, now: datetime, emit: Emit, done: Reconciliation) -> None:
    """Close, as "closed outside the bot", lots the account no longer holds (seen twice in a row)."""
    held = await broker_option_positions(broker)
    by_contract: dict[OptionContract, int] = {}
    for lot in ledger.open_lots():
        by_contract[lot.contract] = by_contract.get(lot.contract, 0) + lot.qty
    live_sells = working_sell_qty()
    for contract, n in held.items():
        short_key = f"short:{contract.key}"
        if n < 0 and contract.symbol == "QQQ":
            if kv.put_once(short_key, str(n), now):
                text = (f"The account is SHORT {-n} {contract.key}: an uncovered call. The bot never sells more "
                        "than the account holds; this comes from a sale outside the bot (or one that raced a "
                        "working order of the bot's). Buy it back in TWS or the mobile app")
                done.notes.append(text)
                emit(EventKind.ERROR, text)
        elif kv.get(short_key) is not None:
            kv.delete(short_key)
    for contract, qty in by_contract.items():
        gap = qty - max(held.get(contract, 0), 0)
        key = _gap_key(contract)
        if gap <= 0 or live_sells.get(contract, 0) > 0:
            if kv.get(key) is not None:
                kv.delete(key)
            continue
        seen = kv.get(key)
        first = json.loads(seen) if seen is not None else None
        if first is None or int(first["gap"]) > gap or \
                (now - datetime.fromisoformat(first["at"])).total_seconds() < CONFIRM_GAP_AFTER_S:
            if first is None or int(first["gap"]) > gap:
                kv.put(key, json.dumps({"gap": gap, "at": now.isoformat()}), now)
            done.notes.append(f"the account holds {held.get(contract, 0)} {contract.key}, the bot's lots {qty}: "
                              "checked again at the next reconciliation")
            continue
        kv.delete(key)
        executions = [e for e in await broker.executions() if e.instrument == contract and e.side == "SELL"
                      and not is_ours(e.order_ref) and e.exec_id not in ledger.known_exec_ids()]
        quotes = await broker.option_quotes([contract]) if not executions else []
        mid = quotes[0].mid if quotes and quotes[0].mid is not None else Decimal(0)
        for lot_id, closed_qty, price, source in ledger.close_lots_outside(contract, gap, executions, mid, now):
            done.closed_outside.append(lot_id)
            text = (f"Lot #{lot_id} {contract.key} x{closed_qty} is no longer in the account: closed as \"closed "
                    f"outside the bot\" at {price:.2f} per share ({source})")
            if source != "the broker's execution":
                text += "; check the account (sold in TWS or the mobile app, exercised or assigned?)"
            done.notes.append(text)
            emit(EventKind.EXTERNAL_CLOSE, text, lot_id=lot_id)


async def broker_option_positions(broker: Broker) -> dict[OptionContract, int]:
    """The account's position in each option contract, as the broker reports it (negative: short)."""
    out: dict[OptionContract, int] = {}
    for p in await broker.positions():
        if isinstance(p.contract, OptionContract):
            out[p.contract] = out.get(p.contract, 0) + int(p.qty)
    return out


def working_sell_qty() -> dict[OptionContract, int]:
    """Per option contract, how many the bot's live orders may still sell (unfilled remainder)."""
    out: dict[OptionContract, int] = {}
    for order in ledger.unresolved_orders():
        req = ledger.request_from_json(order.request)
        left = max(order.qty - order.filled_qty, 0)
        for leg in req.legs:
            if leg.action == "SELL" and isinstance(leg.instrument, OptionContract):
                out[leg.instrument] = out.get(leg.instrument, 0) + left * leg.ratio
    return out


async def sellable(broker: Broker, contract: OptionContract) -> int:
    """How many of ``contract`` the bot may sell now: the account's long position at the broker
    minus what the bot's live orders may already sell (`strategy.rules.sellable_qty`)."""
    held = await broker_option_positions(broker)
    return sellable_qty(held.get(contract, 0), working_sell_qty().get(contract, 0))

