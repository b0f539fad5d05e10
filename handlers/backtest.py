"""`/backtest [YEARS] [KEY=VALUE ...]` and the 🧪 Compare button of a pending settings change: the
current settings, and the same with the change, backtested side by side; a short table, then the
equity curves as a photo. It costs CPU, so it needs an open session; one runs at a time."""

from __future__ import annotations

import io
import logging

from telegram import InputFile, Message, Update
from telegram.constants import ParseMode
from telegram.error import BadRequest

from bot.control.manual import Refusal
from bot.lab.chat_backtest import Request, parse_request
from handlers import format as fmt
from handlers.auth import guarded, who
from handlers.context import BotContext, Deps
from strategy.settings import SettingError, resolve_key

log = logging.getLogger(__name__)


@guarded("change")
async def backtest_command(update: Update, context: BotContext) -> None:
    deps = context.deps
    request = parse_request(deps.service.current_settings(), assignments(context.args or []))
    message = update.effective_message
    assert message is not None
    if isinstance(request, SettingError):
        await message.reply_text(fmt.error_text(request), parse_mode=ParseMode.HTML)
        return
    await run_and_reply(update, context, request)


def assignments(args: list[str]) -> list[str]:
    """``/backtest delta 0.7`` as ``/backtest delta=0.7``: /set's ``KEY VALUE`` is taken too."""
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if "=" not in word and resolve_key(word) is not None and i + 1 < len(args) and "=" not in args[i + 1]:
            out.append(f"{word}={args[i + 1]}")
            i += 2
            continue
        out.append(word)
        i += 1
    return out


async def run_and_reply(update: Update, context: BotContext, request: Request) -> None:
    """Say it started (one message, edited with the answer), run it, send the chart."""
    deps = context.deps
    chat = update.effective_chat
    assert chat is not None
    busy = deps.service.backtest_busy()
    if busy is not None:
        await context.bot.send_message(chat.id, f"⏳ {fmt.e(busy[0].upper() + busy[1:])}.")
        return
    what = f"up to {request.years} year{'s' if request.years > 1 else ''} of QQQ (as far back as the data goes)"
    started = await context.bot.send_message(
        chat.id, f"⏳ Backtesting {fmt.e(what)}: "
        + ("the current settings and the change, side by side" if request.compares else "the current settings")
        + "… (this takes a few seconds)", parse_mode=ParseMode.HTML)
    result = await deps.service.backtest(request, who(update))
    if isinstance(result, Refusal):
        await _edit(started, f"❌ {fmt.e(result.text[0].upper() + result.text[1:])}.")
        return
    await _edit(started, fmt.comparison_text(result, deps.label))
    await context.bot.send_photo(chat.id, InputFile(io.BytesIO(result.png), filename="backtest.png"),
                                 caption=f"Equity, {fmt.e(result.start)} → {fmt.e(result.end)}")


async def _edit(message: Message, text: str) -> None:
    try:
        await message.edit_text(fmt.split_message(text)[0], parse_mode=ParseMode.HTML)
    except BadRequest as e:
        if "not modified" not in str(e).lower():
            raise


def compare_request(deps: Deps, key: str, value: str) -> Request | SettingError:
    """The comparison a 🧪 Compare button asks for: the pending change over the default years."""
    return parse_request(deps.service.current_settings(), [f"{key}={value}"])
