"""The strategy's rules, one small pure function each, named after the spec.

Each returns a decision (or None); none executes anything. ``decide_tick`` strings them together
in the spec's order: exits, roll, entry, recycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from strategy.model import (
    NY,
    EntrySignal,
    ExitDecision,
    ExitReason,
    Lot,
    MarketSnapshot,
    OptionQuote,
    Quote,
    RecycleDecision,
    RollSignal,
    Side,
    StrategyState,
    TickPlan,
)
from strategy.settings import PauseMode, StrategySettings, Tier

HUNDRED = Decimal(100)


# --- Terms -------------------------------------------------------------------------------------


def price_change(last: Decimal, prev_close: Decimal) -> Decimal:
    """change = last / prev_close − 1."""
    return last / prev_close - 1


def is_fresh(quote_time: datetime, now: datetime, max_age_s: int) -> bool:
    """A quote older than max_quote_age_s is stale: a stale quote never triggers an order."""
    age = (now - quote_time).total_seconds()
    return -max_age_s <= age <= max_age_s


# --- Exit: the shield --------------------------------------------------------------------------


def take_profit_target(held: int, tiers: tuple[Tier, ...]) -> Decimal:
    """The target is the tier with the largest from_day ≤ held_days (percent)."""
    target = tiers[0][1]
    for from_day, pct in tiers:
        if from_day <= held:
            target = pct
        else:
            break
    return target


def lot_pnl_pct(mid: Decimal, avg_entry_price: Decimal) -> Decimal:
    """pnl_pct = mid / avg_entry_price − 1, in percent (premium per share)."""
    return (mid / avg_entry_price - 1) * HUNDRED


def should_force_exit(lot: Lot, today: date, settings: StrategySettings) -> bool:
    """Force exit: sell when held_days ≥ force_exit_days, whatever the P&L."""
    return lot.held_days(today) >= settings.force_exit_days


def expiry_guard(lot: Lot, today: date, settings: StrategySettings) -> bool:
    """Expiry guard: sell when DTE ≤ min_exit_dte."""
    return lot.contract.dte(today) <= settings.min_exit_dte


def exit_decision(
    lot: Lot, quote: OptionQuote | None, now: datetime, settings: StrategySettings, today: date | None = None
) -> ExitDecision | None:
    """Whether to sell this lot now and why: take profit first, then force exit, then expiry guard.

    A missing or stale option quote never triggers an exit (there is no price to send)."""
    if quote is None or quote.mid is None or quote.bid is None or quote.bid <= 0:
        return None
    if not is_fresh(quote.time, now, settings.max_quote_age_s):
        return None
    if today is None:
        today = now.astimezone(NY).date()
    held = lot.held_days(today)
    dte = lot.contract.dte(today)
    pnl = lot_pnl_pct(quote.mid, lot.avg_price)
    target = take_profit_target(held, settings.tp_tiers)
    if pnl >= target:
        return ExitDecision(lot.id, ExitReason.TAKE_PROFIT, pnl, target, held, dte)
    if should_force_exit(lot, today, settings):
        return ExitDecision(lot.id, ExitReason.FORCE_EXIT, pnl, target, held, dte)
    if expiry_guard(lot, today, settings):
        return ExitDecision(lot.id, ExitReason.EXPIRY_GUARD, pnl, target, held, dte)
    return None


def exit_decisions(
    lots: tuple[Lot, ...], quotes: dict[int, OptionQuote], now: datetime, settings: StrategySettings
) -> tuple[ExitDecision, ...]:
    """Exit decisions for every open lot, oldest first."""
    out = []
    today = now.astimezone(NY).date()
    for lot in sorted(lots, key=lambda lt: (lt.opened_at, lt.id)):
        d = exit_decision(lot, quotes.get(lot.id), now, settings, today)
        if d is not None:
            out.append(d)
    return tuple(out)


def has_expired(lot: Lot, today: date) -> bool:
    """A lot still open after its expiry day expired unsold (it had no bid to sell into)."""
    return lot.contract.expiry < today


def expiry_settlement(lot: Lot, underlying_close: Decimal | None) -> Decimal:
    """What an expired lot is worth per share: its intrinsic value at the expiry close (0 when
    out of the money, or when that close is unknown)."""
    if underlying_close is None:
        return Decimal(0)
    k = lot.contract.strike
    intrinsic = underlying_close - k if lot.contract.right == "C" else k - underlying_close
    return max(intrinsic, Decimal(0))


# --- Entry: the spear --------------------------------------------------------------------------


def entry_signal(
    state: StrategyState, change: Decimal, open_lots: int, settings: StrategySettings
) -> EntrySignal | None:
    """Enter when change ≤ −entry_drop_pct, open lots < max_positions, no entry or roll yet this
    session, no unresolved order (freshness is checked by the caller, pause by the engine)."""
    if state.unresolved_order:
        return None
    if state.entered_this_session or state.rolled_this_session:
        return None
    if open_lots >= settings.max_positions:
        return None
    if change > -settings.entry_drop_pct / HUNDRED:
        return None
    return EntrySignal(change=change)


def premium_within_limit(mid: Decimal, quantity: int, multiplier: int, settings: StrategySettings) -> bool:
    """Skip the entry if mid × 100 × quantity > max_premium."""
    return mid * multiplier * quantity <= settings.max_premium


OPTION_FEE = Decimal("0.65")


def option_commission(qty: int) -> Decimal:
    """IBKR-like option commission estimate: 0.65 USD a contract, at least 1 USD."""
    return max(OPTION_FEE * qty, Decimal(1))


def sized_quantity(pct: Decimal, net_liquidation: Decimal, limit: Decimal, multiplier: int) -> int:
    """A new lot sized as a share of net liquidation: floor(net liquidation × pct ÷ (limit × multiplier))."""
    if limit <= 0 or net_liquidation <= 0:
        return 0
    return int((net_liquidation * pct / HUNDRED / (limit * multiplier)).to_integral_value(rounding=ROUND_FLOOR))


def capped_quantity(qty: int, mid: Decimal, multiplier: int, max_premium: Decimal, available_funds: Decimal,
                    premium_room: Decimal) -> int:
    """The largest quantity up to ``qty`` that the existing guards still allow: the lot's premium at
    the mid within max_premium and within the day's remaining premium (the hard daily cap), and the
    premium plus commission within the available funds."""
    if mid <= 0:
        return 0
    per = mid * multiplier
    n = qty
    n = min(n, int((max_premium / per).to_integral_value(rounding=ROUND_FLOOR)))
    n = min(n, int((max(premium_room, Decimal(0)) / per).to_integral_value(rounding=ROUND_FLOOR)))
    while n > 0 and not can_afford(available_funds, per * n, option_commission(n)):
        n -= 1
    return max(n, 0)


# --- Roll: reset the leverage ------------------------------------------------------------------


def oldest_lot(lots: tuple[Lot, ...]) -> Lot | None:
    """The lot a roll sells: FIFO by opened_at."""
    return min(lots, key=lambda lt: (lt.opened_at, lt.id), default=None)


def roll_signal(
    state: StrategyState, change: Decimal, lots: tuple[Lot, ...], settings: StrategySettings
) -> RollSignal | None:
    """Roll when open lots ≥ max_positions and change ≤ −roll_drop_pct, no roll (or entry) yet
    this session, no unresolved order: sell the oldest lot, buy a new contract (pause: engine)."""
    if state.unresolved_order:
        return None
    if state.rolled_this_session or state.entered_this_session:
        return None
    if len(lots) < settings.max_positions:
        return None
    if change > -settings.roll_drop_pct / HUNDRED:
        return None
    oldest = oldest_lot(lots)
    return RollSignal(lot_id=oldest.id, change=change) if oldest is not None else None


# --- Profit recycling: the QQQM core -----------------------------------------------------------


def stock_commission(shares: int, price: Decimal) -> Decimal:
    """IBKR fixed-rate stock commission: 0.005 USD/share, at least 1 USD, at most 1 % of value."""
    if shares <= 0:
        return Decimal(0)
    fee = max(Decimal("0.005") * shares, Decimal(1))
    cap = Decimal("0.01") * shares * price
    return min(fee, cap).quantize(Decimal("0.01"), rounding=ROUND_CEILING)


def recycle_decision(
    pool: Decimal, qqqm: Quote | None, now: datetime, settings: StrategySettings
) -> RecycleDecision | None:
    """When recycling is on, pool ≥ recycle_threshold and pool ≥ one QQQM ask: buy floor(pool / ask)
    shares, fewer if needed so shares × worst limit + commission never exceeds the pool."""
    if not settings.recycle_enabled:
        return None
    if qqqm is None or qqqm.ask is None or qqqm.bid is None or qqqm.ask <= 0 or qqqm.bid <= 0:
        return None
    if not is_fresh(qqqm.time, now, settings.max_quote_age_s):
        return None
    if pool < settings.recycle_threshold or pool < qqqm.ask:
        return None
    worst = worst_limit(qqqm.bid, qqqm.ask, "BUY", settings, Decimal("0.01"))
    worst = max(worst, qqqm.ask)
    shares = int((pool / worst).to_integral_value(rounding=ROUND_FLOOR))
    while shares > 0 and shares * worst + stock_commission(shares, worst) > pool:
        shares -= 1
    if shares <= 0:
        return None
    return RecycleDecision(shares=shares, limit=worst, pool=pool)


# --- Orders ------------------------------------------------------------------------------------


def round_to_tick(price: Decimal, tick: Decimal, side: Side | None = None) -> Decimal:
    """Round a limit to the contract's tick; a buy rounds down and a sell up when ``side`` is given,
    so rounding never makes a price worse for the bot."""
    if tick <= 0:
        return price
    units = price / tick
    if side == "BUY":
        n = units.to_integral_value(rounding=ROUND_FLOOR)
    elif side == "SELL":
        n = units.to_integral_value(rounding=ROUND_CEILING)
    else:
        n = units.to_integral_value(rounding=ROUND_HALF_UP)
    return (n * tick).quantize(tick)


def limit_price(
    bid: Decimal, ask: Decimal, side: Side, step: int, settings: StrategySettings, tick: Decimal
) -> Decimal:
    """Limit at the mid, then each reprice step moves reprice_step of the spread toward the far
    side, never past max_slippage of the spread."""
    mid = (bid + ask) / 2
    spread = max(ask - bid, Decimal(0))
    move = min(settings.reprice_step_pct * step, settings.max_slippage_pct) / HUNDRED * spread
    raw = mid + move if side == "BUY" else mid - move
    price = round_to_tick(raw, tick, side)
    if side == "SELL":
        price = max(price, tick)
    return price


def worst_limit(bid: Decimal, ask: Decimal, side: Side, settings: StrategySettings, tick: Decimal) -> Decimal:
    """The furthest a limit may move from the mid (max_slippage of the spread)."""
    return limit_price(bid, ask, side, 10_000, settings, tick)


def can_afford(available_usd: Decimal, premium: Decimal, commission: Decimal) -> bool:
    """Before a buy: available funds in USD ≥ the order's premium plus commissions."""
    return available_usd >= premium + commission


