"""`qqq-bot run`: python-telegram-bot's Application owns the asyncio loop; the strategy tick, the
heartbeat, the daily backup and the after-close summary are APScheduler jobs in that loop, and
the alert sender is a task beside them. Nothing here blocks the loop: the tick runs as its own
job (one at a time), handlers run concurrently, and every broker call a command makes is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from apscheduler.triggers.cron import CronTrigger
from peewee import Database
from telegram import BotCommand, Update
from telegram.constants import ParseMode
from telegram.error import InvalidToken
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.alerts import EventKind, FanoutSink, LogSink, mode_label
from bot.config import AppConfig
from bot.engine import Engine
from bot.health import write_heartbeat
from bot.notifier import TelegramNotifier, parse_window
from bot.runner import make_broker
from bot.service import BotService
from bot.settings_service import SettingsService
from broker.base import Broker, LiveAccountRefused
from broker.clock import Clock, WallClock
from handlers import commands
from handlers import format as fmt
from handlers.auth import Deps
from handlers.settings_kb import settings_callback, settings_command, typed_value
from storage import auth, kv, ledger
from storage.db import close_database, open_database
from strategy.calendar import NY, SessionCalendar, nyse

log = logging.getLogger(__name__)
TICK_GRACE = timedelta(seconds=90)
SUMMARY_TIME = (16, 10)  # America/New_York, after the close


@dataclass
class BotParts:
    app: Application[Any, Any, Any, Any, Any, Any]
    engine: Engine
    notifier: TelegramNotifier
    deps: Deps
    db: Database
    clock: Clock


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


COMMANDS: tuple[tuple[str, str], ...] = tuple((c, d[:256]) for c, d in fmt.HELP_LINES)


def build(
    cfg: AppConfig,
    *,
    broker: Broker | None = None,
    clock: Clock | None = None,
    calendar: SessionCalendar | None = None,
    builder_hook: Callable[[ApplicationBuilder[Any, Any, Any, Any, Any, Any]], None] | None = None,
) -> BotParts:
    """Everything `qqq-bot run` needs, wired; the caller runs ``parts.app``."""
    problem = cfg.telegram_problem()
    if problem is not None:
        raise SystemExit(problem)
    assert cfg.telegram_bot_token is not None and cfg.totp_encryption_key is not None
    fernet = auth.load_fernet(cfg.totp_encryption_key.get_secret_value())
    db = open_database(cfg.db_url)
    if clock is None or broker is None:
        wall = WallClock()
        clock, broker = wall, make_broker(cfg, wall)
    the_broker = broker

    def label() -> str:
        return mode_label(the_broker.mode)

    builder = (ApplicationBuilder().token(cfg.telegram_bot_token.get_secret_value())
               .base_url(cfg.telegram_api_base_url)
               .rate_limiter(AIORateLimiter(max_retries=3))
               .concurrent_updates(True))
    if builder_hook is not None:
        builder_hook(builder)
    app = builder.build()

    async def send(chat_id: int, text: str, silent: bool) -> None:
        for chunk in fmt.split_message(text):
            await app.bot.send_message(chat_id, chunk, parse_mode=ParseMode.HTML, disable_notification=silent,
                                       disable_web_page_preview=True)

    notifier = TelegramNotifier(cfg.admin_user_ids, lambda ev: fmt.alert_html(ev, label()), send, clock.now,
                                quiet_window=parse_window(cfg.ib_quiet_window))
    sink = FanoutSink([LogSink(label), notifier])
    settings = SettingsService(sink, clock.now)
    engine = Engine(broker, clock, calendar or nyse(), settings, sink, cfg.limits)
    service = BotService(engine, settings, broker.mode)
    deps = Deps(service, cfg.admin_user_ids, fernet, timedelta(minutes=cfg.session_ttl_min), label, clock.now,
                notifier)
    app.bot_data["deps"] = deps
    register_handlers(app)
    parts = BotParts(app, engine, notifier, deps, db, clock)
    app.bot_data["parts"] = parts
    app.post_init = _post_init(cfg)
    app.post_stop = _post_stop
    app.post_shutdown = _post_shutdown
    app.add_error_handler(_on_error)
    return parts


def register_handlers(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    for name, fn in (("start", commands.start), ("help", commands.help_), ("login", commands.login),
                     ("logout", commands.logout), ("status", commands.status), ("positions", commands.positions),
                     ("account", commands.account), ("trades", commands.trades), ("pnl", commands.pnl),
                     ("set", commands.set_), ("pause", commands.pause), ("resume", commands.resume),
                     ("check", commands.check)):
        app.add_handler(CommandHandler(name, fn))
    app.add_handler(CommandHandler("settings", settings_command))
    app.add_handler(CallbackQueryHandler(settings_callback))
    app.add_handler(MessageHandler(filters.COMMAND, commands.unknown))
    app.add_handler(MessageHandler(filters.ALL, typed_value))


async def _on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A handler's bug: logged with context and alerted; the app keeps running."""
    log.error("handler failed on %r", update, exc_info=context.error)
    parts: BotParts | None = context.application.bot_data.get("parts")
    if parts is not None:
        parts.engine.emit(EventKind.ERROR, f"A command failed: {type(context.error).__name__}: {context.error}")
    if isinstance(update, Update) and update.effective_message is not None and update.effective_user is not None \
            and parts is not None and update.effective_user.id in parts.deps.admins:
        with contextlib.suppress(Exception):
            await update.effective_message.reply_text("Sorry, that failed; the error was logged.")


