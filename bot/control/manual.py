"""What an admin does by hand from the chat: sell a lot now, buy a new lot now, cancel working
orders, stop everything. Each is previewed first (nothing sent), then done under the engine's lock
through the same order runner as the strategy's orders, written to the audit trail and alerted to
the other admins (the acting one has the reply). Refusals are values with a message for the user."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from bot.engine.actions import BuyPlan, BuyRefusal, buy_now, plan_buy, sell_now
from bot.engine.alerts import EventKind, actor_id
from bot.engine.engine import Engine
from bot.engine.orders import CancelResult, OrderOutcome
from broker.base import BrokerError, NotSent
from storage import journal, ledger
from storage.models import LotExit, Order, OrderPurpose, OrderState, Roll, RollStatus
from strategy import accounting
from strategy.model import NY, Lot, OptionQuote
from strategy.rules import option_commission
from strategy.settings import PauseMode, SettingError

log = logging.getLogger(__name__)
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an action cannot be done now; nothing was sent or changed."""

    text: str


@dataclass(frozen=True, slots=True)
class SellPreview:
    lot: Lot
    bid: Decimal
    ask: Decimal
    mid: Decimal
    value: Decimal  # the lot at the mid
    pnl_usd: Decimal  # estimated realized P&L at the mid, net of all commissions
    pnl_pct: Decimal


@dataclass(frozen=True, slots=True)
class EntryPreview:
    contract: str
    delta: float
    bid: Decimal
    ask: Decimal
    mid: Decimal
    qty: int
    premium: Decimal  # at the mid, without commission
    max_limit: Decimal  # the highest limit the order may reprice to
    entries: int = 0  # this session's entries and rolls when previewed (a confirm holds only while unchanged)
    already: str = ""  # the latest of them in words, when there is one: then only "buy another" buys

    @property
    def another(self) -> bool:
        """Whether this would be a second entry this session (it needs the explicit "buy another")."""
        return self.entries > 0


@dataclass(frozen=True, slots=True)
class Done:
    """An order sent by hand, and how it ended."""

    text: str
    outcome: OrderOutcome | None = None


@dataclass(frozen=True, slots=True)
class WorkingOrder:
    id: int
    order_ref: str
    purpose: str
    what: str
    side: str
    qty: int
    filled: int
    limit: Decimal
    created_at: datetime
    roll_note: str = ""
    state: str = ""  # where it stands in the user's words, e.g. "cancel pending (can still fill)"


def _announce(engine: Engine, who: str, action: str, text: str) -> None:
    """Audit trail (who, when, what) and an alert to the other admins."""
    journal.audit(engine.clock.now(), who, action, text)
    engine.emit(EventKind.MANUAL, f"{text} (by {who})", actor=actor_id(who))


def _day(engine: Engine) -> tuple[datetime, Refusal | None]:
    now = engine.clock.now()
    problem = engine.trading_problem(now)
    return now, Refusal(problem) if problem else None


async def _ready(engine: Engine) -> tuple[datetime, Refusal | None]:
    """Inside the engine's lock, before a manual order: may it be sent now (reconciled first)?"""
    now, problem = _day(engine)
    if problem is None and not engine.ready:
        try:
            await engine.reconcile()
        except BrokerError as e:  # e.g. the connection dropped meanwhile: nothing is sent
            log.warning("reconciliation before a manual order failed: %s", e)
            return now, Refusal("the bot could not check its orders with the broker first (the connection "
                                "dropped); try again in a moment")
    return now, problem


# --- sell a lot now ---------------------------------------------------------------------------------


def _working_on_lot(lot_id: int) -> Order | None:
    for o in ledger.unresolved_orders():
        if o.lot_id == lot_id:
            return o
        if o.roll_id is not None and Roll.get_by_id(o.roll_id).old_lot_id == lot_id:
            return o
    return None


def _open_lot(lot_id: int) -> Lot | Refusal:
    for lot in ledger.open_lots():
        if lot.id == lot_id:
            return lot
    row = ledger.lot_row(lot_id)
    if row is not None and row.closed_at is not None:  # e.g. another admin's sale of it, just now
        how = f" ({LotExit(row.exit_reason).label})" if row.exit_reason is not None else ""
        return Refusal(f"already done: lot #{lot_id} was closed{how} at {_hhmm(row.closed_at)}; "
                       "/trades shows the sale")
    ids = ", ".join(f"#{lot.id}" for lot in ledger.open_lots()) or "none"
    return Refusal(f"lot #{lot_id} is not an open lot of the bot (open lots: {ids}; /positions lists them)")


