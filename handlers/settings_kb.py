"""The inline-keyboard settings editor: /settings → a button per setting → presets or "type a
value" → old → new, confirm → stored through the same parser and validation as /set.

Every button carries only an opaque token (``s:`` + 11 characters, far under Telegram's 64-byte
limit) issued for one user and valid for ``BUTTON_TTL``; a forged, expired, restarted-away or
someone else's token is refused and changes nothing. A confirm also refuses when the setting
changed since the button was drawn."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ParseMode
from telegram.error import BadRequest

from bot.alerts import EventKind
from handlers import format as fmt
from handlers.auth import guarded, who
from handlers.context import BotContext, Deps
from storage import auth, outbox
from strategy.settings import (
    GROUPS,
    SETTING_SPECS,
    SettingError,
    format_value,
    parse_setting,
    range_text,
    resolve_key,
)

log = logging.getLogger(__name__)
BUTTON_TTL = timedelta(minutes=10)
TYPE_TTL = timedelta(minutes=5)
PREFIX = "s:"
MAX_TOKENS = 5000


@dataclass(frozen=True, slots=True)
class Button:
    user_id: int
    action: str
    key: str
    value: str
    created_at: datetime
    old: str = ""


class ButtonTokens:
    """Tokens behind inline buttons, kept in memory: a restart makes every old button stale."""

    def __init__(self, ttl: timedelta = BUTTON_TTL) -> None:
        self.ttl = ttl
        self._tokens: dict[str, Button] = {}

    def issue(self, user_id: int, action: str, now: datetime, key: str = "", value: str = "", old: str = "") -> str:
        if len(self._tokens) >= MAX_TOKENS:
            self._expire(now)
            while len(self._tokens) >= MAX_TOKENS:
                self._tokens.pop(next(iter(self._tokens)))
        token = secrets.token_urlsafe(8)
        self._tokens[token] = Button(user_id, action, key, value, now, old)
        data = PREFIX + token
        assert len(data.encode()) <= 64
        return data

    def resolve(self, data: str, user_id: int, now: datetime) -> Button | str:
        """The button behind ``data``, or why it is refused."""
        if not data.startswith(PREFIX):
            return "This button is not valid."
        button = self._tokens.get(data[len(PREFIX):])
        if button is None:
            return "This button is no longer valid; send /settings again."
        if button.user_id != user_id:
            return "This button belongs to another admin."
        if now - button.created_at > self.ttl:
            self._tokens.pop(data[len(PREFIX):], None)
            return "This button has expired; send /settings again."
        return button

    def _expire(self, now: datetime) -> None:
        for token, b in list(self._tokens.items()):
            if now - b.created_at > self.ttl:
                del self._tokens[token]


def tokens_of(deps: Deps) -> ButtonTokens:
    t = deps.extra.get("buttons")
    if not isinstance(t, ButtonTokens):
        t = ButtonTokens()
        deps.extra["buttons"] = t
    return t


# --- screens ---------------------------------------------------------------------------------------


def _btn(deps: Deps, uid: int, text: str, action: str, key: str = "", value: str = "",
         old: str = "") -> InlineKeyboardButton:
    return InlineKeyboardButton(text, callback_data=tokens_of(deps).issue(uid, action, deps.now(), key, value, old))


def main_screen(deps: Deps, uid: int) -> tuple[str, InlineKeyboardMarkup]:
    s = deps.service.current_settings()
    rows: list[list[InlineKeyboardButton]] = []
    for group in GROUPS:
        keys = [spec.key for spec in SETTING_SPECS.values() if spec.group == group]
        for i in range(0, len(keys), 2):
            rows.append([_btn(deps, uid, f"{k} = {format_value(k, getattr(s, k))}", "edit", k) for k in keys[i:i + 2]])
    rows.append([_btn(deps, uid, "🔔 Alerts", "alerts"), _btn(deps, uid, "✖ Close", "close")])
    return fmt.settings_text(s, deps.label) + "\n\nTap a setting to change it.", InlineKeyboardMarkup(rows)


def edit_screen(deps: Deps, uid: int, key: str) -> tuple[str, InlineKeyboardMarkup]:
    spec = SETTING_SPECS[key]
    current = format_value(key, getattr(deps.service.current_settings(), key))
    text = (f"<b>{fmt.e(key)}</b>: {fmt.e(spec.help)}\n"
            f"Current: <code>{fmt.e(current)}</code> {fmt.e(spec.unit)}\n"
            f"Valid: {fmt.e(range_text(key))}")
    presets = [_btn(deps, uid, p, "preset", key, p) for p in spec.presets if p != current]
    rows = [presets[i:i + 4] for i in range(0, len(presets), 4)]
    rows.append([_btn(deps, uid, "✏️ Type a value", "type", key)])
    rows.append([_btn(deps, uid, "« Back", "menu")])
    return text, InlineKeyboardMarkup(rows)


def confirm_screen(deps: Deps, uid: int, key: str, value: str) -> tuple[str, InlineKeyboardMarkup, bool]:
    """old → new with Confirm/Cancel (valid: True), or the parser's error with a way back (False)."""
    change = parse_setting(deps.service.current_settings(), key, value)
    if isinstance(change, SettingError):
        return fmt.error_text(change), InlineKeyboardMarkup([[_btn(deps, uid, "« Back", "edit", key)]]), False
    canonical = format_value(change.key, change.new)
    text = f"Change {fmt.change_text(change)}?"
    old = format_value(change.key, change.old)
    return text, InlineKeyboardMarkup([[_btn(deps, uid, "✅ Confirm", "confirm", change.key, canonical, old),
                                        _btn(deps, uid, "✖ Cancel", "edit", change.key)]]), True


