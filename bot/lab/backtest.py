"""`qqq-bot backtest`: the same engine and the same `sim` broker on a simulated clock over
5-minute ticks. There is no second implementation of the rules: only the clock and the price
path differ from a live run."""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from bot.engine.alerts import MemorySink
from bot.engine.engine import Engine
from bot.engine.settings_service import SettingsService
from bot.lab.backtest_report import CashFigures, build_result
from bot.lab.calendar_cache import cached_nyse
from bot.lab.pricing import PricingError, describe, load_pricing, parse_option_rate
from bot.lab.rates import RateError, parse_cash_rate
from broker.clock import SimClock
from broker.sim import SimBroker
from broker.sim_market import (
    QQQM_RATIO,
    CashRate,
    CsvError,
    DailyBar,
    IvSource,
    PricePath,
    load_ohlc_csv,
    load_series_csv,
    synthetic_bars,
)
from broker.sim_options import YEAR_S, expiry_close
from storage import ledger
from storage.db import close_database, open_database
from storage.models import database_proxy
from strategy.calendar import nyse
from strategy.fastforward import Band, due_exit, quiet_band, take_profit_price, trigger_spot
from strategy.model import Lot
from strategy.option_market import MarketParams
from strategy.pricing import bs_time_bound
from strategy.rules import DailyLimits, has_expired
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
    every_tick: bool = False  # evaluate every tick through the engine, not only those that can act
    cash_rate: str = "0"  # interest on idle cash: a constant (4%) or PATH:COLUMN (percent a year)
    pricing: str = ""  # the option market's parameters file (`calibrate --save`); empty: the defaults
    option_rate: str = ""  # the rate options are priced with: empty (the parameters'), a constant or PATH:COLUMN
    iv_source: IvSource | None = None  # given beforehand (a bootstrapped history's), instead of ``iv``
    rate_source: CashRate | None = None  # likewise, instead of ``cash_rate``


SYNTHETIC_END = date(2025, 12, 31)


@dataclass
class BacktestRun:
    """What the run produced: the `--json` result, open lots per day and buy & hold per day."""

    result: dict[str, Any]
    positions: list[tuple[date, int]]
    buy_hold: list[float]
    db_path: Path
    ticks_total: int = 0  # the sessions' 5-minute ticks
    ticks_evaluated: int = 0  # those the engine evaluated (all of them with ``every_tick``)


def load_bars(cfg: BacktestConfig) -> list[DailyBar]:
    cal = cached_nyse()
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


def load_cash_rate(cfg: BacktestConfig) -> CashRate:
    """``--cash-rate``: a constant (0, 4%) or PATH:COLUMN, a dated series in percent a year."""
    try:
        return parse_cash_rate(cfg.cash_rate)
    except RateError as e:
        raise BacktestError(f"--cash-rate {cfg.cash_rate}: {e}") from e


def load_pricing_inputs(cfg: BacktestConfig) -> tuple[MarketParams, CashRate | None]:
    """``--pricing FILE`` and ``--rate``: the option market's parameters and the rate series."""
    try:
        return load_pricing(cfg.pricing), parse_option_rate(cfg.option_rate)
    except PricingError as e:
        raise BacktestError(str(e)) from e


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


# A lot is sold when its quoted mid reaches its take-profit price or, once a time exit is due, as
# soon as its quote shows a bid. The sim quotes a mid within half a cent of its model value and a
# positive bid only above a model value of 3 cents (``OptionPricer.model``). Over a session the
# value at a given QQQ price moves with time by at most ``bs_time_bound`` × the time between the
# first and last tick, so the value at the first tick plus that much bounds every tick's. A lot's
# trigger is where that bound reaches the threshold minus 1 cent (twice the half cent of rounding)
# and a millionth of it (float and Decimal conversions); for puts and contracts not quoted at every
# tick there is none, and every tick is evaluated. tests/test_fastforward.py checks each margin
# against the sim's quotes.
TP_MARGIN_USD = 0.01
TP_MARGIN_REL = 1e-6
BID_MIN_VALUE = 0.03
RECYCLE_MARGIN_USD = 0.02


