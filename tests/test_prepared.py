"""The ledger's hot reads run SQL compiled once (storage.prepared): on a ledger filled by a real
backtest they return exactly what the plain peewee queries return."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from peewee import Database

from bot.lab.backtest import BacktestConfig, run_backtest
from storage import kv, ledger, prepared
from storage.db import close_database, open_database
from storage.models import Expiry, Fill, Lot, Order, Roll


@pytest.fixture(scope="module")
def backtest_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ledger of a year of synthetic backtest with entries, exits, rolls and recycling."""
    workdir = tmp_path_factory.mktemp("bt")
    cfg = BacktestConfig(synthetic_years=1, seed=3, overrides=["max_positions=2", "roll_drop=2", "entry_drop=0.8",
                                                              "recycle_threshold=100"])
    run = asyncio.run(run_backtest(cfg, workdir=workdir))
    assert run.result["summary"]["rolls"] > 0 and run.result["summary"]["qqqm_shares"] > 0
    return run.db_path


@pytest.fixture
def ledger_db(backtest_db: Path) -> Iterator[Database]:
    db = open_database(f"sqlite:///{backtest_db}")
    with db.atomic() as tx:  # a pending roll and working orders too; rolled back afterwards
        Roll.update(status="buy_pending").where(Roll.id == Roll.select().order_by(Roll.id.desc()).get().id).execute()
        Order.update(status="submitted").where(Order.id.in_([o.id for o in Order.select().limit(2)])).execute()
        kv.put("some:key", "v", datetime(2025, 1, 2, tzinfo=UTC))
        yield db
        tx.rollback()
    close_database(db)


def data(row: object) -> dict[str, object] | None:
    return None if row is None else dict(row.__data__)  # type: ignore[attr-defined]


def test_hot_reads_equal_the_plain_queries(ledger_db: Database) -> None:
    days = sorted({o.session_day for o in Order.select()} | {r.session_day for r in Roll.select()}
                  | {date(2000, 1, 3)})
    assert len(days) > 20
    for o in Order.select():
        assert data(ledger.order_by_ref(o.order_ref)) == data(Order.get_or_none(Order.order_ref == o.order_ref))
    assert ledger.order_by_ref("qqqbot-missing") is None
    for lot in Lot.select():
        assert data(ledger.lot_row(lot.id)) == data(Lot.get_or_none(Lot.id == lot.id))
    assert ledger.lot_row(10_000) is None
    assert ledger.open_lots() == tuple(ledger.lot_view(r) for r in Lot.select().where(Lot.qty_open > 0)
                                       .order_by(Lot.opened_at, Lot.id))
    unresolved = [data(o) for o in Order.select().where(Order.status.in_(ledger.ACTIVE)).order_by(Order.id)]
    assert [data(o) for o in ledger.unresolved_orders()] == unresolved and len(unresolved) == 2
    pending = [data(r) for r in Roll.select().where(Roll.status == "buy_pending").order_by(Roll.id)]
    assert [data(r) for r in ledger.rolls_with_pending_buy()] == pending and len(pending) == 1
    for day in days:
        assert ledger.entered_on(day) == Order.select().where(
            (Order.session_day == day) & (Order.purpose == "entry")
            & ((Order.filled_qty > 0) | Order.status.in_(ledger.ACTIVE))).exists()
        assert ledger.rolled_on(day) == any(r.status != "failed" for r in Roll.select().where(Roll.session_day == day))
        assert ledger.orders_sent_on(day) == Order.select().where(
            (Order.session_day == day) & (Order.status != "abandoned") & (Order.status != "pending_submit")).count()
        premium = Decimal(0)
        for f in (Fill.select(Fill.price, Fill.qty).join(Order)
                  .where((Order.session_day == day) & (Fill.sec_type == "OPT") & (Fill.side == "BUY"))):
            premium += f.price * f.qty * 100
        for o in Order.select().where((Order.session_day == day) & Order.status.in_(ledger.ACTIVE)
                                      & (Order.sec_type == "OPT") & (Order.side == "BUY")):
            premium += o.limit * max(o.qty - o.filled_qty, 0) * 100
        assert ledger.premium_bought_on(day) == premium
    events = [(f.time, f.realized_pnl) for f in Fill.select().where(
        (Fill.sec_type == "OPT") & Fill.realized_pnl.is_null(False))]
    events += [(x.recorded_at, x.realized_pnl) for x in Expiry.select()]
    assert sorted((e.time, e.pnl) for e in ledger.realized_option_events()) == sorted(events)
    assert ledger.realized_option_pnl() == sum((p for _, p in events), Decimal(0)) != 0
    qqqm = list(Fill.select().where((Fill.symbol == "QQQM") & (Fill.side == "BUY")))
    assert ledger.qqqm_bought() == (sum(f.qty for f in qqqm), sum(
        (f.price * f.qty + (f.commission or Decimal(0)) for f in qqqm), Decimal(0)))
    assert kv.get("some:key") == "v" and kv.get("no:such:key") is None


