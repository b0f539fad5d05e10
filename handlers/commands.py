"""The chat commands. Each is thin: access check (``guarded``) → parse → one service call →
format → reply. ``COMMANDS`` at the end is the one table of them: it builds the handlers, the
Telegram command menu and /help."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from telegram import InputFile, Update
from telegram.constants import ParseMode
from telegram.error import TelegramError

from bot.control.manual import Refusal
from bot.control.period_reports import Period
from bot.engine.alerts import EventKind
from bot.engine.settings_service import pause_text
from bot.lab.charts import pnl_chart_png
from bot.logs import redactor
from handlers import format as fmt
from handlers import guess, manual
from handlers.auth import Handler, guarded, pending_after_login, who
from handlers.backtest import backtest_command
from handlers.context import BotContext
from handlers.settings_kb import Panel, confirm_screen, settings_command, tokens_of
from storage import auth, kv
from strategy import number_style as num
from strategy.exposure import raises_money_at_risk
from strategy.hints import typing_hint
from strategy.numbers import NotANumber, read_whole
from strategy.settings import PauseMode, SettingChange, SettingError, format_value

log = logging.getLogger(__name__)
MAX_TRADES = 50
MIN_CHART_POINTS = 3  # fewer points make a chart that says nothing the text does not
MAX_LOG_LINES = 100
DEFAULT_LOG_LINES = 10
LOG_FILE_LINES = 500  # the whole recent log the process keeps


async def reply(update: Update, text: str) -> None:
    """Reply in HTML, split under Telegram's 4096-character limit."""
    message = update.effective_message
    if message is None:
        return
    for chunk in fmt.split_message(text):
        await message.reply_text(chunk, parse_mode=ParseMode.HTML, disable_web_page_preview=True)


@guarded("admin")
async def start(update: Update, context: BotContext) -> None:
    deps = context.deps
    user = update.effective_user
    chat = update.effective_chat
    assert user is not None and chat is not None
    status = auth.enrollment_status(user.id)
    if status == "active":
        await reply(update, fmt.help_text(deps.label, help_groups()))
        return
    enrollment = auth.start_enrollment(user.id, deps.fernet, deps.now())
    if enrollment is None:  # activated meanwhile
        await reply(update, fmt.help_text(deps.label, help_groups()))
        return
    redactor().add(enrollment.secret)  # whatever logs it later, the log shows ***
    caption = ("<b>Two-factor enrollment</b>\n"
               "Scan this QR code with your authenticator app (or enter the key from the link below), "
               "then send <code>/login CODE</code> with the 6-digit code it shows.\n"
               f"<code>{fmt.e(enrollment.uri)}</code>\n"
               "This message is deleted once you have logged in.")
    await _delete_enrollment_message(context, user.id)  # an earlier, now replaced QR goes too
    sent = await context.bot.send_photo(
        chat.id, InputFile(io.BytesIO(enrollment.png), filename="totp.png"), caption=caption,
        parse_mode=ParseMode.HTML, protect_content=True)
    kv.put(f"enroll_msg:{user.id}", f"{chat.id}:{sent.message_id}", deps.now())
    log.info("TOTP enrollment started for admin %s", user.id)


async def _delete_enrollment_message(context: BotContext, user_id: int) -> None:
    """Delete the message holding a TOTP secret, best effort (Telegram refuses after 48 h)."""
    stored = kv.get(f"enroll_msg:{user_id}")
    if not stored:
        return
    chat_id, _, msg_id = stored.partition(":")
    with contextlib.suppress(TelegramError, ValueError):
        await context.bot.delete_message(int(chat_id), int(msg_id))
    kv.put(f"enroll_msg:{user_id}", "", context.deps.now())


@guarded("admin")
async def help_(update: Update, context: BotContext) -> None:
    """/help: the commands by group, one line each; /help COMMAND: what that one does."""
    args = context.args or []
    if args:
        name = args[0].lstrip("/").lower()
        command = next((c for c in COMMANDS if c.name == name), None)
        if command is None:
            await reply(update, f"There is no /{fmt.e(name)}. " + (guess_text(name) or "/help lists the commands."))
            return
        await reply(update, f"/{command.name} — {fmt.e(command.help)}")
        return
    await reply(update, fmt.help_text(context.deps.label, help_groups()))


