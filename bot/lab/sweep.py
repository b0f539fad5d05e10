"""`qqq-bot sweep`: many backtests over a grid of settings, on a process pool or a Ray cluster.

Every configuration is exactly `qqq-bot backtest` with its `--set` values: each job builds its
`BacktestConfig` in one place (`make_config`) and calls `run_backtest`. Only the summary comes
back from a worker. With `--split`, every configuration also gets an in-sample and an
out-of-sample backtest, each starting flat with the starting capital:

- in-sample: the sessions before the split day (`--end SPLIT-1day`);
- out-of-sample: from the last session before the split, whose close is only the previous close
  (a backtest never trades its first session), so trading starts on the first session on or after
  the split day. The split day itself is therefore traded out of sample only.

Results are appended to `--out` one whole line per finished configuration; a rerun with the same
`--out` skips the configurations already there. Where the jobs run (processes or Ray) is
`bot.lab.sweep_backends`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bot.lab.results_csv import ResultsCsv
from bot.lab.sweep_backends import Backend, Outcome, ProcessBackend, RayBackend, SweepError, execute

if TYPE_CHECKING:  # the heavy modules load only when a sweep runs, not for every `qqq-bot` command
    from bot.lab.backtest import BacktestConfig
    from broker.sim_market import DailyBar

MAX_CONFIGS = 10_000
RANK_METRICS = ("calmar", "cagr", "sharpe", "max_drawdown")
PARTS = ("summary", "in_sample", "out_of_sample")


# --------------------------------------------------------------------------------------------
# What to run


@dataclass(frozen=True)
class Data:
    """What every backtest of a sweep shares. Picklable and hashable (the workers' cache key)."""

    csv: Path | None
    synthetic_years: int
    seed: int
    start: date | None
    end: date | None
    capital: Decimal
    iv: str
    cash_rate: str = "0"
    pricing: str = ""  # the option market's parameters file, as backtest --pricing
    option_rate: str = ""  # as backtest --rate


@dataclass(frozen=True)
class Job:
    """One backtest: a configuration's whole period, or one side of its split."""

    config: int
    part: str  # one of PARTS
    data: Data
    overrides: tuple[str, ...]  # key=value, applied in this order (fixed --set first, then the grid)
    start: date | None
    end: date | None
    sessions: int  # for the ETA


@dataclass(frozen=True)
class Axis:
    key: str  # canonical setting name
    values: tuple[str, ...]  # canonical text of each value, as /set would take it back


@dataclass(frozen=True)
class Config:
    grid: tuple[tuple[str, str], ...]  # (key, value) in axis order

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.grid)


@dataclass
class Period:
    part: str
    start: date | None
    end: date | None
    first: date  # first session (previous close only)
    last: date
    sessions: int


@dataclass
class Plan:
    data: Data
    fixed: tuple[str, ...]
    axes: list[Axis]
    configs: list[Config]
    split: date | None
    periods: list[Period]
    context: dict[str, str]
    bars: list[DailyBar]  # every session bar of the whole period

    def overrides(self, config: Config) -> tuple[str, ...]:
        return self.fixed + tuple(f"{k}={v}" for k, v in config.grid)

    def jobs(self, indexes: Iterable[int]) -> list[Job]:
        return [Job(i, p.part, self.data, self.overrides(self.configs[i]), p.start, p.end, p.sessions)
                for i in indexes for p in self.periods]


def make_config(data: Data, start: date | None, end: date | None, overrides: Iterable[str],
                bars: list[DailyBar] | None) -> BacktestConfig:
    """The one place a sweep builds a `BacktestConfig`: `qqq-bot backtest` with these values.
    Fields it does not name keep the backtest command's defaults."""
    from bot.lab.backtest import BacktestConfig

    return BacktestConfig(csv=data.csv, synthetic_years=data.synthetic_years, seed=data.seed, start=start,
                          end=end, capital=data.capital, iv=data.iv, overrides=list(overrides), bars=bars,
                          cash_rate=data.cash_rate, pricing=data.pricing, option_rate=data.option_rate)


