"""A bot process for the database campaign: runs the engine on the sim broker over synthetic
sessions as fast as it can, writing orders and fills, until it is killed."""

from __future__ import annotations

import asyncio
import sys
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bot.lab.backtest import BacktestConfig, run_backtest
from strategy.rules import DailyLimits


async def main(workdir: Path, seed: int) -> None:
    cfg = BacktestConfig(synthetic_years=3, seed=seed, capital=Decimal(200_000),
                         overrides=["entry_drop=0.3", "max_positions=6", "roll_drop=1.5", "recycle_threshold=100",
                                    "check_interval_min=15"],
                         limits=DailyLimits(100, Decimal(1_000_000)))
    print("started", flush=True)
    await run_backtest(cfg, workdir=workdir)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
