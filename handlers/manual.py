"""Manual control from the chat: /sell N (and "Sell now" under /positions), /orders with a Cancel
button each, /cancel [ID|all], /enter, /stop. Every changing action needs an open session and a
confirm button showing what it will do; the confirm is answered by editing that message. Buttons
die once used or after CONFIRM_TTL; a message's other buttons die with it."""

from __future__ import annotations

import logging
from datetime import timedelta

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ParseMode
from telegram.error import BadRequest

from bot.manual import Done, EntryPreview, Refusal, SellPreview
from handlers import format as fmt
from handlers.auth import guarded, who
from handlers.buttons import Buttons, Token
from handlers.context import BotContext, Deps
from storage import auth

log = logging.getLogger(__name__)
CONFIRM_TTL = timedelta(minutes=2)  # a confirm shows prices: it must not be used long after
PREFIX = "m:"


def buttons_of(deps: Deps) -> Buttons:
    b = deps.extra.get("manual_buttons")
    if not isinstance(b, Buttons):
        b = Buttons(PREFIX, CONFIRM_TTL)
        deps.extra["manual_buttons"] = b
    return b


def _kb(deps: Deps, uid: int, rows: list[list[tuple[str, str, dict[str, object]]]]) -> InlineKeyboardMarkup:
    """A keyboard whose buttons all belong to one new group (one message)."""
    b = buttons_of(deps)
    group = b.new_group()
    return InlineKeyboardMarkup([[InlineKeyboardButton(text, callback_data=b.issue(uid, action, deps.now(), group,
                                                                                    **args))
                                  for text, action, args in row] for row in rows])


async def reply_with(update: Update, text: str, markup: InlineKeyboardMarkup | None = None) -> None:
    """Reply in HTML, split under Telegram's limit, the keyboard on the last part."""
    message = update.effective_message
    if message is None:
        return
    chunks = fmt.split_message(text)
    for i, chunk in enumerate(chunks):
        await message.reply_text(chunk, parse_mode=ParseMode.HTML, disable_web_page_preview=True,
                                 reply_markup=markup if i == len(chunks) - 1 else None)


async def _edit(update: Update, text: str, markup: InlineKeyboardMarkup | None = None) -> None:
    query = update.callback_query
    assert query is not None
    try:
        await query.edit_message_text(fmt.split_message(text)[0], parse_mode=ParseMode.HTML, reply_markup=markup,
                                      disable_web_page_preview=True)
    except BadRequest as e:
        if "not modified" not in str(e).lower():
            raise


def _uid(update: Update) -> int:
    user = update.effective_user
    assert user is not None
    return user.id


def refused_text(r: Refusal) -> str:
    return f"❌ {fmt.e(r.text[0].upper() + r.text[1:])}.\nNothing was sent."


_refused = refused_text


def _lot_arg(args: list[str]) -> int | None:
    if len(args) != 1:
        return None
    text = args[0].lstrip("#")
    return int(text) if text.isdigit() else None


# --- /sell -----------------------------------------------------------------------------------------


def sell_confirm(deps: Deps, uid: int, p: SellPreview) -> tuple[str, InlineKeyboardMarkup]:
    return fmt.sell_preview_text(p), _kb(deps, uid, [[(f"✅ Sell lot #{p.lot.id}", "sell", {"lot": p.lot.id}),
                                                      ("✖ Keep it", "close", {})]])


@guarded("change")
async def sell_command(update: Update, context: BotContext) -> None:
    deps = context.deps
    lot_id = _lot_arg(context.args or [])
    if lot_id is None:
        await reply_with(update, "Usage: <code>/sell N</code> with the lot number from /positions, e.g. "
                     "<code>/sell 3</code>.")
        return
    preview = await deps.service.sell_preview(lot_id)
    if isinstance(preview, Refusal):
        await reply_with(update, _refused(preview))
        return
    await reply_with(update, *sell_confirm(deps, _uid(update), preview))


# --- /enter ---------------------------------------------------------------------------------------


