"""`qqq-bot backtest --paths N`: the strategy over N alternative histories, each a block bootstrap
of the real daily bars, and the spread of what it did.

A history is rebuilt from blocks of ``block_days`` consecutive sessions drawn at random (with
replacement) from the real period and laid end to end on the real calendar's sessions: each
session keeps its own day's moves (open, high, low and close relative to the previous close),
its implied volatility and its cash rate, so a crash keeps its VXN spike and its rates. The first
session, which only gives the previous close, is the real one. Every path is then `qqq-bot
backtest` on those bars (same engine, same settings; path ``i``'s intraday paths use seed
``seed + i``). Paths run on the sweep's process pool or on Ray (`bot.lab.sweep_backends`), and a
results file (``--out``) makes a rerun resume, as the sweep's does.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bot.lab.results_csv import ResultsCsv
from bot.lab.sweep_backends import Backend, Outcome, ProcessBackend, RayBackend, SweepError, execute

if TYPE_CHECKING:
    from broker.sim_market import DailyBar

DEFAULT_BLOCK_DAYS = 21  # about a month of sessions
EQUITY_EVERY = 5  # sessions between the equity points a path keeps (for the fan chart)
PERCENTILES = (5, 25, 50, 75, 95)
WINDOW_YEARS = 5
MAX_PATHS = 100_000


class PathsError(SweepError):
    """Bad input to a robustness run: one line for the user, exit code 2."""


# --------------------------------------------------------------------------------------------
# The bootstrap (pure)


def bootstrap_sources(sessions: int, block_days: int, rng: random.Random) -> list[int]:
    """For a history of ``sessions`` bars, the real session each rebuilt session takes its day
    from: 0 for the first (previous close only), then blocks of ``block_days`` consecutive
    sessions among 1 … sessions−1, each starting anywhere it fits, until the history is full (the
    last block cut short)."""
    tradable = sessions - 1
    if not 1 <= block_days <= tradable:
        raise ValueError(f"a block of {block_days} sessions does not fit in {tradable} tradable sessions")
    out = [0]
    while len(out) < sessions:
        start = rng.randint(1, tradable - block_days + 1)
        out.extend(range(start, start + min(block_days, sessions - len(out))))
    return out


def bootstrap_bars(bars: Sequence[DailyBar], sources: Sequence[int]) -> list[DailyBar]:
    """The rebuilt history: session ``k`` is real session ``sources[k]``'s bar on real session
    ``k``'s day, scaled so that its moves start from the rebuilt previous close. A run of
    consecutive sources is one scale (so a single block covering the whole history gives the real
    bars exactly)."""
    from broker.sim_market import DailyBar

    out: list[DailyBar] = []
    scale = 1.0
    for k, src in enumerate(sources):
        b = bars[src]
        if k and src != sources[k - 1] + 1:
            scale = out[-1].close / bars[src - 1].close  # a new block: its previous close is ours
        elif k == 0:
            scale = 1.0
        day = bars[k].day
        if scale == 1.0:
            out.append(DailyBar(day, b.open, b.high, b.low, b.close))
        else:
            out.append(DailyBar(day, b.open * scale, b.high * scale, b.low * scale, b.close * scale))
    return out


def path_rng(seed: int, path: int) -> random.Random:
    """The generator of path ``path``'s blocks: the same on any machine and in any process."""
    return random.Random(f"qqq-bot paths {seed} {path}")


# --------------------------------------------------------------------------------------------
# What to run


@dataclass(frozen=True)
class Spec:
    """What every path of a run shares. Picklable and hashable (the workers' cache key)."""

    csv: Path | None
    synthetic_years: int
    seed: int
    start: date | None
    end: date | None
    capital: Any  # Decimal
    iv: str
    cash_rate: str
    overrides: tuple[str, ...]
    block_days: int
    every_tick: bool = False


@dataclass(frozen=True)
class PathJob:
    spec: Spec
    path: int


@dataclass
class Plan:
    spec: Spec
    paths: int
    context: dict[str, str]
    days: list[date]  # the history's sessions (every path's)


def _base_config(spec: Spec, bars: list[DailyBar] | None = None) -> Any:
    from bot.lab.backtest import BacktestConfig

    return BacktestConfig(csv=spec.csv, synthetic_years=spec.synthetic_years, seed=spec.seed,
                          start=None if bars else spec.start, end=None if bars else spec.end, capital=spec.capital,
                          iv=spec.iv, overrides=list(spec.overrides), bars=bars, cash_rate=spec.cash_rate,
                          every_tick=spec.every_tick)


def session_bars(spec: Spec) -> list[DailyBar]:
    """The real history's bars on the calendar's sessions (what every path is rebuilt from)."""
    from bot.lab.backtest import load_bars
    from bot.lab.calendar_cache import cached_nyse

    cal = cached_nyse()
    return [b for b in load_bars(_base_config(spec)) if cal.session(b.day) is not None]


