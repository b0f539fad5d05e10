"""The composition root of `qqq-bot`: it wires the Telegram control plane onto the shell and is the
console entry point. Dependencies run one way: this module → handlers → bot → storage/broker/strategy;
nothing in `bot/` imports `handlers/`.

python-telegram-bot's Application owns the asyncio loop; the strategy tick, the heartbeat with the
daily backup and the after-close summary are APScheduler jobs in that loop (their logic is
`bot/app/jobs.py`), and the alert sender is a task beside them. Nothing here blocks the loop: the tick
runs as its own job (one at a time), handlers run concurrently, and every broker call a command
makes is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, cast

from apscheduler.triggers.cron import CronTrigger
from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ParseMode
from telegram.error import InvalidToken
from telegram.ext import (
    AIORateLimiter,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    filters,
)

from bot.app import cli, jobs
from bot.app.config import AppConfig, parse_window
from bot.app.runner import make_broker
from bot.control import alert_view
from bot.control.service import BacktestSources, BotService
from bot.engine.alerts import EventKind, FanoutSink, LogSink, mode_label
from bot.engine.engine import Engine
from bot.engine.settings_service import SettingsService
from broker.base import Broker, LiveAccountRefused
from broker.clock import Clock, WallClock
from handlers import commands, manual
from handlers import format as fmt
from handlers.context import CONTEXT_TYPES, BotApp, BotContext, BotParts, Deps
from handlers.notifier import TelegramNotifier
from handlers.settings_kb import settings_callback, typed_value
from storage import auth
from storage.db import close_database, open_database
from strategy.calendar import NY, SessionCalendar, nyse

log = logging.getLogger(__name__)

Builder = ApplicationBuilder[Any, Any, Any, Any, Any, Any]


def build(
    cfg: AppConfig,
    *,
    broker: Broker | None = None,
    clock: Clock | None = None,
    calendar: SessionCalendar | None = None,
    builder_hook: Callable[[Builder], None] | None = None,
) -> BotParts:
    """Everything `qqq-bot run` needs, wired; the caller runs ``parts.app``."""
    problem = cfg.telegram_problem()
    if problem is not None:
        raise SystemExit(problem)
    assert cfg.telegram_bot_token is not None and cfg.totp_encryption_key is not None
    fernet = auth.load_fernet(cfg.totp_encryption_key.get_secret_value())
    db = open_database(cfg.db_url)
    if broker is None:
        clock = clock or WallClock()
        broker = make_broker(cfg, clock)
    elif clock is None:
        clock = WallClock()
    the_broker = broker

    def label() -> str:
        return mode_label(the_broker.mode)

    builder = (ApplicationBuilder().token(cfg.telegram_bot_token.get_secret_value())
               .base_url(cfg.telegram_api_base_url)
               .context_types(CONTEXT_TYPES)
               .rate_limiter(AIORateLimiter(max_retries=3))
               .concurrent_updates(True))
    if builder_hook is not None:
        builder_hook(builder)
    app = cast(BotApp, builder.build())  # the builder cannot carry the custom context types through

    async def send(chat_id: int, text: str, silent: bool, actions: Sequence[tuple[str, str]] = ()) -> int:
        message_id = 0
        chunks = fmt.split_message(text)
        for i, chunk in enumerate(chunks):
            message = await app.bot.send_message(chat_id, chunk, parse_mode=ParseMode.HTML,
                                                 disable_notification=silent, disable_web_page_preview=True,
                                                 reply_markup=alert_markup(actions) if i == len(chunks) - 1 else None)
            message_id = message.message_id
        return message_id  # the message holding the end of the text: the one a thread's next alert edits

    async def edit(chat_id: int, message_id: int, text: str, actions: Sequence[tuple[str, str]] = ()) -> None:
        await app.bot.edit_message_text(text, chat_id=chat_id, message_id=message_id, parse_mode=ParseMode.HTML,
                                        disable_web_page_preview=True, reply_markup=alert_markup(actions))

    async def delete(chat_id: int, message_id: int) -> None:
        await app.bot.delete_message(chat_id, message_id)

    notifier = TelegramNotifier(cfg.admin_user_ids, lambda ev: fmt.alert_html(alert_view.present(ev), label()), send,
                                clock.now, quiet_window=parse_window(cfg.ib_quiet_window), edit=edit, delete=delete,
                                actions=alert_view.actions, rings_anew=frozenset(alert_view.RESULT_KINDS))
    sink = FanoutSink([LogSink(label), notifier])
    settings = SettingsService(sink, clock.now)
    engine = Engine(broker, clock, calendar or nyse(), settings, sink, cfg.limits, record_quotes=cfg.broker == "ib")
    service = BotService(engine, settings, broker.mode,
                         BacktestSources(cfg.backtest_csv or None, cfg.backtest_iv or None, cfg.backtest_cash_rate,
                                         cfg.sim_pricing))
    deps = Deps(service, cfg.admin_user_ids, fernet, timedelta(minutes=cfg.session_ttl_min), label, clock.now,
                notifier)
    parts = BotParts(app, engine, notifier, deps, db, clock, cfg)
    app.bot_data.bind(parts)
    register_handlers(app)
    app.post_init = startup
    app.post_stop = _post_stop
    app.post_shutdown = _post_shutdown
    app.add_error_handler(_on_error)
    return parts


def alert_markup(actions: Sequence[tuple[str, str]]) -> InlineKeyboardMarkup | None:
    """An alert's buttons: each only shows something (a list, a confirm that needs a session), so
    they carry the action itself and work after a restart."""
    if not actions:
        return None
    return InlineKeyboardMarkup([[InlineKeyboardButton(text, callback_data=commands.ALERT_PREFIX + action)
                                  for text, action in actions]])


def register_handlers(app: BotApp) -> None:
    app.bot_data.deps.extra["command_names"] = [c.name for c in commands.COMMANDS]  # for plain-text hints
    for command in commands.COMMANDS:
        app.add_handler(CommandHandler(command.name, command.handler))
    app.add_handler(CallbackQueryHandler(manual.manual_callback, pattern=f"^{manual.PREFIX}"))
    app.add_handler(CallbackQueryHandler(commands.alert_action, pattern=f"^{commands.ALERT_PREFIX}"))
    app.add_handler(CallbackQueryHandler(settings_callback))
    app.add_handler(MessageHandler(filters.COMMAND, commands.unknown))
    app.add_handler(MessageHandler(filters.ALL, typed_value))


async def _on_error(update: object, context: BotContext) -> None:
    """A handler's bug: logged with context and alerted; the app keeps running."""
    log.error("handler failed on %r", update, exc_info=context.error)
    parts = context.bot_data.parts
    parts.engine.emit(EventKind.ERROR, f"A command failed: {type(context.error).__name__}: {context.error}")
    if isinstance(update, Update) and update.effective_message is not None and update.effective_user is not None \
            and update.effective_user.id in parts.deps.admins:
        with contextlib.suppress(Exception):
            await update.effective_message.reply_text("Sorry, that failed; the error was logged.")


