"""Who may talk to the bot. Only user ids in ADMIN_USER_IDS get an answer (never a chat id: in a
group every member shares it); others get nothing, and admins hear about them once per user per
day. Data is only shown in private chats. Changing commands also need an open /login session."""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from telegram import Update
from telegram.constants import ParseMode

from bot.engine.alerts import EventKind
from handlers.context import BotContext, Deps
from storage import auth, kv

log = logging.getLogger(__name__)

Need = Literal["admin", "read", "reduce", "change"]
"""admin/read: a whitelisted user; reduce: the same, for what only lowers the risk (/pause, /stop),
which must work when a session has expired (it is audited like any change); change: an open session."""
AFTER_LOGIN_TTL = timedelta(minutes=5)  # a command refused for want of a session runs after /login within this
Handler = Callable[[Update, BotContext], Coroutine[Any, Any, None]]


def who(update: Update) -> str:
    """The actor of an action for the audit trail and the alerts: ``telegram:1001 (Ann Lee, @ann)``
    (alerts show the person's name, ``bot.alert_view.person``)."""
    user = update.effective_user
    if user is None:
        return "unknown"
    name = " ".join(user.full_name.replace("(", " ").replace(")", " ").replace(",", " ").split())[:40]
    parts = [p for p in (name, f"@{user.username}" if user.username else "") if p]
    return f"telegram:{user.id}" + (f" ({', '.join(parts)})" if parts else "")


def note_unauthorized(deps: Deps, update: Update) -> None:
    """Log every unauthorized update; alert admins once per user per day."""
    user = update.effective_user
    uid = user.id if user is not None else 0
    chat = update.effective_chat
    log.warning("ignored an update from non-admin user %s in chat %s", uid, chat.id if chat else "?")
    now = deps.now()
    try:
        if kv.put_once(f"unauthorized:{uid}:{now.date().isoformat()}", "1", now):
            name = f" (@{user.username})" if user is not None and user.username else ""
            deps.alert(EventKind.UNAUTHORIZED, f"Ignored messages from user {uid}{name}, who is not an admin "
                       "(further ones today are not reported)")
    except Exception:
        log.exception("could not record an unauthorized access")


@dataclass(frozen=True, slots=True)
class AfterLogin:
    """A command refused for want of a session, to run once the admin has logged in."""

    command: str
    args: tuple[str, ...]
    until: datetime

    @property
    def text(self) -> str:
        return " ".join([f"/{self.command}", *self.args])


def remember_for_login(update: Update, context: BotContext, deps: Deps) -> str:
    """Keep the refused command (its name and arguments) for /login; returns it as typed."""
    message = update.effective_message
    if message is None or not message.text or not message.text.startswith("/") or context.user_data is None:
        return ""
    name = message.text.split()[0][1:].split("@", 1)[0].lower()
    pending = AfterLogin(name, tuple(context.args or ()), deps.now() + AFTER_LOGIN_TTL)
    context.user_data["after_login"] = pending
    return pending.text


def pending_after_login(context: BotContext, now: datetime) -> AfterLogin | None:
    """The command to run now that a session is open (taken: it runs once)."""
    data = context.user_data
    pending = data.pop("after_login", None) if data is not None else None
    return pending if isinstance(pending, AfterLogin) and now <= pending.until else None


def guarded(need: Need) -> Callable[[Handler], Handler]:
    """The access check every handler goes through before it does anything."""

    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def handler(update: Update, context: BotContext) -> None:
            deps = context.deps
            user, chat = update.effective_user, update.effective_chat
            if user is None or user.id not in deps.admins:
                note_unauthorized(deps, update)
                if update.callback_query is not None:
                    await update.callback_query.answer()
                return
            if chat is None or chat.type != "private":
                if update.effective_message is not None and update.callback_query is None:
                    await update.effective_message.reply_text("I only talk in a private chat with an admin.")
                return
            if need == "reduce" and auth.enrollment_status(user.id) != "active":
                if update.effective_message is not None and update.callback_query is None:
                    await update.effective_message.reply_text("Send /start first: it sets up your authenticator.")
                return
            if need == "change" and not auth.has_session(user.id, deps.now()):
                text = "This changes something: open a session first with /login CODE (your authenticator code)."
                if update.callback_query is not None:
                    await update.callback_query.answer(text, show_alert=True)
                elif update.effective_message is not None:
                    typed = remember_for_login(update, context, deps)
                    if typed:
                        text += (f"\nThen I will do it: <code>{html.escape(typed)}</code> (if you log in within "
                                 f"{int(AFTER_LOGIN_TTL.total_seconds() // 60)} minutes; nothing to retype).")
                    await update.effective_message.reply_text(text, parse_mode=ParseMode.HTML)
                return
            await fn(update, context)

        return handler

    return wrap