@guarded("admin")
async def login(update: Update, context: BotContext) -> None:
    deps = context.deps
    user, message = update.effective_user, update.effective_message
    assert user is not None and message is not None
    code = "".join(context.args or [])
    with contextlib.suppress(TelegramError):  # the code should not stay in the chat
        await message.delete()
    if not code:
        await reply(update, "Send <code>/login CODE</code> with the 6-digit code of your authenticator app.")
        return
    result = auth.login(user.id, code, deps.fernet, deps.now(), deps.session_ttl)
    if result.newly_locked:
        deps.alert(EventKind.UNAUTHORIZED, f"Admin {user.id} is locked out for 15 minutes after 5 wrong codes")
    if result.activated:
        await _delete_enrollment_message(context, user.id)
    if result.ok:
        expires = auth.session_expires_at(user.id)
        extra = "Two-factor enrollment complete. " if result.activated else ""
        pending = pending_after_login(context, deps.now())
        then = f"\nNow doing what you asked: <code>{fmt.e(pending.text)}</code>" if pending is not None else ""
        await reply(update, f"✅ {fmt.e(extra)}Session open until {fmt.e(fmt.ny(expires))}.{then}")
        command = next((c for c in COMMANDS if pending is not None and c.name == pending.command), None)
        if pending is not None and command is not None:
            context.args = list(pending.args)
            await command.handler(update, context)
    else:
        await reply(update, f"❌ {fmt.e(result.message)}")


@guarded("admin")
async def logout(update: Update, context: BotContext) -> None:
    user = update.effective_user
    assert user is not None
    had = auth.logout(user.id, context.deps.now())
    await reply(update, "Session closed." if had else "You had no open session.")


@guarded("read")
async def status(update: Update, context: BotContext) -> None:
    deps = context.deps
    user = update.effective_user
    await reply(update, fmt.status_text(await deps.service.status(user.id if user else None), deps.label))


@guarded("read")
async def positions(update: Update, context: BotContext) -> None:
    await _positions(update, context)


async def _positions(update: Update, context: BotContext) -> None:
    deps = context.deps
    view = await deps.service.positions()
    user = update.effective_user
    assert user is not None
    markup = manual.sell_buttons(deps, user.id, [lot.id for lot in view.lots])
    await manual.reply_with(update, fmt.positions_text(view, deps.label), markup)


ALERT_PREFIX = "a:"


@guarded("read")
async def alert_action(update: Update, context: BotContext) -> None:
    """A button under an alert: [Positions], [Sell #N…] (its confirm, as a new message), [Why]. Each
    only shows something, so it needs no token; selling still needs a session and the confirm."""
    deps = context.deps
    query, user = update.callback_query, update.effective_user
    assert query is not None and user is not None
    action = (query.data or "").removeprefix(ALERT_PREFIX)
    what, _, arg = action.partition(":")
    if what not in ("positions", "why", "sell") or (arg and not (arg.isascii() and arg.isdigit())) \
            or (what == "sell" and not arg):
        await query.answer("This button is not valid.", show_alert=True)
        return
    await query.answer()
    if what == "positions":
        await _positions(update, context)
    elif what == "why" and not arg:
        await reply(update, fmt.journal_text(deps.service.journal_day(), deps.label))
    elif what == "why":
        story = deps.service.lot_story(int(arg))
        await reply(update, fmt.lot_story_text(story, deps.label) if story is not None else f"There is no lot #{arg}.")
    else:
        preview = await deps.service.sell_preview(int(arg))
        if isinstance(preview, Refusal):
            await reply(update, manual.refused_text(preview))
        else:
            await manual.reply_with(update, *manual.sell_confirm(deps, user.id, preview))


@guarded("read")
async def account(update: Update, context: BotContext) -> None:
    deps = context.deps
    await reply(update, fmt.account_text(await deps.service.account(), deps.label))


@guarded("read")
async def trades(update: Update, context: BotContext) -> None:
    deps = context.deps
    n = _count(context.args or [], 10, MAX_TRADES)
    if isinstance(n, NotANumber):
        await reply(update, f"{fmt.e(n.why)}Usage: <code>/trades [N]</code> with N from 1 to {MAX_TRADES} "
                    "(default 10).")
        return
    await reply(update, fmt.trades_text(deps.service.trades(n), deps.label))


