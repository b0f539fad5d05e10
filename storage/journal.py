"""The decision journal (what the rules decided or why not, one row per change) and the audit trail
of actions taken from the chat (who, when, what)."""

from __future__ import annotations

from datetime import date, datetime

from storage.models import AuditEntry, JournalEntry


def _is_lot(topic: str) -> bool:
    return topic.startswith("lot:")


def last_key(day: date, topic: str) -> str | None:
    """The key of the latest row of ``topic``: within the session for the session's topics, over the
    lot's whole life for a lot's topic (its story runs across sessions)."""
    q = JournalEntry.select(JournalEntry.key).where(JournalEntry.topic == topic)
    if not _is_lot(topic):
        q = q.where(JournalEntry.session_day == day)
    row = q.order_by(JournalEntry.id.desc()).first()
    return None if row is None else str(row.key)


def write(day: date, at: datetime, topic: str, key: str, text: str, lot_id: int | None = None) -> None:
    JournalEntry.create(session_day=day, at=at, topic=topic, key=key, text=text, lot=lot_id)


def day_entries(day: date) -> list[JournalEntry]:
    """A session's journal, in order."""
    return list(JournalEntry.select().where(JournalEntry.session_day == day).order_by(JournalEntry.id))


def lot_entries(lot_id: int) -> list[JournalEntry]:
    """One lot's story in the journal, in order."""
    return list(JournalEntry.select().where(JournalEntry.lot == lot_id).order_by(JournalEntry.id))


def audit(at: datetime, who: str, action: str, detail: str) -> None:
    AuditEntry.create(at=at, who=who, action=action, detail=detail)


def audit_entries(limit: int = 50) -> list[AuditEntry]:
    return list(AuditEntry.select().order_by(AuditEntry.id.desc()).limit(limit))
