"""`qqq-bot sweep` through its command line, with real worker processes, a real local Ray and a
real SQLite ledger per backtest. Periods are a few months long to keep the file fast."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from bot.app.cli import build_parser, main
from bot.lab import sweep_backends
from bot.lab.sweep import Job, ResultsFile, build_plan, calmar, run_job, run_sweep
from bot.lab.sweep_backends import ProcessBackend, RayBackend
from bot.lab.sweep_report import rho_sentence
from broker.sim_market import synthetic_bars
from strategy.calendar import nyse
from strategy.metrics import spearman
from tests.conftest import shared_file

SHORT = ["--synthetic-years", "1", "--start", "2025-09-01"]  # 4 months of a seeded synthetic path


def sweep_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict[str, Any], str]:
    """The sweep's JSON (nothing else is on stdout) and its stderr."""
    assert main(["sweep", *args, "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def backtest_summary(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["backtest", *args, "--json"]) == 0
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)["summary"]
    return summary


def as_set_flags(overrides: dict[str, str]) -> list[str]:
    return [f"--set={k}={v}" for k, v in overrides.items()]


def write_synthetic_csv(path: Path, start: date, end: date, seed: int) -> Path:
    bars = synthetic_bars(nyse().sessions_between(start, end), seed=seed, s0=300.0)
    path.write_text("Date,Open,High,Low,Close\n"
                    + "".join(f"{b.day},{b.open!r},{b.high!r},{b.low!r},{b.close!r}\n" for b in bars))
    return path


def test_every_configuration_is_the_backtest_command(capsys: pytest.CaptureFixture[str]) -> None:
    base = [*SHORT, "--iv", "30%", "--capital", "80000"]
    res, _ = sweep_json(capsys, *base, "--set", "max_positions=2", "--grid", "delta=0.5,0.7",
                     "--grid", "entry_drop=1,2%", "--workers", "2")
    assert res["backend"] == "process" and res["workers"] == 2 and res["failed"] == []
    assert res["rank_correlation"] is None
    runs = res["runs"]
    assert [r["overrides"] for r in runs] == [
        {"max_positions": "2", "target_delta": d, "entry_drop_pct": e} for d in ("0.5", "0.7") for e in ("1", "2")]
    assert all(r["in_sample"] is None and r["out_of_sample"] is None for r in runs)
    assert len({json.dumps(r["summary"], sort_keys=True) for r in runs}) == 4  # the values did change the runs
    for run in (runs[0], runs[3]):
        assert run["summary"] == backtest_summary(capsys, *base, *as_set_flags(run["overrides"]))


def test_real_history_configurations_are_the_backtest_command(capsys: pytest.CaptureFixture[str]) -> None:
    qqq, vxn = shared_file("qqq_daily.csv"), shared_file("vxn_daily.csv")
    base = ["--csv", str(qqq), "--start", "2020-01-01", "--end", "2020-06-30", "--iv", f"{vxn}:VXN"]
    res, _ = sweep_json(capsys, *base, "--grid", "delta=0.5,0.7", "--workers", "2")
    assert len(res["runs"]) == 2
    for run in res["runs"]:
        assert run["summary"] == backtest_summary(capsys, *base, *as_set_flags(run["overrides"]))


def test_walk_forward_sides_report_resume_and_heatmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_synthetic_csv(tmp_path / "bars.csv", date(2024, 10, 1), date(2025, 3, 31), seed=5)
    out, png = tmp_path / "results.csv", tmp_path / "heat.png"
    args = ["sweep", "--csv", str(data), "--split", "2025-01-01", "--grid", "delta=0.5,0.6,0.7",
            "--grid", "entry_drop=1,2", "--workers", "2", "--out", str(out), "--top", "3"]
    assert main([*args, "--heatmap", str(png)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#"))
    rows = lines[head + 1: head + 4]
    assert [r.split()[0] for r in rows] == ["1", "2", "3"]  # top 3 of the 6
    assert lines[head + 4].startswith("QQQ buy & hold")
    assert "Spearman ρ = " in text and "one split of one history" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    # a rerun with the same --out runs nothing and gives the JSON of the file's rows
    res, err = sweep_json(capsys, *args[1:])
    assert "6 of 6 configurations already in" in err
    runs = res["runs"]
    assert len(runs) == 6
    rows_in_file = list(csv.DictReader(out.open()))
    assert len(rows_in_file) == 6

    # ranking by in-sample Calmar; the table's order is that ranking
    ranked = sorted(runs, key=lambda r: -calmar(r["in_sample"]))
    assert [f"{r['overrides']['target_delta']}" for r in ranked[:3]] == [r.split()[1] for r in rows]
    assert isinstance(res["rank_correlation"], float)
    assert res["rank_correlation"] == pytest.approx(
        spearman([calmar(r["in_sample"]) for r in runs], [calmar(r["out_of_sample"]) for r in runs]))

    # --rank-by max_drawdown ranks the smallest in-sample drawdown first (the rerun reads the file)
    assert main([*args, "--rank-by", "max_drawdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#"))
    by_dd = sorted(runs, key=lambda r: r["in_sample"]["max_drawdown_pct"])[:3]
    assert [f"{r['in_sample']['max_drawdown_pct']:.1f}%" for r in by_dd] == [
        line.split()[4] for line in lines[head + 1: head + 4]]

    # which sessions belong to each side: in-sample ends before the split; out-of-sample starts from the
    # last in-sample session's close (its first session only gives the previous close), so the split day
    # is traded out of sample only
    first = runs[0]
    ins, oos, whole = first["in_sample"], first["out_of_sample"], first["summary"]
    assert ins["end"] == "2024-12-31" and oos["start"] == "2024-12-31" and oos["end"] == whole["end"]
    assert ins["sessions"] + oos["sessions"] == whole["sessions"] + 1
    assert ins["starting_capital"] == oos["starting_capital"] == whole["starting_capital"]  # each side starts flat
    sets = as_set_flags(first["overrides"])
    assert ins == backtest_summary(capsys, "--csv", str(data), "--end", "2024-12-31", *sets)
    assert oos == backtest_summary(capsys, "--csv", str(data), "--start", "2024-12-31", *sets)
    assert whole == backtest_summary(capsys, "--csv", str(data), *sets)


def test_interrupted_sweep_resumes_from_whole_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.csv"
    args = ["sweep", *SHORT, "--grid", "delta=0.5,0.55,0.6,0.65,0.7,0.75", "--workers", "1", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "bot.app.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in err and "rerun the same command" in err
    first = list(csv.reader(out.open()))
    header, done = first[0], first[1:]
    assert 1 <= len(done) < 6 and all(len(row) == len(header) for row in done)

    with out.open("a") as f:  # a crash in the middle of a line
        f.write(",".join(done[0][:5]))
    res, err = sweep_json(capsys, *args[1:])
    assert "dropped an incomplete last line" in err
    assert f"{len(done)} of 6 configurations already in" in err
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["target_delta"] for r in rows) == ["0.5", "0.55", "0.6", "0.65", "0.7", "0.75"]
    assert len(res["runs"]) == 6 and res["failed"] == []


def faulty_job(job: Job) -> dict[str, Any]:
    """The real job, except that one configuration raises and one kills its worker process."""
    delta = dict(o.split("=", 1) for o in job.overrides)["target_delta"]
    if delta == "0.55":
        raise ValueError("no option chain for this one")
    if delta == "0.65":
        os._exit(3)
    return run_job(job)


@pytest.mark.parametrize("backend", ["process", "ray"])
def test_a_crashing_configuration_is_reported_and_the_sweep_goes_on(tmp_path: Path, backend: str) -> None:
    out = tmp_path / "results.csv"
    args = build_parser().parse_args(["sweep", *SHORT, "--grid", "delta=0.5,0.55,0.6,0.65,0.7", "--out", str(out)])
    plan = build_plan(args)
    if backend == "ray":
        pytest.importorskip("ray")
    pool = ProcessBackend(2, faulty_job) if backend == "process" else RayBackend("local", 2, faulty_job)
    outcome = run_sweep(plan, pool, ResultsFile(out, plan))
    by_delta = {r.config.grid[0][1]: r for r in outcome.results}
    assert by_delta["0.55"].error == "summary: ValueError: no option chain for this one"
    assert by_delta["0.65"].error is not None and "worker process died" in by_delta["0.65"].error
    for d in ("0.5", "0.6", "0.7"):
        assert by_delta[d].error is None and by_delta[d].summary is not None
        assert by_delta[d].summary["sessions"] == plan.periods[0].sessions
    assert sorted(r["target_delta"] for r in csv.DictReader(out.open())) == ["0.5", "0.6", "0.7"]


def test_ray_local_runs_the_same_backtests(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")
    res, _ = sweep_json(capsys, *SHORT, "--grid", "delta=0.5,0.7", "--ray", "local", "--workers", "2")
    assert res["backend"] == "ray" and res["workers"] == 2 and res["failed"] == []
    assert len(res["runs"]) == 2
    for run in res["runs"]:
        assert run["summary"] == backtest_summary(capsys, *SHORT, *as_set_flags(run["overrides"]))


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections and never says anything."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for c in held:
        c.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BAD = [
    (["--grid", "nonsense=1,2"], "unknown setting 'nonsense'"),
    (["--grid", "delta=0.5,1.5"], "Delta of the call to buy = 1.5 refused: it must be 0.05–0.95"),
    (["--grid", "entry_drop=1,2usd"], "wrong unit"),
    ([], "empty grid"),
    (["--grid", "delta="], "empty grid"),
    (["--grid", "threshold=" + ",".join(map(str, range(101))),
      "--grid", "premium=" + ",".join(map(str, range(100, 200)))], "10,100 configurations"),
    (["--grid", "delta=0.5", "--split", "2030-01-01"], "--split 2030-01-01: outside the data"),
    (["--grid", "delta=0.5", "--split", "2025-09-02"], "--split 2025-09-02: outside the data"),
    (["--grid", "delta=0.5", "--set", "delta=0.6"], "also swept by --grid"),
    (["--grid", "delta=0.5", "--set", "bogus=1"], "Unknown setting 'bogus'"),
    (["--grid", "reprice=200", "--set", "timeout=150"], "must be below Order timeout"),
    (["--grid", "delta=0.5,0.6", "--heatmap", "h.png"], "--heatmap needs exactly two --grid keys"),
    (["--grid", "delta=0.5", "--grid", "drop=1", "--heatmap", "/nonexistent/h.png"], "cannot write in /nonexistent"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                          message: str) -> None:
    out = tmp_path / "results.csv"
    assert main(["sweep", *SHORT, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr()
    assert err.out == ""
    assert err.err.count("\n") == 1 and message in err.err, err.err
    assert not out.exists()


def test_ray_problems_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch, silent_server: str) -> None:
    out = tmp_path / "results.csv"
    cases = [(f"127.0.0.1:{free_port()}", "no Ray cluster answers there"),
             (silent_server, "no Ray cluster answered within 3 s")]
    monkeypatch.setattr(sweep_backends, "RAY_CONNECT_TIMEOUT_S", 3.0)
    try:
        import ray  # noqa: F401 - the addresses are only probed with the extra installed
    except ImportError:
        cases = []
    for address, message in cases:
        t0 = time.monotonic()
        assert main(["sweep", *SHORT, "--grid", "delta=0.5", "--ray", address, "--out", str(out)]) == 2
        assert time.monotonic() - t0 < 20  # a bounded wait
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    # what Ray 2.60 prints when a cluster wants a token: the cause is named, not only the wrapper
    chained = ("RuntimeError: Failed to connect to GCS. Last connection error: Traceback:\n"
               "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing\n"
               "\nThe above exception was the direct cause of the following exception:\n"
               "ConnectionError: Failed to connect to Ray cluster at 10.0.0.1:6379\n")
    assert sweep_backends._probe_error(chained, 1) == (
        "ConnectionError: Failed to connect to Ray cluster at 10.0.0.1:6379 "
        "(cause: ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing)")
    monkeypatch.setitem(sys.modules, "ray", None)  # the extra not installed
    assert main(["sweep", *SHORT, "--grid", "delta=0.5", "--ray", "local", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'qqq-leaps-bot[ray]'" in err
    assert not out.exists()


def test_an_out_file_of_another_sweep_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.csv"
    assert main(["sweep", *SHORT, "--grid", "delta=0.5", "--out", str(out)]) == 0
    before = out.read_bytes()
    for other in (["--grid", "delta=0.5", "--iv", "0.3"], ["--grid", "entry_drop=1"]):
        capsys.readouterr()
        assert main(["sweep", *SHORT, *other, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "use another --out" in err
    assert out.read_bytes() == before


def test_spearman_and_its_sentence() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their mean rank: ys ranks 1, 2, 3.5, 5, 3.5
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    assert spearman([1.0, float("inf"), 3.0], [1.0, 2.0, 3.0]) == pytest.approx(0.5)
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    assert "says little about what followed (Spearman ρ = 0.12" in rho_sentence(0.12, 9, "calmar")
    assert "is within that" in rho_sentence(0.12, 9, "calmar")
    assert "largely held" in rho_sentence(0.9, 30, "cagr") and "is beyond that" in rho_sentence(0.9, 30, "cagr")
    assert "not defined" in rho_sentence(None, 2, "sharpe")
