"""Versioned schema migrations, applied in order at start-up, each once, each in a transaction.

To change the schema, append a function to ``MIGRATIONS``; never edit one that has shipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from peewee import Database

from storage.models import ALL_MODELS, SchemaVersion

log = logging.getLogger(__name__)


def _v1_initial(db: Database) -> None:
    db.create_tables([m for m in ALL_MODELS if m is not SchemaVersion])


def _v2_alert_silent(db: Database) -> None:
    """alert.silent: an alert sent without sound (the gateway's nightly restart window)."""
    from peewee import BooleanField
    from playhouse.migrate import SchemaMigrator
    from playhouse.migrate import migrate as apply

    if "silent" not in {c.name for c in db.get_columns("alert")}:
        apply(SchemaMigrator.from_database(db).add_column("alert", "silent", BooleanField(default=False)))


def _v3_expiry(db: Database) -> None:
    """expiry: lots closed at their expiry instead of by a sale."""
    from storage.models import Expiry

    db.create_tables([Expiry], safe=True)


def _v4_journal_audit_alert_threads(db: Database) -> None:
    """journal (the decision journal), audit (manual actions from the chat), and alert.actor /
    alert.thread (who raised an alert by their own action; the order an alert belongs to)."""
    from peewee import BigIntegerField, CharField
    from playhouse.migrate import SchemaMigrator
    from playhouse.migrate import migrate as apply

    from storage.models import AuditEntry, JournalEntry

    db.create_tables([JournalEntry, AuditEntry], safe=True)
    columns = {c.name for c in db.get_columns("alert")}
    migrator = SchemaMigrator.from_database(db)
    if "actor" not in columns:
        apply(migrator.add_column("alert", "actor", BigIntegerField(null=True)))
    if "thread" not in columns:
        apply(migrator.add_column("alert", "thread", CharField(max_length=64, null=True)))
        apply(migrator.add_index("alert", ("thread",)))


def _v5_leaps_quotes(db: Database) -> None:
    """leaps_quote: the long-dated option quotes an IB account saw (for `calibrate --from-db`)."""
    from storage.models import LeapsQuote

    db.create_tables([LeapsQuote], safe=True)


MIGRATIONS: list[Callable[[Database], None]] = [_v1_initial, _v2_alert_silent, _v3_expiry,
                                                _v4_journal_audit_alert_threads, _v5_leaps_quotes]


def current_version(db: Database) -> int:
    if not db.table_exists(SchemaVersion._meta.table_name):
        return 0
    row = SchemaVersion.select().order_by(SchemaVersion.version.desc()).first()
    return row.version if row else 0


def migrate(db: Database) -> int:
    """Apply every pending migration; returns the schema version."""
    db.create_tables([SchemaVersion])
    version = current_version(db)
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {version} is newer than this program knows ({len(MIGRATIONS)}): "
            "upgrade the bot, or restore a matching backup"
        )
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        with db.atomic():
            step(db)
            SchemaVersion.create(version=number, applied_at=datetime.now(UTC))
        log.info("database migrated to schema version %d", number)
    return len(MIGRATIONS)
