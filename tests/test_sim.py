"""The `sim` broker and its market: what the engine and the user rely on."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import pytest

from broker.base import BrokerError, OrderLeg, OrderRequest, StockContract
from broker.clock import SimClock
from broker.sim import SimBroker, SimFillModel
from broker.sim_market import CsvError, DailyBar, IvSource, PricePath, load_ohlc_csv, load_series_csv, synthetic_bars
from strategy.calendar import NY, nyse
from strategy.model import OptionContract
from tests.conftest import shared_file

CAL = nyse()


def make(days: int = 5, start: date = date(2024, 3, 25), **kw: object) -> tuple[SimBroker, SimClock, PricePath]:
    sessions = CAL.sessions_between(start, start + timedelta(days=days * 2 + 10))[:days]
    bars = [DailyBar(s.day, 500, 505, 495, 500 + i) for i, s in enumerate(sessions)]
    path = PricePath.from_bars(bars, CAL, seed=1)
    clock = SimClock(sessions[1].open + timedelta(minutes=30))
    broker = SimBroker(clock, path, IvSource.constant(0.2), calendar=CAL, **kw)  # type: ignore[arg-type]
    return broker, clock, path


def test_intraday_path_touches_ohlc_and_stays_inside() -> None:
    sessions = CAL.sessions_between(date(2024, 1, 2), date(2024, 3, 1))
    bars = synthetic_bars(sessions, seed=4)
    path = PricePath.from_bars(bars, CAL, seed=4)
    for b, s in zip(bars, path.sessions, strict=True):
        pts = [path.price_at(s.open + timedelta(minutes=5 * k)) for k in range(79)]
        assert pts[0] == pytest.approx(b.open)
        assert path.close_of(b.day) == pytest.approx(b.close)
        assert min(pts) >= b.low - 1e-9 and max(pts) <= b.high + 1e-9
        assert min(pts) == pytest.approx(b.low) and max(pts) == pytest.approx(b.high)
    assert path.prev_close(bars[5].day) == pytest.approx(bars[4].close)
    again = PricePath.from_bars(bars, CAL, seed=4)
    t = path.sessions[3].open + timedelta(minutes=77)
    assert again.price_at(t) == path.price_at(t)


def test_synthetic_path_has_calm_and_deep_days() -> None:
    sessions = CAL.sessions_between(date(2015, 1, 1), date(2024, 12, 31))
    bars = synthetic_bars(sessions, seed=1)
    changes = [b.close / a.close - 1 for a, b in pairwise(bars)]
    assert sum(1 for c in changes if c <= -0.01) > 100
    assert sum(1 for c in changes if c <= -0.05) >= 1


async def test_chain_lists_third_fridays_holidays_and_leaps() -> None:
    broker, clock, _ = make(start=date(2024, 5, 6))  # April 2025 is within the 12 monthlies
    await broker.connect()
    chain = await broker.option_chain("QQQ")
    today = clock.now().astimezone(NY).date()
    assert date(2025, 4, 17) in chain.expiries  # Good Friday 2025-04-18: listed on Thursday
    assert date(2025, 4, 18) not in chain.expiries
    assert any((e - today).days >= 365 for e in chain.expiries)
    far = [e for e in chain.expiries if (e - today).days > 60 and 15 <= e.day <= 21]  # monthlies and LEAPS
    assert far and all(e.weekday() in (3, 4) for e in far)
    assert Decimal(500) in chain.strikes and all(k % 5 == 0 for k in chain.strikes)


async def test_option_quotes_are_sane() -> None:
    broker, _, _ = make()
    quotes = await broker.option_quotes([OptionContract("QQQ", date(2025, 6, 20), Decimal(k)) for k in
                                         range(400, 601, 25)])
    assert len(quotes) == 9
    mids = [q.mid for q in quotes]
    assert all(a is not None and b is not None and a > b for a, b in pairwise(mids))
    for q in quotes:
        assert q.bid is not None and q.ask is not None and 0 < q.bid < q.ask
        assert q.delta is not None and 0 < q.delta < 1
    expired = await broker.option_quotes([OptionContract("QQQ", date(2024, 1, 19), Decimal(400))])
    assert expired == []


async def test_marketable_limit_fills_with_commission_and_unique_ids() -> None:
    broker, _, _ = make()
    await broker.connect()
    c = OptionContract("QQQ", date(2025, 6, 20), Decimal(480))
    q = (await broker.option_quotes([c]))[0]
    assert q.ask is not None
    await broker.place_order(OrderRequest("r1", (OrderLeg(c, "BUY"),), 2, q.ask))
    await broker.place_order(OrderRequest("r2", (OrderLeg(StockContract("QQQM"), "BUY"),), 3, Decimal(400)))
    ex = await broker.executions()
    assert [e.qty for e in ex] == [2, 3]
    assert ex[0].commission == Decimal("1.30") and ex[1].commission == Decimal("1.00")
    assert len({e.exec_id for e in ex}) == 2
    with pytest.raises(BrokerError, match="already used"):
        await broker.place_order(OrderRequest("r1", (OrderLeg(c, "BUY"),), 1, q.ask))


async def test_limit_below_the_mid_never_fills_and_cancel_works() -> None:
    broker, clock, _ = make()
    await broker.connect()
    c = OptionContract("QQQ", date(2025, 6, 20), Decimal(480))
    q = (await broker.option_quotes([c]))[0]
    assert q.bid is not None
    await broker.place_order(OrderRequest("low", (OrderLeg(c, "BUY"),), 1, q.bid))
    for _ in range(10):
        await clock.sleep(15)
    assert await broker.executions() == []
    assert [o.order_ref for o in await broker.open_orders()] == ["low"]
    await broker.cancel_order("low")
    assert await broker.open_orders() == []
    with pytest.raises(BrokerError):
        await broker.cancel_order("low")


async def test_partial_fills_add_up() -> None:
    broker, clock, _ = make(fill=SimFillModel(partial_max_qty=2))
    await broker.connect()
    c = OptionContract("QQQ", date(2025, 6, 20), Decimal(480))
    q = (await broker.option_quotes([c]))[0]
    assert q.ask is not None
    await broker.place_order(OrderRequest("p", (OrderLeg(c, "BUY"),), 5, q.ask + 1))
    for _ in range(3):
        await clock.sleep(15)
    assert [e.qty for e in await broker.executions()] == [2, 2, 1]


async def test_combo_fills_both_legs_at_the_net_price() -> None:
    broker, _, _ = make()
    await broker.connect()
    old = OptionContract("QQQ", date(2025, 6, 20), Decimal(480))
    new = OptionContract("QQQ", date(2025, 12, 19), Decimal(470))
    await broker.place_order(OrderRequest("buy-old", (OrderLeg(old, "BUY"),), 1, Decimal(200)))
    qs = {q.contract: q for q in await broker.option_quotes([old, new])}
    net_ask = qs[new].ask - qs[old].bid  # type: ignore[operator]
    await broker.place_order(OrderRequest("roll", (OrderLeg(old, "SELL"), OrderLeg(new, "BUY")), 1, net_ask))
    legs = [e for e in await broker.executions() if e.order_ref == "roll"]
    assert {(e.side, e.instrument) for e in legs} == {("SELL", old), ("BUY", new)}
    buy = next(e for e in legs if e.side == "BUY")
    sell = next(e for e in legs if e.side == "SELL")
    assert buy.price - sell.price == net_ask


async def test_insufficient_cash_is_refused() -> None:
    broker, _, _ = make(starting_cash=Decimal(1000))
    await broker.connect()
    c = OptionContract("QQQ", date(2025, 6, 20), Decimal(480))
    with pytest.raises(BrokerError, match="insufficient funds"):
        await broker.place_order(OrderRequest("x", (OrderLeg(c, "BUY"),), 1, Decimal(50)))
    assert await broker.executions() == []


async def test_mixed_account_adds_up() -> None:
    broker, _, _ = make(mixed_account=True)
    await broker.connect()
    await broker.place_order(OrderRequest("q", (OrderLeg(StockContract("QQQM"), "BUY"),), 10, Decimal(400)))
    positions = await broker.positions()
    cats = {p.category for p in positions}
    assert cats == {"stock", "option", "bond", "cash"}
    assert {p.symbol for p in positions if p.category == "cash"} == {"USD", "EUR"}
    summary = await broker.account_summary()
    usd = sum((p.market_value or Decimal(0)) for p in positions if p.currency == "USD")
    eur = sum((p.market_value or Decimal(0)) for p in positions if p.currency == "EUR")
    assert summary.net_liquidation == usd + eur * Decimal("1.08")
    assert summary.available_funds_usd == summary.cash_by_currency["USD"]


async def test_executions_survive_an_engine_restart() -> None:
    broker, _, _ = make()
    await broker.connect()
    await broker.place_order(OrderRequest("q", (OrderLeg(StockContract("QQQM"), "BUY"),), 1, Decimal(400)))
    broker.set_listener(None)  # the engine died; the broker (IB) keeps going
    assert len(await broker.executions()) == 1


def test_csv_errors_name_the_line(tmp_path: Path) -> None:
    cases = {
        "Date,Open,High,Low,Close\n2024-01-02,1,2,0.5,x\n": "line 2",
        "Date,Open,High,Low,Close\n2024-01-02,1,2,0.5,1\n2024-01-02,1,2,0.5,1\n": "line 3",
        "Date,Open,High,Low,Close\n2024-01-02,1,2,0.5,3\n": "outside",
        "Date,Open,High,Low,Close\n2024-01-02,-1,2,0.5,1\n": "positive",
        "Date,Open,Close\n2024-01-02,1,1\n": "missing column",
        "": "empty",
    }
    for text, message in cases.items():
        p = tmp_path / "x.csv"
        p.write_text(text)
        with pytest.raises(CsvError, match=message):
            load_ohlc_csv(p)
    p.write_text("Date,Open,High,Low,Close,Adj Close,Volume\n2024-01-02,null,null,null,null,null,null\n"
                 "2024-01-03,1,2,0.5,1.5,1.5,10\n")
    assert [b.day for b in load_ohlc_csv(p)] == [date(2024, 1, 3)]


def test_real_files_load() -> None:
    bars = load_ohlc_csv(shared_file("qqq_daily.csv"))
    assert len(bars) > 6000 and bars[0].day == date(1999, 3, 10)
    vxn = load_series_csv(shared_file("vxn_daily.csv"), "VXN")
    iv = IvSource.from_series(vxn)
    assert 0.1 < iv.iv(date(2017, 3, 20)) < 0.11
    assert iv.iv(date(2008, 11, 20)) == pytest.approx(0.8064)
