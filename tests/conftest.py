"""Shared fixtures: a real SQLite file per test, the real NYSE calendar."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from peewee import Database

from storage.db import close_database, open_database

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The calendar cache (bot/lab/calendar_cache.py) of the tests and of the worker processes they start:
# a folder of this test run's own, not the user's ~/.cache.
os.environ.setdefault("QQQ_BOT_CACHE_DIR", tempfile.mkdtemp(prefix="qqq-bot-test-cache-"))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 'bot.db'}")
    yield database
    close_database(database)


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not present (shared data lives outside the repository)")
    return path