def build_plan(spec: Spec, paths: int, out: Path | None = None, chart: Path | None = None) -> Plan:
    """Check everything before anything runs or is written (PathsError if not)."""
    from bot.lab.backtest import BacktestError, load_cash_rate, load_iv
    from bot.lab.sweep import Data, _absolute_iv, _context, parse_fixed

    if not 1 <= paths <= MAX_PATHS:
        raise PathsError(f"--paths must be 1–{MAX_PATHS:,}, not {paths}")
    if spec.block_days < 1:
        raise PathsError(f"--block-days must be at least 1, not {spec.block_days}")
    for flag, path in (("--out", out), ("--chart", chart)):
        folder = path.resolve().parent if path is not None else None
        if folder is not None and not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise PathsError(f"{flag} {path}: cannot write in {folder} (no such folder, or not writable)")
    fixed = parse_fixed(list(spec.overrides), [])
    spec = Spec(spec.csv.resolve() if spec.csv else None, spec.synthetic_years, spec.seed, spec.start, spec.end,
                spec.capital, _absolute_iv(spec.iv), _absolute_iv(spec.cash_rate), fixed, spec.block_days,
                spec.every_tick)
    try:
        bars = session_bars(spec)
        load_iv(_base_config(spec))
        load_cash_rate(_base_config(spec))
    except BacktestError as e:
        raise PathsError(str(e)) from None
    if len(bars) < 2:
        raise PathsError("fewer than two sessions in the chosen period")
    if spec.block_days > len(bars) - 1:
        raise PathsError(f"--block-days {spec.block_days} is longer than the history: {len(bars) - 1} tradable "
                         f"sessions {bars[1].day} → {bars[-1].day}")
    data = Data(spec.csv, spec.synthetic_years, spec.seed, spec.start, spec.end, spec.capital, spec.iv,
                spec.cash_rate)
    context = _context(data, fixed, None, bars[0].day, bars[-1].day)
    del context["split"]
    context["block_days"] = str(spec.block_days)
    if spec.every_tick:
        context["every_tick"] = "yes"
    return Plan(spec, paths, context, [b.day for b in bars])


# --------------------------------------------------------------------------------------------
# The worker side

_CACHE: dict[Spec, tuple[list[DailyBar], Any, Any]] = {}


def _sources(spec: Spec) -> tuple[list[DailyBar], Any, Any]:
    """The real bars, IV and cash rate, read once per worker process (not once per path)."""
    from bot.lab.backtest import load_cash_rate, load_iv

    found = _CACHE.get(spec)
    if found is None:
        _CACHE.clear()
        base = _base_config(spec)
        found = _CACHE[spec] = (session_bars(spec), load_iv(base), load_cash_rate(base))
    return found


def path_config(spec: Spec, path: int) -> Any:
    """Path ``path``'s `BacktestConfig`: the rebuilt bars, with each session's IV and cash rate
    taken from the real session its day came from."""
    from broker.sim_market import CashRate, IvSource

    bars, iv, rate = _sources(spec)
    sources = bootstrap_sources(len(bars), spec.block_days, path_rng(spec.seed, path))
    rebuilt = bootstrap_bars(bars, sources)
    ivs = IvSource.from_series({b.day: iv.iv(bars[s].day) for b, s in zip(rebuilt, sources, strict=True)})
    if rate.last_day is None:  # a constant: the same every day
        rates = rate
    else:
        rates = CashRate(series={b.day: rate.rate(bars[s].day) for b, s in zip(rebuilt, sources, strict=True)},
                         label=f"{rate.label}, moved with the days")
    cfg = _base_config(spec, rebuilt)
    cfg.seed = spec.seed + path
    cfg.iv_source, cfg.rate_source = ivs, rates
    return cfg


def run_path(job: PathJob) -> dict[str, Any]:
    """One path in a worker: its backtest's figures and its equity every ``EQUITY_EVERY`` sessions."""
    from bot.lab.backtest import run_backtest

    cfg = path_config(job.spec, job.path)
    with tempfile.TemporaryDirectory(prefix="qqq-paths-") as tmp:
        run = asyncio.run(run_backtest(cfg, workdir=Path(tmp)))
    return path_summary(job.path, run.result, run.buy_hold)


def path_summary(path: int, result: dict[str, Any], buy_hold: list[float]) -> dict[str, Any]:
    from strategy import metrics

    s = result["summary"]
    days = [date.fromisoformat(e["date"]) for e in result["equity"]]
    equity = [e["equity"] for e in result["equity"]]
    keep = list(range(0, len(days), EQUITY_EVERY))
    if keep[-1] != len(days) - 1:
        keep.append(len(days) - 1)
    bh = s["buy_hold"]
    return {
        "path": path,
        "cagr": s["cagr"], "max_drawdown_pct": s["max_drawdown_pct"],
        "worst_5y_cagr": metrics.worst_window_cagr(days, equity, WINDOW_YEARS),
        "sharpe": s["sharpe"], "entries": s["entries"], "final_equity": float(s["final_equity"]),
        "buy_hold": {"cagr": bh["cagr"], "max_drawdown_pct": bh["max_drawdown_pct"],
                     "worst_5y_cagr": metrics.worst_window_cagr(days, buy_hold, WINDOW_YEARS),
                     "final_equity": float(bh["final_equity"])},
        "behind_buy_hold": float(s["final_equity"]) < float(bh["final_equity"]),
        "equity": [round(equity[i]) for i in keep],
        "buy_hold_equity": [round(buy_hold[i]) for i in keep],
    }


