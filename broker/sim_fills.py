"""How the `sim` broker takes and fills limit orders: request checks, the fill model, when a
limit crosses, combo leg prices and IBKR-like commissions."""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal

from broker.base import BrokerError, Instrument, OrderRequest, limit_problem, request_problem
from strategy.model import OptionContract, Side
from strategy.rules import stock_commission

CENT = Decimal("0.01")
OPTION_FEE = Decimal("0.65")
OPTION_MIN_FEE = Decimal(1)


@dataclass(frozen=True, slots=True)
class SimFillModel:
    """How eagerly limits fill; switches for tests. A limit between the mid and the far side fills
    on each matching pass with probability ``p_at_mid + (1 − p_at_mid) × fraction of the way``;
    ``delay_s`` holds a new order back that long before it can fill."""

    p_at_mid: float = 0.3
    always_fill_at_mid: bool = False
    partial_max_qty: int | None = None
    never_fill: bool = False
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.p_at_mid <= 1:
            raise ValueError("p_at_mid must be within 0..1")
        if self.partial_max_qty is not None and self.partial_max_qty < 1:
            raise ValueError("partial_max_qty must be at least 1")
        if self.delay_s < 0:
            raise ValueError("delay_s must not be negative")


def check_limit(req: OrderRequest, limit: Decimal) -> None:
    problem = limit_problem(limit, req.is_combo)
    if problem is not None:
        raise BrokerError(f"sim: {problem}")


def check_request(req: OrderRequest) -> None:
    problem = request_problem(req)
    if problem is not None:
        raise BrokerError(f"sim: {problem}")


def base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def crosses(model: SimFillModel, rng: random.Random, limit: Decimal, bid: Decimal, ask: Decimal, side: Side) -> bool:
    """Whether a limit fills in this pass: at once when marketable, never below the mid (buy) or
    above it (sell), in between with the model's probability."""
    mid = (bid + ask) / 2
    if side == "BUY":
        if limit >= ask:
            return True
        if limit < mid:
            return False
        frac = float((limit - mid) / (ask - mid)) if ask > mid else 1.0
    else:
        if limit <= bid:
            return True
        if limit > mid:
            return False
        frac = float((mid - limit) / (mid - bid)) if mid > bid else 1.0
    if model.always_fill_at_mid:
        return True
    return rng.random() < model.p_at_mid + (1 - model.p_at_mid) * frac


def combo_prices(limit: Decimal, legs: list[tuple[Side, tuple[Decimal, Decimal]]]) -> list[Decimal]:
    """Prices of a BUY/SELL pair (in the order given) with buy − sell = the net limit, each inside
    its own bid/ask when possible."""
    quotes = dict(legs)
    (bb, ba), (sb, sa) = quotes["BUY"], quotes["SELL"]
    lo, hi = max(sb, bb - limit), min(sa, ba - limit)
    sell = ((sb + sa) / 2).quantize(CENT)
    if lo <= hi:
        sell = min(max(sell, lo), hi)
    buy = sell + limit
    if buy < CENT:
        buy, sell = CENT, CENT - limit
    return [buy if side == "BUY" else sell for side, _ in legs]


def order_commission(ins: Instrument, done: int, charged: Decimal, qty: int, price: Decimal) -> Decimal:
    """The commission of one execution of ``qty`` after ``done`` already filled (and ``charged``)
    on the same order leg: options 0.65 USD a contract, stocks per `stock_commission`, with the
    1 USD minimum applied once per order, so partial fills add up to the fee of one fill."""
    total = done + qty
    due = max(OPTION_FEE * total, OPTION_MIN_FEE) if isinstance(ins, OptionContract) else stock_commission(total, price)
    return max(due - charged, Decimal(0)).quantize(CENT)
