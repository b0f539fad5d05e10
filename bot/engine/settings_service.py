"""Run-time settings: loaded from the database, changed only through ``update`` (validated,
stored with who/when/old/new, alerted), read by the engine at every tick."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from bot.engine.alerts import AlertSink, Event, EventKind, actor_id
from storage import settings_store
from strategy.settings import (
    PauseMode,
    SettingChange,
    SettingError,
    StrategySettings,
    display_value,
    format_value,
    label_of,
    parse_setting,
    settings_from_storage,
)

log = logging.getLogger(__name__)


def pause_text(mode: PauseMode) -> str:
    """What a pause holds back, in the user's words."""
    if mode is PauseMode.ALL:
        return "Paused: every automatic order is held back, exits included"
    if mode is PauseMode.ENTRIES:
        return "Entries paused: no new entries, rolls or recycling buys; exits keep running"
    return "Running: automatic orders on"


class SettingsService:
    def __init__(self, alerts: AlertSink, now: Callable[[], datetime]) -> None:
        self._alerts = alerts
        self._now = now
        stored = settings_store.load_raw()
        self._current, bad = settings_from_storage(stored)
        for key in bad:
            log.error("stored setting %s=%r is not valid any more; using the default", key, stored.get(key))

    @property
    def current(self) -> StrategySettings:
        return self._current

    def update(self, key_text: str, value_text: str, who: str) -> SettingChange | SettingError:
        """Validate and store one change; nothing is stored when the value is refused."""
        change = parse_setting(self._current, key_text, value_text)
        if isinstance(change, SettingError):
            return change
        if change.old == change.new:
            return change
        now = self._now()
        settings_store.save_change(
            change.key, format_value(change.key, change.old), format_value(change.key, change.new), who, now
        )
        self._current = change.settings
        if change.key == "paused":
            kind = EventKind.PAUSED if change.new else EventKind.RESUMED
            text = f"{pause_text(change.new)} (by {who})" if change.new else f"Resumed: automatic orders on (by {who})"
        else:
            kind = EventKind.SETTINGS_CHANGED
            text = (f"{label_of(change.key)}: {display_value(change.key, change.old)} → "
                    f"{display_value(change.key, change.new)} (by {who})")
        self._alerts.emit(Event(kind, text, now, {"key": change.key, "who": who, "actor": actor_id(who)}))
        return change