def parse_grid(texts: list[str]) -> list[Axis]:
    """``KEY=V1,V2,...`` per --grid (``;`` separates values that contain commas, e.g. tp_tiers)."""
    from strategy.settings import (
        SETTING_SPECS,
        SettingError,
        StrategySettings,
        format_value,
        parse_setting,
        resolve_key,
    )

    if not texts:
        raise SweepError("empty grid: give at least one --grid KEY=V1,V2,...")
    axes: list[Axis] = []
    for text in texts:
        key_text, sep, values_text = text.partition("=")
        key = resolve_key(key_text)
        if not sep:
            raise SweepError(f"--grid {text}: not KEY=V1,V2,...")
        if key is None:
            raise SweepError(f"--grid {text}: unknown setting '{key_text.strip()}'. Known: {', '.join(SETTING_SPECS)}.")
        if any(a.key == key for a in axes):
            raise SweepError(f"--grid {text}: {key} is already swept by another --grid")
        parts = values_text.split(";") if ";" in values_text else values_text.split(",")
        raw = [p.strip() for p in parts]
        if not any(raw):
            raise SweepError(f"--grid {text}: empty grid: no values for {key}")
        if not all(raw):
            raise SweepError(f"--grid {text}: an empty value between separators")
        values: list[str] = []
        for v in raw:
            change = parse_setting(StrategySettings(), key, v)
            if isinstance(change, SettingError):
                hint = " (separate tp_tiers values with ';')" if SETTING_SPECS[key].kind == "tiers" else ""
                raise SweepError(f"--grid {text}: {change.message}{hint}")
            canonical = format_value(key, change.new)
            if canonical in values:
                raise SweepError(f"--grid {text}: {key}={canonical} is listed twice")
            values.append(canonical)
        axes.append(Axis(key, tuple(values)))
    return axes


def parse_fixed(texts: list[str], axes: list[Axis]) -> tuple[str, ...]:
    from strategy.settings import SettingError, StrategySettings, format_value, parse_assignment

    out: list[str] = []
    settings = StrategySettings()
    for text in texts:
        change = parse_assignment(settings, text)
        if isinstance(change, SettingError):
            raise SweepError(f"--set {text}: {change.message}")
        if any(a.key == change.key for a in axes):
            raise SweepError(f"--set {text}: {change.key} is also swept by --grid; give it in one place")
        settings = change.settings
        out.append(f"{change.key}={format_value(change.key, change.new)}")
    return tuple(out)


def check_configs(fixed: tuple[str, ...], axes: list[Axis], configs: list[Config]) -> None:
    """Every configuration passes the chat's validation, applied in the backtest's order (one
    setting at a time, so e.g. reprice_s must stay below order_timeout_s at every step)."""
    from strategy.settings import SettingError, StrategySettings, parse_assignment

    for config in configs:
        settings = StrategySettings()
        for text in fixed + tuple(f"{k}={v}" for k, v in config.grid):
            change = parse_assignment(settings, text)
            if isinstance(change, SettingError):
                raise SweepError(f"configuration {config.label()}: {change.message}")
            settings = change.settings


