"""Benchmark: `qqq-bot sweep` throughput with 1 and with 2 worker processes, in the same run.

    python bench/sweep.py [--configs 24] [--start 2015-01-01] [--end 2024-12-31] [--synthetic]

Uses ../shared/data/qqq_daily.csv with VXN when present (else a seeded synthetic path). Each
configuration is one whole backtest; the wall time is end to end, worker start-up included.
Target: 2 workers do >= 1.7x the configurations per second of 1 worker on the 2-core machine.

What keeps per-task overhead small: worker processes persist across tasks; each loads the bars and
the NYSE calendar once (not once per backtest); only the summary crosses the process boundary;
at most one task per worker is in flight.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app.cli import build_parser
from bot.lab.sweep import build_plan, run_job, run_sweep
from bot.lab.sweep_backends import ProcessBackend

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=int, default=24)
    ap.add_argument("--start", default="2015-01-01")
    ap.add_argument("--end", default="2024-12-31")
    ap.add_argument("--synthetic", action="store_true", help="a synthetic path even when the real CSV is present")
    ap.add_argument("--repeat", type=int, default=2, help="alternate 1 and 2 workers this many times; best of each")
    args = ap.parse_args()

    qqq, vxn = DATA / "qqq_daily.csv", DATA / "vxn_daily.csv"
    if qqq.exists() and vxn.exists() and not args.synthetic:
        source = ["--csv", str(qqq), "--iv", f"{vxn}:VXN", "--start", args.start, "--end", args.end]
        what = f"qqq_daily.csv + VXN {args.start} → {args.end}"
    else:
        source = ["--synthetic-years", "6", "--seed", "1"]
        what = "synthetic 6 years, seed 1"
    deltas = ",".join(f"{0.45 + 0.45 * i / max(args.configs - 1, 1):.3f}" for i in range(args.configs))
    plan = build_plan(build_parser().parse_args(["sweep", *source, "--grid", f"target_delta={deltas}"]))
    n = len(plan.configs)
    print(f"sweep benchmark: {n} configurations of one backtest each, {what} ({plan.periods[0].sessions} sessions)")
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    rates: dict[int, list[float]] = {1: [], 2: []}
    summaries: dict[int, list[object]] = {}
    print(f"{'workers':>8}{'wall':>10}{'configs/s':>11}{'cores used':>12}{'load avg':>10}")
    for _ in range(args.repeat):
        for workers in (1, 2):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            outcome = run_sweep(plan, ProcessBackend(workers, run_job), None)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pool's workers, joined at its end
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            failed = [r for r in outcome.results if r.error]
            if failed:
                raise SystemExit(f"{len(failed)} configuration(s) failed: {failed[0].error}")
            rates[workers].append(n / wall)
            summaries[workers] = [r.summary for r in outcome.results]
            print(f"{workers:>8}{wall:>9.2f}s{n / wall:>11.3f}{cpu / wall:>12.2f}{os.getloadavg()[0]:>10.2f}")
    same = "identical" if summaries[1] == summaries[2] else "DIFFERENT"
    best1, best2 = max(rates[1]), max(rates[2])
    print(f"best of {args.repeat}: 1 worker {best1:.3f} configurations/s, 2 workers {best2:.3f}; "
          f"ratio {best2 / best1:.2f}x (target >= 1.7x); summaries {same}")
    print("cores used = the workers' CPU time / wall time: below 2 with 2 workers means other processes had "
          "the cores")
    print(f"run at {datetime.now(UTC).isoformat(timespec='seconds')}")


if __name__ == "__main__":
    main()
