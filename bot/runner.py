"""`qqq-bot run` (headless): the engine on the configured broker, on the wall clock, ticking at
every aligned tick of every session, alerts to the log. The Telegram bot wraps the same pieces."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from bot.alerts import LogSink, mode_label
from bot.config import AppConfig
from bot.engine import Engine
from bot.settings_service import SettingsService
from broker.base import Broker
from broker.clock import WallClock
from storage.db import close_database, open_database
from strategy.calendar import nyse

log = logging.getLogger(__name__)


def make_sim_broker(cfg: AppConfig, clock: WallClock) -> Broker:
    from broker.sim import SimBroker
    from broker.sim_market import IvSource, PricePath

    cal = nyse()
    today = clock.now().date()
    path = PricePath.wall_clock(cal, cfg.sim_seed, today - timedelta(days=400), today + timedelta(days=60))
    return SimBroker(clock, path, IvSource.constant(0.24), calendar=cal, starting_cash=cfg.sim_capital,
                     mixed_account=True, seed=cfg.sim_seed)


async def run_headless(cfg: AppConfig, max_ticks: int | None = None) -> None:
    db = open_database(cfg.db_url)
    clock = WallClock()
    if cfg.broker != "sim":
        raise SystemExit("BROKER=ib needs the IB adapter (not part of this build yet); use BROKER=sim")
    broker = make_sim_broker(cfg, clock)
    alerts = LogSink(mode_label(broker.mode))
    settings = SettingsService(alerts, clock.now)
    cal = nyse()
    engine = Engine(broker, clock, cal, settings, alerts, cfg.limits)
    await engine.start()
    log.info("engine ready on the %s broker; database %s", broker.name, cfg.db_url.split("@")[-1])
    ticks = 0
    try:
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
    finally:
        await engine.stop()
        close_database(db)
