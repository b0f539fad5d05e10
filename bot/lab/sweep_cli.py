"""`qqq-bot sweep` on the command line: its flags, the JSON it prints and the command itself.
The sweep runs in `bot.lab.sweep` (on `bot.lab.sweep_backends`); its report is `bot.lab.sweep_report`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from bot.lab.sweep import (
    MAX_CONFIGS,
    RANK_METRICS,
    Plan,
    Progress,
    ResultsFile,
    SweepOutcome,
    build_plan,
    make_backend,
    run_sweep,
)
from bot.lab.sweep_backends import SweepError


def add_sweep_parser(sub: Any, date_type: Callable[[str], date], money_type: Callable[[str], Decimal]) -> None:
    sw = sub.add_parser("sweep", help="backtest every combination of a grid of settings, in parallel")
    src = sw.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", type=Path, metavar="F", help="daily bars (Date,Open,High,Low,Close), as for backtest")
    src.add_argument("--synthetic-years", type=int, metavar="N",
                     help="years of a seeded synthetic path instead of --csv")
    sw.add_argument("--seed", type=int, default=1, help="seed of the synthetic and intraday paths (as backtest)")
    sw.add_argument("--start", type=date_type, metavar="DATE")
    sw.add_argument("--end", type=date_type, metavar="DATE")
    sw.add_argument("--capital", type=money_type, default=Decimal(100_000), help="starting cash in USD")
    sw.add_argument("--iv", default="0.25", help="implied volatility, as for backtest")
    sw.add_argument("--cash-rate", default="0", metavar="RATE", help="interest on idle cash, as for backtest")
    sw.add_argument("--pricing", default="", metavar="FILE", help="the option market's parameters, as for backtest")
    sw.add_argument("--rate", dest="option_rate", default="", metavar="RATE",
                    help="the rate options are priced with, as for backtest")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="values to sweep (repeatable; ';' separates values containing commas, e.g. tp_tiers)")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting fixed for every configuration (repeatable)")
    sw.add_argument("--workers", type=int, default=None, metavar="N", help="parallel backtests (default: CPU count)")
    sw.add_argument("--ray", metavar="ADDRESS",
                    help="run on Ray: auto (a cluster started with `ray start`), local, or HOST:PORT")
    sw.add_argument("--split", type=date_type, metavar="DATE",
                    help="walk-forward: rank on sessions before DATE, report DATE onwards beside it")
    sw.add_argument("--rank-by", choices=RANK_METRICS, default="calmar")
    sw.add_argument("--top", type=int, default=10, metavar="N", help="rows in the report (default 10)")
    sw.add_argument("--out", type=Path, metavar="CSV",
                    help="CSV of results, appended as runs finish; a rerun resumes it")
    sw.add_argument("--json", action="store_true", help="print the results as JSON on stdout, nothing else")
    sw.add_argument("--heatmap", type=Path, metavar="PNG", help="for a two-key grid: the ranking metric as a PNG")
    sw.add_argument("--yes", action="store_true", help=f"run more than {MAX_CONFIGS:,} configurations")


def result_json(outcome: SweepOutcome, plan: Plan, rho: float | None) -> dict[str, Any]:
    runs = [{"overrides": dict(t.split("=", 1) for t in plan.overrides(r.config)), "summary": r.summary,
             "in_sample": r.in_sample, "out_of_sample": r.out_of_sample}
            for r in outcome.results if r.error is None and r.summary is not None]
    failed = [{"overrides": dict(t.split("=", 1) for t in plan.overrides(r.config)), "error": r.error}
              for r in outcome.results if r.error is not None]
    return {"runs": runs, "workers": outcome.workers, "backend": outcome.backend, "wall_s": round(outcome.wall_s, 3),
            "rank_correlation": rho, "failed": failed}


def cmd_sweep(args: argparse.Namespace) -> int:
    from bot.lab import sweep_report

    def fail(message: str) -> int:
        print(f"qqq-bot sweep: {message}", file=sys.stderr)
        return 2

    try:
        plan = build_plan(args)
        out = ResultsFile(args.out, plan) if args.out else None
        todo = len(plan.configs) - (len(out.read()) if out is not None else 0)
        backend = make_backend(args)
    except SweepError as e:
        return fail(str(e))
    if out is not None and todo < len(plan.configs):
        print(f"qqq-bot sweep: {len(plan.configs) - todo} of {len(plan.configs)} configurations already in "
              f"{args.out}: running the other {todo}", file=sys.stderr)
    progress = Progress(todo, todo * sum(p.sessions for p in plan.periods), sys.stderr)
    outcome = run_sweep(plan, backend, out, progress)
    if outcome.interrupted:
        finished = sum(1 for r in outcome.results if r.summary is not None and r.error is None
                       and all(r.part(p.part) for p in plan.periods))
        where = f"; they are in {args.out}: rerun the same command to go on" if out else " (none kept: no --out)"
        print(f"qqq-bot sweep: interrupted; {finished} of {len(plan.configs)} configurations finished{where}",
              file=sys.stderr)
        return 130
    report = sweep_report.Report(plan, outcome, args.rank_by, args.top)
    if args.heatmap is not None:
        sweep_report.write_heatmap(report, args.heatmap)
    if args.json:
        json.dump(result_json(outcome, plan, report.rho), sys.stdout)
        sys.stdout.write("\n")
    else:
        print(report.text())
        if args.heatmap is not None:
            print(f"\nheatmap written to {args.heatmap}")
        if out is not None:
            print(f"results in {args.out}")
    failed = [r for r in outcome.results if r.error is not None]
    for r in failed:
        print(f"qqq-bot sweep: {r.config.label()} failed: {r.error}", file=sys.stderr)
    return 1 if failed else 0