def recycle_spot_max(pool: Decimal) -> float:
    """The highest QQQ price at which the sim's QQQM could be bought with ``pool``: its ask is QQQ ×
    QQQM_RATIO rounded to the cent plus a cent, and a recycling buy needs at least pool ≥ ask."""
    return float(pool + Decimal(str(RECYCLE_MARGIN_USD))) / QQQM_RATIO


class FastForward:
    """The backtest driver's fast-forward over one session's ticks, beside the real engine.

    It evaluates, through ``Engine.tick`` exactly as the every-tick run does, the first tick of the
    session (the day-boundary work: expired lots, dropped roll buys, the sim's expiry settlement),
    the tick after any database write (a fill, an order, an alert flag) or after the engine lost
    readiness, every tick while the broker works an order, and every tick whose QQQ price leaves
    ``strategy.fastforward.quiet_band`` (or every tick when the band says so). Every other tick
    provably decides nothing, writes nothing and moves no order, so skipping it changes nothing:
    the clock's next step is the next evaluated tick."""

    def __init__(self, engine: Engine, clock: SimClock, broker: SimBroker, path: PricePath, iv: IvSource) -> None:
        self.engine = engine
        self.clock = clock
        self.broker = broker
        self.path = path
        self.iv = iv
        self._lots: dict[tuple[int, Decimal], tuple[bool, float | None]] = {}  # this session's: due?, trigger
        self._rolls_pending: tuple[int, bool] | None = None  # (rows written when read, any pending)

    async def run_session(self, index: int, ticks: Sequence[datetime]) -> int:
        """Drive session ``index`` over ``ticks``; returns how many ticks the engine evaluated."""
        if not ticks:
            return 0
        engine, clock = self.engine, self.clock
        day = self.path.sessions[index].day
        # Every tick's price lies within the day's bar (the intraday path is clipped to it), so the
        # bar's low and high bound the prices: a session whose whole bar lies inside the quiet band
        # is skipped without drawing its intraday path.
        bar = self.path.bars[index]
        span = (bar.low, bar.high)
        self._lots.clear()
        evaluated = 0
        low, high = math.inf, -math.inf
        # The clock steps to the first tick as in the every-tick run (the broker then answers for this
        # session: its previous close, the day's expiries and interest); the tick itself is evaluated
        # when there is day-boundary work, else only when its price is outside the day's quiet band.
        if ticks[0] >= clock.now():
            clock.advance_to(ticks[0])
        must = self._day_work_pending(day)
        if not must:
            band = await self.band(day, ticks, span)
            if not band.always and band.low < span[0] and span[1] < band.high:
                return 0  # provably quiet all session long
            must = bool(band.always)
            low, high = band.low, band.high
        prices = self.path.session_prices(index, ticks)
        j, n = 0, len(ticks)
        while j < n:
            if not must:
                while j < n and low < prices[j] < high:
                    j += 1  # provably quiet: skipped
                if j == n:
                    break
            t = ticks[j]
            j += 1
            if t < clock.now():
                continue  # an order's wait ran past this tick (as in the every-tick run)
            clock.advance_to(t)
            changes = self._changes()
            await engine.tick()
            evaluated += 1
            must = self._changes() != changes or not engine.ready or bool(await self.broker.open_orders())
            if not must:
                band = await self.band(day, ticks, span)
                must = bool(band.always)
                low, high = band.low, band.high
        return evaluated

    def _pending_roll_buys(self) -> bool:
        """Whether any roll's buy leg is pending, read again only after a write."""
        changes = self._changes()
        if self._rolls_pending is None or self._rolls_pending[0] != changes:
            self._rolls_pending = (changes, bool(ledger.rolls_with_pending_buy()))
        return self._rolls_pending[1]

    def _day_work_pending(self, day: date) -> bool:
        """Whether the engine has day-boundary work at its first tick of session ``day``, so that tick
        must be evaluated whatever the price: a reconciliation due, an order unresolved, a roll's buy
        leg pending (it is dropped at the next session), or a lot past its expiry (settled then).
        Otherwise the engine's day-boundary work is empty, and doing it at a later tick of the
        session, or at the next session's first, changes nothing (nor does the sim's: its expiry
        settlement and interest depend on the day, not on the time of the first step)."""
        engine = self.engine
        if not engine.ready:
            return True
        state = engine.state(day)
        if state.unresolved_order or self._pending_roll_buys():
            return True
        return any(has_expired(lot, day) for lot in state.open_lots)

    @staticmethod
    def _changes() -> int:
        """Rows written so far through the backtest's one database connection (nothing else writes
        to its private database): the tick after any write is evaluated."""
        changes: int = database_proxy.connection().total_changes
        return changes

    async def band(self, day: date, ticks: Sequence[datetime], span: tuple[float, float]) -> Band:
        """The quiet band for the next ticks of session ``day``, from the engine's own state."""
        engine = self.engine
        state = engine.state(day)
        settings = engine.settings.current
        tp: dict[int, float | None] = {}
        bid: dict[int, float | None] = {}
        for lot in state.open_lots:
            key = (lot.id, lot.avg_price)  # a lot's due exit and target do not change within a session
            found = self._lots.get(key)
            if found is None:
                due = bool(due_exit(lot, day, settings))
                value = BID_MIN_VALUE if due else float(take_profit_price(lot, day, settings))
                found = self._lots[key] = (due, self.trigger(lot, day, ticks, span, value))
            (bid if found[0] else tp)[lot.id] = found[1]
        prev_close = await engine.prev_close(day)
        return quiet_band(state, settings, day, prev_close, tp, recycle_spot_max(state.pool), bid)

    def trigger(self, lot: Lot, day: date, ticks: Sequence[datetime], span: tuple[float, float],
                value: float) -> float | None:
        """The lowest QQQ price from which the lot's quote could reach a model ``value`` (less the
        margins) at any of the session's ticks (``math.inf``: at none of them), by the sim's own
        pricer; None when it cannot be bounded (a put, or a contract not quoted at every tick)."""
        c = lot.contract
        pricer = self.broker.pricer
        close = expiry_close(c.expiry)
        t_max = (close - ticks[0]).total_seconds() / YEAR_S
        t_min = (close - ticks[-1]).total_seconds() / YEAR_S
        trigger: float | None = None
        # The ticks are before the close: they all see the same market day (the previous close's
        # index, the day's rate), and a contract's volatility depends on QQQ's price only.
        if c.right == "C" and t_min > 0 and pricer.is_listed(c) and pricer.state(ticks[-1]) == pricer.state(ticks[0]):
            state, strike, elapsed = pricer.state(ticks[0]), float(c.strike), t_max - t_min
            first = ticks[0]

            def bound(spot: float) -> float:  # nondecreasing in spot, ≥ the value at every tick
                m = pricer.model(c, first, spot, state)
                assert m is not None  # listed, and quoted until after the last tick
                v, _, sigma = m
                return v + bs_time_bound(spot, strike, t_min, t_max, state.rate, state.dividend_yield,
                                         sigma) * elapsed

            target = value - TP_MARGIN_USD - TP_MARGIN_REL * value
            trigger = trigger_spot(target, bound, *span)
        return trigger


