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

from broker.base import Broker, BrokerError, OrderRequest
from broker.clock import Clock
from storage import ledger
from storage.models import Order, OrderPurpose, OrderState
from strategy.rules import limit_price
from strategy.settings import StrategySettings

log = logging.getLogger(__name__)

ORDER_REF_PREFIX = "qqqbot-"

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
    """Runs orders to a final state; one at a time per engine."""

    def __init__(self, broker: Broker, clock: Clock) -> None:
        self.broker = broker
        self.clock = clock
        self._final_events: dict[str, asyncio.Event] = {}
        self._running: set[str] = set()

    def is_running(self, order_ref: str) -> bool:
        """Whether ``run`` is still working this order (its outcome is not returned yet)."""
        return order_ref in self._running

    def notify_final(self, order_ref: str) -> None:
        """Called by the engine's listener when an order reached a final state."""
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
    ) -> OrderOutcome:
        """Persist, send, reprice, time out. Returns what the ledger says when the order is done.
        ``max_buy_limit`` bounds a buy's reprices by the price its budget was checked against, so a
        quote that moves up while the order works never spends more than was decided."""
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
            return await self._send_and_work(req, settings, quote, tick, max_buy_limit)
        finally:
            self._running.discard(ref)

    async def _send_and_work(
        self, req: OrderRequest, settings: StrategySettings, quote: QuoteFn, tick: Decimal,
        max_buy_limit: Decimal | None,
    ) -> OrderOutcome:
        ref = req.order_ref
        try:
            broker_id = await self.broker.place_order(req)
        except BrokerError as e:
            ledger.finish_order(ref, OrderState.REJECTED, self.clock.now(), str(e))
            return OrderOutcome(ref, OrderState.REJECTED, 0, req.qty, str(e))
        ledger.mark_sent(ref, broker_id, self.clock.now())
        try:
            return await self._work(req, settings, quote, tick, max_buy_limit)
        finally:
            self._final_events.pop(ref, None)

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
            q = await quote()
            if q is None:
                continue
            bid, ask, tk = q
            new_limit = limit_price(bid, ask, req.action, step, settings, tk or tick)
            if req.action == "BUY" and max_buy_limit is not None:
                new_limit = min(new_limit, max_buy_limit)
            if new_limit != limit:
                try:
                    await self.broker.modify_order(ref, new_limit)
                except BrokerError as e:
                    log.warning("reprice of %s to %s refused: %s", ref, new_limit, e)
                    continue
                limit = new_limit
                ledger.set_limit(ref, new_limit)
        order = self._status(ref)
        return OrderOutcome(ref, order.status, order.filled_qty, order.qty, order.message)

    async def _finished(self, ref: str, started: datetime, settings: StrategySettings) -> bool:
        """True when the order is final, or has just been cancelled for timing out."""
        if self._status(ref).status not in ledger.ACTIVE:
            return True
        if (self.clock.now() - started).total_seconds() >= settings.order_timeout_s:
            await self._cancel(ref)
            return True
        return False

    async def _cancel(self, ref: str) -> None:
        try:
            await self.broker.cancel_order(ref)
        except BrokerError as e:
            log.info("cancel of %s: %s", ref, e)
        # The broker may confirm asynchronously; the order is over for the bot either way, and
        # fills that still arrive for it are recorded by execution id.
        order = self._status(ref)
        if order.status in ledger.ACTIVE:
            status = OrderState.FILLED if order.filled_qty >= order.qty else OrderState.CANCELLED
            ledger.finish_order(ref, status, self.clock.now(), "timed out" if status == OrderState.CANCELLED else "")
