"""The calibrated option market (issue 19): the expiries QQQ really lists, no look-ahead, the
calibration's round trip, `qqq-bot chain`'s JSON, and the done-when criteria on the February 2026
LEAPS fixture (``tests/chains/``, built from the issue's published figures)."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from statistics import median

import pytest

from bot.app.cli import main
from bot.lab.backtest import BacktestConfig
from bot.lab.calibrate import calibrate, read_quotes
from broker.clock import SimClock
from broker.sim import SimBroker
from broker.sim_market import IvSource, PricePath, load_ohlc_csv
from broker.sim_options import OptionPricer
from strategy.calendar import NY, SessionCalendar, nyse
from strategy.calibration import RealQuote, fit, quote_errors, usable
from strategy.listing import listed_expiries, monthly_expiry, third_friday
from strategy.model import OptionContract
from strategy.option_market import DEFAULT_PARAMS, MarketDay, MarketParams, model_value, quote_cents

CAL = nyse()
CHAINS = Path(__file__).resolve().parent / "chains"
QUOTES = CHAINS / "qqq_leaps_2026-02.csv"
VXN = f"{CHAINS / 'vxn_2026-02.csv'}:VXN"
CALM, DIP, AFTER = date(2026, 2, 11), date(2026, 2, 12), date(2026, 2, 13)


# --- listing ---------------------------------------------------------------------------------


def test_february_2026_lists_the_leaps_the_real_chain_listed() -> None:
    for day in (CALM, DIP, AFTER):
        far = [e for e in listed_expiries(CAL, day) if (e - day).days >= 365]
        assert far == [date(2027, 6, 17), date(2027, 9, 17), date(2027, 12, 17), date(2028, 1, 21),
                       date(2028, 6, 16)]
        assert date(2027, 1, 15) in listed_expiries(CAL, day)  # 338 days: the last before the gap
        assert not [e for e in listed_expiries(CAL, day) if date(2027, 1, 15) < e < date(2027, 6, 17)]


def test_third_friday_rule_moved_for_holidays() -> None:
    assert third_friday(2026, 2) == date(2026, 2, 20)
    assert monthly_expiry(CAL, 2025, 4) == date(2025, 4, 17)  # Good Friday 2025-04-18
    assert monthly_expiry(CAL, 2026, 6) == date(2026, 6, 18)  # Juneteenth 2026-06-19
    assert monthly_expiry(CAL, 2027, 6) == date(2027, 6, 17)  # Juneteenth observed on Friday 2027-06-18
    for day in (date(2024, 5, 6), date(2026, 2, 12), date(2025, 11, 3)):
        for e in listed_expiries(CAL, day):
            assert CAL.is_session(e) or e > CAL.last, e


def test_dates_beyond_the_calendar_follow_the_holiday_rules() -> None:
    """A calendar that ends early (as the exchange library's does, about a year ahead) lists the
    same expiries as the full one: Good Friday and Juneteenth are known by rule past its end."""
    short = SessionCalendar(CAL.sessions_between(date(2020, 1, 1), date(2025, 1, 31)))
    for day in (date(2025, 1, 6), date(2025, 1, 27)):
        assert listed_expiries(short, day) == listed_expiries(CAL, day)
    assert monthly_expiry(short, 2027, 6) == monthly_expiry(CAL, 2027, 6) == date(2027, 6, 17)
    assert monthly_expiry(short, 2030, 4) == date(2030, 4, 18)  # Good Friday 2030-04-19
    assert monthly_expiry(short, 2032, 6) == date(2032, 6, 17)  # Juneteenth (Saturday) observed Friday 06-18
    assert monthly_expiry(short, 2033, 6) == date(2033, 6, 17)  # Juneteenth on a Sunday: the Friday stands


def test_the_sim_offers_the_first_leaps_the_live_bot_would_get() -> None:
    bars = load_ohlc_csv(CHAINS / "qqq_2026-02.csv")
    path = PricePath.from_bars(bars, CAL, seed=1)
    at = datetime.combine(DIP, time(15, 45), NY)
    broker = SimBroker(SimClock(at), path, IvSource.constant(0.25), calendar=CAL, mixed_account=False)
    expiries = broker.pricer.expiries(at)
    assert min(e for e in expiries if (e - DIP).days >= 365) == date(2027, 6, 17)  # ~490 days, not 2027-02-19


# --- no look-ahead ---------------------------------------------------------------------------


def _pricer(vxn: dict[date, float]) -> OptionPricer:
    return OptionPricer(CAL, IvSource.from_series(vxn))


def test_a_tick_before_the_close_sees_the_previous_close_of_the_index() -> None:
    calm = {date(2026, 2, 10): 0.2346, CALM: 0.2326, DIP: 0.2326}
    stressed = dict(calm) | {DIP: 0.40}  # the dip day's own close, known only at 16:00
    c = OptionContract("QQQ", date(2027, 6, 17), Decimal(600))
    for hhmm in (time(9, 35), time(12, 0), time(15, 55)):
        at = datetime.combine(DIP, hhmm, NY)
        a, b = _pricer(calm), _pricer(stressed)
        assert a.quote(c, at, 600.0, a.state(at)) == b.quote(c, at, 600.0, b.state(at))
        assert a.state(at).index == pytest.approx(0.2326)
    close = datetime.combine(DIP, time(16, 0), NY)
    a, b = _pricer(calm), _pricer(stressed)
    qa, qb = a.quote(c, close, 600.0, a.state(close)), b.quote(c, close, 600.0, b.state(close))
    assert qa is not None and qb is not None and qb.mid is not None and qa.mid is not None and qb.mid > qa.mid
    weekend = datetime.combine(date(2026, 2, 14), time(12, 0), NY)
    assert b.state(weekend).index == pytest.approx(0.40)


def test_the_sim_broker_quotes_with_what_was_known() -> None:
    bars = load_ohlc_csv(CHAINS / "qqq_2026-02.csv")
    path = PricePath.from_bars(bars, CAL, seed=1)
    at = datetime.combine(DIP, time(10, 0), NY)
    lo = IvSource.from_series({date(2026, 2, 9): 0.23, CALM: 0.23, DIP: 0.23})
    hi = IvSource.from_series({date(2026, 2, 9): 0.23, CALM: 0.23, DIP: 0.60})
    c = [OptionContract("QQQ", date(2027, 6, 17), Decimal(k)) for k in (550, 600, 650)]

    async def quotes(iv: IvSource) -> list[tuple[Decimal | None, Decimal | None]]:
        broker = SimBroker(SimClock(at), path, iv, calendar=CAL, mixed_account=False)
        return [(q.bid, q.ask) for q in await broker.option_quotes(c)]

    import asyncio

    assert asyncio.run(quotes(lo)) == asyncio.run(quotes(hi))


# --- the model -------------------------------------------------------------------------------


def test_long_dated_volatility_moves_much_less_than_the_index() -> None:
    day, expiry = DIP, date(2027, 6, 17)
    T = (expiry - day).days / 365
    iv = {}
    for index in (0.23, 0.27, 0.60):
        _, _, sigma, _ = model_value(DEFAULT_PARAMS, MarketDay(day, index, 0.035, 0.006), 600.0, 600.0, expiry, T, "C")
        iv[index] = sigma
    assert iv[0.27] - iv[0.23] < 0.01  # the index +4 points: the LEAPS under one point
    assert iv[0.60] > iv[0.27] + 0.03  # a crash still lifts it


def test_skew_and_spreads_look_like_real_leaps() -> None:
    m = MarketDay(DIP, 0.2326, 0.035, 0.006)
    expiry, T, S = date(2027, 6, 17), (date(2027, 6, 17) - DIP).days / 365, 600.64
    F = S * math.exp(0.029 * T)
    lo = model_value(DEFAULT_PARAMS, m, S, F * math.exp(-0.1), expiry, T, "C")[2]
    hi = model_value(DEFAULT_PARAMS, m, S, F * math.exp(0.1), expiry, T, "C")[2]
    assert (lo - hi) / (0.2 / math.sqrt(T)) == pytest.approx(0.27, abs=0.005)
    value, delta, _, x = model_value(DEFAULT_PARAMS, m, S, 600.0, expiry, T, "C")
    bid, ask = quote_cents(DEFAULT_PARAMS, m, S, value, expiry, x)
    assert 0.55 < delta < 0.65 and 0.045 < (ask - bid) / ((ask + bid) / 2) < 0.065


# --- calibration -----------------------------------------------------------------------------


TRUE = MarketParams(long_run_vol=0.24, reversion=3.0, skew=0.20, spread_floor=0.003, spread_pct=0.03,
                    spread_wing=0.4, spread_stress=0.5)


def synthetic_quotes(p: MarketParams) -> list[RealQuote]:
    """Quotes the model itself makes, on days with different index levels, at several expiries and
    strikes (rounded to the cent as a real quote is)."""
    out = []
    for i, (day, index, spot) in enumerate(((date(2024, 3, 4), 0.16, 440.0), (date(2024, 8, 5), 0.33, 430.0),
                                            (date(2025, 4, 7), 0.48, 420.0), (date(2025, 9, 8), 0.22, 580.0))):
        m = MarketDay(day, index, 0.04, 0.006)
        for expiry in (day + timedelta(days=45 + i), day + timedelta(days=200), day + timedelta(days=480),
                       day + timedelta(days=700)):
            T = (expiry - day).days / 365
            for k in range(-4, 5):
                strike = round(spot * math.exp(0.06 * k) / 5) * 5
                value, _, _, x = model_value(p, m, spot, strike, expiry, T, "C")
                bid, ask = quote_cents(p, m, spot, value, expiry, x)
                if bid > 0:
                    out.append(RealQuote(day, expiry, strike, "C", bid / 100, ask / 100, spot, index, 0.04, 0.006, T))
    return out


def test_calibration_round_trip_recovers_the_parameters() -> None:
    quotes = synthetic_quotes(TRUE)
    wrong = MarketParams(long_run_vol=0.30, reversion=10.0, skew=0.06, spread_floor=0.001, spread_pct=0.015,
                         spread_wing=0.1, spread_stress=0.1)
    got = fit(wrong, quotes).params
    assert got.long_run_vol == pytest.approx(TRUE.long_run_vol, rel=0.02)
    assert got.reversion == pytest.approx(TRUE.reversion, rel=0.10)
    assert got.skew == pytest.approx(TRUE.skew, rel=0.02)
    assert got.spread_pct == pytest.approx(TRUE.spread_pct, rel=0.10)
    assert got.spread_floor == pytest.approx(TRUE.spread_floor, rel=0.10)
    assert got.spread_wing == pytest.approx(TRUE.spread_wing, rel=0.15)
    assert got.spread_stress == pytest.approx(TRUE.spread_stress, rel=0.15)


def test_parameters_survive_a_save_and_a_load(tmp_path: Path) -> None:
    from bot.lab.pricing import PricingError, load_pricing, save_pricing

    save_pricing(TRUE, tmp_path / "p.json", {"quotes": "x.csv"})
    assert load_pricing(tmp_path / "p.json") == TRUE
    (tmp_path / "bad.json").write_text('{"format": "qqq-bot option market", "version": 1, "params": {"skw": 1}}')
    with pytest.raises(PricingError, match="skw"):
        load_pricing(tmp_path / "bad.json")


# --- done when: the fixture of February 2026 -------------------------------------------------


def _leaps_errors(p: MarketParams, quotes: list[RealQuote], day: date) -> tuple[float, float, float]:
    """(median mid error %, median model spread %, median real spread %) of 0.5–0.7-delta calls at ≥ 365 days."""
    sel = [q for q, d in usable(quotes) if q.day == day and 0.5 <= d <= 0.7 and (q.expiry - q.day).days >= 365]
    assert len(sel) > 50
    errs = [quote_errors(p, q) for q in sel]
    return median(e[0] for e in errs), median(e[1] for e in errs), median(q.spread_pct for q in sel)


@pytest.fixture(scope="module")
def fixture_quotes() -> list[RealQuote]:
    return read_quotes(QUOTES, BacktestConfig(iv=VXN))


@pytest.mark.parametrize("day", [CALM, DIP, AFTER], ids=["calm", "dip", "day-after"])
def test_default_model_meets_the_done_when_on_the_fixture(fixture_quotes: list[RealQuote], day: date) -> None:
    mid_error, model_spread, real_spread = _leaps_errors(DEFAULT_PARAMS, fixture_quotes, day)
    assert abs(mid_error) <= 5.0
    assert abs(model_spread - real_spread) <= 1.5
    first_real = min(q.expiry for q in fixture_quotes if q.day == day and (q.expiry - q.day).days >= 365)
    first_model = min(e for e in listed_expiries(CAL, day) if (e - day).days >= 365)
    assert first_model == first_real


def test_calibrate_brings_a_wrong_start_to_the_done_when_level(fixture_quotes: list[RealQuote]) -> None:
    """The old model's flavour: LEAPS priced at the index with a flat skew and 1.5 % spreads."""
    wrong = MarketParams(long_run_vol=0.30, reversion=0.5, skew=0.06, spread_floor=0.0005, spread_pct=0.015,
                         spread_wing=0.0, spread_stress=0.0)
    assert abs(_leaps_errors(wrong, fixture_quotes, DIP)[0]) > 5.0
    result = calibrate(fixture_quotes, wrong)
    for day in (CALM, DIP, AFTER):
        mid_error, model_spread, real_spread = _leaps_errors(result.fit.params, fixture_quotes, day)
        assert abs(mid_error) <= 5.0 and abs(model_spread - real_spread) <= 1.5


def test_calibrate_command_prints_the_table_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "params.json"
    assert main(["calibrate", str(QUOTES), "--iv", VXN, "--save", str(out)]) == 0
    text = capsys.readouterr().out
    assert "delta 0.5–0.7" in text and "expiry 2027-06-17" in text and "after" in text
    saved = json.loads(out.read_text())
    assert saved["params"]["skew"] == pytest.approx(0.27, abs=0.02)
    assert main(["calibrate", str(CHAINS / "vxn_2026-02.csv"), "--iv", VXN]) == 2
    assert "missing column" in capsys.readouterr().err


# --- qqq-bot chain ---------------------------------------------------------------------------


def test_chain_json_lists_every_expiry_and_strike(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["chain", "--date", "2026-02-12", "--csv", str(CHAINS / "qqq_2026-02.csv"), "--iv", VXN, "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"at", "underlying", "options"}
    assert datetime.fromisoformat(data["at"]).astimezone(NY).time() == time(15, 45)
    assert 590 < data["underlying"] < 620
    opts = data["options"]
    assert all(set(o) == {"expiry", "strike", "right", "bid", "ask", "iv", "delta"} for o in opts)
    assert {o["right"] for o in opts} == {"C", "P"}
    expiries = sorted({o["expiry"] for o in opts})
    assert expiries == [e.isoformat() for e in listed_expiries(CAL, DIP)]
    per_expiry = {e: {o["strike"] for o in opts if o["expiry"] == e} for e in expiries}
    assert len({frozenset(s) for s in per_expiry.values()}) == 1 and len(per_expiry[expiries[0]]) > 100
    first_leaps = min(e for e in expiries if (date.fromisoformat(e) - DIP).days >= 365)
    assert first_leaps == "2027-06-17"
    near = [o for o in opts if o["expiry"] == first_leaps and o["right"] == "C" and 0.55 <= o["delta"] <= 0.65]
    assert near and all(0.20 < o["iv"] < 0.26 and 0.04 < (o["ask"] - o["bid"]) / ((o["ask"] + o["bid"]) / 2) < 0.07
                        for o in near)
    assert main([*argv[:-1], "--time", "10:00"]) == 0
    assert "2026-06-18" in capsys.readouterr().out  # the table: Juneteenth moves June 2026 to Thursday
    assert main(["chain", "--date", "2026-02-14", "--csv", str(CHAINS / "qqq_2026-02.csv"), "--iv", VXN]) == 2
    assert "not a trading session" in capsys.readouterr().err
