"""Push alerts to every admin over Telegram, from the outbox, in order.

``emit`` (called by the engine, never raising into it) writes the alert to the outbox and wakes
the sender. The sender delivers pending alerts oldest first, to each admin, one *step* at a time:

- An alert whose ``actor`` is the admin (their own action: they already have the reply) is not
  shown to them, nor is one whose kind is "off"; it still counts as delivered to them.
- Consecutive alerts outside any order (no ``thread``) of the same sound level are joined into one
  message up to ``JOIN_LIMIT``.
- Alerts about one order (the same ``thread``: sent, partial, filled, cancelled, rejected and the
  summary right after the fill) form one message per admin: the first starts its own message
  (never joined with unrelated alerts), the next ones edit that message to show the whole story
  so far. The message is remembered in memory; after a restart, after ``thread_window``, when the
  story would grow past ``JOIN_LIMIT``, or when Telegram refuses the edit (the message was
  deleted, is too old to edit, ...), the alert goes out as a new message that the thread goes on
  from. ``thread_window`` runs from the raising of the message's first alert to this one's, so a
  fill seconds after its order joins the order's message however late both are delivered. An
  edit never rings, so a ringing alert after a silent thread message also starts a new one; a
  "silent" kind never rings, sent or edited.

Each admin's progress (the id of the last alert they have) is stored, so a failure for one admin,
a retry or a restart never sends an alert twice to an admin who already has it. A transient
failure (network, timeout, 429) of a send or an edit is retried with a capped backoff and nothing
after it is sent first; a permanent one for an admin (the bot was blocked, the chat does not exist)
is logged and that admin is skipped for that message."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError

from bot.engine.alerts import Event, EventKind
from storage import outbox
from storage.models import AlertRecord
from strategy.calendar import NY

log = logging.getLogger(__name__)

SendFn = Callable[..., Awaitable[int]]
"""send(chat_id, html, silent[, actions]) → the id of the message that holds the end of the text;
``actions`` are the buttons to show under it, (text, action) pairs."""
EditFn = Callable[..., Awaitable[None]]
"""edit(chat_id, message_id, html[, actions]): replace that message's text (and its buttons)."""
DeleteFn = Callable[[int, int], Awaitable[None]]
"""delete(chat_id, message_id): remove a message (best effort)."""
ActionsFn = Callable[[str, str | None], Sequence[tuple[str, str]]]
"""actions(kind, thread) → the buttons an alert offers now."""
RenderFn = Callable[[Event], str]
JOIN_LIMIT = 3500  # a joined message or a thread's story stays one Telegram message (4096) with room to spare
SEP = "\n\n"
MAX_BACKOFF_S = 60.0
THREAD_WINDOW = timedelta(minutes=15)  # news raised later about an order (a late fill) gets a new message that rings
EDIT_LIMIT = timedelta(hours=47)  # Telegram refuses to edit a message older than 48 h
MAX_THREADS = 64  # thread messages remembered per admin
THREAD_REF_MAX = 64  # the width of alert.thread


CONNECTION_KINDS = frozenset({EventKind.DISCONNECT, EventKind.RECONNECT, EventKind.DEGRADED})


def in_window(t: time, start: time, end: time) -> bool:
    """Whether ``t`` is in [start, end), a window that may run past midnight."""
    return start <= t < end if start <= end else (t >= start or t < end)


def _not_modified(error: BadRequest) -> bool:
    """Telegram's answer to an edit that would change nothing: the message already shows it."""
    return "not modified" in str(error.message).lower()


def _retry_after_s(error: RetryAfter) -> float:
    with warnings.catch_warnings():  # PTB 22 deprecates the int form; both are handled
        warnings.simplefilter("ignore")
        retry = error.retry_after
    return float(retry.total_seconds() if isinstance(retry, timedelta) else retry)


@dataclass
class ThreadMessage:
    """The message showing one order's story to one admin."""

    message_id: int
    texts: list[str]
    rings: bool  # sent with sound (an edit never rings)
    started: datetime  # when its first alert was raised
    sent_at: datetime  # when it was sent
    actions: tuple[tuple[str, str], ...] = ()  # the buttons under it

    def story(self, more: Iterable[str] = ()) -> str:
        return SEP.join([*self.texts, *more])


