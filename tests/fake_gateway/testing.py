"""Pytest helpers for tests against the fake gateway: a guard that fails a test on any ERROR
record from `ib_async` (its decoder only *logs* a message it could not parse), a recording
listener, and a rig (market, clock, gateway, `IBBroker`) that is torn down cleanly."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest

from broker.clock import SimClock
from broker.ib import IBBroker
from tests.fake_gateway.market import FakeMarket
from tests.fake_gateway.server import FakeGateway, FillMode, session_now
from tests.harness import Recorder, bars_from_closes

START = date(2024, 3, 4)  # a Monday
CLOSES = [500.0, 502.0, 498.0, 505.0, 503.0, 507.0, 506.0, 510.0, 508.0, 509.0]
DAY = date(2024, 3, 12)  # the 7th session: a full history before it


class IbErrorGuard(logging.Handler):
    """Collects ERROR records of the ``ib_async`` loggers; a test declares the ones it expects."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.allowed: list[re.Pattern[str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def allow(self, *codes: int) -> None:
        """Expect ``Error <code>, reqId ...`` records (IB error messages ib_async logs as errors)."""
        for code in codes:
            self.allowed.append(re.compile(rf"^Error {code}, reqId"))

    def allow_text(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        out = []
        for r in self.records:
            msg = r.getMessage()
            if not any(p.search(msg) for p in self.allowed):
                out.append(f"{r.name}: {msg}")
        return out


@pytest.fixture
def ib_errors() -> Iterator[IbErrorGuard]:
    guard = IbErrorGuard()
    logger = logging.getLogger("ib_async")
    logger.addHandler(guard)
    try:
        yield guard
    finally:
        logger.removeHandler(guard)
    bad = guard.unexpected()
    assert not bad, "ib_async logged errors:\n" + "\n".join(bad)


@dataclass
class Rig:
    gw: FakeGateway
    broker: IBBroker
    clock: SimClock
    market: FakeMarket
    rec: Recorder

    async def settle(self) -> None:
        """A round trip: everything the gateway sent so far has been processed."""
        await self.broker.sync()


RigFactory = Callable[..., Awaitable[Rig]]


def fast_broker(port: int, clock: SimClock, client_id: int = 7, **kw: Any) -> IBBroker:
    opts: dict[str, Any] = {"connect_timeout": 2.0, "request_timeout": 2.0, "reconnect_initial_s": 0.01,
                            "reconnect_max_s": 0.05, "pacing_backoff_s": 0.01, "connectivity_grace_s": 0.5,
                            "calendar": None}
    opts.update(kw)
    return IBBroker("127.0.0.1", port, client_id, clock=clock, **opts)


@pytest.fixture
async def rig_factory(ib_errors: IbErrorGuard) -> AsyncIterator[RigFactory]:
    made: list[Rig] = []

    async def make(*, account: str = "DU1234567", fill: FillMode | None = None, connect: bool = True,
                   now: datetime | None = None, cash: Decimal = Decimal(100_000), mixed_account: bool = True,
                   **broker_kw: Any) -> Rig:
        market = FakeMarket(bars_from_closes(START, CLOSES))
        clock = SimClock(now or session_now(DAY))
        gw = await FakeGateway(market, now=clock.now, account=account, fill=fill, cash=cash,
                               mixed_account=mixed_account).start()
        broker = fast_broker(gw.port, clock, **broker_kw)
        rec = Recorder()
        broker.set_listener(rec)
        rig = Rig(gw, broker, clock, market, rec)
        made.append(rig)
        if connect:
            await broker.connect()
        return rig

    yield make
    for r in made:
        await r.broker.close()
        await r.gw.stop()
