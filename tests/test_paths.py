"""`qqq-bot backtest --paths N`: block-bootstrap histories through the real command line, real
worker processes (and a real local Ray when installed) and a real SQLite ledger per path. The
histories are a few months long to keep the file fast."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from bot.app.cli import main
from bot.lab import paths
from broker.sim_market import load_rate_series_csv, load_series_csv, synthetic_bars
from strategy.calendar import nyse
from strategy.metrics import percentile, worst_window_cagr

START, END = date(2024, 9, 3), date(2025, 3, 31)


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, Path]:
    """A QQQ CSV of seven months, and a CSV with a VXN and a rate column whose values differ every day
    (so a day's VXN and rate can only travel with it)."""
    sessions = nyse().sessions_between(START, END)
    bars = synthetic_bars(sessions, seed=7, s0=400.0)
    qqq = tmp_path / "qqq.csv"
    qqq.write_text("Date,Open,High,Low,Close\n"
                   + "".join(f"{b.day},{b.open!r},{b.high!r},{b.low!r},{b.close!r}\n" for b in bars))
    extra = tmp_path / "extra.csv"
    extra.write_text("Date,VXN,RATE\n" + "".join(f"{s.day},{18 + (i % 97) * 0.25:.2f},{1 + (i % 89) * 0.03:.2f}\n"
                                                 for i, s in enumerate(sessions)))
    return qqq, extra


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = main(["backtest", *args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result: dict[str, Any] = json.loads(captured.out)
    return result


def test_each_block_keeps_its_days_with_their_vxn_and_rates(history: tuple[Path, Path]) -> None:
    qqq, extra = history
    spec = paths.Spec(qqq, 0, 3, None, None, Decimal(100_000), f"{extra}:VXN", f"{extra}:RATE", (), 10)
    real = paths.session_bars(spec)
    vxn = load_series_csv(extra, "VXN")
    rates = load_rate_series_csv(extra, "RATE")
    for p in range(4):
        cfg = paths.path_config(spec, p)
        sources = paths.bootstrap_sources(len(real), 10, paths.path_rng(3, p))
        assert cfg.bars[0] == real[0]  # the first session only gives the previous close: the real one
        assert [b.day for b in cfg.bars] == [b.day for b in real]  # the real calendar's sessions
        assert sources != list(range(len(real)))  # really reshuffled
        for k in range(1, len(real)):
            src, new, prev = real[sources[k]], cfg.bars[k], cfg.bars[k - 1]
            before = real[sources[k] - 1]
            # the day's own moves from its previous close, now from the rebuilt previous close
            for got, want in ((new.open, src.open), (new.high, src.high), (new.low, src.low), (new.close, src.close)):
                assert got / prev.close == pytest.approx(want / before.close, rel=1e-12)
            assert cfg.iv_source.iv(new.day) == pytest.approx(vxn[src.day])
            assert cfg.rate_source.rate(new.day) == pytest.approx(rates[src.day])
        # blocks of 10 consecutive real sessions (the last one may be cut short)
        runs = [[sources[1]]]
        for a, b in pairwise(sources[1:]):
            if b == a + 1 and len(runs[-1]) < 10:
                runs[-1].append(b)
            else:
                runs.append([b])
        assert all(len(r) == 10 for r in runs[:-1]) and 1 <= len(runs[-1]) <= 10


def test_one_block_over_the_whole_history_is_the_plain_backtest(
        history: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    qqq, extra = history
    common = ["--csv", str(qqq), "--iv", f"{extra}:VXN", "--cash-rate", f"{extra}:RATE", "--seed", "4",
              "--set", "entry_drop=0.5%"]
    plain = run_json(capsys, *common)["summary"]
    sessions = plain["sessions"]
    one = run_json(capsys, *common, "--paths", "1", "--block-days", str(sessions - 1), "--workers", "1")
    path = one["paths"][0]
    assert plain["entries"] > 0
    assert path["entries"] == plain["entries"]
    assert path["final_equity"] == float(plain["final_equity"])
    assert path["cagr"] == plain["cagr"] and path["max_drawdown_pct"] == plain["max_drawdown_pct"]
    assert path["buy_hold"]["final_equity"] == float(plain["buy_hold"]["final_equity"])
    assert path["behind_buy_hold"] == (float(plain["final_equity"]) < float(plain["buy_hold"]["final_equity"]))


@pytest.mark.parametrize("backend", ["process", "ray"])
def test_a_seed_gives_the_same_paths_on_every_backend(
        backend: str, history: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    if backend == "ray":
        pytest.importorskip("ray")
    qqq, extra = history
    common = ["--csv", str(qqq), "--iv", f"{extra}:VXN", "--paths", "3", "--block-days", "15", "--seed", "9",
              "--set", "entry_drop=0.5%"]
    inline = [paths.run_path(paths.PathJob(_spec(qqq, extra), p)) for p in range(3)]
    got = run_json(capsys, *common, "--workers", "2", *(["--ray", "local"] if backend == "ray" else []))
    assert got["backend"] == backend and got["failed"] == []
    strip = [{k: v for k, v in s.items() if k not in ("equity", "buy_hold_equity")} for s in inline]
    assert got["paths"] == strip
    assert len({p["final_equity"] for p in got["paths"]}) == 3  # three different histories
    other = run_json(capsys, *common[:-4], "--seed", "10", "--set", "entry_drop=0.5%", "--workers", "2")
    assert other["paths"] != got["paths"]


def _spec(qqq: Path, extra: Path) -> paths.Spec:
    return paths.Spec(qqq.resolve(), 10, 9, None, None, Decimal(100_000), f"{extra.resolve()}:VXN", "0",
                      ("entry_drop_pct=0.5",), 15)


def test_results_file_resumes_and_the_report_reads_as_percentiles(
        history: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qqq, _ = history
    out, chart = tmp_path / "paths.csv", tmp_path / "fan.png"
    common = ["--csv", str(qqq), "--block-days", "20", "--workers", "2", "--out", str(out)]
    first = run_json(capsys, *common, "--paths", "2")
    assert main(["backtest", *common, "--paths", "3", "--chart", str(chart)]) == 0
    captured = capsys.readouterr()
    assert "2 of 3 paths already in" in captured.err
    assert "3 bootstrap paths" in captured.out and "p5" in captured.out and "p95" in captured.out
    assert "behind QQQ buy & hold at the end:" in captured.out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = run_json(capsys, *common, "--paths", "3")
    assert again["resumed"] == 3 and again["paths"][:2] == first["paths"]
    cagrs = [p["cagr"] for p in again["paths"]]
    assert again["figures"]["cagr"][2] == pytest.approx(sorted(cagrs)[1])  # the median of three
    assert again["figures"]["behind_buy_hold_share"] == sum(p["behind_buy_hold"] for p in again["paths"]) / 3


@pytest.mark.parametrize(("args", "words"), [
    (["--paths", "0"], "--paths must be"),
    (["--paths", "2", "--block-days", "5000"], "longer than the history"),
    (["--paths", "2", "--block-days", "0"], "--block-days must be at least 1"),
    (["--block-days", "10"], "--block-days needs --paths"),
])
def test_bad_input_is_one_line_and_exit_2(history: tuple[Path, Path], args: list[str], words: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    qqq, _ = history
    assert main(["backtest", "--csv", str(qqq), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and words in captured.err


def test_percentile_and_worst_stretch() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 25) == 1.75
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([7.0], 95) == 7.0
    days = [date(2000 + y, 1, 3) for y in range(12)]
    # doubles, then halves for five years, then recovers: the worst five years are the halving
    values = [100.0, 200.0, 100.0, 50.0, 25.0, 12.5, 6.25, 12.5, 25.0, 50.0, 100.0, 200.0]
    worst = worst_window_cagr(days, values, 5)
    assert worst == pytest.approx((6.25 / 200.0) ** (1 / ((days[6] - days[1]).days / 365.25)) - 1)
    assert worst_window_cagr(days[:5], values[:5], 5) is None  # shorter than five years
