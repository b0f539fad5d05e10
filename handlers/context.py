"""The typed context every handler and job receives: python-telegram-bot's ``ContextTypes`` with a
``BotData`` object in place of the ``bot_data`` dict, so ``context.deps`` is checked by mypy instead
of fished out of a dict."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from cryptography.fernet import Fernet
from peewee import Database
from telegram.ext import Application, CallbackContext, ContextTypes, ExtBot, JobQueue

from bot.app.config import AppConfig
from bot.control.service import BotService
from bot.engine.alerts import Event, EventKind
from bot.engine.engine import Engine
from broker.clock import Clock
from handlers.notifier import TelegramNotifier


@dataclass
class Deps:
    """What every handler needs: the service it calls, who may talk, the 2FA key, the session
    length, the broker's mode label, the clock, and the alert outbox (``context.deps``)."""

    service: BotService
    admins: frozenset[int]
    fernet: Fernet
    session_ttl: timedelta
    label_fn: Callable[[], str]
    now: Callable[[], datetime]
    notifier: TelegramNotifier | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """[SIM] / [PAPER] / nothing for live: the broker's mode is only known once connected."""
        return self.label_fn()

    def alert(self, kind: EventKind, text: str) -> None:
        if self.notifier is not None:
            self.notifier.emit(Event(kind, text, self.now()))


class BotData:
    """Application-wide state (python-telegram-bot creates it with no arguments; ``build`` binds
    the parts once)."""

    def __init__(self) -> None:
        self._parts: BotParts | None = None
        self.last_tick: datetime | None = None  # the aligned tick last run
        self.backed_up: date | None = None  # the New York day of the last daily backup
        self.tasks: dict[str, asyncio.Task[None]] = {}  # background tasks: connector, alert sender

    def bind(self, parts: BotParts) -> None:
        self._parts = parts

    @property
    def parts(self) -> BotParts:
        if self._parts is None:
            raise RuntimeError("the application's parts are not bound yet (build() binds them)")
        return self._parts

    @property
    def deps(self) -> Deps:
        return self.parts.deps


class BotContext(CallbackContext[ExtBot[None], dict[Any, Any], dict[Any, Any], BotData]):
    """The context of every handler: ``context.deps`` is what the handler may use."""

    @property
    def deps(self) -> Deps:
        return self.bot_data.deps


CONTEXT_TYPES = ContextTypes(context=BotContext, bot_data=BotData)
BotApp = Application[ExtBot[None], BotContext, dict[Any, Any], dict[Any, Any], BotData, JobQueue[BotContext]]


@dataclass
class BotParts:
    """Everything `qqq-bot run` wired, for the jobs, the shutdown and the tests."""

    app: BotApp
    engine: Engine
    notifier: TelegramNotifier
    deps: Deps
    db: Database
    clock: Clock
    cfg: AppConfig
    extra: dict[str, Any] = field(default_factory=dict)
