"""Lot accounting: average prices, realized P&L and the recycling pool, as pure arithmetic."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal


def average_price(old_qty: int, old_avg: Decimal, qty: int, price: Decimal) -> Decimal:
    """Average fill price after adding ``qty`` at ``price`` (premium per share)."""
    total = old_qty + qty
    if total <= 0:
        raise ValueError("average price of an empty position")
    return (old_avg * old_qty + price * qty) / total


def entry_commission_share(entry_commission: Decimal, qty_closed: int, qty_opened: int) -> Decimal:
    """The part of a lot's entry commissions that a closing fill of ``qty_closed`` realizes."""
    if qty_opened <= 0:
        return Decimal(0)
    return entry_commission * qty_closed / qty_opened


def closing_pnl(
    avg_price: Decimal, price: Decimal, qty: int, multiplier: int, exit_commission: Decimal, entry_share: Decimal
) -> Decimal:
    """Realized P&L of a closing fill, net of its own and its share of the entry commissions."""
    return (price - avg_price) * qty * multiplier - exit_commission - entry_share


def unrealized_pnl(avg_price: Decimal, mid: Decimal, qty: int, multiplier: int) -> Decimal:
    """An open lot's unrealized P&L at the mid (before the commissions of a sale)."""
    return (mid - avg_price) * qty * multiplier


def recycling_pool(realized_option_pnl: Iterable[Decimal], qqqm_deployed: Iterable[Decimal]) -> Decimal:
    """pool = Σ realized option P&L (net of all commissions) − Σ QQQM deployed (fills + commissions)."""
    return sum(realized_option_pnl, Decimal(0)) - sum(qqqm_deployed, Decimal(0))
