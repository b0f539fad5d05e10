"""The engine: one tick = snapshot → the core decides → orders executed through the broker →
ledger updated → events to the alert sink. It is also the broker's listener: every execution is
recorded once by its id, whenever it arrives (after a cancel, after a restart)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from bot.engine.actions import Desk, execute_plan
from bot.engine.alerts import AlertSink, Event, EventKind, actor_id
from bot.engine.decision_journal import Journal
from bot.engine.orders import ORDER_REF_PREFIX, OrderRunner
from bot.engine.reconcile import reconcile
from bot.engine.settings_service import SettingsService
from bot.engine.tick_report import TickReport
from bot.logs import redactor
from broker.base import (
    Broker,
    CommissionReport,
    ConnectionState,
    Execution,
    NotSent,
    OrderStatus,
    OrderUpdate,
)
from broker.clock import Clock
from storage import kv, ledger
from storage import quotes as recorded_quotes
from storage.models import Order, OrderPurpose, OrderState, RollStatus
from strategy.calendar import NY, SessionCalendar
from strategy.explain import Reason, explain_tick
from strategy.model import MarketSnapshot, OptionContract, OptionQuote, StrategyState, TickPlan
from strategy.rules import (
    DailyLimits,
    allowed_under_pause,
    decide_tick,
    expiry_settlement,
    has_expired,
    held_by_pause,
)
from strategy.settings import StrategySettings

log = logging.getLogger(__name__)
RECONCILE_EVERY = timedelta(minutes=5)  # while connected, the broker's orders and fills are compared this often

# The alert a sale that closes a lot raises, by the purpose of its order (a roll's sale: ROLL).
LOT_CLOSED_EVENT: dict[OrderPurpose, EventKind] = {
    OrderPurpose.TAKE_PROFIT: EventKind.TAKE_PROFIT,
    OrderPurpose.FORCE_EXIT: EventKind.FORCE_EXIT,
    OrderPurpose.EXPIRY_GUARD: EventKind.EXPIRY_GUARD,
    OrderPurpose.MANUAL: EventKind.MANUAL,
}


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
        journal: bool = True,
        private_db: bool = False,
        reconcile_every: timedelta | None = RECONCILE_EVERY,
        record_quotes: bool = False,
    ) -> None:
        self.broker = broker
        self.clock = clock
        self.calendar = calendar
        self.settings = settings
        self.alerts = alerts
        self.limits = limits or DailyLimits()
        self.persist_last_tick = persist_last_tick
        self.private_db = private_db  # only this engine's connection writes the database (a backtest)
        self.reconcile_every = reconcile_every  # None: only at start-up, after a reconnect or a failure
        self._reconciled_at: datetime | None = None
        self.runner = OrderRunner(broker, clock, self._send_gate)
        self.journal = Journal(clock.now, enabled=journal)
        self.desk = Desk(broker, clock, self.runner, self.limits, self.emit, self.report_error, self.journal.note,
                         record_quotes=self._record_quotes if record_quotes else None)
        self.ready = False
        self.last_report: TickReport | None = None
        self._lock = asyncio.Lock()
        self._state: tuple[tuple[int, int], date, StrategyState] | None = None
        self._prev_close: tuple[date, Decimal] | None = None
        self._last_day: date | None = None
        self._last_error = ""
        self._tick_errors = 0
        self.last_snapshot: MarketSnapshot | None = None
        self.blocked = ""  # why this engine must not trade at all (e.g. a live account not allowed)
        self._holder = ""  # who holds the lock: "tick", "check" or "manual"
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

    def _record_quotes(self, at: datetime, underlying: Decimal | None, quotes: list[OptionQuote]) -> None:
        """Keep the long-dated quotes the broker gave (for `calibrate --from-db`); never breaks a tick."""
        try:
            recorded_quotes.record(at, underlying, quotes)
        except Exception:
            log.exception("could not keep the option quotes")

    def _send_gate(self, purpose: OrderPurpose, manual: bool) -> str | None:
        """Why an order must not leave now, read at the last moment before it is sent: the engine is
        blocked, or (automatic orders) a pause holds this purpose back."""
        if self.blocked:
            return f"not trading: {self.blocked}"
        paused = self.settings.current.paused
        if not manual and held_by_pause(purpose.is_exit, paused):
            return f"paused ({paused.value}) before it was sent"
        return None

    @property
    def send_lock(self) -> asyncio.Lock:
        """Held while an order is between its last look at the pause and the broker: whoever changes
        the pause takes it, so no order leaves after their reply."""
        return self.runner.send_lock

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
            # A manual order's fills while its admin waits for the reply are in that reply; a late one
            # (after the reply was written) is news to them too.
            ctx = json.loads(order.context or "{}")
            manual_by = ctx.get("manual")
            actor = actor_id(manual_by) if isinstance(manual_by, str) and self.runner.is_running(order.order_ref) \
                else None
            ins = execution.instrument
            amount = execution.price * execution.qty * (ins.multiplier if isinstance(ins, OptionContract) else 1)
            fee = f" + {execution.commission:,.2f} commission" if execution.commission else ""
            paid = "paid" if execution.side == "BUY" else "received"
            self.emit(kind, f"{execution.side} {execution.qty} {what} @ {execution.price}: {paid} {amount:,.2f} USD"
                      f"{fee} ({order.purpose.label}, {order.filled_qty}/{order.qty} filled)",
                      order_ref=order.order_ref, purpose=order.purpose.value, actor=actor)
            if rec.lot_id is not None:
                self._journal_fill(execution, order, ctx, rec.lot_id, amount)
            if rec.closed_lot and rec.lot_id is not None:
                lot = ledger.lot_row(rec.lot_id)
                if lot is not None:
                    cost = lot.avg_price * lot.qty_opened * lot.multiplier + lot.commission
                    pct = f" ({lot.realized_pnl / cost * 100:+.1f} %)" if cost > 0 else ""
                    held = (execution.time.astimezone(NY).date() - lot.opened_at.astimezone(NY).date()).days
                    self.emit(LOT_CLOSED_EVENT.get(order.purpose, EventKind.ROLL),
                              f"Lot #{lot.id} {what} closed by {order.purpose.label} after {held} days: realized "
                              f"{lot.realized_pnl:+,.2f} USD{pct}, net of commissions",
                              lot_id=lot.id, order_ref=order.order_ref, actor=actor)
        except Exception:
            log.exception("recording execution %s failed", execution.exec_id)
            self.emit(EventKind.ERROR, f"Could not record execution {execution.exec_id}; reconciliation will retry")
            self.ready = False

    def _journal_fill(self, ex: Execution, order: Order, ctx: dict[str, Any], lot_id: int, amount: Decimal) -> None:
        """A lot's story: every fill of it, in the journal under the lot."""
        day = ex.time.astimezone(NY).date()
        verb = "bought" if ex.side == "BUY" else "sold"
        why = order.purpose.label + (f" by {ctx['manual']}" if ctx.get("manual") else "")
        qqq = f"; QQQ {ctx['underlying_price']:.2f}" if isinstance(ctx.get("underlying_price"), float) else ""
        delta = ctx.get("deltas", {}).get(ex.instrument.key) if isinstance(ctx.get("deltas"), dict) else None
        d = f", delta {delta:.2f}" if isinstance(delta, float) else ""
        self.journal.note(day, f"lot:{lot_id}", f"fill:{ex.exec_id}",
                          f"{verb} {ex.qty} {ex.instrument.key} @ {ex.price} ({amount:,.2f} USD; {why}{d}{qqq})",
                          lot_id)

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
                final = OrderState.CANCELLED if update.status == OrderStatus.CANCELLED else OrderState.REJECTED
                if ledger.finish_order(update.order_ref, final, self.clock.now(), update.message):
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
        detail = redactor().redact(detail)  # an account id or the gateway's address, never in clear
        if state == ConnectionState.DOWN:
            self.ready = False
            try:
                lost = ledger.orders_unknown_after_disconnect(self.clock.now())
            except Exception:
                log.exception("could not mark the working orders unknown")
                lost = 0
            extra = (f"; {lost} working order{'s' if lost > 1 else ''} unknown until the broker answers again"
                     if lost else "")
            self.emit(EventKind.DISCONNECT, f"Broker connection down: {detail}{extra}")
        elif state == ConnectionState.CONNECTED:
            self.emit(EventKind.RECONNECT, f"Broker connected: {detail}")
            self.ready = False  # reconcile before the next order
        elif state == ConnectionState.DEGRADED:
            self.emit(EventKind.DEGRADED, f"Broker connection degraded: {detail}")
            self.ready = False

    # --- reconciliation ------------------------------------------------------------------------

    async def reconcile(self) -> list[str]:
        """Align the ledger with the broker: adopt strays, record missed executions, settle the orders
        the bot is not working, close lots the account no longer holds; only then allow new orders.
        The caller holds the engine's lock (or nothing else runs yet: start-up)."""
        notes = await reconcile(self.broker, self.clock, self.runner, self.on_execution, self.emit)
        self.ready = True
        self._reconciled_at = self.clock.now()
        return notes

    async def reconcile_if_due(self) -> list[str] | None:
        """The periodic reconciliation (the heartbeat calls it): when connected, every
        ``reconcile_every``, never beside a tick or a manual action (it waits for the next beat)."""
        due = self.reconcile_every
        now = self.clock.now()
        if due is None or self.blocked or self._starting or self.broker.state == ConnectionState.DOWN \
                or self._lock.locked():
            return None
        if self._reconciled_at is not None and now - self._reconciled_at < due and self.ready:
            return None
        async with self._lock:
            self._holder = "reconcile"
            try:
                return await self.reconcile()
            except Exception as e:
                self.ready = False
                self.report_error("Reconciliation failed", e)
                return None

    # --- the tick ------------------------------------------------------------------------------

    def state(self, day: date) -> StrategyState:
        """The bot's own book as the rules see it at the start of a tick of session ``day``,
        derived from the ledger. Cached under the database's write version, so any write anywhere
        makes the next call read the ledger again: no caller has to remember to say so."""
        version = ledger.write_version(other_connections=not self.private_db)
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
            if self.desk.record_quotes is not None:
                self.desk.record_quotes(now, qqq.price, quotes)
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
        if self._lock.locked() and (dry_run or self._holder == "tick"):
            return TickReport(now, None, skipped="previous tick still running: skipped")
        async with self._lock:  # a real tick waits for a /check or a manual order in flight, never skipped by it
            self._holder = "check" if dry_run else "tick"
            now = self.clock.now()
            self._tick_errors = 0
            try:
                report = await self._tick(now, dry_run)
            except NotSent as e:  # the connection dropped mid-tick: alerted as a disconnect, not an error
                self.ready = False
                log.warning("tick interrupted: %s", e)
                report = TickReport(now, None, skipped=f"the broker connection dropped during the tick ({e})")
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

    def last_tick(self) -> tuple[str | None, str | None]:
        """(ISO time, summary) of the last real tick: this process's, else the one stored before a
        restart (what /status and the daily summary both show)."""
        if self.last_report is not None:
            return self.last_report.time.isoformat(timespec="seconds"), self.last_report.summary()
        raw = kv.get("last_tick")
        if raw:
            try:
                stored = json.loads(raw)
                return str(stored["time"]), str(stored["summary"])
            except (ValueError, KeyError, TypeError):
                log.warning("the stored last tick is unreadable")
        return None, None

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the engine for a manual action: it waits for a tick in progress, and a tick that falls
        due meanwhile waits for it (never two orders of the bot at once)."""
        async with self._lock:
            self._holder = "manual"
            yield

    def trading_problem(self, now: datetime) -> str | None:
        """Why no order may be sent now, in the user's words, or None."""
        if self.blocked:
            return f"not trading: {self.blocked}"
        if self._starting:
            return "the bot is still connecting and reconciling with the broker; try again in a moment"
        if self.broker.state == ConnectionState.DOWN:
            return "the broker connection is down"
        if self.calendar.open_session(now) is None:
            nxt = self.calendar.next_session(now.astimezone(NY).date())
            when = f" (next open {nxt.open.astimezone(NY):%a %Y-%m-%d %H:%M} ET)" if nxt is not None else ""
            return f"the market is closed: orders are taken during a session only{when}"
        return None

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
        if not dry_run:
            due = self.reconcile_every
            if not self.ready or (due is not None and self._reconciled_at is not None
                                  and now - self._reconciled_at >= due):
                await self.reconcile()
            if ledger.has_cancel_pending():
                for result in await self.runner.retry_cancels():
                    if result.problem.startswith("the broker refused") and \
                            kv.put_once(f"cancel_refused:{result.order_ref}", result.problem, self.clock.now()):
                        self.emit(EventKind.ERROR, f"An order of the bot's cannot be cancelled: {result.problem}. It "
                                  "can still fill; nothing new is sent for its purpose until it ends. Cancel it in "
                                  "TWS or the mobile app", order_ref=result.order_ref)
        if day != self._last_day:
            self._expire_old_roll_buys(day)
            await self._settle_expired_lots(day)
            self._last_day = day
        settings = self.settings.current
        snap, state = await self.snapshot(day)
        plan = decide_tick(state, snap, settings)
        report = TickReport(now, day, plan.change, snap.qqq.price, snap.prev_close, plan, dry_run, settings.paused)
        if dry_run or self.journal.enabled:  # the reasons are for /check and the journal (a backtest has neither)
            report.reasons = explain_tick(state, snap, settings, plan) + self._pause_reasons(plan, settings)
        if not dry_run:
            self.journal.record(day, report.reasons)
        if dry_run or plan.is_empty:
            return report
        allowed = allowed_under_pause(plan, settings.paused)
        if settings.paused:
            self._alert_held_exits(plan, allowed, day)
        if allowed.is_empty:
            return report
        if not await execute_plan(self.desk, allowed, snap, state, settings, report):
            self.ready = False  # an action failed: reconcile with the broker before the next order
        return report

    @staticmethod
    def _pause_reasons(plan: TickPlan, settings: StrategySettings) -> tuple[Reason, ...]:
        """What a pause held back at this tick, for /check and the journal."""
        if not settings.paused:
            return ()
        held = allowed_under_pause(plan, settings.paused)
        if held == plan or plan.is_empty:
            return (Reason("pause", f"paused:{settings.paused.value}", f"paused ({settings.paused.value}): "
                           "nothing due was held back"),)
        return (Reason("pause", f"held:{settings.paused.value}", f"paused ({settings.paused.value}): the "
                       "decisions above were not sent"),)

    def _alert_held_exits(self, plan: TickPlan, allowed: TickPlan, day: date) -> None:
        """While everything is paused, an exit that falls due is alerted once per lot and session."""
        sent = {e.lot_id for e in allowed.exits}
        for e in plan.exits:
            if e.lot_id in sent or not kv.put_once(f"exit_held:{day.isoformat()}:{e.lot_id}", e.reason.value,
                                                   self.clock.now()):
                continue
            why = {"take_profit": f"reached its take-profit target (+{e.pnl_pct:.1f} % ≥ +{e.target_pct:.0f} %)"
                   if e.pnl_pct is not None and e.target_pct is not None else "reached its take-profit target",
                   "force_exit": f"is due for its force exit (held {e.held_days} days)",
                   "expiry_guard": f"is due for the expiry guard ({e.dte} days to expiry)"}[e.reason.value]
            self.emit(EventKind.EXIT_HELD, f"Lot #{e.lot_id} {why}; paused, not sold. /resume (or /pause entries) "
                      "lets exits run", lot_id=e.lot_id)

    async def preview_next_open(self) -> TickReport:
        """What the first tick of the next session would decide if prices stayed where they are now
        (outside a session: the last prices, QQQ's as the previous close). Nothing is sent or stored."""
        now = self.clock.now()
        today = now.astimezone(NY).date()
        upcoming = self.calendar.session(today)
        if upcoming is None or upcoming.open <= now:
            upcoming = self.calendar.next_session(today)
        if upcoming is None:
            return TickReport(now, None, dry_run=True, skipped="no next session in the calendar")
        s = self.settings.current
        ticks = self.calendar.tick_times(upcoming, s.check_interval_min, s.delay_after_open_min)
        at = ticks[0] if ticks else upcoming.open
        qqq = await self.broker.quote("QQQ")
        last = qqq.price
        if last is None:
            return TickReport(now, upcoming.day, dry_run=True, skipped="no QQQ price to preview the next open with")
        state = self.state(upcoming.day)
        quotes = await self.broker.option_quotes([lot.contract for lot in state.open_lots]) if state.open_lots else []
        by_contract = {q.contract: replace(q, time=at) for q in quotes}
        lot_quotes = {lot.id: by_contract[lot.contract] for lot in state.open_lots if lot.contract in by_contract}
        qqqm = None
        if s.recycle_enabled and state.pool >= s.recycle_threshold and state.pool > 0:
            qqqm = replace(await self.broker.quote("QQQM"), time=at)
        snap = MarketSnapshot(at, upcoming.day, replace(qqq, time=at), last, lot_quotes, qqqm)
        plan = decide_tick(state, snap, s)
        report = TickReport(at, upcoming.day, plan.change, last, last, plan, True, s.paused)
        report.reasons = explain_tick(state, snap, s, plan) + self._pause_reasons(plan, s)
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
            self.journal.note(day, f"lot:{lot.id}", "expired", f"expired unsold: recorded at {settle} per share, "
                              f"realized {realized:+,.2f} USD", lot.id)

    def _expire_old_roll_buys(self, day: date) -> None:
        for roll in ledger.rolls_with_pending_buy():
            if roll.session_day < day:
                ledger.set_roll_status(roll.id, RollStatus.BUY_EXPIRED)
                self.emit(EventKind.ROLL, f"Roll #{roll.id}: the buy leg was not bought during its session "
                          "and is dropped; the freed slot is open to a normal entry", roll_id=roll.id)

