"""Why a tick decided what it did, or why it did not: one ``Reason`` per topic (QQQ's quote, the
entry, the roll, recycling, each lot's exit rules), in the user's words, with the numbers of the
moment. Pure, like the rules it explains: the shell journals the reasons whose ``key`` changed.

A reason's ``key`` is stable while the decision and its cause stay the same (QQQ moving from
−0.4 % to −0.5 % with the entry still out of reach keeps the key); its ``text`` carries the
numbers."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from strategy.model import NY, ExitDecision, ExitReason, Lot, MarketSnapshot, StrategyState, TickPlan
from strategy.rules import HUNDRED, is_fresh, lot_pnl_pct, take_profit_target
from strategy.settings import StrategySettings, Tier


@dataclass(frozen=True, slots=True)
class Reason:
    """One decision, or one reason for none."""

    topic: str  # "quote", "entry" (new positions: entry or roll), "recycle", or "lot:N"
    key: str
    text: str
    lot_id: int | None = None


def _pct(x: Decimal) -> str:
    return f"{x:+.2f} %"


def _plain(x: Decimal) -> str:
    return f"{x.normalize():f}"


def _usd(x: Decimal) -> str:
    return f"{x:,.2f} USD"


def entry_trigger_price(prev_close: Decimal, settings: StrategySettings) -> Decimal:
    """The QQQ price at or below which the entry signal fires: prev_close × (1 − entry_drop_pct),
    rounded down to the cent (a price at or below the shown one always fires)."""
    return (prev_close * (1 - settings.entry_drop_pct / HUNDRED)).quantize(Decimal("0.01"), rounding=ROUND_FLOOR)


def roll_trigger_price(prev_close: Decimal, settings: StrategySettings) -> Decimal:
    """The QQQ price at or below which a full book rolls: prev_close × (1 − roll_drop_pct)."""
    return (prev_close * (1 - settings.roll_drop_pct / HUNDRED)).quantize(Decimal("0.01"), rounding=ROUND_FLOOR)


def tier_from_day(held: int, tiers: tuple[Tier, ...]) -> int:
    """The from_day of the tier in force after ``held`` days."""
    start = tiers[0][0]
    for from_day, _ in tiers:
        if from_day <= held:
            start = from_day
    return start


_EXIT_WORDS = {ExitReason.TAKE_PROFIT: "take profit", ExitReason.FORCE_EXIT: "force exit",
               ExitReason.EXPIRY_GUARD: "expiry guard"}


def explain_lot(lot: Lot, snap: MarketSnapshot, settings: StrategySettings, decided: ExitDecision | None,
                unresolved: bool) -> Reason:
    """A lot's exit rules at this tick: what fired, or how far each one is."""
    topic = f"lot:{lot.id}"
    today = snap.now.astimezone(NY).date()
    held = lot.held_days(today)
    dte = lot.contract.dte(today)
    tier = tier_from_day(held, settings.tp_tiers)
    target = take_profit_target(held, settings.tp_tiers)
    name = f"lot #{lot.id}"
    if decided is not None:
        pnl = f"{decided.pnl_pct:+.1f} %" if decided.pnl_pct is not None else "P&L unknown"
        if decided.reason is ExitReason.TAKE_PROFIT:
            why = f"{pnl} ≥ +{target:.0f} % (tier from day {tier})"
        elif decided.reason is ExitReason.FORCE_EXIT:
            why = f"held {held} days ≥ {settings.force_exit_days} ({pnl})"
        else:
            why = f"{dte} days to expiry ≤ {settings.min_exit_dte} ({pnl})"
        return Reason(topic, f"exit:{decided.reason.value}", f"{name} {why}: {_EXIT_WORDS[decided.reason]}", lot.id)
    if unresolved:
        return Reason(topic, "unresolved", f"{name}: an order is still working; its exits wait for it", lot.id)
    q = snap.lot_quotes.get(lot.id)
    if q is None or q.mid is None:
        return Reason(topic, "no_quote", f"{name}: no quote from the broker; its exits wait for one", lot.id)
    if not is_fresh(q.time, snap.now, settings.max_quote_age_s):
        return Reason(topic, "stale", f"{name}: its quote is stale; no exit on a stale quote", lot.id)
    if q.bid is None or q.bid <= 0:
        return Reason(topic, "no_bid", f"{name}: no bid to sell into", lot.id)
    now_pnl = lot_pnl_pct(q.mid, lot.avg_price)
    return Reason(topic, f"hold:tier{tier}",
                  f"{name} {now_pnl:+.1f} % < +{target:.0f} % (tier from day {tier}); force exit in "
                  f"{settings.force_exit_days - held} d; {dte} days to expiry", lot.id)


