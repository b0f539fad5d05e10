"""Turning a tick's plan into orders: exits, the roll (combo or legged), entry, recycling.

Every buy is checked against max_premium, the account's available funds and the hard daily
limits before it is written and sent; every skip is alerted."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from bot.alerts import EventKind
from bot.orders import OrderOutcome, QuoteFn, new_order_ref
from broker.base import BrokerError, OrderLeg, OrderRequest, StockContract
from storage import kv, ledger
from strategy.model import Lot, MarketSnapshot, OptionContract, OptionQuote, StrategyState, TickPlan
from strategy.rules import (
    can_afford,
    daily_limit_breach,
    is_fresh,
    limit_price,
    premium_within_limit,
    stock_commission,
    worst_limit,
)
from strategy.selection import (
    Candidate,
    Rejection,
    best_at_window_edge,
    select_expiry,
    select_strike,
    strike_window,
    years_to_expiry,
)
from strategy.settings import StrategySettings

if TYPE_CHECKING:
    from bot.engine import Engine, TickReport

log = logging.getLogger(__name__)
T = TypeVar("T")

TICK = Decimal("0.01")
OPTION_FEE = Decimal("0.65")


def option_commission(qty: int) -> Decimal:
    """IBKR-like option commission estimate: 0.65 USD a contract, at least 1 USD."""
    return max(OPTION_FEE * qty, Decimal(1))


async def execute_plan(
    engine: Engine, plan: TickPlan, snap: MarketSnapshot, state: StrategyState, settings: StrategySettings,
    report: TickReport,
) -> None:
    """Act on a plan in the spec's order; one failing action is alerted and the rest still run."""
    day = snap.session
    if kv.get(f"halted:{day.isoformat()}") is not None:
        report.actions.append("automatic orders halted for this session (daily limit)")
        return
    lots = {lot.id: lot for lot in state.open_lots}
    for decision in plan.exits:
        lot = lots.get(decision.lot_id)
        quote = snap.lot_quotes.get(decision.lot_id)
        if lot is None or quote is None:
            continue
        ctx = _context(snap, delta=quote.delta, held_days=decision.held_days,
                       pnl_pct=decision.pnl_pct, reason=decision.reason.value)
        out = await _guarded(engine, f"exit of lot #{lot.id}",
                             _sell_lot(engine, lot, quote, decision.reason.value, day, settings, ctx))
        if out is not None:
            report.actions.append(f"exit lot #{lot.id} ({decision.reason.value}): {out.status} {out.filled}/{out.qty}")
    if plan.retry_roll_buy is not None:
        await _guarded(engine, "roll buy leg", _roll_buy(engine, plan.retry_roll_buy, snap, settings, report))
    elif plan.roll is not None:
        await _guarded(engine, "roll", _roll(engine, lots[plan.roll.lot_id], snap, settings, report))
    elif plan.entry is not None:
        await _guarded(engine, "entry", _enter(engine, snap, settings, report))
    if plan.recycle is not None:
        await _guarded(engine, "recycling", _recycle(engine, snap, settings, report))


async def _guarded(engine: Engine, what: str, action: Awaitable[T]) -> T | None:
    """Run one action; a failure is logged and alerted and the tick goes on with the next."""
    try:
        return await action
    except Exception as e:
        engine.report_error(f"{what} failed", e)
        engine.ready = False  # whatever state the order is in, reconcile before the next one
        return None


def _context(snap: MarketSnapshot, **extra: Any) -> dict[str, Any]:
    price = snap.qqq.price
    ctx: dict[str, Any] = {"underlying_price": float(price) if price is not None else None,
                           "prev_close": float(snap.prev_close)}
    for k, v in extra.items():
        ctx[k] = float(v) if isinstance(v, Decimal) else v
    return ctx


def _option_quote_fn(engine: Engine, contract: OptionContract) -> QuoteFn:
    async def quote() -> tuple[Decimal, Decimal, Decimal] | None:
        qs = await engine.broker.option_quotes([contract])
        q = qs[0] if qs else None
        if q is None or q.bid is None or q.ask is None or q.bid <= 0:
            return None
        return q.bid, q.ask, q.min_tick

    return quote


def _limit_ok(engine: Engine, day: date, premium: Decimal, what: str) -> bool:
    """The hard daily limits; a breach halts automatic orders for the rest of the session."""
    breach = daily_limit_breach(ledger.orders_sent_on(day), ledger.premium_bought_on(day), premium, engine.limits)
    if breach is None:
        return True
    kv.put(f"halted:{day.isoformat()}", breach, engine.clock.now())
    engine.emit(EventKind.LIMIT_REACHED,
                f"{breach}: {what} not sent; automatic orders stop for the rest of the session")
    return False


