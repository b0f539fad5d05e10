"""`qqq-bot backtest` through its command line: the JSON result, the report, bad input."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from bot.app.cli import main
from tests.conftest import shared_file

SUMMARY_KEYS = {"start", "end", "sessions", "entries", "exits", "rolls", "realized_pnl", "win_rate",
                "max_drawdown_pct", "cagr", "sharpe", "qqqm_shares", "qqqm_deployed", "pool",
                "starting_capital", "final_equity", "buy_hold", "interest", "avg_cash_pct", "cash_rate",
                "cash_rate_carried_from"}
TRADE_KEYS = {"time", "lot_id", "symbol", "sec_type", "expiry", "strike", "right", "side", "qty", "price",
              "commission", "reason", "underlying_price", "prev_close", "delta", "held_days", "pnl_pct"}


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["backtest", *args, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # nothing but the JSON on stdout


def check_consistency(result: dict) -> None:
    """The report's numbers follow from its own trades."""
    s = result["summary"]
    trades = result["trades"]
    assert set(s) == SUMMARY_KEYS
    assert all(set(t) == TRADE_KEYS for t in trades)
    times = [t["time"] for t in trades]
    assert times == sorted(times)
    assert all(("+" in t or t.endswith("Z")) for t in times)
    entries_lots = {t["lot_id"] for t in trades if t["reason"] == "entry"}
    assert s["entries"] == len(entries_lots)
    # realized option P&L = Σ over closed quantity (price − lot average) × 100 − all commissions of
    # the closed quantity
    lots: dict[int, dict] = {}
    for t in trades:
        if t["sec_type"] != "OPT":
            continue
        lot = lots.setdefault(t["lot_id"], {"bq": 0, "bcost": Decimal(0), "bcomm": Decimal(0), "pnl": Decimal(0),
                                            "sq": 0})
        price, comm, qty = Decimal(t["price"]), Decimal(t["commission"]), t["qty"]
        if t["side"] == "BUY":
            lot["bq"] += qty
            lot["bcost"] += price * qty
            lot["bcomm"] += comm
        else:
            avg = lot["bcost"] / lot["bq"]
            lot["pnl"] += (price - avg) * qty * 100 - comm - lot["bcomm"] * qty / lot["bq"]
            lot["sq"] += qty
    realized = sum((lot["pnl"] for lot in lots.values()), Decimal(0))
    assert_only_earned_money_recycled(trades)
    assert abs(realized - Decimal(s["realized_pnl"])) <= Decimal("0.02")
    qqqm = [t for t in trades if t["symbol"] == "QQQM"]
    assert s["qqqm_shares"] == sum(t["qty"] for t in qqqm)
    deployed = sum((Decimal(t["price"]) * t["qty"] + Decimal(t["commission"]) for t in qqqm), Decimal(0))
    assert abs(deployed - Decimal(s["qqqm_deployed"])) <= Decimal("0.01")
    assert abs(Decimal(s["pool"]) - (realized - deployed)) <= Decimal("0.03")
    assert result["equity"][0]["date"] == s["start"] and result["equity"][-1]["date"] == s["end"]
    assert len(result["equity"]) == s["sessions"]
    assert abs(result["equity"][-1]["equity"] - float(s["final_equity"])) < 0.01
    closed = [lot for lot in lots.values() if lot["sq"] and lot["sq"] == lot["bq"]]
    if closed:
        wins = sum(1 for lot in closed if lot["pnl"] > 0)
        assert s["win_rate"] == pytest.approx(wins / len(closed), abs=1e-9)


def assert_only_earned_money_recycled(trades: list[dict]) -> None:
    """At every QQQM fill, what was deployed so far never exceeds what options had realized so far."""
    cost: dict[int, tuple[int, Decimal, Decimal]] = {}
    realized = deployed = Decimal(0)
    for t in trades:
        price, comm, qty = Decimal(t["price"]), Decimal(t["commission"]), t["qty"]
        if t["symbol"] == "QQQM":
            deployed += price * qty + comm
            assert deployed <= realized + Decimal("0.01"), t
        elif t["side"] == "BUY":
            q, c, cm = cost.get(t["lot_id"], (0, Decimal(0), Decimal(0)))
            cost[t["lot_id"]] = (q + qty, c + price * qty, cm + comm)
        else:
            q, c, cm = cost[t["lot_id"]]
            realized += (price - c / q) * qty * 100 - comm - cm * qty / q