@guarded("read")
async def pnl(update: Update, context: BotContext) -> None:
    deps = context.deps
    view = await deps.service.pnl()
    text = fmt.pnl_text(view, deps.label)
    chat = update.effective_chat
    assert chat is not None
    if len(view.curve) < MIN_CHART_POINTS:
        more = "No realized P&amp;L yet" if not view.curve else f"Only {len(view.curve)} realized result" + (
            "" if len(view.curve) == 1 else "s")
        await reply(update, text + f"\n{more}, so no chart yet (it needs {MIN_CHART_POINTS}).")
        return
    png = await pnl_chart_png(view.curve)
    if len(text) <= 1024:
        await context.bot.send_photo(chat.id, InputFile(io.BytesIO(png), filename="pnl.png"), caption=text,
                                     parse_mode=ParseMode.HTML)
    else:
        await reply(update, text)
        await context.bot.send_photo(chat.id, InputFile(io.BytesIO(png), filename="pnl.png"))


@guarded("change")
async def set_(update: Update, context: BotContext) -> None:
    deps = context.deps
    args = context.args or []
    if len(args) < 2:
        await reply(update, "Usage: <code>/set KEY VALUE</code>, e.g. <code>/set delta 0.6</code> or "
                    "<code>/set entry_drop 1.5%</code>. /settings lists the keys.")
        return
    hint = typing_hint(deps.service.current_settings(), args[0], " ".join(args[1:]))
    if hint is not None:  # a slip people make: answered with the command to send, nothing stored
        await reply(update, f"❓ {fmt.e(hint)}\nNothing was changed.")
        return
    preview = deps.service.preview_setting(args[0], " ".join(args[1:]))
    if isinstance(preview, SettingChange) and preview.old != preview.new and raises_money_at_risk(preview):
        # the same confirm as the keyboard's, with the money it puts at risk and 🧪 Compare
        user = update.effective_user
        assert user is not None
        panel = Panel(deps, user.id, tokens_of(deps).new_panel(), await deps.service.net_liquidation())
        (text, markup), _ = confirm_screen(panel, preview.key, format_value(preview.key, preview.new))
        await manual.reply_with(update, text, markup)
        return
    result = await deps.service.set_setting(args[0], " ".join(args[1:]), who(update))
    if isinstance(result, SettingError):
        await reply(update, fmt.error_text(result))
        return
    if result.old == result.new:
        await reply(update, f"No change: {fmt.change_text(result)}")
        return
    await reply(update, f"✅ {fmt.change_text(result)}\nTakes effect at the next tick.")


@guarded("reduce")  # it only lowers the risk: it works when the session has expired (and is audited)
async def pause(update: Update, context: BotContext) -> None:
    """/pause [entries|all]: hold back new positions, or every automatic order (the default)."""
    args = [a.lower() for a in context.args or []]
    if len(args) > 1 or (args and args[0] not in ("entries", "all")):
        await reply(update, "Usage: <code>/pause</code> (everything, exits included) or <code>/pause entries</code> "
                    "(no new entries, rolls or recycling buys; exits keep running).")
        return
    mode = PauseMode.ENTRIES if args == ["entries"] else PauseMode.ALL
    await _set_pause(update, context, mode)


@guarded("change")
async def resume(update: Update, context: BotContext) -> None:
    await _set_pause(update, context, PauseMode.OFF)


async def _set_pause(update: Update, context: BotContext, mode: PauseMode) -> None:
    deps = context.deps
    result = await deps.service.set_paused(mode, who(update))
    if isinstance(result, SettingError):  # pragma: no cover - the modes always parse
        await reply(update, fmt.error_text(result))
        return
    if result.old == result.new:
        already = {PauseMode.OFF: "Already running.", PauseMode.ALL: "Already paused.",
                   PauseMode.ENTRIES: "Entries are already paused; exits keep running."}
        await reply(update, already[mode])
        return
    if mode:
        working = deps.service.working_order_lines()
        extra = ("\nAlready at the broker, still working (/cancel cancels them):\n"
                 + "\n".join(f"• {fmt.e(line)}" for line in working)) if working else ""
        await reply(update, f"⏸ {fmt.e(pause_text(mode))}, until /resume. Ticks still run and report what they "
                    f"would do.{extra}")
    else:
        await reply(update, "▶️ Resumed: automatic orders are on again from the next tick.")