async def _sell_lot(
    engine: Engine, lot: Lot, quote: OptionQuote, purpose: str, day: date, settings: StrategySettings,
    context: dict[str, Any], roll_id: int | None = None,
) -> OrderOutcome | None:
    if quote.bid is None or quote.ask is None:
        return None
    if not _limit_ok(engine, day, Decimal(0), f"sell of lot #{lot.id}"):
        return None
    req = OrderRequest(new_order_ref(), (OrderLeg(lot.contract, "SELL"),), lot.qty,
                       limit_price(quote.bid, quote.ask, "SELL", 0, settings, quote.min_tick))
    engine.emit(EventKind.ORDER_SENT, f"SELL {lot.qty} {lot.contract.key} @ {req.limit} ({purpose}, lot #{lot.id})")
    return await engine.runner.run(req, purpose=purpose, session_day=day, settings=settings,
                                   quote=_option_quote_fn(engine, lot.contract), tick=quote.min_tick,
                                   lot_id=None if roll_id else lot.id, roll_id=roll_id, context=context)


async def select_contract(engine: Engine, snap: MarketSnapshot, settings: StrategySettings) -> Candidate | Rejection:
    """The entry contract: the expiry per min_dte, then the strike per delta, from a narrow window
    of quoted strikes around the BSM estimate, widened only when the best sits at its edge."""
    spot = snap.qqq.price
    if spot is None:
        return Rejection("no QQQ price")
    chain = await engine.broker.option_chain("QQQ")
    expiry = select_expiry(chain.expiries, snap.session, settings.min_dte)
    if expiry is None:
        return Rejection(f"no listed expiry with at least {settings.min_dte} days to go")
    T = years_to_expiry(expiry, snap.session)
    # The volatility that centres the strike window: the newest lot's, as quoted at this very tick,
    # else the last chosen contract's. Only what this tick saw or chose, so the window never depends
    # on which earlier ticks happened to be evaluated.
    lot_ivs = [q.iv for q in snap.lot_quotes.values() if q.iv]
    iv_guess = lot_ivs[-1] if lot_ivs else engine.iv_guess
    quoted: dict[Decimal, OptionQuote] = {}
    width = 8
    result: Candidate | Rejection = Rejection("no strikes listed")
    for _ in range(4):
        window = strike_window(chain.strikes, spot, T, iv_guess, settings, width=width)
        new = [k for k in window if k not in quoted]
        if new:
            for q in await engine.broker.option_quotes([OptionContract("QQQ", expiry, k, "C") for k in new]):
                if is_fresh(q.time, snap.now, settings.max_quote_age_s):  # a stale quote never trades
                    quoted[q.contract.strike] = q
        result = select_strike([quoted[k] for k in window if k in quoted], spot, snap.session, settings)
        if not isinstance(result, Candidate) or not best_at_window_edge(result, window) or len(window) < width:
            break
        width *= 2
    if isinstance(result, Candidate) and result.quote.iv:
        engine.iv_guess = result.quote.iv
    return result


async def _checked_buy(
    engine: Engine, snap: MarketSnapshot, settings: StrategySettings, what: str,
) -> Candidate | None:
    """Choose the contract and check premium, funds and daily limits; alert on every skip."""
    day = snap.session
    choice = await select_contract(engine, snap, settings)
    if isinstance(choice, Rejection):
        if kv.put_once(f"no_contract:{day.isoformat()}", choice.reason, engine.clock.now()):
            engine.emit(EventKind.NO_CONTRACT, f"{what}: signal, but no eligible contract ({choice.reason})")
        return None
    mid = choice.quote.mid
    assert mid is not None
    qty = settings.order_quantity
    mult = choice.contract.multiplier
    if not premium_within_limit(mid, qty, mult, settings):
        if kv.put_once(f"premium_skip:{day.isoformat()}", "1", engine.clock.now()):
            engine.emit(EventKind.SKIPPED, f"{what} skipped: {choice.contract.key} costs {mid * mult * qty:.2f} USD "
                        f"for {qty}, above max_premium {settings.max_premium} USD")
        return None
    premium = mid * mult * qty
    account = await engine.broker.account_summary()
    if not can_afford(account.available_funds_usd, premium, option_commission(qty)):
        if kv.put_once(f"funds_skip:{day.isoformat()}", "1", engine.clock.now()):
            engine.emit(EventKind.SKIPPED, f"{what} skipped: available funds {account.available_funds_usd:.2f} USD "
                        f"< premium {premium:.2f} USD + commission")
        return None
    if not _limit_ok(engine, day, premium, what):
        return None
    return choice


