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

from bot.control.manual import Done, EntryPreview, Refusal, SellPreview
from handlers import format as fmt
from handlers.auth import guarded, who
from handlers.buttons import Buttons, Token
from handlers.context import BotContext, Deps
from storage import auth
from strategy.numbers import NotANumber, read_whole

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


def _lot_arg(args: list[str]) -> int | NotANumber:
    """A lot or order number (``3`` or ``#3``), or why it is not one, as the start of a reply."""
    if len(args) != 1:
        return NotANumber("")
    n = read_whole(args[0], hash_ok=True)
    return NotANumber(f"'{args[0]}' {n.why}. ") if isinstance(n, NotANumber) else n


# --- /sell -----------------------------------------------------------------------------------------


def sell_confirm(deps: Deps, uid: int, p: SellPreview) -> tuple[str, InlineKeyboardMarkup]:
    return fmt.sell_preview_text(p), _kb(deps, uid, [[(f"✅ Sell lot #{p.lot.id}", "sell", {"lot": p.lot.id}),
                                                      ("✖ Keep it", "close", {})]])


@guarded("change")
async def sell_command(update: Update, context: BotContext) -> None:
    deps = context.deps
    lot_id = _lot_arg(context.args or [])
    if isinstance(lot_id, NotANumber):
        await reply_with(update, f"{fmt.e(lot_id.why)}Usage: <code>/sell N</code> with the lot number from "
                         "/positions, e.g. <code>/sell 3</code>.")
        return
    preview = await deps.service.sell_preview(lot_id)
    if isinstance(preview, Refusal):
        await reply_with(update, _refused(preview))
        return
    await reply_with(update, *sell_confirm(deps, _uid(update), preview))


# --- /enter ---------------------------------------------------------------------------------------