def estimate_sale(lot: Lot, quote: OptionQuote) -> SellPreview | Refusal:
    """What selling the whole lot at the mid would bring and realize, net of every commission."""
    if quote.bid is None or quote.ask is None or quote.bid <= 0 or quote.mid is None:
        return Refusal(f"lot #{lot.id} ({lot.contract.key}) has no bid to sell into right now")
    mid = quote.mid
    value = mid * lot.qty * lot.contract.multiplier
    pnl = accounting.closing_pnl(lot.avg_price, mid, lot.qty, lot.contract.multiplier, option_commission(lot.qty),
                                 lot.commission)
    cost = lot.avg_price * lot.qty * lot.contract.multiplier + lot.commission
    pct = pnl / cost * 100 if cost > 0 else ZERO
    return SellPreview(lot, quote.bid, quote.ask, mid, value, pnl, pct)


async def sell_preview(engine: Engine, lot_id: int) -> SellPreview | Refusal:
    _, problem = _day(engine)
    if problem is not None:
        return problem
    lot = _open_lot(lot_id)
    if isinstance(lot, Refusal):
        return lot
    if (o := _working_on_lot(lot.id)) is not None:
        return Refusal(f"lot #{lot.id} already has a working order ({OrderPurpose(o.purpose).label}); /orders shows it")
    quotes = await engine.broker.option_quotes([lot.contract])
    if not quotes:
        return Refusal(f"no quote for lot #{lot.id} ({lot.contract.key}) from the broker")
    return estimate_sale(lot, quotes[0])


async def sell(engine: Engine, lot_id: int, who: str) -> Done | Refusal:
    """Sell the whole lot now (limit at the mid, repriced like every order), reason manual."""
    async with engine.exclusive():
        now, problem = await _ready(engine)
        if problem is not None:
            return problem
        session = engine.calendar.open_session(now)
        assert session is not None
        lot = _open_lot(lot_id)
        if isinstance(lot, Refusal):
            return lot
        if (o := _working_on_lot(lot.id)) is not None:
            return Refusal(f"lot #{lot.id} already has a working order ({OrderPurpose(o.purpose).label})")
        snap, _ = await engine.snapshot(session.day)
        quote = snap.lot_quotes.get(lot.id)
        if quote is None:
            return Refusal(f"no quote for lot #{lot.id} ({lot.contract.key}) from the broker")
        est = estimate_sale(lot, quote)
        if isinstance(est, Refusal):
            return est
        _announce(engine, who, "sell", f"Manual sale of lot #{lot.id} {lot.contract.key} x{lot.qty} sent "
                  f"(mid {est.mid}, about {est.value:,.2f} USD)")
        before = _newest_order_id()
        try:
            out = await sell_now(engine.desk, lot, quote, snap, engine.settings.current, who)
        except Exception as e:  # the order may be at the broker, partly filled: say what the ledger shows
            _interrupted(engine, who, f"sale of lot #{lot.id}", e)
            return _sold(lot, _order_since(before), _cause(e))
    if out is None:
        return Refusal(f"lot #{lot.id} has no bid to sell into right now")
    return _sold(lot, out.order_ref)


def _newest_order_id() -> int:
    newest = Order.select(Order.id).order_by(Order.id.desc()).first()
    return int(newest.id) if newest is not None else 0


def _order_since(newest: int) -> Order | None:
    """The order a manual action wrote after ``newest`` (under the engine's lock: no other is written)."""
    order: Order | None = Order.select().where(Order.id > newest).order_by(Order.id).first()
    return order


def _cause(e: Exception) -> str:
    if isinstance(e, NotSent | ConnectionError | OSError | TimeoutError):
        return "the connection to the broker dropped"
    return f"an error interrupted it ({type(e).__name__})"


def _interrupted(engine: Engine, who: str, what: str, e: Exception) -> None:
    """A manual order that raised: logged with its traceback and alerted (the acting admin has the reply)."""
    log.error("manual %s by %s was interrupted", what, who, exc_info=e)
    engine.emit(EventKind.ERROR, f"Manual {what} by {who} was interrupted: {type(e).__name__}: {e}. The order is "
                "settled from the broker's record when the bot reconnects (/orders shows it)", actor=actor_id(who))


def _order_state(order: Order) -> tuple[OrderOutcome, str]:
    """The order as the ledger has it now, and how it ended in words ("" while it is not final)."""
    state = OrderState(order.status)
    out = OrderOutcome(order.order_ref, state, order.filled_qty, order.qty, order.message)
    if state.is_active:
        return out, ""
    return out, f"the order ended {state.label}" + (f": {order.message}" if order.message else "")