async def _buy(
    engine: Engine, choice: Candidate, snap: MarketSnapshot, settings: StrategySettings, purpose: str,
    roll_id: int | None = None,
) -> OrderOutcome:
    q = choice.quote
    assert q.bid is not None and q.ask is not None
    qty = settings.order_quantity
    req = OrderRequest(new_order_ref(), (OrderLeg(choice.contract, "BUY"),), qty,
                       limit_price(q.bid, q.ask, "BUY", 0, settings, q.min_tick))
    engine.emit(EventKind.ORDER_SENT,
                f"BUY {qty} {choice.contract.key} @ {req.limit} ({purpose}, delta {choice.delta:.2f})")
    ctx = _context(snap, delta=choice.delta, reason="roll_in" if purpose == "roll" else "entry")
    return await engine.runner.run(req, purpose=purpose, session_day=snap.session, settings=settings,
                                   quote=_option_quote_fn(engine, choice.contract), tick=q.min_tick,
                                   roll_id=roll_id, context=ctx,
                                   max_buy_limit=worst_limit(q.bid, q.ask, "BUY", settings, q.min_tick))


async def _enter(engine: Engine, snap: MarketSnapshot, settings: StrategySettings, report: TickReport) -> None:
    choice = await _checked_buy(engine, snap, settings, "Entry")
    if choice is None:
        return
    out = await _buy(engine, choice, snap, settings, "entry")
    report.actions.append(f"entry {choice.contract.key}: {out.status} {out.filled}/{out.qty}")
    if out.filled:
        engine.emit(EventKind.ENTRY, f"Bought {out.filled} {choice.contract.key} (QQQ {snap.qqq.price}, "
                    f"delta {choice.delta:.2f})")


async def _roll(engine: Engine, old: Lot, snap: MarketSnapshot, settings: StrategySettings, report: TickReport) -> None:
    old_quote = snap.lot_quotes.get(old.id)
    if old_quote is None or old_quote.bid is None or old_quote.ask is None:
        report.actions.append(f"roll of lot #{old.id}: no quote for it")
        return
    choice = await _checked_buy(engine, snap, settings, f"Roll of lot #{old.id}")
    if choice is None:
        return
    day = snap.session
    combo = engine.broker.supports_combo and old.qty == settings.order_quantity
    roll = ledger.create_roll(day, old.id, combo, engine.clock.now(), choice.contract.expiry, choice.contract.strike)
    ctx_out = _context(snap, delta=old_quote.delta, held_days=old.held_days(day), reason="roll_out")
    if combo:
        await _roll_combo(engine, roll.id, old, old_quote, choice, snap, settings, report, ctx_out)
        return
    sold = await _sell_lot(engine, old, old_quote, "roll", day, settings, ctx_out, roll_id=roll.id)
    if sold is None or sold.filled == 0:
        ledger.set_roll_status(roll.id, "failed")
        engine.emit(EventKind.ROLL, f"Roll #{roll.id} of lot #{old.id}: the sell leg did not fill; nothing rolled")
        return
    await _roll_buy(engine, roll.id, snap, settings, report, choice)


async def _roll_combo(
    engine: Engine, roll_id: int, old: Lot, old_quote: OptionQuote, choice: Candidate, snap: MarketSnapshot,
    settings: StrategySettings, report: TickReport, ctx: dict[str, Any],
) -> None:
    new_q = choice.quote
    assert new_q.bid is not None and new_q.ask is not None and old_quote.bid is not None and old_quote.ask is not None
    net_bid, net_ask = new_q.bid - old_quote.ask, new_q.ask - old_quote.bid
    req = OrderRequest(new_order_ref(), (OrderLeg(old.contract, "SELL"), OrderLeg(choice.contract, "BUY")),
                       old.qty, limit_price(net_bid, net_ask, "BUY", 0, settings, TICK))

    async def net_quote() -> tuple[Decimal, Decimal, Decimal] | None:
        qs = {q.contract.key: q for q in await engine.broker.option_quotes([old.contract, choice.contract])}
        o, n = qs.get(old.contract.key), qs.get(choice.contract.key)
        if o is None or n is None or None in (o.bid, o.ask, n.bid, n.ask):
            return None
        assert o.bid is not None and o.ask is not None and n.bid is not None and n.ask is not None
        return n.bid - o.ask, n.ask - o.bid, TICK

    engine.emit(EventKind.ORDER_SENT, f"ROLL combo: SELL {old.qty} {old.contract.key} / BUY {old.qty} "
                f"{choice.contract.key} @ net {req.limit}")
    ctx = dict(ctx, delta_new=choice.delta)
    out = await engine.runner.run(req, purpose="roll", session_day=snap.session, settings=settings, quote=net_quote,
                                  tick=TICK, roll_id=roll_id, context=ctx)
    status = "completed" if out.filled > 0 else "failed"
    ledger.set_roll_status(roll_id, status)
    report.actions.append(f"roll #{roll_id} combo: {out.status} {out.filled}/{out.qty}")
    if out.filled:
        engine.emit(EventKind.ROLL, f"Rolled lot #{old.id} {old.contract.key} → {choice.contract.key} "
                    f"({out.filled}/{out.qty}, one combo order)", roll_id=roll_id)
    else:
        engine.emit(EventKind.ROLL, f"Roll #{roll_id} of lot #{old.id}: combo did not fill; nothing rolled")


