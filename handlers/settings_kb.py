"""The inline-keyboard settings editor.

/settings → a menu of groups (📈 Entry, 🎯 Exits, 🔄 Roll, ♻️ Recycling, 🧾 Orders, 🔔 Alerts,
⏸ Pause) → a group's settings, one button each ("Entry drop: 1 %") → presets or "✏️ Type a
value" → old → new with ✅ Confirm → stored through the same parser and validation as /set.
🔔 Alerts → groups of event kinds → one kind → on, silent or off (audited).

Every button carries only an opaque token (``s:`` + 11 characters, far under Telegram's 64-byte
limit) issued for one user and one message (a *panel*) and valid for ``BUTTON_TTL``; a forged,
expired, restarted-away or someone else's token is refused and changes nothing. Every tap redraws
its message, and all the buttons the message showed die *before* the tap does anything: a double
tap on Confirm applies once, and after ✖ Close or a completed confirm every old button of that
message answers that it has expired. A confirm also needs an open session and refuses when the
setting changed since the button was drawn.

A typed value is awaited in ``user_data`` (the setting, the prompt's panel, a deadline on the bot's
clock) and read by the catch-all message handler; tapping any button of the prompt, or the prompt's
panel dying, ends the wait."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ParseMode
from telegram.error import BadRequest

from bot.engine.alerts import EventKind
from handlers import format as fmt
from handlers.auth import guarded, who
from handlers.backtest import compare_request, run_and_reply
from handlers.context import BotContext, Deps
from handlers.guess import plain_text_hint
from storage import auth, outbox
from strategy import number_style as num
from strategy.exposure import raises_money_at_risk
from strategy.settings import (
    GROUP_HELP,
    GROUP_TITLES,
    GROUPS,
    SETTING_SPECS,
    SettingChange,
    SettingError,
    display_value,
    format_value,
    group_keys,
    parse_setting,
    unit_text,
    valid_text,
)

log = logging.getLogger(__name__)
BUTTON_TTL = timedelta(minutes=10)
TYPE_TTL = timedelta(minutes=5)
PREFIX = "s:"
MAX_TOKENS = 5000
EXPIRED = "This button has expired; send /settings again."
CHANGES = frozenset({"confirm", "level", "compare"})  # the actions that need an open session (compare costs CPU)
ROW_CHARS = 28  # buttons share a row while their texts fit a phone's width


@dataclass(frozen=True, slots=True)
class Button:
    user_id: int
    panel: str
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
        self._panels: dict[str, set[str]] = {}

    @staticmethod
    def new_panel() -> str:
        return secrets.token_urlsafe(6)

    def issue(self, user_id: int, panel: str, action: str, now: datetime, key: str = "", value: str = "",
              old: str = "") -> str:
        if len(self._tokens) >= MAX_TOKENS:
            self._expire(now)
            while len(self._tokens) >= MAX_TOKENS:
                self._drop(next(iter(self._tokens)))
        token = secrets.token_urlsafe(8)
        self._tokens[token] = Button(user_id, panel, action, key, value, now, old)
        self._panels.setdefault(panel, set()).add(token)
        data = PREFIX + token
        assert len(data.encode()) <= 64
        return data

    def resolve(self, data: str, user_id: int, now: datetime) -> Button | str:
        """The button behind ``data``, or why it is refused."""
        if not data.startswith(PREFIX):
            return "This button is not valid."
        token = data[len(PREFIX):]
        button = self._tokens.get(token)
        if button is None:
            return EXPIRED
        if button.user_id != user_id:
            return "This button belongs to another admin."
        if now - button.created_at > self.ttl:
            self._drop(token)
            return EXPIRED
        return button

    def revoke_panel(self, panel: str) -> None:
        """Every button drawn on one message stops working."""
        for token in self._panels.pop(panel, set()):
            self._tokens.pop(token, None)

    def is_live(self, panel: str, now: datetime) -> bool:
        return any(now - self._tokens[t].created_at <= self.ttl for t in self._panels.get(panel, ()))

    def _drop(self, token: str) -> None:
        button = self._tokens.pop(token, None)
        if button is not None:
            tokens = self._panels.get(button.panel, set())
            tokens.discard(token)
            if not tokens:
                self._panels.pop(button.panel, None)

    def _expire(self, now: datetime) -> None:
        for token, b in list(self._tokens.items()):
            if now - b.created_at > self.ttl:
                self._drop(token)


def tokens_of(deps: Deps) -> ButtonTokens:
    t = deps.extra.get("buttons")
    if not isinstance(t, ButtonTokens):
        t = ButtonTokens()
        deps.extra["buttons"] = t
    return t


# --- screens ---------------------------------------------------------------------------------------

Screen = tuple[str, InlineKeyboardMarkup | None]
GROUP_ICONS = {"entry": "📈", "exits": "🎯", "roll": "🔄", "recycling": "♻️", "orders": "🧾"}
LEVEL_ICONS = {"on": "🔔", "silent": "🔕", "off": "🚫"}
LEVEL_WORDS = {"on": "on (with sound)", "silent": "silent (no sound)", "off": "off (not sent)"}
PAUSE_PRESETS = {"off": "▶️ Off: run", "entries": "⏸ Entries only", "all": "⏸ Everything"}


@dataclass(frozen=True, slots=True)
class Panel:
    """One settings message for one admin: the buttons drawn on it share its id and die together."""

    deps: Deps
    uid: int
    id: str
    net_liquidation: Decimal | None = None  # for the money a change puts at risk (asked before drawing)

    def button(self, text: str, action: str, key: str = "", value: str = "", old: str = "") -> InlineKeyboardButton:
        data = tokens_of(self.deps).issue(self.uid, self.id, action, self.deps.now(), key, value, old)
        return InlineKeyboardButton(text, callback_data=data)


def _rows(buttons: Sequence[InlineKeyboardButton], per_row: int = 4,
          width: int = ROW_CHARS) -> list[list[InlineKeyboardButton]]:
    """Buttons packed into rows a phone shows without cutting their text."""
    rows: list[list[InlineKeyboardButton]] = []
    for b in buttons:
        if rows and len(rows[-1]) < per_row and sum(len(x.text) for x in rows[-1]) + len(b.text) <= width:
            rows[-1].append(b)
        else:
            rows.append([b])
    return rows


def _markup(rows: list[list[InlineKeyboardButton]]) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(rows)


def menu_screen(p: Panel) -> Screen:
    s = p.deps.service.current_settings()
    groups = [p.button(f"{GROUP_ICONS[g]} {GROUP_TITLES[g]}", "group", g) for g in GROUPS]
    groups.append(p.button("🔔 Alerts", "alerts"))
    rows = _rows(groups, per_row=2)
    rows.append([p.button(f"⏸ Pause: {format_value('paused', s.paused)}", "edit", "paused"),
                 p.button("✖ Close", "close")])
    text = (f"<b>Settings</b> {fmt.e(p.deps.label)}".rstrip() + f"\nAutomatic orders: {fmt.pause_line(s.paused)}\n"
            "Tap a group to see its settings and change one.")
    return text, _markup(rows)


def group_screen(p: Panel, group: str) -> Screen:
    s = p.deps.service.current_settings()
    lines = [f"<b>{GROUP_ICONS[group]} {fmt.e(GROUP_TITLES[group])}</b>: {fmt.e(GROUP_HELP[group])}"]
    if group == "roll":
        lines.append(f"A roll needs every lot taken (Max lots: {fmt.value_html('max_positions', s.max_positions)}, "
                     "in Entry).")
    lines.append("Tap a setting to change it.")
    rows = [[p.button(f"{SETTING_SPECS[k].label}: {display_value(k, getattr(s, k))}", "edit", k)]
            for k in group_keys(group)]
    rows.append([p.button("« Settings", "menu")])
    return "\n".join(lines), _markup(rows)


def _back_to_group(p: Panel, key: str) -> InlineKeyboardButton:
    group = SETTING_SPECS[key].group
    if group in GROUPS:
        return p.button(f"« {GROUP_TITLES[group]}", "group", group)
    return p.button("« Settings", "menu")


def _preset_text(key: str, preset: str) -> str:
    if key == "paused":
        return PAUSE_PRESETS.get(preset, preset)
    if SETTING_SPECS[key].kind in ("decimal", "int"):
        value = Decimal(preset)
        unit = unit_text(key, value)
        shown = f"{value:,f}" if unit == "USD" else preset  # 5,000 USD, as amounts are shown
        return f"{shown} {unit}" if unit else preset
    return num.restyle(preset)  # "10 %"


def _typing_example(key: str) -> str:
    spec = SETTING_SPECS[key]
    example = next((x for x in spec.presets if "." in x), spec.presets[0])
    if spec.kind == "decimal" and "." in example:
        return f"{example} or {example.replace('.', ',')}"
    return example


def edit_screen(p: Panel, key: str) -> Screen:
    spec = SETTING_SPECS[key]
    settings = p.deps.service.current_settings()
    current = getattr(settings, key)
    typed_key = spec.aliases[0] if spec.aliases else key
    text = (f"<b>{fmt.e(spec.label)}</b>: {fmt.e(spec.help)}.\n"
            f"Now: {fmt.value_html(key, current)}\n"
            f"Valid: {fmt.e(valid_text(settings, key))}\n"
            f"<i>The same from the chat: /set {fmt.e(typed_key)} VALUE</i>")
    presets = [p.button(_preset_text(key, x), "preset", key, x) for x in spec.presets
               if x != format_value(key, current)]
    rows = _rows(presets, per_row=1 if spec.kind == "tiers" else 4)
    rows.append([p.button("✏️ Type a value", "type", key)])
    rows.append([_back_to_group(p, key)])
    return text, _markup(rows)


def type_screen(p: Panel, key: str) -> Screen:
    spec = SETTING_SPECS[key]
    valid = valid_text(p.deps.service.current_settings(), key)
    example = "" if "e.g." in valid else f", e.g. <code>{fmt.e(_typing_example(key))}</code>"
    text = f"Send the new value for <b>{fmt.e(spec.label)}</b> ({fmt.e(valid)}){example}."
    return text, _markup([[p.button("« Back", "edit", key)]])


def confirm_screen(p: Panel, key: str, value_text: str) -> tuple[Screen, bool]:
    """The one place a change is offered for confirmation (presets and typed values alike):
    old → new with Confirm/Cancel, or why the value is refused with a way back. The bool says
    whether the value was understood (True also when it is the current value)."""
    change = parse_setting(p.deps.service.current_settings(), key, value_text)
    if isinstance(change, SettingError):
        return (fmt.error_text(change), _markup([[p.button("« Back", "edit", key)]])), False
    if change.old == change.new:
        text = f"No change: {fmt.change_text(change)}"
        return (text, _markup([[p.button("« Back", "edit", change.key)]])), True
    return (change_ask_text(p.deps, change, p.net_liquidation), _markup(_confirm_rows(p, change))), True


def change_ask_text(deps: Deps, change: SettingChange, net_liquidation: Decimal | None) -> str:
    """ "Change Position size: 1 contract → 10 % of net liquidation?", with the money it puts at risk
    when it raises it."""
    text = f"Change {fmt.change_text(change)}?"
    if raises_money_at_risk(change):
        old, new = deps.service.exposures(change, net_liquidation)
        text += "\n" + "\n".join(fmt.exposure_lines(old, new))
        if change.key in RISK_NOTES:
            text += f"\n<i>{fmt.e(RISK_NOTES[change.key])}</i>"
    return text


RISK_NOTES = {
    "target_delta": "A higher delta buys a deeper call, which costs more.",
    "delta_tolerance": "A wider range accepts calls further from the target delta.",
    "max_spread_pct": "Wider spreads accepted: entries may pay further from the fair price.",
    "max_slippage_pct": "Orders may fill further from the mid.",
}


def _confirm_rows(p: Panel, change: SettingChange) -> list[list[InlineKeyboardButton]]:
    """The confirm screen's buttons. The confirm carries the value as it will be stored and the old
    value it replaces; 🧪 Compare backtests the change beside the current settings, and leaves it
    pending."""
    new, old = format_value(change.key, change.new), format_value(change.key, change.old)
    return [[p.button("✅ Confirm", "confirm", change.key, new, old), p.button("✖ Cancel", "edit", change.key)],
            [p.button("🧪 Compare", "compare", change.key, new, old)]]


def _level_summary(kinds: Sequence[EventKind]) -> str:
    levels = [outbox.alert_level(k.value) for k in kinds]
    if len(set(levels)) == 1:
        return f"all {levels[0]}"
    return " ".join(f"{LEVEL_ICONS[lv]}{levels.count(lv)}" for lv in outbox.LEVELS if lv in levels)


def alerts_screen(p: Panel) -> Screen:
    text = ("<b>🔔 Alerts</b>\n🔔 on · 🔕 silent (no sound) · 🚫 off\n"
            "Tap a group to choose how each of its events reaches you.")
    rows = [[p.button(f"{title}: {_level_summary(kinds)}", "alert_group", str(i))]
            for i, (title, kinds) in enumerate(fmt.alert_groups())]
    rows.append([p.button("« Settings", "menu")])
    return text, _markup(rows)


def alert_group_screen(p: Panel, index: int) -> Screen:
    title, kinds = fmt.alert_groups()[index]
    text = f"<b>{fmt.e(title)} alerts</b>\n🔔 on · 🔕 silent (no sound) · 🚫 off\nTap an event to change it."
    rows = [[p.button(f"{LEVEL_ICONS[outbox.alert_level(k.value)]} {fmt.alert_label(k)}", "alert", k.value)]
            for k in kinds]
    rows.append([p.button("« Alerts", "alerts")])
    return text, _markup(rows)


def _group_of_kind(kind: str) -> int:
    return next((i for i, (_, kinds) in enumerate(fmt.alert_groups()) if kind in kinds), 0)


def alert_screen(p: Panel, kind: str) -> Screen:
    level = outbox.alert_level(kind)
    text = f"<b>{fmt.e(fmt.alert_label(kind))}</b> alerts are {fmt.e(LEVEL_WORDS[level])}."
    choices = [p.button(f"{LEVEL_ICONS[lv]} {lv.capitalize()}", "level", kind, lv) for lv in outbox.LEVELS
               if lv != level]
    title, _ = fmt.alert_groups()[_group_of_kind(kind)]
    return text, _markup([choices, [p.button(f"« {title}", "alert_group", str(_group_of_kind(kind)))]])


# --- what a tap does -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Awaiting:
    """A value the admin was asked to type: for which setting, from which prompt, until when."""

    key: str
    panel: str
    until: datetime


def _user_data(context: BotContext) -> dict[Any, Any]:
    data = context.user_data
    return data if data is not None else {}


async def _act(p: Panel, button: Button, user: str) -> Screen:
    """The screen a tap leads to, after doing what it asks (everything here is synchronous: no other
    update runs between the refusal checks, the revocation of the old buttons and the change)."""
    action, key = button.action, button.key
    if action == "menu":
        return menu_screen(p)
    if action == "group":
        return group_screen(p, key)
    if action == "edit":
        return edit_screen(p, key)
    if action == "preset":
        screen, _ = confirm_screen(p, key, button.value)
        return screen
    if action == "type":
        return type_screen(p, key)
    if action == "confirm":
        return await _confirm(p, button, user)
    if action == "compare":  # the change stays pending: the same confirm screen, redrawn
        screen, _ = confirm_screen(p, key, button.value)
        return screen
    if action == "alerts":
        return alerts_screen(p)
    if action == "alert_group":
        return alert_group_screen(p, int(key))
    if action == "alert":
        return alert_screen(p, key)
    if action == "level":
        level = next(lv for lv in outbox.LEVELS if lv == button.value)
        outbox.set_alert_level(key, level, user, p.deps.now())
        return alert_group_screen(p, _group_of_kind(key))
    assert action == "close", action  # the tokens are ours: no other action exists
    return "Settings closed. Send /settings to open them again.", None


async def _confirm(p: Panel, button: Button, user: str) -> Screen:
    settings = p.deps.service.current_settings()
    back = _markup([[_back_to_group(p, button.key)]])  # the setting's group, where its new value shows
    now_value = format_value(button.key, getattr(settings, button.key))
    if now_value != button.old:
        label = SETTING_SPECS[button.key].label
        return (f"Not changed: <b>{fmt.e(label)}</b> is now {fmt.value_html(button.key, getattr(settings, button.key))}"
                f", not <code>{fmt.e(button.old)}</code> as when you opened this.", back)
    result = await p.deps.service.set_setting(button.key, button.value, user)
    if isinstance(result, SettingError):
        return fmt.error_text(result), back
    if result.old == result.new:
        return f"No change: {fmt.change_text(result)}", back
    return f"✅ Saved: {fmt.change_text(result)}\nTakes effect at the next tick.", back


# --- handlers ---------------------------------------------------------------------------------------


@guarded("read")
async def settings_command(update: Update, context: BotContext) -> None:
    deps = context.deps
    user, message = update.effective_user, update.effective_message
    assert user is not None and message is not None
    text, markup = menu_screen(Panel(deps, user.id, tokens_of(deps).new_panel()))
    await message.reply_text(text, parse_mode=ParseMode.HTML, reply_markup=markup)


async def _show(update: Update, screen: Screen) -> None:
    query = update.callback_query
    assert query is not None
    text, markup = screen
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
    tokens = tokens_of(deps)
    button = tokens.resolve(query.data or "", user.id, deps.now())
    if isinstance(button, str):
        log.info("refused a settings button from %s: %s", user.id, button)
        await query.answer(button, show_alert=True)
        return
    if button.action in CHANGES and not auth.has_session(user.id, deps.now()):
        await query.answer("This changes something: open a session first with /login CODE.", show_alert=True)
        return
    net = await deps.service.net_liquidation() if button.action in ("preset", "compare") else None
    tokens.revoke_panel(button.panel)  # the message is redrawn: what it showed is dead from here on
    data = _user_data(context)
    waiting = data.get("awaiting")
    if isinstance(waiting, Awaiting) and waiting.panel == button.panel:
        data.pop("awaiting", None)
    if button.action == "type":
        data["awaiting"] = Awaiting(button.key, button.panel, deps.now() + TYPE_TTL)
    screen = await _act(Panel(deps, user.id, button.panel, net), button, who(update))
    await query.answer()
    if button.action != "compare":
        await _show(update, screen)
        return
    # the comparison comes below this message: the confirm is sent again under it, where the thumb is
    await _show(update, (screen[0] + "\n🧪 <i>Comparing; the confirm comes again below the comparison.</i>", None))
    request = compare_request(deps, button.key, button.value)
    if isinstance(request, SettingError):
        await context.bot.send_message(user.id, fmt.error_text(request), parse_mode=ParseMode.HTML)
    else:
        await run_and_reply(update, context, request)
    (text, markup), _ = confirm_screen(Panel(deps, user.id, tokens.new_panel(), net), button.key, button.value)
    await context.bot.send_message(user.id, text, parse_mode=ParseMode.HTML, reply_markup=markup)


@guarded("read")
async def typed_value(update: Update, context: BotContext) -> None:
    """A plain message: the value an admin was asked to type, or a hint."""
    deps = context.deps
    user, message = update.effective_user, update.effective_message
    assert user is not None and message is not None
    data = _user_data(context)
    waiting = data.get("awaiting")
    tokens = tokens_of(deps)
    now = deps.now()
    if not isinstance(waiting, Awaiting) or not tokens.is_live(waiting.panel, now):
        data.pop("awaiting", None)
        enrolled = auth.enrollment_status(user.id) == "active"
        names = deps.extra.get("command_names", ())  # the command table's, set where the handlers are registered
        await message.reply_text(plain_text_hint(message.text or "", list(names), enrolled),
                                 parse_mode=ParseMode.HTML)
        return
    if waiting.until < now:
        data.pop("awaiting", None)
        tokens.revoke_panel(waiting.panel)
        await message.reply_text("That came more than 5 minutes after ✏️ Type a value: nothing was changed. "
                                 "Send /settings to try again.")
        return
    panel = Panel(deps, user.id, tokens.new_panel(), await deps.service.net_liquidation())
    (text, markup), understood = confirm_screen(panel, waiting.key, message.text or "")
    if understood:  # the next message is not a value any more, and the prompt's « Back is spent
        data.pop("awaiting", None)
        tokens.revoke_panel(waiting.panel)
    await message.reply_text(text, parse_mode=ParseMode.HTML, reply_markup=markup)
