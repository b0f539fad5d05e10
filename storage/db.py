"""Opening the database: one SQLite file in WAL mode, under DATA_DIR by default or at DATABASE_URL
(``sqlite:///PATH``). SQLite is the store for one bot on one VPS; nothing else is supported."""

from __future__ import annotations

import logging
from pathlib import Path

from peewee import Database, SqliteDatabase

from storage.models import ALL_MODELS, database_proxy

log = logging.getLogger(__name__)

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    "synchronous": "normal",
    "busy_timeout": 5000,
}


def database_url_for(data_dir: Path | str) -> str:
    """The default URL: one SQLite file under DATA_DIR."""
    return f"sqlite:///{Path(data_dir) / 'bot.db'}"


# A backtest's private ledger: a scratch file that only its one connection ever touches and that
# is worthless after a crash, so it keeps its rollback journal in memory and never waits for the
# disk. The live bot's database keeps WAL and ``synchronous=normal``.
SCRATCH_PRAGMAS = {
    "journal_mode": "memory",
    "synchronous": "off",
    "foreign_keys": 1,
}


def open_database(url: str, *, scratch: bool = False) -> Database:
    """Open (creating if needed) the database at ``url``, bind the models and apply migrations.

    Only ``sqlite:///path`` (WAL, foreign keys on) and ``sqlite:///:memory:`` are accepted; any
    other URL raises ValueError. ``scratch``: a private, disposable file (a backtest's ledger)
    opened with ``SCRATCH_PRAGMAS``: no WAL, no waiting for the disk; a crash may corrupt it."""
    from storage.migrations import migrate

    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise ValueError(f"only SQLite databases are supported (sqlite:///PATH), not {url.split(':', 1)[0]!r}")
    path = url.removeprefix("sqlite:///")
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    pragmas = dict(SCRATCH_PRAGMAS if scratch else SQLITE_PRAGMAS)
    if path == ":memory:":
        pragmas.pop("journal_mode")
    db = SqliteDatabase(path, pragmas=pragmas, check_same_thread=False)
    database_proxy.initialize(db)
    db.connect(reuse_if_open=True)
    migrate(db)
    return db


def close_database(db: Database) -> None:
    if not db.is_closed():
        db.close()


__all__ = ["ALL_MODELS", "close_database", "database_url_for", "open_database"]
