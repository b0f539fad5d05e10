"""`qqq-bot backtest`: the same engine and the same `sim` broker on a simulated clock over
5-minute ticks. There is no second implementation of the rules: only the clock and the price
path differ from a live run."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bot.alerts import MemorySink
from bot.backtest_report import build_result
from bot.engine import Engine
from bot.settings_service import SettingsService
from broker.clock import SimClock
from broker.sim import SimBroker
from broker.sim_market import (
    CsvError,
    DailyBar,
    IvSource,
    PricePath,
    load_ohlc_csv,
    load_series_csv,
    synthetic_bars,
)
from storage.db import close_database, open_database
from strategy.calendar import nyse
from strategy.rules import DailyLimits
from strategy.settings import SettingError, parse_assignment


class BacktestError(Exception):
    """Bad input to a backtest, with a message for the user."""


@dataclass
class BacktestConfig:
    csv: Path | None = None
    synthetic_years: int = 10
    seed: int = 1
    start: date | None = None
    end: date | None = None
    capital: Decimal = Decimal(100_000)
    iv: str = "0.25"
    overrides: list[str] = field(default_factory=list)
    limits: DailyLimits = field(default_factory=DailyLimits)
    bars: list[DailyBar] | None = None  # fetched beforehand (``--source ib``)


SYNTHETIC_END = date(2025, 12, 31)


@dataclass
class BacktestRun:
    """What the run produced: the `--json` result, open lots per day and buy & hold per day."""

    result: dict[str, Any]
    positions: list[tuple[date, int]]
    buy_hold: list[float]
    db_path: Path


def load_bars(cfg: BacktestConfig) -> list[DailyBar]:
    cal = nyse()
    if cfg.bars is not None:
        bars = sorted(cfg.bars, key=lambda b: b.day)
    elif cfg.csv is not None:
        try:
            bars = load_ohlc_csv(cfg.csv)
        except CsvError as e:
            raise BacktestError(str(e)) from e
        except OSError as e:
            raise BacktestError(f"cannot read {cfg.csv}: {e.strerror or e}") from e
    else:
        if not 1 <= cfg.synthetic_years <= 25:
            raise BacktestError("--synthetic-years must be 1–25")
        end = cfg.end or SYNTHETIC_END
        start = cfg.start or date(end.year - cfg.synthetic_years, end.month, min(end.day, 28)) + timedelta(days=1)
        sessions = cal.sessions_between(max(start, cal.first), min(end, cal.last))
        if len(sessions) < 2:
            raise BacktestError("the synthetic period holds fewer than two sessions")
        bars = synthetic_bars(sessions, seed=cfg.seed)
    if cfg.start is not None:
        bars = [b for b in bars if b.day >= cfg.start]
    if cfg.end is not None:
        bars = [b for b in bars if b.day <= cfg.end]
    if len(bars) < 2:
        raise BacktestError("fewer than two sessions in the chosen period")
    return bars


async def fetch_ib_bars(host: str, port: int, client_id: int, start: date, end: date) -> list[DailyBar]:
    """QQQ daily bars from IB Gateway for ``--source ib``. The connection only reads history, so a
    live login is accepted here; it is closed before the backtest starts."""
    from broker.base import BrokerError
    from broker.ib import IBBroker

    broker = IBBroker(host, port, client_id, allow_live=True, calendar=nyse())  # reads history only
    try:
        await broker.connect()
        return await broker.historical_daily_bars("QQQ", start, end)
    except BrokerError as e:
        raise BacktestError(f"--source ib: {e}") from e
    finally:
        await broker.close()


def load_iv(cfg: BacktestConfig) -> IvSource:
    """``--iv`` is a constant (0.25 or 25 %), a CSV column of the --csv file (``VXN``), or
    ``PATH:COLUMN``."""
    text = cfg.iv.strip()
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        value = None
    if value is not None:
        sigma = value / 100 if (text.endswith("%") or value > 3) else value
        if not 0.01 <= sigma <= 3:
            raise BacktestError(f"--iv {text}: a volatility must be between 1 % and 300 %")
        return IvSource.constant(sigma)
    path_text, sep, column = text.rpartition(":")
    if not sep:
        if cfg.csv is None:
            raise BacktestError(f"--iv {text}: a column name needs --csv, or use PATH:COLUMN")
        path, column = cfg.csv, text
    else:
        path = Path(path_text)
    try:
        return IvSource.from_series(load_series_csv(path, column))
    except CsvError as e:
        raise BacktestError(str(e)) from e
    except OSError as e:
        raise BacktestError(f"cannot read {path}: {e.strerror or e}") from e


async def run_backtest(
    cfg: BacktestConfig, workdir: Path | None = None, progress: Callable[[int, int], None] | None = None
) -> BacktestRun:
    """Drive the engine over every 5-minute tick of every session in the period."""
    bars = load_bars(cfg)
    iv = load_iv(cfg)
    if cfg.capital <= 0:
        raise BacktestError("--capital must be positive")
    cal = nyse()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="qqq-backtest-"))
    db_path = workdir / "backtest.db"
    db = open_database(f"sqlite:///{db_path}")
    try:
        path = PricePath.from_bars(bars, cal, seed=cfg.seed)
        sessions = path.sessions
        clock = SimClock(sessions[0].open - timedelta(minutes=1))
        alerts = MemorySink()
        settings = SettingsService(alerts, clock.now)
        for text in cfg.overrides:
            change = parse_assignment(settings.current, text)
            if isinstance(change, SettingError):
                raise BacktestError(f"--set {text}: {change.message}")
            settings.update(change.key, text.partition("=")[2], "backtest")
        broker = SimBroker(clock, path, iv, calendar=cal, starting_cash=cfg.capital, mixed_account=False,
                           seed=cfg.seed)
        engine = Engine(broker, clock, cal, settings, alerts, cfg.limits, persist_last_tick=False, journal=False)
        await engine.start()
        equity: list[tuple[date, Decimal]] = []
        positions: list[tuple[date, int]] = []
        total = len(sessions)
        for i, session in enumerate(sessions):
            s = settings.current
            # The first session only provides the previous close: trading starts on the second.
            ticks = cal.tick_times(session, s.check_interval_min, s.delay_after_open_min) if i else []
            for t in ticks:
                if t < clock.now():
                    continue  # an order's wait ran past this tick
                clock.advance_to(t)
                await engine.tick()
            if session.close > clock.now():
                clock.advance_to(session.close)
            account = await broker.account_summary()
            equity.append((session.day, account.net_liquidation))
            positions.append((session.day, len(engine.state(session.day).open_lots)))
            alerts.events.clear()
            if progress is not None:
                progress(i + 1, total)
        await engine.stop()
        closes = {b.day: b.close for b in bars}
        result = build_result(equity, closes, cfg.capital, settings.current)
        first = closes[equity[0][0]]
        bh = [float(cfg.capital) * closes[d] / first for d, _ in equity]
        return BacktestRun(result, positions, bh, db_path)
    finally:
        close_database(db)


def terminal_progress(done: int, total: int) -> None:
    """A one-line progress bar on stderr (only used when stderr is a terminal)."""
    if done != total and done % 20:
        return
    width = 30
    filled = int(width * done / total)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} sessions")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()
