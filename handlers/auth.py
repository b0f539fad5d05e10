"""Who may talk to the bot. Only user ids in ADMIN_USER_IDS get an answer (never a chat id: in a
group every member shares it); others get nothing, and admins hear about them once per user per
day. Data is only shown in private chats. Changing commands also need an open /login session."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from telegram import Update

from bot.alerts import EventKind
from handlers.context import BotContext, Deps
from storage import auth, kv

log = logging.getLogger(__name__)

Need = Literal["admin", "read", "change"]
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
            if need == "change" and not auth.has_session(user.id, deps.now()):
                text = "This changes something: open a session first with /login CODE (your authenticator code)."
                if update.callback_query is not None:
                    await update.callback_query.answer(text, show_alert=True)
                elif update.effective_message is not None:
                    await update.effective_message.reply_text(text)
                return
            await fn(update, context)

        return handler

    return wrap
