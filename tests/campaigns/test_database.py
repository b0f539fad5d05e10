"""Campaign: the database under SIGKILL, and a database that refuses writes.

Each iteration starts a real bot process writing orders and fills to a WAL SQLite file, kills it
with SIGKILL at a random moment, and checks the file: `PRAGMA integrity_check` is ok and the
ledger is consistent (lots equal their fills, orders their fills, no fill without its order).
Iterations: `QQQ_CAMPAIGN_ITER` (default 6 in CI)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from peewee import Database, OperationalError

from bot.engine.alerts import EventKind
from storage.models import Fill, Order
from tests.harness import make_world
from tests.test_engine import bars_oc

WORKER = Path(__file__).with_name("db_worker.py")
ITERATIONS = int(os.environ.get("QQQ_CAMPAIGN_ITER", "6"))


def ledger_problems(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    problems = []
    ok = con.execute("PRAGMA integrity_check").fetchone()[0]
    if ok != "ok":
        problems.append(f"integrity_check: {ok}")
    for lot_id, opened, open_ in con.execute("SELECT id, qty_opened, qty_open FROM lot"):
        bought = con.execute("SELECT COALESCE(SUM(qty),0) FROM fill WHERE lot_id=? AND side='BUY'",
                             (lot_id,)).fetchone()[0]
        sold = con.execute("SELECT COALESCE(SUM(qty),0) FROM fill WHERE lot_id=? AND side='SELL'",
                           (lot_id,)).fetchone()[0]
        if bought != opened or opened - sold != open_:
            problems.append(f"lot {lot_id}: opened {opened}, open {open_}, fills +{bought} -{sold}")
    orphans = con.execute("SELECT COUNT(*) FROM fill WHERE order_id IS NULL").fetchone()[0]
    if orphans:
        problems.append(f"{orphans} fills without an order")
    for oid, qty, filled, req in con.execute('SELECT id, qty, filled_qty, request FROM "order"'):
        if '"legs": [{' in req and req.count('"action"') == 1:
            n = con.execute("SELECT COALESCE(SUM(qty),0) FROM fill WHERE order_id=?", (oid,)).fetchone()[0]
            if n != filled or filled > qty:
                problems.append(f"order {oid}: filled_qty {filled}, fills {n}, qty {qty}")
    dup = con.execute("SELECT COUNT(*) - COUNT(DISTINCT exec_id) FROM fill").fetchone()[0]
    if dup:
        problems.append(f"{dup} duplicate exec ids")
    con.close()
    return problems


@pytest.mark.slow
def test_sigkill_during_writes_leaves_a_sound_ledger(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    checked = 0
    for i in range(ITERATIONS):
        work = tmp_path / f"run{i}"
        work.mkdir()
        proc = subprocess.Popen([sys.executable, str(WORKER), str(work), str(i + 1)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"started"
        time.sleep(rng.uniform(1.0, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        db = work / "backtest.db"
        if not db.exists():
            continue
        problems = ledger_problems(db)
        assert problems == [], f"iteration {i}: {problems}"
        checked += 1
    print(f"database campaign: {ITERATIONS} SIGKILLs, {checked} ledgers checked, 0 problems")
    assert checked >= ITERATIONS // 2


async def test_read_only_database_stops_trading_with_a_clear_alert(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars)
    await w.close_session(bars[0].day)
    db.execute_sql("PRAGMA query_only = ON")  # the disk is full / the file became read-only
    await w.run_session(bars[1].day)
    db.execute_sql("PRAGMA query_only = OFF")
    assert await w.broker.executions() == [] and await w.broker.open_orders() == []  # nothing sent unwritten
    assert Order.select().count() == 0
    errors = w.events(EventKind.ERROR)
    assert len(errors) == 1, errors  # one alert for the incident, not one per tick
    assert "readonly database" in errors[0]


async def test_full_disk_stops_trading_with_a_clear_alert(db: Database) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await make_world(bars)
    await w.close_session(bars[0].day)
    pages = db.execute_sql("PRAGMA page_count").fetchone()[0]
    db.execute_sql(f"PRAGMA max_page_count = {pages}")  # the disk is full: no page may be added
    filler = 0
    with pytest.raises(OperationalError, match="full"):
        while True:  # use up the free space inside the file too
            filler += 1
            db.execute_sql("INSERT INTO key_value (key, value, updated_at) VALUES (?, ?, ?)",
                           (f"filler{filler}", "x" * 2000, "2024-01-01T00:00:00+00:00"))
    await w.run_session(bars[1].day)
    db.execute_sql("PRAGMA max_page_count = 1073741823")
    assert await w.broker.open_orders() == []  # nothing was left working unrecorded
    recorded = {f.exec_id for f in Fill.select()}
    assert {e.exec_id for e in await w.broker.executions()} <= recorded  # every fill is in the ledger
    errors = w.events(EventKind.ERROR)
    assert errors and len(errors) <= 2, errors  # reported, once per incident
    assert any("full" in e for e in errors), errors
