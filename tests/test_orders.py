"""The order runner's reprice rules against a broker that never fills: the limit steps toward the
far side, and a buy never goes above the price its budget was checked against."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from peewee import Database

from bot.engine.orders import OrderRunner, new_order_ref
from broker.base import BrokerError, OrderLeg, OrderRequest, StockContract
from broker.clock import SimClock
from storage import ledger
from strategy.model import NY
from strategy.settings import StrategySettings


class NeverFills:
    """Accepts orders and modifications, fills nothing."""

    def __init__(self) -> None:
        self.limits: list[Decimal] = []
        self.cancelled: list[str] = []

    async def place_order(self, req: OrderRequest) -> str:
        self.limits.append(req.limit)
        return "1"

    async def modify_order(self, ref: str, limit: Decimal) -> None:
        self.limits.append(limit)

    async def cancel_order(self, ref: str) -> None:
        self.cancelled.append(ref)


async def run_buy(db: Database, max_buy_limit: Decimal | None) -> tuple[NeverFills, str]:
    broker = NeverFills()
    clock = SimClock(datetime(2025, 3, 3, 10, 0, tzinfo=NY))
    runner = OrderRunner(broker, clock)  # type: ignore[arg-type]
    asks = iter([Decimal(40 + i) for i in range(1, 100)])

    async def rising() -> tuple[Decimal, Decimal, Decimal]:
        ask = next(asks)
        return ask - Decimal("0.10"), ask, Decimal("0.01")

    req = OrderRequest(new_order_ref(), (OrderLeg(StockContract("QQQM"), "BUY"),), 10, Decimal("39.95"))
    out = await runner.run(req, purpose="recycle", session_day=date(2025, 3, 3), settings=StrategySettings(),
                           quote=rising, tick=Decimal("0.01"), max_buy_limit=max_buy_limit)
    # This broker never confirms the cancel: the order stays cancel pending (it could still fill).
    assert out.status == "cancel_pending" and broker.cancelled == [req.order_ref]
    return broker, req.order_ref


async def test_a_buy_follows_the_market_without_a_bound(db: Database) -> None:
    broker, _ = await run_buy(db, None)
    assert broker.limits[-1] > Decimal(45)  # chased the rising ask


async def test_a_buy_never_reprices_above_its_budgeted_limit(db: Database) -> None:
    broker, ref = await run_buy(db, Decimal("40.00"))
    assert broker.limits == [Decimal("39.95"), Decimal("40.00")]  # one reprice, up to the bound, no further
    order = ledger.order_by_ref(ref)
    assert order is not None and order.limit <= Decimal("40.00")


async def test_a_refused_reprice_keeps_the_order_working(db: Database) -> None:
    class Refuses(NeverFills):
        async def modify_order(self, ref: str, limit: Decimal) -> None:
            raise BrokerError("modify refused")

    broker = Refuses()
    clock = SimClock(datetime(2025, 3, 3, 10, 0, tzinfo=NY))
    runner = OrderRunner(broker, clock)  # type: ignore[arg-type]

    async def quote() -> tuple[Decimal, Decimal, Decimal]:
        return Decimal("40.00"), Decimal("41.00"), Decimal("0.01")

    req = OrderRequest(new_order_ref(), (OrderLeg(StockContract("QQQM"), "BUY"),), 10, Decimal("40.50"))
    out = await runner.run(req, purpose="recycle", session_day=date(2025, 3, 3), settings=StrategySettings(),
                           quote=quote, tick=Decimal("0.01"))
    assert out.status == "cancel_pending"  # timed out; this broker never confirms the cancel
    order = ledger.order_by_ref(req.order_ref)
    assert order is not None and order.limit == Decimal("40.50")
