"""Fast-forward: the QQQ price band inside which a tick provably decides nothing.

The backtest drives the real engine over every five-minute tick. Most ticks decide nothing: QQQ
is neither down enough for an entry or a roll nor high enough for any lot's take profit, and no
lot is due for a forced exit. ``quiet_band`` says, from the state at the start of a tick, the
settings and the session's previous close, which QQQ prices leave the plan of
``strategy.rules.decide_tick`` empty, or that every tick must be evaluated and why. The shell
then evaluates, through the engine, only the ticks whose price leaves the band.

Selling a lot depends on option prices, which depend on a pricing model this core does not own:
the shell passes, per lot, the lowest QQQ price at which its take profit could trigger
(``tp_triggers``) or, for a lot due for a time exit, at which its quote could show a bid
(``bid_triggers``), found with ``trigger_spot`` over its own pricer; likewise the highest QQQ price
at which the recycling pool could pay for a QQQM share. Pure: no I/O, no clock.

Every margin here errs toward evaluating: a tick wrongly evaluated costs time, a tick wrongly
skipped would be a different backtest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from strategy.model import Lot, StrategyState
from strategy.rules import HUNDRED, expiry_guard, should_force_exit, take_profit_target
from strategy.settings import StrategySettings

# QQQ's last is rounded to the cent before ``change`` is computed (at most 0.005 off the path's
# price); twice that covers it and any float/Decimal conversion.
PRICE_MARGIN = 0.01


@dataclass(frozen=True, slots=True)
class Band:
    """A tick at QQQ price ``spot`` decides nothing when ``low < spot < high`` and ``always`` is
    empty. ``low``: at or below it an entry, a roll or a recycling buy could trigger (−inf when
    none can); ``high``: at or above it a take profit could (+inf when none can)."""

    low: float
    high: float
    always: str = ""  # why every tick must be evaluated, whatever the price

    def quiet(self, spot: float) -> bool:
        return not self.always and self.low < spot < self.high


def drop_trigger(prev_close: Decimal, drop_pct: Decimal) -> float:
    """The band's low edge for a drop rule (``change ≤ −drop_pct``): the QQQ price at exactly
    −drop_pct from the previous close, plus ``PRICE_MARGIN`` for the cent rounding of the last."""
    return float(prev_close * (1 - drop_pct / HUNDRED)) + PRICE_MARGIN


def take_profit_price(lot: Lot, today: date, settings: StrategySettings) -> Decimal:
    """The option mid at or above which the lot's take profit triggers today:
    ``pnl_pct = mid / avg − 1 ≥ target`` ⇔ ``mid ≥ avg × (1 + target)``."""
    target = take_profit_target(lot.held_days(today), settings.tp_tiers)
    return lot.avg_price * (1 + target / HUNDRED)


def due_exit(lot: Lot, today: date, settings: StrategySettings) -> str:
    """Which time-based exit is due for the lot today ('' when none): these trigger at any price."""
    if should_force_exit(lot, today, settings):
        return "force_exit"
    if expiry_guard(lot, today, settings):
        return "expiry_guard"
    return ""


def trigger_spot(target: float, value_at: Callable[[float], float], lo: float, hi: float,
                 rel_tol: float = 1e-6) -> float:
    """For ``value_at`` nondecreasing in the spot, a spot ``s`` such that every spot below ``s``
    (within ``[lo, hi]``) has ``value_at(spot) < target``: the lowest one found by bisection,
    rounded down. ``lo`` when even ``lo`` reaches the target; ``math.inf`` when even ``hi`` stays
    below it (then valid only for spots up to ``hi``)."""
    if not lo <= hi:
        raise ValueError("trigger_spot needs lo <= hi")
    if value_at(hi) < target:
        return math.inf
    if value_at(lo) >= target:
        return lo
    a, b = lo, hi  # value_at(a) < target <= value_at(b)
    tol = rel_tol * max(abs(hi), 1.0)
    while b - a > tol:
        m = 0.5 * (a + b)
        if m <= a or m >= b:
            break
        if value_at(m) < target:
            a = m
        else:
            b = m
    return a


def quiet_band(
    state: StrategyState,
    settings: StrategySettings,
    today: date,
    prev_close: Decimal,
    tp_triggers: Mapping[int, float | None],
    recycle_spot_max: float | None = None,
    bid_triggers: Mapping[int, float | None] | None = None,
) -> Band:
    """The band of QQQ prices at which a tick of session ``today``, starting from ``state``,
    decides nothing (see ``Band``), following ``decide_tick`` rule by rule:

    - an unresolved order, or a roll's buy leg pending: every tick (the engine settles or retries);
    - a lot due for force exit or the expiry guard (``due_exit``): it is sold at any tick where its
      quote has a bid, so at or above its entry in ``bid_triggers`` (lot id → QQQ price from which
      its quote could show a bid; missing or None → every tick). A sale that does not fill writes
      its order, and the shell evaluates the tick after any write, so the retry is evaluated too;
    - take profit of any other lot: at or above its entry in ``tp_triggers`` (lot id → QQQ price
      from which its take profit could trigger; missing or None → every tick);
    - entry (fewer lots than max_positions, none yet this session): at or below −entry_drop_pct;
    - roll (full, none yet this session): at or below −roll_drop_pct;
    - recycling (on, pool ≥ threshold and > 0): at or below ``recycle_spot_max``, the highest QQQ
      price at which the pool could pay for a QQQM buy; None → every tick.
    """
    if state.unresolved_order:
        return Band(-math.inf, math.inf, "an order is unresolved")
    if state.pending_roll_buy is not None:
        return Band(-math.inf, math.inf, f"roll #{state.pending_roll_buy}: the buy leg is pending")
    high = math.inf
    for lot in state.open_lots:
        due = due_exit(lot, today, settings)
        trigger = (bid_triggers or {}).get(lot.id) if due else tp_triggers.get(lot.id)
        if trigger is None or math.isnan(trigger):
            what = f"is due for {due} and has no bid trigger price" if due else "has no take-profit trigger price"
            return Band(-math.inf, math.inf, f"lot #{lot.id} {what}")
        high = min(high, trigger)
    low = -math.inf
    if prev_close > 0 and not (state.entered_this_session or state.rolled_this_session):
        if len(state.open_lots) < settings.max_positions:
            low = max(low, drop_trigger(prev_close, settings.entry_drop_pct))
        else:
            low = max(low, drop_trigger(prev_close, settings.roll_drop_pct))
    if settings.recycle_enabled and state.pool >= settings.recycle_threshold and state.pool > 0:
        if recycle_spot_max is None:
            return Band(-math.inf, math.inf, f"the recycling pool ({state.pool} USD) could buy QQQM")
        low = max(low, recycle_spot_max)
    return Band(low, high)