def enter_confirm(deps: Deps, uid: int, p: EntryPreview, changed: bool = False) -> tuple[str, InlineKeyboardMarkup]:
    """The /enter confirm. When this session already had its entry, the only buy button is the
    explicit "Buy another"; the confirm holds only while the session's entries stay as shown."""
    text = fmt.entry_preview_text(p)
    if changed:
        text = "⚠️ The best contract changed since you asked; nothing was bought.\n" + text
    args: dict[str, object] = {"contract": p.contract, "qty": p.qty, "seen": p.entries}
    buy = (f"✅ Buy another {p.qty}", "enter_another", args) if p.another else (f"✅ Buy {p.qty}", "enter", args)
    return text, _kb(deps, uid, [[buy, ("✖ Cancel", "close", {})]])


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
    if isinstance(order_id, NotANumber) or not match:
        why = fmt.e(order_id.why) if isinstance(order_id, NotANumber) else ""
        await reply_with(update, f"{why}Usage: <code>/cancel ID</code> with an order number from /orders, or "
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


READ_ONLY_ACTIONS = ("close", "sell_ask", "cancel_ask", "stop")  # /stop only reduces risk: no session needed
NO_SESSION = "This changes something: open a session first with /login CODE."


def _what(token: Token) -> str:
    """What a tap on this button does, in words, for a later tap on the same message."""
    a, args = token.action, token.args
    return {
        "close": "closed; nothing was sent",
        "sell_ask": f"you asked to sell lot #{args.get('lot')}",
        "sell": f"selling lot #{args.get('lot')}",
        "enter": f"buying {args.get('qty')} {args.get('contract')}",
        "enter_another": f"buying another {args.get('qty')} {args.get('contract')}",
        "cancel_ask": f"you asked to cancel order {args.get('order')}",
        "cancel": "cancelling every working order" if args.get("order") is None else
                  f"cancelling order {args.get('order')}",
        "stop": "the emergency stop",
        "sell_all_ask": "you asked to sell every lot",
        "sell_all": "selling every lot",
    }.get(a, "this button was used")


@guarded("read")
async def manual_callback(update: Update, context: BotContext) -> None:
    deps = context.deps
    query = update.callback_query
    assert query is not None
    uid = _uid(update)
    b = buttons_of(deps)
    data = query.data or ""

    def check(t: Token) -> str | None:
        return None if t.action in READ_ONLY_ACTIONS or auth.has_session(uid, deps.now()) else NO_SESSION

    # looked up and used up in one step, before any await: a tap delivered twice acts once
    token = b.consume(data, uid, deps.now(), check, _what,
                      whole_message=lambda t: t.action != "sell_ask")  # "Sell #2 now…" asks below the list
    if isinstance(token, str):
        log.info("refused a manual-control button from %s: %s", uid, token)
        await query.answer(token, show_alert=True)
        return
    await query.answer()
    result = "it failed; the error was logged."
    try:
        result = await _act(update, deps, uid, token, who(update))
    finally:
        b.finish(data, result)


async def _act(update: Update, deps: Deps, uid: int, token: Token, actor: str) -> str:
    """Do what the button says; returns what came of it, in plain words."""
    service = deps.service
    a = token.action
    if a == "close":
        await _edit(update, "Closed; nothing was sent.")
        return "closed; nothing was sent."
    if a == "sell_ask":  # below the list, which stays as it was
        preview = await service.sell_preview(int(token.args["lot"]))
        if isinstance(preview, Refusal):
            await reply_with(update, _refused(preview))
        else:
            await reply_with(update, *sell_confirm(deps, uid, preview))
        return f"{_what(token)}; the confirm is below."
    if a == "sell":
        await _edit(update, f"⏳ Selling lot #{token.args['lot']}…")
        sold = await service.sell(int(token.args["lot"]), actor)
        await _edit(update, _done(sold))
        return _plain(sold)
    if a in ("enter", "enter_another"):
        await _edit(update, "⏳ Buying…")
        result = await service.enter(actor, str(token.args["contract"]), int(str(token.args.get("seen", 0))),
                                     another=a == "enter_another")
        if isinstance(result, EntryPreview):
            await _edit(update, *enter_confirm(deps, uid, result, changed=True))
            return "nothing was bought: the best contract changed; the message shows the new one."
        await _edit(update, _done(result))
        return _plain(result)
    if a == "cancel_ask":
        view = await service.orders()
        match = [o for o in view.orders if o.id == token.args["order"]]
        if not match:
            await _edit(update, "That order is no longer working; nothing to cancel.")
            return "that order is no longer working; nothing to cancel."
        await _edit(update, fmt.cancel_ask_text(match), _kb(deps, uid, [
            [(f"✅ Cancel order {match[0].id}", "cancel", {"order": match[0].id}), ("✖ Keep it", "close", {})]]))
        return f"{_what(token)}; the message shows the answer."
    if a == "cancel":
        order = token.args["order"]
        cancelled = await service.cancel(int(order) if isinstance(order, int) else None, actor)
        await _edit(update, _refused(cancelled) if isinstance(cancelled, Refusal) else
                    "\n".join(f"• {fmt.e(line)}" for line in cancelled))
        return _plain(cancelled) if isinstance(cancelled, Refusal) else "; ".join(cancelled) + "."
    if a == "stop":
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
        return "stopped: " + "; ".join(lines) + "."
    if a == "sell_all_ask":
        positions = await service.positions()
        text = fmt.sell_all_ask_text(positions)
        n = len(positions.lots)
        sell = "✅ Sell the lot" if n == 1 else f"✅ Sell all {n} lots"
        await _edit(update, text, _kb(deps, uid, [[(sell, "sell_all", {}),
                                                   ("✖ No, keep them", "close", {})]]))
        return f"{_what(token)}; the message shows the answer."
    if a == "sell_all":
        await _edit(update, "⏳ Selling every lot…")
        lines = await service.sell_all(actor)
        await _edit(update, "\n".join(f"• {fmt.e(line)}" for line in lines))
        return "; ".join(lines)
    return "nothing: this button does nothing any more."


def _plain(result: Done | Refusal) -> str:
    """A result for a toast (plain text, no HTML)."""
    if isinstance(result, Refusal):
        return f"{result.text[0].upper() + result.text[1:]}. Nothing was sent."
    return result.text


def _done(result: Done | Refusal) -> str:
    if isinstance(result, Refusal):
        return _refused(result)
    out = result.outcome
    whole = out is None or (out.filled >= out.qty and not out.status.is_active)
    return f"✅ {fmt.e(result.text)}" if whole else f"⚠️ {fmt.e(result.text)}"


def sell_buttons(deps: Deps, uid: int, lot_ids: list[int]) -> InlineKeyboardMarkup | None:
    """The "Sell now" button of every lot, under /positions."""
    if not lot_ids:
        return None
    rows: list[list[tuple[str, str, dict[str, object]]]] = [
        [(f"Sell #{i} now…", "sell_ask", {"lot": i}) for i in lot_ids[k:k + 3]] for k in range(0, len(lot_ids), 3)]
    return _kb(deps, uid, rows)
