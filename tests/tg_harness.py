"""The real Telegram Application, wired exactly as `qqq-bot run` wires it, with respx standing in
for the Bot API at the HTTP transport: updates go in through ``process_update``; tests assert on
the Bot API calls that come out (method, chat, text, keyboard, photo)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pyotp
import respx
from telegram import Update

from bot.app.config import AppConfig
from bot.app.totp import keygen
from broker.clock import SimClock
from broker.sim import SimBroker, SimFillModel
from broker.sim_market import DailyBar, IvSource, PricePath
from handlers.app import build, startup
from handlers.context import BotParts
from storage.db import close_database
from strategy.calendar import nyse
from tests.harness import World

TOKEN = "123456789:AAFakeTokenForTestsOnly_abcdefghijk"
BASE = f"https://api.telegram.org/bot{TOKEN}"
ADMIN, ADMIN2, STRANGER = 1001, 1002, 666
BOT_USER = {"id": 123456789, "is_bot": True, "first_name": "QQQ bot", "username": "qqq_test_bot"}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    ok: bool = True  # False when the fake answered with a failure
    message_id: int | None = None  # of the message the fake created (sendMessage, sendPhoto)

    @property
    def chat_id(self) -> int | None:
        v = self.params.get("chat_id")
        return int(v) if v is not None else None

    @property
    def text(self) -> str:
        return str(self.params.get("text") or self.params.get("caption") or "")

    @property
    def keyboard(self) -> list[list[dict[str, Any]]]:
        markup = self.params.get("reply_markup")
        if not markup:
            return []
        data = json.loads(markup) if isinstance(markup, str) else markup
        return data.get("inline_keyboard", [])

    def button(self, label_prefix: str) -> str:
        for row in self.keyboard:
            for b in row:
                if b["text"].startswith(label_prefix):
                    return str(b["callback_data"])
        raise AssertionError(f"no button starting with {label_prefix!r} in {self.keyboard}")


def _parse(request: httpx.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    ctype = request.headers.get("content-type", "")
    body = request.content
    if ctype.startswith("multipart/form-data"):
        msg = BytesParser().parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
        params: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        for part in msg.get_payload():  # type: ignore[union-attr]
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if part.get_param("filename", header="content-disposition"):
                files[str(name)] = payload
            else:
                params[str(name)] = payload.decode()
        return params, files
    if ctype.startswith("application/json"):
        return json.loads(body or b"{}"), {}
    return dict(parse_qsl(body.decode())), {}


@dataclass(frozen=True)
class Unanswered:
    """A fault served like the others: Telegram carries the call out, then the answer is lost. With
    ``only``, another method that draws it fails with ``error`` without being carried out."""

    error: Exception
    only: str | None = None


def bad_request(description: str) -> httpx.Response:
    return httpx.Response(400, json={"ok": False, "error_code": 400, "description": f"Bad Request: {description}"})


class FakeBotApi:
    """Answers every Bot API method like Telegram would, and records the calls. It keeps the text of
    each message it created (``screen``); editing one that was deleted is refused as Telegram does,
    and with ``strict_edits`` so is an edit that changes nothing ("message is not modified")."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.next_id = 500
        # served (in order) to the fail_methods before success: a response, an exception to raise,
        # an Unanswered (carried out, then its exception), or None (answered normally)
        self.failures: list[httpx.Response | Exception | Unanswered | None] = []
        self.fail_methods = {"sendMessage"}
        self.messages: dict[tuple[int, int], str] = {}  # (chat, message id) → current text, in creation order
        self.deleted: set[tuple[int, int]] = set()
        self.strict_edits = False
        self.latency: float | None = None  # seconds each answer takes, as over a real network (None: at once)

    def __call__(self, request: httpx.Request) -> httpx.Response | Awaitable[httpx.Response]:
        if self.latency is not None:
            return self._after(self.latency, request)
        return self.answer(request)

    async def _after(self, seconds: float, request: httpx.Request) -> httpx.Response:
        """The answer after a round trip: other updates run meanwhile, as they do in production."""
        await asyncio.sleep(seconds)
        return self.answer(request)

    def answer(self, request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        params, files = _parse(request)
        if method == "getUpdates":
            return httpx.Response(200, json={"ok": True, "result": []})
        self.calls.append(Call(method, params, files))
        lost: Exception | None = None
        if method in self.fail_methods and self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Unanswered) and failure.only not in (None, method):
                self.calls[-1].ok = False
                raise failure.error
            if isinstance(failure, Unanswered):
                lost = failure.error
            elif failure is not None:
                if isinstance(failure, Exception) or failure.status_code != 200:
                    self.calls[-1].ok = False
                if isinstance(failure, Exception):
                    raise failure
                return failure
        refused = self._refused(method, params)
        if refused is not None:
            self.calls[-1].ok = False
            return refused
        result = self._result(method, params)
        if isinstance(result, dict) and "message_id" in result:
            self.calls[-1].message_id = result["message_id"]
        if lost is not None:
            self.calls[-1].ok = False  # carried out, but the bot cannot know
            raise lost
        return httpx.Response(200, json={"ok": True, "result": result})

    def _refused(self, method: str, params: dict[str, Any]) -> httpx.Response | None:
        if method != "editMessageText" or "message_id" not in params:
            return None
        key = (int(params.get("chat_id", 0)), int(params["message_id"]))
        if key in self.deleted:
            return bad_request("message to edit not found")
        if self.strict_edits and self.messages.get(key) == params.get("text", ""):
            return bad_request("message is not modified: specified new message content and reply markup are "
                               "exactly the same as a current content and reply markup of the message")
        return None

    def _result(self, method: str, params: dict[str, Any]) -> Any:
        if method == "getMe":
            return BOT_USER
        if method == "deleteMessage" and "message_id" in params:
            key = (int(params.get("chat_id", 0)), int(params["message_id"]))
            if key in self.messages:
                del self.messages[key]
                self.deleted.add(key)
        if method == "editMessageText" and "message_id" in params:
            key = (int(params.get("chat_id", 0)), int(params["message_id"]))
            if key in self.messages:
                self.messages[key] = str(params.get("text", ""))
        if method in ("sendMessage", "sendPhoto", "sendDocument", "editMessageText"):
            self.next_id += 1
            chat = {"id": int(params.get("chat_id", 0)), "type": "private"}
            msg: dict[str, Any] = {"message_id": int(params.get("message_id", self.next_id)), "date": int(time.time()),
                                   "chat": chat, "from": BOT_USER}
            if method == "sendPhoto":
                msg["photo"] = [{"file_id": "p", "file_unique_id": "p", "width": 200, "height": 200}]
                msg["caption"] = params.get("caption", "")
            elif method == "sendDocument":
                msg["document"] = {"file_id": "d", "file_unique_id": "d"}
                msg["caption"] = params.get("caption", "")
            else:
                msg["text"] = params.get("text", "")
            if method != "editMessageText":
                key = (int(params.get("chat_id", 0)), int(msg["message_id"]))
                self.messages[key] = str(params.get("text") or params.get("caption") or "")
            return msg
        return True

    def delete_by_user(self, chat_id: int, message_id: int) -> None:
        """The admin deleted that message in their chat."""
        self.messages.pop((chat_id, message_id), None)
        self.deleted.add((chat_id, message_id))

    def screen(self, chat_id: int) -> list[str]:
        """What the chat shows now: the current text of each message the bot sent there, oldest first."""
        return [text for (chat, _), text in self.messages.items() if chat == chat_id]

    # --- what tests look at ---

    def of(self, method: str, chat_id: int | None = None, *, delivered: bool = False) -> list[Call]:
        return [c for c in self.calls if c.method == method and (chat_id is None or c.chat_id == chat_id)
                and (c.ok or not delivered)]

    def replies(self, chat_id: int) -> list[Call]:
        return [c for c in self.calls if c.chat_id == chat_id and c.method in ("sendMessage", "sendPhoto",
                                                                                 "sendDocument", "editMessageText")]

    def last(self, chat_id: int) -> Call:
        r = self.replies(chat_id)
        assert r, f"no reply to {chat_id}; calls: {[c.method for c in self.calls]}"
        return r[-1]

    def clear(self) -> None:
        self.calls.clear()


