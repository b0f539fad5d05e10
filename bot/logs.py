"""Logging: one line per event on stdout, human-readable by default, JSON with LOG_FORMAT=json.

A redaction filter removes secrets from every record: the values registered at start-up (the bot
token, the TOTP key, passwords), anything shaped like a Telegram bot token, IB account ids (masked
to their last four digits: ``DU1234567`` → ``DU•••4567``) and the IB Gateway's address once
registered (``host:port`` → ``[IB Gateway]``), also in the logs of libraries such as ib_async."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections import deque
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

TOKEN_RE = re.compile(r"(?<!\d)\d{6,12}:[A-Za-z0-9_-]{30,}")
REDACTED = "***"
# IB account ids: U (individual), F (advisor), I (broker), each with a D in front for paper
IB_ACCOUNT_RE = re.compile(r"\b(D?[UFI])(\d{2,5})(\d{4})\b")
GATEWAY = "[IB Gateway]"


def mask_ib_accounts(text: str) -> str:
    """Every IB account id in ``text`` masked to its last four digits (``U•••4567``)."""
    return IB_ACCOUNT_RE.sub(lambda m: f"{m.group(1)}•••{m.group(3)}", text)


class RedactFilter(logging.Filter):
    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.secrets = [s for s in (secrets or []) if s and len(s) >= 6]
        self.endpoints: list[re.Pattern[str]] = []

    def add_endpoint(self, host: str, port: int) -> None:
        """Hide an address (IB Gateway's) as ``host:port`` and as Python's ``('host', port)``."""
        h, pt = re.escape(host), re.escape(str(port))
        pattern = re.compile(rf"{h}:{pt}\b|\(\s*'{h}',\s*{pt}\s*\)")
        if pattern.pattern not in [p.pattern for p in self.endpoints]:
            self.endpoints.append(pattern)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 6 and secret not in self.secrets:
            self.secrets.append(secret)

    def redact(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, REDACTED)
        for p in self.endpoints:
            text = p.sub(GATEWAY, text)
        return mask_ib_accounts(TOKEN_RE.sub(REDACTED, text))

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-12-01T19:30:00.123+00:00 INFO bot.engine.engine: ...``: the time carries its zone (UTC)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    def format(self, record: logging.LogRecord) -> str:
        # one line per event: tracebacks are folded onto the same line
        return super().format(record).replace("\n", " | ")


class RecentLines(logging.Handler):
    """The last lines of the log, as written (redacted), for /logs."""

    def __init__(self, size: int = 500) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a log line that cannot be formatted must not break logging
            self.handleError(record)


class SchedulerChatter(logging.Filter):
    """APScheduler's per-run lines ("Running job ...", "... executed successfully") are DEBUG, not
    INFO: the tick job runs every minute and would be most of the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


_FILTER = RedactFilter()
_RECENT = RecentLines()


def recent_lines(n: int) -> list[str]:
    """The last ``n`` log lines of this process, redacted as in the log, oldest first."""
    return list(_RECENT.lines)[-n:] if n > 0 else []


def redactor() -> RedactFilter:
    """The process-wide redaction filter (register secrets with ``redactor().add(value)``)."""
    return _FILTER


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("qqq-bot").critical("uncaught %s", kind.__name__, exc_info=(kind, value, tb))


def setup_logging(level: str = "INFO", fmt: str = "text", secrets: list[str] | None = None) -> None:
    for s in secrets or []:
        _FILTER.add(s)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_FILTER)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    _RECENT.setFormatter(TextFormatter())
    _RECENT.addFilter(_FILTER)
    root.addHandler(_RECENT)
    root.setLevel(level)
    for name in ("apscheduler.executors.default", "apscheduler.scheduler"):
        chatter = logging.getLogger(name)
        if not any(isinstance(f, SchedulerChatter) for f in chatter.filters):
            chatter.addFilter(SchedulerChatter())
    # httpx logs request URLs, which carry the bot token
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # python-telegram-bot logs every Bot API call with its parameters (message texts, the
    # enrollment caption with a TOTP secret) and every update (a /login code) at DEBUG
    # an uncaught exception goes through the same redacting handler, never raw to stderr
    sys.excepthook = _log_uncaught
    numeric = logging.getLevelName(level)
    at_least_info = max(logging.INFO, numeric if isinstance(numeric, int) else logging.INFO)
    for name in ("telegram.Bot", "telegram.ext.ExtBot", "telegram.ext.Updater", "telegram.ext.Application",
                 "peewee"):  # peewee logs SQL with its parameters at DEBUG
        logging.getLogger(name).setLevel(at_least_info)
