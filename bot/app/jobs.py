"""What the scheduled jobs do, without the scheduler: which aligned tick is due, the heartbeat with
the daily backup, and the after-close summary. `handlers/app.py` runs them as APScheduler jobs in
python-telegram-bot's loop; `bot/app/runner.py` (headless) calls the same functions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from bot.app.config import AppConfig
from bot.app.health import write_heartbeat
from bot.control import period_reports as reports
from bot.engine.alerts import EventKind
from bot.engine.engine import Engine
from bot.engine.settings_service import pause_text
from broker.clock import Clock
from storage import kv, ledger
from strategy import number_style as num
from strategy.accounting import unrealized_pnl
from strategy.calendar import NY, SessionCalendar

log = logging.getLogger(__name__)
TICK_GRACE = timedelta(seconds=90)
SUMMARY_TIME = (16, 10)  # America/New_York, after the close


def due_tick(calendar: SessionCalendar, now: datetime, interval_min: int, delay_min: int,
             last_done: datetime | None) -> datetime | None:
    """The aligned tick to run now: the latest one at or before ``now``, not older than the grace
    period (a stalled loop runs the missed tick once, not every missed one) and not yet run."""
    session = calendar.open_session(now)
    if session is None:
        return None
    due = [t for t in calendar.tick_times(session, interval_min, delay_min) if t <= now]
    if not due:
        return None
    t = due[-1]
    if now - t > TICK_GRACE or (last_done is not None and t <= last_done):
        return None
    return t


async def run_due_tick(engine: Engine, now: datetime, last_done: datetime | None) -> datetime | None:
    """Run the tick that is due at ``now``, if any; returns its time (the new ``last_done``)."""
    s = engine.settings.current
    due = due_tick(engine.calendar, now, s.check_interval_min, s.delay_after_open_min, last_done)
    if due is None:
        return None
    report = await engine.tick()
    log.info("tick %s: %s", report.time.isoformat(timespec="seconds"), report.summary())
    return due


def new_york_day(t: datetime) -> date:
    """The calendar day in New York: the day every daily job of the bot counts in."""
    return t.astimezone(NY).date()


async def heartbeat(engine: Engine, clock: Clock, cfg: AppConfig, backed_up: date | None) -> date:
    """Write the heartbeat `qqq-bot health` reads; the reconciliation when it is due (every few
    minutes while connected); once per New York day, the daily backup (in a thread). Returns the day
    of the last backup."""
    now = clock.now()
    try:
        write_heartbeat(now, engine.broker.state.value)
    except Exception:
        log.exception("could not write the heartbeat")
    await engine.reconcile_if_due()
    today = new_york_day(now)
    if backed_up != today:
        await asyncio.to_thread(daily_backup, cfg, today)
    return today


def daily_backup(cfg: AppConfig, today: date) -> None:
    """Today's SQLite backup under DATA_DIR/backups, keeping BACKUP_KEEP_DAYS days."""
    from storage.backup import BackupError, daily_backup, sqlite_path

    try:
        path = sqlite_path(cfg.db_url)
        daily_backup(path, path.parent / "backups", today, cfg.backup_keep_days)
    except BackupError as e:
        log.warning("daily backup skipped: %s", e)
    except Exception:
        log.exception("daily backup failed")


@dataclass(frozen=True, slots=True)
class Marks:
    """What the broker says at the close, for the daily summary (None where it did not answer)."""

    net_liquidation: Decimal | None = None
    unrealized: Decimal | None = None
    qqq_close: Decimal | None = None
    prev_close: Decimal | None = None  # QQQ's close of the session before


