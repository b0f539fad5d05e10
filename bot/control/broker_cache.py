"""Broker answers for the chat, with a reply budget: a slow or hung broker turns into a note in the
reply ("quote unavailable", or its last answer with its time) and never delays a command."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar, cast

from strategy.calendar import NY

log = logging.getLogger(__name__)
T = TypeVar("T")
BROKER_TIMEOUT_S = 10.0  # a broker call the chat made is abandoned after this
REPLY_BUDGET_S = 0.08  # ... and a reply waits for it at most this long when an earlier answer can be shown
FIRST_ANSWER_BUDGET_S = 3.0  # ... or this long when there is no earlier answer at all


class BrokerCache:
    """Broker answers for the chat, each asked at most once at a time (a hung broker is not asked
    again and again). A reply waits ``budget_s`` when it could show an earlier answer (with its
    time) instead, and ``first_budget_s`` when there is none yet (IB snapshots take a few hundred
    milliseconds; a first /status should show a price, not "unavailable")."""

    def __init__(self, now: Callable[[], datetime], budget_s: float = REPLY_BUDGET_S,
                 timeout_s: float = BROKER_TIMEOUT_S, first_budget_s: float = FIRST_ANSWER_BUDGET_S) -> None:
        self.now = now
        self.budget_s = budget_s
        self.first_budget_s = first_budget_s
        self.timeout_s = timeout_s
        self._inflight: dict[str, asyncio.Task[Any]] = {}
        self._last: dict[str, tuple[datetime, Any]] = {}

    def remember(self, key: str, value: Any, at: datetime) -> None:
        old = self._last.get(key)
        if old is None or old[0] <= at:
            self._last[key] = (at, value)

    def _done(self, key: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        e = task.exception()  # retrieved here, so a failure is never "never retrieved"
        if e is None:
            self.remember(key, task.result(), self.now())
        elif not isinstance(e, TimeoutError):
            log.warning("broker call %s failed: %s: %s", key, type(e).__name__, e)

    async def get(self, key: str, what: str, factory: Callable[[], Awaitable[T]], notes: list[str]) -> T | None:
        task = self._inflight.get(key)
        if task is None or task.done():
            task = asyncio.ensure_future(asyncio.wait_for(factory(), self.timeout_s))
            task.add_done_callback(functools.partial(self._done, key))
            self._inflight[key] = task
        try:
            budget = self.budget_s if key in self._last else self.first_budget_s
            return cast(T, await asyncio.wait_for(asyncio.shield(task), budget))
        except TimeoutError:
            reason = ("the broker did not answer" if task.done() else "the broker is slow")
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
        last = self._last.get(key)
        if last is None:
            notes.append(f"{what} unavailable: {reason} (it has not answered yet)")
            return None
        notes.append(f"{what}: {reason}; showing its answer from {last[0].astimezone(NY):%H:%M:%S} ET")
        return cast(T, last[1])

    async def close(self) -> None:
        for task in self._inflight.values():
            task.cancel()
        for task in self._inflight.values():
            with contextlib.suppress(BaseException):
                await task
        self._inflight.clear()
