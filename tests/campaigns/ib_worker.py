"""A bot process for the SIGKILL campaign: the engine on the `ib` broker against a fake gateway
in the test process, on a simulated clock it shares with the gateway through a small file. It
trades the campaign's sessions from wherever the clock stands (a restarted worker resumes there)
until it is done or killed.

    python tests/campaigns/ib_worker.py WORKDIR PORT"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bot.engine.alerts import MemorySink
from bot.engine.engine import Engine
from bot.engine.settings_service import SettingsService
from storage import settings_store
from storage.db import close_database, open_database
from strategy.calendar import nyse
from strategy.rules import DailyLimits
from tests.campaigns.test_ib_crash import PAIRS
from tests.fake_gateway.testing import fast_broker
from tests.test_engine import bars_oc
from tests.test_ib_engine import NetClock

SETTINGS = {"max_positions": "1", "recycle_threshold": "100"}


class FileClock(NetClock):
    """A NetClock that publishes every step to ``path`` (atomically) for the gateway to read."""

    def __init__(self, start: datetime, path: Path) -> None:
        super().__init__(start)
        self.path = path
        self._publish()

    def advance_to(self, t: datetime) -> None:
        super().advance_to(t)
        self._publish()

    def _publish(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(self._now.isoformat())
        os.replace(tmp, self.path)


def read_clock(path: Path) -> datetime | None:
    try:
        return datetime.fromisoformat(path.read_text())
    except (OSError, ValueError):
        return None


async def main(workdir: Path, port: int) -> None:
    db = open_database(f"sqlite:///{workdir / 'bot.db'}")
    cal = nyse()
    bars = bars_oc(PAIRS)
    first = cal.session(bars[0].day)
    assert first is not None
    clock_file = workdir / "clock"
    clock = FileClock(read_clock(clock_file) or first.open - timedelta(minutes=1), clock_file)
    alerts = MemorySink()
    settings = SettingsService(alerts, clock.now)
    if not settings_store.load_raw():
        for key, value in SETTINGS.items():
            settings.update(key, value, "campaign")
    broker = fast_broker(port, clock, max_requests_per_s=0, calendar=cal)
    clock.broker = broker
    engine = Engine(broker, clock, cal, settings, alerts, DailyLimits(100, Decimal(10_000_000)))
    await engine.start()  # connect and reconcile before anything new is sent
    print("started", flush=True)
    for bar in bars:
        session = cal.session(bar.day)
        assert session is not None
        if bar.day != bars[0].day:
            s = settings.current
            for t in cal.tick_times(session, s.check_interval_min, s.delay_after_open_min):
                if t <= clock.now():
                    continue
                clock.advance_to(t)
                await clock._barrier()
                await engine.tick()
        if session.close > clock.now():
            clock.advance_to(session.close)
            await clock._barrier()
    await engine.reconcile()
    await engine.stop()
    close_database(db)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
