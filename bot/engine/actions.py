"""Turning a tick's plan into orders: exits, the roll (combo or legged), entry, recycling.

Every buy is checked against max_premium, the account's available funds and the hard daily
limits before it is written and sent; every skip is alerted. Actions know only their ``Desk``: the
broker, the clock, the order runner, the hard limits and where events go; never the engine."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

from bot.engine.alerts import Emit, EventKind, actor_id
from bot.engine.orders import OrderOutcome, OrderRunner, QuoteFn, new_order_ref
from bot.engine.reconcile import sellable
from bot.engine.tick_report import TickReport
from broker.base import Broker, BrokerError, NotSent, OrderLeg, OrderRequest, StockContract
from broker.clock import Clock
from storage import kv, ledger
from storage.models import OrderPurpose, RollStatus
from strategy.model import (
    Lot,
    MarketSnapshot,
    OptionContract,
    OptionQuote,
    RecycleDecision,
    StrategyState,
    TickPlan,
)
from strategy.rules import (
    DailyLimits,
    can_afford,
    capped_quantity,
    daily_limit_breach,
    is_fresh,
    limit_price,
    option_commission,
    premium_within_limit,
    sized_quantity,
    stock_commission,
    worst_limit,
)
from strategy.selection import (
    Candidate,
    Rejection,
    best_at_window_edge,
    quote_delta,
    select_expiry,
    select_strike,
    strike_window,
    years_to_expiry,
)
from strategy.settings import StrategySettings

log = logging.getLogger(__name__)
T = TypeVar("T")

TICK = Decimal("0.01")


@dataclass
class Desk:
    """What acting on a plan needs, and nothing more. ``last_chosen_iv`` is the desk's own memory:
    the implied volatility of the last contract it chose, which centres the next strike window."""

    broker: Broker
    clock: Clock
    runner: OrderRunner
    limits: DailyLimits
    emit: Emit
    report_error: Callable[[str, BaseException], None]
    note: Callable[[date, str, str, str], object] = lambda day, topic, key, text: None  # the decision journal
    last_chosen_iv: float = 0.25
    # Keeps the long-dated quotes the broker gave (IB: for `calibrate --from-db`); None: kept nowhere.
    record_quotes: Callable[[datetime, Decimal | None, list[OptionQuote]], object] | None = None


async def execute_plan(
    desk: Desk, plan: TickPlan, snap: MarketSnapshot, state: StrategyState, settings: StrategySettings,
    report: TickReport,
) -> bool:
    """Act on a plan in the spec's order; one failing action is alerted and the rest still run.
    Returns False when an action failed: whatever state its order is in, the caller must reconcile
    with the broker before the next order."""
    day = snap.session
    if kv.get(f"halted:{day.isoformat()}") is not None:
        report.actions.append("automatic orders halted for this session (daily limit)")
        return True
    guard = _Guard(desk)
    lots = {lot.id: lot for lot in state.open_lots}
    for decision in plan.exits:
        lot = lots.get(decision.lot_id)
        quote = snap.lot_quotes.get(decision.lot_id)
        if lot is None or quote is None:
            continue
        ctx = _context(snap, deltas={lot.contract.key: _delta(quote, snap, settings)},
                       held_days=decision.held_days, pnl_pct=decision.pnl_pct, reason=decision.reason.value)
        out = await guard.run(f"exit of lot #{lot.id}", _sell_lot(
            desk, lot, quote, OrderPurpose.for_exit(decision.reason), day, settings, ctx))
        if out is not None:
            report.actions.append(f"sold lot #{lot.id} ({decision.reason.label}): {out.status.label} "
                                  f"{out.filled}/{out.qty}")
    if plan.retry_roll_buy is not None:
        await guard.run("roll buy leg", _roll_buy(desk, plan.retry_roll_buy, snap, settings, report))
    elif plan.roll is not None:
        await guard.run("roll", _roll(desk, lots[plan.roll.lot_id], snap, settings, report))
    elif plan.entry is not None:
        await guard.run("entry", _enter(desk, snap, settings, report))
    if plan.recycle is not None:
        await guard.run("recycling", _recycle(desk, plan.recycle, snap, settings, report))
    return not guard.failed


class _Guard:
    """Runs a tick's actions one by one: a failure is logged and alerted, remembered, and the tick
    goes on with the next action."""

    def __init__(self, desk: Desk) -> None:
        self.desk = desk
        self.failed = False

    async def run(self, what: str, action: Awaitable[T]) -> T | None:
        try:
            return await action
        except NotSent as e:  # the connection dropped: alerted as a disconnect, reconciled before the next order
            log.warning("%s interrupted: %s", what, e)
            self.failed = True
            return None
        except Exception as e:
            self.desk.report_error(f"{what} failed", e)
            self.failed = True
            return None


def _delta(q: OptionQuote, snap: MarketSnapshot, settings: StrategySettings) -> float | None:
    """The option's delta as the rules judge it: the broker's, else Black–Scholes with the settings."""
    spot = snap.qqq.price
    return quote_delta(q, spot, snap.session, settings) if spot is not None else q.delta


def _context(snap: MarketSnapshot, **extra: Any) -> dict[str, Any]:
    price = snap.qqq.price
    ctx: dict[str, Any] = {"underlying_price": float(price) if price is not None else None,
                           "prev_close": float(snap.prev_close)}
    for k, v in extra.items():
        ctx[k] = float(v) if isinstance(v, Decimal) else v
    return ctx


def _option_quote_fn(desk: Desk, contract: OptionContract) -> QuoteFn:
    async def quote() -> tuple[Decimal, Decimal, Decimal] | None:
        qs = await desk.broker.option_quotes([contract])
        q = qs[0] if qs else None
        if q is None or q.bid is None or q.ask is None or q.bid <= 0:
            return None
        return q.bid, q.ask, q.min_tick

    return quote


def _limit_ok(desk: Desk, day: date, premium: Decimal, what: str) -> bool:
    """The hard daily limits; a breach halts automatic orders for the rest of the session."""
    breach = daily_limit_breach(ledger.orders_sent_on(day), ledger.premium_bought_on(day), premium, desk.limits)
    if breach is not None:
        _halt(desk, day, breach, what)
    return breach is None


def _halt(desk: Desk, day: date, breach: str, what: str) -> None:
    """A hard daily limit is reached: automatic orders stop for the rest of the session, alerted."""
    kv.put(f"halted:{day.isoformat()}", breach, desk.clock.now())
    desk.emit(EventKind.LIMIT_REACHED, f"{breach}: {what} not sent; automatic orders stop for the rest of the session")


async def _sell_lot(
    desk: Desk, lot: Lot, quote: OptionQuote, purpose: OrderPurpose, day: date, settings: StrategySettings,
    context: dict[str, Any], roll_id: int | None = None, who: str | None = None,
) -> OrderOutcome | None:
    """Sell the whole lot (limit at the mid, repriced). An automatic sale respects the hard daily
    limits; a manual one (``who``) does not: selling reduces risk."""
    if quote.bid is None or quote.ask is None:
        return None
    if not await _holds(desk, lot, day):
        return None
    if who is None and not _limit_ok(desk, day, Decimal(0), f"sell of lot #{lot.id}"):
        return None
    req = OrderRequest(new_order_ref(), (OrderLeg(lot.contract, "SELL"),), lot.qty,
                       limit_price(quote.bid, quote.ask, "SELL", 0, settings, quote.min_tick))
    why = f"{purpose.label}, lot #{lot.id}" if who is None else f"manual sale of lot #{lot.id} by {who}"
    announce = partial(desk.emit, EventKind.ORDER_SENT, f"SELL {lot.qty} {lot.contract.key} @ {req.limit} ({why})",
              order_ref=req.order_ref, actor=actor_id(who) if who is not None else None)
    return await desk.runner.run(req, purpose=purpose, session_day=day, settings=settings,
                                 quote=_option_quote_fn(desk, lot.contract), tick=quote.min_tick,
                                 lot_id=None if roll_id else lot.id, roll_id=roll_id, context=context,
                                 announce=announce)


async def _holds(desk: Desk, lot: Lot, day: date) -> bool:
    """Before any sale of a lot: does the account hold it (long, beyond what working sells already
    offer)? If not, nothing is sent (it would open a short call), once alerted per lot and session;
    the reconciliation closes a lot the account no longer holds."""
    can = await sellable(desk.broker, lot.contract)
    if can >= lot.qty:
        return True
    text = (f"Lot #{lot.id} {lot.contract.key} x{lot.qty}: the account holds only {can} that the bot may sell, so "
            "the sale is not sent (it would open a short call). If the lot was sold or exercised outside the bot, "
            "the next reconciliation closes it")
    desk.note(day, f"lot:{lot.id}", "not_held", text)
    if kv.put_once(f"not_held:{day.isoformat()}:{lot.id}", str(can), desk.clock.now()):
        desk.emit(EventKind.SKIPPED, text, lot_id=lot.id)
    return False


async def select_contract(desk: Desk, snap: MarketSnapshot, settings: StrategySettings) -> Candidate | Rejection:
    """The entry contract: the expiry per min_dte, then the strike per delta, from a narrow window
    of quoted strikes around the BSM estimate, widened only when the best sits at its edge."""
    spot = snap.qqq.price
    if spot is None:
        return Rejection("no QQQ price")
    chain = await desk.broker.option_chain("QQQ")
    expiry = select_expiry(chain.expiries, snap.session, settings.min_dte)
    if expiry is None:
        return Rejection(f"no listed expiry with at least {settings.min_dte} days to go")
    T = years_to_expiry(expiry, snap.session)
    # The volatility that centres the strike window: the newest lot's, as quoted at this very tick,
    # else the last chosen contract's. Only what this tick saw or chose, so the window never depends
    # on which earlier ticks happened to be evaluated.
    lot_ivs = [q.iv for q in snap.lot_quotes.values() if q.iv]
    iv_guess = lot_ivs[-1] if lot_ivs else desk.last_chosen_iv
    quoted: dict[Decimal, OptionQuote] = {}
    width = 8
    result: Candidate | Rejection = Rejection("no strikes listed")
    for _ in range(4):
        window = strike_window(chain.strikes, spot, T, iv_guess, settings, width=width)
        new = [k for k in window if k not in quoted]
        if new:
            got = await desk.broker.option_quotes([OptionContract("QQQ", expiry, k, "C") for k in new])
            if desk.record_quotes is not None:
                desk.record_quotes(snap.now, spot, got)
            for q in got:
                if is_fresh(q.time, snap.now, settings.max_quote_age_s):  # a stale quote never trades
                    quoted[q.contract.strike] = q
        result = select_strike([quoted[k] for k in window if k in quoted], spot, snap.session, settings)
        if not isinstance(result, Candidate) or not best_at_window_edge(result, window) or len(window) < width:
            break
        width *= 2
    if isinstance(result, Candidate) and result.quote.iv:
        desk.last_chosen_iv = result.quote.iv
    return result


@dataclass(frozen=True, slots=True)
class BuyPlan:
    """A new lot that passed every check: the contract, how many, and the premium at the mid."""

    choice: Candidate
    qty: int
    premium: Decimal


@dataclass(frozen=True, slots=True)
class BuyRefusal:
    """Why no new lot is bought: ``kind`` is no_contract, size, premium, funds or limit."""

    kind: str
    text: str


async def plan_buy(desk: Desk, snap: MarketSnapshot, settings: StrategySettings) -> BuyPlan | BuyRefusal:
    """Choose the contract, size the lot and check premium, funds and the hard daily limits. Nothing
    is sent, stored or alerted: the tick and a manual /enter each decide what to do with a refusal.

    A fixed size (contracts) is bought whole or skipped, as the spec says; a share of net liquidation
    is sized at the first limit and then cut down to what max premium, the funds and the day's
    premium cap allow, and skipped only when not even one contract fits."""
    choice = await select_contract(desk, snap, settings)
    if isinstance(choice, Rejection):
        return BuyRefusal("no_contract", f"no eligible contract ({choice.reason})")
    q = choice.quote
    mid = q.mid
    assert mid is not None and q.bid is not None and q.ask is not None
    mult = choice.contract.multiplier
    day = snap.session
    size = settings.position_size
    account = await desk.broker.account_summary()
    bought_today = ledger.premium_bought_on(day)
    if size.pct is not None:
        limit0 = limit_price(q.bid, q.ask, "BUY", 0, settings, q.min_tick)
        wanted = sized_quantity(size.pct, account.net_liquidation, limit0, mult)
        room = desk.limits.max_premium_per_day - bought_today
        qty = capped_quantity(wanted, mid, mult, settings.max_premium, account.available_funds_usd, room)
        if qty == 0:
            budget = account.net_liquidation * size.pct / 100
            why = (f"{size.text} of net liquidation is {budget:,.2f} USD, less than one contract of "
                   f"{choice.contract.key} at {limit0} ({limit0 * mult:,.2f} USD)" if wanted == 0 else
                   f"{size.text} of net liquidation buys {wanted} contract{'s' if wanted > 1 else ''} of "
                   f"{choice.contract.key}, but not even one fits within the max premium "
                   f"({settings.max_premium:,.0f} USD), the available funds ({account.available_funds_usd:,.2f} "
                   f"USD) and the day's premium cap ({max(room, Decimal(0)):,.2f} USD left)")
            return BuyRefusal("size", why)
        premium = mid * mult * qty
    else:
        qty = size.contracts or 1
        premium = mid * mult * qty
        if not premium_within_limit(mid, qty, mult, settings):
            return BuyRefusal("premium", f"{choice.contract.key} costs {premium:,.2f} USD for {qty}, above the max "
                              f"premium of {settings.max_premium:,.0f} USD")
        if not can_afford(account.available_funds_usd, premium, option_commission(qty)):
            return BuyRefusal("funds", f"available funds {account.available_funds_usd:,.2f} USD < premium "
                              f"{premium:,.2f} USD + commission")
    breach = daily_limit_breach(ledger.orders_sent_on(day), bought_today, premium, desk.limits)
    if breach is not None:
        return BuyRefusal("limit", breach)
    return BuyPlan(choice, qty, premium)


_SKIP_ALERTS = {"no_contract": EventKind.NO_CONTRACT, "premium": EventKind.SKIPPED, "funds": EventKind.SKIPPED,
                "size": EventKind.SKIPPED}


async def _checked_buy(desk: Desk, snap: MarketSnapshot, settings: StrategySettings, what: str,
                       report: TickReport) -> BuyPlan | None:
    """A tick's buy: the plan, or None after the refusal was reported, journaled and alerted (once
    per session and kind; a daily limit halts automatic orders for the rest of the session)."""
    plan = await plan_buy(desk, snap, settings)
    if isinstance(plan, BuyPlan):
        return plan
    day = snap.session
    report.actions.append(f"{what} skipped: {plan.text}")
    desk.note(day, "entry", f"skipped:{plan.kind}", f"{what} signal; {plan.text}: skipped")
    if plan.kind == "limit":
        _halt(desk, day, plan.text, what)
    elif kv.put_once(f"{plan.kind}_skip:{day.isoformat()}", plan.text, desk.clock.now()):
        desk.emit(_SKIP_ALERTS[plan.kind], f"{what} skipped: {plan.text}"
                  if plan.kind != "no_contract" else f"{what}: signal, but {plan.text}")
    return None


async def _buy(
    desk: Desk, plan: BuyPlan, snap: MarketSnapshot, settings: StrategySettings, purpose: OrderPurpose,
    roll_id: int | None = None, who: str | None = None,
) -> OrderOutcome:
    choice = plan.choice
    q = choice.quote
    assert q.bid is not None and q.ask is not None
    qty = plan.qty
    req = OrderRequest(new_order_ref(), (OrderLeg(choice.contract, "BUY"),), qty,
                       limit_price(q.bid, q.ask, "BUY", 0, settings, q.min_tick))
    announce = partial(desk.emit, EventKind.ORDER_SENT,
              f"BUY {qty} {choice.contract.key} @ {req.limit} ({purpose.label}, delta {choice.delta:.2f}): "
              f"{req.limit * qty * choice.contract.multiplier:,.2f} USD", order_ref=req.order_ref,
              actor=actor_id(who) if who is not None else None)
    ctx = _context(snap, deltas={choice.contract.key: choice.delta},
                   reason="roll_in" if purpose == OrderPurpose.ROLL else "entry",
                   **({"manual": who} if who is not None else {}))
    return await desk.runner.run(req, purpose=purpose, session_day=snap.session, settings=settings,
                                 quote=_option_quote_fn(desk, choice.contract), tick=q.min_tick,
                                 roll_id=roll_id, context=ctx, announce=announce,
                                 max_buy_limit=worst_limit(q.bid, q.ask, "BUY", settings, q.min_tick))


def _bought_text(out: OrderOutcome, plan: BuyPlan, snap: MarketSnapshot) -> str:
    spent = ledger.order_cash(out.order_ref)
    return (f"Bought {out.filled} {plan.choice.contract.key} for {-spent:,.2f} USD with commissions (QQQ "
            f"{snap.qqq.price}, delta {plan.choice.delta:.2f})")


async def _enter(desk: Desk, snap: MarketSnapshot, settings: StrategySettings, report: TickReport) -> None:
    plan = await _checked_buy(desk, snap, settings, "Entry", report)
    if plan is None:
        return
    out = await _buy(desk, plan, snap, settings, OrderPurpose.ENTRY)
    report.actions.append(f"entry {plan.choice.contract.key}: {out.status.label} {out.filled}/{out.qty}")
    if out.filled:
        desk.emit(EventKind.ENTRY, _bought_text(out, plan, snap), order_ref=out.order_ref)


async def buy_now(desk: Desk, plan: BuyPlan, snap: MarketSnapshot, settings: StrategySettings,
                  who: str) -> OrderOutcome:
    """A manual /enter: the checked plan, bought through the same order runner as an entry (it is the
    session's entry). Returns the outcome; the fill alerts come from the listener as for any order."""
    out = await _buy(desk, plan, snap, settings, OrderPurpose.ENTRY, who=who)
    if out.filled:
        desk.emit(EventKind.ENTRY, _bought_text(out, plan, snap) + f"; bought by hand ({who})",
                  order_ref=out.order_ref, actor=actor_id(who))
    return out


async def sell_now(desk: Desk, lot: Lot, quote: OptionQuote, snap: MarketSnapshot, settings: StrategySettings,
                   who: str) -> OrderOutcome | None:
    """A manual /sell: the whole lot through the same order runner, reason manual."""
    ctx = _context(snap, deltas={lot.contract.key: _delta(quote, snap, settings)},
                   held_days=lot.held_days(snap.session), reason="manual", manual=who)
    return await _sell_lot(desk, lot, quote, OrderPurpose.MANUAL, snap.session, settings, ctx, who=who)


async def _roll(desk: Desk, old: Lot, snap: MarketSnapshot, settings: StrategySettings, report: TickReport) -> None:
    old_quote = snap.lot_quotes.get(old.id)
    if old_quote is None or old_quote.bid is None or old_quote.ask is None:
        report.actions.append(f"roll of lot #{old.id}: no quote for it")
        return
    if not await _holds(desk, old, snap.session):
        report.actions.append(f"roll of lot #{old.id}: the account does not hold it")
        return
    plan = await _checked_buy(desk, snap, settings, f"Roll of lot #{old.id}", report)
    if plan is None:
        return
    choice = plan.choice
    day = snap.session
    combo = desk.broker.supports_combo and old.qty == plan.qty
    roll = ledger.create_roll(day, old.id, combo, desk.clock.now(), choice.contract.expiry, choice.contract.strike)
    old_delta = _delta(old_quote, snap, settings)
    if combo:
        ctx = _context(snap, deltas={old.contract.key: old_delta, choice.contract.key: choice.delta},
                       held_days=old.held_days(day), reason="roll")
        await _roll_combo(desk, roll.id, old, old_quote, choice, snap, settings, report, ctx)
        return
    ctx_out = _context(snap, deltas={old.contract.key: old_delta}, held_days=old.held_days(day), reason="roll_out")
    sold = await _sell_lot(desk, old, old_quote, OrderPurpose.ROLL, day, settings, ctx_out, roll_id=roll.id)
    if sold is None or sold.filled == 0:
        ledger.set_roll_status(roll.id, RollStatus.FAILED)
        desk.emit(EventKind.ROLL, f"Roll #{roll.id} of lot #{old.id}: the sell leg did not fill; nothing rolled")
        return
    await _roll_buy(desk, roll.id, snap, settings, report, plan)


async def _roll_combo(
    desk: Desk, roll_id: int, old: Lot, old_quote: OptionQuote, choice: Candidate, snap: MarketSnapshot,
    settings: StrategySettings, report: TickReport, ctx: dict[str, Any],
) -> None:
    new_q = choice.quote
    assert new_q.bid is not None and new_q.ask is not None and old_quote.bid is not None and old_quote.ask is not None
    net_bid, net_ask = new_q.bid - old_quote.ask, new_q.ask - old_quote.bid
    req = OrderRequest(new_order_ref(), (OrderLeg(old.contract, "SELL"), OrderLeg(choice.contract, "BUY")),
                       old.qty, limit_price(net_bid, net_ask, "BUY", 0, settings, TICK))

    async def net_quote() -> tuple[Decimal, Decimal, Decimal] | None:
        qs = {q.contract.key: q for q in await desk.broker.option_quotes([old.contract, choice.contract])}
        o, n = qs.get(old.contract.key), qs.get(choice.contract.key)
        if o is None or n is None or None in (o.bid, o.ask, n.bid, n.ask):
            return None
        assert o.bid is not None and o.ask is not None and n.bid is not None and n.ask is not None
        return n.bid - o.ask, n.ask - o.bid, TICK

    net = req.limit * old.qty * 100
    announce = partial(desk.emit, EventKind.ORDER_SENT, f"ROLL combo: SELL {old.qty} {old.contract.key} / "
              f"BUY {old.qty} {choice.contract.key} @ net {req.limit} "
              f"({'pays' if net >= 0 else 'receives'} {abs(net):,.2f} USD)",
              order_ref=req.order_ref)
    out = await desk.runner.run(req, purpose=OrderPurpose.ROLL, session_day=snap.session, settings=settings,
                                quote=net_quote, tick=TICK, roll_id=roll_id, context=ctx, announce=announce)
    ledger.set_roll_status(roll_id, RollStatus.COMPLETED if out.filled > 0 else RollStatus.FAILED)
    report.actions.append(f"roll #{roll_id} combo: {out.status.label} {out.filled}/{out.qty}")
    if out.filled:
        cash = ledger.order_cash(out.order_ref)
        desk.emit(EventKind.ROLL, f"Rolled lot #{old.id} {old.contract.key} → {choice.contract.key} "
                  f"(delta {choice.delta:.2f}; {out.filled}/{out.qty}, one combo order; net "
                  f"{'received' if cash >= 0 else 'paid'} {abs(cash):,.2f} USD with commissions)",
                  roll_id=roll_id, order_ref=out.order_ref)
    else:
        desk.emit(EventKind.ROLL, f"Roll #{roll_id} of lot #{old.id}: combo did not fill; nothing rolled",
                  order_ref=out.order_ref)


async def _roll_buy(
    desk: Desk, roll_id: int, snap: MarketSnapshot, settings: StrategySettings, report: TickReport,
    plan: BuyPlan | None = None,
) -> None:
    """The buy leg of a legged roll (first try, or a retry at a later tick of the session)."""
    if plan is None:
        plan = await _checked_buy(desk, snap, settings, f"Roll #{roll_id} buy leg", report)
    out = await _buy(desk, plan, snap, settings, OrderPurpose.ROLL, roll_id=roll_id) if plan is not None else None
    if out is not None and out.filled > 0 and plan is not None:
        ledger.set_roll_status(roll_id, RollStatus.COMPLETED)
        desk.emit(EventKind.ROLL, f"Roll #{roll_id} completed. {_bought_text(out, plan, snap)}", roll_id=roll_id,
                  order_ref=out.order_ref)
    else:
        ledger.set_roll_status(roll_id, RollStatus.BUY_PENDING)
        desk.emit(EventKind.ROLL, f"Roll #{roll_id}: sold, but the buy leg did not fill; retrying at the next ticks",
                  roll_id=roll_id)
    report.actions.append(f"roll #{roll_id} buy leg: {out.status.label if out else 'not sent'}")


async def _recycle(
    desk: Desk, decision: RecycleDecision, snap: MarketSnapshot, settings: StrategySettings, report: TickReport,
) -> None:
    """Buy the QQQM shares ``recycle_decision`` decided at this tick (the pool it saw is the pool now:
    recycling is only planned when nothing else traded in the tick)."""
    quote_now = snap.qqqm
    if quote_now is None or quote_now.bid is None or quote_now.ask is None:
        return
    day = snap.session
    if not _limit_ok(desk, day, Decimal(0), "QQQM recycling buy"):
        return
    cost = decision.limit * decision.shares + stock_commission(decision.shares, decision.limit)
    account = await desk.broker.account_summary()
    if not can_afford(account.available_funds_usd, cost, Decimal(0)):
        desk.emit(EventKind.SKIPPED,
                  f"Recycling skipped: available funds {account.available_funds_usd:.2f} USD < {cost:.2f} USD")
        return
    req = OrderRequest(new_order_ref(), (OrderLeg(StockContract("QQQM"), "BUY"),), decision.shares,
                       limit_price(quote_now.bid, quote_now.ask, "BUY", 0, settings, TICK))

    async def quote() -> tuple[Decimal, Decimal, Decimal] | None:
        q = await desk.broker.quote("QQQM")
        return (q.bid, q.ask, TICK) if q.bid is not None and q.ask is not None else None

    announce = partial(desk.emit, EventKind.ORDER_SENT,
              f"BUY {decision.shares} QQQM @ {req.limit} (recycling into QQQM: up to {cost:,.2f} USD of the "
              f"{decision.pool:,.2f} USD pool)", order_ref=req.order_ref)
    try:
        out = await desk.runner.run(
            req, purpose=OrderPurpose.RECYCLE, session_day=day, settings=settings, quote=quote, tick=TICK,
            context=_context(snap, reason="recycle", pool=decision.pool),
            after_create=lambda order: ledger.create_recycle(order, decision.pool, decision.shares, desk.clock.now()),
            max_buy_limit=decision.limit, announce=announce,
        )
    except BrokerError as e:  # pragma: no cover - run() turns broker errors into outcomes
        desk.emit(EventKind.ERROR, f"Recycling order failed: {e}")
        return
    report.actions.append(f"recycling {decision.shares} QQQM: {out.status.label} {out.filled}/{out.qty}")
    if out.filled:
        shares, deployed = ledger.qqqm_bought()
        spent = -ledger.order_cash(out.order_ref)
        desk.emit(EventKind.RECYCLE, f"Recycled {spent:,.2f} USD of profits into {out.filled} QQQM; the bot's core is "
                  f"now {shares} shares ({deployed:,.2f} USD deployed), pool {ledger.recycling_pool():,.2f} USD",
                  order_ref=out.order_ref)
