"""Charts for the chat, rendered off the event loop (matplotlib is slow and synchronous)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal


def _render_pnl(curve: Sequence[tuple[datetime, Decimal]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.dates import date2num
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.4), dpi=110)
    ax = fig.add_subplot()
    times = [float(date2num(t)) for t, _ in curve]  # type: ignore[no-untyped-call]
    values = [float(v) for _, v in curve]
    if len(times) == 1:
        times, values = times * 2, values * 2
    ax.step(times, values, where="post", color="#1f77b4")
    span = max(times[-1] - times[0], 1.0)  # days; the axis covers the data, with a margin
    ax.set_xlim(times[0] - span * 0.03, times[-1] + span * 0.03)
    ax.fill_between(times, values, 0, step="post", alpha=0.15,
                    color="#2ca02c" if values[-1] >= 0 else "#d62728")
    ax.axhline(0, color="#888", linewidth=0.8)
    ax.xaxis_date()
    ax.set_title("Realized option P&L (USD, net of commissions)")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


async def pnl_chart_png(curve: Sequence[tuple[datetime, Decimal]]) -> bytes:
    return await asyncio.to_thread(_render_pnl, list(curve))


def equity_curves_png(days: Sequence[str], curves: Sequence[tuple[str, Sequence[float]]],
                      buy_hold: Sequence[float]) -> bytes:
    """Equity curves (label, values per ISO day) beside QQQ buy & hold, for /backtest."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.dates import date2num
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=110)
    ax = fig.add_subplot()
    dates = [date.fromisoformat(d) for d in days]
    x = [float(date2num(d)) for d in dates]  # type: ignore[no-untyped-call]
    for label, values in curves:
        ax.plot(x, list(values), label=label, lw=1.2)
    ax.plot(x, list(buy_hold), label="QQQ buy & hold", lw=1.0, alpha=0.7, color="#888")
    ax.set_ylabel("equity (USD)")
    ax.set_title(f"Backtest {dates[0]} → {dates[-1]}")
    ax.xaxis_date()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