def test_synthetic_two_years_json(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, "--synthetic-years", "2", "--seed", "1")
    check_consistency(result)
    s = result["summary"]
    assert s["sessions"] > 480 and s["entries"] > 0
    assert result["settings"]["target_delta"] == 0.6
    assert {t["reason"] for t in result["trades"]} <= {"entry", "take_profit", "force_exit", "expiry_guard", "expired",
                                                      "roll_out", "roll_in", "recycle"}


def test_same_seed_same_result(capsys: pytest.CaptureFixture[str]) -> None:
    a = run_json(capsys, "--synthetic-years", "1", "--seed", "5")
    b = run_json(capsys, "--synthetic-years", "1", "--seed", "5")
    assert a["summary"] == b["summary"]
    assert [t["price"] for t in a["trades"]] == [t["price"] for t in b["trades"]]


def test_set_changes_settings_with_the_chat_parser(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, "--synthetic-years", "1", "--set", "entry_drop=2.5%", "--set", "max_pos=1")
    assert result["settings"]["entry_drop_pct"] == 2.5 and result["settings"]["max_positions"] == 1
    check_consistency(result)


def test_bad_set_is_refused_with_the_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backtest", "--synthetic-years", "1", "--set", "delta=3", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "0.05–0.95" in captured.err


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("Date,Open,High,Low,Close,Adj Close,Volume\n" + "\n".join(rows) + "\n")
    return path


def test_small_csv_backtest_and_readable_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = []
    price = 400.0
    import datetime as dt

    day = dt.date(2023, 1, 3)
    n = 0
    while n < 120:
        if day.weekday() < 5:
            o = price
            c = price * (0.975 if n % 9 == 4 else 1.006)
            rows.append(f"{day},{o:.2f},{max(o, c) * 1.002:.2f},{min(o, c) * 0.998:.2f},{c:.2f},{c:.2f},1000")
            price = c
            n += 1
        day += dt.timedelta(days=1)
    csv = write_csv(tmp_path / "q.csv", rows)
    chart = tmp_path / "eq.png"
    assert main(["backtest", "--csv", str(csv), "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    assert "buy & hold" in out and "CAGR" in out and "max drawdown" in out and "win rate" in out
    assert chart.exists() and chart.read_bytes()[:4] == b"\x89PNG"
    result = run_json(capsys, "--csv", str(csv))
    check_consistency(result)


@pytest.mark.parametrize(("content", "message"), [
    ("Date,Open,High,Low,Close\n2024-01-02,1,2,0.5,x\n", "line 2"),
    ("Day,Price\n2024-01-02,1\n", "column"),
    ("", "empty"),
])
def test_malformed_csv_gives_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             content: str, message: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(content)
    assert main(["backtest", "--csv", str(p), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err.lower() and "bad.csv" in captured.err


def test_missing_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backtest", "--csv", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err


def test_real_qqq_history_with_vxn(capsys: pytest.CaptureFixture[str]) -> None:
    qqq = shared_file("qqq_daily.csv")
    vxn = shared_file("vxn_daily.csv")
    result = run_json(capsys, "--csv", str(qqq), "--start", "2022-01-01", "--end", "2022-12-31",
                      "--iv", f"{vxn}:VXN")
    check_consistency(result)
    assert result["summary"]["start"] == "2022-01-03"
    assert result["summary"]["buy_hold"]["cagr"] < -0.25  # 2022 was a bad year for QQQ


def test_a_backtest_leaves_no_scratch_ledger_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["backtest", "--synthetic-years", "1", "--start", "2025-09-01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]
    assert not list(tmp_path.glob("qqq-backtest-*"))  # its ledger went with it