def enter_confirm(deps: Deps, uid: int, p: EntryPreview, changed: bool = False) -> tuple[str, InlineKeyboardMarkup]:
    text = fmt.entry_preview_text(p)
    if changed:
        text = "⚠️ The best contract changed since you asked; nothing was bought.\n" + text
    return text, _kb(deps, uid, [[(f"✅ Buy {p.qty}", "enter", {"contract": p.contract}), ("✖ Cancel", "close", {})]])


@guarded("change")
async def enter_command(update: Update, context: BotContext) -> None:
    deps = context.deps
    if context.args:
        await reply_with(update, "Usage: <code>/enter</code> (it buys what the strategy would buy now, "
                     "without waiting for a dip).")
        return
    preview = await deps.service.enter_preview()
    if isinstance(preview, Refusal):
        await reply_with(update, _refused(preview))
        return
    await reply_with(update, *enter_confirm(deps, _uid(update), preview))


# --- /orders, /cancel ------------------------------------------------------------------------------


@guarded("read")
async def orders_command(update: Update, context: BotContext) -> None:
    deps = context.deps
    view = await deps.service.orders()
    rows: list[list[tuple[str, str, dict[str, object]]]] = [
        [(f"✖ Cancel order {o.id}", "cancel_ask", {"order": o.id})] for o in view.orders]
    markup = _kb(deps, _uid(update), rows) if rows else None
    await reply_with(update, fmt.orders_text(view, deps.label), markup)


@guarded("change")
async def cancel_command(update: Update, context: BotContext) -> None:
    deps = context.deps
    args = [a.lower() for a in context.args or []]
    view = await deps.service.orders()
    if not args:
        await orders_command(update, context)
        return
    if args == ["all"]:
        if not view.orders:
            await reply_with(update, "No order is working.")
            return
        text = fmt.cancel_ask_text(view.orders)
        await reply_with(update, text, _kb(deps, _uid(update), [[(f"✅ Cancel all {len(view.orders)}", "cancel",
                                                               {"order": None}), ("✖ Keep them", "close", {})]]))
        return
    order_id = _lot_arg(args)
    match = [o for o in view.orders if o.id == order_id]
    if order_id is None or not match:
        await reply_with(update, "Usage: <code>/cancel ID</code> with an order number from /orders, or "
                     "<code>/cancel all</code>." + ("" if view.orders else " No order is working."))
        return
    await reply_with(update, fmt.cancel_ask_text(match), _kb(deps, _uid(update), [
        [(f"✅ Cancel order {order_id}", "cancel", {"order": order_id}), ("✖ Keep it", "close", {})]]))


# --- /stop -----------------------------------------------------------------------------------------


@guarded("reduce")  # the emergency stop only lowers the risk: no fresh session needed (it is audited)
async def stop_command(update: Update, context: BotContext) -> None:
    deps = context.deps
    view = await deps.service.orders()
    text = ("⛔ <b>Emergency stop</b>\nPause every automatic order (exits too) and cancel "
            f"{len(view.orders)} working order{'' if len(view.orders) == 1 else 's'}?\n"
            "Your lots stay held; a second button then offers to sell them all.")
    await reply_with(update, text, _kb(deps, _uid(update), [[("⛔ Stop now", "stop", {}), ("✖ Cancel", "close", {})]]))


# --- the buttons -----------------------------------------------------------------------------------


@guarded("read")
async def manual_callback(update: Update, context: BotContext) -> None:
    deps = context.deps
    query = update.callback_query
    assert query is not None
    uid = _uid(update)
    b = buttons_of(deps)
    token = b.resolve(query.data or "", uid, deps.now())
    if isinstance(token, str):
        log.info("refused a manual-control button from %s: %s", uid, token)
        await query.answer(token, show_alert=True)
        return
    if token.action not in ("close", "sell_ask", "cancel_ask", "stop") and not auth.has_session(uid, deps.now()):
        await query.answer("This changes something: open a session first with /login CODE.", show_alert=True)
        return
    await query.answer()
    if token.action != "sell_ask":  # "Sell #2 now…" only asks, in a new message: the list stays usable
        b.kill_group(token.group)  # one decision per message: its other buttons die now
    await _act(update, deps, uid, token, who(update))