START = date(2024, 3, 4)


def bars_oc(pairs: list[tuple[float, float]], start: date = START) -> list[DailyBar]:
    sessions = nyse().sessions_between(start, start + timedelta(days=len(pairs) * 2 + 30))[: len(pairs)]
    return [DailyBar(s.day, o, max(o, c) * 1.001, min(o, c) * 0.999, c)
            for s, (o, c) in zip(sessions, pairs, strict=True)]


@dataclass
class Tg:
    parts: BotParts
    api: FakeBotApi
    world: World
    cfg: AppConfig
    update_id: int = 0
    message_id: int = 10

    @property
    def clock(self) -> SimClock:
        assert isinstance(self.parts.clock, SimClock)
        return self.parts.clock

    async def send(self, user: int, text: str, chat_type: str = "private", chat_id: int | None = None) -> None:
        self.update_id += 1
        self.message_id += 1
        msg: dict[str, Any] = {
            "message_id": self.message_id, "date": int(self.clock.now().timestamp()),
            "chat": {"id": chat_id if chat_id is not None else user, "type": chat_type,
                     **({"title": "group"} if chat_type != "private" else {})},
            "from": {"id": user, "is_bot": False, "first_name": f"u{user}", "username": f"user{user}"},
            "text": text,
        }
        m = re.match(r"/\w+", text)
        if m:
            msg["entities"] = [{"type": "bot_command", "offset": 0, "length": m.end()}]
        await self.parts.app.process_update(Update.de_json({"update_id": self.update_id, "message": msg},
                                                           self.parts.app.bot))

    async def tap(self, user: int, data: str, message_id: int = 77) -> None:
        self.update_id += 1
        cbq = {"id": f"cb{self.update_id}", "from": {"id": user, "is_bot": False, "first_name": f"u{user}"},
               "chat_instance": "ci", "data": data,
               "message": {"message_id": message_id, "date": int(self.clock.now().timestamp()),
                           "chat": {"id": user, "type": "private"}, "from": BOT_USER, "text": "settings"}}
        await self.parts.app.process_update(Update.de_json({"update_id": self.update_id, "callback_query": cbq},
                                                           self.parts.app.bot))

    def secret_from_enrollment(self, user: int) -> str:
        photo = self.api.of("sendPhoto", user)[-1]
        m = re.search(r"secret=([A-Z2-7]+)", photo.text)
        assert m, photo.text
        return m.group(1)

    def code(self, secret: str, offset_s: int = 0) -> str:
        return pyotp.TOTP(secret).at(self.clock.now() + timedelta(seconds=offset_s))

    async def enroll_and_login(self, user: int = ADMIN) -> str:
        await self.send(user, "/start")
        secret = self.secret_from_enrollment(user)
        before = len(self.api.replies(user))
        await self.send(user, f"/login {self.code(secret)}")
        said = [c.text for c in self.api.replies(user)[before:]]  # a command refused before may run after it
        assert any("Session open" in t for t in said), said
        return secret

    async def drain_alerts(self) -> None:
        await self.parts.notifier.drain()

    async def drain_retrying(self, rounds: int = 10) -> list[float]:
        """Drain again after each failure (without sleeping) until all went out; the waits asked."""
        waits: list[float] = []
        for _ in range(rounds):
            wait = await self.parts.notifier.drain()
            if wait == 0:
                break
            waits.append(wait)
        return waits