@guarded("read")
async def check(update: Update, context: BotContext) -> None:
    deps = context.deps
    market_open = deps.service.market_open()
    try:
        report = await deps.service.check()
    except TimeoutError:
        await reply(update, "The check did not finish within a minute (the broker is slow); try again later.")
        return
    await reply(update, fmt.check_text(report, deps.label, market_open=market_open))


def _count(args: list[str], default: int, top: int) -> int | NotANumber:
    """An optional count argument within 1..top, or why it is not one: the text quoted, then the
    reason, as a sentence that the usage follows ("" when the usage alone says it)."""
    if not args:
        return default
    if len(args) > 1:
        return NotANumber("")
    return _quoted(args[0], read_whole(args[0], 1, top))


def _quoted(text: str, n: int | NotANumber) -> int | NotANumber:
    """A refusal as the start of a reply: "'²' is not a number: type it with the digits 0–9. " """
    return NotANumber(f"'{text}' {n.why}. ") if isinstance(n, NotANumber) else n


@guarded("read")
async def why(update: Update, context: BotContext) -> None:
    """/why: today's decisions and non-decisions; /why N: lot N's story."""
    deps = context.deps
    args = context.args or []
    if not args:
        await reply(update, fmt.journal_text(deps.service.journal_day(), deps.label))
        return
    lot_id = _quoted(args[0], read_whole(args[0], hash_ok=True)) if len(args) == 1 else NotANumber("")
    if isinstance(lot_id, NotANumber):
        await reply(update, f"{fmt.e(lot_id.why)}Usage: <code>/why</code> (today's decisions) or <code>/why N</code> "
                    "(lot N's story).")
        return
    story = deps.service.lot_story(lot_id)
    if story is None:
        await reply(update, f"There is no lot #{lot_id}. /positions lists the open ones.")
        return
    await reply(update, fmt.lot_story_text(story, deps.label))


async def _period(update: Update, context: BotContext, period: Period, default: int, top: int) -> None:
    deps = context.deps
    n = _count(context.args or [], default, top)
    if isinstance(n, NotANumber):
        await reply(update, f"{fmt.e(n.why)}Usage: <code>/{PERIOD_COMMANDS[period]} [N]</code> with N from 1 to {top} "
                    f"(default {default}).")
        return
    await reply(update, fmt.period_text(period, deps.service.period_pnl(period, n), deps.label))


PERIOD_COMMANDS: dict[Period, str] = {"day": "daily", "week": "weekly", "month": "monthly"}


@guarded("read")
async def daily(update: Update, context: BotContext) -> None:
    await _period(update, context, "day", 7, 62)


@guarded("read")
async def weekly(update: Update, context: BotContext) -> None:
    await _period(update, context, "week", 8, 52)


@guarded("read")
async def monthly(update: Update, context: BotContext) -> None:
    await _period(update, context, "month", 6, 36)


@guarded("read")
async def logs(update: Update, context: BotContext) -> None:
    """/logs [N]: the last N lines, short and in New York time; the whole recent log, as written, in a file."""
    n = _count(context.args or [], DEFAULT_LOG_LINES, MAX_LOG_LINES)
    if isinstance(n, NotANumber):
        await reply(update, f"{fmt.e(n.why)}Usage: <code>/logs [N]</code> with N from 1 to {MAX_LOG_LINES} "
                    f"(default {DEFAULT_LOG_LINES}).")
        return
    service = context.deps.service
    await reply(update, fmt.logs_text(service.recent_logs(n)))
    full = service.recent_logs(LOG_FILE_LINES)
    chat = update.effective_chat
    if full and chat is not None:
        data = ("\n".join(full) + "\n").encode()
        await context.bot.send_document(chat.id, InputFile(io.BytesIO(data), filename="qqq-bot-log.txt"),
                                        caption=f"The last {num.plural(len(full), 'log line')} in full "
                                        "(times in UTC, redacted)")