async def _act(update: Update, deps: Deps, uid: int, token: Token, actor: str) -> None:
    service = deps.service
    a = token.action
    if a == "close":
        await _edit(update, "Closed; nothing was sent.")
    elif a == "sell_ask":  # below the list, which stays as it was
        preview = await service.sell_preview(int(token.args["lot"]))
        if isinstance(preview, Refusal):
            await reply_with(update, _refused(preview))
        else:
            await reply_with(update, *sell_confirm(deps, uid, preview))
    elif a == "sell":
        await _edit(update, f"⏳ Selling lot #{token.args['lot']}…")
        await _edit(update, _done(await service.sell(int(token.args["lot"]), actor)))
    elif a == "enter":
        await _edit(update, "⏳ Buying…")
        result = await service.enter(actor, str(token.args["contract"]))
        if isinstance(result, EntryPreview):
            await _edit(update, *enter_confirm(deps, uid, result, changed=True))
        else:
            await _edit(update, _done(result))
    elif a == "cancel_ask":
        view = await service.orders()
        match = [o for o in view.orders if o.id == token.args["order"]]
        if not match:
            await _edit(update, "That order is no longer working; nothing to cancel.")
            return
        await _edit(update, fmt.cancel_ask_text(match), _kb(deps, uid, [
            [(f"✅ Cancel order {match[0].id}", "cancel", {"order": match[0].id}), ("✖ Keep it", "close", {})]]))
    elif a == "cancel":
        order = token.args["order"]
        cancelled = await service.cancel(int(order) if isinstance(order, int) else None, actor)
        await _edit(update, _refused(cancelled) if isinstance(cancelled, Refusal) else
                    "\n".join(f"• {fmt.e(line)}" for line in cancelled))
    elif a == "stop":
        lines = await service.stop(actor)
        lots = await service.open_lot_count()
        text = "⛔ <b>Stopped</b>\n" + "\n".join(f"• {fmt.e(line)}" for line in lines)
        if lots:
            text += f"\nThe bot still holds {lots} lot{'' if lots == 1 else 's'}."
            also = "Also sell the lot" if lots == 1 else f"Also sell all {lots} lots"
            await _edit(update, text, _kb(deps, uid, [[(also, "sell_all_ask", {}),
                                                       ("Keep them", "close", {})]]))
        else:
            await _edit(update, text)
    elif a == "sell_all_ask":
        positions = await service.positions()
        text = fmt.sell_all_ask_text(positions)
        n = len(positions.lots)
        sell = "✅ Sell the lot" if n == 1 else f"✅ Sell all {n} lots"
        await _edit(update, text, _kb(deps, uid, [[(sell, "sell_all", {}),
                                                   ("✖ No, keep them", "close", {})]]))
    elif a == "sell_all":
        await _edit(update, "⏳ Selling every lot…")
        lines = await service.sell_all(actor)
        await _edit(update, "\n".join(f"• {fmt.e(line)}" for line in lines))


def _done(result: Done | Refusal) -> str:
    if isinstance(result, Refusal):
        return _refused(result)
    return f"✅ {fmt.e(result.text)}" if result.outcome is None or result.outcome.filled else f"⚠️ {fmt.e(result.text)}"


def sell_buttons(deps: Deps, uid: int, lot_ids: list[int]) -> InlineKeyboardMarkup | None:
    """The "Sell now" button of every lot, under /positions."""
    if not lot_ids:
        return None
    rows: list[list[tuple[str, str, dict[str, object]]]] = [
        [(f"Sell #{i} now…", "sell_ask", {"lot": i}) for i in lot_ids[k:k + 3]] for k in range(0, len(lot_ids), 3)]
    return _kb(deps, uid, rows)
