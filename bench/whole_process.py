"""Benchmark: `qqq-bot` commands as whole processes, the way a user waits for them (interpreter
start, imports, data files, the run, the output).

    python bench/whole_process.py [--repeat 3] [--every-tick] [--paths 20] [--repo DIR]

Each command runs ``--repeat`` times; printed: the best and the median wall time and the best CPU
time (user + system, of the process and its workers). The machine may be shared, so the wall
times vary from run to run; the CPU times vary less. ``--repo DIR`` measures another checkout (e.g.
an older commit exported with ``git archive``) with the same interpreter. With ``--every-tick``
the 21-year backtest is also run at every tick, and the two results must be identical byte for byte.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def run(cmd: list[str], cwd: Path) -> tuple[float, float, bytes]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def measure(label: str, cmd: list[str], cwd: Path, repeat: int) -> bytes:
    walls, cpus, out = [], [], b""
    for _ in range(repeat):
        wall, cpu, out = run(cmd, cwd)
        walls.append(wall)
        cpus.append(cpu)
    print(f"{label:52} wall best {min(walls):6.2f} s, median {statistics.median(walls):6.2f} s; "
          f"CPU best {min(cpus):6.2f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--every-tick", action="store_true", help="also the 21-year backtest at every tick (slow)")
    ap.add_argument("--paths", type=int, default=0, help="also a robustness run of this many 21-year paths")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repo", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    args = ap.parse_args()
    repo = args.repo.resolve()
    qqq = DATA / "qqq_daily.csv"
    if not qqq.exists():
        raise SystemExit(f"{qqq} is not present")
    py = sys.executable
    entry = "handlers.entry" if (repo / "handlers" / "entry.py").exists() else "handlers.app"
    cli = [py, "-m", "bot.app.cli"]
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}, checkout {repo}")
    measure(f"qqq-bot --help ({entry})", [py, "-m", entry, "--help"], repo, args.repeat)
    measure("backtest, 2 months", [*cli, "backtest", "--csv", str(qqq), "--start", "2026-02-01", "--json"],
            repo, args.repeat)
    full = [*cli, "backtest", "--csv", str(qqq), "--start", "2005-01-01", "--json"]
    fast = measure("backtest 2005 → 2026 (21 years)", full, repo, args.repeat)
    vxn = [*full, "--iv", f"{DATA / 'vxn_daily.csv'}:VXN"]
    measure("backtest 2005 → 2026, --iv VXN", vxn, repo, args.repeat)
    if args.every_tick:
        slow = measure("backtest 2005 → 2026 --every-tick", [*full, "--every-tick"], repo, 1)
        print(f"  identical to the fast run byte for byte: {slow == fast}")
        if slow != fast:
            raise SystemExit("the fast-forwarded and every-tick results differ")
    if args.paths:
        measure(f"backtest --paths {args.paths} (21 years, VXN, {args.workers} workers)",
                [*vxn, "--paths", str(args.paths), "--workers", str(args.workers)], repo, 1)


if __name__ == "__main__":
    main()