def _post_init(cfg: AppConfig) -> Callable[[Application[Any, Any, Any, Any, Any, Any]], Any]:
    async def post_init(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        await startup(app, cfg)

    return post_init


async def startup(app: Application[Any, Any, Any, Any, Any, Any], cfg: AppConfig, *, sender: bool = True,
                  jobs: bool = True, connect_in_background: bool = True) -> None:
    """Register the command menu, connect and reconcile, start the alert sender and the jobs."""
    parts: BotParts = app.bot_data["parts"]
    try:
        await app.bot.set_my_commands([BotCommand(c, d) for c, d in COMMANDS])
    except Exception as e:
        log.warning("could not register the command menu: %s", e)
    if connect_in_background:
        app.bot_data["connector"] = asyncio.create_task(start_engine(app), name="connect")
    else:
        await start_engine(app)
    if sender:
        app.bot_data["sender"] = asyncio.create_task(parts.notifier.run(), name="alert-sender")
    if jobs:
        schedule_jobs(app, cfg)


CONNECT_RETRY_MAX_S = 300.0


async def start_engine(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    """Connect and reconcile before anything may trade, retrying with a capped backoff while the
    broker is unreachable (the chat keeps answering meanwhile). A live account that is not
    allowed blocks trading for good: the bot stays up to say why (a restart loop would not)."""
    parts: BotParts = app.bot_data["parts"]
    delay = 5.0
    while True:
        try:
            await parts.engine.start()
            log.info("engine ready on the %s broker (%s)", parts.engine.broker.name, parts.engine.broker.mode)
            return
        except LiveAccountRefused as e:
            log.critical("%s", e)
            parts.engine.blocked = str(e)
            parts.engine.emit(EventKind.ERROR, f"Not trading: {e}")
            return
        except Exception as e:
            parts.engine.report_error(f"Broker connection at start-up failed; retrying in {delay:.0f} s", e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, CONNECT_RETRY_MAX_S)


def schedule_jobs(app: Application[Any, Any, Any, Any, Any, Any], cfg: AppConfig) -> None:
    jq = app.job_queue
    assert jq is not None, "python-telegram-bot[job-queue] is required"
    common = {"misfire_grace_time": 60, "coalesce": True, "max_instances": 1}
    jq.run_custom(tick_job, job_kwargs={"trigger": CronTrigger(second=0, timezone=NY), **common}, name="tick")
    jq.run_custom(heartbeat_job, job_kwargs={"trigger": "interval", "seconds": 30, **common}, name="heartbeat",
                  data=cfg)
    jq.run_custom(summary_job, job_kwargs={"trigger": CronTrigger(day_of_week="mon-fri", hour=SUMMARY_TIME[0],
                                                                  minute=SUMMARY_TIME[1], timezone=NY),
                                           **common}, name="daily-summary")


async def tick_job(context: ContextTypes.DEFAULT_TYPE) -> None:
    parts: BotParts = context.application.bot_data["parts"]
    engine = parts.engine
    s = engine.settings.current
    now = parts.clock.now()
    due = due_tick(engine.calendar, now, s.check_interval_min, s.delay_after_open_min,
                   context.application.bot_data.get("last_tick"))
    if due is None:
        return
    context.application.bot_data["last_tick"] = due
    report = await engine.tick()
    log.info("tick %s: %s", report.time.isoformat(timespec="seconds"), report.summary())


async def heartbeat_job(context: ContextTypes.DEFAULT_TYPE) -> None:
    from bot.runner import daily_backup_job

    parts: BotParts = context.application.bot_data["parts"]
    cfg: AppConfig = context.job.data  # type: ignore[union-attr,assignment]
    now = parts.clock.now()
    try:
        write_heartbeat(now, parts.engine.broker.state.value)
    except Exception:
        log.exception("could not write the heartbeat")
    today = now.astimezone(NY).date()
    if context.application.bot_data.get("backed_up") != today:
        context.application.bot_data["backed_up"] = today
        await asyncio.to_thread(daily_backup_job, cfg, today)


async def summary_job(context: ContextTypes.DEFAULT_TYPE) -> None:
    parts: BotParts = context.application.bot_data["parts"]
    day = parts.clock.now().astimezone(NY).date()
    if parts.engine.calendar.session(day) is None:
        return
    if not kv.put_once(f"daily_summary:{day.isoformat()}", "1", parts.clock.now()):
        return
    parts.engine.emit(EventKind.DAILY_SUMMARY, daily_summary_text(parts, day))


def daily_summary_text(parts: BotParts, day: Any) -> str:
    fills = [f for f in ledger.fills_in_order() if f.time.astimezone(NY).date() == day]
    realized = sum((f.realized_pnl for f in fills if f.realized_pnl is not None), start=ledger.ZERO)
    lots = ledger.open_lots()
    s = parts.engine.settings.current
    last = parts.engine.last_report
    return (f"{day.isoformat()}: {len(fills)} fills, realized {realized:+.2f} USD today; "
            f"{len(lots)}/{s.max_positions} lots open; recycling pool {ledger.recycling_pool():.2f} USD; "
            f"{'paused' if s.paused else 'running'}. Last tick: {last.summary() if last else 'none'}")


async def _post_stop(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    connector: asyncio.Task[None] | None = app.bot_data.get("connector")
    if connector is not None and not connector.done():
        connector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connector
    sender: asyncio.Task[None] | None = app.bot_data.get("sender")
    parts: BotParts = app.bot_data["parts"]
    with contextlib.suppress(Exception):
        await asyncio.wait_for(parts.notifier.drain(), timeout=5)  # last alerts out, best effort
    if sender is not None:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


async def _post_shutdown(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    parts: BotParts = app.bot_data["parts"]
    try:
        await parts.deps.service.cache.close()
        await parts.engine.stop()
    finally:
        close_database(parts.db)
        log.info("stopped cleanly: the engine's state is in the database")


def run_bot(cfg: AppConfig) -> int:
    """Run until SIGTERM/SIGINT. Network trouble at start-up is retried for ever (a VPS may boot
    before its network); a token Telegram rejects stops with one line (the token never printed)."""
    parts = build(cfg)
    try:
        parts.app.run_polling(drop_pending_updates=True, allowed_updates=["message", "callback_query"],
                              bootstrap_retries=-1)
    except InvalidToken:
        log.error("TELEGRAM_BOT_TOKEN was rejected by Telegram: check the token BotFather gave you")
        print("qqq-bot: configuration error: TELEGRAM_BOT_TOKEN: rejected by Telegram", file=sys.stderr)
        return 2
    return 0