def _unsettled(cause: str | None, state: OrderState, message: str = "") -> str:
    """Why an order is not final yet, and what happens to it."""
    if cause:
        return f"then {cause}: the order's end will be settled when the bot reconnects; /orders shows it"
    why = f" ({message})" if message and not message.startswith("cancel asked") else ""
    return f"the order is still {state.label} at the broker{why}; /orders shows it"


def _sold(lot: Lot, order: Order | str | None, cause: str | None = None) -> Done:
    """What a manual sale came to, read from the ledger (also when the broker failed midway)."""
    row = ledger.order_by_ref(order) if isinstance(order, str) else order
    if row is None:
        return Done(f"Lot #{lot.id} was not sold: {cause or 'no order was written'} before the order was sent. "
                    "The lot is still held.")
    out, ended = _order_state(row)
    received = ledger.order_cash(row.order_ref)
    if not ended:
        sold = f"Lot #{lot.id}: {out.filled} of {out.qty} sold ({received:,.2f} USD)" if out.filled else \
            f"Lot #{lot.id}: nothing sold yet"
        return Done(f"{sold}; {_unsettled(cause, out.status, out.message)}.", out)
    if out.filled >= out.qty:
        lot_row = ledger.lot_row(lot.id)
        realized = f"; realized {lot_row.realized_pnl:+,.2f} USD" if lot_row is not None else ""
        return Done(f"Sold lot #{lot.id}: {out.filled} {lot.contract.key} for {received:,.2f} USD after "
                    f"commissions{realized}.", out)
    if out.filled:
        return Done(f"Lot #{lot.id}: {out.filled} of {out.qty} sold ({received:,.2f} USD); {ended}. The rest is "
                    "still held.", out)
    return Done(f"Lot #{lot.id} was not sold: {ended}. The lot is still held.", out)


def _bought(contract: str, order: Order | str | None, cause: str | None = None) -> Done:
    """What a manual entry came to, read from the ledger (also when the broker failed midway)."""
    row = ledger.order_by_ref(order) if isinstance(order, str) else order
    if row is None:
        return Done(f"Nothing was bought: {cause or 'no order was written'} before the order was sent.")
    out, ended = _order_state(row)
    spent = -ledger.order_cash(row.order_ref)
    if not ended:
        bought = f"Bought {out.filled} of {out.qty} {contract} for {spent:,.2f} USD with commissions" \
            if out.filled else f"Nothing bought yet of {out.qty} {contract}"
        return Done(f"{bought}; {_unsettled(cause, out.status, out.message)}.", out)
    if out.filled >= out.qty:
        return Done(f"Bought {out.filled} {contract} for {spent:,.2f} USD with commissions.", out)
    if out.filled:
        return Done(f"Bought {out.filled} of {out.qty} {contract} for {spent:,.2f} USD with commissions; {ended}.",
                    out)
    return Done(f"Nothing bought: {ended}.", out)


# --- buy a new lot now --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionEntries:
    """This session's entries (bought in part or whole, or still working) and rolls (not failed): the
    session's entry rule. ``last`` is the latest in words ("" when there is none)."""

    count: int = 0
    last: str = ""
    working: bool = False  # the latest is an entry still working


def session_entries(day: date) -> SessionEntries:
    if not (ledger.entered_on(day) or ledger.rolled_on(day)):
        return SessionEntries()
    done: list[tuple[datetime, str, bool]] = []
    for o in Order.select().where((Order.session_day == day) & (Order.purpose == OrderPurpose.ENTRY)):
        working = OrderState(o.status).is_active
        if o.filled_qty > 0 or working:
            by = "by hand" if "manual" in json.loads(o.context or "{}") else "by the strategy"
            state = "still working" if working else f"{o.filled_qty} bought"
            done.append((o.created_at, f"an entry {by} at {_hhmm(o.created_at)}: {_legs(o)} × {o.qty}, {state}",
                         working))
    for r in Roll.select().where((Roll.session_day == day) & (Roll.status != RollStatus.FAILED)):
        done.append((r.created_at, f"roll #{r.id} of lot #{r.old_lot_id} at {_hhmm(r.created_at)}", False))
    done.sort(key=lambda d: d[0])
    return SessionEntries(len(done), done[-1][1], done[-1][2]) if done else SessionEntries()


def _hhmm(at: datetime) -> str:
    return f"{at.astimezone(NY):%H:%M} ET"