@dataclass(frozen=True, slots=True)
class DailyLimits:
    """Hard limits from the environment that no chat command can raise."""

    max_orders_per_day: int = 10
    max_premium_per_day: Decimal = Decimal(25000)


def daily_limit_breach(
    orders_today: int, premium_today: Decimal, next_premium: Decimal, limits: DailyLimits
) -> str | None:
    """Why the next automatic order would break a hard daily limit, or None when it may go."""
    if orders_today >= limits.max_orders_per_day:
        return f"MAX_ORDERS_PER_DAY ({limits.max_orders_per_day}) reached"
    if next_premium > 0 and premium_today + next_premium > limits.max_premium_per_day:
        return (
            f"MAX_PREMIUM_PER_DAY ({limits.max_premium_per_day} USD) would be exceeded: "
            f"{premium_today} USD bought today + {next_premium.quantize(Decimal('0.01'))} USD"
        )
    return None


# --- Pause --------------------------------------------------------------------------------------


def sellable_qty(held_long: int, working_sells: int) -> int:
    """Never sell more than the account holds long minus the sells already working: a sale beyond
    it would open a short call."""
    return max(held_long - max(working_sells, 0), 0)


def held_by_pause(is_exit: bool, mode: PauseMode) -> bool:
    """Whether a pause holds back an automatic order: pause all holds every one, pause entries every
    one but the exits."""
    return mode is PauseMode.ALL or (mode is PauseMode.ENTRIES and not is_exit)