def explain_tick(state: StrategyState, snap: MarketSnapshot, settings: StrategySettings,
                 plan: TickPlan) -> tuple[Reason, ...]:
    """Every topic's decision or the reason there is none, in the tick's order: QQQ, exits, roll or
    entry, recycling."""
    out: list[Reason] = []
    price = snap.qqq.price
    fresh = price is not None and is_fresh(snap.qqq.time, snap.now, settings.max_quote_age_s)
    if not fresh:
        out.append(Reason("quote", "stale", "QQQ quote missing or stale: no order on it"))
    decided = {e.lot_id: e for e in plan.exits}
    for lot in sorted(state.open_lots, key=lambda lt: (lt.opened_at, lt.id)):
        out.append(explain_lot(lot, snap, settings, decided.get(lot.id), state.unresolved_order))
    out.append(_explain_opening(state, snap, settings, plan, fresh))
    recycle = _explain_recycle(state, settings, plan)
    if recycle is not None:
        out.append(recycle)
    return tuple(out)


def _explain_opening(state: StrategyState, snap: MarketSnapshot, settings: StrategySettings, plan: TickPlan,
                     fresh: bool) -> Reason:
    """Why a new position is, or is not, opened (an entry, or a roll when the book is full)."""
    change = plan.change
    now = f"QQQ {_pct(change * HUNDRED)}" if change is not None else "QQQ change unknown"
    drop, roll_drop = _plain(settings.entry_drop_pct), _plain(settings.roll_drop_pct)
    remaining = len(state.open_lots) - len(plan.exits)
    full = remaining >= settings.max_positions
    if plan.retry_roll_buy is not None:
        return Reason("entry", "roll_buy_retry", f"roll #{plan.retry_roll_buy}: buying its pending leg again")
    if plan.roll is not None:
        return Reason("entry", "roll_signal", f"{now} ≤ −{roll_drop} % with {remaining}/{settings.max_positions} lots: "
                      f"roll lot #{plan.roll.lot_id}")
    if plan.entry is not None:
        return Reason("entry", "signal", f"{now} ≤ −{drop} %: entry signal")
    if not fresh or change is None:
        return Reason("entry", "no_quote", "no fresh QQQ quote: no entry or roll")
    if state.unresolved_order:
        return Reason("entry", "unresolved", f"{now}; an order is still working: nothing new this tick")
    if state.pending_roll_buy is not None:
        return Reason("entry", "roll_buy_pending", f"roll #{state.pending_roll_buy}'s buy leg is pending")
    if plan.exits:
        return Reason("entry", "exiting", f"{now}; a lot is being sold this tick: nothing new opened")
    if state.entered_this_session:
        return Reason("entry", "entered", f"{now}; already entered this session (one entry or roll a session)")
    if state.rolled_this_session:
        return Reason("entry", "rolled", f"{now}; already rolled this session (one entry or roll a session)")
    if full:
        trigger = roll_trigger_price(snap.prev_close, settings)
        return Reason("entry", "full", f"{now}; {remaining}/{settings.max_positions} lots, full: a roll needs "
                      f"−{roll_drop} % (QQQ ≤ {trigger})")
    trigger = entry_trigger_price(snap.prev_close, settings)
    return Reason("entry", "no_signal", f"{now}, entry needs −{drop} % (QQQ ≤ {trigger})")


def _explain_recycle(state: StrategyState, settings: StrategySettings, plan: TickPlan) -> Reason | None:
    """Recycling's state once there is something to recycle (nothing is said while the pool is empty)."""
    if plan.recycle is not None:
        r = plan.recycle
        return Reason("recycle", "buy", f"pool {_usd(r.pool)}: buy {r.shares} QQQM at up to {r.limit}")
    if not settings.recycle_enabled or state.pool <= 0:
        return None
    if state.pool < settings.recycle_threshold:
        return Reason("recycle", "below_threshold",
                      f"pool {_usd(state.pool)} < threshold {_usd(settings.recycle_threshold)}: no QQQM yet")
    return Reason("recycle", "waiting", f"pool {_usd(state.pool)}: recycling waits for a tick with nothing else "
                  "to do and a QQQM quote")
