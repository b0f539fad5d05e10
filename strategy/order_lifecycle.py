"""The order lifecycle: where an order of the bot's stands, and which moves are allowed.

One table says it all (in the manner of NautilusTrader's order state machine). The rules a trader
reads in it:
- an order is final only when the broker says so: filled, cancelled (by the bot or by the broker),
  rejected; or when it provably never reached the broker (*not sent*);
- a cancel that could not be sent, or is not yet confirmed, leaves the order *cancel pending*: it
  can still fill, and nothing new is sent for its purpose until the broker settles it;
- after the connection to the broker was lost, a working order is *unknown* until the broker's
  open orders and executions settle it.
"""

from __future__ import annotations

from enum import StrEnum


class OrderState(StrEnum):
    """Where an order stands. Every state but the four final ones is *live*: the order may still
    fill, so nothing new is sent for its purpose."""

    PENDING_SUBMIT = "pending_submit"  # written, not yet acknowledged as sent
    SUBMITTED = "submitted"  # working at the broker
    PARTIALLY_FILLED = "partially_filled"  # working, some filled
    CANCEL_PENDING = "cancel_pending"  # a cancel is due or sent, the broker has not confirmed it
    UNKNOWN = "unknown"  # the connection was lost while it worked: the broker will tell
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    ABANDONED = "abandoned"  # never reached the broker

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_STATES

    @property
    def is_final(self) -> bool:
        return self not in ACTIVE_STATES

    @property
    def label(self) -> str:
        """The state in the user's words."""
        return _LABELS.get(self, self.value.replace("_", " "))


_LABELS = {
    OrderState.PENDING_SUBMIT: "being sent",
    OrderState.SUBMITTED: "working",
    OrderState.CANCEL_PENDING: "cancel pending (can still fill)",
    OrderState.UNKNOWN: "unknown until the broker answers (can still fill)",
    OrderState.ABANDONED: "not sent",
}

ACTIVE_STATES = (OrderState.PENDING_SUBMIT, OrderState.SUBMITTED, OrderState.PARTIALLY_FILLED,
                 OrderState.CANCEL_PENDING, OrderState.UNKNOWN)
FINAL_STATES = (OrderState.FILLED, OrderState.CANCELLED, OrderState.REJECTED, OrderState.ABANDONED)

_S = OrderState
# from → the states it may move to. Final states move nowhere, except that the broker's word wins:
# an order found still working at the broker is live again (cancel pending), whatever was believed.
TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    _S.PENDING_SUBMIT: frozenset({_S.SUBMITTED, _S.PARTIALLY_FILLED, _S.FILLED, _S.CANCEL_PENDING, _S.UNKNOWN,
                                  _S.CANCELLED, _S.REJECTED, _S.ABANDONED}),
    _S.SUBMITTED: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCEL_PENDING, _S.UNKNOWN, _S.CANCELLED,
                             _S.REJECTED}),
    _S.PARTIALLY_FILLED: frozenset({_S.FILLED, _S.CANCEL_PENDING, _S.UNKNOWN, _S.CANCELLED, _S.REJECTED}),
    _S.CANCEL_PENDING: frozenset({_S.FILLED, _S.UNKNOWN, _S.CANCELLED, _S.REJECTED}),
    _S.UNKNOWN: frozenset({_S.SUBMITTED, _S.PARTIALLY_FILLED, _S.FILLED, _S.CANCEL_PENDING, _S.CANCELLED,
                           _S.REJECTED, _S.ABANDONED}),
    _S.FILLED: frozenset(),
    _S.CANCELLED: frozenset({_S.CANCEL_PENDING}),
    _S.REJECTED: frozenset({_S.CANCEL_PENDING}),
    _S.ABANDONED: frozenset({_S.CANCEL_PENDING}),
}


def can_move(old: OrderState, new: OrderState) -> bool:
    """Whether the lifecycle allows ``old`` → ``new`` (staying put is always allowed)."""
    return old == new or new in TRANSITIONS[old]


def sources_of(new: OrderState) -> tuple[OrderState, ...]:
    """Every state from which an order may move to ``new`` (for a guarded UPDATE)."""
    return tuple(s for s in OrderState if new in TRANSITIONS[s])


def after_fill(state: OrderState, filled: int, qty: int) -> OrderState:
    """The state after the executions add up to ``filled`` of ``qty``: filled when all is filled;
    a working order becomes partially filled; a cancel pending or unknown order stays so (it may
    still fill, and the broker has not said it is over)."""
    if filled >= qty:
        return OrderState.FILLED
    if filled > 0 and state in (OrderState.PENDING_SUBMIT, OrderState.SUBMITTED):
        return OrderState.PARTIALLY_FILLED
    return state
