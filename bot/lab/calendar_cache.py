"""The NYSE calendar of ``strategy.calendar.nyse`` kept in a small file for the day, so that a
command-line backtest does not import `exchange_calendars` (and pandas under it: about 0.6 s) on
every run. The file holds what ``nyse()`` built, session by session; it is keyed by the library's
version and today's date (the library's calendar runs to a year after today), written atomically,
and any problem reading or writing it falls back to ``nyse()`` itself."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import date, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from zoneinfo import ZoneInfo

from strategy.calendar import Session, SessionCalendar, nyse

log = logging.getLogger(__name__)

UTC = ZoneInfo("UTC")  # as exchange_calendars' sessions carry it
PREFIX = "xnys-"


def cache_dir() -> Path:
    """``QQQ_BOT_CACHE_DIR``, else ``~/.cache/qqq-bot``."""
    explicit = os.environ.get("QQQ_BOT_CACHE_DIR")
    return Path(explicit) if explicit else Path.home() / ".cache" / "qqq-bot"


def cache_file(folder: Path, today: date) -> Path:
    try:
        version = metadata.version("exchange_calendars")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return folder / f"{PREFIX}{version}-{today.isoformat()}.json"


def _encode(cal: SessionCalendar) -> str:
    rows = [[s.day.toordinal(), int(s.open.timestamp()), int(s.close.timestamp())]
            for s in cal.sessions_between(cal.first, cal.last)]
    return json.dumps(rows, separators=(",", ":"))


def _decode(text: str) -> SessionCalendar:
    rows = json.loads(text)
    return SessionCalendar([Session(date.fromordinal(d), datetime.fromtimestamp(o, UTC), datetime.fromtimestamp(c, UTC))
                            for d, o, c in rows])


@lru_cache(maxsize=1)
def cached_nyse(folder: Path | None = None, today: date | None = None) -> SessionCalendar:
    """``nyse()``'s sessions, from today's file when there is one, else built and saved."""
    folder = folder or cache_dir()
    path = cache_file(folder, today or date.today())
    try:
        return _decode(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, TypeError) as e:
        log.warning("calendar cache %s unreadable (%s): rebuilding it", path, e)
    cal = nyse()
    tmp: str | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".xnys-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_encode(cal))
        os.replace(tmp, path)
        tmp = None
        for old in folder.glob(f"{PREFIX}*.json"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as e:
        log.info("calendar cache not written to %s: %s", folder, e)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return cal
