"""Campaign: the Bot API misbehaves (429 with retry_after, 5xx, timeouts, dropped connections)
while alerts are raised and commands arrive. No alert is lost or reordered, each reaches every
admin, and no failure stops the application. Iterations scale with `QQQ_CAMPAIGN_TG` (default 120
alerts and 60 commands)."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import httpx

from bot.alerts import EventKind
from storage.models import AlertRecord
from tests.tg_harness import ADMIN, ADMIN2, Tg, open_tg

N = int(os.environ.get("QQQ_CAMPAIGN_TG", "120"))


def faults(rng: random.Random, n: int) -> list[httpx.Response | Exception]:
    out: list[httpx.Response | Exception] = []
    for _ in range(n):
        kind = rng.choice(["429", "502", "500", "timeout", "drop", "ok"])
        if kind == "429":
            out.append(httpx.Response(429, json={"ok": False, "error_code": 429, "description": "Too Many Requests",
                                                 "parameters": {"retry_after": 0}}))
        elif kind in ("502", "500"):
            out.append(httpx.Response(int(kind), text="upstream trouble"))
        elif kind == "timeout":
            out.append(httpx.ReadTimeout("timed out"))
        elif kind == "drop":
            out.append(httpx.RemoteProtocolError("connection dropped"))
        else:
            out.append(httpx.Response(200, json={"ok": True, "result": {
                "message_id": 1, "date": 0, "chat": {"id": ADMIN, "type": "private"}, "text": ""}}))
    return out


async def drain_until_empty(tg: Tg, max_rounds: int = 10_000) -> int:
    rounds = 0
    while AlertRecord.select().where(AlertRecord.status == "pending").exists():
        await tg.parts.notifier.drain()
        rounds += 1
        assert rounds < max_rounds, "alerts never got out"
    return rounds


async def test_no_alert_is_lost_or_reordered_under_bot_api_faults(tmp_path: Path) -> None:
    rng = random.Random(11)
    errors: list[BaseException] = []
    async for tg in open_tg(tmp_path, handler_errors=errors):
        tg.api.failures = faults(rng, N * 2)
        for i in range(N):
            tg.parts.engine.emit(EventKind.ERROR, f"alert #{i:04d}")
            if rng.random() < 0.3:
                await tg.parts.notifier.drain()
        rounds = await drain_until_empty(tg)
        print(f"\n{N} alerts through {N * 2} injected faults: {rounds} drain rounds")
        for admin in (ADMIN, ADMIN2):
            seen = [int(m) for c in tg.api.of("sendMessage", admin, delivered=True)
                    for m in re.findall(r"alert #(\d{4})", c.text)]
            assert seen == list(range(N)), admin  # every alert, once, in order


async def test_commands_survive_bot_api_faults(tmp_path: Path) -> None:
    rng = random.Random(5)
    errors: list[BaseException] = []
    async for tg in open_tg(tmp_path, handler_errors=errors):
        await tg.send(ADMIN, "/start")
        tg.api.fail_methods = {"sendMessage", "sendPhoto"}
        tg.api.failures = faults(rng, N // 2)
        commands = ["/status", "/positions", "/account", "/trades", "/help", "/settings", "/pnl", "/check"]
        for _ in range(N // 2):
            await tg.send(ADMIN, rng.choice(commands))
        tg.api.failures = []
        tg.api.clear()
        await tg.send(ADMIN, "/status")
        assert "<b>Status</b>" in tg.api.last(ADMIN).text  # the application still answers
        print(f"\n{N // 2} commands under faults: {len(errors)} failed replies, each logged and alerted")
        assert all(type(e).__module__.startswith("telegram") for e in errors), errors
        errs = AlertRecord.select().where(AlertRecord.kind == "error").count()
        assert errs == len(errors)