async def _roll_buy(
    engine: Engine, roll_id: int, snap: MarketSnapshot, settings: StrategySettings, report: TickReport,
    choice: Candidate | None = None,
) -> None:
    """The buy leg of a legged roll (first try, or a retry at a later tick of the session)."""
    if choice is None:
        choice = await _checked_buy(engine, snap, settings, f"Roll #{roll_id} buy leg")
    out = await _buy(engine, choice, snap, settings, "roll", roll_id=roll_id) if choice is not None else None
    if out is not None and out.filled > 0:
        ledger.set_roll_status(roll_id, "completed")
        bought = choice.contract.key if choice else ""
        engine.emit(EventKind.ROLL, f"Roll #{roll_id} completed: bought {out.filled} {bought}",
                    roll_id=roll_id)
    else:
        ledger.set_roll_status(roll_id, "buy_pending")
        engine.emit(EventKind.ROLL, f"Roll #{roll_id}: sold, but the buy leg did not fill; retrying at the next ticks",
                    roll_id=roll_id)
    report.actions.append(f"roll #{roll_id} buy leg: {out.status if out else 'not sent'}")


async def _recycle(engine: Engine, snap: MarketSnapshot, settings: StrategySettings, report: TickReport) -> None:
    plan = snap.qqqm
    decision_pool = ledger.recycling_pool()
    if plan is None or plan.bid is None or plan.ask is None:
        return
    from strategy.rules import recycle_decision

    decision = recycle_decision(decision_pool, plan, snap.now, settings)
    if decision is None:
        return
    day = snap.session
    if not _limit_ok(engine, day, Decimal(0), "QQQM recycling buy"):
        return
    cost = decision.limit * decision.shares + stock_commission(decision.shares, decision.limit)
    account = await engine.broker.account_summary()
    if not can_afford(account.available_funds_usd, cost, Decimal(0)):
        engine.emit(EventKind.SKIPPED,
                    f"Recycling skipped: available funds {account.available_funds_usd:.2f} USD < {cost:.2f} USD")
        return
    req = OrderRequest(new_order_ref(), (OrderLeg(StockContract("QQQM"), "BUY"),), decision.shares,
                       limit_price(plan.bid, plan.ask, "BUY", 0, settings, TICK))

    async def quote() -> tuple[Decimal, Decimal, Decimal] | None:
        q = await engine.broker.quote("QQQM")
        return (q.bid, q.ask, TICK) if q.bid is not None and q.ask is not None else None

    engine.emit(EventKind.ORDER_SENT,
                f"BUY {decision.shares} QQQM @ {req.limit} (recycling pool {decision_pool:.2f} USD)")
    try:
        out = await engine.runner.run(
            req, purpose="recycle", session_day=day, settings=settings, quote=quote, tick=TICK,
            context=_context(snap, reason="recycle", pool=decision_pool),
            after_create=lambda order: ledger.create_recycle(order, decision_pool, decision.shares, engine.clock.now()),
            max_buy_limit=decision.limit,
        )
    except BrokerError as e:  # pragma: no cover - run() turns broker errors into outcomes
        engine.emit(EventKind.ERROR, f"Recycling order failed: {e}")
        return
    report.actions.append(f"recycle {decision.shares} QQQM: {out.status} {out.filled}/{out.qty}")
    if out.filled:
        shares, deployed = ledger.qqqm_bought()
        engine.emit(EventKind.RECYCLE, f"Recycled profits into {out.filled} QQQM; the bot's core is now {shares} "
                    f"shares ({deployed:.2f} USD deployed), pool {ledger.recycling_pool():.2f} USD")
