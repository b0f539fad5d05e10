"""Campaign: crash at every step of an order's life, against the fake IB Gateway.

Each run trades a few sessions (entries, take-profits, recycling, a roll) and "kills the process"
twice at random points: just before an order is sent, just after it is sent, or after IB filled it
but before the fill reached the ledger. A kill is a ``SimulatedCrash`` (a BaseException that no
``except Exception`` in the bot catches) or, for fills, a listener that silently loses them; then a
new engine on a new connection (same database, same gateway) reconciles and trades on. At the end
the gateway's own record is the judge: no order sent twice, no fill lost, no order the ledger does
not know, open lots and QQQM shares equal to what the executions imply.

Runs scale with `QQQ_CAMPAIGN_CRASH` (default 25 runs x 3 armed kills; at least 50 fire)."""

from __future__ import annotations

import os
import random
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from storage import ledger
from storage.db import close_database, open_database
from storage.models import Fill, Order, Roll
from tests.fake_gateway.testing import ib_errors
from tests.harness import SimulatedCrash
from tests.test_engine import bars_oc
from tests.test_ib_engine import IbWorld, WorldFactory, ib_world

__all__ = ["ib_errors", "ib_world"]  # fixtures
RUNS = int(os.environ.get("QQQ_CAMPAIGN_CRASH", "25"))
PAIRS = [(500.0, 500.0), (490.0, 489.0), (575.0, 575.0), (548.0, 546.0), (517.0, 514.0), (600.0, 600.0)]
MODES = ("before_send", "after_send", "fill_lost")
KILLS: Counter[str] = Counter()


def arm(w: IbWorld, mode: str, nth: int) -> None:
    """Make the world die at the ``nth`` order send (or fill) from now, in ``mode``."""
    count = [0]
    if mode in ("before_send", "after_send"):
        real = w.broker.place_order

        async def place(req: Any) -> str:
            count[0] += 1
            if count[0] == nth:
                KILLS[mode] += 1
                if mode == "before_send":
                    raise SimulatedCrash(mode)
                await real(req)
                w.broker.set_listener(None)  # the dead process hears nothing more
                raise SimulatedCrash(mode)
            return await real(req)

        w.broker.place_order = place  # type: ignore[method-assign]
        return
    real_exec = w.engine.on_execution
    dead = [False]

    def on_execution(ex: Any) -> None:
        count[0] += 1
        if count[0] >= nth:
            if not dead[0]:
                KILLS[mode] += 1
            dead[0] = True
            return  # lost: the process is dying
        real_exec(ex)

    def die_at_next_moment(now: datetime) -> None:
        if dead[0]:
            w.clock.remove_listener(die_at_next_moment)
            w.broker.set_listener(None)
            raise SimulatedCrash(mode)

    w.engine.on_execution = on_execution  # type: ignore[method-assign]
    w.engine.on_commission = lambda report: None if dead[0] else real_commission(report)  # type: ignore[method-assign]
    real_commission = type(w.engine).on_commission.__get__(w.engine)
    w.clock.add_listener(die_at_next_moment)


async def run_with_kills(w: IbWorld, bars_days: list[Any], rng: random.Random, kills: int) -> tuple[IbWorld, int]:
    armed = 0
    for d in bars_days:
        while True:
            if armed < kills and w.engine.ready and rng.random() < 0.5:
                arm(w, rng.choice(MODES), rng.randint(1, 3))
                armed += 1
            try:
                if d != w.market.path.first_day:
                    await w.run_session(d)
                await w.close_session(d)
                break
            except SimulatedCrash:
                w = await w.restart()
                await w.engine.start()  # reconcile before anything new is sent
    return w, armed


async def check_against_gateway(w: IbWorld) -> None:
    await w.engine.reconcile()
    gw = w.gw
    refs = [o.order_ref for o in gw.orders.values()]
    assert len(refs) == len(set(refs)), "an order was sent twice"
    known = {o.order_ref for o in Order.select(Order.order_ref)}
    assert set(refs) <= known, "IB holds an order the ledger does not know"
    leg_execs = {e.exec_id for e in gw.executions if e.commission is not None}
    recorded = {f.exec_id for f in Fill.select(Fill.exec_id)}
    assert leg_execs == recorded, f"lost {leg_execs - recorded}, unknown {recorded - leg_execs}"
    assert not gw.working_orders()
    held: Counter[str] = Counter()
    qqqm = 0
    for p in await w.broker.positions():
        if p.category == "option" and p.contract is not None:
            held[p.contract.key] += int(p.qty)
        elif p.symbol == "QQQM":
            qqqm += int(p.qty)
    lots: Counter[str] = Counter()
    for lot in ledger.open_lots():
        lots[lot.contract.key] += lot.qty
    assert +held == +lots, (held, lots)
    assert qqqm == ledger.qqqm_bought()[0]
    assert ledger.recycling_pool() >= -1  # never spent more than was earned (cents of rounding)
    per_day = Counter(o.session_day for o in Order.select().where((Order.purpose == "entry") & (Order.filled_qty > 0)))
    assert all(n <= 1 for n in per_day.values()), per_day


async def test_kill_at_random_order_steps_loses_nothing_doubles_nothing(ib_world: WorldFactory,
                                                                          tmp_path: Path) -> None:
    rng = random.Random(1234)
    total = fills = rolls = 0
    bars = bars_oc(PAIRS)
    for run in range(RUNS):
        db = open_database(f"sqlite:///{tmp_path / f'run{run}.db'}")  # a fresh ledger per run
        try:
            w = await ib_world(bars, settings={"max_positions": "1", "recycle_threshold": "100"}, seed=run)
            w, armed = await run_with_kills(w, [b.day for b in bars], rng, kills=3)
            total += armed
            await check_against_gateway(w)
            fills += Fill.select().count()
            rolls += Roll.select().where(Roll.status == "completed").count()
            await w.engine.stop()
        finally:
            close_database(db)
    print(f"\ncrash campaign: {RUNS} runs, {total} kill points armed, {sum(KILLS.values())} fired {dict(KILLS)}, "
          f"{fills} fills checked against the gateway, {rolls} completed rolls")
    assert fills >= RUNS * 4  # every run traded: entries, exits, recycling
    assert sum(KILLS.values()) >= 2 * RUNS  # most armed kills fire (>= 50 in CI)