@guarded("read")
async def version(update: Update, context: BotContext) -> None:
    await reply(update, fmt.version_text(context.deps.service.version(), context.deps.label))


def guess_text(name: str) -> str | None:
    return guess.guess_text(name, [c.name for c in COMMANDS])


@guarded("admin")
async def unknown(update: Update, context: BotContext) -> None:
    message = update.effective_message
    typed = (message.text or "").split()[0] if message is not None and message.text else ""
    guess = guess_text(typed)
    if guess is not None:
        await reply(update, f"There is no {fmt.e(typed.split('@', 1)[0])}. {guess}")
        return
    await reply(update, "Unknown command. /help lists what I understand.")


# --- the command table ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """One chat command: its name, its handler and its line in the menu and in /help."""

    name: str
    handler: Handler
    help: str
    group: str = "admin"  # its line in /help: watch, trade, settings, lab, admin


COMMANDS: tuple[Command, ...] = (
    Command("start", start, "enroll your authenticator (first time) and see this help", group="admin"),
    Command("help", help_, "the commands", group="admin"),
    Command("login", login, "/login CODE: open a session with your authenticator code", group="admin"),
    Command("logout", logout, "end your session", group="admin"),
    Command("status", status, "connection, mode, market, QQQ, next tick, last decision", group="watch"),
    Command("positions", positions, "the bot's lots and every other holding", group="watch"),
    Command("account", account, "net liquidation, cash, buying power, QQQM core, recycling pool", group="watch"),
    Command("trades", trades, "/trades [N]: the last N fills (default 10)", group="watch"),
    Command("pnl", pnl, "realized and unrealized P&L, with a chart", group="watch"),
    Command("settings", settings_command, "view and edit the strategy settings", group="settings"),
    Command("set", set_, "/set KEY VALUE, e.g. /set delta 0.6 (needs a session)", group="settings"),
    Command("pause", pause, "/pause [entries]: hold back every automatic order, or only new positions",
            group="trade"),
    Command("resume", resume, "resume automatic orders (needs a session)", group="trade"),
    Command("check", check, "evaluate a tick now and show what it would do, without trading", group="lab"),
    Command("why", why, "/why: today's decisions and why not; /why N: lot N's story", group="watch"),
    Command("daily", daily, "/daily [N]: realized P&L of the last N days", group="watch"),
    Command("weekly", weekly, "/weekly [N]: realized P&L of the last N weeks", group="watch"),
    Command("monthly", monthly, "/monthly [N]: realized P&L of the last N months", group="watch"),
    Command("orders", manual.orders_command, "working orders, with a Cancel button each", group="watch"),
    Command("sell", manual.sell_command, "/sell N: sell lot N now (needs a session; asks to confirm)",
            group="trade"),
    Command("enter", manual.enter_command, "buy a new lot now, without waiting for a dip (confirm)",
            group="trade"),
    Command("cancel", manual.cancel_command, "/cancel ID or /cancel all: cancel working orders (confirm)",
            group="trade"),
    Command("stop", manual.stop_command, "emergency: pause everything and cancel every order (confirm)",
            group="trade"),
    Command("backtest", backtest_command, "/backtest [YEARS] [KEY=VALUE ...]: what the settings, or a change, "
            "would have done (needs a session)", group="lab"),
    Command("logs", logs, "/logs [N]: the last N log lines (redacted)", group="admin"),
    Command("version", version, "the bot's version", group="admin"),
)


def help_lines() -> Iterator[tuple[str, str]]:
    """(name, description) of every command, in menu order."""
    return ((c.name, c.help) for c in COMMANDS)


HELP_GROUPS: tuple[tuple[str, str], ...] = (("watch", "👀 Watch"), ("trade", "🖐 Trade"), ("settings", "⚙️ Settings"),
                                           ("lab", "🧪 Lab"), ("admin", "🔐 Admin"))


def help_groups() -> list[tuple[str, list[str]]]:
    """/help's lines: each group's title and its commands as typed ("sell N")."""
    return [(title, [c.name for c in COMMANDS if c.group == group]) for group, title in HELP_GROUPS]
