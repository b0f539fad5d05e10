"""Campaign: random chat input from an admin with an open session: command arguments, typed
values, callback data (forged or mangled), odd unicode. Nothing crashes a handler, every command
gets a reply, and nothing invalid is stored. Scale with `QQQ_CAMPAIGN_CHAT` (default 300)."""

from __future__ import annotations

import os
import random
import string
from pathlib import Path

from storage import settings_store
from strategy.settings import SETTING_SPECS, settings_from_storage
from tests.tg_harness import ADMIN, open_tg

N = int(os.environ.get("QQQ_CAMPAIGN_CHAT", "300"))
ALPHABET = string.printable + "éß∞−–—％％٣😀\u200b\u202e"


def junk(rng: random.Random, n: int = 20) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, n)))


async def test_random_chat_input(tmp_path: Path) -> None:
    rng = random.Random(77)
    async for tg in open_tg(tmp_path):
        await tg.enroll_and_login()
        await tg.send(ADMIN, "/settings")
        real_buttons = [b["callback_data"] for row in tg.api.last(ADMIN).keyboard for b in row]
        counts = {"commands": 0, "callbacks": 0, "typed": 0}
        for _ in range(N):
            kind = rng.random()
            tg.api.clear()
            if kind < 0.6:
                cmd = rng.choice(["/set", "/trades", "/login", "/set delta", "/set tiers", "/set qty", "/pnl",
                                  "/status", "/set " + rng.choice(sorted(SETTING_SPECS))])
                await tg.send(ADMIN, f"{cmd} {junk(rng)}".strip())
                counts["commands"] += 1
                assert tg.api.replies(ADMIN) or tg.api.of("deleteMessage"), cmd  # always an answer
            elif kind < 0.85:
                data = rng.choice([junk(rng, 64), "s:" + junk(rng, 11), rng.choice(real_buttons)[:-1] + "x",
                                   rng.choice(real_buttons)])
                await tg.tap(ADMIN, data)
                counts["callbacks"] += 1
            else:
                await tg.send(ADMIN, junk(rng, 40) or "x")
                counts["typed"] += 1
            stored = settings_store.load_raw()
            _, bad = settings_from_storage(stored)
            assert bad == [], f"invalid setting stored: {bad} from {stored}"
        print(f"\nchat input campaign: {counts}; no handler failed, nothing invalid stored")