async def startup(app: BotApp, *, sender: bool = True, jobs_on: bool = True,
                  connect_in_background: bool = True) -> None:
    """Register the command menu, connect and reconcile, start the alert sender and the jobs."""
    data = app.bot_data
    parts = data.parts
    try:
        await app.bot.set_my_commands([BotCommand(name, text[:256]) for name, text in commands.help_lines()])
    except Exception as e:
        log.warning("could not register the command menu: %s", e)
    jobs.announce_start(parts.engine, parts.deps.service.version()["qqq-leaps-bot"])
    if connect_in_background:
        data.tasks["connector"] = asyncio.create_task(start_engine(parts), name="connect")
    else:
        await start_engine(parts)
    if sender:
        data.tasks["sender"] = asyncio.create_task(parts.notifier.run(), name="alert-sender")
    if jobs_on:
        schedule_jobs(app)


CONNECT_RETRY_MAX_S = 300.0


async def start_engine(parts: BotParts) -> None:
    """Connect and reconcile before anything may trade, retrying with a capped backoff while the
    broker is unreachable (the chat keeps answering meanwhile). A live account that is not
    allowed blocks trading for good: the bot stays up to say why (a restart loop would not)."""
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


def schedule_jobs(app: BotApp) -> None:
    jq = app.job_queue
    assert jq is not None, "python-telegram-bot[job-queue] is required"
    common = {"misfire_grace_time": 60, "coalesce": True, "max_instances": 1}
    jq.run_custom(tick_job, job_kwargs={"trigger": CronTrigger(second=0, timezone=NY), **common}, name="tick")
    jq.run_custom(heartbeat_job, job_kwargs={"trigger": "interval", "seconds": 30, **common}, name="heartbeat")
    hour, minute = jobs.SUMMARY_TIME
    jq.run_custom(summary_job, job_kwargs={"trigger": CronTrigger(day_of_week="mon-fri", hour=hour, minute=minute,
                                                                  timezone=NY), **common}, name="daily-summary")


async def tick_job(context: BotContext) -> None:
    data = context.application.bot_data
    parts = data.parts
    done = await jobs.run_due_tick(parts.engine, parts.clock.now(), data.last_tick)
    if done is not None:
        data.last_tick = done


async def heartbeat_job(context: BotContext) -> None:
    data = context.application.bot_data
    parts = data.parts
    data.backed_up = await jobs.heartbeat(parts.engine, parts.clock, parts.cfg, data.backed_up)


async def summary_job(context: BotContext) -> None:
    parts = context.application.bot_data.parts
    await jobs.send_daily_summary(parts.engine, parts.clock.now())


async def _post_stop(app: BotApp) -> None:
    data = app.bot_data
    connector = data.tasks.get("connector")
    if connector is not None and not connector.done():
        connector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connector
    with contextlib.suppress(Exception):
        await asyncio.wait_for(data.parts.notifier.drain(), timeout=5)  # last alerts out, best effort
    sender = data.tasks.get("sender")
    if sender is not None:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


async def _post_shutdown(app: BotApp) -> None:
    parts = app.bot_data.parts
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


def main(argv: list[str] | None = None) -> int:
    """`qqq-bot`: the command line of `bot/app/cli.py`, with this Telegram bot as `qqq-bot run`."""
    return cli.main(argv, run_bot=run_bot)


if __name__ == "__main__":
    raise SystemExit(main())
