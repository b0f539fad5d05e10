"""The sweep's report: the top configurations beside buy-and-hold, the walk-forward comparison and
its rank correlation in plain words, and the heatmap of a two-key grid."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from bot.lab.sweep import Plan, Result, SweepOutcome, calmar
from strategy import metrics
from strategy.settings import SETTING_SPECS

LABELS = {"calmar": "Calmar", "cagr": "CAGR", "sharpe": "Sharpe", "max_drawdown": "max drawdown"}
WIDTH = 100  # the report fits a 100-column terminal
PART_TITLES = {"summary": "whole period", "in_sample": "in-sample", "out_of_sample": "out-of-sample"}


def metric(summary: dict[str, Any], name: str) -> float:
    if name == "calmar":
        return calmar(summary)
    if name == "max_drawdown":
        return float(summary["max_drawdown_pct"])
    return float(summary[name])


def better_first(name: str) -> int:
    """Sort sign: a smaller drawdown is better, a larger anything else."""
    return 1 if name == "max_drawdown" else -1


def rho_sentence(rho: float | None, n: int, name: str) -> str:
    """What the rank correlation says, and what it cannot."""
    label = LABELS[name]
    if rho is None:
        return (f"Rank correlation: not defined ({n} configuration(s) with both sides, or every one tied on "
                f"{label}); nothing can be said about how the in-sample ranking carried over.")
    if rho >= 0.7:
        words = "the in-sample ranking largely held in what followed"
    elif rho >= 0.3:
        words = "the in-sample ranking held only partly in what followed"
    elif rho > -0.3:
        words = "the in-sample ranking says little about what followed"
    else:
        words = "the in-sample ranking tended to reverse in what followed"
    chance = 1.96 / math.sqrt(n - 1)
    where = "beyond" if abs(rho) > chance else "within"
    return (f"By {label}, {words} (Spearman ρ = {rho:.2f} between the in-sample and out-of-sample ranks). With "
            f"{n} configurations, chance alone gives |ρ| above {chance:.2f} about one time in 20 (normal "
            f"approximation), and this ρ is {where} that; neighbouring grid points behave alike, so the real bar "
            "is higher still. ρ compares orders only: it does not say whether any configuration beat "
            "buy-and-hold, how far apart they are, or whether later years will rank them the same way. This is "
            "one split of one history.")


def key_label(key: str) -> str:
    spec = SETTING_SPECS[key]
    return spec.aliases[0] if spec.aliases else key


def value_label(key: str, value: str) -> str:
    return f"{value}%" if SETTING_SPECS[key].unit == "%" else value


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def _dd(x: float) -> str:
    return f"{x:.1f}%"


def _num(x: float | None) -> str:
    if x is None:
        return "–"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.2f}"


class Report:
    def __init__(self, plan: Plan, outcome: SweepOutcome, rank_by: str, top: int) -> None:
        self.plan = plan
        self.outcome = outcome
        self.rank_by = rank_by
        self.top = top
        self.rank_part = "in_sample" if plan.split else "summary"
        needed = [p.part for p in plan.periods]
        self.ok = [r for r in outcome.results if r.error is None and all(r.part(p) is not None for p in needed)]
        sign = better_first(rank_by)
        self.ranked = sorted(self.ok, key=lambda r: sign * metric(self._part(r, self.rank_part), rank_by))
        self.rho: float | None = None
        self.oos_rank: dict[int, int] = {}
        if plan.split:
            ins = [metric(self._part(r, "in_sample"), rank_by) for r in self.ok]
            oos = [metric(self._part(r, "out_of_sample"), rank_by) for r in self.ok]
            self.rho = metrics.spearman(ins, oos)
            by_oos = sorted(range(len(self.ok)), key=lambda i: sign * oos[i])
            self.oos_rank = {id(self.ok[i]): n + 1 for n, i in enumerate(by_oos)}

    @staticmethod
    def _part(r: Result, part: str) -> dict[str, Any]:
        value = r.part(part)
        assert value is not None
        return value

    def buy_hold(self, part: str) -> dict[str, float | None]:
        """Buy-and-hold's figures over a part's period (Sharpe from the same closes the backtest uses)."""
        period = next(p for p in self.plan.periods if p.part == part)
        closes = [b.close for b in self.plan.bars if period.first <= b.day <= period.last]
        any_run = next((r.part(part) for r in self.ok), None)
        bh = any_run["buy_hold"] if any_run else None
        out: dict[str, float | None] = {"sharpe": metrics.sharpe(closes), "cagr": None, "max_drawdown": None,
                                        "calmar": None}
        if bh is not None:
            out["cagr"] = float(bh["cagr"])
            out["max_drawdown"] = float(bh["max_drawdown_pct"])
            out["calmar"] = calmar({"cagr": bh["cagr"], "max_drawdown_pct": bh["max_drawdown_pct"]})
        return out

    def period_text(self, part: str) -> str:
        p = next(p for p in self.plan.periods if p.part == part)
        return f"{p.first} → {p.last} ({p.sessions:,} sessions)"

    # -- text

    def text(self) -> str:
        plan, o = self.plan, self.outcome
        keys = [a.key for a in plan.axes]
        ctx = plan.context
        lines = [
            f"Sweep: {len(plan.configs)} configurations of {' × '.join(keys)}",
            *([f"  fixed: {' '.join(plan.fixed)}"] if plan.fixed else []),
            f"  data: {ctx['data']}, {self.period_text('summary')}",
            f"  iv: {ctx['iv']}; capital {float(ctx['capital']):,.0f} USD; seed {ctx['seed']}",
            f"  run: {o.backend}, {o.workers} worker(s), {len(plan.configs) - o.skipped} configurations run now "
            f"({(len(plan.configs) - o.skipped) * len(plan.periods)} backtests)"
            + (f", {o.skipped} from --out" if o.skipped else "") + f", {o.wall_s:.1f} s",
            "",
        ]
        lines = [wrapped for line in lines for wrapped in (textwrap.wrap(line, WIDTH, subsequent_indent="    ")
                                                           or [""])]
        labels = [f"{key_label(k)} = {k}" for k in keys if key_label(k) != k]
        legend = ["(" + ", ".join(labels) + ")"] if labels else []
        if not self.ranked:
            lines.append("No configuration finished.")
        elif plan.split:
            lines += self._split_tables(legend)
        else:
            lines += self._table() + legend
        failed = [r for r in o.results if r.error is not None]
        if failed:
            lines += ["", f"{len(failed)} configuration(s) failed and are not ranked:"]
            lines += [f"  {r.config.label()}: {r.error}" for r in failed]
        lines += ["", textwrap.fill(
            "Simulated: one intraday path per day built from daily OHLC, option prices from a model and an IV "
            "input, not a real option chain; the best of many configurations on one history flatters itself.",
            WIDTH)]
        return "\n".join(lines)

    def _lead(self) -> tuple[list[int], int]:
        widths = [max(len(key_label(a.key)), *(len(value_label(a.key, v)) for v in a.values)) for a in self.plan.axes]
        lead = 3 + sum(w + 2 for w in widths)
        return widths, max(lead, len("QQQ buy & hold") + 1)

    def _lead_cells(self, widths: list[int], lead: int, rank: str, r: Result | None) -> str:
        if r is None:
            return f"{rank:<{lead}}"
        cells = f"{rank:>3}" + "".join(f"{value_label(k, v):>{w + 2}}" for (k, v), w in zip(r.config.grid, widths,
                                                                                              strict=True))
        return f"{cells:<{lead}}"

    def _head(self, widths: list[int], lead: int) -> str:
        cells = f"{'#':>3}" + "".join(f"{key_label(a.key):>{w + 2}}" for a, w in zip(self.plan.axes, widths,
                                                                                    strict=True))
        return f"{cells:<{lead}}"

    def _table(self) -> list[str]:
        rows = self.ranked[: self.top]
        widths, lead = self._lead()
        head = (f"{self._head(widths, lead)}{'CAGR':>9}{'max DD':>8}{'Sharpe':>8}{'Calmar':>8}{'entries':>9}"
                f"{'realized P&L':>14}{'QQQM':>7}")
        out = [f"Top {len(rows)} of {len(self.ok)} by {LABELS[self.rank_by]}, {self.period_text('summary')}:", head]
        for n, r in enumerate(rows, start=1):
            s = self._part(r, "summary")
            out.append(f"{self._lead_cells(widths, lead, str(n), r)}{_pct(s['cagr']):>9}{_dd(s['max_drawdown_pct']):>8}"
                       f"{_num(s['sharpe']):>8}{_num(calmar(s)):>8}{s['entries']:>9}"
                       f"{float(s['realized_pnl']):>14,.0f}{s['qqqm_shares']:>7}")
        out.append(self._bh_line(widths, lead, "summary"))
        return out

    def _bh_line(self, widths: list[int], lead: int, *parts: str) -> str:
        cells = ""
        for part in parts:
            bh = self.buy_hold(part)
            cagr = _pct(bh["cagr"]) if bh["cagr"] is not None else "–"
            dd = _dd(bh["max_drawdown"]) if bh["max_drawdown"] is not None else "–"
            cells += f"{cagr:>9}{dd:>8}{_num(bh['sharpe']):>8}{_num(bh['calmar']):>8}"
        return f"{self._lead_cells(widths, lead, 'QQQ buy & hold', None)}{cells}"

    def _split_tables(self, legend: list[str]) -> list[str]:
        rows = self.ranked[: self.top]
        widths, lead = self._lead()
        side = 33
        first_oos = next((b.day for b in self.plan.bars if self.plan.split and b.day >= self.plan.split), None)
        out = [
            *textwrap.wrap(
                f"Walk-forward split at {self.plan.split}: in-sample {self.period_text('in_sample')}; out-of-sample "
                f"{self.period_text('out_of_sample')}, whose first session only gives the previous close (trading "
                f"from {first_oos}). Each side starts flat with the starting capital.", WIDTH),
            f"Top {len(rows)} of {len(self.ok)} by in-sample {LABELS[self.rank_by]}:",
            f"{'':<{lead}}{' in-sample ':─^{side}}{' out-of-sample ':─^{side}}",
            f"{self._head(widths, lead)}" + f"{'CAGR':>9}{'max DD':>8}{'Sharpe':>8}{'Calmar':>8}" * 2 + f"{'OOS #':>8}",
        ]
        for n, r in enumerate(rows, start=1):
            cells = ""
            for part in ("in_sample", "out_of_sample"):
                s = self._part(r, part)
                cells += f"{_pct(s['cagr']):>9}{_dd(s['max_drawdown_pct']):>8}{_num(s['sharpe']):>8}" \
                         f"{_num(calmar(s)):>8}"
            rank = f"{self.oos_rank[id(r)]}/{len(self.ok)}"
            out.append(f"{self._lead_cells(widths, lead, str(n), r)}{cells}{rank:>8}")
        out.append(self._bh_line(widths, lead, "in_sample", "out_of_sample"))
        out += ["", f"{'':<{lead}}{' in-sample ':─^{side}}{' out-of-sample ':─^{side}}",
                f"{self._head(widths, lead)}" + f"{'entries':>9}{'realized P&L':>15}{'QQQM':>9}" * 2]
        for n, r in enumerate(rows, start=1):
            cells = ""
            for part in ("in_sample", "out_of_sample"):
                s = self._part(r, part)
                cells += f"{s['entries']:>9}{float(s['realized_pnl']):>15,.0f}{s['qqqm_shares']:>9}"
            out.append(f"{self._lead_cells(widths, lead, str(n), r)}{cells}")
        return [*out, *legend, "", *textwrap.wrap(rho_sentence(self.rho, len(self.ok), self.rank_by), WIDTH)]


def write_heatmap(report: Report, path: Path) -> None:
    """The ranking metric over a two-key grid, one panel per side of a split; values in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    plan = report.plan
    ya, xa = plan.axes
    parts = ["in_sample", "out_of_sample"] if plan.split else ["summary"]
    name = report.rank_by
    fig, axes = plt.subplots(1, len(parts), figsize=(1.2 + 5.2 * len(parts) * max(1, len(xa.values) / 4),
                                                      1.6 + 0.55 * max(4, len(ya.values))), squeeze=False)
    by_grid = {r.config.grid: r for r in report.ok}
    cmap = "RdYlGn_r" if name == "max_drawdown" else "RdYlGn"
    for ax, part in zip(axes[0], parts, strict=True):
        values = np.full((len(ya.values), len(xa.values)), np.nan)
        for i, yv in enumerate(ya.values):
            for j, xv in enumerate(xa.values):
                r = by_grid.get(((ya.key, yv), (xa.key, xv)))
                if r is not None:
                    values[i, j] = metric(report._part(r, part), name)
        bh = report.buy_hold(part)[name]
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if bh is not None:  # centred on buy-and-hold: green beat it, red did not, on one scale per panel
            half = max(abs(hi - bh), abs(lo - bh), 1e-9)
            lo, hi = bh - half, bh + half
        im = ax.imshow(np.clip(values, lo, hi), cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        for i in range(len(ya.values)):
            for j in range(len(xa.values)):
                v = values[i, j]
                text = "failed" if np.isnan(v) else _cell(float(v), name)
                ax.text(j, i, text, ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(xa.values)), labels=[value_label(xa.key, v) for v in xa.values])
        ax.set_yticks(range(len(ya.values)), labels=[value_label(ya.key, v) for v in ya.values])
        ax.set_xlabel(xa.key)
        ax.set_ylabel(ya.key)
        bh_text = "–" if bh is None else _cell(bh, name)
        ax.set_title(f"{PART_TITLES[part]} {_period(report, part)}\nQQQ buy & hold: {bh_text}", fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.suptitle(f"{LABELS[name]} by {ya.key} and {xa.key}" + (" (lower is better)" if name == "max_drawdown" else "")
                 + "; green: better than QQQ buy & hold, red: worse", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(v: float, name: str) -> str:
    if name == "cagr":
        return _pct(v)
    if name == "max_drawdown":
        return _dd(v)
    return _num(v)


def _period(report: Report, part: str) -> str:
    p = next(p for p in report.plan.periods if p.part == part)
    return f"{p.first} → {p.last}"
