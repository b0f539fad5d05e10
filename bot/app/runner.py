"""`qqq-bot run` (headless): the engine on the configured broker, on the wall clock, ticking at
every aligned tick of every session, alerts to the log, a heartbeat for `qqq-bot health`, and a
clean stop on SIGTERM/SIGINT (the tick in flight finishes its bookkeeping, the database closes)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from bot.app.config import AppConfig
from bot.app.jobs import announce_start, heartbeat
from bot.engine.alerts import LogSink, mode_label
from bot.engine.engine import Engine
from bot.engine.settings_service import SettingsService
from bot.lab.rates import parse_cash_rate
from broker.base import Broker, BrokerError, LiveAccountRefused
from broker.clock import Clock, WallClock
from storage.db import close_database, open_database
from strategy.calendar import nyse

log = logging.getLogger(__name__)
HEARTBEAT_S = 30
SIM_INTEREST_KEY = "sim_interest"


SIM_MARKET_KEY = "sim_market"
SIM_HISTORY_DAYS = 400  # the simulated market's history before its first start
SIM_AHEAD_DAYS = 60
SIM_S0 = 480.0


@dataclass(frozen=True, slots=True)
class SimMarketDefinition:
    """What defines the simulated market: its seed, its first day and QQQ's price that day. Stored
    at the first start, read back at every later one, so the market goes on across restarts (the
    path is built day by day from these, so a later end only adds days)."""

    seed: int
    start: date
    s0: float

    def to_json(self) -> str:
        return json.dumps({"seed": self.seed, "start": self.start.isoformat(), "s0": self.s0})

    @classmethod
    def from_json(cls, text: str) -> SimMarketDefinition:
        d = json.loads(text)
        return cls(int(d["seed"]), date.fromisoformat(d["start"]), float(d["s0"]))


def sim_market_definition(cfg: AppConfig, today: date, now: datetime) -> SimMarketDefinition:
    """The stored definition of the simulated market, or a new one (stored) on the first start."""
    from storage import kv

    stored = kv.get(SIM_MARKET_KEY)
    if stored:
        try:
            market = SimMarketDefinition.from_json(stored)
        except (ValueError, KeyError, TypeError) as e:
            log.error("the stored simulated market is unreadable (%s); starting a new one", e)
        else:
            if market.seed != cfg.sim_seed:
                log.warning("SIM_SEED is %d but this database's simulated market was made with seed %d; it goes "
                            "on with %d (a new SIM_SEED applies to a new database)", cfg.sim_seed, market.seed,
                            market.seed)
            return market
    market = SimMarketDefinition(cfg.sim_seed, today - timedelta(days=SIM_HISTORY_DAYS), SIM_S0)
    kv.put(SIM_MARKET_KEY, market.to_json(), now)
    return market


def make_sim_broker(cfg: AppConfig, clock: Clock) -> Broker:
    """The simulated broker on the market this database has known since its first start (needs the
    database open)."""
    from broker.sim import SimBroker
    from broker.sim_market import IvSource, PricePath

    cal = nyse()
    now = clock.now()
    today = now.date()
    market = sim_market_definition(cfg, today, now)
    end = max(today, market.start) + timedelta(days=SIM_AHEAD_DAYS)
    path = PricePath.wall_clock(cal, market.seed, market.start, end, s0=market.s0)
    from bot.lab.pricing import load_pricing

    return SimBroker(clock, path, IvSource.constant(0.24), calendar=cal, starting_cash=cfg.sim_capital,
                     mixed_account=True, seed=market.seed, cash_rate=parse_cash_rate(cfg.sim_cash_rate),
                     pricing=load_pricing(cfg.sim_pricing))


def make_broker(cfg: AppConfig, clock: Clock) -> Broker:
    """The configured broker: the built-in simulator, or IB Gateway through ib_async."""
    if cfg.broker == "ib":
        from bot.logs import redactor
        from broker.ib import IBBroker

        redactor().add_endpoint(cfg.ib_host, cfg.ib_port)  # never in clear in a log line or /logs

        return IBBroker(cfg.ib_host, cfg.ib_port, cfg.ib_client_id, allow_live=cfg.allow_live_trading,
                        clock=clock, calendar=nyse())
    broker = make_sim_broker(cfg, clock)
    adopt_ledger(broker, cfg.sim_capital)
    return broker


def adopt_ledger(broker: Broker, starting_cash: Decimal) -> None:
    """A new sim process starts with an empty account: hand it the bot's open lots and QQQM (so that
    selling them is not refused) and the cash the ledger says is left of the starting cash, so net
    liquidation carries on across a restart (IB keeps positions and cash by itself)."""
    from broker.base import StockContract
    from broker.sim import SimBroker
    from storage import ledger

    if not isinstance(broker, SimBroker):
        return
    for lot in ledger.open_lots():
        try:
            broker.adopt_position(lot.contract, lot.qty, lot.avg_price)
        except Exception as e:  # an expired lot: the engine's exits will report it
            log.warning("sim: could not adopt lot #%d (%s): %s", lot.id, lot.contract.key, e)
    shares, deployed = ledger.qqqm_bought()
    if shares:
        broker.adopt_position(StockContract("QQQM"), shares, deployed / shares)
    from storage import kv

    stored = kv.get(SIM_INTEREST_KEY)
    earned = Decimal(stored) if stored else Decimal(0)
    broker.interest = earned
    broker.account.cash["USD"] = starting_cash + ledger.cash_flow() + earned

    def remember(total: Decimal) -> None:  # the interest credited so far survives a restart too
        kv.put(SIM_INTEREST_KEY, str(total), broker.clock.now())

    broker.on_interest = remember


async def _heartbeat(engine: Engine, clock: WallClock, cfg: AppConfig) -> None:
    backed_up: date | None = None
    while True:
        backed_up = await heartbeat(engine, clock, cfg, backed_up)
        await asyncio.sleep(HEARTBEAT_S)


async def _tick_loop(engine: Engine, settings: SettingsService, clock: WallClock, max_ticks: int | None) -> None:
    cal = engine.calendar
    ticks = 0
    while max_ticks is None or ticks < max_ticks:
        s = settings.current
        nxt = cal.next_tick(clock.now(), s.check_interval_min, s.delay_after_open_min)
        if nxt is None:
            log.error("no future session in the calendar; stopping")
            return
        wait = (nxt - clock.now()).total_seconds()
        log.info("next tick at %s (in %.0f s)", nxt.isoformat(), wait)
        await asyncio.sleep(max(wait, 0))
        report = await engine.tick()
        ticks += 1
        log.info("tick %s: %s", report.time.isoformat(timespec="seconds"), report.summary())


async def run_headless(cfg: AppConfig, max_ticks: int | None = None) -> None:
    db = open_database(cfg.db_url)
    clock = WallClock()
    broker = make_broker(cfg, clock)
    alerts = LogSink(lambda: mode_label(broker.mode))
    settings = SettingsService(alerts, clock.now)
    engine = Engine(broker, clock, nyse(), settings, alerts, cfg.limits, record_quotes=cfg.broker == "ib")
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, functools.partial(_stop, main, sig))
    beat = asyncio.create_task(_heartbeat(engine, clock, cfg), name="heartbeat")
    from importlib.metadata import version

    announce_start(engine, version("qqq-leaps-bot"))
    try:
        try:
            await engine.start()
        except LiveAccountRefused as e:
            raise SystemExit(str(e)) from None  # headless: no chat to explain it in, so stop
        except BrokerError as e:
            log.error("%s; ticks will wait for the connection", e)
        log.info("engine ready on the %s broker", broker.name)
        await _tick_loop(engine, settings, clock, max_ticks)
    except asyncio.CancelledError:
        log.info("stopping: the engine's state is in the database")
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        await engine.stop()
        close_database(db)
        log.info("stopped cleanly")


def _stop(task: asyncio.Task[object] | None, sig: signal.Signals) -> None:
    log.info("received %s", sig.name)
    if task is not None:
        task.cancel()
