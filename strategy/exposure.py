"""How much money a setting change puts at risk, so a change that raises it is confirmed with the
figure (``/set size 10%`` on a 138,000 USD account is about 12,000 USD a lot, not "10%").

Pure: the net liquidation and the price of one contract are given by the shell."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from strategy.rules import sized_quantity
from strategy.settings import PositionSize, SettingChange, StrategySettings

MULTIPLIER = 100

# The settings whose raise puts more money at risk: a bigger lot, a higher cap on it, more lots, a
# deeper (dearer) call or a wider delta range, a wider spread or slippage accepted on live orders.
RAISES_WHEN_HIGHER: frozenset[str] = frozenset({
    "max_premium", "max_positions", "target_delta", "delta_tolerance", "max_spread_pct", "max_slippage_pct"})


@dataclass(frozen=True, slots=True)
class Exposure:
    """The money a new lot takes (None when it cannot be told) and with every lot held."""

    per_lot: Decimal | None
    lots: int
    cap: Decimal  # Max premium: no lot costs more
    uncapped: Decimal | None = None  # the size's amount, when Max premium cut it down (or skips it)
    skipped: bool = False  # the size does not fit Max premium: entries are skipped
    contract_cost: Decimal | None = None  # the price of one contract it was estimated at

    @property
    def total(self) -> Decimal | None:
        return None if self.per_lot is None else self.per_lot * self.lots


def raises_money_at_risk(change: SettingChange) -> bool:
    """A change that raises the money at risk is confirmed before it is stored."""
    if change.key == "position_size":
        old, new = change.old, change.new
        assert isinstance(old, PositionSize) and isinstance(new, PositionSize)
        if (old.pct is None) != (new.pct is None):
            return True  # contracts ↔ a share of net liquidation: a different amount, confirm it
        if new.pct is not None and old.pct is not None:
            return new.pct > old.pct
        return (new.contracts or 0) > (old.contracts or 0)
    if change.key in RAISES_WHEN_HIGHER:
        return bool(change.new > change.old)
    return False


def exposure(settings: StrategySettings, net_liquidation: Decimal | None, contract_cost: Decimal | None) -> Exposure:
    """The money a new lot takes under ``settings``: its size at ``contract_cost`` (one contract's
    premium in USD, e.g. at the last entry's price), cut down to Max premium as the entry does."""
    size, cap, lots = settings.position_size, settings.max_premium, settings.max_positions
    if size.pct is not None:
        if net_liquidation is None:
            return Exposure(None, lots, cap)
        share = net_liquidation * size.pct / 100
        if contract_cost is None or contract_cost <= 0:
            amount = min(share, cap)
            return Exposure(amount, lots, cap, share if share > cap else None)
        qty = sized_quantity(size.pct, net_liquidation, contract_cost / MULTIPLIER, MULTIPLIER)
        qty = min(qty, int(cap // contract_cost))
        return Exposure(qty * contract_cost, lots, cap, share if share > cap else None, qty == 0, contract_cost)
    contracts = size.contracts or 0
    if contract_cost is None or contract_cost <= 0:
        return Exposure(None, lots, cap)
    amount = contracts * contract_cost
    if amount > cap:
        return Exposure(Decimal(0), lots, cap, amount, True, contract_cost)
    return Exposure(amount, lots, cap, contract_cost=contract_cost)