def test_a_query_whose_parameters_differ_is_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="parameters"):
        prepared.rows(Order, "test_mismatch", lambda: Order.select().where(Order.qty > 1), ("1",))  # int, not str
    with pytest.raises(ValueError, match="parameters"):
        prepared.rows(Order, "test_missing", lambda: Order.select().where(Order.qty > 1), ())


def test_prepared_writes_change_what_the_plain_updates_change(ledger_db: Database) -> None:
    at = datetime(2025, 3, 4, 15, 30, 15, tzinfo=UTC)
    order = Order.select().where(Order.status == "submitted").order_by(Order.id).get()
    ledger.set_limit(order.order_ref, Decimal("12.35"))
    ledger.mark_sent(order.order_ref, "b-77", at)
    row = Order.get_by_id(order.id)
    assert (row.limit, row.broker_order_id, row.sent_at, row.status) == (Decimal("12.35"), "b-77", at, "submitted")
    assert ledger.finish_order(order.order_ref, "cancelled", at, "timed out")
    assert not ledger.finish_order(order.order_ref, "filled", at)  # final once
    row = Order.get_by_id(order.id)
    assert (row.status, row.finished_at, row.message) == ("cancelled", at, "timed out")
    other = Order.select().where(Order.status == "filled").order_by(Order.id).get()
    ledger.mark_sent(other.order_ref, "b-78", at)  # never moves a final order back
    assert Order.get_by_id(other.id).status == "filled"
    for o in Order.select().where(Order.filled_qty > 0):  # filled_qty recounted from the fills
        Order.update(filled_qty=0).where(Order.id == o.id).execute()
        ledger._update_filled(Order.get_by_id(o.id))
        assert Order.get_by_id(o.id).filled_qty == o.filled_qty


def test_lot_and_roll_lookups_raise_like_get_by_id(ledger_db: Database) -> None:
    with pytest.raises(Lot.DoesNotExist):  # type: ignore[attr-defined]
        ledger._lot_by_id(10_000)
    with pytest.raises(Roll.DoesNotExist):  # type: ignore[attr-defined]
        ledger._roll_by_id(10_000)
    roll = Roll.select().get()
    assert data(ledger._roll_by_id(roll.id)) == data(roll)


@pytest.mark.parametrize("fallback", [False, True], ids=["prepared", "peewee-path"])
def test_create_and_save_write_what_peewee_writes(db: Database, monkeypatch: pytest.MonkeyPatch,
                                                  fallback: bool) -> None:
    if fallback:  # the path other databases take
        monkeypatch.setattr(prepared, "SqliteDatabase", type("NotThisDatabase", (), {}))
    at = datetime(2025, 3, 4, 15, 30, tzinfo=UTC)
    kw = {"symbol": "QQQ", "expiry": date(2026, 1, 16), "strike": Decimal("450"), "right": "C", "multiplier": 100,
          "opened_at": at}
    mine, theirs = prepared.create(Lot, "t_lot", **kw), Lot.create(**kw)
    assert mine.id == theirs.id - 1 and not mine.is_dirty() and not theirs.is_dirty()
    assert {k: v for k, v in data(Lot.get_by_id(mine.id)).items() if k != "id"} == {  # type: ignore[union-attr]
        k: v for k, v in data(Lot.get_by_id(theirs.id)).items() if k != "id"}  # type: ignore[union-attr]
    for lot in (mine, Lot.get_by_id(theirs.id)):  # one created here, one read back
        lot.qty_open += 2
        lot.avg_price = Decimal("12.3456")
        lot.closed_at = at
        prepared.save(lot, "t_save")
        assert not lot.is_dirty()
        row = Lot.get_by_id(lot.id)
        assert (row.qty_open, row.avg_price, row.closed_at, row.strike) == (2, Decimal("12.3456"), at, Decimal(450))
    okw = {"purpose": "entry", "session_day": date(2025, 3, 4), "lot": mine.id, "roll": None, "request": "{}",
           "side": "BUY", "sec_type": "OPT", "qty": 1, "limit": Decimal("1.25"), "status": "pending_submit",
           "created_at": at, "context": "{}"}
    order, other = prepared.create(Order, "t_order", order_ref="qqqbot-a", **okw), Order.create(order_ref="qqqbot-b",
                                                                                                   **okw)

    def same(row: object) -> dict[str, object]:
        return {k: v for k, v in (data(row) or {}).items() if k not in ("id", "order_ref")}

    assert same(order) == same(other) and same(Order.get_by_id(order.id)) == same(Order.get_by_id(other.id))
    assert order.message == "" and order.filled_qty == 0 and not order.is_dirty()
