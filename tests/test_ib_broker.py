"""The `ib` broker (ib_async 2.1.0) against the fake IB Gateway over loopback TCP: connection and
account checks, quotes, chains, greeks, orders and fills, combos, rejects, delayed data, pacing,
reconnects. Every test fails on an ERROR record from ib_async it did not expect."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest

from broker.base import (
    BrokerError,
    ConnectionState,
    OrderLeg,
    OrderRequest,
    OrderStatus,
    StockContract,
)
from strategy.calendar import NY
from strategy.model import OptionContract
from strategy.selection import quote_delta
from strategy.settings import StrategySettings
from tests.fake_gateway import FillMode
from tests.fake_gateway.testing import DAY, START, IbErrorGuard, Rig, RigFactory, ib_errors, rig_factory

__all__ = ["ib_errors", "rig_factory"]

CENT = Decimal("0.01")


async def eventually(cond: Callable[[], bool], limit_s: float = 3.0) -> None:
    """Poll until ``cond`` holds (work in flight on the loop), failing after ``limit_s``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


async def leaps(rig: Rig, n: int = 3) -> list[OptionContract]:
    chain = await rig.broker.option_chain("QQQ")
    expiry = next(e for e in chain.expiries if (e - DAY).days >= 365)
    spot = rig.market.spot_at(rig.clock.now())
    strikes = sorted(chain.strikes, key=lambda k: abs(float(k) - spot * 0.95))[:n]
    return [OptionContract("QQQ", expiry, k, "C") for k in sorted(strikes)]


def commission(rig: Rig, exec_id: str) -> Decimal | None:
    """The commission the listener learnt for an execution (with it, or in a later report)."""
    for e in rig.rec.events:
        if getattr(e, "exec_id", None) == exec_id and getattr(e, "commission", None) is not None:
            return e.commission  # type: ignore[attr-defined,no-any-return]
    return None


def buy(contract: OptionContract | StockContract, qty: int, limit: Decimal, ref: str = "qqqbot-t1") -> OrderRequest:
    return OrderRequest(ref, (OrderLeg(contract, "BUY"),), qty, limit)


# --- connection ------------------------------------------------------------------------------------


