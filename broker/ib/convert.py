"""Pure conversions between `ib_async` objects and the broker interface's plain types, for the
modules of `broker.ib`. No I/O here."""

from __future__ import annotations

import math
from datetime import date, datetime
from decimal import Decimal

from ib_async import ComboLeg, Contract, Fill, Option, OptionComputation, Stock, Ticker, Trade

from broker.base import Execution, Instrument, OrderStatus, PositionCategory, StockContract
from strategy.calendar import NY
from strategy.model import OptionContract

CENT = Decimal("0.01")

# Errors after which an order is exactly as it was (a refused modify or cancel), not cancelled.
ORDER_UNCHANGED = frozenset({104, 161, 10147, 10148})
ACTIVE = frozenset({"PendingSubmit", "ApiPending", "PreSubmitted", "Submitted", "PendingCancel"})
CANCELLED = frozenset({"Cancelled", "ApiCancelled", "Inactive"})


def dec(x: float | str | Decimal | None) -> Decimal | None:
    """A float from IB as a Decimal without binary noise (500.0 → 500, 12.35 → 12.35)."""
    if x is None:
        return None
    if isinstance(x, float) and not math.isfinite(x):
        return None
    d = Decimal(str(round(x, 8))) if isinstance(x, float) else Decimal(x)
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return Decimal(int(d))
    return d.normalize()


def parse_decimal(text: str) -> Decimal | None:
    """An account value IB sends as text; None when it is not a finite number."""
    try:
        d = Decimal(text)
    except (ArithmeticError, ValueError):
        return None
    return d if d.is_finite() else None


def price(x: float | None) -> Decimal | None:
    """A quoted price: NaN, unset (−1) and non-positive values are 'no price'."""
    if x is None or not math.isfinite(x) or x <= 0:
        return None
    return dec(x)


def has_data(t: Ticker) -> bool:
    """Whether a snapshot brought any price at all."""
    return any(price(x) is not None for x in (t.bid, t.ask, t.last, t.close))


def model_delta_iv(greeks: OptionComputation | None) -> tuple[float | None, float | None]:
    """Delta and implied volatility from IB's model greeks; (None, None) when IB sent no usable
    delta (the strategy then computes one from the mid with the user's rate and dividend yield)."""
    if greeks is None or greeks.delta is None or not math.isfinite(greeks.delta):
        return None, None
    iv = greeks.impliedVol
    return greeks.delta, iv if iv is not None and math.isfinite(iv) else None


def ib_date(text: str) -> date:
    return datetime.strptime(text[:8], "%Y%m%d").date()


def bar_day(d: date | datetime) -> date:
    """A bar's day in New York (ib_async dates daily bars; a bar with a time is converted)."""
    return d.astimezone(NY).date() if isinstance(d, datetime) else d


def to_ib(ins: Instrument, exchange: str = "SMART") -> Contract:
    """An unqualified IB contract for an instrument."""
    if isinstance(ins, OptionContract):
        return Option(ins.symbol, ins.expiry.strftime("%Y%m%d"), float(ins.strike), ins.right, exchange,
                      multiplier=str(ins.multiplier), currency="USD")
    return Stock(ins.symbol, exchange, ins.currency)


def bag(symbol: str, legs: list[tuple[int, int, str]]) -> Contract:
    """A combo (BAG) contract from (conId, ratio, action) legs."""
    return Contract(secType="BAG", symbol=symbol, exchange="SMART", currency="USD",
                    comboLegs=[ComboLeg(conId=c, ratio=r, action=a, exchange="SMART") for c, r, a in legs])


def from_ib(c: Contract) -> Instrument | None:
    """The instrument of a stock or option contract; None for anything else (BAG, bonds, ...)."""
    if c.secType == "OPT":
        right = (c.right or "C")[:1].upper()
        strike = dec(c.strike)
        if right not in ("C", "P") or strike is None or not c.lastTradeDateOrContractMonth:
            return None
        return OptionContract(c.symbol, ib_date(c.lastTradeDateOrContractMonth), strike, right,  # type: ignore[arg-type]
                              int(float(c.multiplier or 100)))
    if c.secType == "STK":
        return StockContract(c.symbol, c.currency or "USD")
    return None


def category(sec_type: str) -> PositionCategory:
    if sec_type in ("OPT", "FOP", "WAR"):
        return "option"
    if sec_type == "BOND":
        return "bond"
    if sec_type == "CASH":
        return "cash"
    return "stock"


def description(c: Contract, ins: Instrument | None) -> str:
    if isinstance(ins, OptionContract):
        return ins.key
    return c.localSymbol or c.symbol


def execution(fill: Fill) -> Execution | None:
    """One leg's fill as the engine sees it; None for a combo's summary line or an unknown kind."""
    c = fill.contract
    if c.secType == "BAG":
        return None
    ins = from_ib(c)
    if ins is None:
        return None
    ex = fill.execution
    report = fill.commissionReport
    commission = dec(report.commission) if report.execId else None
    px = dec(ex.price)
    assert px is not None
    return Execution(ex.execId, ex.orderRef, str(ex.orderId), ins, "BUY" if ex.side == "BOT" else "SELL",
                     int(ex.shares), px, ex.time, commission)


def status_of(trade: Trade) -> tuple[OrderStatus, str] | None:
    """The engine's view of an IB order status; None when nothing changed for the engine (a refused
    modify/cancel, a validation warning, a pending cancel)."""
    st = trade.orderStatus.status
    last = trade.log[-1] if trade.log else None
    code = last.errorCode if last is not None else 0
    filled = int(trade.orderStatus.filled)
    if st == "Filled":
        return OrderStatus.FILLED, ""
    if st in CANCELLED:
        if code in ORDER_UNCHANGED:
            return None
        if code and code != 202 and filled == 0:
            return OrderStatus.REJECTED, last.message if last is not None else f"error {code}"
        return OrderStatus.CANCELLED, "" if not code else (last.message if last is not None else "")
    if st in ACTIVE and st != "PendingCancel":
        return (OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.SUBMITTED), ""
    return None
