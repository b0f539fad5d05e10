"""`qqq-bot calibrate QUOTES.csv`: fits the option market's parameters to real quotes and shows the
errors before and after (`strategy.calibration`); ``--save FILE`` writes them for ``--pricing`` and
``SIM_PRICING``.

The CSV (a header row, any column order, names case-insensitive): ``date`` (YYYY-MM-DD), ``expiry``
(YYYY-MM-DD), ``strike``, ``right`` (C or P, or call/put), ``bid``, ``ask``, and optionally
``underlying`` (QQQ's price when the quote was taken; without it, the day's close from ``--csv``)
and ``time`` (HH:MM New York, default 15:45). The 30-day index comes from ``--iv`` (as for a
backtest: VXN by date), the level known at the quote's time (the previous close before 16:00)."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path

from bot.lab.backtest import BacktestConfig, BacktestError, load_iv, load_pricing_inputs
from broker.sim_market import load_ohlc_csv
from broker.sim_options import YEAR_S, OptionPricer, expiry_close
from strategy.calendar import NY, nyse
from strategy.calibration import ErrorRow, Fit, RealQuote, error_table, fit
from strategy.option_market import MarketParams

REQUIRED = ("date", "expiry", "strike", "right", "bid", "ask")


class CalibrateError(ValueError):
    """Bad input, with a message for the user."""


@dataclass(frozen=True)
class Calibration:
    fit: Fit
    before: list[ErrorRow]
    after: list[ErrorRow]
    min_days: int


def _right(text: str) -> str:
    t = text.strip().upper()
    if t in ("C", "CALL"):
        return "C"
    if t in ("P", "PUT"):
        return "P"
    raise ValueError(f"'{text}' is not C or P")


def read_quotes(path: Path, cfg: BacktestConfig) -> list[RealQuote]:
    """The CSV's quotes, each with what the model knows at its time (CalibrateError if unusable)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise CalibrateError(f"cannot read {path}: {e.strerror or e}") from e
    if not rows:
        raise CalibrateError(f"{path}: the file is empty")
    header = [h.strip().lower() for h in rows[0]]
    return quotes_from_rows(header, rows[1:], cfg, str(path))


def read_recorded(cfg: BacktestConfig) -> list[RealQuote]:
    """The quotes the bot recorded at its broker (the open database's ``leaps_quote``), as
    `read_quotes` reads a CSV."""
    from storage import quotes as recorded_quotes

    rows = recorded_quotes.recorded()
    if not rows:
        raise CalibrateError("the database holds no recorded quotes yet (the bot records the LEAPS quotes it "
                             "asks IB for, with BROKER=ib)")
    header = list(rows[0])
    return quotes_from_rows(header, [[r[h] for h in header] for r in rows], cfg, "the recorded quotes")


def quotes_from_rows(header: list[str], rows: list[list[str]], cfg: BacktestConfig, where: str) -> list[RealQuote]:
    """Quote rows under ``header`` (date, expiry, strike, right, bid, ask[, underlying][, time]), each
    with what the model knows at its time."""
    path = where
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CalibrateError(f"{path}: missing column(s) {', '.join(missing)} (need {','.join(REQUIRED)}; "
                             "optional underlying, time)")
    col = {name: header.index(name) for name in header}
    closes: dict[date, float] = {}
    if "underlying" not in col:
        if cfg.csv is None:
            raise CalibrateError(f"{path}: no underlying column: give QQQ's daily bars with --csv")
        closes = {b.day: b.close for b in load_ohlc_csv(cfg.csv)}
    try:
        iv = load_iv(cfg)
        params, rate = load_pricing_inputs(cfg)
    except BacktestError as e:
        raise CalibrateError(str(e)) from e
    cal = nyse()
    pricer = OptionPricer(cal, iv, params=params, rate_series=rate)
    out: list[RealQuote] = []
    for n, row in enumerate(rows, start=2):
        if not any(c.strip() for c in row):
            continue
        try:
            cell = {name: row[i].strip() for name, i in col.items() if i < len(row)}
            day = date.fromisoformat(cell["date"][:10])
            expiry = date.fromisoformat(cell["expiry"][:10])
            at = time.fromisoformat(cell["time"]) if cell.get("time") else time(15, 45)
            strike, bid, ask = float(cell["strike"]), float(cell["bid"]), float(cell["ask"])
            right = _right(cell["right"])
            spot = float(cell["underlying"]) if cell.get("underlying") else closes.get(day)
        except (KeyError, ValueError) as e:
            raise CalibrateError(f"{path}, line {n}: {e}") from None
        if spot is None:
            raise CalibrateError(f"{path}, line {n}: no close for {day} in {cfg.csv}")
        when = datetime.combine(day, at, NY)
        m = pricer.state(when)
        T = (expiry_close(expiry) - when).total_seconds() / YEAR_S
        out.append(RealQuote(day, expiry, strike, right, bid, ask, spot, m.index, m.rate, m.dividend_yield, T))
    if not out:
        raise CalibrateError(f"{path}: no quotes")
    return out


def calibrate(quotes: list[RealQuote], start: MarketParams, min_days: int = 365) -> Calibration:
    result = fit(start, quotes)
    return Calibration(result, error_table(start, quotes, min_days=min_days),
                       error_table(result.params, quotes, min_days=min_days), min_days)


def format_calibration(c: Calibration) -> str:
    """The errors before and after, by delta band and expiry, and the parameters that changed."""
    lines = [f"Fitted to {c.fit.quotes} quotes; the table shows those ≥ {c.min_days} days from expiry.",
             "mid error: model mid ÷ real mid − 1 (median); spread: ask − bid in % of the mid (median)", "",
             f"{'group':24} {'quotes':>6}  {'mid error':>9} {'→':>1} {'after':>7}   {'real spread':>11}  "
             f"{'model':>6} {'→':>1} {'after':>6}"]
    for b, a in zip(c.before, c.after, strict=True):
        lines.append(f"{b.group:24} {b.count:>6}  {b.mid_error:>+8.1f}% → {a.mid_error:>+6.1f}%   "
                     f"{b.real_spread:>10.2f}%  {b.model_spread:>5.2f}% → {a.model_spread:>5.2f}%")
    lines += ["", f"{'parameter':20} {'before':>10} {'after':>10}"]
    before, after = c.fit.start.to_dict(), c.fit.params.to_dict()
    for k, v in after.items():
        if k != "listing" and v != before[k]:
            lines.append(f"{k:20} {before[k]:>10.4f} {v:>10.4f}")
    return "\n".join(lines)


def source_of(path: Path | None, count: int) -> dict[str, object]:
    """Where the fitted quotes came from, for the saved parameters' file."""
    if path is None:
        return {"quotes": "recorded by the bot (leaps_quote)", "count": count}
    return {"quotes": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16], "count": count}
