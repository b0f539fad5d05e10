"""Start-up / reconnect reconciliation: the broker's executions and open orders are the truth.

1. Every execution of the bot's orders that the ledger lacks is recorded (exactly once, by id).
2. Every order the ledger still thinks is working is settled: still working at the broker → it is
   cancelled (the loop that repriced it is gone; the next tick decides afresh); never reached the
   broker → ``abandoned``; otherwise finished as filled or cancelled by what the fills say.
3. Rolls caught between legs are marked so their buy leg is retried, never forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.alerts import Emit, EventKind
from bot.orders import ORDER_REF_PREFIX
from broker.base import Broker, BrokerError, Execution
from broker.clock import Clock
from storage import ledger
from storage.models import OrderState, RollStatus

log = logging.getLogger(__name__)


async def reconcile(broker: Broker, clock: Clock, record: Callable[[Execution], None], emit: Emit) -> list[str]:
    """Align the ledger with ``broker``; ``record`` files a missed execution as the live listener
    would. Returns what was done, one note per thing."""
    now = clock.now()
    notes: list[str] = []
    executions = await broker.executions()
    working = {o.order_ref: o for o in await broker.open_orders()}
    known = ledger.known_exec_ids()
    for ex in sorted(executions, key=lambda e: (e.time, e.exec_id)):
        if ex.exec_id in known:
            continue
        if not ex.order_ref.startswith(ORDER_REF_PREFIX) and ledger.order_by_ref(ex.order_ref) is None:
            continue
        record(ex)
        notes.append(f"recorded missed execution {ex.exec_id} ({ex.side} {ex.qty} {ex.instrument.key})")
    executed_refs = {ex.order_ref for ex in executions}
    for order in ledger.unresolved_orders():
        ref = order.order_ref
        if ref in working:
            try:
                await broker.cancel_order(ref)
                notes.append(f"cancelled order {ref} ({order.purpose}) left working by the previous run")
            except BrokerError as e:
                notes.append(f"could not cancel {ref}: {e}")
            fresh = ledger.order_by_ref(ref)
            if fresh is not None and fresh.status in ledger.ACTIVE:
                ledger.finish_order(ref, OrderState.CANCELLED, now, "cancelled at reconciliation")
        elif order.status == OrderState.PENDING_SUBMIT and ref not in executed_refs:
            ledger.finish_order(ref, OrderState.ABANDONED, now,
                                "never reached the broker (the bot stopped before sending)")
            notes.append(f"order {ref} ({order.purpose}) never reached the broker: abandoned, not resent")
        else:
            fresh = ledger.order_by_ref(ref)
            if fresh is not None and fresh.status in ledger.ACTIVE:
                status = OrderState.FILLED if fresh.filled_qty >= fresh.qty else OrderState.CANCELLED
                ledger.finish_order(ref, status, now, "settled at reconciliation")
                notes.append(f"order {ref} ({order.purpose}) settled as {status}")
    for roll in ledger.working_rolls():
        sold = ledger.roll_leg_qty(roll.id, "SELL")
        bought = ledger.roll_leg_qty(roll.id, "BUY")
        if sold and not bought:
            ledger.set_roll_status(roll.id, RollStatus.BUY_PENDING)
            notes.append(f"roll #{roll.id}: sold but not bought; the buy leg will be retried")
        elif bought:
            ledger.set_roll_status(roll.id, RollStatus.COMPLETED)
        else:
            ledger.set_roll_status(roll.id, RollStatus.FAILED)
    for note in notes:
        log.info("reconciliation: %s", note)
    if notes:
        emit(EventKind.RECONNECT, "Reconciled with the broker: " + "; ".join(notes))
    return notes

