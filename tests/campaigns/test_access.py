"""Campaign: access. Random streams of commands, settings taps and login codes from strangers,
admins in groups, admins without a session, admins with expired sessions and admins brute-forcing
codes: no stranger ever gets a reply, no group gets data, nothing changes without a session, and a
lockout holds across a restart. Iterations scale with `QQQ_CAMPAIGN_ACCESS` (default 300)."""

from __future__ import annotations

import os
import random
from datetime import timedelta
from pathlib import Path

from telegram.ext import AIORateLimiter

from storage import settings_store
from storage.models import SettingChange
from tests.tg_harness import ADMIN, ADMIN2, STRANGER, Tg, bars_oc, open_tg

N = int(os.environ.get("QQQ_CAMPAIGN_ACCESS", "300"))
COMMANDS = ["/status", "/positions", "/account", "/trades 5", "/pnl", "/settings", "/set delta 0.7", "/pause",
            "/resume", "/check", "/start", "/help", "/login 123456", "/logout", "hello", "/set qty 2"]
PRIVATE_NOTE = "I only talk in a private chat with an admin."


async def test_random_access_streams(tmp_path: Path) -> None:
    rng = random.Random(2024)
    # Telegram's 20 messages/minute per group is the rate limiter's business, not this campaign's
    async for tg in open_tg(tmp_path, bars_oc([(500, 500), (490, 489)]), hook=lambda b: b.rate_limiter(
            AIORateLimiter(group_max_rate=10_000, max_retries=3))):
        await tg.world.run_days([tg.world.path.first_day + timedelta(days=1)])
        await tg.send(ADMIN, "/start")  # ADMIN enrolled, no session; ADMIN2 never enrolled
        buttons: list[str] = []
        counts = {"stranger": 0, "group": 0, "no_session": 0, "foreign_button": 0}
        for _ in range(N):
            who = rng.choice(["stranger", "stranger_group", "admin_group", "admin", "admin2"])
            text = rng.choice(COMMANDS)
            tg.api.clear()
            if who == "stranger":
                counts["stranger"] += 1
                if buttons and rng.random() < 0.3:
                    await tg.tap(STRANGER, rng.choice(buttons))
                else:
                    await tg.send(STRANGER, text)
                assert tg.api.replies(STRANGER) == [] and tg.api.of("sendPhoto") == []
            elif who == "stranger_group":
                counts["group"] += 1
                await tg.send(STRANGER, text, chat_type="supergroup", chat_id=-200)
                assert tg.api.replies(-200) == []
            elif who == "admin_group":
                counts["group"] += 1
                await tg.send(ADMIN, text, chat_type="group", chat_id=-100)
                assert all(c.text == PRIVATE_NOTE for c in tg.api.replies(-100))
            else:
                user = ADMIN if who == "admin" else ADMIN2
                counts["no_session"] += 1
                if buttons and rng.random() < 0.4:
                    data = rng.choice(buttons)
                    await tg.tap(user, data)
                    if user == ADMIN2:
                        counts["foreign_button"] += 1
                else:
                    await tg.send(user, text)
                for c in tg.api.replies(user):
                    for row in c.keyboard:
                        buttons.extend(b["callback_data"] for b in row if user == ADMIN)
            # only a pause, which lowers the risk, goes through without a session (an enrolled admin's, audited)
            raw = settings_store.load_raw()
            assert set(raw) <= {"paused"}, f"{who} changed a setting with {text!r}"
            changes = list(SettingChange.select())
            assert all(c.key == "paused" and c.who.startswith(f"telegram:{ADMIN} ") for c in changes), changes
            if rng.random() < 0.05:
                tg.clock.advance_to(tg.clock.now() + timedelta(minutes=rng.choice([1, 5, 16])))
        print(f"\naccess campaign: {N} actions {counts}; nothing leaked, nothing changed")


async def test_lockout_holds_across_a_restart(tmp_path: Path) -> None:
    secret = ""
    locked_at = None
    async for tg in open_tg(tmp_path):
        secret = await tg.enroll_and_login()
        await tg.send(ADMIN, "/logout")
        for _ in range(5):
            tg.clock.advance_to(tg.clock.now() + timedelta(seconds=3))
            await tg.send(ADMIN, "/login 000001" if tg.code(secret) != "000001" else "/login 000002")
        assert "locked" in tg.api.last(ADMIN).text.lower()
        locked_at = tg.clock.now()
    assert locked_at is not None
    # a new process on the same data directory (same TOTP key, same database)
    tg2: Tg
    async for tg2 in open_tg(tmp_path):
        tg2.clock.advance_to(locked_at + timedelta(minutes=1))
        await tg2.send(ADMIN, f"/login {tg2.code(secret)}")
        assert "locked" in tg2.api.last(ADMIN).text.lower()
        await tg2.send(ADMIN, "/set entry_drop 2")
        assert "open a session first" in tg2.api.last(ADMIN).text
        assert tg2.parts.engine.settings.current.entry_drop_pct == 1
