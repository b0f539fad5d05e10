"""Benchmark: handler time of /status, /positions, /orders and /why through the real Application (respx at the
Bot API transport, the sim broker, a real SQLite file), idle and while a tick is in flight whose
broker call hangs.

    python bench/commands.py [--n 200]

Prints p50/p95 per command and situation: idle, while a chat /backtest runs (in its own process),
and while a tick hangs on the broker. Target: p95 under 100 ms in each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from strategy.settings import SettingError
from tests.test_chat_backtest import write_csv
from tests.tg_harness import ADMIN, Tg, bars_oc, open_tg


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


async def measure(tg: Tg, command: str, n: int, gap_ms: float) -> list[float]:
    """Handler time of ``command`` sent ``n`` times, ``gap_ms`` apart (a burst faster than 30
    messages/s would measure the Bot API rate limiter, not the handler)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await tg.send(ADMIN, command)
        out.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(gap_ms / 1000)
    return out


async def backtest_running(tg: Tg, commands: tuple[str, ...], n: int, gap_ms: float,
                           rows: list[tuple[str, str, list[float]]]) -> None:
    """Commands while a chat backtest (10 years, current vs a change) runs in its own process."""
    from bot.lab.chat_backtest import parse_request

    request = parse_request(tg.parts.deps.service.current_settings(), ["10", "entry_drop=2"])
    assert not isinstance(request, SettingError)
    job = asyncio.create_task(tg.parts.deps.service.backtest(request, "bench"))
    await asyncio.sleep(0.2)
    samples: dict[str, list[float]] = {cmd: [] for cmd in commands}
    while not job.done() and min(len(v) for v in samples.values()) < n:
        for cmd in commands:  # alternately, so each is measured while the backtest runs
            samples[cmd] += await measure(tg, cmd, 1, gap_ms)
    rows += [("backtest running", cmd, values) for cmd, values in samples.items() if values]
    result = await job
    if not hasattr(result, "curves"):
        raise SystemExit(f"the backtest did not run: {result}")


async def main(n: int, gap_ms: float) -> None:
    bars = bars_oc([(500, 500), (490, 489), (489, 490)])
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BACKTEST_CSV"] = str(write_csv(Path(tmp) / "qqq.csv", years=12))
        os.environ["BACKTEST_IV"] = "0.22"
        async for tg in open_tg(Path(tmp), bars):
            await tg.world.run_days([b.day for b in bars[:2]])  # one lot held
            await tg.send(ADMIN, "/start")
            rows: list[tuple[str, str, list[float]]] = []
            commands = ("/status", "/positions", "/orders", "/why")
            for cmd in commands:
                rows.append(("idle", cmd, await measure(tg, cmd, n, gap_ms)))
            await backtest_running(tg, ("/status", "/positions"), n, gap_ms, rows)
            # a tick in flight whose broker call never returns
            never = asyncio.Event()

            async def hang(*args: Any, **kwargs: Any) -> Any:
                await never.wait()  # noqa: B023 - the one event of this run

            broker: Any = tg.world.broker
            broker.quote = hang
            broker.option_quotes = hang
            broker.positions = hang
            broker.account_summary = hang
            session = tg.world.cal.session(bars[2].day)
            assert session is not None
            tg.clock.advance_to(session.open + timedelta(minutes=30))
            tick = asyncio.create_task(tg.parts.engine.tick())
            await asyncio.sleep(0)
            for cmd in commands:
                rows.append(("tick hung on the broker", cmd, await measure(tg, cmd, n, gap_ms)))
            assert not tick.done()
            tick.cancel()
            never.set()
            try:
                await tick
            except asyncio.CancelledError:
                pass
            print(f"{'situation':<26}{'command':<12}{'n':>5}{'p50 ms':>10}{'p95 ms':>10}")
            for situation, cmd, values in rows:
                print(f"{situation:<26}{cmd:<12}{len(values):>5}{pct(values, 50):>10.1f}{pct(values, 95):>10.1f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--gap-ms", type=float, default=50.0, help="pause between commands (default 50 ms)")
    args = ap.parse_args()
    asyncio.run(main(args.n, args.gap_ms))
