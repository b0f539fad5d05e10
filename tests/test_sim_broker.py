"""The sim broker as the engine (and a user watching it) sees it: quotes, the option chain,
limit-order fills with commissions, partial fills, combos, cancels, the account, and what a
restarted engine finds when it reconnects to the same broker."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import ROUND_CEILING, Decimal
from itertools import pairwise
from typing import Any

import pytest

from broker.base import (
    BrokerError,
    ConnectionState,
    Execution,
    OrderLeg,
    OrderRequest,
    OrderStatus,
    OrderUpdate,
    StockContract,
)
from broker.clock import SimClock, WallClock
from broker.sim import SimBroker, SimFillModel
from broker.sim_market import QQQM_RATIO, DailyBar, IvSource, PricePath
from strategy.calendar import NY, nyse
from strategy.model import OptionContract, OptionQuote
from strategy.rules import stock_commission
from tests.harness import Recorder

CAL = nyse()
CENT = Decimal("0.01")
START = date(2024, 3, 4)  # a Monday
CLOSES = [500.0, 502.0, 498.0, 505.0, 503.0, 507.0, 506.0, 510.0, 508.0, 509.0]
LEAPS = OptionContract("QQQ", date(2025, 6, 20), Decimal(480))
LATER = OptionContract("QQQ", date(2025, 12, 19), Decimal(470))
QQQM = StockContract("QQQM")


@dataclass
class World:
    broker: SimBroker
    clock: SimClock
    path: PricePath
    rec: Recorder

    async def quote(self, c: OptionContract) -> OptionQuote:
        (q,) = await self.broker.option_quotes([c])
        return q

    async def ask(self, c: OptionContract) -> Decimal:
        q = await self.quote(c)
        assert q.ask is not None
        return q.ask

    async def bid(self, c: OptionContract) -> Decimal:
        q = await self.quote(c)
        assert q.bid is not None
        return q.bid

    async def passes(self, n: int, seconds: float = 15) -> None:
        for _ in range(n):
            await self.clock.sleep(seconds)


def bars_for(start: date, closes: list[float]) -> list[DailyBar]:
    sessions = CAL.sessions_between(start, start + timedelta(days=3 * len(closes) + 10))[: len(closes)]
    bars, prev = [], closes[0]
    for s, c in zip(sessions, closes, strict=True):
        bars.append(DailyBar(s.day, prev, max(prev, c) * 1.004, min(prev, c) * 0.996, c))
        prev = c
    return bars


async def world(*, start: date = START, closes: list[float] = CLOSES, day: int = 1, at: dtime = dtime(10, 0),
                connect: bool = True, **kw: Any) -> World:
    bars = bars_for(start, closes)
    path = PricePath.from_bars(bars, CAL, seed=2)
    clock = SimClock(datetime.combine(bars[day].day, at, NY).astimezone(UTC))
    kw.setdefault("mixed_account", False)
    broker = SimBroker(clock, path, IvSource.constant(0.2), calendar=CAL, seed=1, **kw)
    rec = Recorder()
    broker.set_listener(rec)
    if connect:
        await broker.connect()
    return World(broker, clock, path, rec)


def buy(ref: str, c: OptionContract | StockContract, qty: int, limit: Decimal) -> OrderRequest:
    return OrderRequest(ref, (OrderLeg(c, "BUY"),), qty, limit)


def sell(ref: str, c: OptionContract | StockContract, qty: int, limit: Decimal) -> OrderRequest:
    return OrderRequest(ref, (OrderLeg(c, "SELL"),), qty, limit)


# --- market data ------------------------------------------------------------------------------


async def test_stock_quotes_follow_the_path() -> None:
    w = await world()
    q = await w.broker.quote("QQQ")
    assert q.last == Decimal(str(round(w.path.price_at(w.clock.now()), 2)))
    assert q.bid == q.last - CENT and q.ask == q.last + CENT and q.time == w.clock.now()
    m = await w.broker.quote("QQQM")
    assert m.last is not None and q.last is not None
    assert abs(m.last - q.last * Decimal(str(QQQM_RATIO))) <= CENT
    assert m.bid is not None and m.ask is not None and m.bid < m.last < m.ask
    await w.clock.sleep(3600)
    assert (await w.broker.quote("QQQ")).last == Decimal(str(round(w.path.price_at(w.clock.now()), 2)))
    with pytest.raises(BrokerError):
        await w.broker.quote("TSLA")


async def test_prev_close_is_the_previous_sessions_close() -> None:
    w = await world(day=2)  # Wednesday 2024-03-06
    assert await w.broker.prev_close("QQQ") == Decimal("502.00")
    assert await w.broker.prev_close("QQQM") == Decimal(str(round(502 * QQQM_RATIO, 2)))
    w.clock.advance_to(datetime(2024, 3, 9, 12, tzinfo=NY))  # Saturday: Friday's change is shown
    assert await w.broker.prev_close("QQQ") == Decimal("505.00")
    w.clock.advance_to(datetime(2024, 3, 11, 8, tzinfo=NY))  # Monday before the open: Friday's close
    assert await w.broker.prev_close("QQQ") == Decimal("503.00")
    first = await world(day=0)
    with pytest.raises(BrokerError):
        await first.broker.prev_close("QQQ")


async def test_historical_daily_bars_are_the_bars_of_closed_sessions() -> None:
    w = await world(day=3, at=dtime(12, 0))  # Thursday 2024-03-07, during the session
    bars = bars_for(START, CLOSES)
    assert await w.broker.historical_daily_bars("QQQ", START, bars[-1].day) == bars[:3]  # not today's
    assert await w.broker.historical_daily_bars("QQQ", bars[1].day, bars[1].day) == [bars[1]]
    (qqqm,) = await w.broker.historical_daily_bars("QQQM", START, START)
    assert qqqm.day == START and qqqm.close == pytest.approx(bars[0].close * QQQM_RATIO)
    w.clock.advance_to(datetime.combine(bars[3].day, dtime(16, 0), NY))
    assert (await w.broker.historical_daily_bars("QQQ", START, bars[-1].day))[-1] == bars[3]
    with pytest.raises(BrokerError):
        await w.broker.historical_daily_bars("TSLA", START, bars[-1].day)
    with pytest.raises(BrokerError):
        await w.broker.historical_daily_bars("QQQ", bars[2].day, bars[1].day)


async def test_connection_detail_and_market_data() -> None:
    w = await world(connect=False)
    assert w.broker.state == ConnectionState.DOWN and w.broker.detail == "not connected"
    await w.broker.connect()
    assert w.broker.state == ConnectionState.CONNECTED and w.broker.detail
    assert w.broker.market_data == "live"


async def test_chain_lists_third_fridays_moved_for_holidays_and_leaps() -> None:
    w = await world(start=date(2024, 5, 6))
    today = w.clock.now().astimezone(NY).date()
    chain = await w.broker.option_chain("QQQ")
    assert list(chain.expiries) == sorted(set(chain.expiries)) and all(e > today for e in chain.expiries)
    assert date(2024, 5, 17) in chain.expiries and date(2024, 6, 21) in chain.expiries
    assert date(2025, 4, 17) in chain.expiries and date(2025, 4, 18) not in chain.expiries  # Good Friday
    assert not CAL.is_session(date(2026, 6, 19))  # Juneteenth on the third Friday of June 2026
    assert date(2026, 6, 18) in chain.expiries
    assert {date(2025, 1, 17), date(2026, 1, 16), date(2025, 12, 19)} <= set(chain.expiries)
    assert sum(1 for e in chain.expiries if (e - today).days >= 365) >= 4
    for e in chain.expiries:  # Fridays (weeklies, third-Friday monthlies), moved for holidays, or quarter-ends
        friday = e.weekday() == 4 or (e.weekday() == 3 and not CAL.is_session(e + timedelta(1)))
        quarter_end = e.month % 3 == 0 and CAL.next_session(e) is not None and CAL.next_session(e).day.month != e.month  # type: ignore[union-attr]
        assert CAL.is_session(e) and (friday or quarter_end), e
    monthlies_and_leaps = [e for e in chain.expiries if (e - today).days > 60 and 15 <= e.day <= 21]
    assert all(e.weekday() == 4 or not CAL.is_session(e + timedelta(1)) for e in monthlies_and_leaps)
    with pytest.raises(BrokerError):
        await w.broker.option_chain("SPY")


async def test_chain_strikes_around_spot() -> None:
    w = await world()
    strikes = (await w.broker.option_chain("QQQ")).strikes
    assert strikes[0] <= 255 and strikes[-1] >= 745 and Decimal(500) in strikes
    assert all(k % 5 == 0 for k in strikes)
    cheap = await world(closes=[100.0, 101.0, 99.0])
    strikes = (await cheap.broker.option_chain("QQQ")).strikes
    assert Decimal(73) in strikes and Decimal(101) in strikes and strikes[0] <= 51 and strikes[-1] >= 149


async def test_option_quotes_are_sane() -> None:
    w = await world()
    calls = [OptionContract("QQQ", LEAPS.expiry, Decimal(k)) for k in range(300, 701, 25)]
    puts = [OptionContract("QQQ", LEAPS.expiry, Decimal(k), "P") for k in range(300, 701, 25)]
    cq, pq = await w.broker.option_quotes(calls), await w.broker.option_quotes(puts)
    assert len(cq) == len(pq) == len(calls)
    for q in cq + pq:
        assert q.bid is not None and q.ask is not None and 0 < q.bid < q.ask
        assert q.ask - q.bid >= Decimal("0.05") and q.bid == q.bid.quantize(CENT) and q.ask == q.ask.quantize(CENT)
        assert q.min_tick == CENT and q.time == w.clock.now() and q.iv is not None and 0.1 < q.iv < 0.35
    assert all(q.delta is not None and 0 < q.delta < 1 for q in cq)
    assert all(q.delta is not None and -1 < q.delta < 0 for q in pq)
    assert all(a.mid > b.mid for a, b in pairwise(cq))  # type: ignore[operator]
    assert all(a.delta > b.delta for a, b in pairwise(cq))  # type: ignore[operator]
    assert all(a.mid < b.mid for a, b in pairwise(pq))  # type: ignore[operator]
    near = await w.quote(OptionContract("QQQ", date(2024, 6, 21), Decimal(480)))
    assert near.mid is not None and (await w.quote(LEAPS)).mid > near.mid  # type: ignore[operator]


async def test_unlisted_and_expired_contracts_are_left_out_but_old_strikes_stay_quoted() -> None:
    w = await world()
    odd = [
        OptionContract("QQQ", date(2024, 1, 19), Decimal(480)),  # expired
        OptionContract("QQQ", date(2025, 6, 18), Decimal(480)),  # not an expiry (a Wednesday)
        OptionContract("QQQ", LEAPS.expiry, Decimal("480.5")),  # no such strike
        OptionContract("SPY", LEAPS.expiry, Decimal(480)),  # not QQQ
    ]
    assert await w.broker.option_quotes(odd) == []
    off_grid = OptionContract("QQQ", LEAPS.expiry, Decimal(503))  # listed when QQQ traded below 150
    assert off_grid.strike not in (await w.broker.option_chain("QQQ")).strikes
    assert len(await w.broker.option_quotes([off_grid, LEAPS])) == 2


async def test_every_listed_contract_is_quoted() -> None:
    w = await world()
    chain = await w.broker.option_chain("QQQ")
    contracts = [OptionContract("QQQ", e, k) for e in chain.expiries for k in chain.strikes]
    quotes = await w.broker.option_quotes(contracts)
    assert len(quotes) == len(contracts)


# --- orders -----------------------------------------------------------------------------------


async def test_marketable_buy_fills_at_its_limit_with_commission() -> None:
    w = await world()
    ask = await w.ask(LEAPS)
    broker_id = await w.broker.place_order(buy("b1", LEAPS, 1, ask))
    assert broker_id.isdigit()
    ex, up = w.rec.events
    assert isinstance(ex, Execution) and isinstance(up, OrderUpdate)
    assert (ex.order_ref, ex.broker_order_id, ex.side, ex.qty, ex.price) == ("b1", broker_id, "BUY", 1, ask)
    assert ex.commission == Decimal("1.00") and ex.time == w.clock.now()
    assert (up.status, up.filled, up.remaining) == (OrderStatus.FILLED, 1, 0)
    assert await w.broker.open_orders() == []
    summary = await w.broker.account_summary()
    assert summary.cash_by_currency["USD"] == Decimal(100_000) - ask * 100 - Decimal("1.00")


async def test_sell_fills_at_or_below_the_bid_and_closes_the_position() -> None:
    w = await world()
    await w.broker.place_order(buy("b", LEAPS, 5, await w.ask(LEAPS)))
    assert w.rec.executions[-1].commission == Decimal("3.25")
    await w.broker.place_order(sell("s", LEAPS, 5, await w.bid(LEAPS)))
    assert w.rec.updates[-1].status == OrderStatus.FILLED
    assert [p for p in await w.broker.positions() if p.category == "option"] == []


async def test_passive_limits_do_not_fill() -> None:
    w = await world()
    await w.broker.place_order(buy("b", LEAPS, 1, await w.ask(LEAPS)))
    await w.broker.place_order(buy("low", LEAPS, 1, await w.bid(LEAPS)))
    await w.broker.place_order(sell("high", LEAPS, 1, await w.ask(LEAPS) + 1))
    await w.passes(40)
    assert [e.order_ref for e in await w.broker.executions()] == ["b"]
    assert sorted(o.order_ref for o in await w.broker.open_orders()) == ["high", "low"]


async def test_limit_inside_the_spread_fills_by_seeded_chance() -> None:
    async def fill_pass() -> int:
        w = await world()
        q = await w.quote(LEAPS)
        assert q.mid is not None
        await w.broker.place_order(buy("m", LEAPS, 1, q.mid.quantize(CENT, rounding=ROUND_CEILING)))
        for n in range(60):
            if await w.broker.executions():
                return n
            await w.clock.sleep(15)
        return -1

    first = await fill_pass()
    assert first >= 0 and first == await fill_pass()


async def test_fill_model_switches() -> None:
    w = await world(fill=SimFillModel(always_fill_at_mid=True))
    q = await w.quote(LEAPS)
    assert q.mid is not None
    await w.broker.place_order(buy("mid", LEAPS, 1, q.mid.quantize(CENT, rounding=ROUND_CEILING)))
    assert len(await w.broker.executions()) == 1
    never = await world(fill=SimFillModel(never_fill=True))
    await never.broker.place_order(buy("x", LEAPS, 1, await never.ask(LEAPS) + 5))
    await never.passes(10)
    assert await never.broker.executions() == []
    slow = await world(fill=SimFillModel(delay_s=30))
    await slow.broker.place_order(buy("d", LEAPS, 1, await slow.ask(LEAPS) + 5))
    await slow.clock.sleep(15)
    assert await slow.broker.executions() == []
    await slow.clock.sleep(15)
    assert len(await slow.broker.executions()) == 1


async def test_partial_fills_add_up_with_one_minimum_commission() -> None:
    w = await world(fill=SimFillModel(partial_max_qty=1))
    await w.broker.place_order(buy("p", LEAPS, 3, await w.ask(LEAPS) + 1))
    assert [(u.status, u.filled, u.remaining) for u in w.rec.updates] == [(OrderStatus.PARTIALLY_FILLED, 1, 2)]
    (working,) = await w.broker.open_orders()
    assert (working.status, working.filled) == (OrderStatus.PARTIALLY_FILLED, 1)
    await w.passes(3)
    kinds = [type(e).__name__ for e in w.rec.events]
    assert kinds == ["Execution", "OrderUpdate"] * 3
    assert w.rec.updates[-1].status == OrderStatus.FILLED
    fills = await w.broker.executions()
    assert sum(e.qty for e in fills) == 3
    assert sum((e.commission or Decimal(0)) for e in fills) == Decimal("1.95")  # as one fill of 3
    assert len({e.exec_id for e in fills}) == 3


async def test_stock_commissions() -> None:
    w = await world()
    await w.broker.place_order(buy("few", QQQM, 10, Decimal(250)))
    await w.broker.place_order(buy("many", QQQM, 300, Decimal(250)))
    few, many = await w.broker.executions()
    assert few.commission == Decimal("1.00") and many.commission == Decimal("1.50")
    assert many.commission == stock_commission(300, Decimal(250))


async def test_exec_ids_are_unique_across_orders_and_broker_instances() -> None:
    w = await world()
    for i in range(20):
        await w.broker.place_order(buy(f"q{i}", QQQM, 1, Decimal(250)))
    ids = [e.exec_id for e in await w.broker.executions()]
    assert len(set(ids)) == 20
    later = await world(day=3)  # a new sim process on the same database must not reuse ids
    await later.broker.place_order(buy("q0", QQQM, 1, Decimal(250)))
    assert (await later.broker.executions())[0].exec_id not in ids


async def test_cancel_and_modify() -> None:
    w = await world()
    bid = await w.bid(LEAPS)
    await w.broker.place_order(buy("c", LEAPS, 2, bid))
    await w.broker.cancel_order("c")
    (up,) = w.rec.updates
    assert (up.order_ref, up.status, up.filled, up.remaining) == ("c", OrderStatus.CANCELLED, 0, 2)
    assert await w.broker.open_orders() == []
    for call in (w.broker.cancel_order("c"), w.broker.cancel_order("nope"), w.broker.modify_order("c", bid)):
        with pytest.raises(BrokerError):
            await call
    await w.broker.place_order(buy("m", LEAPS, 1, bid))
    (o,) = await w.broker.open_orders()
    assert o.request.limit == bid
    with pytest.raises(BrokerError):
        await w.broker.modify_order("m", Decimal("1.234"))
    await w.broker.modify_order("m", await w.ask(LEAPS))
    assert w.rec.updates[-1].status == OrderStatus.FILLED
    with pytest.raises(BrokerError):
        await w.broker.cancel_order("m")  # already filled


async def test_cancel_keeps_partial_fills() -> None:
    w = await world(fill=SimFillModel(partial_max_qty=1))
    await w.broker.place_order(buy("p", LEAPS, 3, await w.ask(LEAPS)))
    await w.broker.cancel_order("p")
    assert (w.rec.updates[-1].status, w.rec.updates[-1].filled, w.rec.updates[-1].remaining) == (
        OrderStatus.CANCELLED, 1, 2)
    await w.passes(3)
    assert len(await w.broker.executions()) == 1


async def test_day_orders_are_cancelled_at_the_close() -> None:
    w = await world()
    await w.broker.place_order(buy("day", LEAPS, 1, await w.bid(LEAPS)))
    w.clock.advance_to(w.path.sessions[1].close)
    (up,) = w.rec.updates
    assert up.status == OrderStatus.CANCELLED and "close" in up.message
    assert await w.broker.open_orders() == []


async def test_an_order_ref_is_accepted_once() -> None:
    w = await world(starting_cash=Decimal(1000))
    await w.broker.place_order(buy("filled", QQQM, 1, Decimal(250)))
    await w.broker.place_order(buy("working", QQQM, 1, Decimal(100)))
    with pytest.raises(BrokerError):
        await w.broker.place_order(buy("rejected", LEAPS, 1, Decimal(100)))
    for ref in ("filled", "working", "rejected"):
        with pytest.raises(BrokerError, match="already used"):
            await w.broker.place_order(buy(ref, QQQM, 1, Decimal(250)))
    assert len(await w.broker.executions()) == 1


@pytest.mark.parametrize(("request_", "message"), [
    (buy("q0", LEAPS, 0, Decimal(10)), "quantity"),
    (OrderRequest("noleg", (), 1, Decimal(10)), "leg"),
    (buy("lim0", LEAPS, 1, Decimal(0)), "positive"),
    (buy("tick", LEAPS, 1, Decimal("10.005")), "0.01"),
    (buy("tsla", StockContract("TSLA"), 1, Decimal(10)), "not traded"),
    (buy("eur", StockContract("QQQM", "EUR"), 1, Decimal(10)), "not traded"),
    (buy("exp", OptionContract("QQQ", date(2024, 1, 19), Decimal(480)), 1, Decimal(10)), "not a listed|expired"),
    (buy("wed", OptionContract("QQQ", date(2025, 6, 18), Decimal(480)), 1, Decimal(10)), "not a listed"),
    (OrderRequest("2buy", (OrderLeg(LEAPS, "BUY"), OrderLeg(LATER, "BUY")), 1, Decimal(1)), "combo"),
    (OrderRequest("same", (OrderLeg(LEAPS, "SELL"), OrderLeg(LEAPS, "BUY")), 1, Decimal(1)), "combo"),
    (OrderRequest("ratio", (OrderLeg(LEAPS, "BUY", 2),), 1, Decimal(1)), "1:1"),
])
async def test_malformed_orders_are_refused(request_: OrderRequest, message: str) -> None:
    w = await world()
    with pytest.raises(BrokerError, match=message):
        await w.broker.place_order(request_)
    assert await w.broker.executions() == [] and w.rec.events == []


async def test_no_orders_while_closed_or_disconnected() -> None:
    w = await world(at=dtime(8, 0))
    with pytest.raises(BrokerError, match="closed"):
        await w.broker.place_order(buy("early", QQQM, 1, Decimal(250)))
    off = await world(connect=False)
    assert off.broker.state == ConnectionState.DOWN
    with pytest.raises(BrokerError, match="not connected"):
        await off.broker.place_order(buy("x", QQQM, 1, Decimal(250)))


async def test_combo_roll_fills_both_legs_at_the_net_price() -> None:
    w = await world()
    await w.broker.place_order(buy("open", LEAPS, 1, await w.ask(LEAPS)))
    cash = (await w.broker.account_summary()).cash_by_currency["USD"]
    old, new = await w.quote(LEAPS), await w.quote(LATER)
    assert old.bid and old.ask and new.bid and new.ask
    combo = (OrderLeg(LEAPS, "SELL"), OrderLeg(LATER, "BUY"))
    await w.broker.place_order(OrderRequest("cheap", combo, 1, new.bid - old.ask))  # the net bid: no fill
    await w.passes(20)
    assert [e.order_ref for e in await w.broker.executions()] == ["open"]
    await w.broker.cancel_order("cheap")
    w.rec.events.clear()
    net = new.ask - old.bid
    await w.broker.place_order(OrderRequest("roll", combo, 1, net))
    s, b, up = w.rec.events
    assert isinstance(s, Execution) and isinstance(b, Execution) and isinstance(up, OrderUpdate)
    assert (s.side, s.instrument, b.side, b.instrument) == ("SELL", LEAPS, "BUY", LATER)
    assert s.exec_id != b.exec_id and s.order_ref == b.order_ref == "roll"
    assert b.price - s.price == net
    assert old.bid <= s.price <= old.ask and new.bid <= b.price <= new.ask
    assert up.status == OrderStatus.FILLED and up.filled == 1
    held = {p.contract for p in await w.broker.positions() if p.category == "option"}
    assert held == {LATER}
    after = (await w.broker.account_summary()).cash_by_currency["USD"]
    assert after == cash - net * 100 - Decimal("2.00")


async def test_insufficient_cash_and_unheld_sales_are_rejected() -> None:
    w = await world(starting_cash=Decimal(1000))
    with pytest.raises(BrokerError, match="insufficient funds"):
        await w.broker.place_order(buy("big", LEAPS, 1, await w.ask(LEAPS)))
    (up,) = w.rec.updates
    assert up.status == OrderStatus.REJECTED and "insufficient funds" in up.message
    assert await w.broker.executions() == []
    assert (await w.broker.account_summary()).cash_by_currency["USD"] == Decimal(1000)
    with pytest.raises(BrokerError, match="cannot sell"):
        await w.broker.place_order(sell("short", LEAPS, 1, await w.bid(LEAPS)))
    assert w.rec.updates[-1].status == OrderStatus.REJECTED


async def test_cash_is_checked_again_at_fill_time() -> None:
    probe = await world()
    ask = await probe.ask(LEAPS)
    w = await world(starting_cash=ask * 150)
    await w.broker.place_order(buy("passive", LEAPS, 1, await w.bid(LEAPS)))
    await w.broker.place_order(buy("first", LEAPS, 1, ask))
    await w.broker.modify_order("passive", ask)
    assert w.rec.updates[-1].order_ref == "passive" and w.rec.updates[-1].status == OrderStatus.REJECTED
    assert [e.order_ref for e in await w.broker.executions()] == ["first"]


# --- account ----------------------------------------------------------------------------------


async def test_mixed_account_totals_match_positions_and_cash() -> None:
    w = await world(mixed_account=True)
    ask = await w.ask(LEAPS)
    await w.broker.place_order(buy("o", LEAPS, 2, ask))
    await w.broker.place_order(buy("m", QQQM, 10, Decimal(250)))
    positions = await w.broker.positions()
    assert {p.category for p in positions} == {"stock", "option", "bond", "cash"}
    assert {p.symbol for p in positions if p.category == "stock"} >= {"AAPL", "MSFT", "QQQM"}
    mine = next(p for p in positions if p.contract == LEAPS)
    q = await w.quote(LEAPS)
    assert mine.qty == 2 and mine.avg_cost == ask and mine.market_price == q.mid
    assert mine.market_value == q.mid * 200  # type: ignore[operator]
    cash = {p.symbol: p.market_value for p in positions if p.category == "cash"}
    summary = await w.broker.account_summary()
    assert summary.cash_by_currency == cash
    assert cash["USD"] == Decimal(100_000) - ask * 200 - Decimal("1.30") - Decimal(2500) - Decimal("1.00")
    assert cash["EUR"] == Decimal(5000)
    usd = sum((p.market_value or Decimal(0)) for p in positions if p.currency == "USD")
    eur = sum((p.market_value or Decimal(0)) for p in positions if p.currency == "EUR")
    assert summary.net_liquidation == (usd + eur * Decimal("1.08")).quantize(CENT)
    assert summary.available_funds_usd == cash["USD"] and summary.base_currency == "USD"


async def test_plain_account_holds_only_what_the_bot_bought() -> None:
    w = await world()
    assert [(p.category, p.symbol) for p in await w.broker.positions()] == [("cash", "USD")]
    summary = await w.broker.account_summary()
    assert summary.net_liquidation == summary.available_funds_usd == Decimal(100_000)


# --- restart and reconciliation ------------------------------------------------------------------


async def test_a_restarted_engine_finds_every_fill_and_working_order() -> None:
    w = await world(fill=SimFillModel(delay_s=60))
    await w.broker.place_order(buy("a", QQQM, 5, Decimal(250)))
    await w.broker.place_order(buy("b", LEAPS, 1, await w.bid(LEAPS)))
    await w.broker.modify_order("b", await w.bid(LEAPS) - CENT)
    w.broker.set_listener(None)  # the engine dies with "a" in flight
    await w.broker.close()
    await w.clock.sleep(60)  # the broker keeps working: "a" fills while nobody listens
    fresh = Recorder()
    w.broker.set_listener(fresh)
    await w.broker.connect()
    assert w.broker.state == ConnectionState.CONNECTED
    (fill,) = await w.broker.executions()
    assert fill.order_ref == "a" and fill.qty == 5 and fill.commission == Decimal("1.00")
    (working,) = await w.broker.open_orders()
    assert working.order_ref == "b" and working.request.limit == await w.bid(LEAPS) - CENT
    assert await w.broker.executions(since=w.clock.now() + timedelta(seconds=1)) == []
    assert await w.broker.executions(since=fill.time) == [fill]
    assert fresh.events == []


async def test_wall_clock_matching_runs_in_a_background_task() -> None:
    today = datetime.now(UTC).astimezone(NY).date()
    path = PricePath.wall_clock(CAL, 1, today - timedelta(days=10), today + timedelta(days=10))
    broker = SimBroker(WallClock(), path, IvSource.constant(0.2), calendar=CAL)

    def matchers() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "sim-matcher" and not t.done()]

    await broker.connect()
    states = [broker.state]
    assert len(matchers()) == 1
    await broker.close()
    states.append(broker.state)
    assert states == [ConnectionState.CONNECTED, ConnectionState.DOWN] and matchers() == []
    assert (await broker.account_summary()).cash_by_currency["USD"] == Decimal(100_000)


async def test_a_new_sim_process_can_adopt_the_bots_open_lots() -> None:
    w = await world()
    w.broker.adopt_position(LEAPS, 2, Decimal("55.00"))
    (p,) = [p for p in await w.broker.positions() if p.category == "option"]
    assert p.qty == 2 and p.avg_cost == Decimal("55.00")
    await w.broker.place_order(sell("exit", LEAPS, 2, await w.bid(LEAPS)))
    assert w.rec.updates[-1].status == OrderStatus.FILLED