def alerts_screen(deps: Deps, uid: int) -> tuple[str, InlineKeyboardMarkup]:
    kinds = list(EventKind)
    levels = {k: outbox.alert_level(k.value) for k in kinds}
    icon = {"on": "🔔", "silent": "🔕", "off": "🚫"}
    rows = [[_btn(deps, uid, f"{icon[levels[k]]} {k.value}", "alert", k.value) for k in kinds[i:i + 2]]
            for i in range(0, len(kinds), 2)]
    rows.append([_btn(deps, uid, "« Back", "menu")])
    text = ("<b>Alerts</b>\n🔔 on · 🔕 silent (no sound) · 🚫 off\nTap an event to change how it reaches you.")
    return text, InlineKeyboardMarkup(rows)


def alert_screen(deps: Deps, uid: int, kind: str) -> tuple[str, InlineKeyboardMarkup]:
    level = outbox.alert_level(kind)
    text = f"<b>{fmt.e(kind)}</b> alerts are <b>{fmt.e(level)}</b>."
    row = [_btn(deps, uid, lv, "level", kind, lv) for lv in outbox.LEVELS if lv != level]
    return text, InlineKeyboardMarkup([row, [_btn(deps, uid, "« Back", "alerts")]])


# --- handlers ---------------------------------------------------------------------------------------


@guarded("read")
async def settings_command(update: Update, context: BotContext) -> None:
    deps = context.deps
    user, message = update.effective_user, update.effective_message
    assert user is not None and message is not None
    text, markup = main_screen(deps, user.id)
    await message.reply_text(text, parse_mode=ParseMode.HTML, reply_markup=markup)


async def _show(update: Update, text: str, markup: InlineKeyboardMarkup | None) -> None:
    query = update.callback_query
    assert query is not None
    try:
        await query.edit_message_text(text, parse_mode=ParseMode.HTML, reply_markup=markup)
    except BadRequest as e:
        if "not modified" not in str(e).lower():
            raise


@guarded("read")
async def settings_callback(update: Update, context: BotContext) -> None:
    deps = context.deps
    query, user = update.callback_query, update.effective_user
    assert query is not None and user is not None
    button = tokens_of(deps).resolve(query.data or "", user.id, deps.now())
    if isinstance(button, str):
        log.info("refused a settings button from %s: %s", user.id, button)
        await query.answer(button, show_alert=True)
        return
    needs_session = button.action in ("confirm", "level")
    if needs_session and not auth.has_session(user.id, deps.now()):
        await query.answer("This changes something: open a session first with /login CODE.", show_alert=True)
        return
    await query.answer()
    uid = user.id
    if button.action == "menu":
        await _show(update, *main_screen(deps, uid))
    elif button.action == "edit":
        await _show(update, *edit_screen(deps, uid, button.key))
    elif button.action == "preset":
        text, markup, _ = confirm_screen(deps, uid, button.key, button.value)
        await _show(update, text, markup)
    elif button.action == "type":
        context.user_data["awaiting"] = (button.key, deps.now() + TYPE_TTL)  # type: ignore[index]
        await _show(update, f"Send the new value for <b>{fmt.e(button.key)}</b> "
                    f"({fmt.e(range_text(button.key))}).", None)
    elif button.action == "confirm":
        await _confirm(update, deps, button)
    elif button.action == "alerts":
        await _show(update, *alerts_screen(deps, uid))
    elif button.action == "alert":
        await _show(update, *alert_screen(deps, uid, button.key))
    elif button.action == "level":
        outbox.set_alert_level(button.key, button.value, who(update), deps.now())  # type: ignore[arg-type]
        await _show(update, *alerts_screen(deps, uid))
    elif button.action == "close":
        await _show(update, "Settings closed.", None)


async def _confirm(update: Update, deps: Deps, button: Button) -> None:
    now_value = format_value(button.key, getattr(deps.service.current_settings(), button.key))
    if now_value != button.old:
        await _show(update, f"Not changed: <b>{fmt.e(button.key)}</b> is now <code>{fmt.e(now_value)}</code>, "
                    f"not <code>{fmt.e(button.old)}</code> as when you opened this. Send /settings again.", None)
        return
    result = deps.service.set_setting(button.key, button.value, who(update))
    if isinstance(result, SettingError):
        await _show(update, fmt.error_text(result), None)
        return
    back = InlineKeyboardMarkup([[_btn(deps, button.user_id, "« Settings", "menu")]])
    if result.old == result.new:
        await _show(update, f"No change: {fmt.change_text(result)}", back)
        return
    await _show(update, f"✅ Saved: {fmt.change_text(result)}\nTakes effect at the next tick.", back)


@guarded("read")
async def typed_value(update: Update, context: BotContext) -> None:
    """A plain message: the value an admin was asked to type, or a hint."""
    deps = context.deps
    user, message = update.effective_user, update.effective_message
    assert user is not None and message is not None
    awaiting = (context.user_data or {}).get("awaiting")
    if not awaiting or awaiting[1] < deps.now():
        (context.user_data or {}).pop("awaiting", None)
        await message.reply_text("Send a command; /help lists them.")
        return
    key = resolve_key(awaiting[0]) or awaiting[0]
    text, markup, valid = confirm_screen(deps, user.id, key, message.text or "")
    if valid:
        (context.user_data or {}).pop("awaiting", None)  # the next message is not a value any more
    await message.reply_text(text, parse_mode=ParseMode.HTML, reply_markup=markup)
