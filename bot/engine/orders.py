"""Executing one order by the spec's order rules: persisted before it is sent, a limit at the mid,
repriced toward the far side every ``reprice_s`` (never past ``max_slippage``), cancelled at
``order_timeout_s``. Fills are recorded by the engine's broker listener, not here."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from broker.base import Broker, BrokerError, NotSent, OrderRequest
from broker.clock import Clock
from storage import ledger
from storage.models import Order, OrderPurpose, OrderState
from strategy.rules import limit_price
from strategy.settings import StrategySettings

log = logging.getLogger(__name__)

ORDER_REF_PREFIX = "qqqbot-"

# Why an order of this purpose must not be sent now (a pause, a stop), or None; manual orders pass
# ``manual=True``. Read at the last moment before sending.
SendGate = Callable[[OrderPurpose, bool], str | None]

# (bid, ask, tick) of what the order trades (net for a combo), or None when there is no quote.
QuoteFn = Callable[[], Awaitable[tuple[Decimal, Decimal, Decimal] | None]]


def new_order_ref() -> str:
    return f"{ORDER_REF_PREFIX}{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class OrderOutcome:
    order_ref: str
    status: OrderState
    filled: int
    qty: int
    message: str = ""


class OrderRunner:
    """Runs orders through their lifecycle (`strategy.order_lifecycle`); one at a time per engine.
    Only the broker moves an order to a final state, except an order that provably never left the
    bot (the gate held it back, or the broker was not connected)."""

    def __init__(self, broker: Broker, clock: Clock, gate: SendGate | None = None) -> None:
        self.broker = broker
        self.clock = clock
        self.gate = gate
        # Held from the last look at the pause until the order has left: whoever changes the pause
        # (/stop, /pause) takes it too, so no order slips out after their reply.
        self.send_lock = asyncio.Lock()
        self._final_events: dict[str, asyncio.Event] = {}
        self._running: set[str] = set()

    def is_running(self, order_ref: str) -> bool:
        """Whether ``run`` is still working this order (its outcome is not returned yet)."""
        return order_ref in self._running

    def notify_final(self, order_ref: str) -> None:
        """Called when an order reached a final state or a cancel was asked for it: a run() waiting
        on it looks again."""
        ev = self._final_events.get(order_ref)
        if ev is not None:
            ev.set()

    async def _wait(self, order_ref: str, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.clock.simulated:
            await self.clock.sleep(seconds)
            return
        ev = self._final_events.setdefault(order_ref, asyncio.Event())
        try:
            await asyncio.wait_for(ev.wait(), timeout=seconds)
        except TimeoutError:
            pass

    @staticmethod
    def _status(order_ref: str) -> Order:
        order = ledger.order_by_ref(order_ref)
        if order is None:  # pragma: no cover - written before sending
            raise RuntimeError(f"order {order_ref} vanished from the database")
        return order

    async def run(
        self,
        req: OrderRequest,
        *,
        purpose: OrderPurpose,
        session_day: date,
        settings: StrategySettings,
        quote: QuoteFn,
        tick: Decimal,
        lot_id: int | None = None,
        roll_id: int | None = None,
        context: dict[str, Any] | None = None,
        after_create: Callable[[Order], None] | None = None,
        max_buy_limit: Decimal | None = None,
        announce: Callable[[], object] | None = None,
    ) -> OrderOutcome:
        """Persist, send, reprice, time out. Returns what the ledger says when the bot stops working
        the order: final, or *cancel pending* when the broker has not confirmed the timeout's cancel
        (the order can still fill; nothing new is sent for its purpose until the broker settles it).
        ``max_buy_limit`` bounds a buy's reprices by the price its budget was checked against, so a
        quote that moves up while the order works never spends more than was decided. ``announce``
        (the "order sent" alert) is called once the order passed the last look at the pause, right
        before it goes to the broker."""
        from storage.models import database_proxy

        now = self.clock.now()
        with database_proxy.atomic():
            order = ledger.create_order(req, purpose, session_day, now, lot_id=lot_id, roll_id=roll_id,
                                        context=context)
            if after_create is not None:
                after_create(order)
        ref = req.order_ref
        self._running.add(ref)
        try:
            return await self._send_and_work(req, purpose, settings, quote, tick, max_buy_limit,
                                             manual=bool((context or {}).get("manual")), announce=announce)
        finally:
            self._running.discard(ref)

    async def _send_and_work(
        self, req: OrderRequest, purpose: OrderPurpose, settings: StrategySettings, quote: QuoteFn, tick: Decimal,
        max_buy_limit: Decimal | None, *, manual: bool, announce: Callable[[], object] | None,
    ) -> OrderOutcome:
        ref = req.order_ref
        async with self.send_lock:
            # The last word before the order leaves: a /stop or /pause that replied before this
            # point holds every automatic order back (they take this lock to change the pause).
            held = self.gate(purpose, manual) if self.gate is not None else None
            if held is not None:
                ledger.finish_order(ref, OrderState.ABANDONED, self.clock.now(), f"not sent: {held}")
                return self._outcome(ref)
            if announce is not None:
                announce()
            try:
                broker_id = await self.broker.place_order(req)
            except NotSent as e:
                ledger.finish_order(ref, OrderState.ABANDONED, self.clock.now(), f"not sent: {e}")
                return self._outcome(ref)
            except BrokerError as e:
                ledger.finish_order(ref, OrderState.REJECTED, self.clock.now(), str(e))
                return self._outcome(ref)
            except Exception:
                # Whether it reached the broker is not known: the reconciliation will tell.
                ledger.move_order(ref, OrderState.UNKNOWN, self.clock.now())
                raise
        ledger.mark_sent(ref, broker_id, self.clock.now())
        try:
            return await self._work(req, settings, quote, tick, max_buy_limit)
        finally:
            self._final_events.pop(ref, None)

    def _outcome(self, ref: str) -> OrderOutcome:
        order = self._status(ref)
        return OrderOutcome(ref, order.status, order.filled_qty, order.qty, order.message)

    async def _work(
        self, req: OrderRequest, settings: StrategySettings, quote: QuoteFn, tick: Decimal,
        max_buy_limit: Decimal | None,
    ) -> OrderOutcome:
        ref = req.order_ref
        started = self.clock.now()
        step = 0
        limit = req.limit
        while not await self._finished(ref, started, settings):
            elapsed = (self.clock.now() - started).total_seconds()
            await self._wait(ref, min((step + 1) * settings.reprice_s, settings.order_timeout_s) - elapsed)
            if await self._finished(ref, started, settings):
                break
            step += 1
            try:
                q = await quote()
            except BrokerError as e:  # e.g. the connection dropped: keep the limit, the timeout still holds
                log.info("no quote to reprice %s: %s", ref, e)
                q = None
            if q is None:
                continue
            bid, ask, tk = q
            new_limit = limit_price(bid, ask, req.action, step, settings, tk or tick)
            if req.action == "BUY" and max_buy_limit is not None:
                new_limit = min(new_limit, max_buy_limit)
            if new_limit != limit:
                if not self._working(ref):  # cancelled (or settled) during the quote: never reprice it
                    continue
                try:
                    await self.broker.modify_order(ref, new_limit)
                except BrokerError as e:
                    log.warning("reprice of %s to %s refused: %s", ref, new_limit, e)
                    continue
                limit = new_limit
                ledger.set_limit(ref, new_limit)
        return self._outcome(ref)

    def _working(self, ref: str) -> bool:
        """Whether the bot still works this order (live, and no cancel asked for)."""
        status = OrderState(self._status(ref).status)
        return status.is_active and status != OrderState.CANCEL_PENDING

    async def _finished(self, ref: str, started: datetime, settings: StrategySettings) -> bool:
        """True when the bot stops working the order: it is final, a cancel was asked for it (by
        /cancel, /stop or the timeout), or it has just timed out and its cancel was asked now."""
        if not self._working(ref):
            return True
        if (self.clock.now() - started).total_seconds() >= settings.order_timeout_s:
            await self.cancel(ref, "timed out")
            return True
        return False

    async def cancel(self, ref: str, why: str) -> CancelResult:
        """Ask the broker to cancel a live order. The order is *cancel pending* from now until the
        broker says it is over (the CANCELLED update, or its fills); a cancel that cannot be sent
        leaves it working at the broker, and it is retried (`retry_cancels`, the reconciliation)."""
        order = ledger.order_by_ref(ref)
        if order is None or order.status.is_final:
            return CancelResult(ref, order.status if order is not None else OrderState.ABANDONED, sent=False,
                                problem="" if order is not None else "unknown order")
        if order.status == OrderState.PENDING_SUBMIT and ref not in self._running:
            # Written but never acknowledged, and nobody is sending it: only the reconciliation can
            # tell whether it reached the broker.
            return CancelResult(ref, order.status, sent=False, problem="not acknowledged by the broker yet")
        ledger.move_order(ref, OrderState.CANCEL_PENDING, self.clock.now(), f"cancel asked: {why}")
        problem = ""
        try:
            await self.broker.cancel_order(ref)
            sent = True
        except NotSent as e:
            sent, problem = False, f"the cancel could not be sent ({e}); the order keeps working at the broker"
            ledger.set_order_message(ref, "the connection to the broker dropped before its cancel could be sent")
        except BrokerError as e:
            # Unknown or already over at the broker: its final status and fills come as events, or
            # the reconciliation reads them.
            sent, problem = False, f"the broker refused the cancel: {e}"
        if problem:
            log.warning("cancel of %s: %s", ref, problem)
        self.notify_final(ref)  # a run() waiting for this order stops working it
        return CancelResult(ref, self._status(ref).status, sent=sent, problem=problem)

    async def retry_cancels(self) -> list[CancelResult]:
        """Send again the cancel of every *cancel pending* order nobody is working (e.g. a cancel that
        could not be sent while the connection was down)."""
        out = []
        for order in ledger.unresolved_orders():
            if order.status == OrderState.CANCEL_PENDING and order.order_ref not in self._running:
                out.append(await self.cancel(order.order_ref, "retry"))
        return out


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What asking for a cancel did: the order's state right after, whether the cancel left the
    bot, and what went wrong if it did not."""

    order_ref: str
    status: OrderState
    sent: bool
    problem: str = ""
