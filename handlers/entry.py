"""The `qqq-bot` entry point. It imports the Telegram layer (`handlers/app.py`, python-telegram-bot,
APScheduler: about half a second) only for `qqq-bot run`, so `qqq-bot --help`, `backtest` and
`sweep` start without it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.app.config import AppConfig


def _run_bot(cfg: AppConfig) -> int:
    from handlers.app import run_bot

    return run_bot(cfg)


def main(argv: list[str] | None = None) -> int:
    """`qqq-bot`: the command line of `bot/app/cli.py`, with the Telegram bot as `qqq-bot run`."""
    from bot.app import cli

    return cli.main(argv, run_bot=_run_bot)


if __name__ == "__main__":
    raise SystemExit(main())
