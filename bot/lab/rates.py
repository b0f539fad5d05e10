"""The interest rate on idle cash, as a user gives it: ``--cash-rate`` for the backtest and
``SIM_CASH_RATE`` for the sim broker. A constant (``0``, ``4%``, ``4``, ``0.04``) or ``PATH:COLUMN``,
a dated series in percent a year, daily or monthly (``../shared/data/tbill_3m.csv:TB3MS``)."""

from __future__ import annotations

from pathlib import Path

from broker.sim_market import CashRate, CsvError, load_rate_series_csv


class RateError(ValueError):
    """A cash rate the bot cannot use, with a message for the user."""


def parse_cash_rate(text: str) -> CashRate:
    """A constant is percent a year when it ends in % or is above 1 (``4`` is 4 %), else a fraction
    (``0.04``); a rate must be 0–100 %."""
    raw = text.strip()
    if not raw:
        return CashRate.none()
    try:
        value = float(raw.rstrip("%").strip())
    except ValueError:
        value = None
    if value is not None:
        rate = value / 100 if (raw.endswith("%") or value > 1) else value
        if not 0 <= rate < 1:
            raise RateError(f"'{raw}': an interest rate must be 0–100 % a year")
        return CashRate.constant(rate) if rate else CashRate.none()
    path_text, sep, column = raw.rpartition(":")
    if not sep or not path_text or not column:
        raise RateError(f"'{raw}' is not a rate (4%) or PATH:COLUMN of a dated series in percent a year")
    try:
        series = load_rate_series_csv(Path(path_text), column)
    except CsvError as e:
        raise RateError(str(e)) from e
    except OSError as e:
        raise RateError(f"cannot read {path_text}: {e.strerror or e}") from e
    return CashRate(series=series, label=f"{Path(path_text).name}:{column}")
