"""The decision journal as the engine writes it: a reason is stored only when its topic's decision
or cause changed since the topic's last row (a dip that stays out of reach all morning is one row,
not one per tick)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import date, datetime

from storage import journal
from strategy.explain import Reason

log = logging.getLogger(__name__)


class Journal:
    def __init__(self, now: Callable[[], datetime], enabled: bool = True) -> None:
        self.now = now
        self.enabled = enabled
        self._day: date | None = None
        self._last: dict[str, str | None] = {}  # topic → key of its latest row (this session's topics, lots)

    def note(self, day: date, topic: str, key: str, text: str, lot_id: int | None = None) -> bool:
        """Write one reason unless it repeats the topic's latest; True when written. Never raises:
        a journal that cannot be written is logged, and trading goes on."""
        if not self.enabled:
            return False
        try:
            if day != self._day:
                self._day = day
                self._last = {t: k for t, k in self._last.items() if t.startswith("lot:")}
            if topic not in self._last:
                self._last[topic] = journal.last_key(day, topic)
            if self._last[topic] == key:
                return False
            journal.write(day, self.now(), topic, key, text, lot_id)
            self._last[topic] = key
            return True
        except Exception:
            log.exception("could not write the decision journal (%s: %s)", topic, text)
            return False

    def record(self, day: date, reasons: Iterable[Reason]) -> None:
        for r in reasons:
            self.note(day, r.topic, r.key, r.text, r.lot_id)
