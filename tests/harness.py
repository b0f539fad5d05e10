"""A small world for engine tests: hand-made daily bars → sim market → sim broker → engine on a
real SQLite file, driven tick by tick on a simulated clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from bot.engine.alerts import EventKind, MemorySink
from bot.engine.engine import Engine
from bot.engine.settings_service import SettingsService
from bot.engine.tick_report import TickReport
from broker.base import CommissionReport, ConnectionState, Execution, OrderUpdate
from broker.clock import SimClock
from broker.sim import SimBroker, SimFillModel
from broker.sim_market import DailyBar, IvSource, PricePath
from strategy.calendar import SessionCalendar, nyse
from strategy.rules import DailyLimits


@dataclass
class Recorder:
    """A BrokerListener that keeps every event in order."""

    events: list[object] = field(default_factory=list)

    def on_execution(self, execution: Execution) -> None:
        self.events.append(execution)

    def on_commission(self, report: CommissionReport) -> None:
        self.events.append(report)

    def on_order_update(self, update: OrderUpdate) -> None:
        self.events.append(update)

    def on_connection(self, state: ConnectionState, detail: str) -> None:
        self.events.append((state, detail))

    @property
    def updates(self) -> list[OrderUpdate]:
        return [e for e in self.events if isinstance(e, OrderUpdate)]

    @property
    def executions(self) -> list[Execution]:
        return [e for e in self.events if isinstance(e, Execution)]

    @property
    def commissions(self) -> list[CommissionReport]:
        return [e for e in self.events if isinstance(e, CommissionReport)]

    @property
    def states(self) -> list[ConnectionState]:
        return [e[0] for e in self.events if isinstance(e, tuple)]


class SimulatedCrash(BaseException):
    """Stands for SIGKILL: escapes every ``except Exception`` in the engine."""


def bars_from_closes(start: date, closes: list[float], cal: SessionCalendar | None = None,
                     open_gap: float = 0.0) -> list[DailyBar]:
    """One bar per session from ``start``: each opens at the previous close × (1 + open_gap) and
    trades in a tight range around its open and close."""
    cal = cal or nyse()
    sessions = cal.sessions_between(start, start + timedelta(days=len(closes) * 2 + 30))[: len(closes)]
    out = []
    prev = closes[0]
    for s, close in zip(sessions, closes, strict=True):
        o = prev * (1 + open_gap) if s is not sessions[0] else close
        hi = max(o, close) * 1.001
        lo = min(o, close) * 0.999
        out.append(DailyBar(s.day, o, hi, lo, close))
        prev = close
    return out


@dataclass
class World:
    engine: Engine
    broker: SimBroker
    clock: SimClock
    cal: SessionCalendar
    alerts: MemorySink
    settings: SettingsService
    path: PricePath

    def restart(self) -> World:
        """A new engine on the same database and the same (still running) broker."""
        alerts = MemorySink()
        settings = SettingsService(alerts, self.clock.now)
        engine = Engine(self.broker, self.clock, self.cal, settings, alerts, self.engine.limits,
                        persist_last_tick=True)
        return World(engine, self.broker, self.clock, self.cal, alerts, settings, self.path)

    async def run_session(self, day: date, max_ticks: int | None = None) -> list[TickReport]:
        session = self.cal.session(day)
        assert session is not None, f"{day} is not a session"
        s = self.settings.current
        reports = []
        for t in self.cal.tick_times(session, s.check_interval_min, s.delay_after_open_min)[:max_ticks]:
            if t < self.clock.now():
                continue
            self.clock.advance_to(t)
            reports.append(await self.engine.tick())
        return reports

    async def close_session(self, day: date) -> None:
        session = self.cal.session(day)
        assert session is not None
        if session.close > self.clock.now():
            self.clock.advance_to(session.close)

    async def run_days(self, days: list[date]) -> None:
        for d in days:
            if d != self.path.first_day:  # the first bar only provides the previous close
                await self.run_session(d)
            await self.close_session(d)

    def events(self, kind: EventKind) -> list[str]:
        return [e.text for e in self.alerts.events if e.kind == kind]


async def make_world(
    bars: list[DailyBar], *, settings: dict[str, str] | None = None, capital: Decimal = Decimal(100_000),
    fill: SimFillModel | None = None, iv: float = 0.22, limits: DailyLimits | None = None, seed: int = 3,
) -> World:
    cal = nyse()
    path = PricePath.from_bars(bars, cal, seed=seed)
    first = cal.session(bars[0].day)
    assert first is not None
    clock = SimClock(first.open - timedelta(minutes=1))
    alerts = MemorySink()
    svc = SettingsService(alerts, clock.now)
    for key, value in (settings or {}).items():
        result = svc.update(key, value, "test")
        assert not hasattr(result, "message"), result
    broker = SimBroker(clock, path, IvSource.constant(iv), calendar=cal, starting_cash=capital,
                       mixed_account=False, seed=seed, fill=fill)
    engine = Engine(broker, clock, cal, svc, alerts, limits or DailyLimits(100, Decimal(10_000_000)))
    await engine.start()
    alerts.events.clear()
    return World(engine, broker, clock, cal, alerts, svc, path)