def equity_days(days: list[date]) -> list[date]:
    """The sessions at which a path keeps its equity (as ``path_summary`` does)."""
    keep = list(range(0, len(days), EQUITY_EVERY))
    if keep[-1] != len(days) - 1:
        keep.append(len(days) - 1)
    return [days[i] for i in keep]


# --------------------------------------------------------------------------------------------
# Results file

COLUMNS = ("path", "cagr", "max_drawdown_pct", "worst_5y_cagr", "entries", "final_equity", "bh_cagr",
           "behind_buy_hold", "summary")


class PathsFile(ResultsCsv):
    """``--out``: a header, then one whole CSV line per finished path. A rerun with the same file
    (and the same data, settings, seed and block length) reuses its paths and runs the others."""

    def __init__(self, path: Path, plan: Plan) -> None:
        super().__init__(path, [*plan.context, *COLUMNS], dict(plan.context), PathsError, "backtest")
        self.plan = plan

    def read(self) -> dict[int, dict[str, Any]]:
        done: dict[int, dict[str, Any]] = {}
        for n, row in self.rows():
            try:
                done[int(row["path"])] = json.loads(row["summary"])
            except (KeyError, TypeError, ValueError):
                raise self.bad_line(n) from None
        return done

    def append(self, s: dict[str, Any]) -> None:
        row = [*self.plan.context.values(), s["path"], s["cagr"], s["max_drawdown_pct"], s["worst_5y_cagr"],
               s["entries"], s["final_equity"], s["buy_hold"]["cagr"], s["behind_buy_hold"],
               json.dumps(s, separators=(",", ":"))]
        self.write(row)


# --------------------------------------------------------------------------------------------
# Running


@dataclass
class PathsOutcome:
    summaries: list[dict[str, Any]]  # finished paths, in path order
    failed: dict[int, str]
    workers: int
    backend: str
    wall_s: float
    resumed: int
    interrupted: bool = False
    days: list[date] = field(default_factory=list)


class Progress:
    """Paths done of all on stderr: one redrawn line on a terminal, else a line per path."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream, self.tty = total, stream, stream.isatty()
        self.done = 0
        self.t0 = time.monotonic()

    def path_done(self, path: int, error: str | None) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.t0
        left = elapsed / self.done * (self.total - self.done)
        text = f"paths: {self.done}/{self.total}, ETA {timedelta(seconds=round(left))}"
        if self.tty:
            self.stream.write(f"\r\x1b[K{text}")
        else:
            self.stream.write(f"{text} (path {path} {'failed: ' + error if error else 'done'})\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self.done:
            self.stream.write("\n")
            self.stream.flush()


def make_backend(workers: int | None, ray: str | None) -> Backend:
    if workers is not None and workers < 1:
        raise PathsError("--workers must be at least 1")
    if ray:
        return RayBackend(ray, workers, run_path)
    return ProcessBackend(workers or os.cpu_count() or 1, run_path)


def run_paths(plan: Plan, backend: Backend, out: PathsFile | None = None,
              progress: Progress | None = None) -> PathsOutcome:
    """Every path not already in ``out``, each appended to it as it finishes."""
    t0 = time.monotonic()
    done = out.read() if out is not None else {}
    resumed = {i: s for i, s in done.items() if i < plan.paths}
    results: dict[int, dict[str, Any]] = dict(resumed)
    failed: dict[int, str] = {}
    todo = [PathJob(plan.spec, i) for i in range(plan.paths) if i not in resumed]
    if out is not None:
        out.open()

    def on_done(job: PathJob, outcome: Outcome) -> None:
        if outcome.error is not None or outcome.summary is None:
            failed[job.path] = outcome.error or "no result"
        else:
            results[job.path] = outcome.summary
            if out is not None:
                out.append(outcome.summary)
        if progress is not None:
            progress.path_done(job.path, failed.get(job.path))

    interrupted = False
    try:
        execute(todo, backend, on_done)
    except KeyboardInterrupt:
        interrupted = True
        backend.close(now=True)
    else:
        backend.close()
    finally:
        if out is not None:
            out.close()
        if progress is not None:
            progress.finish()
    return PathsOutcome([results[i] for i in sorted(results)], failed, backend.workers, backend.name,
                        time.monotonic() - t0, len(resumed), interrupted, equity_days(plan.days))
