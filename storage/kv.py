"""Small durable key/value facts (last tick, one-per-session alert markers, heartbeat)."""

from __future__ import annotations

from datetime import datetime

from storage import prepared
from storage.models import KeyValue, database_proxy


def get(key: str) -> str | None:
    row = prepared.first(KeyValue, "kv_get", lambda: KeyValue.select().where(KeyValue.key == key), (key,))
    return None if row is None else row.value


def put(key: str, value: str, now: datetime) -> None:
    KeyValue.insert(key=key, value=value, updated_at=now).on_conflict(
        conflict_target=[KeyValue.key], update={KeyValue.value: value, KeyValue.updated_at: now}
    ).execute()


def put_once(key: str, value: str, now: datetime) -> bool:
    """Store ``key`` only if absent; True when this call stored it (once-per-session alerts)."""
    with database_proxy.atomic():
        if KeyValue.select().where(KeyValue.key == key).exists():
            return False
        KeyValue.create(key=key, value=value, updated_at=now)
        return True


def delete(key: str) -> None:
    KeyValue.delete().where(KeyValue.key == key).execute()
