"""Push alerts to every admin over Telegram, from the outbox, in order.

``emit`` (called by the engine, never raising into it) writes the alert to the outbox and wakes
the sender. The sender delivers pending alerts oldest first; consecutive alerts are joined into
one message up to a safe length. A transient failure (network, timeout, 429) is retried with a
capped backoff and nothing after it is sent first; a permanent one for an admin (the bot was
blocked, the chat does not exist) is logged and that admin is skipped for that message. Kinds
set to "off" are stored but not sent; "silent" ones are sent without sound."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, time

from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError

from bot.alerts import Event, EventKind
from storage import outbox
from storage.models import AlertRecord
from strategy.calendar import NY

log = logging.getLogger(__name__)

SendFn = Callable[[int, str, bool], Awaitable[None]]
RenderFn = Callable[[Event], str]
JOIN_LIMIT = 3500
MAX_BACKOFF_S = 60.0


CONNECTION_KINDS = frozenset({EventKind.DISCONNECT, EventKind.RECONNECT, EventKind.DEGRADED})


def in_window(t: time, start: time, end: time) -> bool:
    """Whether ``t`` is in [start, end), a window that may run past midnight."""
    return start <= t < end if start <= end else (t >= start or t < end)


def parse_window(text: str) -> tuple[time, time] | None:
    """'HH:MM-HH:MM' → (start, end); '' → None. Raises ValueError with a clear message."""
    if not text.strip():
        return None
    try:
        a, b = (time.fromisoformat(part.strip()) for part in text.split("-"))
    except ValueError:
        raise ValueError(f"'{text}' is not a window like 23:45-00:15") from None
    return a, b


def _silent(rec: AlertRecord) -> bool:
    return bool(rec.silent) or outbox.alert_level(rec.kind) == "silent"


class TelegramNotifier:
    def __init__(self, admins: Iterable[int], render: RenderFn, send: SendFn, now: Callable[[], datetime],
                 quiet_window: tuple[time, time] | None = None) -> None:
        self.admins = sorted(set(admins))
        self.quiet_window = quiet_window
        self.render = render
        self.send = send
        self.now = now
        self._wake = asyncio.Event()
        self._failures = 0
        self._progress: dict[int, int] = {}

    # --- the sink ----------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        try:
            level = outbox.alert_level(event.kind.value)
            quiet = event.kind in CONNECTION_KINDS and self.quiet_window is not None and in_window(
                event.time.astimezone(NY).time(), *self.quiet_window)
            actor, thread = event.data.get("actor"), event.data.get("order_ref")
            outbox.add_alert(event.kind.value, self.render(event), event.time, level, silent=quiet,
                             actor=actor if isinstance(actor, int) else None,
                             thread=thread if isinstance(thread, str) else None)
        except Exception:
            log.exception("could not queue the %s alert: %s", event.kind.value, event.text)
            return
        self._wake.set()

    # --- the sender --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver forever; a failure never ends the loop."""
        while True:
            try:
                delay = await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alert delivery failed; retrying")
                delay = 5.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay if delay else 30.0)
            except TimeoutError:
                pass

    async def drain(self) -> float:
        """Send what is pending, in order, to every admin. Returns 0 when all went out, else the
        seconds to wait before the next try. Each admin's progress is stored (the id of the last
        alert that reached them), so a failure for one admin, a retry or a restart never sends an
        alert twice to an admin who already has it."""
        while True:
            pending = outbox.pending_alerts(limit=200)
            if not pending:
                self._failures = 0
                return 0.0
            for admin in self.admins:
                batch = self._batch([r for r in pending if r.id > self._sent_upto(admin)])
                if not batch:
                    continue
                silent = _silent(batch[0])
                try:
                    await self.send(admin, "\n\n".join(r.text for r in batch), silent)
                except RetryAfter as e:
                    outbox.count_attempt([r.id for r in batch])
                    with warnings.catch_warnings():  # PTB 22 deprecates the int form; both are handled
                        warnings.simplefilter("ignore")
                        retry = e.retry_after
                    wait = float(retry.total_seconds() if hasattr(retry, "total_seconds") else retry)
                    log.warning("Telegram asks to wait %.0f s before sending alerts", wait)
                    return max(wait, 1.0)
                except (Forbidden, BadRequest) as e:
                    log.error("alerts %d–%d cannot be delivered to admin %s (%s); skipped for that admin",
                              batch[0].id, batch[-1].id, admin, e)
                except TelegramError as e:
                    outbox.count_attempt([r.id for r in batch])
                    self._failures += 1
                    wait = min(2.0 ** self._failures, MAX_BACKOFF_S)
                    log.warning("alert delivery failed (%s: %s); retry in %.0f s", type(e).__name__, e, wait)
                    return wait
                self._set_sent_upto(admin, batch[-1].id)
            self._failures = 0
            floor = min((self._sent_upto(a) for a in self.admins), default=pending[-1].id)
            outbox.mark_sent([r.id for r in pending if r.id <= floor], self.now())

    def _sent_upto(self, admin: int) -> int:
        if admin not in self._progress:
            self._progress[admin] = outbox.delivered_upto(admin)
        return self._progress[admin]

    def _set_sent_upto(self, admin: int, alert_id: int) -> None:
        outbox.set_delivered_upto(admin, alert_id, self.now())
        self._progress[admin] = alert_id

    @staticmethod
    def _batch(records: list[AlertRecord]) -> list[AlertRecord]:
        """Consecutive alerts of the same sound level, joined up to a safe message length."""
        if not records:
            return []
        first = _silent(records[0])
        batch: list[AlertRecord] = []
        size = 0
        for rec in records:
            if batch and (_silent(rec) != first or size + len(rec.text) + 2 > JOIN_LIMIT):
                break
            batch.append(rec)
            size += len(rec.text) + 2
        return batch