def allowed_under_pause(plan: TickPlan, mode: PauseMode) -> TickPlan:
    """What a pause lets through: pause entries halts entries, rolls (and a roll's pending buy leg)
    and recycling buys while exits keep running; pause all halts every automatic order."""
    if mode is PauseMode.OFF:
        return plan
    if mode is PauseMode.ALL:
        return TickPlan(change=plan.change, notes=plan.notes)
    return TickPlan(change=plan.change, exits=plan.exits, notes=plan.notes)


# --- The tick ----------------------------------------------------------------------------------


def decide_tick(state: StrategyState, snap: MarketSnapshot, settings: StrategySettings) -> TickPlan:
    """One tick's decisions in the spec's order: exits, roll, entry, recycle.

    Exits come first; while an order is unresolved (exits just decided included) nothing new is
    opened. A roll excludes an entry in the same session; the roll's buy leg still pending from an
    earlier tick of this session is retried before anything else is opened. Pause is not a rule
    here: the plan says what the bot would do, and ``allowed_under_pause`` says what may be sent."""
    notes: list[str] = []
    price = snap.qqq.price
    fresh = price is not None and is_fresh(snap.qqq.time, snap.now, settings.max_quote_age_s)
    change = price_change(price, snap.prev_close) if price is not None and snap.prev_close > 0 else None
    if not fresh:
        notes.append("QQQ quote missing or stale: no order")

    # While an order is unresolved nothing new is sent, exits included: the next tick decides.
    exits = () if state.unresolved_order else exit_decisions(state.open_lots, snap.lot_quotes, snap.now, settings)
    busy = state.unresolved_order or bool(exits)

    roll = None
    entry = None
    retry = None
    if state.pending_roll_buy is not None and not state.unresolved_order and fresh:
        retry = state.pending_roll_buy
        busy = True
    if fresh and change is not None and not busy:
        exiting = {e.lot_id for e in exits}
        remaining = tuple(lt for lt in state.open_lots if lt.id not in exiting)
        roll = roll_signal(state, change, remaining, settings)
        if roll is None:
            entry = entry_signal(state, change, len(remaining), settings)
    recycle = None
    if not busy and roll is None and entry is None:
        recycle = recycle_decision(state.pool, snap.qqqm, snap.now, settings)
    return TickPlan(
        change=change,
        exits=exits,
        roll=roll,
        entry=entry,
        recycle=recycle,
        retry_roll_buy=retry,
        notes=tuple(notes),
    )
