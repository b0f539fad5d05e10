"""Interest on idle cash: credited daily on positive USD cash (ACT/365) by the sim broker and the
backtest, from a constant or a dated series carried forward past its last date; 0 by default."""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from bot.app.cli import main
from bot.lab.rates import RateError, parse_cash_rate
from broker.clock import SimClock
from broker.sim import SimBroker
from broker.sim_market import CashRate, IvSource, PricePath
from strategy.calendar import nyse
from tests.conftest import shared_file
from tests.test_engine import bars_oc

D = Decimal


CAPITAL = D(100_000)


def _broker(rate: CashRate, cash: Decimal = CAPITAL) -> tuple[SimBroker, SimClock, PricePath]:
    bars = bars_oc([(500, 500)] * 40)
    cal = nyse()
    path = PricePath.from_bars(bars, cal, seed=1)
    clock = SimClock(path.sessions[0].open)
    broker = SimBroker(clock, path, IvSource.constant(0.2), calendar=cal, starting_cash=cash, mixed_account=False,
                       cash_rate=rate)
    return broker, clock, path


def test_a_constant_rate_is_credited_every_calendar_day() -> None:
    broker, clock, _ = _broker(CashRate.constant(0.0365))  # 0.01 % a day on ACT/365
    start = clock.now()
    clock.advance_to(start + timedelta(minutes=1))  # the first step starts the count
    clock.advance_to(start + timedelta(days=10))
    expected = D(100_000) * (1 + D("0.0001")) ** 10 - D(100_000)  # each day on the balance carried in
    assert abs(broker.interest - expected) < D("0.001")
    assert abs(broker.account.usd - D(100_000) - broker.interest) < D("0.000001")


def test_no_interest_on_negative_cash_and_none_by_default() -> None:
    broker, clock, _ = _broker(CashRate.constant(0.05), cash=D(-1_000))
    clock.advance_to(clock.now() + timedelta(days=5))
    assert broker.interest == 0 and broker.account.usd == D(-1_000)
    broker, clock, _ = _broker(parse_cash_rate("0"))
    clock.advance_to(clock.now() + timedelta(days=5))
    assert broker.interest == 0 and broker.account.usd == D(100_000)


def test_a_series_applies_each_days_rate_and_carries_the_last_forward(tmp_path: Path) -> None:
    csv = tmp_path / "rates.csv"
    csv.write_text("Date,RATE\n2024-01-01,3.65\n2024-03-01,7.30\n")  # monthly, percent a year
    rate = parse_cash_rate(f"{csv}:RATE")
    assert rate.rate(date(2024, 2, 15)) == pytest.approx(0.0365)
    assert rate.rate(date(2024, 3, 1)) == pytest.approx(0.073)
    assert rate.rate(date(2030, 1, 1)) == pytest.approx(0.073)  # past the last date: the last value
    assert rate.rate(date(2020, 1, 1)) == pytest.approx(0.0365)  # before the first: the first
    assert rate.last_day == date(2024, 3, 1)


@pytest.mark.parametrize("bad", ["4x", "150%", "-1%", "nofile.csv:X"])
def test_bad_rates_are_refused(bad: str) -> None:
    with pytest.raises(RateError):
        parse_cash_rate(bad)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["backtest", "--synthetic-years", "2", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_backtest_earns_interest_and_reports_it(capsys: pytest.CaptureFixture[str]) -> None:
    plain = _run(capsys)
    paid = _run(capsys, "--cash-rate", "4%")
    assert D(plain["summary"]["interest"]) == 0 and plain["summary"]["cash_rate"] == "none"
    interest = D(paid["summary"]["interest"])
    years = plain["summary"]["sessions"] / 252
    # about 4 % a year on the cash held (most of the account)
    cash_share = paid["summary"]["avg_cash_pct"] / 100
    assert D("0.6") * 4000 * D(years) * D(cash_share) < interest < D("1.2") * 4000 * D(years) * D(cash_share)
    assert 50 < paid["summary"]["avg_cash_pct"] <= 100
    assert D(paid["summary"]["final_equity"]) > D(plain["summary"]["final_equity"])
    # the trades are the same: interest only adds cash (the sizes are fixed at one contract)
    assert [t["time"] for t in paid["trades"]] == [t["time"] for t in plain["trades"]]


def test_fast_forward_and_every_tick_agree_with_interest(capsys: pytest.CaptureFixture[str]) -> None:
    fast = _run(capsys, "--cash-rate", "5%", "--set", "position_size=10%")
    slow = _run(capsys, "--cash-rate", "5%", "--set", "position_size=10%", "--every-tick")
    assert fast == slow


def test_the_report_says_a_series_was_carried_forward(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "rates.csv"
    csv.write_text("Date,R\n2020-01-01,2.0\n2024-06-01,4.0\n")
    assert main(["backtest", "--synthetic-years", "2", "--cash-rate", f"{csv}:R"]) == 0
    out = capsys.readouterr().out
    assert "the cash rate's series ends 2024-06-01: its last value is carried forward" in out
    assert "interest on idle cash (rates.csv:R)" in out and "price returns" in out


def test_the_real_t_bill_series(capsys: pytest.CaptureFixture[str]) -> None:
    tbill = shared_file("tbill_3m.csv")
    rate = parse_cash_rate(f"{tbill}:TB3MS")
    assert rate.rate(date(2007, 1, 15)) == pytest.approx(0.0497, abs=0.002)  # ~5 % before the crisis
    assert rate.rate(date(2013, 6, 1)) < 0.002  # near zero after it
    assert rate.last_day == date(2025, 9, 1)
