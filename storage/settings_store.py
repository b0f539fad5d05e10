"""Stored settings and their change log (who, when, old, new)."""

from __future__ import annotations

from datetime import datetime

from storage.models import Setting, SettingChange, database_proxy


def load_raw() -> dict[str, str]:
    """Every stored setting as the text the user typed (canonical form)."""
    return {row.key: row.value for row in Setting.select()}


def save_change(key: str, old_text: str | None, new_text: str, who: str, now: datetime) -> None:
    """Store a new value and its change-log row in one transaction."""
    with database_proxy.atomic():
        Setting.insert(key=key, value=new_text, updated_at=now).on_conflict(
            conflict_target=[Setting.key], update={Setting.value: new_text, Setting.updated_at: now}
        ).execute()
        SettingChange.create(key=key, old_value=old_text, new_value=new_text, who=who, at=now)


def log_change(key: str, old_text: str | None, new_text: str, who: str, now: datetime) -> None:
    """A change-log row for something stored elsewhere (e.g. an alert level)."""
    SettingChange.create(key=key, old_value=old_text, new_value=new_text, who=who, at=now)
