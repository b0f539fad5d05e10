"""Online, consistent SQLite backups (the sqlite3 backup API, safe while the bot writes) and the
daily rotation under DATA_DIR/backups."""

from __future__ import annotations

import sqlite3
from datetime import date, timedelta
from pathlib import Path


class BackupError(Exception):
    """A backup could not be made, with a message for the user."""


def sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        raise BackupError("backups are built in for the SQLite file only; back PostgreSQL up with pg_dump")
    return Path(url.removeprefix("sqlite:///"))


def backup_sqlite(src: Path, dest: Path) -> Path:
    """Copy the live database to ``dest`` consistently (WAL content included), then check it."""
    if not src.exists():
        raise BackupError(f"no database at {src}")
    if dest.is_dir():
        dest = dest / f"bot-{date.today().isoformat()}.db"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        target = sqlite3.connect(tmp)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal/-shm
            ok = target.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            target.close()
            source.close()
        if ok != "ok":
            raise BackupError(f"the backup failed its integrity check: {ok}")
        tmp.replace(dest)
    except sqlite3.Error as e:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"backup of {src} failed: {e}") from e
    return dest


def daily_backup(src: Path, backups_dir: Path, today: date, keep_days: int) -> Path:
    """Today's backup (once a day) and removal of those older than ``keep_days``."""
    dest = backups_dir / f"bot-{today.isoformat()}.db"
    if not dest.exists():
        backup_sqlite(src, dest)
    cutoff = today - timedelta(days=keep_days)
    for old in backups_dir.glob("bot-*.db"):
        try:
            day = date.fromisoformat(old.stem.removeprefix("bot-"))
        except ValueError:
            continue
        if day < cutoff:
            old.unlink()
    return dest
