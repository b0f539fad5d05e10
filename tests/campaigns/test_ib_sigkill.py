"""Campaign: SIGKILL real bot processes trading against the fake IB Gateway.

The gateway runs in this process (its own thread and event loop) and keeps its record of orders
and executions; the bot is `ib_worker.py`, a separate process on a simulated clock shared with the
gateway through a file. Each run kills the worker at random moments (wherever it is: sending,
repricing, recording a fill, rolling, recycling), restarts it on the same database, and lets the
last one finish. Then the gateway's record is the judge: no order sent twice, no execution missing
from the ledger or unknown to IB, open lots and QQQM shares equal to what the executions imply,
at most one entry per session, and a sound SQLite file.

Kills scale with `QQQ_CAMPAIGN_SIGKILL` (default 20 in CI; the in-process crash campaign covers
50+ kill points at precise steps)."""

from __future__ import annotations

import asyncio
import os
import queue
import random
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from storage import ledger
from storage.db import close_database, open_database
from storage.models import Fill, Order
from strategy.calendar import nyse
from strategy.model import OptionContract
from tests.campaigns.ib_worker import read_clock
from tests.campaigns.test_database import ledger_problems
from tests.campaigns.test_ib_crash import PAIRS
from tests.fake_gateway import FakeGateway, FakeMarket
from tests.test_engine import bars_oc

KILLS = int(os.environ.get("QQQ_CAMPAIGN_SIGKILL", "20"))
KILLS_PER_RUN = 4
WORKER = Path(__file__).with_name("ib_worker.py")
ROOT = Path(__file__).resolve().parents[2]


class GatewayThread:
    """A FakeGateway on its own loop in a thread, its clock read from the worker's clock file."""

    def __init__(self, clock_file: Path, start: datetime, seed: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        cal = nyse()
        market = FakeMarket(bars_oc(PAIRS), calendar=cal, seed=seed)

        def now() -> datetime:
            return read_clock(clock_file) or start

        async def make() -> FakeGateway:
            gw = await FakeGateway(market, now=now, cash=Decimal(100_000), mixed_account=False).start()
            gw.match_on_sync = True
            return gw

        self.gw = asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.gw.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)
        q.put("")

    threading.Thread(target=pump, daemon=True).start()
    return q


def _wait_for(q: queue.Queue[str], word: str, timeout: float) -> list[str]:
    seen: list[str] = []
    deadline = datetime.now() + timedelta(seconds=timeout)
    while datetime.now() < deadline:
        try:
            line = q.get(timeout=0.5)
        except queue.Empty:
            continue
        if line == "":
            break
        seen.append(line)
        if line.strip() == word:
            return seen
    raise AssertionError(f"worker never said {word!r}: {''.join(seen)[-3000:]}")


@pytest.fixture
def workdirs(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def check(gw: FakeGateway, db_path: Path) -> tuple[int, int]:
    assert ledger_problems(db_path) == []
    db = open_database(f"sqlite:///{db_path}")
    try:
        refs = [o.order_ref for o in gw.orders.values()]
        assert len(refs) == len(set(refs)), "an order was sent twice"
        assert set(refs) <= {o.order_ref for o in Order.select(Order.order_ref)}, "IB holds an unknown order"
        legs = [e for e in gw.executions if e.commission is not None]
        recorded = {f.exec_id for f in Fill.select(Fill.exec_id)}
        assert {e.exec_id for e in legs} == recorded, "a fill is lost or unknown"
        assert not gw.working_orders()
        held: Counter[str] = Counter()
        qqqm = 0
        for e in legs:
            sign = 1 if e.side == "BOT" else -1
            ins = e.contract.instrument
            if isinstance(ins, OptionContract):
                held[ins.key] += sign * e.qty
            elif ins is not None and ins.symbol == "QQQM":
                qqqm += sign * e.qty
        lots: Counter[str] = Counter()
        for lot in ledger.open_lots():
            lots[lot.contract.key] += lot.qty
        assert +held == +lots, (held, lots)
        assert qqqm == ledger.qqqm_bought()[0]
        per_day = Counter(o.session_day for o in Order.select().where((Order.purpose == "entry")
                                                                       & (Order.filled_qty > 0)))
        assert all(n <= 1 for n in per_day.values()), per_day
        return len(legs), len(refs)
    finally:
        close_database(db)


@pytest.mark.slow
def test_sigkill_real_bot_processes_against_the_gateway(workdirs: Path) -> None:
    rng = random.Random(31)
    runs = max(1, -(-KILLS // KILLS_PER_RUN))
    kills = fills = orders = 0
    cal = nyse()
    first = cal.session(bars_oc(PAIRS)[0].day)
    assert first is not None
    for run in range(runs):
        workdir = workdirs / f"run{run}"
        workdir.mkdir()
        gwt = GatewayThread(workdir / "clock", first.open - timedelta(minutes=1), seed=run)
        try:
            killed = 0
            while True:
                proc = subprocess.Popen([sys.executable, str(WORKER), str(workdir), str(gwt.gw.port)], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                q = _lines(proc)
                try:
                    _wait_for(q, "started", 60)
                    if killed < KILLS_PER_RUN and kills < KILLS:
                        try:
                            proc.wait(timeout=rng.uniform(0.005, 0.3))
                        except subprocess.TimeoutExpired:
                            proc.kill()  # SIGKILL, wherever it is
                            proc.wait()
                            killed += 1
                            kills += 1
                            continue
                    out = _wait_for(q, "done", 300)
                    assert proc.wait(timeout=30) == 0
                    decoder_errors = [line for line in out if "Error handling fields" in line]
                    assert decoder_errors == [], decoder_errors  # a message the client could not decode
                    break
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            gw = gwt.gw
            f, o = asyncio.run_coroutine_threadsafe(_check(gw, workdir / "bot.db"), gwt.loop).result(60)
            fills += f
            orders += o
        finally:
            gwt.close()
    print(f"\nSIGKILL campaign: {runs} runs, {kills} kills of a real bot process, {orders} orders and {fills} "
          "executions at the gateway, all matching the ledger")
    assert kills >= min(KILLS, runs)
    assert fills >= runs * 4


async def _check(gw: FakeGateway, db_path: Path) -> tuple[int, int]:
    """Runs on the gateway's loop so its record is read while nothing else touches it."""
    return check(gw, db_path)
