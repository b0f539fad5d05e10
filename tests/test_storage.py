"""The database: WAL SQLite under DATA_DIR, migrations once, exact money, unique execution ids,
settings with their change log."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from peewee import Database, IntegrityError

from bot.engine.alerts import EventKind, MemorySink
from bot.engine.settings_service import SettingsService
from broker.base import Execution, OrderLeg, OrderRequest
from storage import ledger
from storage.db import close_database, open_database
from storage.migrations import MIGRATIONS, current_version
from storage.models import Fill, Lot, Order, Setting, SettingChange
from strategy.model import OptionContract
from strategy.settings import PauseMode, SettingError

NOW = datetime(2025, 1, 6, 15, 0, tzinfo=UTC)
C = OptionContract("QQQ", date(2026, 1, 16), Decimal("450"))


def test_sqlite_file_is_wal_and_migrated_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd' / 'bot.db'}"
    db = open_database(url)
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert current_version(db) == len(MIGRATIONS)
    close_database(db)
    db = open_database(url)  # a restart applies nothing twice
    assert db.execute_sql("SELECT COUNT(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    close_database(db)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    db = open_database(f"sqlite:///{path}")
    close_database(db)
    con = sqlite3.connect(path)
    con.execute("INSERT INTO schema_version (version, applied_at) VALUES (99, '2030-01-01T00:00:00+00:00')")
    con.commit()
    con.close()
    with pytest.raises(RuntimeError, match="newer"):
        open_database(f"sqlite:///{path}")


def _order(ref: str = "qqqbot-t1") -> Order:
    req = OrderRequest(ref, (OrderLeg(C, "BUY"),), 2, Decimal("61.37"))
    return ledger.create_order(req, "entry", date(2025, 1, 6), NOW)


def test_money_is_exact(db: Database) -> None:
    o = _order()
    assert Order.get_by_id(o.id).limit == Decimal("61.37")
    raw = db.execute_sql("SELECT \"limit\" FROM \"order\"").fetchone()[0]
    assert raw == "61.37"


def test_order_refs_and_exec_ids_are_unique(db: Database) -> None:
    _order("qqqbot-x")
    with pytest.raises(IntegrityError):
        _order("qqqbot-x")
    ex = Execution("E1", "qqqbot-y", "1", C, "BUY", 1, Decimal("60"), NOW, Decimal("0.65"))
    _order("qqqbot-y")
    first = ledger.record_execution(ex, NOW)
    second = ledger.record_execution(ex, NOW)
    assert not first.duplicate and second.duplicate
    assert Fill.select().count() == 1
    with pytest.raises(IntegrityError):
        Fill.create(exec_id="E1", symbol="QQQ", sec_type="OPT", side="BUY", qty=1, price=Decimal(1), time=NOW,
                    recorded_at=NOW)


def test_fills_build_the_lot_and_late_commissions_count(db: Database) -> None:
    _order("qqqbot-b")
    ledger.record_execution(Execution("B1", "qqqbot-b", "1", C, "BUY", 1, Decimal("60"), NOW, None), NOW)
    ledger.record_execution(Execution("B2", "qqqbot-b", "1", C, "BUY", 1, Decimal("62"), NOW, Decimal("0.65")), NOW)
    lot = Lot.get()
    assert (lot.qty_open, lot.avg_price, lot.commission) == (2, Decimal(61), Decimal("0.65"))
    assert ledger.record_commission("B1", Decimal("1.00"))
    assert not ledger.record_commission("B1", Decimal("1.00"))  # once
    assert Lot.get().commission == Decimal("1.65")
    assert Order.get().status == "filled" and Order.get().filled_qty == 2
    sell = OrderRequest("qqqbot-s", (OrderLeg(C, "SELL"),), 2, Decimal("70"))
    ledger.create_order(sell, "take_profit", date(2025, 1, 6), NOW, lot_id=lot.id)
    ledger.record_execution(Execution("S1", "qqqbot-s", "2", C, "SELL", 2, Decimal("70"), NOW, Decimal("1.30")), NOW)
    lot = Lot.get()
    assert lot.qty_open == 0 and lot.exit_reason == "take_profit"
    assert lot.realized_pnl == Decimal(900) * 2 - Decimal("1.30") - Decimal("1.65")
    assert ledger.recycling_pool() == lot.realized_pnl


def test_settings_change_is_stored_with_who_and_survives_restart(db: Database, tmp_path: Path) -> None:
    alerts = MemorySink()
    svc = SettingsService(alerts, lambda: NOW)
    change = svc.update("delta", "0.7", "admin:42")
    assert not isinstance(change, SettingError)
    row = SettingChange.get()
    assert (row.key, row.old_value, row.new_value, row.who) == ("target_delta", "0.6", "0.7", "admin:42")
    assert alerts.kinds() == [EventKind.SETTINGS_CHANGED]
    assert SettingsService(MemorySink(), lambda: NOW).current.target_delta == Decimal("0.7")


def test_bad_setting_stores_nothing(db: Database) -> None:
    svc = SettingsService(MemorySink(), lambda: NOW)
    assert isinstance(svc.update("delta", "1.5", "admin:42"), SettingError)
    assert Setting.select().count() == 0 and SettingChange.select().count() == 0


def test_pause_survives_restart_and_is_alerted(db: Database) -> None:
    alerts = MemorySink()
    SettingsService(alerts, lambda: NOW).update("paused", "on", "admin:1")
    assert alerts.kinds() == [EventKind.PAUSED]
    # a plain pause is "pause all" (two modes since the entries-only pause)
    assert SettingsService(MemorySink(), lambda: NOW).current.paused is PauseMode.ALL
    SettingsService(alerts, lambda: NOW).update("pause", "entries", "admin:1")
    assert SettingsService(MemorySink(), lambda: NOW).current.paused is PauseMode.ENTRIES
    assert "exits keep running" in alerts.events[-1].text


def test_schema_v1_database_is_migrated_to_the_latest(tmp_path: Path) -> None:
    from storage.db import close_database, open_database
    from storage.models import AlertRecord

    url = f"sqlite:///{tmp_path / 'old.db'}"
    close_database(open_database(url))
    con = sqlite3.connect(tmp_path / "old.db")  # make it look like a v1 database
    con.execute("ALTER TABLE alert DROP COLUMN silent")
    con.execute("DROP INDEX alert_thread")
    con.execute("ALTER TABLE alert DROP COLUMN thread")
    con.execute("ALTER TABLE alert DROP COLUMN actor")
    con.execute("DROP TABLE expiry")
    con.execute("DROP TABLE journal")
    con.execute("DROP TABLE audit")
    con.execute("DELETE FROM schema_version WHERE version >= 2")
    con.execute("INSERT INTO alert (kind, text, created_at, status, attempts) VALUES ('error', 'old', "
                "'2024-01-01T00:00:00+00:00', 'sent', 1)")
    con.commit()
    con.close()
    db = open_database(url)
    try:
        old = AlertRecord.get()
        assert old.text == "old" and old.silent is False
        from storage.models import Expiry

        assert Expiry.select().count() == 0  # v3's table exists
        from storage.models import AuditEntry, JournalEntry

        assert old.actor is None and old.thread is None  # v4's columns
        assert JournalEntry.select().count() == 0 and AuditEntry.select().count() == 0  # and tables
    finally:
        close_database(db)