@dataclass
class _Step:
    """The next thing to do for one admin: show ``shown`` (a new message, or an edit of ``edit``'s
    message) and then count every alert up to ``upto`` as delivered (those in between are hidden
    from this admin)."""

    upto: int
    shown: list[AlertRecord] = field(default_factory=list)
    thread: str | None = None
    edit: ThreadMessage | None = None
    replace: ThreadMessage | None = None  # a result that rings: a new message with the whole story, this one goes


class TelegramNotifier:
    def __init__(self, admins: Iterable[int], render: RenderFn, send: SendFn, now: Callable[[], datetime],
                 quiet_window: tuple[time, time] | None = None, *, edit: EditFn | None = None,
                 thread_window: timedelta = THREAD_WINDOW, delete: DeleteFn | None = None,
                 actions: ActionsFn | None = None, rings_anew: frozenset[str] = frozenset()) -> None:
        self.admins = sorted(set(admins))
        self.quiet_window = quiet_window
        self.render = render
        self.send = send
        self.edit = edit  # None: every alert is a new message (threads are not edited)
        self.now = now
        self.thread_window = thread_window
        self.delete = delete
        self.actions = actions
        self.rings_anew = rings_anew  # kinds that ring in a new message rather than edit their order's
        self._wake = asyncio.Event()
        self._failures = 0
        self._progress: dict[int, int] = {}
        self._threads: dict[int, OrderedDict[str, ThreadMessage]] = {}
        self._levels: dict[str, outbox.AlertLevel] = {}
        self._lock = asyncio.Lock()  # one drain at a time (the sender task and the last one at shutdown)

    # --- the sink ----------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        try:
            level = outbox.alert_level(event.kind.value)
            quiet = event.kind in CONNECTION_KINDS and self.quiet_window is not None and in_window(
                event.time.astimezone(NY).time(), *self.quiet_window)
            outbox.add_alert(event.kind.value, self.render(event), event.time, level, silent=quiet,
                             actor=_actor(event), thread=_thread(event))
        except Exception:
            log.exception("could not queue the %s alert: %s", event.kind.value, event.text)
            return
        self._wake.set()

    # --- the sender --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver forever; a failure never ends the loop. After a failure it waits the backoff (or
        what a 429 asked) even if new alerts arrive; otherwise it wakes for the next alert."""
        while True:
            self._wake.clear()  # before the drain: an alert raised during it wakes the next round
            try:
                delay = await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alert delivery failed; retrying")
                delay = 5.0
            if delay:
                await asyncio.sleep(delay)
                continue
            # not asyncio.wait_for: on Python 3.11 it swallows a cancel that comes as the event is
            # set, and the sender would never stop
            try:
                async with asyncio.timeout(30.0):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def drain(self) -> float:
        """Send what is pending, in order, to every admin. Returns 0 when all went out, else the
        seconds to wait before the next try."""
        async with self._lock:
            return await self._drain()

    async def _drain(self) -> float:
        while True:
            pending = outbox.pending_alerts(limit=200)
            if not pending:
                self._failures = 0
                return 0.0
            self._levels = {}  # a level changed on the keyboard counts from the next round
            for admin in self.admins:
                step = self._plan(admin, [r for r in pending if r.id > self._sent_upto(admin)])
                if step is None:
                    continue
                wait = await self._deliver(admin, step)
                if wait is not None:
                    return wait
            self._failures = 0
            floor = min((self._sent_upto(a) for a in self.admins), default=pending[-1].id)
            outbox.mark_sent([r.id for r in pending if r.id <= floor], self.now())

    # --- planning: what the next message (or edit) for an admin holds ---------------------------

    def _level(self, kind: str) -> outbox.AlertLevel:
        if kind not in self._levels:
            self._levels[kind] = outbox.alert_level(kind)
        return self._levels[kind]

    def _silent(self, rec: AlertRecord) -> bool:
        return bool(rec.silent) or self._level(rec.kind) == "silent"

    def _hidden(self, rec: AlertRecord, admin: int) -> bool:
        """Not shown to this admin: their own action's alert, or a kind set to "off" meanwhile."""
        return (rec.actor is not None and int(rec.actor) == admin) or self._level(rec.kind) == "off"

    def _plan(self, admin: int, records: Sequence[AlertRecord]) -> _Step | None:
        step: _Step | None = None
        silent = False
        size = 0
        for rec in records:
            if self._hidden(rec, admin):
                step = step or _Step(upto=rec.id)
                step.upto = rec.id
                continue
            if step is None or not step.shown:
                step = step or _Step(upto=rec.id)
                step.thread = rec.thread
                step.edit = self._editable(admin, rec) if rec.thread is not None else None
                step.replace = self._replaceable(admin, rec) if step.edit is None else None
                silent = self._silent(rec)
                story = step.edit or step.replace
                size = len(story.story([rec.text])) if story else len(rec.text)
            else:
                if rec.thread != step.thread:
                    break  # an order's story never shares a message with anything else
                if step.edit is None and self._silent(rec) != silent:
                    break  # a new message has one sound level
                if step.edit is not None and not step.edit.rings and not self._silent(rec):
                    break  # an edit cannot ring: this one needs a message of its own
                if step.edit is not None and self._rings_anew(rec):
                    break  # a result rings: it goes as a new message with the story
                if size + len(SEP) + len(rec.text) > JOIN_LIMIT:
                    break
                started = step.edit.started if step.edit is not None else step.shown[0].created_at
                if step.thread is not None and rec.created_at - started > self.thread_window:
                    break  # late news about the order: a message of its own
                size += len(SEP) + len(rec.text)
            step.shown.append(rec)
            step.upto = rec.id
        return step

    def _editable(self, admin: int, rec: AlertRecord) -> ThreadMessage | None:
        """The admin's message for ``rec``'s thread, if ``rec`` can be shown by editing it."""
        if self.edit is None or rec.thread is None:
            return None
        msg = self._threads.get(admin, OrderedDict()).get(rec.thread)
        if msg is None or rec.created_at - msg.started > self.thread_window or self.now() - msg.sent_at > EDIT_LIMIT:
            return None
        if not msg.rings and not self._silent(rec):
            return None
        if len(msg.story([rec.text])) > JOIN_LIMIT or self._rings_anew(rec):
            return None
        return msg

    def _rings_anew(self, rec: AlertRecord) -> bool:
        return rec.kind in self.rings_anew and not self._silent(rec)

    def _replaceable(self, admin: int, rec: AlertRecord) -> ThreadMessage | None:
        """The admin's message for ``rec``'s thread, when ``rec`` is a result that rings: it goes as a
        new message carrying the story so far, and that one is deleted."""
        if rec.thread is None or not self._rings_anew(rec):
            return None
        msg = self._threads.get(admin, OrderedDict()).get(rec.thread)
        if msg is None or rec.created_at - msg.started > self.thread_window:
            return None
        return msg if len(msg.story([rec.text])) <= JOIN_LIMIT else None

    def _actions_of(self, records: Sequence[AlertRecord]) -> tuple[tuple[str, str], ...]:
        """The buttons of a message: those of its last alert that offers some."""
        if self.actions is None:
            return ()
        for rec in reversed(records):
            try:
                found = tuple(self.actions(rec.kind, rec.thread))
            except Exception:
                log.exception("could not work out the buttons of alert %d", rec.id)
                found = ()
            if found:
                return found
        return ()

    # --- delivery ----------------------------------------------------------------------------------

    async def _deliver(self, admin: int, step: _Step) -> float | None:
        """Carry out one step; None when done (or skipped for good), else the seconds to wait."""
        if step.shown:
            first, last = step.shown[0].id, step.shown[-1].id
            try:
                if step.edit is not None:
                    await self._edit_thread(admin, step, step.edit)
                else:
                    await self._send_new(admin, step)
            except RetryAfter as e:
                outbox.count_attempt([r.id for r in step.shown])
                wait = _retry_after_s(e)
                log.warning("Telegram asks to wait %.0f s before sending alerts", wait)
                return max(wait, 1.0)
            except (Forbidden, BadRequest) as e:
                log.error("alerts %d–%d cannot be delivered to admin %s (%s); skipped for that admin",
                          first, last, admin, e)
            except TelegramError as e:
                outbox.count_attempt([r.id for r in step.shown])
                self._failures += 1
                wait = min(2.0 ** self._failures, MAX_BACKOFF_S)
                log.warning("alert delivery failed (%s: %s); retry in %.0f s", type(e).__name__, e, wait)
                return wait
        self._set_sent_upto(admin, step.upto)
        return None

    async def _send_new(self, admin: int, step: _Step) -> None:
        texts = [r.text for r in step.shown]
        silent = all(self._silent(r) for r in step.shown)  # mixed only when a refused edit falls back here
        old = step.replace
        story = [*old.texts, *texts] if old is not None else texts
        buttons = self._actions_of(step.shown)
        message_id = await (self.send(admin, SEP.join(story), silent, buttons) if buttons else
                            self.send(admin, SEP.join(story), silent))
        if old is not None and self.delete is not None:
            try:  # the story goes on in the new message: the old one would say it twice
                await self.delete(admin, old.message_id)
            except TelegramError as e:
                log.info("could not delete alert message %s for admin %s: %s", old.message_id, admin, e)
        if step.thread is not None:
            started = old.started if old is not None else step.shown[0].created_at
            self._remember(admin, step.thread,
                           ThreadMessage(message_id, story, not silent, started, self.now(), buttons))

    async def _edit_thread(self, admin: int, step: _Step, msg: ThreadMessage) -> None:
        assert self.edit is not None and step.thread is not None
        texts = [r.text for r in step.shown]
        buttons = self._actions_of(step.shown) or msg.actions
        try:
            if buttons:
                await self.edit(admin, msg.message_id, msg.story(texts), buttons)
            else:
                await self.edit(admin, msg.message_id, msg.story(texts))
        except BadRequest as e:
            if not _not_modified(e):
                # deleted, too old, or refused otherwise: never lost, a new message carries it
                log.warning("could not edit alert message %s for admin %s (%s); alerts %d–%d go as a new message",
                            msg.message_id, admin, e, step.shown[0].id, step.shown[-1].id)
                self._threads.get(admin, OrderedDict()).pop(step.thread, None)
                await self._send_new(admin, step)
                return
            # the message already shows this story (an earlier try reached Telegram unanswered)
            log.info("alert message %s for admin %s already up to date", msg.message_id, admin)
        msg.texts.extend(texts)
        msg.actions = buttons

    def _remember(self, admin: int, thread: str, msg: ThreadMessage) -> None:
        threads = self._threads.setdefault(admin, OrderedDict())
        threads.pop(thread, None)
        threads[thread] = msg
        while len(threads) > MAX_THREADS:
            threads.popitem(last=False)

    def _sent_upto(self, admin: int) -> int:
        if admin not in self._progress:
            self._progress[admin] = outbox.delivered_upto(admin)
        return self._progress[admin]

    def _set_sent_upto(self, admin: int, alert_id: int) -> None:
        outbox.set_delivered_upto(admin, alert_id, self.now())
        self._progress[admin] = alert_id


def _actor(event: Event) -> int | None:
    """The Telegram user id of the admin whose own action raised the event, if any."""
    value = event.data.get("actor")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    log.warning("the %s alert names an actor that is not a user id (%r); it goes to every admin",
                event.kind.value, value)
    return None


def _thread(event: Event) -> str | None:
    """The order the event belongs to (its order reference), if any."""
    value = event.data.get("order_ref")
    if value is None or value == "":
        return None
    ref = str(value)
    if len(ref) > THREAD_REF_MAX:
        log.warning("the %s alert's order reference is too long to thread (%r); it gets its own message",
                    event.kind.value, ref)
        return None
    return ref
