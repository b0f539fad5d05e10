"""Campaign: the hard daily caps hold whatever the chat settings say."""

from __future__ import annotations

import os
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.sim_market import DailyBar
from storage import ledger
from storage.db import close_database, open_database
from storage.models import Fill, Order
from strategy.rules import DailyLimits
from tests.harness import make_world
from tests.test_engine import bars_oc, days

N = int(os.environ.get("QQQ_CAMPAIGN_GUARD", "12"))


def dip_days() -> list[DailyBar]:
    # a dip, a crash and a rally: entries, a roll and take-profits all want to trade
    return bars_oc([(500, 500), (490, 489), (455, 452), (520, 540)])


@settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(qty=st.integers(1, 100), max_premium=st.sampled_from(["1000", "50000", "1000000"]),
       max_pos=st.integers(1, 20), cap_orders=st.integers(1, 4), cap_premium=st.sampled_from([1000, 8000, 30000]))
async def test_daily_caps_hold_whatever_the_settings(tmp_path_factory: object, qty: int, max_premium: str,
                                                      max_pos: int, cap_orders: int, cap_premium: int) -> None:
    path = tmp_path_factory.mktemp("guard") / "bot.db"  # type: ignore[attr-defined]
    db = open_database(f"sqlite:///{path}")
    try:
        bars = dip_days()
        w = await make_world(bars, settings={"order_quantity": str(qty), "max_premium": max_premium,
                                             "max_positions": str(max_pos), "entry_drop": "0.5"},
                             capital=Decimal(10_000_000), limits=DailyLimits(cap_orders, Decimal(cap_premium)))
        await w.run_days(days(bars))
        for day in days(bars):
            sent = [o for o in Order.select().where(Order.session_day == day) if o.status != "abandoned"]
            assert len(sent) <= cap_orders
            assert ledger.premium_bought_on(day) <= cap_premium
            bought = sum((f.price * f.qty * 100 for f in Fill.select().join(Order).where(
                (Order.session_day == day) & (Fill.sec_type == "OPT") & (Fill.side == "BUY"))), Decimal(0))
            assert bought <= cap_premium
    finally:
        close_database(db)