async def _entry_plan(engine: Engine, now: datetime) -> BuyPlan | Refusal:
    session = engine.calendar.open_session(now)
    assert session is not None
    s = engine.settings.current
    state = engine.state(session.day)
    if len(state.open_lots) >= s.max_positions:
        return Refusal(f"the bot holds {len(state.open_lots)} lots, the maximum ({s.max_positions}); "
                       "raise max positions or sell one first")
    if state.unresolved_order:
        return Refusal("an order is still working; wait for it (/orders shows it)")
    snap, _ = await engine.snapshot(session.day)
    plan = await plan_buy(engine.desk, snap, s)
    if isinstance(plan, BuyRefusal):
        return Refusal(plan.text)
    return plan


def _preview(plan: BuyPlan, engine: Engine, day: date) -> EntryPreview:
    from strategy.rules import worst_limit

    q = plan.choice.quote
    assert q.bid is not None and q.ask is not None and q.mid is not None
    entries = session_entries(day)
    return EntryPreview(plan.choice.contract.key, plan.choice.delta, q.bid, q.ask, q.mid, plan.qty, plan.premium,
                        worst_limit(q.bid, q.ask, "BUY", engine.settings.current, q.min_tick), entries.count,
                        entries.last)


def _session_day(engine: Engine, now: datetime) -> date:
    session = engine.calendar.open_session(now)
    assert session is not None
    return session.day


async def enter_preview(engine: Engine) -> EntryPreview | Refusal:
    """The contract the strategy would buy now, ignoring the drop trigger, and what it costs; it
    says when this session already had its entry (then only an explicit "buy another" buys)."""
    now, problem = _day(engine)
    if problem is not None:
        return problem
    plan = await _entry_plan(engine, now)
    return plan if isinstance(plan, Refusal) else _preview(plan, engine, _session_day(engine, now))


async def enter(engine: Engine, who: str, expected: str, seen: int = 0, another: bool = False,
                ) -> Done | EntryPreview | Refusal:
    """Buy the previewed contract now, under the engine's lock. ``seen`` is the number of this
    session's entries and rolls the confirm was drawn with: when one was made since (the strategy's
    entry, or another admin's /enter confirmed at the same moment), nothing is bought. A second
    entry in a session needs ``another`` (the "buy another" button). When the best contract changed
    since the preview, nothing is bought: the new preview comes back, to be confirmed again."""
    async with engine.exclusive():
        now, problem = await _ready(engine)
        if problem is not None:
            return problem
        day = _session_day(engine, now)
        entries = session_entries(day)
        if entries.count > seen and entries.working:
            return Refusal(f"an entry was just sent this session ({entries.last}); wait for it (/orders shows it)")
        if entries.count > seen:
            return Refusal(f"an entry was just bought this session ({entries.last}); /enter again if you want "
                           "another lot")
        if entries.count != seen or (entries.count and not another):
            return Refusal(f"this session's entries changed since the confirm ({entries.last or 'none now'}); "
                           "/enter again")
        plan = await _entry_plan(engine, now)
        if isinstance(plan, Refusal):
            return plan
        if plan.choice.contract.key != expected:
            return _preview(plan, engine, day)
        snap, _ = await engine.snapshot(day)
        _announce(engine, who, "enter", f"Manual entry sent: {plan.qty} {plan.choice.contract.key} "
                  f"(about {plan.premium:,.2f} USD)" + (" — another entry this session" if another else ""))
        before = _newest_order_id()
        try:
            out = await buy_now(engine.desk, plan, snap, engine.settings.current, who)
        except Exception as e:  # the order may be at the broker, partly filled: say what the ledger shows
            _interrupted(engine, who, f"entry of {plan.qty} {plan.choice.contract.key}", e)
            return _bought(plan.choice.contract.key, _order_since(before), _cause(e))
    return _bought(plan.choice.contract.key, out.order_ref)


# --- working orders -------------------------------------------------------------------------------------


def _legs(order: Order) -> str:
    """What an order trades, e.g. ``SELL QQQ 2027-01-15 480C / BUY QQQ 2027-06-17 470C``."""
    return " / ".join(f"{leg.action} {leg.instrument.key}" for leg in ledger.request_from_json(order.request).legs)


