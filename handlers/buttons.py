"""Inline buttons that carry only an opaque token (a prefix + 11 characters, far under Telegram's
64-byte limit), issued for one admin and one message, valid for a while. A forged, expired,
restarted-away or someone else's token is refused and changes nothing; once a message's action is
done or the message is closed, every button of that message is dead."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

MAX_TOKENS = 5000


@dataclass(frozen=True, slots=True)
class Token:
    user_id: int
    action: str
    created_at: datetime
    args: dict[str, Any] = field(default_factory=dict)
    group: str = ""  # the message it belongs to: the whole group dies together


class Buttons:
    """Tokens behind one family of buttons, kept in memory: a restart makes every old button stale."""

    def __init__(self, prefix: str, ttl: timedelta) -> None:
        self.prefix = prefix
        self.ttl = ttl
        self._tokens: dict[str, Token] = {}

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