async def test_connect_detects_a_paper_account(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    assert rig.broker.mode == "paper" and rig.broker.account == "DU1234567"
    assert rig.broker.state == ConnectionState.CONNECTED
    assert rig.rec.states == [ConnectionState.CONNECTED]
    assert rig.gw.requests["handshake"] == 1


async def test_a_live_account_is_refused_unless_allowed(rig_factory: RigFactory) -> None:
    rig = await rig_factory(account="U7654321", connect=False)
    with pytest.raises(BrokerError, match="LIVE account"):
        await rig.broker.connect()
    assert rig.broker.state == ConnectionState.DOWN
    assert rig.gw.working_orders() == []
    await eventually(lambda: not rig.gw.sessions)
    allowed = await rig_factory(account="U7654321", allow_live=True)
    assert allowed.broker.mode == "live" and allowed.broker.state == ConnectionState.CONNECTED


async def test_a_refused_connection_raises_a_clear_error(rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow_text("API connection failed|Make sure API port")
    rig = await rig_factory(connect=False)
    await rig.gw.stop_listening()
    with pytest.raises(BrokerError, match="cannot connect to IB Gateway"):
        await rig.broker.connect()
    assert rig.broker.state == ConnectionState.DOWN


# --- market data -----------------------------------------------------------------------------------


async def test_quote_and_previous_close(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    q = await rig.broker.quote("QQQ")
    spot = Decimal(round(rig.market.spot_at(rig.clock.now()) * 100)) / 100
    assert q.last == spot and q.bid == spot - CENT and q.ask == spot + CENT
    assert q.time == rig.clock.now()
    qm = await rig.broker.quote("QQQM")
    assert qm.last is not None and abs(qm.last - spot * Decimal("0.4115")) <= CENT
    prev = rig.market.path.prev_close(DAY)
    assert prev is not None
    assert await rig.broker.prev_close("QQQ") == Decimal(str(round(prev, 2)))
    assert await rig.broker.prev_close("QQQ") == Decimal(str(round(prev, 2)))
    assert rig.gw.requests["historicalData"] == 1  # cached for the day


async def test_option_chain_from_sec_def_opt_params(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    chain = await rig.broker.option_chain("QQQ")
    assert chain.symbol == "QQQ"
    assert chain.expiries == tuple(sorted(chain.expiries)) and chain.expiries[0] >= DAY
    assert any((e - DAY).days >= 365 for e in chain.expiries)
    assert all(isinstance(k, Decimal) and k == k.to_integral_value() and str(k).isdigit() for k in chain.strikes)
    assert rig.gw.requests["secDefOptParams"] == 1
    await rig.broker.option_chain("QQQ")
    assert rig.gw.requests["secDefOptParams"] == 1


async def test_option_quotes_use_model_greeks(rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(200)
    rig = await rig_factory()
    contracts = await leaps(rig)
    unlisted = OptionContract("QQQ", contracts[0].expiry, Decimal("501.5"), "C")
    quotes = await rig.broker.option_quotes([*contracts, unlisted])
    assert [q.contract for q in quotes] == contracts  # the unlisted one is left out
    now = rig.clock.now()
    for q in quotes:
        ref = rig.market.option_quote(q.contract, now)
        assert ref is not None and q.bid == ref.bid and q.ask == ref.ask
        assert q.delta == pytest.approx(ref.delta) and q.iv == pytest.approx(ref.iv)
        assert q.time == now and q.min_tick == CENT
    assert rig.gw.requests["mktData"] == 3  # only the listed contracts asked for
    assert rig.gw.open_subscriptions() == 0


async def test_option_quotes_without_greeks_leave_the_delta_to_the_strategy(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    contracts = await leaps(rig)
    rig.gw.greeks = False
    quotes = await rig.broker.option_quotes(contracts)
    now = rig.clock.now()
    spot = Decimal(str(rig.market.spot_at(now)))
    assert len(quotes) == 3
    for q in quotes:
        ref = rig.market.option_quote(q.contract, now)
        assert ref is not None and ref.delta is not None
        assert q.delta is None and q.iv is None  # no model greeks: no delta from the adapter
        delta = quote_delta(q, spot, DAY, StrategySettings())  # the one place that computes it
        assert delta is not None and abs(delta - ref.delta) < 0.02


async def test_a_snapshot_that_never_ends_does_not_hang(rig_factory: RigFactory) -> None:
    rig = await rig_factory(request_timeout=0.2)
    rig.gw.snapshot_never_ends = True
    q = await rig.broker.quote("QQQ")  # the ticks came; the end did not
    assert q.last is not None
    await rig.settle()
    assert rig.gw.requests["cancelMktData"] == 1 and rig.gw.open_subscriptions() == 0


@pytest.mark.parametrize("code", [354, 10089, 10167, 10168])
async def test_no_subscription_falls_back_to_delayed_data(rig_factory: RigFactory, ib_errors: IbErrorGuard,
                                                          code: int) -> None:
    ib_errors.allow(code)
    rig = await rig_factory()
    rig.gw.md_error = code
    q = await rig.broker.quote("QQQ")
    assert q.last is not None
    assert rig.broker.state == ConnectionState.DEGRADED and rig.broker.market_data == "delayed"
    state, detail = [e for e in rig.rec.events if isinstance(e, tuple)][-1]
    assert state == ConnectionState.DEGRADED and "delayed" in detail and str(code) in detail
    assert rig.gw.sessions[0].md_type == 3
    quotes = await rig.broker.option_quotes(await leaps(rig, 2))
    assert len(quotes) == 2 and all(q.delta is not None for q in quotes)  # delayed greeks (tick 83)


async def test_historical_bars_with_a_pacing_violation(rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(420)
    rig = await rig_factory()
    rig.gw.hist_errors.append((420, "Historical data request pacing violation"))
    start, end = DAY - timedelta(days=8), DAY - timedelta(days=1)
    bars = await rig.broker.historical_daily_bars("QQQ", start, end)
    expected = [d for d in sorted(rig.market.bars) if start <= d <= end]
    assert [b.day for b in bars] == expected
    assert bars[-1].close == pytest.approx(rig.market.path.close_of(expected[-1]), abs=0.006)
    assert rig.gw.requests["historicalData"] == 2


async def test_a_slow_gateway_times_out_instead_of_hanging(rig_factory: RigFactory) -> None:
    rig = await rig_factory(request_timeout=0.1)
    rig.gw.latency = 0.3
    with pytest.raises(BrokerError, match="timed out"):
        await rig.broker.option_chain("QQQ")


# --- orders ----------------------------------------------------------------------------------------


async def test_a_limit_order_fills_with_its_commission(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    (c,) = await leaps(rig, 1)
    (q,) = await rig.broker.option_quotes([c])
    assert q.ask is not None
    broker_id = await rig.broker.place_order(buy(c, 1, q.ask))
    (ex,) = rig.rec.executions
    assert ex.order_ref == "qqqbot-t1" and ex.broker_order_id == broker_id and ex.instrument == c
    assert ex.side == "BUY" and ex.qty == 1 and ex.price == q.ask and commission(rig, ex.exec_id) == Decimal("1.00")
    assert ex.time == rig.clock.now()
    assert rig.rec.updates[-1].status == OrderStatus.FILLED
    (gw_order,) = rig.gw.orders.values()
    assert gw_order.order_ref == "qqqbot-t1" and gw_order.status == "Filled"
    assert [e.exec_id for e in rig.gw.executions] == [ex.exec_id]
    (again,) = await rig.broker.executions()
    assert again.exec_id == ex.exec_id and again.commission == Decimal("1.00")
    pos = [p for p in await rig.broker.positions() if p.contract == c]
    assert len(pos) == 1 and pos[0].category == "option" and pos[0].qty == 1
    assert pos[0].avg_cost == q.ask  # per share (IB reports it per contract)
    with pytest.raises(BrokerError, match="already used"):
        await rig.broker.place_order(buy(c, 1, q.ask))


async def test_partial_fills_are_separate_executions(rig_factory: RigFactory) -> None:
    rig = await rig_factory(fill=FillMode("partial", partial_qty=1))
    (c,) = await leaps(rig, 1)
    (q,) = await rig.broker.option_quotes([c])
    assert q.ask is not None
    await rig.broker.place_order(buy(c, 3, q.ask))
    rig.gw.match()
    rig.gw.match()
    await rig.settle()
    execs = rig.rec.executions
    assert [e.qty for e in execs] == [1, 1, 1] and len({e.exec_id for e in execs}) == 3
    assert [(u.status, u.filled) for u in rig.rec.updates] == [
        (OrderStatus.SUBMITTED, 0), (OrderStatus.PARTIALLY_FILLED, 1), (OrderStatus.PARTIALLY_FILLED, 2),
        (OrderStatus.FILLED, 3)]
    assert sum(commission(rig, e.exec_id) or 0 for e in execs) == Decimal("1.95")


async def test_a_commission_report_after_the_fill(rig_factory: RigFactory) -> None:
    rig = await rig_factory(fill=FillMode(late_commission=True))
    (c,) = await leaps(rig, 1)
    (q,) = await rig.broker.option_quotes([c])
    assert q.ask is not None
    await rig.broker.place_order(buy(c, 2, q.ask))
    (ex,) = rig.rec.executions
    assert ex.commission is None and not rig.rec.commissions
    rig.gw.flush_commissions()
    await rig.settle()
    (report,) = rig.rec.commissions
    assert report.exec_id == ex.exec_id and report.commission == Decimal("1.30")
    (again,) = await rig.broker.executions()
    assert again.commission == Decimal("1.30")


async def test_modify_reprices_a_working_order(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    (c,) = await leaps(rig, 1)
    (q,) = await rig.broker.option_quotes([c])
    assert q.bid is not None and q.ask is not None
    await rig.broker.place_order(buy(c, 1, q.bid))
    assert not rig.rec.executions and rig.rec.updates[-1].status == OrderStatus.SUBMITTED
    with pytest.raises(BrokerError, match="invalid limit"):
        await rig.broker.modify_order("qqqbot-t1", q.ask + Decimal("0.001"))
    await rig.broker.modify_order("qqqbot-t1", q.ask)
    await rig.settle()
    assert [e.price for e in rig.rec.executions] == [q.ask]
    (o,) = rig.gw.orders.values()
    assert o.limits == [q.bid, q.ask] and o.status == "Filled"
    with pytest.raises(BrokerError, match="already filled"):
        await rig.broker.modify_order("qqqbot-t1", q.ask)


async def test_a_fill_after_the_cancel_still_reaches_the_listener(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    (c,) = await leaps(rig, 1)
    (q,) = await rig.broker.option_quotes([c])
    assert q.bid is not None
    await rig.broker.place_order(buy(c, 2, q.bid))
    await rig.broker.cancel_order("qqqbot-t1")
    assert rig.rec.updates[-1].status == OrderStatus.CANCELLED
    with pytest.raises(BrokerError, match="already cancelled"):
        await rig.broker.cancel_order("qqqbot-t1")
    rig.gw.late_fill("qqqbot-t1", 1)
    await rig.settle()
    (ex,) = rig.rec.executions
    assert ex.order_ref == "qqqbot-t1" and ex.qty == 1 and commission(rig, ex.exec_id) == Decimal("1.00")
    assert rig.rec.updates[-1].status == OrderStatus.CANCELLED  # final once
    assert [e.exec_id for e in await rig.broker.executions()] == [ex.exec_id]


async def test_a_rejected_order_raises_and_is_reported(rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(201)
    rig = await rig_factory()
    (c,) = await leaps(rig, 1)
    rig.gw.reject_next = (201, "Order rejected - reason: insufficient funds")
    with pytest.raises(BrokerError, match="insufficient funds"):
        await rig.broker.place_order(buy(c, 1, Decimal("50.00")))
    (u,) = rig.rec.updates
    assert u.status == OrderStatus.REJECTED and "insufficient funds" in u.message
    assert rig.gw.orders == {}


async def test_a_roll_is_one_combo_order(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    old, _, new = await leaps(rig, 3)
    qo, qn = await rig.broker.option_quotes([old, new])
    assert qo.ask is not None and qo.bid is not None and qn.ask is not None and qn.bid is not None
    await rig.broker.place_order(buy(old, 1, qo.ask, "qqqbot-old"))
    net_ask = qn.ask - qo.bid
    req = OrderRequest("qqqbot-roll", (OrderLeg(old, "SELL"), OrderLeg(new, "BUY")), 1, net_ask)
    await rig.broker.place_order(req)
    roll = [e for e in rig.rec.executions if e.order_ref == "qqqbot-roll"]
    assert sorted((e.side, e.instrument) for e in roll) == [("BUY", new), ("SELL", old)]
    by_side = {e.side: e.price for e in roll}
    assert by_side["BUY"] - by_side["SELL"] == net_ask
    assert rig.rec.updates[-1].status == OrderStatus.FILLED and rig.rec.updates[-1].order_ref == "qqqbot-roll"
    gw_roll = rig.gw.order_by_ref("qqqbot-roll")
    assert gw_roll.contract.sec_type == "BAG" and len(gw_roll.contract.legs) == 2
    assert len([e for e in rig.gw.executions if e.order is gw_roll]) == 3  # two legs + IB's BAG summary line
    held = {p.contract: p.qty for p in await rig.broker.positions() if p.category == "option"}
    assert held.get(new) == 1 and old not in held
    execs = await rig.broker.executions()
    assert len(execs) == 3 and all(e.commission is not None for e in execs)


# --- account ---------------------------------------------------------------------------------------


async def test_positions_and_account_are_categorised(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    positions = await rig.broker.positions()
    cats = {(p.category, p.symbol) for p in positions}
    assert ("stock", "AAPL") in cats and ("bond", "US91282CGM73") in cats
    assert ("cash", "USD") in cats and ("cash", "EUR") in cats
    aapl = next(p for p in positions if p.symbol == "AAPL")
    assert aapl.qty == 50 and aapl.avg_cost == Decimal(150) and aapl.market_price == Decimal(190)
    acct = await rig.broker.account_summary()
    assert acct.available_funds_usd == Decimal(100_000) and acct.cash_by_currency == {"USD": Decimal(100_000),
                                                                                       "EUR": Decimal(5000)}
    assert acct.net_liquidation == Decimal(100_000) + Decimal(5400) + 50 * 190 + 10 * 965
    (c,) = await leaps(rig, 1)
    (q,) = await rig.broker.option_quotes([c])
    assert q.ask is not None
    await rig.broker.place_order(buy(c, 1, q.ask))
    await rig.settle()
    after = await rig.broker.account_summary()
    assert after.available_funds_usd == Decimal(100_000) - q.ask * 100 - 1


# --- connection trouble ----------------------------------------------------------------------------


async def test_reconnect_after_a_dropped_connection_replays_missed_fills(
        rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow_text("Peer closed connection|Connection reset by peer")
    rig = await rig_factory()
    (c,) = await leaps(rig, 1)
    (q,) = await rig.broker.option_quotes([c])
    assert q.bid is not None and q.ask is not None
    await rig.broker.place_order(buy(c, 2, q.bid))
    rig.gw.drop_connections()
    await eventually(lambda: rig.broker.state == ConnectionState.DOWN)
    rig.gw.late_fill("qqqbot-t1", 1)  # while the bot is away: nobody hears it live
    await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED)
    assert rig.rec.states == [ConnectionState.CONNECTED, ConnectionState.DOWN, ConnectionState.CONNECTED]
    (ex,) = rig.rec.executions  # replayed after the reconnect, with its commission
    assert ex.qty == 1 and ex.commission is not None
    assert rig.rec.updates[-1].status == OrderStatus.PARTIALLY_FILLED
    (bo,) = await rig.broker.open_orders()
    assert bo.order_ref == "qqqbot-t1" and bo.filled == 1 and bo.request.legs[0].instrument == c
    await rig.broker.modify_order("qqqbot-t1", q.ask)  # the order is re-bound to the new session
    await rig.settle()
    assert sum(e.qty for e in rig.rec.executions) == 2 and rig.rec.updates[-1].status == OrderStatus.FILLED
    assert len(rig.gw.executions) == 2 and rig.gw.requests["handshake"] == 2


async def test_reconnect_backs_off_while_the_gateway_refuses(rig_factory: RigFactory,
                                                              ib_errors: IbErrorGuard) -> None:
    ib_errors.allow_text("Peer closed connection|Connection reset by peer|API connection failed|Make sure API port")
    rig = await rig_factory()
    await rig.gw.stop_listening()
    rig.gw.drop_connections()
    await eventually(lambda: rig.broker.stats["reconnects"] >= 3)
    assert rig.broker.state == ConnectionState.DOWN
    task = rig.broker._recovery
    rig.broker._on_disconnected()  # a second disconnect event: still one reconnect task
    assert rig.broker._recovery is task
    with pytest.raises(BrokerError, match="not connected"):
        await rig.broker.quote("QQQ")
    await rig.gw.start_listening()
    await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED)
    assert (await rig.broker.quote("QQQ")).last is not None


async def test_ib_connectivity_errors_1100_and_1102(rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(1100, 1102)
    rig = await rig_factory()
    rig.gw.push_error(1100, "Connectivity between IB and Trader Workstation has been lost.")
    await eventually(lambda: rig.broker.state == ConnectionState.DOWN)
    rig.gw.push_error(1102, "Connectivity between IB and Trader Workstation has been restored - data maintained.")
    await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED)
    assert rig.gw.requests["handshake"] == 1  # same socket
    assert rig.rec.states == [ConnectionState.CONNECTED, ConnectionState.DOWN, ConnectionState.CONNECTED]


async def test_connectivity_never_restored_forces_a_reconnect(rig_factory: RigFactory,
                                                             ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(2110)
    rig = await rig_factory(connectivity_grace_s=0.05)
    rig.gw.push_error(2110, "Connectivity between Trader Workstation and server is broken.")
    await eventually(lambda: rig.gw.requests["handshake"] == 2 and rig.broker.state == ConnectionState.CONNECTED)


def test_new_york_is_the_session_zone() -> None:
    assert str(NY) == "America/New_York"


async def test_historical_implied_volatility_from_ib(rig_factory: RigFactory) -> None:
    """IB's daily OPTION_IMPLIED_VOLATILITY of QQQ, for /backtest: one value per session."""
    rig = await rig_factory()
    iv = await rig.broker.historical_implied_vol("QQQ", START, DAY)
    bars = await rig.broker.historical_daily_bars("QQQ", START, DAY)
    assert set(iv) == {b.day for b in bars} and all(v == pytest.approx(0.22) for v in iv.values())
