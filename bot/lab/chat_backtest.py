"""`/backtest` from the chat: "what would this change have done?". The current settings, and the
same with the user's changes, backtested side by side over the last YEARS of QQQ daily history, in a
separate process (never in the bot's event loop or its tick), one at a time.

Data: ``BACKTEST_CSV`` / ``BACKTEST_IV`` when set (the formats of ``--csv`` / ``--iv``), else the
broker's own history: IB's QQQ daily bars and its historical ``OPTION_IMPLIED_VOLATILITY`` (a
constant where it has none), or the simulator's market. What the broker gave is cached in the
database and asked again at most once a day."""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import pickle
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from broker.base import Broker, BrokerError, DailyBar
from storage import kv
from strategy.numbers import NotANumber, read_whole
from strategy.rules import DailyLimits
from strategy.settings import (
    SETTING_SPECS,
    SettingChange,
    SettingError,
    StrategySettings,
    display_value,
    format_value,
    label_of,
    parse_assignment,
)

log = logging.getLogger(__name__)

DEFAULT_YEARS = 10
MAX_YEARS = 25
JOB_TIMEOUT_S = 300.0
FALLBACK_IV = "0.25"
_BARS_KEY = "backtest_data:bars"
_IV_KEY = "backtest_data:iv"
_NOT_BACKTESTED = ("paused",)  # a backtest of a paused strategy would trade nothing


class BacktestRefusal(Exception):
    """Why a chat backtest cannot run, in one line for the user."""


@dataclass(frozen=True, slots=True)
class Request:
    years: int
    changes: tuple[SettingChange, ...]  # validated against the current settings, in order

    @property
    def compares(self) -> bool:
        return bool(self.changes)


def parse_request(settings: StrategySettings, args: Sequence[str]) -> Request | SettingError:
    """``[YEARS] [KEY=VALUE ...]`` with the same parser and messages as /set."""
    years = DEFAULT_YEARS
    rest = list(args)
    if rest and "=" not in rest[0]:
        text = rest.pop(0)
        n = read_whole(text, 1, MAX_YEARS)
        if isinstance(n, NotANumber):
            return SettingError(f"'{text}' {n.why}: it is not a number of years. Usage: /backtest [YEARS] "
                                f"[KEY=VALUE ...] with YEARS from 1 to {MAX_YEARS} (default {DEFAULT_YEARS}), e.g. "
                                "/backtest 10 entry_drop=2")
        years = n
    changes: list[SettingChange] = []
    current = settings
    for text in rest:
        change = parse_assignment(current, text)
        if isinstance(change, SettingError):
            return change
        if change.key in _NOT_BACKTESTED:
            return SettingError(f"{label_of(change.key)} is not something a backtest can compare.")
        changes.append(change)
        current = change.settings
    return Request(years, tuple(changes))


def overrides_of(settings: StrategySettings) -> list[str]:
    """The settings as ``--set`` assignments (a backtest starts from the defaults), never paused."""
    defaults = StrategySettings()
    return [f"{key}={format_value(key, getattr(settings, key))}" for key in SETTING_SPECS
            if key not in _NOT_BACKTESTED and getattr(settings, key) != getattr(defaults, key)]


def describe(changes: Sequence[SettingChange]) -> str:
    return ", ".join(f"{label_of(c.key)} {display_value(c.key, c.new)}" for c in changes)


# --- the data -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Data:
    bars: list[DailyBar]
    iv: str  # a constant, or PATH:COLUMN of a file written for the job
    source: str  # for the reply: where the prices came from
    notes: tuple[str, ...] = ()


def _bars_json(bars: Sequence[DailyBar]) -> str:
    return json.dumps([[b.day.isoformat(), b.open, b.high, b.low, b.close] for b in bars])


def _bars_from_json(text: str) -> list[DailyBar]:
    return [DailyBar(date.fromisoformat(d), o, h, lo, c) for d, o, h, lo, c in json.loads(text)]


async def broker_history(broker: Broker, today: date, now: datetime) -> tuple[list[DailyBar], dict[date, float]]:
    """The broker's QQQ daily bars and implied volatility over the longest period /backtest takes
    (so any YEARS is served from it), cached once a day in the database."""
    start = today - timedelta(days=int(365.25 * MAX_YEARS) + 7)
    key = f"{broker.name}:{today.isoformat()}"
    cached = kv.get(_BARS_KEY)
    if cached:
        stored = json.loads(cached)
        if stored.get("key") == key:
            ivs = json.loads(kv.get(_IV_KEY) or "{}")
            return _bars_from_json(stored["bars"]), {date.fromisoformat(d): float(v) for d, v in ivs.items()}
    bars = await broker.historical_daily_bars("QQQ", start, today)
    try:
        ivs = await broker.historical_implied_vol("QQQ", start, today)
    except BrokerError as e:
        log.warning("no implied volatility history from the broker: %s", e)
        ivs = {}
    kv.put(_BARS_KEY, json.dumps({"key": key, "bars": _bars_json(bars)}), now)
    kv.put(_IV_KEY, json.dumps({d.isoformat(): v for d, v in ivs.items()}), now)
    return bars, ivs