async def run_backtest(
    cfg: BacktestConfig, workdir: Path | None = None, progress: Callable[[int, int], None] | None = None
) -> BacktestRun:
    """Drive the engine over the 5-minute ticks of every session in the period: all of them with
    ``cfg.every_tick``, else only those at which something can happen (``FastForward``), with the
    same trades, summary and equity curve. ``progress(done, total)`` is called after each session."""
    bars = load_bars(cfg)
    iv = cfg.iv_source or load_iv(cfg)
    cash_rate = cfg.rate_source or load_cash_rate(cfg)
    pricing, option_rate = load_pricing_inputs(cfg)
    if cfg.capital <= 0:
        raise BacktestError("--capital must be positive")
    cal = cached_nyse()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="qqq-backtest-"))
    db_path = workdir / "backtest.db"
    db = open_database(f"sqlite:///{db_path}", scratch=True)
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
                           seed=cfg.seed, cash_rate=cash_rate, pricing=pricing, option_rate=option_rate)
        engine = Engine(broker, clock, cal, settings, alerts, cfg.limits, persist_last_tick=False, journal=False,
                        private_db=True, reconcile_every=None)
        await engine.start()
        equity: list[tuple[date, Decimal]] = []
        cash: list[Decimal] = []  # USD cash at each close, for the average share of equity held as cash
        positions: list[tuple[date, int]] = []
        total = len(sessions)
        ff = None if cfg.every_tick else FastForward(engine, clock, broker, path, iv)
        ticks_total = ticks_evaluated = 0
        for i, session in enumerate(sessions):
            s = settings.current
            # The first session only provides the previous close: trading starts on the second.
            ticks: Sequence[datetime] = (cal.tick_schedule(session, s.check_interval_min, s.delay_after_open_min)
                                         if i else ())
            ticks_total += len(ticks)
            if ff is not None:
                ticks_evaluated += await ff.run_session(i, ticks)
            else:
                for t in ticks:
                    if t < clock.now():
                        continue  # an order's wait ran past this tick
                    clock.advance_to(t)
                    await engine.tick()
                    ticks_evaluated += 1
            if session.close > clock.now():
                clock.advance_to(session.close)
            account = await broker.account_summary()
            equity.append((session.day, account.net_liquidation))
            cash.append(account.cash_by_currency.get("USD", Decimal(0)))
            positions.append((session.day, len(engine.state(session.day).open_lots)))
            alerts.events.clear()
            if progress is not None:
                progress(i + 1, total)
        await engine.stop()
        closes = {b.day: b.close for b in bars}
        carried = cash_rate.last_day if cash_rate.last_day is not None and cash_rate.last_day < bars[-1].day else None
        money = CashFigures(broker.interest, cash, cash_rate.label, carried,
                            cash_rate.rate(carried) if carried is not None else None)
        result = build_result(equity, closes, cfg.capital, settings.current, money)
        result["pricing"] = describe(pricing, cfg.pricing or None, option_rate)
        first = closes[equity[0][0]]
        bh = [float(cfg.capital) * closes[d] / first for d, _ in equity]
        return BacktestRun(result, positions, bh, db_path, ticks_total, ticks_evaluated)
    finally:
        close_database(db)