async def closing_marks(engine: Engine, timeout_s: float = 10.0) -> Marks:
    """Net liquidation, the bot's lots' unrealized P&L at the mid and QQQ's last price, within
    ``timeout_s`` (a slow broker leaves the figures out, it never holds the summary back)."""
    async def ask() -> Marks:
        account = await engine.broker.account_summary()
        quote = await engine.broker.quote("QQQ")
        prev: Decimal | None = None
        with contextlib.suppress(Exception):  # the day's change is a nicety: never a reason to lose the rest
            prev = await engine.prev_close(new_york_day(engine.clock.now()))
        lots = ledger.open_lots()
        unrealized: Decimal | None = Decimal(0)
        if lots:
            quotes = {q.contract: q for q in await engine.broker.option_quotes([lot.contract for lot in lots])}
            for lot in lots:
                q = quotes.get(lot.contract)
                if q is None or q.mid is None or unrealized is None:
                    unrealized = None
                    continue
                unrealized += unrealized_pnl(lot.avg_price, q.mid, lot.qty, lot.contract.multiplier)
        return Marks(account.net_liquidation, unrealized, quote.price, prev)

    try:
        return await asyncio.wait_for(ask(), timeout_s)
    except Exception as e:
        log.warning("daily summary: the broker's figures are missing (%s: %s)", type(e).__name__, e)
        return Marks()


def daily_summary_text(engine: Engine, day: date, marks: Marks | None = None) -> str:
    """The after-close summary, one fact a line, as a phone shows it."""
    (today,) = reports.period_report("day", day, 1)  # the one realized-P&L query /pnl and /daily use
    start = datetime(day.year, day.month, day.day, tzinfo=NY)
    fills = len(ledger.fills_between(start, start + timedelta(days=1)))
    lots = ledger.open_lots()
    s = engine.settings.current
    m = marks or Marks()
    at, last = engine.last_tick()
    when = f" ({datetime.fromisoformat(at).astimezone(NY):%H:%M} ET)" if at else ""
    head = f"{day:%a %Y-%m-%d}"
    if m.qqq_close is not None:
        head += f" · QQQ closed at {num.price(m.qqq_close)}"
        if m.prev_close:
            head += f", {num.percent((m.qqq_close / m.prev_close - 1) * 100)} on the day"
    closed = [num.plural(today.sales, "sale")] if today.sales else []
    closed += [num.plural(today.expiries, "expiry", "expiries")] if today.expiries else []
    unrealized = "unknown" if m.unrealized is None else num.usd(m.unrealized, sign=True)
    lines = [
        head,
        f"Realized today: {num.usd(today.realized, sign=True)}" + (f" ({', '.join(closed)})" if closed else ""),
        f"Fills today: {num.plural(fills, 'fill') if fills else 'none'}",
        f"Lots: {len(lots)} of {s.max_positions} open" + (f", unrealized {unrealized}" if lots else ""),
        f"Net liquidation: {'unknown' if m.net_liquidation is None else num.usd(m.net_liquidation)}",
        f"Recycling pool: {num.pool_text(ledger.recycling_pool(), s.recycle_threshold)}",
        f"Automatic orders: {pause_text(s.paused).split(':')[0].lower()}",
        f"Last tick{when}: {last or 'none yet'}",
    ]
    return "\n".join(lines)


async def send_daily_summary(engine: Engine, now: datetime) -> bool:
    """The after-close summary, once per session (across restarts); False when not due."""
    day = new_york_day(now)
    if engine.calendar.session(day) is None:
        return False
    if kv.get(f"daily_summary:{day.isoformat()}") is not None:
        return False
    marks = await closing_marks(engine)
    if not kv.put_once(f"daily_summary:{day.isoformat()}", "1", now):
        return False
    engine.emit(EventKind.DAILY_SUMMARY, daily_summary_text(engine, day, marks))
    return True


def announce_start(engine: Engine, version: str) -> None:
    """The "started" message of every start, sent at once (before the broker answers): the version,
    the broker, what a pause holds back, the lots held. Connection alerts follow on their own."""
    s = engine.settings.current
    broker = "the simulated broker" if engine.broker.name == "sim" else "Interactive Brokers"
    engine.emit(EventKind.STARTED, f"Bot started (version {version}) on {broker}; {pause_text(s.paused)}. "
                f"{len(ledger.open_lots())}/{s.max_positions} lots open.")
