"""The option market's parameters as a user gives them: ``--pricing FILE`` (written by
`qqq-bot calibrate --save FILE`) for `backtest`, `sweep` and `chain`, ``SIM_PRICING`` for the sim
broker, and ``--rate`` (a constant or a dated series) for the rate the options are priced with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bot.lab.rates import RateError, parse_cash_rate
from broker.sim_market import CashRate
from strategy.option_market import DEFAULT_PARAMS, MarketParams

FORMAT = "qqq-bot option market"
VERSION = 1


class PricingError(ValueError):
    """A parameters file or rate the bot cannot use, with a message for the user."""


def load_pricing(path: str | Path | None) -> MarketParams:
    """The parameters in ``path`` (a file `calibrate --save` wrote), or the defaults when empty."""
    if path is None or not str(path).strip():
        return DEFAULT_PARAMS
    p = Path(str(path).strip())
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise PricingError(f"cannot read {p}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise PricingError(f"{p}: not JSON ({e.msg}, line {e.lineno})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("params"), dict):
        raise PricingError(f"{p}: not a parameters file written by `qqq-bot calibrate --save`")
    if data.get("version") != VERSION:
        raise PricingError(f"{p}: version {data.get('version')} is not supported (this bot reads {VERSION})")
    try:
        return MarketParams.from_dict(data["params"])
    except (TypeError, ValueError) as e:
        raise PricingError(f"{p}: {e}") from e


def save_pricing(params: MarketParams, path: Path, source: dict[str, Any]) -> None:
    """Write ``params`` (and where they came from) for ``--pricing``/``SIM_PRICING``."""
    body = {"format": FORMAT, "version": VERSION, "params": params.to_dict(), "source": source}
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def parse_option_rate(text: str | None) -> CashRate | None:
    """``--rate``: empty for the parameters' constant, a constant (3.5%) or PATH:COLUMN (percent a
    year, read 32 days late so a monthly average is used once its month is over)."""
    if text is None or not text.strip():
        return None
    try:
        return parse_cash_rate(text)
    except RateError as e:
        raise PricingError(f"--rate {text}: {e}") from e


def describe(params: MarketParams, file: str | None, rate: CashRate | None) -> dict[str, Any]:
    """What a backtest's result says about the prices it used (``pricing`` in its JSON)."""
    return {"model": "calibrated (issue 19)", "file": str(file) if file else None,
            "rate_source": rate.label if rate is not None else f"constant {params.rate:.4g}",
            "params": params.to_dict()}


def one_line(pricing: dict[str, Any]) -> str:
    """The report's line about option prices."""
    p = pricing["params"]
    src = pricing["file"] or "defaults"
    return (f"option prices: calibrated model ({src}): long-run vol {p['long_run_vol'] * 100:.1f} %, reversion "
            f"{p['reversion']:.2f}/y, skew {p['skew']:.3f}, spread {p['spread_floor'] * 100:.2f} % of QQQ + "
            f"{p['spread_pct'] * 100:.2f} % of mid, rate {pricing['rate_source']}, dividend yield "
            f"{p['dividend_yield'] * 100:.2f} %")
