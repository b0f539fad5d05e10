"""The IB account: every holding (stocks, options, bonds, then cash by currency) and the summary
(net liquidation, cash, buying power, available funds in USD), from ib_async's positions,
portfolio and account values (asked once when ib_async holds none yet).

Quantities come from the positions subscription (``reqPositions``: IB pushes every change at once,
trades made in TWS or IBKR Mobile included, and a short position is negative); prices and values
from the portfolio (``reqAccountUpdates``, which IB refreshes less often)."""

from __future__ import annotations

from decimal import Decimal

from ib_async import Contract

from broker.base import AccountSummary, BrokerError, Position
from broker.ib import convert as cv
from broker.ib.connection import IBConnection

PER_SHARE = Decimal("0.0001")


class IBAccount:
    """Positions and the account summary of the connection's account."""

    def __init__(self, conn: IBConnection) -> None:
        self._conn = conn

    async def _account_values(self) -> dict[tuple[str, str], str]:
        ib, account = self._conn.ib, self._conn.account
        values = ib.accountValues(account)
        if not values:
            await self._conn.call(lambda: ib.reqAccountUpdatesAsync(account), "account values")
            values = ib.accountValues(account)
        return {(v.tag, v.currency): v.value for v in values}

    async def positions(self) -> list[Position]:
        """Every holding of the account (stocks, options, bonds; a short one with a negative
        quantity), then cash by currency. The quantity is IB's position, whoever traded it."""
        self._conn.require_connected()
        ib, account = self._conn.ib, self._conn.account
        marks = {it.contract.conId: it for it in ib.portfolio(account)}
        out: list[Position] = []
        held = ib.positions(account)
        if not held and marks:  # the positions subscription failed: the portfolio's quantities
            out = [_holding(it.contract, it.position, it.averageCost, cv.dec(it.marketPrice),
                            cv.dec(it.marketValue)) for it in marks.values() if it.position]
        for p in held:
            if not p.position:
                continue
            it = marks.get(p.contract.conId)
            price = cv.dec(it.marketPrice) if it is not None else None
            worth = cv.dec(it.marketValue) if it is not None and it.position == p.position else None
            if worth is None and price is not None:  # the portfolio lags the position: value it now
                worth = price * (cv.dec(p.position) or Decimal(0)) * _multiplier(p.contract)
            out.append(_holding(it.contract if it is not None else p.contract, p.position, p.avgCost, price, worth))
        values = await self._account_values()
        for (tag, cur), value in sorted(values.items()):
            amount = cv.parse_decimal(value)
            if tag == "CashBalance" and cur != "BASE" and amount is not None:
                out.append(Position("cash", cur, f"{cur} cash", amount, Decimal(1), Decimal(1), amount, cur))
        return out

    async def account_summary(self) -> AccountSummary:
        self._conn.require_connected()
        values = await self._account_values()
        base = next((cur for (tag, cur) in values if tag == "NetLiquidation" and cur != "BASE"), "USD")

        def get(tag: str, cur: str = base) -> Decimal | None:
            v = values.get((tag, cur))
            return cv.parse_decimal(v) if v is not None else None

        net = get("NetLiquidation")
        if net is None:
            raise BrokerError(f"ib: account {self._conn.account} reported no net liquidation value yet")
        cash = {cur: a for (tag, cur), v in values.items()
                if tag == "CashBalance" and cur != "BASE" and (a := cv.parse_decimal(v)) is not None}
        available = get("AvailableFunds") or Decimal(0)
        if base != "USD":  # IB reports funds in the base currency; the engine checks USD
            rate = get("ExchangeRate", "USD")
            available = cash.get("USD", available / rate if rate else Decimal(0))
        extra = {k: v for k in ("TotalCashValue", "GrossPositionValue", "ExcessLiquidity", "MaintMarginReq")
                 if (v := get(k)) is not None}
        return AccountSummary(net, cash, get("BuyingPower") or Decimal(0), available, base, extra)


def _multiplier(c: Contract) -> int:
    return int(float(c.multiplier or 1)) if c.secType in ("OPT", "FOP") else 1


def _holding(c: Contract, qty: float, avg_cost: float, price: Decimal | None, value: Decimal | None) -> Position:
    """A holding with its average cost per share (an option's per-contract cost / its multiplier)."""
    ins = cv.from_ib(c)
    mult = _multiplier(c)
    avg = cv.dec(avg_cost) or Decimal(0)
    return Position(cv.category(c.secType), c.symbol, cv.description(c, ins), cv.dec(qty) or Decimal(0),
                    (avg / mult).quantize(PER_SHARE), price, value, c.currency or "USD", ins)