def roll_note(order: Order) -> str:
    """What cancelling this order does to the roll it belongs to (a roll's buy is never orphaned)."""
    if order.roll_id is None:
        return ""
    roll = Roll.get_by_id(order.roll_id)
    if roll.combo:
        return f"roll #{roll.id} is this one combo order: cancelling it cancels both legs, nothing is rolled"
    if order.side == "SELL":
        return f"roll #{roll.id}'s sell leg: cancelled, the lot stays held and nothing is bought"
    return (f"roll #{roll.id}'s buy leg: the old lot is already sold; cancelled, the buy is retried at the next "
            "ticks of this session (/pause entries stops that)")


def working_orders() -> list[WorkingOrder]:
    out = []
    for o in ledger.unresolved_orders():
        out.append(WorkingOrder(o.id, o.order_ref, OrderPurpose(o.purpose).label, _legs(o), o.side, o.qty,
                                o.filled_qty, o.limit, o.created_at, roll_note(o), OrderState(o.status).label))
    return out


def working_order_lines() -> list[str]:
    """Each live order of the bot's, one line: what it trades and where it stands."""
    return [f"order {o.id} ({OrderPurpose(o.purpose).label}): {_legs(o)} x{o.qty}, {o.status.label}, "
            f"{o.filled_qty}/{o.qty} filled" for o in ledger.unresolved_orders()]


def _cancel_line(o: Order, result: CancelResult) -> str:
    """What asking to cancel ``o`` did, in the user's words."""
    label = f"order {o.id} ({OrderPurpose(o.purpose).label}, {_legs(o)} x{o.qty})"
    fresh = ledger.order_by_ref(o.order_ref)
    filled = fresh.filled_qty if fresh is not None else o.filled_qty
    part = f" after {filled} of {o.qty} filled" if filled else ""
    if result.status == OrderState.CANCELLED:
        return f"{label}: cancelled{part}"
    if result.status == OrderState.FILLED:
        return f"{label}: it had already filled ({filled} of {o.qty})"
    if result.status.is_final:
        return f"{label}: already over ({result.status.label}){part}"
    if result.status == OrderState.PENDING_SUBMIT:
        return f"{label}: not acknowledged by the broker yet; the next reconciliation settles it"
    if result.sent:
        return (f"{label}: cancel sent; the broker has not confirmed it yet, so it can still fill{part} "
                "(/orders shows it)")
    return (f"{label}: {result.problem}{part}; the bot sends the cancel again when it can, and nothing new is sent "
            "for it meanwhile (/orders shows it)")


async def cancel(engine: Engine, order_id: int | None, who: str) -> list[str] | Refusal:
    """Cancel one working order (by its number in /orders) or all (None). Returns one line per order,
    saying what really became of it (cancelled, filled meanwhile, or cancel pending and why)."""
    orders = ledger.unresolved_orders()
    if order_id is not None:
        orders = [o for o in orders if o.id == order_id]
        if not orders:
            return Refusal(f"order {order_id} is not working (/orders lists the working ones)")
    if not orders:
        return Refusal("no order is working")
    lines = []
    for o in orders:
        result = await engine.runner.cancel(o.order_ref, f"by hand ({who})")
        line = _cancel_line(o, result)
        note = roll_note(o)
        if note and not result.status == OrderState.FILLED:
            line += f"; {note}"
        if o.purpose == OrderPurpose.ENTRY and result.status != OrderState.FILLED:
            line += "; the strategy may enter again at a later tick while the signal holds (/pause entries stops it)"
        lines.append(line)
    _announce(engine, who, "cancel", "Cancelled by hand: " + "; ".join(lines))
    return lines


# --- stop ------------------------------------------------------------------------------------------------


async def stop(engine: Engine, who: str) -> list[str]:
    """The emergency stop: pause everything, then cancel every working order. The pause is set under
    the engine's send lock: once it is set, no automatic order leaves the bot (one being sent at that
    moment is waited for, and then named below with what became of it)."""
    lines = []
    async with engine.send_lock:
        change = engine.settings.update("paused", PauseMode.ALL.value, who)
    lines.append(f"could not pause: {change.message}" if isinstance(change, SettingError) else
                 "every automatic order is paused, exits included")
    if ledger.unresolved_orders():
        result = await cancel(engine, None, who)
        lines += result if isinstance(result, list) else [result.text]
    else:
        lines.append("no order was working")
    journal.audit(engine.clock.now(), who, "stop", "; ".join(lines))
    return lines


async def sell_all(engine: Engine, who: str) -> list[str]:
    """After /stop, on a second confirm: sell every open lot by hand, one after the other."""
    lines = []
    for lot in ledger.open_lots():
        result = await sell(engine, lot.id, who)
        lines.append(result.text)
    return lines or ["the bot holds no lot"]