class TerminalProgress:
    """A backtest's progress on a terminal: sessions done of all, the rate and the time left, on
    one line of ``stream`` (stderr) that is redrawn at most every ``every_s`` seconds once the run
    has lasted ``after_s`` (a short run shows nothing), and cleared at the end so that nothing is
    left between the command and what it prints."""

    def __init__(self, stream: TextIO | None = None, *, after_s: float = 2.0, every_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.after_s = after_s
        self.every_s = every_s
        self.clock = clock
        self._start: float | None = None
        self._last_done = 0
        self._drawn_at: float | None = None
        self._width = 0

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self._start is None or done < self._last_done:  # a new run
            self._start, self._drawn_at, self._width = now, None, 0
        self._last_done = done
        stream = self.stream or sys.stderr
        if done >= total:
            if self._width:
                stream.write("\r" + " " * self._width + "\r")
                stream.flush()
            self._start = None
            self._last_done = 0
            return
        elapsed = now - self._start
        if elapsed < self.after_s or (self._drawn_at is not None and now - self._drawn_at < self.every_s):
            return
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f", about {_duration((total - done) / rate)} left" if rate > 0 else ""
        line = f"backtest: {done:,}/{total:,} sessions ({100 * done / total:.0f} %), {rate:,.0f} sessions/s{left}"
        stream.write("\r" + line.ljust(self._width))
        stream.flush()
        self._width = max(self._width, len(line))
        self._drawn_at = now


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 60 else f"{whole} s"


_default_progress = TerminalProgress()


def terminal_progress(done: int, total: int) -> None:
    """Progress on stderr with the default ``TerminalProgress`` (for a terminal)."""
    _default_progress(done, total)
