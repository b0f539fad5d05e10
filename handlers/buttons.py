"""Inline buttons that carry only an opaque token (a prefix + 11 characters, far under Telegram's
64-byte limit), issued for one admin and one message, valid for a while. A forged, expired,
restarted-away or someone else's token is refused and changes nothing; once a message's action is
done or the message is closed, every button of that message is dead.

A tap is taken with ``consume``: the token is looked up and its whole message's buttons die in one
synchronous step, before anything is awaited, so a tap the phone delivers twice (two updates
handled concurrently) acts once; the later taps are told what the first one did ("Already done").
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

MAX_TOKENS = 5000
MAX_USED = 2000  # consumed groups remembered, to answer a late second tap with what was done
TOAST_MAX = 200  # Telegram's limit for a callback answer's text


@dataclass(frozen=True, slots=True)
class Token:
    user_id: int
    action: str
    created_at: datetime
    args: dict[str, Any] = field(default_factory=dict)
    group: str = ""  # the message it belongs to: the whole group dies together


@dataclass(slots=True)
class Used:
    """What the tap that consumed a message's buttons did: ``what`` at once, ``result`` once known."""

    user_id: int
    what: str
    at: datetime
    result: str = ""

    def answer(self) -> str:
        """The answer to a later tap on any button of that message."""
        if self.result:
            text = f"Already done: {self.result}"
        else:
            text = f"Already done: {self.what} (confirmed at {self.at:%H:%M:%S}; still in progress)."
        return text if len(text) <= TOAST_MAX else text[: TOAST_MAX - 1] + "…"


class Buttons:
    """Tokens behind one family of buttons, kept in memory: a restart makes every old button stale."""

    def __init__(self, prefix: str, ttl: timedelta) -> None:
        self.prefix = prefix
        self.ttl = ttl
        self._tokens: dict[str, Token] = {}
        self._used: dict[str, Used] = {}  # token → what its message's consuming tap did

    def new_group(self) -> str:
        return secrets.token_urlsafe(6)

    def issue(self, user_id: int, action: str, now: datetime, group: str = "", **args: Any) -> str:
        if len(self._tokens) >= MAX_TOKENS:
            self._expire(now)
            while len(self._tokens) >= MAX_TOKENS:
                self._tokens.pop(next(iter(self._tokens)))
        token = secrets.token_urlsafe(8)
        self._tokens[token] = Token(user_id, action, now, dict(args), group)
        data = self.prefix + token
        assert len(data.encode()) <= 64
        return data

    def resolve(self, data: str, user_id: int, now: datetime) -> Token | str:
        """The token behind ``data``, or why it is refused (for the user)."""
        if not data.startswith(self.prefix):
            return "This button is not valid."
        key = data[len(self.prefix):]
        token = self._tokens.get(key)
        if token is None:
            return "This button has expired (it was used, closed, or the bot restarted)."
        if token.user_id != user_id:
            return "This button belongs to another admin."
        if now - token.created_at > self.ttl:
            self._tokens.pop(key, None)
            return "This button has expired; ask again."
        return token

    def consume(self, data: str, user_id: int, now: datetime,
                check: Callable[[Token], str | None] = lambda t: None,
                what: Callable[[Token], str] = lambda t: "this button was used",
                whole_message: Callable[[Token], bool] = lambda t: True) -> Token | str:
        """The token behind ``data`` with every button of its message now dead, or why it is refused
        (``check`` may refuse it and leave it alive, e.g. no session). One synchronous step: nothing
        is awaited between the look-up and the kill, so of two taps at the same moment one acts and
        the other is answered "Already done: …" (what ``what`` says, then the ``finish`` result).
        ``whole_message`` False: only this button is used up (one that only asks, below a list
        whose other buttons stay usable)."""
        key = data[len(self.prefix):] if data.startswith(self.prefix) else ""
        used = self._used.get(key)
        if used is not None and used.user_id == user_id:
            return used.answer()
        token = self.resolve(data, user_id, now)
        if isinstance(token, str):
            return token
        refused = check(token)
        if refused is not None:
            return refused
        record = Used(user_id, what(token), now)
        whole = whole_message(token)
        for k in self._group_keys(key, token.group if whole else ""):
            self._used[k] = record
        while len(self._used) > MAX_USED:
            self._used.pop(next(iter(self._used)))
        if token.group and whole:
            self.kill_group(token.group)
        else:
            self._tokens.pop(key, None)
        return token

    def finish(self, data: str, result: str) -> None:
        """What the tap that consumed ``data`` came to: later taps on its message answer with it."""
        used = self._used.get(data[len(self.prefix):])
        if used is not None:
            used.result = result

    def _group_keys(self, key: str, group: str) -> list[str]:
        if not group:
            return [key]
        return [k for k, t in self._tokens.items() if t.group == group]

    def kill_group(self, group: str) -> None:
        """Every button of one message dies (its action was done, or it was closed)."""
        if not group:
            return
        for key, t in list(self._tokens.items()):
            if t.group == group:
                del self._tokens[key]

    def _expire(self, now: datetime) -> None:
        for key, t in list(self._tokens.items()):
            if now - t.created_at > self.ttl:
                del self._tokens[key]
