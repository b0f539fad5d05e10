"""The sim market's data: CSV loading (with messages a user can act on), the implied-volatility
input, the synthetic daily path and the intraday path built from each bar."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from broker.sim_market import (
    QQQM_RATIO,
    CsvError,
    DailyBar,
    IvSource,
    PricePath,
    load_ohlc_csv,
    load_series_csv,
    read_ohlc_csv,
    synthetic_bars,
)
from strategy.calendar import NY, nyse
from tests.conftest import shared_file

CAL = nyse()
HEADER = "Date,Open,High,Low,Close,Adj Close,Volume\n"


def write(tmp_path: Path, text: str, name: str = "bars.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def hand_bars(start: date, n: int) -> list[DailyBar]:
    sessions = CAL.sessions_between(start, start + timedelta(days=3 * n + 10))[:n]
    return [DailyBar(s.day, 100 + i, 103 + i, 98 + i, 101 + i) for i, s in enumerate(sessions)]


# --- CSV ------------------------------------------------------------------------------------------


def test_yahoo_file_loads_and_null_rows_are_counted(tmp_path: Path) -> None:
    p = write(tmp_path, HEADER + "2024-01-02,100,102,99,101,100.5,1000\n"
                                 "2024-01-03,null,null,null,null,null,null\n"
                                 "2024-01-04,101,103,100,102.5,102,2000\n"
                                 "2024-01-05,,,,,,\n")
    result = read_ohlc_csv(p)
    assert result.skipped_null == 2
    assert result.bars == [DailyBar(date(2024, 1, 2), 100, 102, 99, 101),
                           DailyBar(date(2024, 1, 4), 101, 103, 100, 102.5)]
    assert load_ohlc_csv(p) == result.bars


def test_ib_style_header_and_compact_dates(tmp_path: Path) -> None:
    p = write(tmp_path, "date,OPEN,high,Low,close,volume,wap\n"
                        "20240102,100,102,99,101,5,1\n20240103,101,103,100,102,5,1\n")
    assert [b.day for b in load_ohlc_csv(p)] == [date(2024, 1, 2), date(2024, 1, 3)]


def test_close_on_the_edge_within_tolerance_is_accepted(tmp_path: Path) -> None:
    p = write(tmp_path, HEADER + "2024-01-02,100,102,99,102.0000000001,1,1\n")
    assert load_ohlc_csv(p)[0].close == pytest.approx(102)


@pytest.mark.parametrize(("body", "message"), [
    ("2024-01-02,100,102,99,abc,1,1\n", r"line 2: a price is not a number"),
    ("2024-01-02,100,102,99,101,1,1\n2024-01-03,0,102,99,101,1,1\n", r"line 3: prices must be positive"),
    ("2024-01-02,100,98,99,98.5,1,1\n", r"line 2: low 99 is above high 98"),
    ("2024-01-02,100,102,99,105,1,1\n", r"line 2: close 105 is outside the low–high range"),
    ("2024-01-02,100,102,99,101,1,1\n2024-01-02,100,102,99,101,1,1\n", r"line 3: duplicate date"),
    ("2024-01-03,100,102,99,101,1,1\n2024-01-02,100,102,99,101,1,1\n", r"line 3: dates must ascend"),
    ("01/02/2024,100,102,99,101,1,1\n", r"line 2: '01/02/2024' is not a date"),
    ("2024-01-02,100,102\n", r"line 2: too few columns"),
    ("", r"no rows with prices"),
])
def test_malformed_rows_name_file_line_and_problem(tmp_path: Path, body: str, message: str) -> None:
    p = write(tmp_path, HEADER + body)
    with pytest.raises(CsvError, match=message) as err:
        load_ohlc_csv(p)
    assert str(p) in str(err.value)


@pytest.mark.parametrize(("text", "message"), [
    ("", "the file is empty"),
    ("Date,Open,Close\n2024-01-02,1,1\n", r"missing column\(s\) high, low"),
])
def test_unusable_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CsvError, match=message):
        load_ohlc_csv(write(tmp_path, text))


def test_csv_error_is_a_value_error() -> None:
    assert issubclass(CsvError, ValueError)


def test_iv_series_in_percent_or_fractions(tmp_path: Path) -> None:
    p = write(tmp_path, "Date,VXN,Other\n2024-01-02,25.3,x\n2024-01-03,null,x\n2024-01-04,0.31,x\n")
    assert load_series_csv(p, "vxn") == {date(2024, 1, 2): pytest.approx(0.253), date(2024, 1, 4): 0.31}


@pytest.mark.parametrize(("text", "column", "message"), [
    ("Date,VXN\n2024-01-02,abc\n", "VXN", r"line 2: 'abc' is not a number"),
    ("Date,VXN\n2024-01-02,-3\n", "VXN", r"line 2: a volatility must be positive"),
    ("Date,VXN\n2024-01-02,20\n2024-01-02,21\n", "VXN", r"line 3: duplicate date"),
    ("Date,VIX\n2024-01-02,20\n", "VXN", r"no column 'VXN'"),
    ("Day,VXN\n2024-01-02,20\n", "VXN", r"no Date column"),
    ("Date,VXN\n2024-01-02,null\n", "VXN", r"has no values"),
])
def test_iv_series_errors(tmp_path: Path, text: str, column: str, message: str) -> None:
    with pytest.raises(CsvError, match=message):
        load_series_csv(write(tmp_path, text), column)


def test_iv_source_constant_and_series() -> None:
    assert IvSource.constant(0.2).iv(date(2000, 1, 1)) == 0.2
    iv = IvSource.from_series({date(2024, 1, 2): 0.2, date(2024, 1, 10): 0.3})
    assert iv.iv(date(2023, 12, 1)) == 0.2  # before the first value: the first
    assert iv.iv(date(2024, 1, 9)) == 0.2  # latest on or before the day
    assert iv.iv(date(2024, 1, 10)) == 0.3
    assert iv.iv(date(2030, 1, 1)) == 0.3
    with pytest.raises(ValueError):
        IvSource.constant(0)
    with pytest.raises(ValueError):
        IvSource.from_series({})


def test_shared_data_files_load() -> None:
    bars = load_ohlc_csv(shared_file("qqq_daily.csv"))
    assert len(bars) > 6000
    assert all(b.low <= min(b.open, b.close) and max(b.open, b.close) <= b.high for b in bars)
    path = PricePath.from_bars(bars[-300:], CAL, seed=1)
    assert path.skipped == 0
    vxn = load_series_csv(shared_file("vxn_daily.csv"), "VXN")
    assert all(0.05 < v < 1.5 for v in vxn.values())


# --- synthetic daily path -----------------------------------------------------------------------


def test_synthetic_bars_are_seeded_consistent_and_have_dips() -> None:
    sessions = CAL.sessions_between(date(2014, 1, 1), date(2023, 12, 31))
    a = synthetic_bars(sessions, seed=7)
    assert a == synthetic_bars(sessions, seed=7)
    assert a != synthetic_bars(sessions, seed=8)
    assert [b.day for b in a] == [s.day for s in sessions]
    assert all(b.low <= min(b.open, b.close) and max(b.open, b.close) <= b.high for b in a)
    deep_total = 0
    for seed in range(5):
        bars = synthetic_bars(sessions, seed=seed)
        changes = [y.close / x.close - 1 for x, y in pairwise(bars)]
        assert 0.08 < sum(c <= -0.01 for c in changes) / len(changes) < 0.3
        deep_total += sum(c <= -0.05 for c in changes)
    assert deep_total >= 5  # −5 % days exist, but are rare


def test_synthetic_bars_start_near_s0() -> None:
    bars = synthetic_bars(CAL.sessions_between(date(2024, 1, 1), date(2024, 1, 31)), seed=1, s0=480)
    assert 450 < bars[0].close < 510


# --- intraday path ------------------------------------------------------------------------------


def test_intraday_path_touches_open_high_low_close_and_stays_inside() -> None:
    bars = hand_bars(date(2024, 3, 4), 20)
    path = PricePath.from_bars(bars, CAL, seed=3)
    for b, s in zip(bars, path.sessions, strict=True):
        n = int((s.close - s.open).total_seconds() // 60)
        pts = [path.price_at(s.open + timedelta(minutes=m)) for m in range(n + 1)]
        assert pts[0] == b.open and pts[-1] == b.close
        assert min(pts) == b.low and max(pts) == b.high
        assert path.price_at(s.close) == b.close


def test_early_close_session_ends_at_its_close() -> None:
    day = date(2024, 11, 29)  # the day after Thanksgiving closes at 13:00
    bars = [DailyBar(date(2024, 11, 27), 100, 101, 99, 100), DailyBar(day, 100, 104, 97, 103)]
    path = PricePath.from_bars(bars, CAL, seed=1)
    close = datetime(2024, 11, 29, 13, 0, tzinfo=NY)
    assert path.sessions[1].close == close
    assert path.price_at(close - timedelta(seconds=1)) == pytest.approx(103, abs=0.1)
    assert path.price_at(datetime(2024, 11, 29, 15, 0, tzinfo=NY)) == 103


def test_price_outside_hours_is_the_last_close() -> None:
    bars = hand_bars(date(2024, 3, 4), 5)  # Mon 4 .. Fri 8 March
    path = PricePath.from_bars(bars, CAL, seed=3)
    assert path.price_at(datetime(2024, 3, 1, 12, tzinfo=NY)) == bars[0].open  # before the first session
    assert path.price_at(datetime(2024, 3, 5, 8, tzinfo=NY)) == bars[0].close  # before Tuesday's open
    assert path.price_at(datetime(2024, 3, 5, 18, tzinfo=NY)) == bars[1].close
    assert path.price_at(datetime(2024, 3, 10, 12, tzinfo=NY)) == bars[4].close  # weekend after the last
    assert path.first_day == date(2024, 3, 4) and path.last_day == date(2024, 3, 8)


def test_prev_close_close_of_and_skipped_bars() -> None:
    bars = hand_bars(date(2024, 3, 4), 5)
    saturday = DailyBar(date(2024, 3, 9), 1, 2, 0.5, 1)
    path = PricePath.from_bars([*bars, saturday], CAL, seed=3)
    assert path.skipped == 1 and len(path.sessions) == 5
    assert path.prev_close(date(2024, 3, 4)) is None
    assert path.prev_close(date(2024, 3, 6)) == bars[1].close
    assert path.prev_close(date(2024, 3, 9)) == bars[4].close
    assert path.close_of(date(2024, 3, 7)) == bars[3].close
    assert path.close_of(date(2024, 3, 9)) is None
    assert path.last_session_day(date(2024, 3, 10)) == date(2024, 3, 8)
    with pytest.raises(ValueError):
        PricePath.from_bars([saturday], CAL, seed=1)


def test_paths_are_deterministic_by_seed() -> None:
    bars = hand_bars(date(2024, 3, 4), 5)
    t = datetime(2024, 3, 6, 11, 17, tzinfo=NY)
    a, b, c = (PricePath.from_bars(bars, CAL, seed=s) for s in (5, 5, 6))
    assert a.price_at(t) == b.price_at(t)
    times = [datetime(2024, 3, 6, 10, m, tzinfo=NY) for m in range(0, 60, 5)]
    assert [a.price_at(x) for x in times] != [c.price_at(x) for x in times]


def test_wall_clock_path_covers_today() -> None:
    today = datetime.now(UTC).astimezone(NY).date()
    path = PricePath.wall_clock(CAL, seed=2, start=today - timedelta(days=30), end=today + timedelta(days=30))
    assert path.first_day >= today - timedelta(days=30)
    assert 400 < path.price_at(datetime.combine(path.first_day, datetime.min.time(), NY) + timedelta(hours=12)) < 560
    assert QQQM_RATIO == 0.4115


def test_intraday_paths_drawn_on_demand_are_those_drawn_in_order() -> None:
    """A backtest draws a session's intraday path only when it looks at its ticks; whatever the order
    the sessions are asked for, each path is the one drawing every session in order gives."""
    import random as _random

    from broker.sim_market import _intraday

    cal = nyse()
    bars = synthetic_bars(cal.sessions_between(date(2010, 1, 1), date(2012, 12, 31)), seed=3)
    for seed in (1, 5):
        rng = _random.Random(seed * 7919 + 17)
        path = PricePath.from_bars(bars, cal, seed=seed)
        eager = []
        for b in bars:
            s = cal.session(b.day)
            assert s is not None
            eager.append(_intraday(b, max(3, int((s.close - s.open).total_seconds() // 300)), rng))
        order = list(range(len(bars)))
        _random.Random(seed).shuffle(order)
        assert all(path.points(i) == eager[i] for i in order[:200])  # random access, back and forth
        fresh = PricePath.from_bars(bars, cal, seed=seed)
        picked = sorted(order[200:260])
        assert all(fresh.points(i) == eager[i] for i in picked)  # forward, skipping the sessions between
        assert all(fresh.close_of(b.day) == eager[i][-1] for i, b in enumerate(bars))  # closes without drawing