def _absolute_iv(text: str) -> str:
    """``--iv PATH:COLUMN`` with an absolute path, so workers with another working folder read the
    same file; constants and column names unchanged."""
    t = text.strip()
    try:
        float(t.rstrip("%"))
        return t
    except ValueError:
        pass
    path, sep, column = t.rpartition(":")
    return f"{Path(path).resolve()}:{column}" if sep and path else t


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _context(data: Data, fixed: tuple[str, ...], split: date | None, first: date, last: date) -> dict[str, str]:
    """What a results file's rows must share with this sweep to be reused on a rerun."""
    if data.csv is not None:
        source = f"{data.csv.name} sha256:{_digest(data.csv)}"
    else:
        source = f"synthetic ({data.synthetic_years} y)"
    iv = data.iv
    path, sep, column = iv.rpartition(":")
    if sep and path:
        iv = f"{Path(path).name}:{column} sha256:{_digest(Path(path))}"
    context = {"data": source, "start": first.isoformat(), "end": last.isoformat(), "iv": iv,
               "capital": str(data.capital), "seed": str(data.seed), "set": " ".join(fixed),
               "split": split.isoformat() if split else ""}
    if data.cash_rate.strip() not in ("", "0"):  # a results file of a sweep without interest stays reusable
        rate = data.cash_rate
        path, sep, column = rate.rpartition(":")
        context["cash_rate"] = f"{Path(path).name}:{column} sha256:{_digest(Path(path))}" if sep and path else rate
    if data.pricing.strip():  # likewise for the option market's parameters and rate
        context["pricing"] = f"{Path(data.pricing).name} sha256:{_digest(Path(data.pricing))}"
    if data.option_rate.strip():
        path, sep, column = data.option_rate.rpartition(":")
        context["option_rate"] = (f"{Path(path).name}:{column} sha256:{_digest(Path(path))}" if sep and path
                                  else data.option_rate)
    return context


