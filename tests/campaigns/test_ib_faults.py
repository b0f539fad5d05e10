"""Campaign: IB Gateway faults during simulated sessions. The gateway drops every connection at
random moments (while orders work, between ticks, during reconciliation), refuses a few orders,
answers slowly: the bot reconnects, reconciles before trading again, alerts once per incident,
never crashes, and its ledger still equals the gateway's record.

Scale with `QQQ_CAMPAIGN_DROPS` (default 100 disconnects per run)."""

from __future__ import annotations

import os
import random
from datetime import datetime

from bot.engine.alerts import EventKind
from broker.base import ConnectionState
from storage import ledger
from storage.models import Fill
from tests.campaigns.test_ib_crash import PAIRS, check_against_gateway
from tests.fake_gateway.testing import IbErrorGuard, ib_errors
from tests.test_engine import bars_oc
from tests.test_ib_engine import WorldFactory, ib_world

__all__ = ["ib_errors", "ib_world"]  # fixtures
DROPS = int(os.environ.get("QQQ_CAMPAIGN_DROPS", "100"))


async def test_random_disconnects_and_rejections(ib_world: WorldFactory, ib_errors: IbErrorGuard) -> None:
    ib_errors.allow_text("Peer closed connection|Connection reset by peer|Socket disconnect|not connected")
    ib_errors.allow(201)
    rng = random.Random(99)
    bars = bars_oc(PAIRS)
    w = await ib_world(bars, settings={"max_positions": "1", "recycle_threshold": "100"})
    w.gw.latency = 0.002
    moments = 0
    drops = 0

    def chaos(now: datetime) -> None:
        nonlocal moments, drops
        moments += 1
        if drops < DROPS and w.broker.state == ConnectionState.CONNECTED and rng.random() < 0.35:
            drops += 1
            w.gw.drop_connections()
        if rng.random() < 0.01:
            w.gw.reject_next = (201, "Order rejected - reason: campaign")

    w.clock.add_listener(chaos)
    await w.run_days([b.day for b in bars])
    rounds = 0
    while drops < DROPS and rounds < 10 * DROPS:  # finish the quota after the last session
        rounds += 1
        await w.clock.sleep(5)
    w.clock.remove_listener(chaos)
    await w.clock.sleep(1)
    await check_against_gateway(w)
    downs = w.events(EventKind.DISCONNECT)
    ups = w.events(EventKind.RECONNECT)
    print(f"\ngateway faults: {drops} disconnects over {moments} moments; {len(downs)} disconnect and {len(ups)} "
          f"reconnect alerts; {Fill.select().count()} fills matched; "
          f"{len(w.events(EventKind.ORDER_REJECTED))} rejections")
    assert drops == DROPS
    assert len(downs) == drops  # once per incident, never per retry
    assert len(ups) >= drops
    assert not [t for t in w.events(EventKind.ERROR) if "Tick failed" in t], w.events(EventKind.ERROR)
    assert Fill.select().count() >= 6  # it kept trading between the faults


async def test_malformed_gateway_messages_change_nothing(ib_world: WorldFactory, ib_errors: IbErrorGuard) -> None:
    """Garbage from the socket (wrong field counts, non-numbers, unknown message ids) is logged by
    ib_async's decoder and dropped; the bot keeps trading and its ledger still equals the gateway's."""
    ib_errors.allow_text("Error handling fields|Error for|unknown message|could not convert|invalid literal")
    rng = random.Random(7)
    bars = bars_oc(PAIRS)
    w = await ib_world(bars, settings={"max_positions": "1", "recycle_threshold": "100"})
    sent = 0
    junk: list[list[object]] = [
        [3, "notanumber"], [3], [11, 1, 2], [1, 2, 1, "price?", 5, 0], [999, "x", "y"], [59, 1, "exec", "oops"],
        [4, 2, -1, 200], [9], [15], [5, 1], [61, 3], [2, 1, 2, 0, "size?"], [21, 1, 13, "nan", "inf", "z"],
    ]

    def garbage(now: datetime) -> None:
        nonlocal sent
        if rng.random() < 0.5:
            for s in list(w.gw.sessions):
                s.send(rng.choice(junk))  # type: ignore[arg-type]
                sent += 1

    w.clock.add_listener(garbage)
    await w.run_days([b.day for b in bars])
    w.clock.remove_listener(garbage)
    await w.clock.sleep(1)
    await check_against_gateway(w)
    print(f"\nmalformed messages: {sent} injected; {Fill.select().count()} fills matched")
    assert sent >= 100
    assert Fill.select().count() >= 6
    assert not [t for t in w.events(EventKind.ERROR) if "Tick failed" in t]


async def test_a_contract_that_vanishes_is_reported_and_nothing_breaks(ib_world: WorldFactory,
                                                                       ib_errors: IbErrorGuard) -> None:
    ib_errors.allow(200)
    bars = bars_oc([(500, 500), (490, 489), (491, 491), (575, 575)])
    w = await ib_world(bars, settings={"recycle_enabled": "off"})
    await w.run_days([b.day for b in bars[:2]])
    (lot,) = ledger.open_lots()
    w.gw.vanished.add(lot.contract.key)
    await w.run_days([b.day for b in bars[2:]])
    assert ledger.open_lots() == (lot,)  # no quote, no exit: nothing is sold blind
    skipped = [t for t in w.events(EventKind.SKIPPED) if "No quote for lot" in t]
    assert len(skipped) == 2  # once per session, not once per tick
    assert not [t for t in w.events(EventKind.ERROR) if "Tick failed" in t]
    await check_against_gateway(w)