def _csv_data(csv_path: str, iv_text: str | None, start: date, end: date) -> Data:
    """BACKTEST_CSV / BACKTEST_IV, read and checked (blocking file reads: run in a thread)."""
    from bot.lab.backtest import BacktestConfig, BacktestError, load_bars, load_iv

    iv = iv_text or FALLBACK_IV
    if iv_text and ":" not in iv_text and not _is_number(iv_text):
        iv = f"{Path(csv_path).resolve()}:{iv_text}"  # a column of BACKTEST_CSV
    cfg = BacktestConfig(csv=Path(csv_path), start=start, end=end, iv=iv)
    try:
        bars = load_bars(cfg)
        load_iv(cfg)
    except BacktestError as e:
        raise BacktestRefusal(f"BACKTEST_CSV / BACKTEST_IV: {e}") from e
    return Data(bars, iv, Path(csv_path).name)


def _write_iv(path: Path, ivs: dict[date, float], since: date) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Date", "IV"])
        for d in sorted(ivs):
            if d >= since:
                w.writerow([d.isoformat(), f"{ivs[d]:.6f}"])


async def load_data(broker: Broker, today: date, now: datetime, years: int, csv_path: str | None,
                    iv_text: str | None, workdir: Path) -> Data:
    """The bars and the volatility input of a chat backtest, or BacktestRefusal saying what is missing."""
    start = today - timedelta(days=int(365.25 * years))
    notes: list[str] = []
    if csv_path:
        data = await asyncio.to_thread(_csv_data, csv_path, iv_text, start, today)
        bars, iv, source = data.bars, data.iv, data.source
    else:
        try:
            all_bars, ivs = await broker_history(broker, today, now)
        except BrokerError as e:
            raise BacktestRefusal(f"no QQQ history from the broker ({e}); set BACKTEST_CSV to a daily-bars file") \
                from e
        bars = [b for b in all_bars if b.day >= start]
        if len(bars) < 2:
            raise BacktestRefusal("the broker has no QQQ daily history for that period; set BACKTEST_CSV to a "
                                  "daily-bars file (Date,Open,High,Low,Close)")
        source = "IB daily bars" if broker.name == "ib" else "the simulated market"
        if iv_text:
            iv = iv_text
        elif ivs:
            path = workdir / "iv.csv"
            await asyncio.to_thread(_write_iv, path, ivs, start - timedelta(days=10))
            iv = f"{path}:IV"
            if min(ivs) > bars[0].day:
                notes.append(f"implied volatility from {min(ivs)}; before it, its first value")
        else:
            iv = FALLBACK_IV
            notes.append(f"no implied-volatility history from the broker: a constant {float(iv):.0%} is used")
    first = bars[0].day
    span = (bars[-1].day - first).days / 365.25
    if span < years - 0.25:
        notes.append(f"only {span:.1f} years of QQQ history are available (since {first}): backtested those")
    return Data(bars, iv, source, tuple(notes))


def _is_number(text: str) -> bool:
    try:
        float(text.strip().rstrip("%"))
        return True
    except ValueError:
        return False


# --- the job (in a separate process) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    bars: list[DailyBar]
    iv: str
    capital: Decimal
    cash_rate: str
    limits: DailyLimits
    runs: tuple[tuple[str, tuple[str, ...]], ...]  # (label, --set overrides) per strategy curve
    pricing: str = ""  # the option market's parameters file (SIM_PRICING); empty: the built-in ones


@dataclass(frozen=True, slots=True)
class Curve:
    label: str
    summary: dict[str, Any]
    days: list[str]
    equity: list[float]


@dataclass(frozen=True, slots=True)
class Outcome:
    curves: list[Curve]
    buy_hold: list[float]
    png: bytes
    wall_s: float


def run_job(job: Job) -> Outcome:
    """Every run of the job, then the chart: what the worker process does."""
    import time

    from bot.lab.backtest import BacktestConfig, run_backtest
    from bot.lab.charts import equity_curves_png

    t0 = time.perf_counter()
    curves: list[Curve] = []
    buy_hold: list[float] = []
    for label, overrides in job.runs:
        cfg = BacktestConfig(bars=job.bars, iv=job.iv, capital=job.capital, overrides=list(overrides),
                             limits=job.limits, cash_rate=job.cash_rate, pricing=job.pricing)
        with tempfile.TemporaryDirectory(prefix="qqq-chat-backtest-") as tmp:
            run = asyncio.run(run_backtest(cfg, workdir=Path(tmp)))
        curves.append(Curve(label, run.result["summary"], [e["date"] for e in run.result["equity"]],
                            [e["equity"] for e in run.result["equity"]]))
        buy_hold = run.buy_hold
    png = equity_curves_png(curves[0].days, [(c.label, c.equity) for c in curves], buy_hold)
    return Outcome(curves, buy_hold, png, time.perf_counter() - t0)


async def run_in_process(job: Job, timeout_s: float = JOB_TIMEOUT_S) -> Outcome:
    """The job in a fresh Python process (`bot.lab.chat_backtest_worker`): nothing of the bot's loop,
    database or memory is shared; the job goes in and the outcome comes out pickled over its pipes,
    and a job that runs past ``timeout_s`` is killed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.lab.chat_backtest_worker", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(pickle.dumps(job)), timeout_s)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"the backtest process ended with code {proc.returncode}: {last[0]}")
    outcome = pickle.loads(out)
    if not isinstance(outcome, Outcome):
        raise RuntimeError("the backtest process answered something else than an outcome")
    return outcome


@dataclass
class Runner:
    """One chat backtest at a time."""

    running_since: datetime | None = None
    who: str = ""
