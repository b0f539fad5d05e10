"""The engine's scenarios (as in test_engine.py on the sim broker) on the `ib` broker against the
fake IB Gateway: the same bars, the same settings, the same expectations. The gateway prices with
the sim's model and fills a limit at or through the mid; time is simulated, and every simulated
sleep ends with a round trip to the gateway so that fills it sent have been processed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from peewee import Database

from bot.engine.alerts import EventKind, MemorySink
from bot.engine.engine import Engine
from bot.engine.settings_service import SettingsService
from bot.engine.tick_report import TickReport
from broker.base import BrokerError, ConnectionState
from broker.clock import SimClock
from broker.ib import IBBroker
from storage import ledger
from storage.models import Fill, Lot, Order, Roll
from strategy.calendar import NY, SessionCalendar, nyse
from strategy.rules import DailyLimits
from tests.fake_gateway import FakeGateway, FakeMarket, FillMode
from tests.fake_gateway.testing import IbErrorGuard, fast_broker, ib_errors
from tests.harness import SimulatedCrash
from tests.test_engine import bars_oc, days

__all__ = ["ib_errors"]


class NetClock(SimClock):
    """Simulated time whose ``sleep`` waits for a round trip to the gateway before time moves (what
    the bot sent has arrived) and after (what the gateway did meanwhile has been processed)."""

    broker: IBBroker | None = None

    async def sleep(self, seconds: float) -> None:
        await self._barrier()
        self.advance_to(self._now + timedelta(seconds=seconds))
        await self._barrier()

    async def _barrier(self) -> None:
        """A round trip; while the connection is down (reconnecting in real time), wait for it."""
        if self.broker is None:
            return
        for _ in range(600):
            if self.broker.state != ConnectionState.DOWN:
                with contextlib.suppress(BrokerError):
                    await self.broker.sync()
                    return
            await asyncio.sleep(0.005)
        raise AssertionError("the broker did not come back")


@dataclass
class IbWorld:
    engine: Engine
    broker: IBBroker
    gw: FakeGateway
    clock: NetClock
    cal: SessionCalendar
    alerts: MemorySink
    settings: SettingsService
    market: FakeMarket
    registry: list[IbWorld]

    async def run_session(self, day: date, max_ticks: int | None = None) -> list[TickReport]:
        session = self.cal.session(day)
        assert session is not None
        s = self.settings.current
        reports = []
        for t in self.cal.tick_times(session, s.check_interval_min, s.delay_after_open_min)[:max_ticks]:
            if t < self.clock.now():
                continue
            self.clock.advance_to(t)
            await self.clock._barrier()
            reports.append(await self.engine.tick())
        return reports

    async def close_session(self, day: date) -> None:
        session = self.cal.session(day)
        assert session is not None
        if session.close > self.clock.now():
            self.clock.advance_to(session.close)
            await self.clock._barrier()

    async def run_days(self, ds: list[date]) -> None:
        for d in ds:
            if d != self.market.path.first_day:
                await self.run_session(d)
            await self.close_session(d)

    def events(self, kind: EventKind) -> list[str]:
        return [e.text for e in self.alerts.events if e.kind == kind]

    async def restart(self) -> IbWorld:
        """A new process: a new engine on a new `IBBroker` (same client id) on the same database."""
        self.broker.set_listener(None)
        await self.broker.close()
        broker = fast_broker(self.gw.port, self.clock, max_requests_per_s=0, calendar=self.cal)
        self.clock.broker = broker
        alerts = MemorySink()
        settings = SettingsService(alerts, self.clock.now)
        engine = Engine(broker, self.clock, self.cal, settings, alerts, self.engine.limits)
        w = IbWorld(engine, broker, self.gw, self.clock, self.cal, alerts, settings, self.market, self.registry)
        self.registry.append(w)
        return w


WorldFactory = Callable[..., Awaitable[IbWorld]]


@pytest.fixture
async def ib_world(db: Database, ib_errors: IbErrorGuard) -> AsyncIterator[WorldFactory]:
    made: list[IbWorld] = []

    async def make(bars: Any, *, settings: dict[str, str] | None = None, capital: Decimal = Decimal(100_000),
                   fill: FillMode | None = None, iv: float = 0.22, limits: DailyLimits | None = None,
                   seed: int = 3) -> IbWorld:
        cal = nyse()
        market = FakeMarket(bars, calendar=cal, iv=iv, seed=seed)
        first = cal.session(bars[0].day)
        assert first is not None
        clock = NetClock(first.open - timedelta(minutes=1))
        gw = await FakeGateway(market, now=clock.now, cash=capital, mixed_account=False, fill=fill).start()
        clock.add_listener(gw.on_time)
        alerts = MemorySink()
        svc = SettingsService(alerts, clock.now)
        for key, value in (settings or {}).items():
            result = svc.update(key, value, "test")
            assert not hasattr(result, "message"), result
        broker = fast_broker(gw.port, clock, max_requests_per_s=0, calendar=cal)
        clock.broker = broker
        engine = Engine(broker, clock, cal, svc, alerts, limits or DailyLimits(100, Decimal(10_000_000)))
        await engine.start()
        alerts.events.clear()
        w = IbWorld(engine, broker, gw, clock, cal, alerts, svc, market, made)
        made.append(w)
        return w

    yield make
    for w in made:
        await w.engine.stop()
    for w in made:
        await w.gw.stop()


async def _gw_execs(w: IbWorld) -> int:
    return len([e for e in w.gw.executions if e.commission is not None])  # legs, not BAG summary lines


# --- the scenarios of test_engine.py ---------------------------------------------------------------


async def test_entry_on_a_dip_buys_one_leaps_call_once_per_session(ib_world: WorldFactory) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars)
    await w.run_days(days(bars))
    lots = ledger.open_lots()
    assert len(lots) == 1
    lot = lots[0]
    assert lot.qty == 1 and lot.contract.right == "C"
    assert lot.contract.dte(bars[1].day) >= 365
    assert Order.select().where(Order.purpose == "entry").count() == 1
    assert len(await w.broker.executions()) == 1 == await _gw_execs(w)
    assert any("entry" in t for t in w.events(EventKind.ORDER_FILLED))
    fill = Fill.get()
    assert fill.commission == Decimal("1.00")  # the commission report reached the ledger
    (o,) = w.gw.orders.values()
    assert o.order_ref == Order.get().order_ref  # the bot's reference is IB's orderRef


async def test_no_entry_above_the_drop(ib_world: WorldFactory) -> None:
    bars = bars_oc([(500, 500), (496, 496), (497, 497)])
    w = await ib_world(bars)
    await w.run_days(days(bars))
    assert ledger.open_lots() == ()
    assert Order.select().count() == 0 and w.gw.orders == {}


async def test_take_profit_sells_the_whole_lot_and_books_pnl(ib_world: WorldFactory) -> None:
    bars = bars_oc([(500, 500), (490, 490), (575, 575)])
    w = await ib_world(bars, settings={"recycle_enabled": "off"})
    await w.run_days(days(bars))
    assert ledger.open_lots() == ()
    lot = Lot.get()
    assert lot.exit_reason == "take_profit" and lot.qty_open == 0
    fills = list(Fill.select().where(Fill.lot == lot.id).order_by(Fill.id))
    buy = [f for f in fills if f.side == "BUY"]
    sell = [f for f in fills if f.side == "SELL"]
    expected = sum((f.price - lot.avg_price) * f.qty * 100 for f in sell) - sum(f.commission for f in fills)
    assert lot.realized_pnl == expected
    assert sell[0].price / buy[0].price - 1 >= Decimal("0.5") * Decimal("0.97")
    assert w.events(EventKind.TAKE_PROFIT)
    assert not [p for p in await w.broker.positions() if p.category == "option"]


async def test_force_exit_after_force_exit_days(ib_world: WorldFactory) -> None:
    # the sim test holds a lot 270 days; here the same rule with force_exit_days=3 over a flat market
    bars = bars_oc([(500, 500), (490, 490), (490, 490), (490, 490), (490, 490), (490, 490), (490, 490)])
    w = await ib_world(bars, settings={"force_exit_days": "3", "recycle_enabled": "off", "entry_drop_pct": "1.5"})
    await w.run_days(days(bars))
    lot = Lot.get()
    assert lot.exit_reason == "force_exit" and lot.qty_open == 0
    held = (lot.closed_at.astimezone(NY).date() - lot.opened_at.astimezone(NY).date()).days
    assert held >= 3
    assert Lot.select().count() == 1  # a flat market gives no new entry
    assert w.events(EventKind.FORCE_EXIT)


async def test_roll_when_full_and_qqq_falls_five_percent(ib_world: WorldFactory) -> None:
    bars = bars_oc([(500, 500), (490, 490), (460, 458)])
    w = await ib_world(bars, settings={"max_positions": "1"})
    await w.run_days(days(bars))
    roll = Roll.get()
    assert roll.status == "completed" and roll.combo
    old = Lot.get_by_id(roll.old_lot_id)
    new = Lot.get_by_id(roll.new_lot_id)
    assert old.qty_open == 0 and old.exit_reason == "roll"
    assert new.qty_open == 1 and new.strike < old.strike
    assert len(ledger.open_lots()) == 1
    assert Order.select().where(Order.purpose == "roll").count() == 1
    assert w.events(EventKind.ROLL)
    bag = w.gw.order_by_ref(Order.get(Order.purpose == "roll").order_ref)
    assert bag.contract.sec_type == "BAG" and bag.status == "Filled"
    assert Fill.select().count() == await _gw_execs(w) == 3  # entry, then the two legs of the combo


async def test_profit_is_recycled_into_qqqm_and_never_more(ib_world: WorldFactory) -> None:
    bars = bars_oc([(500, 500), (490, 490), (575, 575), (576, 576)])
    w = await ib_world(bars)
    await w.run_days(days(bars))
    shares, deployed = ledger.qqqm_bought()
    realized = ledger.realized_option_pnl()
    assert realized > 500
    assert shares > 0
    assert deployed <= realized
    assert ledger.recycling_pool() >= 0
    assert w.events(EventKind.RECYCLE)
    held = {p.symbol: p.qty for p in await w.broker.positions() if p.category == "stock"}
    assert held["QQQM"] == shares


async def test_partial_fills_are_each_recorded(ib_world: WorldFactory) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars, settings={"order_quantity": "3", "max_premium": "50000"},
                       fill=FillMode("partial", partial_qty=1))
    await w.run_days(days(bars))
    lot = Lot.get()
    fills = list(Fill.select().where(Fill.lot == lot.id))
    assert len(fills) >= 2
    assert sum(f.qty for f in fills) == lot.qty_opened == lot.qty_open == 3
    assert w.events(EventKind.ORDER_PARTIAL)


async def test_a_fill_after_cancel_is_still_recorded(ib_world: WorldFactory) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars, fill=FillMode("never"))
    await w.run_days(days(bars))
    order = Order.get(Order.purpose == "entry")
    assert order.status == "cancelled" and order.filled_qty == 0
    assert not w.gw.working_orders()
    w.gw.late_fill(order.order_ref, 1)  # IB's race: the fill was on its way when the cancel landed
    await w.broker.sync()
    assert Lot.get().qty_open == 1
    assert Order.get_by_id(order.id).filled_qty == 1
    assert Fill.get().commission == Decimal("1.00")


async def test_delayed_data_is_shown_but_never_traded(ib_world: WorldFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(354)
    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars)
    w.gw.md_error = 354
    await w.run_days(days(bars))
    assert w.broker.state == ConnectionState.DEGRADED and w.broker.market_data == "delayed"
    assert w.events(EventKind.DEGRADED)
    q = await w.broker.quote("QQQ")
    assert q.price is not None  # the user still sees a (delayed) price
    assert ledger.open_lots() == () and Order.select().count() == 0  # a 15-minute-old quote never trades


async def test_missing_greeks_use_bsm_delta(ib_world: WorldFactory) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars)
    w.gw.greeks = False
    await w.run_days(days(bars))
    lot = ledger.open_lots()[0]
    ctx = Order.get(Order.purpose == "entry").context
    assert lot.contract.dte(bars[1].day) >= 365
    assert "delta" in (ctx or "")


# --- restarts and reconnects -----------------------------------------------------------------------


def die_right_after_the_next_send(w: IbWorld) -> None:
    """The process dies as soon as IB has the order, before it hears anything back."""
    real_place = w.broker.place_order

    async def send_then_crash(req: Any) -> str:
        await real_place(req)
        raise SimulatedCrash

    w.broker.place_order = send_then_crash  # type: ignore[method-assign]
    w.broker.set_listener(None)


async def test_crash_after_send_before_the_ack_adopts_the_order(ib_world: WorldFactory) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars)
    die_right_after_the_next_send(w)
    with pytest.raises(SimulatedCrash):
        await w.run_session(bars[1].day)
    assert Fill.select().count() == 0  # IB filled it, but nobody was listening
    w2 = await w.restart()
    await w2.engine.start()  # a new process: reconciles against IB's open orders and executions
    order = Order.get()
    assert order.status in ("filled", "cancelled")
    await w2.run_session(bars[1].day)
    assert Order.select().where(Order.purpose == "entry").count() == 1  # no second entry after restart
    assert Fill.select().count() == await _gw_execs(w2) == 1


async def test_an_order_left_working_by_a_dead_process_is_cancelled_at_ib(ib_world: WorldFactory) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars, fill=FillMode("never"))
    die_right_after_the_next_send(w)
    with pytest.raises(SimulatedCrash):
        await w.run_session(bars[1].day)
    assert len(w.gw.working_orders()) == 1
    w2 = await w.restart()
    await w2.engine.start()
    assert Order.get().status == "cancelled"
    assert not w2.gw.working_orders()  # found by its order reference among IB's open orders and cancelled


async def test_crash_between_fill_and_ledger_loses_no_fill(ib_world: WorldFactory) -> None:
    """The process dies after IB filled the order but before the fill reached the ledger. (On IB
    fills arrive in a socket callback, so the 'crash' is that the fill is never recorded.)"""
    bars = bars_oc([(500, 500), (490, 489), (491, 491)])
    w = await ib_world(bars)
    lost: list[object] = []
    w.engine.on_execution = lost.append  # type: ignore[method-assign]
    w.engine.on_commission = lost.append  # type: ignore[method-assign]
    await w.run_session(bars[1].day, max_ticks=1)
    assert Fill.select().count() == 0 and lost
    w2 = await w.restart()
    await w2.engine.start()  # reconciliation reads IB's executions
    assert Fill.select().count() == await _gw_execs(w2) >= 1
    assert Fill.get().commission == Decimal("1.00")
    assert len(ledger.open_lots()) == 1
    await w2.run_days(days(bars)[1:])
    assert Order.select().where(Order.purpose == "entry").count() == 1
    await w2.engine.reconcile()
    assert Fill.select().count() == await _gw_execs(w2)


async def test_reconnect_mid_order_then_fill(ib_world: WorldFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow_text("Peer closed connection|Connection reset by peer")
    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars, fill=FillMode("delayed"))
    day = bars[1].day
    session = w.cal.session(day)
    assert session is not None
    dropped: list[bool] = []

    def drop_once(now: Any) -> None:
        if w.gw.working_orders() and not dropped:
            dropped.append(True)
            w.gw.drop_connections()

    w.clock.add_listener(drop_once)
    reports = await w.run_session(day, max_ticks=3)
    assert dropped and w.events(EventKind.DISCONNECT) and w.events(EventKind.RECONNECT)
    entries = list(Order.select().where(Order.purpose == "entry"))
    assert len(entries) >= 1 and all(o.status not in ledger.ACTIVE for o in entries)
    assert not w.gw.working_orders()
    assert reports


async def test_the_rate_setting_moves_the_fallback_delta_on_ib(ib_world: WorldFactory) -> None:
    """Without IB's model greeks, the delta a strike is judged by is Black–Scholes with the settings
    in force: /set risk_free_rate changes it (it used to be a fixed 4 % inside the adapter)."""
    from strategy.selection import quote_delta
    from strategy.settings import StrategySettings

    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars)
    w.gw.greeks = False
    await w.run_session(bars[1].day, max_ticks=1)
    order = Order.get(Order.purpose == "entry")
    (recorded,) = json.loads(order.context)["deltas"].values()
    lot = ledger.open_lots()[0]
    quotes = await w.broker.option_quotes([lot.contract])
    assert quotes and quotes[0].delta is None  # IB sent no greeks: the adapter leaves the delta alone
    spot = (await w.broker.quote("QQQ")).price
    assert spot is not None
    low = quote_delta(quotes[0], spot, bars[1].day, StrategySettings(risk_free_rate=Decimal(0)))
    high = quote_delta(quotes[0], spot, bars[1].day, StrategySettings(risk_free_rate=Decimal(10)))
    assert low is not None and high is not None and abs(high - low) > 0.01
    # the engine judged the strike with the setting in force (the default 4 %), between the two
    assert min(low, high) < recorded < max(low, high)
    w.settings.update("risk_free_rate", "10", "test")
    w.settings.update("dividend_yield", "0", "test")
    from bot.engine.actions import select_contract
    from strategy.selection import Candidate

    snap, _ = await w.engine.snapshot(bars[1].day)
    choice = await select_contract(w.engine.desk, snap, w.settings.current)
    assert isinstance(choice, Candidate)
    assert choice.delta == quote_delta(choice.quote, spot, bars[1].day, w.settings.current)
    default = quote_delta(choice.quote, spot, bars[1].day, StrategySettings())
    assert default is not None and abs(choice.delta - default) > 0.005


async def test_a_share_of_net_liquidation_sizes_the_lot_on_ib(ib_world: WorldFactory) -> None:
    """position_size 10 %: the lot is sized from IB's net liquidation at the first limit."""
    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars, settings={"position_size": "10%", "max_premium": "100000"}, capital=Decimal(500_000))
    await w.run_days(days(bars))
    (lot,) = ledger.open_lots()
    order = Order.get(Order.purpose == "entry")
    account = await w.broker.account_summary()
    assert lot.qty == order.qty > 1
    assert order.qty * order.limit * 100 <= account.net_liquidation * Decimal("0.10") * Decimal("1.02")
    held = [p for p in await w.broker.positions() if p.contract == lot.contract]
    assert held and held[0].qty == lot.qty  # the gateway holds what the ledger says
