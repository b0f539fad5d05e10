"""Benchmark: selecting the entry contract over IB, narrow window vs whole chain.

Against the fake IB Gateway (tests/fake_gateway) with injected one-way latency (default 50 ms per
message from the gateway), through the real ib_async client and `IBBroker`:

- narrow: `bot.actions.select_contract` — the expiry per min_dte, a window of ~8 strikes around
  the BSM estimate, widened only when the best sits at the window's edge;
- whole chain: every listed strike of the same expiry quoted, then the same strike rule.

    python bench/selection.py [--latency-ms 50]

Prints market-data requests (snapshots), other requests and wall time for both, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.engine.actions import select_contract
from broker.clock import SimClock
from broker.ib import IBBroker
from strategy.model import MarketSnapshot, OptionContract
from strategy.selection import Candidate, select_expiry, select_strike
from strategy.settings import StrategySettings
from tests.fake_gateway import FakeGateway, FakeMarket, session_now
from tests.harness import bars_from_closes

DAY = date(2024, 3, 12)


@dataclass
class _EngineView:
    """What `select_contract` reads of the engine."""

    broker: IBBroker
    iv_guess: float = 0.25


@dataclass
class Result:
    name: str
    mkt_data: int
    other: int
    seconds: float
    choice: str


def _counts(gw: FakeGateway) -> tuple[int, int]:
    md = gw.requests["mktData"]
    other = sum(v for k, v in gw.requests.items() if k not in ("mktData", "snapshot"))
    return md, other


async def _run(latency_ms: float) -> list[Result]:
    market = FakeMarket(bars_from_closes(date(2024, 3, 4), [500, 502, 498, 505, 503, 507, 506, 510, 508]))
    clock = SimClock(session_now(DAY))
    gw = await FakeGateway(market, now=clock.now, mixed_account=False).start()
    broker = IBBroker("127.0.0.1", gw.port, 11, clock=clock, request_timeout=30, connect_timeout=10)
    settings = StrategySettings()
    results = []
    try:
        await broker.connect()
        gw.latency = latency_ms / 1000
        qqq = await broker.quote("QQQ")
        snap = MarketSnapshot(clock.now(), DAY, qqq, await broker.prev_close("QQQ"))
        await broker.option_chain("QQQ")  # the chain request is the same for both; not measured
        spot = qqq.price
        assert spot is not None

        md0, other0 = _counts(gw)
        t0 = time.perf_counter()
        narrow = await select_contract(_EngineView(broker), snap, settings)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        md1, other1 = _counts(gw)
        results.append(Result("narrow window", md1 - md0, other1 - other0, t1 - t0, _describe(narrow)))

        t0 = time.perf_counter()
        chain = await broker.option_chain("QQQ")
        expiry = select_expiry(chain.expiries, DAY, settings.min_dte)
        assert expiry is not None
        quotes = await broker.option_quotes([OptionContract("QQQ", expiry, k, "C") for k in chain.strikes])
        whole = select_strike(quotes, spot, DAY, settings)
        t1 = time.perf_counter()
        md2, other2 = _counts(gw)
        results.append(Result(f"whole chain ({len(chain.strikes)} strikes)", md2 - md1, other2 - other1, t1 - t0,
                              _describe(whole)))
    finally:
        await broker.close()
        await gw.stop()
    return results


def _describe(choice: object) -> str:
    if isinstance(choice, Candidate):
        return f"{choice.contract.key} delta {choice.delta:.3f}"
    return f"none ({getattr(choice, 'reason', choice)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=float, default=50.0)
    args = ap.parse_args()
    results = asyncio.run(_run(args.latency_ms))
    print(f"entry-contract selection over IB (fake gateway, {args.latency_ms:.0f} ms latency per message)")
    print(f"{'':28} {'mkt data reqs':>14} {'other reqs':>11} {'wall s':>8}  choice")
    for r in results:
        print(f"{r.name:28} {r.mkt_data:>14} {r.other:>11} {r.seconds:>8.2f}  {r.choice}")
    if len(results) == 2 and results[0].seconds > 0:
        print(f"whole chain / narrow: {results[1].mkt_data / max(results[0].mkt_data, 1):.1f}x requests, "
              f"{results[1].seconds / results[0].seconds:.1f}x time")


if __name__ == "__main__":
    main()
