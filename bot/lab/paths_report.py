"""The report of a robustness run (`qqq-bot backtest --paths N`): the spread of each figure over
the paths as percentiles, the strategy beside QQQ buy-and-hold on the same paths, the JSON, and
the fan chart of equity."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from bot.lab.paths import PERCENTILES, WINDOW_YEARS, PathsOutcome, Plan
from strategy.metrics import percentile

# (label, key in a path's summary, as percent?, buy-and-hold key or None)
ROWS: tuple[tuple[str, str, bool, bool], ...] = (
    ("CAGR", "cagr", True, True),
    ("max drawdown", "max_drawdown_pct", False, True),
    (f"worst {WINDOW_YEARS}-year CAGR", "worst_5y_cagr", True, True),
    ("entries", "entries", False, False),
)


def _values(summaries: list[dict[str, Any]], key: str, buy_hold: bool = False) -> list[float]:
    out = []
    for s in summaries:
        v = (s["buy_hold"] if buy_hold else s)[key]
        if v is not None:
            out.append(float(v))
    return out


def figures(outcome: PathsOutcome) -> dict[str, Any]:
    """Percentiles of each figure over the finished paths, the strategy's and buy-and-hold's."""
    ss = outcome.summaries
    out: dict[str, Any] = {"paths": len(ss), "percentiles": list(PERCENTILES)}
    for _, key, _, has_bh in ROWS:
        vals = _values(ss, key)
        out[key] = [percentile(vals, q) for q in PERCENTILES] if vals else None
        if has_bh:
            bh = _values(ss, key, buy_hold=True)
            out[f"buy_hold_{key}"] = [percentile(bh, q) for q in PERCENTILES] if bh else None
    out["behind_buy_hold_share"] = sum(1 for s in ss if s["behind_buy_hold"]) / len(ss) if ss else None
    worst = _values(ss, "worst_5y_cagr")
    out["losing_5y_share"] = sum(1 for v in worst if v < 0) / len(worst) if worst else None
    bh_worst = _values(ss, "worst_5y_cagr", buy_hold=True)
    out["buy_hold_losing_5y_share"] = sum(1 for v in bh_worst if v < 0) / len(bh_worst) if bh_worst else None
    return out


def result_json(plan: Plan, outcome: PathsOutcome) -> dict[str, Any]:
    paths = [{k: v for k, v in s.items() if k not in ("equity", "buy_hold_equity")} for s in outcome.summaries]
    return {"figures": figures(outcome), "paths": paths,
            "failed": [{"path": p, "error": e} for p, e in sorted(outcome.failed.items())],
            "block_days": plan.spec.block_days, "seed": plan.spec.seed,
            "start": plan.days[0].isoformat(), "end": plan.days[-1].isoformat(), "sessions": len(plan.days),
            "workers": outcome.workers, "backend": outcome.backend, "wall_s": round(outcome.wall_s, 3),
            "resumed": outcome.resumed}


def text(plan: Plan, outcome: PathsOutcome) -> str:
    f = figures(outcome)
    spec = plan.spec
    n = f["paths"]
    head = (f"Robustness: {n} bootstrap paths of {plan.days[0]} → {plan.days[-1]} ({len(plan.days):,} sessions), "
            f"blocks of {spec.block_days} sessions, seed {spec.seed}")
    lines = [head,
             f"  data: {plan.context['data']}; iv: {plan.context['iv']}; capital {float(spec.capital):,.0f} USD"
             + (f"; settings: {' '.join(spec.overrides)}" if spec.overrides else ""),
             f"  run: {outcome.backend}, {outcome.workers} worker(s), {n - outcome.resumed} path(s) run now"
             f" ({outcome.resumed} resumed), {outcome.wall_s:.1f} s", ""]
    if not n:
        return "\n".join([*lines, "no path finished"])
    cols = "".join(f"{'p' + str(q):>10}" for q in PERCENTILES)
    lines.append(f"{'':34}{cols}")
    for label, key, pct, has_bh in ROWS:
        vals = f[key]
        lines.append(f"{label:34}" + "".join(f"{_fmt(v, key, pct):>10}" for v in (vals or [None] * 5)))
        if has_bh:
            bh = f[f"buy_hold_{key}"]
            lines.append(f"{'  QQQ buy & hold':34}" + "".join(f"{_fmt(v, key, pct):>10}" for v in (bh or [None] * 5)))
    lines.append("")
    lines.append(f"behind QQQ buy & hold at the end: {f['behind_buy_hold_share'] * 100:.0f} % of the paths")
    if f["losing_5y_share"] is not None:
        lines.append(f"a {WINDOW_YEARS}-year stretch that lost money: {f['losing_5y_share'] * 100:.0f} % of the paths "
                     f"(QQQ buy & hold: {f['buy_hold_losing_5y_share'] * 100:.0f} %)")
    lines += ["",
              "Each path is the real history cut into blocks of sessions and laid end to end in a random order "
              "(each day with its own VXN and rate); p5 is the value 95 % of the paths did better than (worse, for "
              "drawdown: p95). The paths share the history's days, so they are not independent futures: they show "
              "how much the figures rest on where the crashes fell."]
    return "\n".join(lines)


def _fmt(v: float | None, key: str, pct: bool) -> str:
    if v is None:
        return "—"
    if pct:
        return f"{v * 100:.2f}%"
    if key == "max_drawdown_pct":
        return f"{v:.1f}%"
    return f"{v:,.0f}"


def write_fan_chart(plan: Plan, outcome: PathsOutcome, path: Path) -> None:
    """Equity over time: the median path and the bands holding the middle 50 % and 90 % of the paths,
    beside buy-and-hold's median on the same paths (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.dates import date2num
    from matplotlib.figure import Figure

    ss = outcome.summaries
    days: list[date] = outcome.days
    x = [float(date2num(d)) for d in days]  # type: ignore[no-untyped-call]
    cols = list(zip(*(s["equity"] for s in ss), strict=True))
    bh_cols = list(zip(*(s["buy_hold_equity"] for s in ss), strict=True))
    band = {q: [percentile(c, q) for c in cols] for q in PERCENTILES}
    bh_median = [percentile(c, 50) for c in bh_cols]
    fig = Figure(figsize=(9, 4.8), dpi=110)
    ax = fig.add_subplot()
    ax.fill_between(x, band[5], band[95], color="#1f77b4", alpha=0.15, lw=0, label="strategy, 5–95 %")
    ax.fill_between(x, band[25], band[75], color="#1f77b4", alpha=0.3, lw=0, label="strategy, 25–75 %")
    ax.plot(x, band[50], color="#1f77b4", lw=1.4, label="strategy, median")
    ax.plot(x, bh_median, color="#888", lw=1.1, ls="--", label="QQQ buy & hold, median")
    ax.set_yscale("log")
    ax.set_ylabel("equity (USD, log scale)")
    ax.set_title(f"{len(ss)} bootstrap paths of {days[0]} → {days[-1]}, blocks of {plan.spec.block_days} sessions")
    ax.xaxis_date()
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, format="png")