def make_cfg(tmp: Path, **extra: str) -> AppConfig:
    """The config of a test bot; its TOTP key is kept in ``tmp`` so a restarted bot decrypts the
    secrets the first one stored."""
    key_file = tmp / "totp.key"
    if not key_file.exists():
        key_file.write_text(keygen())
    env = {"TELEGRAM_BOT_TOKEN": TOKEN, "ADMIN_USER_IDS": f"{ADMIN},{ADMIN2}",
           "TOTP_ENCRYPTION_KEY": key_file.read_text(),
           "DATA_DIR": str(tmp), "SESSION_TTL_MIN": "30", **extra}
    return AppConfig(**env)  # type: ignore[arg-type]


async def open_tg(tmp: Path, bars: list[DailyBar] | None = None, *, fill: SimFillModel | None = None,
                  settings: dict[str, str] | None = None,
                  hook: Callable[[Any], None] | None = None,
                  handler_errors: list[BaseException] | None = None, ib: bool = False,
                  run_clock: SimClock | None = None) -> AsyncIterator[Tg]:
    """The bot on a test Bot API. With ``run_clock``, the broker is the one `qqq-bot run` makes (the
    simulated market this DATA_DIR knows, on that clock) instead of one on ``bars``."""
    bars = bars or bars_oc([(500, 500), (500, 501), (501, 502)])
    cal = nyse()
    path = PricePath.from_bars(bars, cal, seed=3)
    first = cal.session(bars[0].day)
    assert first is not None
    gateway = None
    broker: Any
    if run_clock is not None:
        clock, broker = run_clock, None
    elif ib:  # the real ib_async client over a socket to the fake IB Gateway, on simulated time
        from tests.fake_gateway import FakeGateway, FakeMarket
        from tests.fake_gateway.testing import fast_broker
        from tests.test_ib_engine import NetClock

        clock: SimClock = NetClock(first.open - timedelta(minutes=1))
        gateway = await FakeGateway(FakeMarket(bars, calendar=cal, iv=0.22, seed=3), now=clock.now,
                                    cash=Decimal(100_000), mixed_account=False).start()
        clock.add_listener(gateway.on_time)
        broker = fast_broker(gateway.port, clock, max_requests_per_s=0, calendar=cal)
        clock.broker = broker  # type: ignore[attr-defined]
    else:
        clock = SimClock(first.open - timedelta(minutes=1))
        broker = SimBroker(clock, path, IvSource.constant(0.22), calendar=cal, starting_cash=Decimal(100_000),
                           mixed_account=True, seed=3, fill=fill)
    cfg = make_cfg(tmp)
    api = FakeBotApi()
    with respx.mock(assert_all_called=False) as router:
        router.route(url__startswith=BASE).mock(side_effect=api)
        parts = build(cfg, broker=broker, clock=clock, calendar=cal, builder_hook=hook)
        if broker is None:
            broker = parts.engine.broker
            path = broker.path
        errors: list[BaseException] = handler_errors if handler_errors is not None else []

        async def record(update: object, context: Any) -> None:
            errors.append(context.error)

        parts.app.add_error_handler(record)
        for key, value in (settings or {}).items():
            assert not hasattr(parts.engine.settings.update(key, value, "test"), "message")
        await parts.app.initialize()
        await startup(parts.app, sender=False, jobs_on=False, connect_in_background=False)
        world = World(parts.engine, broker, clock, cal, parts.engine.alerts, parts.engine.settings,  # type: ignore[arg-type]
                      path)
        tg = Tg(parts, api, world, cfg)
        try:
            yield tg
        finally:
            await parts.app.shutdown()
            await parts.deps.service.cache.close()
            await parts.engine.stop()
            close_database(parts.db)
            if gateway is not None:
                await gateway.stop()
        if handler_errors is None:
            assert errors == [], f"handler errors: {errors!r}"
