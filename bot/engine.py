"""The engine: one tick = snapshot → the core decides → orders executed through the broker →
ledger updated → events to the alert sink. It is also the broker's listener: every execution is
recorded once by its id, whenever it arrives (after a cancel, after a restart)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal

from bot.alerts import AlertSink, Event, EventKind
from bot.orders import ORDER_REF_PREFIX, OrderRunner
from bot.settings_service import SettingsService
from broker.base import (
    Broker,
    CommissionReport,
    ConnectionState,
    Execution,
    OrderStatus,
    OrderUpdate,
)
from broker.clock import Clock
from storage import kv, ledger
from strategy.calendar import NY, SessionCalendar
from strategy.model import MarketSnapshot, OptionQuote, StrategyState, TickPlan
from strategy.rules import DailyLimits, decide_tick, expiry_settlement, has_expired

log = logging.getLogger(__name__)


@dataclass
class TickReport:
    """What one tick saw, decided and did (for /status, /check and the log)."""

    time: datetime
    session: date | None
    change: Decimal | None = None
    qqq: Decimal | None = None
    prev_close: Decimal | None = None
    plan: TickPlan | None = None
    dry_run: bool = False
    paused: bool = False
    actions: list[str] = field(default_factory=list)
    skipped: str = ""

    def summary(self) -> str:
        if self.skipped:
            return self.skipped
        parts = []
        if self.change is not None:
            parts.append(f"QQQ {self.qqq} ({self.change * 100:+.2f}% vs {self.prev_close})")
        would = "would " if (self.dry_run or self.paused) else ""
        plan = self.plan
        if plan is not None:
            for e in plan.exits:
                parts.append(f"{would}sell lot #{e.lot_id} ({e.reason.value})")
            if plan.retry_roll_buy is not None:
                parts.append(f"{would}retry roll #{plan.retry_roll_buy} buy leg")
            if plan.roll is not None:
                parts.append(f"{would}roll lot #{plan.roll.lot_id}")
            if plan.entry is not None:
                parts.append(f"{would}enter a new LEAPS")
            if plan.recycle is not None:
                parts.append(f"{would}buy {plan.recycle.shares} QQQM")
            parts.extend(plan.notes)
            if plan.is_empty and not plan.notes:
                parts.append("no action")
        if self.paused:
            parts.append("(paused)")
        parts.extend(self.actions)
        return "; ".join(parts)


class Engine:
    def __init__(
        self,
        broker: Broker,
        clock: Clock,
        calendar: SessionCalendar,
        settings: SettingsService,
        alerts: AlertSink,
        limits: DailyLimits | None = None,
        *,
        persist_last_tick: bool = True,
    ) -> None:
        self.broker = broker
        self.clock = clock
        self.calendar = calendar
        self.settings = settings
        self.alerts = alerts
        self.limits = limits or DailyLimits()
        self.persist_last_tick = persist_last_tick
        self.runner = OrderRunner(broker, clock)
        self.ready = False
        self.last_report: TickReport | None = None
        self._lock = asyncio.Lock()
        self._state: tuple[tuple[int, int], date, StrategyState] | None = None
        self._prev_close: tuple[date, Decimal] | None = None
        self._last_day: date | None = None
        self._last_error = ""
        self._tick_errors = 0
        self.iv_guess = 0.25
        self.last_snapshot: MarketSnapshot | None = None
        self.blocked = ""  # why this engine must not trade at all (e.g. a live account not allowed)
        self._dry_run_holds_lock = False
        self._starting = False
        self._no_quote_alerted: set[tuple[date, int]] = set()

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, then reconcile with the broker before anything may be sent. Ticks that come
        meanwhile (the scheduler runs beside a slow connect) are skipped, not run in parallel."""
        self._starting = True
        try:
            self.broker.set_listener(self)
            await self.broker.connect()
            await self.reconcile()
        finally:
            self._starting = False

    async def stop(self) -> None:
        self.broker.set_listener(None)
        await self.broker.close()

    def emit(self, kind: EventKind, text: str, **data: object) -> None:
        try:
            self.alerts.emit(Event(kind, text, self.clock.now(), dict(data)))
        except Exception:
            log.exception("alert sink failed for %s", kind)

    # --- the broker's listener -----------------------------------------------------------------

    def on_execution(self, execution: Execution) -> None:
        try:
            ours = execution.order_ref.startswith(ORDER_REF_PREFIX)
            if not ours and ledger.order_by_ref(execution.order_ref) is None:
                return  # someone else's trade in the account: shown, never managed
            rec = ledger.record_execution(execution, self.clock.now())
            if rec.duplicate:
                return
            order = ledger.order_by_ref(execution.order_ref)
            what = execution.instrument.key
            if order is None:
                self.emit(EventKind.ERROR, f"Execution {execution.exec_id} for unknown order {execution.order_ref} "
                          f"recorded: {execution.side} {execution.qty} {what} @ {execution.price}")
                return
            kind = EventKind.ORDER_FILLED if order.filled_qty >= order.qty else EventKind.ORDER_PARTIAL
            self.emit(kind, f"{execution.side} {execution.qty} {what} @ {execution.price} "
                      f"({order.purpose}, {order.filled_qty}/{order.qty} filled)",
                      order_ref=order.order_ref, purpose=order.purpose)
            if rec.closed_lot and rec.lot_id is not None:
                lot = ledger.lot_row(rec.lot_id)
                if lot is not None:
                    self.emit(EventKind(order.purpose) if order.purpose in ("take_profit", "force_exit",
                                                                           "expiry_guard") else EventKind.ROLL,
                              f"Lot #{lot.id} {what} closed ({order.purpose}); realized {lot.realized_pnl:.2f} USD",
                              lot_id=lot.id)
        except Exception:
            log.exception("recording execution %s failed", execution.exec_id)
            self.emit(EventKind.ERROR, f"Could not record execution {execution.exec_id}; reconciliation will retry")
            self.ready = False

    def on_commission(self, report: CommissionReport) -> None:
        try:
            ledger.record_commission(report.exec_id, report.commission)
        except Exception:
            log.exception("recording commission for %s failed", report.exec_id)

    def on_order_update(self, update: OrderUpdate) -> None:
        try:
            if update.status in (OrderStatus.CANCELLED, OrderStatus.REJECTED):
                order = ledger.order_by_ref(update.order_ref)
                if order is None:
                    return
                if ledger.finish_order(update.order_ref, update.status.value, self.clock.now(), update.message):
                    cancelled = update.status == OrderStatus.CANCELLED
                    kind = EventKind.ORDER_CANCELLED if cancelled else EventKind.ORDER_REJECTED
                    self.emit(kind, f"Order {order.purpose} {order.side} {order.qty} ({order.filled_qty} filled) "
                              f"{update.status.value}{': ' + update.message if update.message else ''}",
                              order_ref=update.order_ref)
                self.runner.notify_final(update.order_ref)
            elif update.status == OrderStatus.FILLED:
                self.runner.notify_final(update.order_ref)
        except Exception:
            log.exception("order update for %s failed", update.order_ref)

    def on_connection(self, state: ConnectionState, detail: str) -> None:
        if state == ConnectionState.DOWN:
            self.ready = False
            self.emit(EventKind.DISCONNECT, f"Broker connection down: {detail}")
        elif state == ConnectionState.CONNECTED:
            self.emit(EventKind.RECONNECT, f"Broker connected: {detail}")
            self.ready = False  # reconcile before the next order
        elif state == ConnectionState.DEGRADED:
            self.emit(EventKind.DEGRADED, f"Broker connection degraded: {detail}")
            self.ready = False

    # --- reconciliation ------------------------------------------------------------------------

    async def reconcile(self) -> list[str]:
        """Align the ledger with the broker: record missed executions, settle orders the bot was
        working when it stopped, and only then allow new orders."""
        from bot.reconcile import reconcile

        notes = await reconcile(self)
        self.ready = True
        return notes

    # --- the tick ------------------------------------------------------------------------------

    def state(self, day: date) -> StrategyState:
        """The bot's own book as the rules see it at the start of a tick of session ``day``,
        derived from the ledger. Cached under the database's write version, so any write anywhere
        makes the next call read the ledger again: no caller has to remember to say so."""
        version = ledger.write_version()
        cached = self._state
        if cached is not None and cached[0] == version:
            cached_day, st = cached[1], cached[2]
            if cached_day == day:
                return st
            if day > cached_day:
                # Nothing was written since the last look: the new session has no entry, roll or
                # pending roll yet (those only come from orders and rolls, which are writes).
                st = replace(st, entered_this_session=False, rolled_this_session=False, pending_roll_buy=None)
                self._state = (version, day, st)
                return st
        pending = [r for r in ledger.rolls_with_pending_buy() if r.session_day == day]
        st = StrategyState(
            open_lots=ledger.open_lots(), entered_this_session=ledger.entered_on(day),
            rolled_this_session=ledger.rolled_on(day), unresolved_order=bool(ledger.unresolved_orders()),
            pool=ledger.recycling_pool(), pending_roll_buy=pending[0].id if pending else None,
        )
        self._state = (version, day, st)
        return st

    async def prev_close(self, day: date) -> Decimal:
        """QQQ's previous close for ``day`` (asked of the broker once per day)."""
        return await self._prev_close_for(day)

    async def _prev_close_for(self, day: date) -> Decimal:
        if self._prev_close is None or self._prev_close[0] != day:
            self._prev_close = (day, await self.broker.prev_close("QQQ"))
        return self._prev_close[1]

    async def snapshot(self, day: date) -> tuple[MarketSnapshot, StrategyState]:
        book = self.state(day)
        now = self.clock.now()
        qqq = await self.broker.quote("QQQ")
        prev = await self._prev_close_for(day)
        lot_quotes: dict[int, OptionQuote] = {}
        if book.open_lots:
            quotes = await self.broker.option_quotes([lot.contract for lot in book.open_lots])
            by_contract = {q.contract: q for q in quotes}
            for lot in book.open_lots:
                q = by_contract.get(lot.contract)
                if q is not None:
                    lot_quotes[lot.id] = q
                elif (day, lot.id) not in self._no_quote_alerted:  # the DB is asked once per lot and day
                    self._no_quote_alerted.add((day, lot.id))
                    if kv.put_once(f"no_quote:{day.isoformat()}:{lot.id}", "1", now):  # once across restarts too
                        self.emit(EventKind.SKIPPED, f"No quote for lot #{lot.id} ({lot.contract.key}) from the "
                                  "broker: its exits wait until one comes (alerted once per session)", lot_id=lot.id)
        s = self.settings.current
        qqqm = None
        if s.recycle_enabled and book.pool >= s.recycle_threshold and book.pool > 0:
            qqqm = await self.broker.quote("QQQM")
        snap = MarketSnapshot(now, day, qqq, prev, lot_quotes, qqqm)
        self.last_snapshot = snap
        return snap, book

    async def tick(self, *, dry_run: bool = False) -> TickReport:
        """Evaluate one tick (exits, roll, entry, recycle) and act on it unless paused or dry_run.
        Never raises: errors are logged and alerted, and the next tick runs as usual."""
        now = self.clock.now()
        if self._lock.locked() and (dry_run or not self._dry_run_holds_lock):
            return TickReport(now, None, skipped="previous tick still running: skipped")
        async with self._lock:  # a real tick waits for a /check in flight instead of being skipped
            self._dry_run_holds_lock = dry_run
            now = self.clock.now()
            self._tick_errors = 0
            try:
                report = await self._tick(now, dry_run)
            except Exception as e:
                text = f"{type(e).__name__}: {e}"
                self.report_error("Tick failed", e)
                report = TickReport(now, None, skipped=f"error: {text}")
        if not dry_run:
            self.last_report = report
            if self.persist_last_tick:
                try:
                    kv.put("last_tick", json.dumps({"time": now.isoformat(), "summary": report.summary()}), now)
                except Exception as e:
                    self.report_error("Could not store the last tick", e)
            if self._tick_errors == 0:
                self._last_error = ""  # the incident is over: the next error is a new one
        return report

    def report_error(self, what: str, e: BaseException) -> None:
        """Log and alert an error once per incident (the same error at every tick is one incident)."""
        self._tick_errors += 1
        key = f"{type(e).__name__}: {e}"
        text = f"{what}: {key}"
        if key != self._last_error:
            log.error("%s", text, exc_info=e)
            self.emit(EventKind.ERROR, text)
        else:
            log.warning("again: %s", text)
        self._last_error = key

    async def _tick(self, now: datetime, dry_run: bool) -> TickReport:
        session = self.calendar.open_session(now)
        if session is None:
            return TickReport(now, None, skipped="market closed: nothing evaluated")
        day = session.day
        if self.blocked:
            return TickReport(now, day, skipped=f"not trading: {self.blocked}")
        if self._starting:
            return TickReport(now, day, skipped="connecting and reconciling: nothing evaluated yet")
        if self.broker.state == ConnectionState.DOWN:
            return TickReport(now, day, skipped="broker connection down: nothing evaluated")
        if not self.ready and not dry_run:
            await self.reconcile()
        if day != self._last_day:
            self._expire_old_roll_buys(day)
            await self._settle_expired_lots(day)
            self._last_day = day
        settings = self.settings.current
        snap, state = await self.snapshot(day)
        plan = decide_tick(state, snap, settings)
        report = TickReport(now, day, plan.change, snap.qqq.price, snap.prev_close, plan, dry_run, settings.paused)
        if dry_run or settings.paused or plan.is_empty:
            return report
        from bot.actions import execute_plan

        await execute_plan(self, plan, snap, state, settings, report)
        return report

    async def _settle_expired_lots(self, day: date) -> None:
        """Close, at their settlement value, lots whose expiry passed unsold (they had no bid to
        sell into): the option no longer exists, and a lot left open would hold a slot for ever."""
        expired = [lot for lot in self.state(day).open_lots if has_expired(lot, day)]
        if not expired:
            return
        prev = self.calendar.previous_session(day)
        for lot in expired:
            close = None
            if prev is not None and prev.day == lot.contract.expiry and lot.contract.symbol == "QQQ":
                close = await self.prev_close(day)
            settle = expiry_settlement(lot, close)
            realized = ledger.close_expired_lot(lot.id, close, settle, self.clock.now())
            text = (f"Lot #{lot.id} {lot.contract.key} x{lot.qty} expired unsold (no bid to sell into); recorded at "
                    f"{settle} per share, realized {realized:+.2f} USD")
            if close is None:
                text += ". The expiry day's close is not known, so it is recorded as worthless: check the account"
            elif settle > 0:
                text += (f". It expired in the money (QQQ closed {close} vs strike {lot.contract.strike}): the broker "
                         f"has probably exercised it into {lot.qty * lot.contract.multiplier} QQQ shares, which the "
                         "bot does not manage: check the account")
            self.emit(EventKind.EXPIRED, text, lot_id=lot.id)

    def _expire_old_roll_buys(self, day: date) -> None:
        for roll in ledger.rolls_with_pending_buy():
            if roll.session_day < day:
                ledger.set_roll_status(roll.id, "buy_expired")
                self.emit(EventKind.ROLL, f"Roll #{roll.id}: the buy leg was not bought during its session "
                          "and is dropped; the freed slot is open to a normal entry", roll_id=roll.id)

    def today(self) -> date:
        return self.clock.now().astimezone(NY).date()
