"""Events the engine raises and the sinks that deliver them (the log now; Telegram later).

A sink never raises into the engine: delivery problems are its own to retry and report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

log = logging.getLogger("bot.engine.alerts")


class EventKind(StrEnum):
    ORDER_SENT = "order_sent"
    ORDER_FILLED = "order_filled"
    ORDER_PARTIAL = "order_partial"
    ORDER_CANCELLED = "order_cancelled"
    ORDER_REJECTED = "order_rejected"
    TAKE_PROFIT = "take_profit"
    FORCE_EXIT = "force_exit"
    EXPIRY_GUARD = "expiry_guard"
    EXPIRED = "expired"
    EXTERNAL_CLOSE = "external_close"  # a lot the account no longer holds (sold or exercised outside the bot)
    EXIT_HELD = "exit_held"
    MANUAL = "manual"
    ENTRY = "entry"
    ROLL = "roll"
    RECYCLE = "recycle"
    NO_CONTRACT = "no_contract"
    SKIPPED = "skipped"
    LIMIT_REACHED = "limit_reached"
    DISCONNECT = "disconnect"
    DEGRADED = "degraded"
    RECONNECT = "reconnect"
    ERROR = "error"
    SETTINGS_CHANGED = "settings_changed"
    PAUSED = "paused"
    RESUMED = "resumed"
    UNAUTHORIZED = "unauthorized"
    DAILY_SUMMARY = "daily_summary"
    STARTED = "started"


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    text: str
    time: datetime
    data: dict[str, Any] = field(default_factory=dict)


class AlertSink(Protocol):
    def emit(self, event: Event) -> None: ...


class Emit(Protocol):
    """Raise one event: its kind, its text for the user, and data for the sinks."""

    def __call__(self, kind: EventKind, text: str, **data: object) -> None: ...


class LogSink:
    """Alerts to the log, one line each, labelled with the broker's mode ([SIM], [PAPER])."""

    def __init__(self, label: str | Callable[[], str] = "", level: int = logging.INFO) -> None:
        self.label = label
        self.level = level

    def emit(self, event: Event) -> None:
        label = self.label() if callable(self.label) else self.label
        prefix = f"{label} " if label else ""
        log.log(self.level, "%s%s: %s", prefix, event.kind.value, event.text)


class MemorySink:
    """Keeps events in memory (backtests and tests)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[EventKind]:
        return [e.kind for e in self.events]


class FanoutSink:
    """Delivers to several sinks; one failing sink never stops the others or the engine."""

    def __init__(self, sinks: Sequence[AlertSink]) -> None:
        self.sinks = list(sinks)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:
                log.exception("alert sink %r failed on %s", sink, event.kind)


def actor_id(who: str) -> int | None:
    """The Telegram user id in a ``telegram:123 (@name)`` actor, so the notifier can spare that admin
    an alert about their own action (they have the reply); None for anyone else."""
    head = who.removeprefix("telegram:").split(" ", 1)[0] if who.startswith("telegram:") else ""
    return int(head) if head.isascii() and head.isdigit() else None


def mode_label(mode: str) -> str:
    """[SIM] / [PAPER] for non-live brokers; nothing for live."""
    return {"sim": "[SIM]", "paper": "[PAPER]"}.get(mode, "")
