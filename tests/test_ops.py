"""Operations: `qqq-bot health`, `qqq-bot db backup`, and logs that never carry a secret."""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from peewee import Database

from bot.app.cli import main
from bot.app.health import check_heartbeat, write_heartbeat
from bot.logs import JsonFormatter, RedactFilter
from storage.backup import daily_backup
from storage.db import close_database, open_database

NOW = datetime(2025, 1, 6, 15, 0, tzinfo=UTC)


def test_heartbeat_judgement(db: Database) -> None:
    assert not check_heartbeat(NOW, "sim").ok  # never ran
    write_heartbeat(NOW, "connected")
    assert check_heartbeat(NOW + timedelta(seconds=60), "sim").ok
    stale = check_heartbeat(NOW + timedelta(seconds=600), "sim")
    assert not stale.ok and "600 s old" in stale.message
    write_heartbeat(NOW, "down")
    assert check_heartbeat(NOW, "sim").ok
    down = check_heartbeat(NOW, "ib")
    assert not down.ok and "IB Gateway" in down.message
    write_heartbeat(NOW, "degraded")  # connected, only delayed market data: the gateway is up
    assert check_heartbeat(NOW, "ib").ok


def test_health_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["health"]) == 1
    assert capsys.readouterr().out.startswith("unhealthy: no heartbeat")
    db = open_database(f"sqlite:///{tmp_path / 'bot.db'}")
    write_heartbeat(datetime.now(UTC), "connected")
    close_database(db)
    assert main(["health"]) == 0
    assert capsys.readouterr().out.startswith("ok")
    monkeypatch.setenv("MAX_ORDERS_PER_DAY", "lots")
    assert main(["health"]) == 1
    assert "MAX_ORDERS_PER_DAY" in capsys.readouterr().out


def test_backup_is_consistent_and_self_contained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    db = open_database(f"sqlite:///{tmp_path / 'data' / 'bot.db'}")
    write_heartbeat(NOW, "connected")  # lives in the WAL until a checkpoint
    assert main(["db", "backup", str(tmp_path / "bk") + "/"]) == 0
    close_database(db)
    files = list((tmp_path / "bk").iterdir())
    assert [f.suffix for f in files] == [".db"]
    con = sqlite3.connect(files[0])
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT value FROM key_value WHERE key='heartbeat'").fetchone() is not None
    con.close()


def test_backup_of_a_missing_database_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'nope.db'}")
    monkeypatch.chdir(tmp_path)
    assert main(["db", "backup", str(tmp_path / "x.db")]) == 2
    assert "no database" in capsys.readouterr().err


def test_daily_backups_rotate(tmp_path: Path) -> None:
    src = tmp_path / "bot.db"
    sqlite3.connect(src).execute("CREATE TABLE t (x)").connection.close()
    folder = tmp_path / "backups"
    start = datetime(2025, 1, 1).date()
    for i in range(10):
        daily_backup(src, folder, start + timedelta(days=i), keep_days=3)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"bot-2025-01-{d:02d}.db" for d in (7, 8, 9, 10)]


def test_logs_redact_tokens_and_registered_secrets() -> None:
    f = RedactFilter(["hunter2-password"])
    rec = logging.LogRecord("x", logging.INFO, __file__, 1,
                            "POST https://api.telegram.org/bot123456789:AAH4f2Kjsl0dkfjs93jdkfjHJSKD8sjd9sk/getMe "
                            "pw=%s", ("hunter2-password",), None)
    f.filter(rec)
    text = JsonFormatter().format(rec)
    assert "AAH4f2" not in text and "hunter2" not in text
    assert json.loads(text)["message"].count("***") == 2


def test_an_uncaught_exception_is_logged_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    import logging
    import sys

    from bot.logs import setup_logging

    secret = "424242:AAUncaughtSecretToken_0123456789"
    setup_logging("INFO", "text", [secret])
    try:
        try:
            raise RuntimeError(f"the token `{secret}` was rejected")
        except RuntimeError as e:
            sys.excepthook(type(e), e, e.__traceback__)
        out = capsys.readouterr()
        assert "uncaught RuntimeError" in out.out and "was rejected" in out.out
        assert secret not in out.out + out.err and "UncaughtSecretToken" not in out.out + out.err
    finally:
        sys.excepthook = sys.__excepthook__
        logging.getLogger().handlers.clear()


def test_totp_cli_keygen_enroll_reset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.fernet import Fernet

    assert main(["totp", "keygen"]) == 0
    key = capsys.readouterr().out.strip()
    Fernet(key.encode())  # a valid key
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ADMIN_USER_IDS", "4242")
    monkeypatch.setenv("TOTP_ENCRYPTION_KEY", key)
    assert main(["totp", "enroll", "999"]) == 2  # not an admin
    assert "not in ADMIN_USER_IDS" in capsys.readouterr().err
    assert main(["totp", "enroll", "4242"]) == 0
    out = capsys.readouterr().out
    assert "otpauth://totp/" in out and "/login" in out and len(out.splitlines()) > 20  # the QR as text
    assert key not in out
    assert main(["totp", "reset", "4242"]) == 0
    assert "secret removed" in capsys.readouterr().out


@pytest.mark.parametrize("url", ["postgresql://user:pass@host/db", "mysql://h/db", "sqlite://", "sqlite:///"])
def test_only_sqlite_database_urls_start(url: str, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A DATABASE_URL that is not a SQLite file stops start-up with one line naming the variable."""
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["run", "--headless", "--max-ticks", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qqq-bot: configuration error: DATABASE_URL: only SQLite")
    with pytest.raises(ValueError, match="only SQLite"):
        open_database(url)


@pytest.mark.parametrize("ids", ["12,²", "١٢", "12,①"])
def test_admin_ids_in_other_digits_stop_start_up_with_one_line(ids: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """'²'.isdigit() is True but int('²') fails: such an id is refused at start-up, naming the variable."""
    from bot.app.config import ConfigError, load_config

    monkeypatch.setenv("ADMIN_USER_IDS", ids)
    with pytest.raises(ConfigError, match=r"^ADMIN_USER_IDS: '.+' is not a Telegram user id"):
        load_config()
