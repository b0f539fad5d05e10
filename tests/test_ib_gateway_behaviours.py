"""IB Gateway as it really behaves (SPEC "IB Gateway as it really behaves", README's table), each
through the real ib_async client against the fake gateway: IB's servers lost behind an open socket
(1100/1101/1102), farm status, pacing, a competing session, history refused, unknown contracts,
orders rejected or cancelled by IB, partial fills then a cancel, fills made while the bot was away,
the nightly reset, the daily restart and the weekly login; the broker-side support reconciliation
needs (every bot order at IB, option positions, trades made outside the bot); and the fake
gateway's controls the order-safety campaign uses. Every test fails on an ERROR record from
ib_async it did not declare."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest

from bot.control.views import StatusView
from bot.engine.orders import ORDER_REF_PREFIX
from bot.logs import RecentLines, RedactFilter
from broker.base import BrokerError, ConnectionState, NotSent, OrderLeg, OrderRequest, OrderStatus
from broker.ib.orders import BOT_ORDER_REF_PREFIX
from handlers.format import status_text
from strategy.model import OptionContract
from tests.fake_gateway import FillMode
from tests.fake_gateway.testing import DAY, IbErrorGuard, Rig, RigFactory, fast_broker, ib_errors, rig_factory

__all__ = ["ib_errors", "rig_factory"]

DROPPED = "Peer closed connection|Connection reset by peer|API connection failed|Make sure API port"


async def eventually(cond: Callable[[], bool], limit_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


async def leap(rig: Rig) -> OptionContract:
    chain = await rig.broker.option_chain("QQQ")
    expiry = next(e for e in chain.expiries if (e - DAY).days >= 365)
    spot = rig.market.spot_at(rig.clock.now())
    strike = min(chain.strikes, key=lambda k: abs(float(k) - spot * 0.95))
    return OptionContract("QQQ", expiry, strike, "C")


def order(contract: OptionContract, qty: int, limit: Decimal, ref: str = "qqqbot-t1",
          side: str = "BUY") -> OrderRequest:
    return OrderRequest(ref, (OrderLeg(contract, "BUY" if side == "BUY" else "SELL"),), qty, limit)


async def working(rig: Rig, qty: int = 1, ref: str = "qqqbot-t1") -> tuple[OptionContract, Decimal, Decimal]:
    """A bot order working at IB (a buy at the bid, below the mid): its contract, bid and ask."""
    c = await leap(rig)
    (q,) = await rig.broker.option_quotes([c])
    assert q.bid is not None and q.ask is not None
    await rig.broker.place_order(order(c, qty, q.bid, ref))
    assert rig.gw.order_by_ref(ref).working
    return c, q.bid, q.ask


def details(rig: Rig) -> list[tuple[ConnectionState, str]]:
    return [e for e in rig.rec.events if isinstance(e, tuple)]


# --- 1100 / 1101 / 1102: IB's servers lost behind an open socket ---------------------------------


async def test_1100_sends_nothing_and_says_ib_servers_unreachable(rig_factory: RigFactory,
                                                                  ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(1100, 1102)
    rig = await rig_factory(connectivity_grace_s=30)
    c, bid, ask = await working(rig)
    before = rig.gw.requests.copy()
    rig.gw.lose_servers(1100)
    await eventually(lambda: rig.broker.state == ConnectionState.DOWN)
    assert "IB servers unreachable" in rig.broker.detail and "1100" in rig.broker.detail
    assert rig.broker.down_since == rig.clock.now() and rig.broker.servers_reachable is False
    with pytest.raises(NotSent, match="IB servers unreachable"):
        await rig.broker.place_order(order(c, 1, bid, "qqqbot-t2"))
    with pytest.raises(NotSent, match="IB servers unreachable"):
        await rig.broker.modify_order("qqqbot-t1", ask)
    with pytest.raises(NotSent, match="IB servers unreachable"):
        await rig.broker.cancel_order("qqqbot-t1")
    await rig.settle()
    for kind in ("placeOrder", "modify", "cancelOrder"):
        assert rig.gw.requests[kind] == before[kind]  # nothing reached the gateway
    assert rig.gw.order_by_ref("qqqbot-t1").working and rig.gw.requests["handshake"] == 1
    rig.clock.advance_to(rig.clock.now() + timedelta(minutes=7))
    rig.gw.restore_servers(data_kept=True)
    await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED)
    assert rig.broker.down_since is None and "back after 7 min" in rig.broker.detail
    assert rig.gw.requests["accountUpdates"] == before["accountUpdates"]  # 1102: data kept, nothing re-asked
    assert rig.rec.states == [ConnectionState.CONNECTED, ConnectionState.DOWN, ConnectionState.CONNECTED]
    await rig.broker.modify_order("qqqbot-t1", ask)  # trading again
    await rig.settle()
    assert rig.gw.order_by_ref("qqqbot-t1").status == "Filled"


async def test_a_socket_drop_reads_differently_from_ib_servers_lost(rig_factory: RigFactory,
                                                                    ib_errors: IbErrorGuard) -> None:
    ib_errors.allow_text(DROPPED)
    rig = await rig_factory()
    rig.gw.restart(refuse=None)
    await eventually(lambda: rig.broker.state == ConnectionState.DOWN)
    assert "no connection to IB Gateway" in rig.broker.detail and "IB servers" not in rig.broker.detail
    assert rig.broker.servers_reachable is None  # unknown without the gateway
    with pytest.raises(NotSent, match="not connected to IB Gateway"):
        await rig.broker.place_order(order(OptionContract("QQQ", DAY, Decimal(500), "C"), 1, Decimal(1)))
    rig.gw.accept_connections()
    await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED)


async def test_1101_asks_for_the_account_data_again(rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(1100, 1101)
    rig = await rig_factory(connectivity_grace_s=30)
    c = await leap(rig)
    before = rig.gw.requests.copy()
    rig.gw.lose_servers()
    await eventually(lambda: rig.broker.state == ConnectionState.DOWN)
    rig.gw.restore_servers(data_kept=False)
    await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED)
    assert rig.gw.requests["accountUpdates"] == before["accountUpdates"] + 1
    assert rig.gw.requests["positions"] == before["positions"] + 1
    rig.gw.outside_trade(c, "BUY", 2, Decimal("60.00"))  # pushed on the renewed subscription
    await rig.settle()
    assert [p.qty for p in await rig.broker.positions() if p.contract == c] == [2]


async def test_status_is_not_connected_while_the_gateway_still_reports_1100_after_a_reconnect(
        rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    """Issue 17, item 7: the gateway restarts while IB's servers are still unreachable; it tells
    the new session 1100 at once. The bot must stay DOWN ("IB servers unreachable"), not report
    CONNECTED, and /status says how long it has been down."""
    ib_errors.allow(1100, 1102)
    ib_errors.allow_text(DROPPED)
    rig = await rig_factory(connectivity_grace_s=30)
    rig.gw.lose_servers()
    await eventually(lambda: rig.broker.state == ConnectionState.DOWN)
    since = rig.broker.down_since
    rig.gw.drop_connections()  # the socket drops too; the gateway accepts the reconnect at once
    await eventually(lambda: rig.gw.requests["handshake"] == 2 and rig.broker.servers_reachable is False)
    await rig.settle()
    await asyncio.sleep(0.05)
    assert rig.broker.state == ConnectionState.DOWN and "IB servers unreachable" in rig.broker.detail
    assert rig.rec.states == [ConnectionState.CONNECTED, ConnectionState.DOWN]  # never "connected" meanwhile
    assert rig.broker.down_since == since
    rig.clock.advance_to(rig.clock.now() + timedelta(minutes=12))
    broker = rig.broker
    assert broker.down_since is not None
    view = StatusView(mode="paper", broker="ib", connection=broker.state.value, paused="", market_open=True,
                      qqq_last=None, prev_close=None, change_pct=None, next_tick=None, last_tick_time=None,
                      last_tick_summary=None, open_lots=0, max_positions=3, connection_detail=broker.detail,
                      connection_down_for=rig.clock.now() - broker.down_since)
    line = status_text(view, "[PAPER]").splitlines()[1]
    assert line.startswith("Broker: ib (paper) 🔴 down for 12 min — IB servers unreachable: IB Gateway is up")
    rig.gw.restore_servers()
    await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED)
    assert "back after 12 min" in rig.broker.detail


# --- information, pacing, subscriptions, history, contracts --------------------------------------


async def test_farm_status_2103_to_2108_is_information(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    detail = rig.broker.detail
    for code, text in [(2103, "Market data farm connection is broken:usfarm"),
                       (2105, "HMDS data farm connection is broken:ushmds"),
                       (2107, "HMDS data farm connection is inactive but should be available upon demand.ushmds"),
                       (2104, "Market data farm connection is OK:usfarm"),
                       (2106, "HMDS data farm connection is OK:ushmds"),
                       (2108, "Market data farm connection is inactive but should be available upon demand.usfarm")]:
        rig.gw.push_error(code, text)
    await rig.settle()
    assert rig.broker.state == ConnectionState.CONNECTED and rig.broker.detail == detail
    assert rig.rec.states == [ConnectionState.CONNECTED]  # no state change, no alert


async def test_pacing_violation_100_is_retried_after_a_backoff(rig_factory: RigFactory,
                                                             ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(100)
    rig = await rig_factory()
    rig.gw.md_errors.append((100, "Max rate of messages per second has been exceeded:max rate"))
    q = await rig.broker.quote("QQQ")
    assert q.last is not None and rig.gw.requests["mktData"] == 2
    assert rig.broker.state == ConnectionState.CONNECTED


async def test_10197_a_competing_live_session_holds_the_market_data(rig_factory: RigFactory,
                                                                    ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(10197)
    rig = await rig_factory()
    rig.gw.md_error = 10197
    q = await rig.broker.quote("QQQ")  # asked again as delayed data
    assert q.last is not None and q.time == rig.clock.now() - timedelta(minutes=15)  # never traded on
    assert rig.broker.state == ConnectionState.DEGRADED and rig.broker.market_data == "delayed"
    (_, detail), = [e for e in details(rig) if e[0] == ConnectionState.DEGRADED]  # one alert
    assert "a live session elsewhere" in detail and "10197" in detail and "log it out" in detail
    assert (await rig.broker.quote("QQQ")).last is not None and rig.gw.requests["mktData"] == 3


async def test_162_historical_data_refused(rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(162)
    rig = await rig_factory()
    refused = (162, "Historical Market Data Service error message:HMDS query returned no data")
    rig.gw.hist_errors += [refused] * 3
    with pytest.raises(BrokerError, match="no daily bars for QQQ \\(IB error 162\\)"):
        await rig.broker.prev_close("QQQ")
    assert rig.gw.requests["historicalData"] == 3  # retried twice, then given up
    rig.gw.hist_errors.append(refused)
    assert await rig.broker.prev_close("QQQ") > 0  # one refusal: the retry answers


async def test_200_no_security_definition_sends_no_order(rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(200)
    rig = await rig_factory()
    c = await leap(rig)
    gone = OptionContract("QQQ", c.expiry, c.strike + 1, "C")
    rig.gw.vanished.add(gone.key)
    with pytest.raises(BrokerError, match="unknown contract"):
        await rig.broker.place_order(order(gone, 1, Decimal("10.00")))
    assert rig.gw.orders == {} and rig.broker.state == ConnectionState.CONNECTED


# --- orders ended by IB, partial fills, fills while away ------------------------------------------


async def test_201_an_accepted_order_rejected_by_ib(rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(201)
    rig = await rig_factory()
    await working(rig)
    rig.gw.reject_working("qqqbot-t1", "Order rejected - reason: insufficient margin")
    await rig.settle()
    final = rig.rec.updates[-1]
    assert final.status == OrderStatus.REJECTED and "insufficient margin" in final.message
    assert [u.status for u in rig.rec.updates].count(OrderStatus.REJECTED) == 1


async def test_202_an_order_cancelled_by_ib(rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(202)
    rig = await rig_factory()
    await working(rig)
    rig.gw.cancel_by_ib("qqqbot-t1", "Order Canceled - reason: outside of the exchange's risk limits")
    await rig.settle()
    final = rig.rec.updates[-1]
    assert final.status == OrderStatus.CANCELLED and "risk limits" in final.message
    assert not rig.gw.working_orders()


async def test_a_partial_fill_then_a_cancel(rig_factory: RigFactory) -> None:
    rig = await rig_factory(fill=FillMode("partial", partial_qty=1))
    c = await leap(rig)
    (q,) = await rig.broker.option_quotes([c])
    assert q.ask is not None
    await rig.broker.place_order(order(c, 3, q.ask))
    await rig.broker.cancel_order("qqqbot-t1")
    await rig.settle()
    assert sum(e.qty for e in rig.rec.executions) == 1  # fills counted from the executions
    final = rig.rec.updates[-1]
    assert final.status == OrderStatus.CANCELLED and final.filled == 1 and final.remaining == 2
    assert rig.gw.position(c) == 1 and [p.qty for p in await rig.broker.positions() if p.contract == c] == [1]


async def test_a_fill_while_the_bot_was_away_is_known_from_executions(rig_factory: RigFactory,
                                                                    ib_errors: IbErrorGuard) -> None:
    ib_errors.allow_text(DROPPED)
    rig = await rig_factory()
    c, _, _ = await working(rig, qty=2)
    rig.gw.restart(refuse=None)
    await eventually(lambda: rig.broker.state == ConnectionState.DOWN and not rig.gw.sessions)
    made = rig.gw.fill_order("qqqbot-t1")  # nobody connected hears it
    assert [e.qty for e in made] == [2] and not rig.rec.executions
    rig.gw.accept_connections()
    await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED)
    (ex,) = rig.rec.executions  # replayed from reqExecutions, before CONNECTED
    assert ex.exec_id == made[0].exec_id and ex.qty == 2 and ex.commission is not None
    assert rig.rec.updates[-1].status == OrderStatus.FILLED
    assert [p.qty for p in await rig.broker.positions() if p.contract == c] == [2] == [rig.gw.position(c)]
    fresh = fast_broker(rig.gw.port, rig.clock, client_id=7)  # a new process knows it only from IB
    try:
        await fresh.connect()
        assert [e.exec_id for e in await fresh.executions()] == [ex.exec_id]
        assert await fresh.open_orders() == []
    finally:
        await fresh.close()


# --- the nightly reset, the daily restart, the weekly login ---------------------------------------


async def test_nightly_reset_then_daily_restart(rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(1100, 1102)
    ib_errors.allow_text(DROPPED)
    rig = await rig_factory(connectivity_grace_s=30, connect_timeout=0.3)
    rig.gw.lose_servers()  # ~23:45 ET: IB's servers reset, the socket stays
    await eventually(lambda: rig.broker.state == ConnectionState.DOWN)
    rig.gw.restore_servers()
    await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED)
    rig.gw.restart(refuse=3)  # the gateway's own restart: closed, refusing a while, back
    await eventually(lambda: rig.broker.state == ConnectionState.DOWN)
    await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED, 10)
    assert rig.gw.requests["refused"] == 3 and rig.gw.requests["handshake"] == 2
    assert rig.broker.stats["reconnects"] == 4
    assert (await rig.broker.quote("QQQ")).last is not None
    assert not [d for s, d in details(rig) if "login" in d]  # a short restart: no login alert


async def test_the_weekly_login_is_announced_once_and_its_end_once(rig_factory: RigFactory,
                                                                   ib_errors: IbErrorGuard) -> None:
    ib_errors.allow_text(DROPPED)
    rig = await rig_factory(connect_timeout=0.1, login_alert_after_s=0.3)
    rig.gw.restart(refuse=None)  # the gateway waits for the weekly login
    await eventually(lambda: any("approve the IBKR login on your phone" in d for _, d in details(rig)))
    await eventually(lambda: rig.broker.stats["reconnects"] >= 8)
    assert rig.broker.state == ConnectionState.DOWN and "approve the IBKR login" in rig.broker.detail
    rig.clock.advance_to(rig.clock.now() + timedelta(hours=2, minutes=5))
    rig.gw.accept_connections()  # approved on the phone
    await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED)
    events = details(rig)
    assert [s for s, _ in events] == [ConnectionState.CONNECTED, ConnectionState.DOWN, ConnectionState.DOWN,
                                      ConnectionState.CONNECTED]
    assert sum("approve the IBKR login on your phone" in d for _, d in events) == 1
    assert "back after 2 h 05 min" in events[-1][1]


async def test_the_login_alert_also_when_the_gateway_is_down_at_start_up(rig_factory: RigFactory,
                                                                         ib_errors: IbErrorGuard) -> None:
    """The bot (re)started while the gateway waits for its login: start-up retries ``connect``."""
    ib_errors.allow_text(DROPPED)
    rig = await rig_factory(connect=False, login_alert_after_s=0.2)
    await rig.gw.stop_listening()
    for _ in range(4):
        with pytest.raises(BrokerError, match="connection refused"):
            await rig.broker.connect()
        await asyncio.sleep(0.1)
    assert rig.broker.down_since == rig.clock.now()
    assert sum("approve the IBKR login on your phone" in d for _, d in details(rig)) == 1
    await rig.gw.start_listening()
    rig.clock.advance_to(rig.clock.now() + timedelta(minutes=40))
    await rig.broker.connect()
    state, detail = details(rig)[-1]
    assert state == ConnectionState.CONNECTED and "back after 40 min" in detail


# --- reconciliation support -----------------------------------------------------------------------


async def test_open_orders_lists_every_bot_order_at_ib_and_cancels_an_earlier_process_order(
        rig_factory: RigFactory) -> None:
    assert BOT_ORDER_REF_PREFIX == ORDER_REF_PREFIX
    rig = await rig_factory()
    c, bid, _ = await working(rig, ref="qqqbot-old")
    await rig.broker.close()  # that process is gone; its order works on
    other = fast_broker(rig.gw.port, rig.clock, client_id=8)  # another API client id
    user = fast_broker(rig.gw.port, rig.clock, client_id=9)  # a tool of the user's, not the bot
    again = fast_broker(rig.gw.port, rig.clock)  # the bot restarted (same client id)
    try:
        await other.connect()
        await other.place_order(order(c, 1, bid, "qqqbot-other"))
        await user.connect()
        await user.place_order(order(c, 1, bid, "mine-1"))
        await again.connect()
        listed = {o.order_ref: o for o in await again.open_orders()}
        assert set(listed) == {"qqqbot-old", "qqqbot-other"}  # the user's order is not the bot's
        assert listed["qqqbot-old"].request.legs[0].instrument == c and listed["qqqbot-old"].request.qty == 1
        await again.cancel_order("qqqbot-old")  # adopted from the earlier process: it can cancel it
        assert rig.gw.order_by_ref("qqqbot-old").status == "Cancelled"
        with pytest.raises(BrokerError, match="client id 8"):
            await again.cancel_order("qqqbot-other")  # IB would take it for one of its own order ids
        assert rig.gw.order_by_ref("qqqbot-other").working and rig.gw.order_by_ref("mine-1").working
    finally:
        for b in (other, user, again):
            await b.close()


async def test_a_trade_outside_the_bot_can_leave_the_account_short(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    c = await leap(rig)
    (q,) = await rig.broker.option_quotes([c])
    assert q.ask is not None
    await rig.broker.place_order(order(c, 1, q.ask))
    manual = rig.gw.outside_trade(c, "SELL", 2, Decimal("61.00"), order_ref="")  # TWS: one too many
    await rig.settle()
    assert rig.gw.position(c) == -1
    held = [p for p in await rig.broker.positions() if p.contract == c]
    assert [(p.category, p.qty) for p in held] == [("option", -1)]
    execs = await rig.broker.executions()
    outside = [e for e in execs if e.exec_id == manual.exec_id]
    assert [(e.side, e.qty, e.order_ref) for e in outside] == [("SELL", 2, "")]
    assert all(e.exec_id != manual.exec_id for e in rig.rec.executions)  # not heard live (client id 7)


async def test_without_short_permission_an_uncovered_sell_is_rejected(rig_factory: RigFactory,
                                                                      ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(201)
    rig = await rig_factory()
    rig.gw.allow_short = False
    c = await leap(rig)
    with pytest.raises(BrokerError, match="UNCOVERED"):
        await rig.broker.place_order(order(c, 1, Decimal("50.00"), side="SELL"))
    assert rig.gw.position(c) == 0


# --- the fake gateway's controls ------------------------------------------------------------------


async def test_a_cancel_lost_with_the_socket_leaves_the_order_working(rig_factory: RigFactory,
                                                                     ib_errors: IbErrorGuard) -> None:
    ib_errors.allow_text(DROPPED)
    rig = await rig_factory()
    await working(rig)
    rig.gw.drop_on("cancelOrder")
    await rig.broker.cancel_order("qqqbot-t1")  # sent, never arrived: no answer, no raise
    assert rig.gw.requests["lost:cancelOrder"] == 1 and rig.gw.order_by_ref("qqqbot-t1").working
    assert all(u.status != OrderStatus.CANCELLED for u in rig.rec.updates)
    await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED and rig.gw.requests["handshake"] == 2)
    (still,) = await rig.broker.open_orders()
    assert still.order_ref == "qqqbot-t1" and still.status == OrderStatus.SUBMITTED
    await rig.broker.cancel_order("qqqbot-t1")  # the retry
    assert rig.rec.updates[-1].status == OrderStatus.CANCELLED


async def test_a_drop_after_the_order_arrived(rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow_text(DROPPED)
    rig = await rig_factory()
    c = await leap(rig)
    (q,) = await rig.broker.option_quotes([c])
    assert q.bid is not None
    rig.gw.drop_on("placeOrder", before=False)
    await rig.broker.place_order(order(c, 1, q.bid))
    assert rig.gw.order_by_ref("qqqbot-t1").working  # it reached IB although the socket dropped
    await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED and rig.gw.requests["handshake"] == 2)
    assert [o.order_ref for o in await rig.broker.open_orders()] == ["qqqbot-t1"]
    with pytest.raises(ValueError, match="unknown message kind"):
        rig.gw.drop_on("nonsense")


# --- item 8: the account id and the gateway's address never in clear -------------------------------


async def test_account_and_gateway_address_never_in_clear(rig_factory: RigFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(1100, 1102)
    ib_errors.allow_text(DROPPED)
    redact = RedactFilter()
    lines = RecentLines(2000)
    lines.setLevel(logging.DEBUG)
    lines.addFilter(redact)
    root = logging.getLogger()
    level = root.level
    root.addHandler(lines)
    root.setLevel(logging.DEBUG)
    try:
        rig = await rig_factory(connect=False, connectivity_grace_s=30, connect_timeout=0.2)
        redact.add_endpoint("127.0.0.1", rig.gw.port)  # what the runner registers for IB_HOST:IB_PORT
        await rig.gw.stop_listening()
        with pytest.raises(BrokerError) as refused:
            await rig.broker.connect()
        await rig.gw.start_listening()
        await rig.broker.connect()
        rig.gw.lose_servers()
        await eventually(lambda: rig.broker.state == ConnectionState.DOWN)
        rig.gw.restore_servers()
        await eventually(lambda: rig.broker.state == ConnectionState.CONNECTED)
        rig.gw.restart(refuse=1)
        await eventually(lambda: rig.gw.requests["handshake"] == 2 and rig.broker.state == ConnectionState.CONNECTED)
        live = await rig_factory(account="U7654321", connect=False)
        with pytest.raises(BrokerError) as live_refused:
            await live.broker.connect()
    finally:
        root.removeHandler(lines)
        root.setLevel(level)
    address = f"127.0.0.1:{rig.gw.port}"
    texts = {"log": "\n".join(lines.lines), "alerts": "\n".join(d for _, d in details(rig)),
             "errors": f"{refused.value}\n{live_refused.value}"}
    for where, text in texts.items():
        for secret in ("DU1234567", "U7654321", address, f"'127.0.0.1', {rig.gw.port}"):
            assert secret not in text, f"{secret} in clear in the {where}"
    assert "DU•••4567" in texts["alerts"] and "U•••4321" in texts["errors"]
    assert "[IB Gateway]" in texts["log"] and "DU•••4567" in texts["log"]  # ib_async's own lines, masked


def test_the_log_filter_masks_every_kind_of_ib_account() -> None:
    f = RedactFilter()
    f.add_endpoint("ib-gateway", 4004)
    text = f.redact("accounts DU1234567, U1234567, F7654321 and DF12345678 at ib-gateway:4004 "
                    "('ib-gateway', 4004); order 1234567 and QQQ 20260116C00500000 untouched")
    assert text == ("accounts DU•••4567, U•••4567, F•••4321 and DF•••5678 at [IB Gateway] [IB Gateway]; "
                    "order 1234567 and QQQ 20260116C00500000 untouched")
