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
from datetime import datetime

from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError

from bot.alerts import Event
from storage import outbox

log = logging.getLogger(__name__)

SendFn = Callable[[int, str, bool], Awaitable[None]]
RenderFn = Callable[[Event], str]
JOIN_LIMIT = 3500
MAX_BACKOFF_S = 60.0


class TelegramNotifier:
    def __init__(self, admins: Iterable[int], render: RenderFn, send: SendFn, now: Callable[[], datetime]) -> None:
        self.admins = sorted(set(admins))
        self.render = render
        self.send = send
        self.now = now
        self._wake = asyncio.Event()
        self._failures = 0
        self._delivered: dict[tuple[int, ...], set[int]] = {}
        self.sent_messages = 0

    # --- the sink ----------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        try:
            level = outbox.alert_level(event.kind.value)
            outbox.add_alert(event.kind.value, self.render(event), event.time, level)
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
        """Send what is pending, in order. Returns 0 when all went out, else the seconds to wait
        before the next try."""
        while True:
            batch = self._next_batch()
            if not batch:
                self._failures = 0
                return 0.0
            ids = tuple(r.id for r in batch)
            silent = outbox.alert_level(batch[0].kind) == "silent"
            text = "\n\n".join(r.text for r in batch)
            done = self._delivered.setdefault(ids, set())
            for admin in self.admins:
                if admin in done:
                    continue
                try:
                    await self.send(admin, text, silent)
                    self.sent_messages += 1
                except RetryAfter as e:
                    outbox.count_attempt(list(ids))
                    with warnings.catch_warnings():  # PTB 22 deprecates the int form; both are handled
                        warnings.simplefilter("ignore")
                        retry = e.retry_after
                    wait = float(retry.total_seconds() if hasattr(retry, "total_seconds") else retry)
                    log.warning("Telegram asks to wait %.0f s before sending alerts", wait)
                    return max(wait, 1.0)
                except (Forbidden, BadRequest) as e:
                    log.error("alert to admin %s cannot be delivered (%s); skipping that admin for it", admin, e)
                except TelegramError as e:
                    outbox.count_attempt(list(ids))
                    self._failures += 1
                    wait = min(2.0 ** self._failures, MAX_BACKOFF_S)
                    log.warning("alert delivery failed (%s: %s); retry in %.0f s", type(e).__name__, e, wait)
                    return wait
                done.add(admin)
            self._failures = 0
            outbox.mark_sent(list(ids), self.now())
            self._delivered.pop(ids, None)

    def _next_batch(self) -> list[outbox.AlertRecord]:
        pending = outbox.pending_alerts()
        if not pending:
            return []
        first_level = outbox.alert_level(pending[0].kind)
        batch, size = [], 0
        for rec in pending:
            if batch and (outbox.alert_level(rec.kind) != first_level or size + len(rec.text) + 2 > JOIN_LIMIT):
                break
            batch.append(rec)
            size += len(rec.text) + 2
        return batch
