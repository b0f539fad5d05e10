"""Alerts as a phone shows them, from the events the engine raises: the lot a fill or an entry made
("lot #2", the number /sell and /why take), the commission as money paid, the person who acted by
name (not "telegram:1001 (@ann)"), numbers in the one style of ``strategy.number_style``, and the
actions an alert offers as buttons ([Positions] [Sell #2…]).

The texts are written where the events are raised; this module only presents them."""

from __future__ import annotations

import re
from dataclasses import replace

from bot.engine.alerts import Event, EventKind
from storage import ledger
from strategy import number_style

# Results of an order that ring even when the order's earlier alerts were one message: a person acts
# on them (an entry filled, a lot sold, a roll, a recycle).
RESULT_KINDS: frozenset[EventKind] = frozenset({
    EventKind.ENTRY, EventKind.ROLL, EventKind.TAKE_PROFIT, EventKind.FORCE_EXIT, EventKind.EXPIRY_GUARD,
    EventKind.RECYCLE})
LOT_CLOSED_KINDS: frozenset[str] = frozenset({
    EventKind.TAKE_PROFIT, EventKind.FORCE_EXIT, EventKind.EXPIRY_GUARD, EventKind.EXPIRED})
FILL_KINDS: frozenset[str] = frozenset({EventKind.ORDER_FILLED, EventKind.ORDER_PARTIAL})

Action = tuple[str, str]  # (the button's text, what it does: "positions", "sell:2", "why", "why:2")

_ACTOR = re.compile(r"telegram:(\d+)(?: \(([^)]*)\))?")
_RECEIVED = re.compile(r"received ([\d,]+\.\d+) USD \+ ([\d,]+\.\d+) commission")
_PAID = re.compile(r"paid ([\d,]+\.\d+) USD \+ ([\d,]+\.\d+) commission")


def person(who: str) -> str:
    """An actor as ``handlers.auth.who`` writes it, shown as the person: their name, else their
    @username, else "admin 1001"."""
    m = _ACTOR.fullmatch(who.strip())
    if m is None:
        return who
    uid, extra = m.group(1), (m.group(2) or "").strip()
    name, _, handle = extra.partition(", @") if not extra.startswith("@") else ("", "", extra[1:])
    if name.strip():
        return name.strip()
    return f"@{handle}" if handle else f"admin {uid}"


def people(text: str) -> str:
    """Every actor in a text shown as the person."""
    return _ACTOR.sub(lambda m: person(m.group(0)), text)


def commission_words(text: str) -> str:
    """ "received 6,550.00 USD + 1.00 commission" read as if the commission were received too."""
    text = _RECEIVED.sub(r"received \1 USD, less \2 USD commission", text)
    return _PAID.sub(r"paid \1 USD + \2 USD commission", text)


def lot_of(event: Event) -> int | None:
    """The lot an event is about: named in its data, or the lot its order opened or closed."""
    lot = event.data.get("lot_id")
    if isinstance(lot, int):
        return lot
    ref = event.data.get("order_ref")
    if isinstance(ref, str) and ref:
        try:
            return ledger.lot_of_order(ref)
        except Exception:  # a presentation detail must never lose the alert
            return None
    return None


def present(event: Event) -> Event:
    """The event with the text a phone shows."""
    text = people(event.text)
    kind = event.kind
    lot = lot_of(event) if kind in FILL_KINDS or kind == EventKind.ENTRY else None
    if kind in FILL_KINDS:
        text = commission_words(text)
        if lot is not None:
            text += f" · lot #{lot}"
    elif kind == EventKind.ENTRY and lot is not None and text[:1].isupper():
        text = f"Lot #{lot}: {text[0].lower()}{text[1:]}"
    return replace(event, text=number_style.restyle(text))


def actions(kind: str, thread: str | None) -> tuple[Action, ...]:
    """The buttons an alert offers, as of now (a lot sold meanwhile offers no Sell)."""
    if kind == EventKind.DAILY_SUMMARY:
        return (("📋 Positions", "positions"), ("🧭 Why", "why"))
    if thread is None or kind not in FILL_KINDS | RESULT_KINDS | LOT_CLOSED_KINDS:
        return ()
    try:
        lot_id = ledger.lot_of_order(thread)
        row = ledger.lot_row(lot_id) if lot_id is not None else None
    except Exception:
        return ()
    if row is None:
        return (("📋 Positions", "positions"),) if kind in RESULT_KINDS else ()
    if int(row.qty_open) > 0:
        return (("📋 Positions", "positions"), (f"Sell #{lot_id}…", f"sell:{lot_id}"))
    return (("📋 Positions", "positions"), (f"🧭 Lot #{lot_id}", f"why:{lot_id}"))
