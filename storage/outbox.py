"""The alert outbox: every alert is written here first, then delivered in order by the notifier,
so an alert raised while Telegram is unreachable (or the bot restarts) is sent later, not lost.
Per-kind delivery levels (on / silent / off) are kept beside it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from storage import kv, settings_store
from storage.models import AlertRecord, database_proxy

AlertLevel = Literal["on", "silent", "off"]
LEVELS: tuple[AlertLevel, ...] = ("on", "silent", "off")
_PREF = "alert_level:"


def add_alert(kind: str, text: str, now: datetime, level: AlertLevel, silent: bool = False, *,
              actor: int | None = None, thread: str | None = None) -> int:
    """Queue an alert. ``actor``: the admin whose own action raised it (they already have the reply);
    ``thread``: the order it belongs to, so the sender can keep one order's story in one message."""
    status = "off" if level == "off" else "pending"
    return int(AlertRecord.create(kind=kind, text=text, created_at=now, status=status, silent=silent, actor=actor,
                                  thread=thread).id)


def pending_alerts(limit: int = 50) -> list[AlertRecord]:
    return list(AlertRecord.select().where(AlertRecord.status == "pending").order_by(AlertRecord.id).limit(limit))


def mark_sent(ids: list[int], now: datetime, status: str = "sent") -> None:
    AlertRecord.update(status=status, sent_at=now, attempts=AlertRecord.attempts + 1).where(
        AlertRecord.id.in_(ids)).execute()


def count_attempt(ids: list[int]) -> None:
    AlertRecord.update(attempts=AlertRecord.attempts + 1).where(AlertRecord.id.in_(ids)).execute()


def delivered_upto(admin: int) -> int:
    """The id of the last alert that reached ``admin`` (0 when none)."""
    value = kv.get(f"alert_delivered:{admin}")
    return int(value) if value and value.isdigit() else 0


def set_delivered_upto(admin: int, alert_id: int, now: datetime) -> None:
    kv.put(f"alert_delivered:{admin}", str(alert_id), now)


def alert_level(kind: str) -> AlertLevel:
    value = kv.get(_PREF + kind)
    for level in LEVELS:
        if value == level:
            return level
    return "on"


def set_alert_level(kind: str, level: AlertLevel, who: str, now: datetime) -> AlertLevel:
    """Store a level (audited in the settings change log); returns the old one."""
    if level not in LEVELS:
        raise ValueError(f"alert level must be one of {', '.join(LEVELS)}")
    old = alert_level(kind)
    if old != level:
        with database_proxy.atomic():
            kv.put(_PREF + kind, level, now)
            settings_store.log_change(f"alert.{kind}", old, level, who, now)
    return old
