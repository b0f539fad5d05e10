"""Run the fake IB Gateway on the wall clock, for an end-to-end run of the bot with BROKER=ib:

    python -m tests.fake_gateway [--port 4002] [--latency-ms 0] [--live-account]

then start the bot with IB_HOST=127.0.0.1 IB_PORT=<port>. Prices follow a synthetic QQQ path over
today's dates; working orders are matched every second."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from broker.sim_market import synthetic_bars
from strategy.calendar import nyse
from tests.fake_gateway.market import FakeMarket
from tests.fake_gateway.server import FakeGateway


async def serve(port: int, latency_ms: float, account: str) -> None:
    cal = nyse()
    today = datetime.now(UTC).date()
    sessions = cal.sessions_between(today - timedelta(days=400), today + timedelta(days=60))
    market = FakeMarket(synthetic_bars(sessions, 1, s0=480.0), calendar=cal)
    gw = await FakeGateway(market, account=account).start(port)
    gw.latency = latency_ms / 1000
    print(f"fake IB Gateway on 127.0.0.1:{gw.port} (account {account}); Ctrl-C to stop", flush=True)
    try:
        while True:
            await asyncio.sleep(1.0)
            gw.match()
    finally:
        await gw.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description="fake IB Gateway (TWS API, server version 178)")
    ap.add_argument("--port", type=int, default=4002)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--live-account", action="store_true", help="pretend to be a live account (U...)")
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.latency_ms, "U1234567" if args.live_account else "DU1234567"))


if __name__ == "__main__":
    main()
