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

from bot.engine.alerts import EventKind
from storage.models import AlertRecord
from tests.tg_harness import ADMIN, ADMIN2, Tg, Unanswered, open_tg

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


def thread_faults(rng: random.Random, n: int) -> list[httpx.Response | Exception | Unanswered | None]:
    """Like ``faults``, for sends and edits alike; an answer is lost only after an edit Telegram
    carried out (a send whose answer is lost is sent again: at least once, by design), and calls in
    between are answered by the fake itself (so it keeps the messages' texts)."""
    out: list[httpx.Response | Exception | Unanswered | None] = []
    for fault in faults(rng, n):
        if isinstance(fault, httpx.Response) and fault.status_code == 200:
            out.append(Unanswered(httpx.ReadTimeout("timed out"), only="editMessageText") if rng.random() < 0.3
                       else None)
        else:
            out.append(fault)
    return out


async def test_order_threads_stay_one_message_each_under_bot_api_faults(tmp_path: Path) -> None:
    """Plain alerts and the alerts of several orders at once (sent, partial fills, filled, the
    summary), under faults on sends and edits: on each admin's screen every alert shows once, plain
    ones in order, and each order's alerts in order in one message of its own."""
    rng = random.Random(23)
    errors: list[BaseException] = []
    async for tg in open_tg(tmp_path, handler_errors=errors):
        await tg.parts.notifier.drain()  # start-up's own alerts
        tg.api.strict_edits = True
        tg.api.fail_methods = {"sendMessage", "editMessageText"}
        tg.api.failures = thread_faults(rng, N * 2)
        open_orders: dict[str, int] = {}  # order ref → steps so far
        stories: dict[str, int] = {}
        filled: dict[str, bool] = {}
        plain = 0
        for _ in range(N):
            roll = rng.random()
            if roll < 0.3 or (roll < 0.5 and len(open_orders) >= 3):
                tg.parts.engine.emit(EventKind.ERROR, f"alert #{plain:04d}")
                plain += 1
            elif roll < 0.5 or not open_orders:
                ref = f"qqqbot-{len(stories) + len(open_orders):04d}"
                open_orders[ref] = 1
                filled[ref] = False
                tg.parts.engine.emit(EventKind.ORDER_SENT, f"order {ref} step 0", order_ref=ref)
            else:  # partial fills, the fill, then the summary the engine raises right after it
                ref = rng.choice(sorted(open_orders))
                step = open_orders[ref]
                kind = (EventKind.RECYCLE if filled[ref] else
                        EventKind.ORDER_FILLED if step >= 3 or rng.random() < 0.4 else EventKind.ORDER_PARTIAL)
                filled[ref] = filled[ref] or kind == EventKind.ORDER_FILLED
                tg.parts.engine.emit(kind, f"order {ref} step {step}", order_ref=ref)
                open_orders[ref] = step + 1
                if kind == EventKind.RECYCLE:
                    stories[ref] = open_orders.pop(ref)
            if rng.random() < 0.3:
                await tg.parts.notifier.drain()
        stories.update(open_orders)
        rounds = await drain_until_empty(tg)
        edits = len(tg.api.of("editMessageText", delivered=True))
        print(f"\n{N} alerts, {len(stories)} orders through {N * 2} injected faults: {rounds} drain rounds, "
              f"{edits} edits")
        assert edits > 0
        for admin in (ADMIN, ADMIN2):
            screen = [m for m in tg.api.screen(admin) if "alert #" in m or "order qqqbot-" in m]
            seen = [int(m) for text in screen for m in re.findall(r"alert #(\d{4})", text)]
            assert seen == list(range(plain)), admin  # every plain alert, once, in order
            for ref, steps in stories.items():
                holding = [text for text in screen if f"order {ref} " in text]
                assert len(holding) == 1, (admin, ref, holding)  # one message per order
                shown = [int(s) for s in re.findall(rf"order {ref} step (\d+)", holding[0])]
                assert shown == list(range(steps)), (admin, ref)  # each step once, in order
                assert "alert #" not in holding[0] and len(set(re.findall(r"order (qqqbot-\d+)", holding[0]))) == 1


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
