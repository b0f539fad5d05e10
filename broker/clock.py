"""Clocks: the wall clock for live runs, a simulated one for the backtest and tests.

The engine and the `sim` broker read time only through a clock, so the same code runs on the wall
clock and on simulated time. ``SimClock.sleep`` advances time at once and lets listeners (the sim
market's order matching) see every instant it passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    simulated: bool

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class WallClock:
    """Real time, aware UTC."""

    simulated = False

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class SimClock:
    """Simulated time. ``advance_to``/``sleep`` move it forward and call every listener."""

    simulated = True

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("SimClock needs an aware datetime")
        self._now = start
        self._listeners: list[Callable[[datetime], None]] = []

    def now(self) -> datetime:
        return self._now

    def add_listener(self, fn: Callable[[datetime], None]) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[datetime], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def advance_to(self, t: datetime) -> None:
        if t < self._now:
            raise ValueError(f"simulated time cannot go back ({t} < {self._now})")
        self._now = t
        for fn in list(self._listeners):
            fn(t)

    async def sleep(self, seconds: float) -> None:
        self.advance_to(self._now + timedelta(seconds=seconds))
        await asyncio.sleep(0)