def build_plan(args: argparse.Namespace) -> Plan:
    """Check everything the sweep needs before anything runs or is written (SweepError if not)."""
    from bot.lab.backtest import BacktestError, load_bars, load_cash_rate, load_iv, load_pricing_inputs
    from bot.lab.calendar_cache import cached_nyse

    axes = parse_grid(args.grid)
    fixed = parse_fixed(args.overrides, axes)
    count = math.prod(len(a.values) for a in axes)
    if count > MAX_CONFIGS and not args.yes:
        raise SweepError(f"the grid has {count:,} configurations (more than {MAX_CONFIGS:,}): "
                         "add --yes to run them all")
    if args.heatmap is not None and len(axes) != 2:
        raise SweepError(f"--heatmap needs exactly two --grid keys; this grid has {len(axes)}")
    if args.top < 1:
        raise SweepError("--top must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise SweepError("--workers must be at least 1")
    for flag, path in (("--out", args.out), ("--heatmap", args.heatmap)):
        folder = path.resolve().parent if path is not None else None
        if folder is not None and not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise SweepError(f"{flag} {path}: cannot write in {folder} (no such folder, or not writable)")
    configs = [Config(tuple(zip((a.key for a in axes), values, strict=True)))
               for values in itertools.product(*(a.values for a in axes))]
    check_configs(fixed, axes, configs)
    data = Data(csv=args.csv.resolve() if args.csv else None, synthetic_years=args.synthetic_years or 0,
                seed=args.seed, start=args.start, end=args.end, capital=args.capital, iv=_absolute_iv(args.iv),
                cash_rate=_absolute_iv(args.cash_rate),
                pricing=str(Path(args.pricing).resolve()) if getattr(args, "pricing", "") else "",
                option_rate=_absolute_iv(getattr(args, "option_rate", "")))
    try:
        base = make_config(data, data.start, data.end, (), None)
        bars = load_bars(base)
        load_iv(base)
        load_cash_rate(base)
        load_pricing_inputs(base)
    except BacktestError as e:
        raise SweepError(str(e)) from None
    cal = cached_nyse()
    bars = [b for b in bars if cal.session(b.day) is not None]
    if len(bars) < 2:
        raise SweepError("fewer than two sessions in the chosen period")
    days = [b.day for b in bars]
    periods = [Period("summary", data.start, data.end, days[0], days[-1], len(days))]
    split: date | None = args.split
    if split is not None:
        before = [d for d in days if d < split]
        after = [d for d in days if d >= split]
        if len(before) < 2 or not after:
            raise SweepError(f"--split {split}: outside the data, whose sessions run {days[0]} → {days[-1]}; "
                             "a split needs at least two sessions before it and one on or after it")
        periods.append(Period("in_sample", data.start, split - timedelta(days=1), before[0], before[-1], len(before)))
        periods.append(Period("out_of_sample", before[-1], data.end, before[-1], days[-1], len(after) + 1))
    return Plan(data, fixed, axes, configs, split, periods, _context(data, fixed, split, days[0], days[-1]), bars)


# --------------------------------------------------------------------------------------------
# The worker side

_BARS: dict[Data, list[DailyBar]] = {}


def _data_bars(data: Data) -> list[DailyBar]:
    """The whole period's bars, read once per worker process (not once per backtest)."""
    from bot.lab.backtest import load_bars

    bars = _BARS.get(data)
    if bars is None:
        _BARS.clear()
        bars = _BARS[data] = load_bars(make_config(data, data.start, data.end, (), None))
    return bars


def run_job(job: Job) -> dict[str, Any]:
    """One backtest in a worker: the summary of `qqq-bot backtest` with the job's values."""
    from bot.lab.backtest import run_backtest

    cfg = make_config(job.data, job.start, job.end, job.overrides, _data_bars(job.data))
    with tempfile.TemporaryDirectory(prefix="qqq-sweep-") as tmp:
        run = asyncio.run(run_backtest(cfg, workdir=Path(tmp)))
    summary: dict[str, Any] = run.result["summary"]
    return summary


# --------------------------------------------------------------------------------------------
# Results file

METRIC_COLUMNS = ("cagr", "max_drawdown_pct", "sharpe", "calmar", "entries", "realized_pnl", "qqqm_shares",
                  "final_equity")
SIDE_COLUMNS = tuple(f"{side}_{m}" for side in ("is", "oos") for m in ("cagr", "max_drawdown_pct", "sharpe",
                                                                        "calmar"))


@dataclass
class Result:
    config: Config
    summary: dict[str, Any] | None = None
    in_sample: dict[str, Any] | None = None
    out_of_sample: dict[str, Any] | None = None
    error: str | None = None
    resumed: bool = False
    reported: bool = False

    def part(self, name: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = getattr(self, name)
        return value


def calmar(summary: dict[str, Any]) -> float:
    """CAGR / max drawdown (both as fractions). With no drawdown at all: +inf for a gain, 0 for
    none, -inf for a loss (a curve that never fell below a peak cannot lose, so the last is moot)."""
    cagr = float(summary["cagr"])
    dd = float(summary["max_drawdown_pct"]) / 100
    if dd > 0:
        return cagr / dd
    return math.inf if cagr > 0 else (-math.inf if cagr < 0 else 0.0)


class ResultsFile(ResultsCsv):
    """``--out``: a header, then one whole CSV line per finished configuration."""

    def __init__(self, path: Path, plan: Plan) -> None:
        columns = [*plan.context, *(a.key for a in plan.axes), *METRIC_COLUMNS, *SIDE_COLUMNS, *PARTS]
        super().__init__(path, columns, dict(plan.context), SweepError, "sweep", "sweep")
        self.plan = plan

    def read(self) -> dict[tuple[tuple[str, str], ...], Result]:
        """The finished configurations already in the file (SweepError if it holds another sweep)."""
        keys = [a.key for a in self.plan.axes]
        done: dict[tuple[tuple[str, str], ...], Result] = {}
        for n, row in self.rows():
            try:
                grid = tuple((k, row[k]) for k in keys)
                parts = {p: json.loads(row[p]) if row[p] else None for p in PARTS}
            except (KeyError, TypeError, ValueError):
                raise self.bad_line(n) from None
            done[grid] = Result(Config(grid), parts["summary"], parts["in_sample"], parts["out_of_sample"],
                                resumed=True)
        return done

    def append(self, result: Result) -> None:
        s = result.summary or {}
        row: dict[str, Any] = dict(self.plan.context)
        row.update(dict(result.config.grid))
        for m in METRIC_COLUMNS:
            row[m] = calmar(s) if m == "calmar" else s[m]
        for side, part in (("is", result.in_sample), ("oos", result.out_of_sample)):
            for m in ("cagr", "max_drawdown_pct", "sharpe", "calmar"):
                row[f"{side}_{m}"] = "" if part is None else (calmar(part) if m == "calmar" else part[m])
        for p in PARTS:
            value = result.part(p)
            row[p] = "" if value is None else json.dumps(value, separators=(",", ":"))
        self.write([row[c] for c in self.columns])


# --------------------------------------------------------------------------------------------
# Progress


class Progress:
    """done/total, rate and ETA on stderr: one redrawn line on a terminal, else a line per finished
    configuration (stdout is never touched)."""

    def __init__(self, total: int, weight: int, stream: TextIO) -> None:
        self.total = total
        self.weight = max(weight, 1)
        self.stream = stream
        self.tty = stream.isatty()
        self.done = 0
        self.failed = 0
        self.done_weight = 0
        self.t0 = time.monotonic()
        self._drawn = 0.0

    def job_done(self, job: Job) -> None:
        self.done_weight += job.sessions

    def config_done(self, result: Result) -> None:
        self.done += 1
        self.failed += result.error is not None
        if self.tty:
            self.draw(force=True)
        else:
            state = f"failed: {result.error}" if result.error else "done"
            self.stream.write(f"sweep: {self.done}/{self.total} {result.config.label()} {state}; {self._rates()}\n")
            self.stream.flush()

    def _rates(self) -> str:
        elapsed = time.monotonic() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = elapsed / self.done_weight * (self.weight - self.done_weight) if self.done_weight else None
        eta = "?" if left is None else str(timedelta(seconds=round(left)))
        return f"{rate:.2f} configurations/s, ETA {eta}"

    def draw(self, force: bool = False) -> None:
        if not self.tty or (not force and time.monotonic() - self._drawn < 1.0):
            return
        self._drawn = time.monotonic()
        failed = f", {self.failed} failed" if self.failed else ""
        self.stream.write(f"\r\x1b[Ksweep: {self.done}/{self.total} configurations{failed}; {self._rates()}")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------------------------
# The sweep


@dataclass
class SweepOutcome:
    results: list[Result]  # in grid order
    workers: int
    backend: str
    wall_s: float
    skipped: int
    interrupted: bool = False


def run_sweep(plan: Plan, backend: Backend, out: ResultsFile | None, progress: Progress | None = None) -> SweepOutcome:
    """Every configuration not already in ``out``; each appended to it as it finishes."""
    t0 = time.monotonic()
    done = out.read() if out is not None else {}
    results = [done.get(c.grid) or Result(c) for c in plan.configs]
    todo = [i for i, r in enumerate(results) if not r.resumed]
    needed = {p.part for p in plan.periods}
    if out is not None:
        out.open()

    def on_done(job: Job, outcome: Outcome) -> None:
        r = results[job.config]
        if outcome.error is not None:
            r.error = r.error or f"{job.part.replace('_', '-')}: {outcome.error}"
        else:
            setattr(r, job.part, outcome.summary)
        if progress is not None:
            progress.job_done(job)
        finished = r.error is not None or all(r.part(p) is not None for p in needed)
        if finished and not r.reported:
            r.reported = True
            if r.error is None and out is not None:
                out.append(r)
            if progress is not None:
                progress.config_done(r)

    interrupted = False
    try:
        execute(plan.jobs(todo), backend, on_done, on_idle=progress.draw if progress else lambda: None)
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
    return SweepOutcome(results, backend.workers, backend.name, time.monotonic() - t0, len(plan.configs) - len(todo),
                        interrupted)


def make_backend(args: argparse.Namespace) -> Backend:
    if args.ray:
        return RayBackend(args.ray, args.workers, run_job)
    return ProcessBackend(args.workers or os.cpu_count() or 1, run_job)  # processes start as jobs need them
