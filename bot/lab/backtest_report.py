"""The backtest's result (the `--json` schema), its readable report and its chart. Every figure is
derived from the run's own fill ledger and equity curve."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from storage import ledger
from storage.models import Fill, Lot, LotExit, Order, OrderPurpose, Roll, RollStatus
from strategy import metrics
from strategy.model import NY
from strategy.settings import StrategySettings, effective_settings_json


def _reason(order: Order | None, fill: Fill) -> str:
    if order is None:
        return "entry" if fill.side == "BUY" else "force_exit"
    if order.purpose == OrderPurpose.ROLL:
        return "roll_in" if fill.side == "BUY" else "roll_out"
    return str(order.purpose.value)


def trade_rows() -> list[dict[str, Any]]:
    """One row per fill, in time order (a partial fill is its own row)."""
    lots = {lot.id: lot for lot in Lot.select()}
    orders = {o.id: o for o in Order.select()}
    rows = []
    for f in ledger.fills_in_order():
        order = orders.get(f.order_id) if f.order_id else None
        ctx = json.loads(order.context) if order is not None else {}
        lot = lots.get(f.lot_id) if f.lot_id else None
        held = pnl_pct = None
        if lot is not None and f.side == "SELL":
            held = (f.time.astimezone(NY).date() - lot.opened_at.astimezone(NY).date()).days
            pnl_pct = float((f.price / lot.avg_price - 1) * 100) if lot.avg_price else None
        elif lot is not None:
            held = 0
        rows.append({
            "time": f.time.isoformat(), "lot_id": f.lot_id, "symbol": f.symbol, "sec_type": f.sec_type,
            "expiry": f.expiry.isoformat() if f.expiry else None,
            "strike": float(f.strike) if f.strike is not None else None, "right": f.right,
            "side": f.side, "qty": f.qty, "price": str(f.price), "commission": str(f.commission or Decimal(0)),
            "reason": _reason(order, f), "underlying_price": ctx.get("underlying_price"),
            "prev_close": ctx.get("prev_close"),
            "delta": ledger.fill_delta(f, ctx) if f.sec_type == "OPT" else None,
            "held_days": held, "pnl_pct": pnl_pct,
        })
    for x in ledger.expiries():  # a lot that expired unsold closes at its settlement value
        lot = lots[x.lot_id]
        rows.append({
            "time": x.recorded_at.isoformat(), "lot_id": lot.id, "symbol": lot.symbol, "sec_type": "OPT",
            "expiry": lot.expiry.isoformat(), "strike": float(lot.strike), "right": lot.right,
            "side": "SELL", "qty": x.qty, "price": str(x.settlement), "commission": "0",
            "reason": "expired", "underlying_price": float(x.underlying_close) if x.underlying_close else None,
            "prev_close": None, "delta": None,
            "held_days": (x.recorded_at.astimezone(NY).date() - lot.opened_at.astimezone(NY).date()).days,
            "pnl_pct": float((x.settlement / lot.avg_price - 1) * 100) if lot.avg_price else None,
        })
    rows.sort(key=lambda r: r["time"])
    return rows


@dataclass(frozen=True, slots=True)
class CashFigures:
    """Interest on idle cash over a run: what was credited, the cash at each close, the rate's source,
    and (for a series that ends before the run) from which day its last value was carried forward."""

    interest: Decimal = Decimal(0)
    cash: list[Decimal] = field(default_factory=list)
    rate_label: str = "none"
    carried_from: date | None = None
    carried_rate: float | None = None


def build_result(
    equity: list[tuple[date, Decimal]], closes: dict[date, float],
    capital: Decimal, settings: StrategySettings, money: CashFigures | None = None,
) -> dict[str, Any]:
    trades = trade_rows()
    values = [float(v) for _, v in equity]
    start, end = equity[0][0], equity[-1][0]
    closed = [float(lot.realized_pnl) for lot in Lot.select().where(Lot.closed_at.is_null(False))]
    shares, deployed = ledger.qqqm_bought()
    entries = Order.select().where((Order.purpose == OrderPurpose.ENTRY) & (Order.filled_qty > 0)).count()
    exits = Lot.select().where(Lot.exit_reason.in_([LotExit.TAKE_PROFIT, LotExit.FORCE_EXIT, LotExit.EXPIRY_GUARD,
                                                   LotExit.EXPIRED])).count()
    rolls = Roll.select().where(Roll.status == RollStatus.COMPLETED).count()
    bh = [capital * Decimal(str(closes[d])) / Decimal(str(closes[start])) for d, _ in equity]
    bh_values = [float(v) for v in bh]
    final = equity[-1][1]
    m = money or CashFigures()
    shares_of_cash = [float(c / v) * 100 for c, (_, v) in zip(m.cash, equity, strict=False) if v > 0]
    return {
        "summary": {
            "start": start.isoformat(), "end": end.isoformat(), "sessions": len(equity),
            "entries": entries, "exits": exits, "rolls": rolls,
            "realized_pnl": str(ledger.realized_option_pnl().quantize(Decimal("0.01"))),
            "win_rate": metrics.win_rate(closed),
            "max_drawdown_pct": metrics.max_drawdown_pct(values),
            "cagr": metrics.cagr(float(capital), float(final), start, end),
            "sharpe": metrics.sharpe(values),
            "qqqm_shares": shares, "qqqm_deployed": str(deployed.quantize(Decimal("0.01"))),
            "pool": str(ledger.recycling_pool().quantize(Decimal("0.01"))),
            "starting_capital": str(capital), "final_equity": str(final.quantize(Decimal("0.01"))),
            "interest": str(m.interest.quantize(Decimal("0.01"))),
            "avg_cash_pct": sum(shares_of_cash) / len(shares_of_cash) if shares_of_cash else 0.0,
            "cash_rate": m.rate_label,
            "cash_rate_carried_from": m.carried_from.isoformat() if m.carried_from else None,
            "buy_hold": {
                "cagr": metrics.cagr(float(capital), bh_values[-1], start, end),
                "max_drawdown_pct": metrics.max_drawdown_pct(bh_values),
                "final_equity": str(bh[-1].quantize(Decimal("0.01"))),
            },
        },
        "settings": effective_settings_json(settings),
        "trades": trades,
        "equity": [{"date": d.isoformat(), "equity": float(v)} for d, v in equity],
    }


def format_report(result: dict[str, Any]) -> str:
    """The readable report: the strategy beside QQQ buy-and-hold over the same period."""
    s = result["summary"]
    bh = s["buy_hold"]
    option_trades = [t for t in result["trades"] if t["sec_type"] == "OPT"]
    lines = [
        f"Backtest {s['start']} → {s['end']} ({s['sessions']} sessions), starting capital {s['starting_capital']} USD",
        "",
        f"{'':24}{'strategy':>16}{'QQQ buy & hold':>18}",
        f"{'final equity (USD)':24}{float(s['final_equity']):>16,.2f}{float(bh['final_equity']):>18,.2f}",
        f"{'CAGR':24}{s['cagr'] * 100:>15.2f}%{bh['cagr'] * 100:>17.2f}%",
        f"{'max drawdown':24}{s['max_drawdown_pct']:>15.2f}%{bh['max_drawdown_pct']:>17.2f}%",
        f"{'Sharpe':24}{s['sharpe']:>16.2f}",
        "",
        f"entries {s['entries']}, exits {s['exits']}, rolls {s['rolls']}, option fills {len(option_trades)}",
        f"win rate {s['win_rate'] * 100:.1f}% of closed lots, realized option P&L {float(s['realized_pnl']):,.2f} USD",
        f"QQQM bought by recycling: {s['qqqm_shares']} shares for {float(s['qqqm_deployed']):,.2f} USD; "
        f"pool left {float(s['pool']):,.2f} USD",
        f"interest on idle cash ({s['cash_rate']}): {float(s['interest']):,.2f} USD; cash held on average "
        f"{s['avg_cash_pct']:.1f} % of equity",
    ]
    if s.get("cash_rate_carried_from"):
        lines.append(f"the cash rate's series ends {s['cash_rate_carried_from']}: its last value is carried forward "
                     f"to {s['end']}")
    lines.append("buy & hold and the QQQM core are price returns: neither includes QQQ's dividends (the CSV's "
                 "Adj Close has them; about 0.5–1 % a year)")
    if result.get("pricing"):
        from bot.lab.pricing import one_line

        lines.append(one_line(result["pricing"]))
    exits = [t for t in option_trades if t["side"] == "SELL"][-10:]
    if exits:
        lines += ["", "last option sales:"]
        for t in exits:
            pnl = f"{t['pnl_pct']:+.1f}%" if t["pnl_pct"] is not None else ""
            lines.append(f"  {t['time'][:10]} lot #{t['lot_id']} {t['expiry']} {t['strike']:g}C x{t['qty']} "
                         f"@ {t['price']} {t['reason']} {pnl} held {t['held_days']}d")
    return "\n".join(lines)


def write_chart(result: dict[str, Any], positions: list[tuple[date, int]], buy_hold: list[float], path: Path) -> None:
    """Equity (strategy vs buy & hold) and open lots over time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [date.fromisoformat(e["date"]) for e in result["equity"]]
    eq = [e["equity"] for e in result["equity"]]
    cap = float(result["summary"]["starting_capital"])
    bh_final = float(result["summary"]["buy_hold"]["final_equity"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax1.plot(days, eq, label="strategy", lw=1.2)
    ax1.plot(days, buy_hold, label="QQQ buy & hold", lw=1.0, alpha=0.7)
    ax1.set_ylabel("equity (USD)")
    ax1.set_title(f"QQQ LEAPS strategy {days[0]} → {days[-1]} (buy & hold ends at {bh_final:,.0f} from {cap:,.0f})")
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.step([d for d, _ in positions], [n for _, n in positions], where="post", lw=1)
    ax2.set_ylabel("open lots")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
