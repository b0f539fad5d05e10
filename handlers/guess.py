"""What people type that is not a command here: commands of other trading bots (Freqtrade's
/balance, /profit, /forceexit…), mistyped ones, and plain words; each answered with the next step."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from handlers import format as fmt

# What people type, from other bots (Freqtrade's /balance, /profit, /forceexit…) or by guess, and the
# command that does it here.
GUESSES: dict[str, tuple[str, str]] = {
    "balance": ("account", "net liquidation, cash, buying power"),
    "profit": ("pnl", "realized and unrealized P&L"), "performance": ("pnl", "realized and unrealized P&L"),
    "forceexit": ("sell", "/sell N sells lot N now"), "forcesell": ("sell", "/sell N sells lot N now"),
    "fx": ("sell", "/sell N sells lot N now"), "exit": ("sell", "/sell N sells lot N now"),
    "stopbuy": ("pause", "/pause entries holds back new lots; exits go on"),
    "stopentry": ("pause", "/pause entries holds back new lots; exits go on"),
    "buy": ("enter", "buy a new lot now, after a confirm"), "forcebuy": ("enter", "buy a new lot now"),
    "forcelong": ("enter", "buy a new lot now"), "long": ("enter", "buy a new lot now"),
    "menu": ("help", "the commands"), "commands": ("help", "the commands"),
    "portfolio": ("positions", "the bot's lots and every other holding"),
    "holdings": ("positions", "the bot's lots and every other holding"),
    "count": ("positions", "the bot's lots"), "config": ("settings", "the settings"),
    "show_config": ("settings", "the settings"), "history": ("trades", "the last fills"),
    "unpause": ("resume", "automatic orders on again"), "startbuy": ("resume", "automatic orders on again"),
    "log": ("logs", "the last log lines"), "chart": ("pnl", "realized P&L with a chart"),
}


def guess_text(name: str, commands: Sequence[str]) -> str | None:
    """ "Did you mean /account?" for a command people type elsewhere, or one mistyped."""
    name = name.lower().lstrip("/").split("@", 1)[0]
    if name in GUESSES:
        target, what = GUESSES[name]
        return f"Did you mean /{target}? ({fmt.e(what)})"
    close = difflib.get_close_matches(name, list(commands), n=1, cutoff=0.7)
    return f"Did you mean /{close[0]}?" if close else None


def plain_text_hint(text: str, commands: Sequence[str], enrolled: bool) -> str:
    """The next step for a plain message that is not an awaited value: /start for someone not
    enrolled yet, the command a word names ("status" → /status), else where the commands are."""
    if not enrolled:
        return ("Hello! To begin, send /start: it sets up your authenticator app (two-factor), then "
                "/login CODE opens a session.")
    word = text.strip().lower().lstrip("/")
    if word and " " not in word:
        if word in commands:
            return f"Did you mean /{word}?"
        guess = guess_text(word, commands)
        if guess is not None:
            return guess
    return "Send a command; /help lists them."
