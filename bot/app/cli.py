"""The `qqq-bot` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Callable
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.app.config import AppConfig
    from bot.lab.backtest import BacktestConfig
    from strategy.calibration import RealQuote

RunBot = Callable[["AppConfig"], int]


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date (YYYY-MM-DD)") from None


def _money(text: str) -> Decimal:
    try:
        d = Decimal(text.replace(",", "").replace("_", ""))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"'{text}' is not an amount") from None
    if not d.is_finite() or d <= 0:
        raise argparse.ArgumentTypeError("the capital must be a positive amount")
    return d


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qqq-bot", description="QQQ LEAPS core-satellite bot")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the bot: Telegram control plane + engine on the configured broker")
    run.add_argument("--headless", action="store_true",
                     help="no Telegram: the engine alone, alerts to the log (no token needed)")
    run.add_argument("--max-ticks", type=int, default=None, help=argparse.SUPPRESS)
    totp = sub.add_parser("totp", help="two-factor secrets of the admins")
    totp_sub = totp.add_subparsers(dest="totp_command", required=True)
    totp_sub.add_parser("keygen", help="print a new TOTP_ENCRYPTION_KEY")
    enroll = totp_sub.add_parser("enroll", help="enroll an admin from the shell (QR code in the terminal)")
    enroll.add_argument("user_id", type=int)
    reset = totp_sub.add_parser("reset", help="forget an admin's secret so they can enroll again")
    reset.add_argument("user_id", type=int)
    sub.add_parser("health", help="exit 0 when the running bot is healthy; else print what failed")
    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    backup = db_sub.add_parser("backup", help="online, consistent copy of the SQLite database")
    backup.add_argument("path", help="file, or folder (existing, or ending in /), to write the backup to")
    bt = sub.add_parser("backtest", help="replay the strategy over a price history")
    src = bt.add_mutually_exclusive_group()
    src.add_argument("--csv", type=Path, help="daily bars (Date,Open,High,Low,Close), e.g. a Yahoo export")
    src.add_argument("--synthetic-years", type=int, default=10, help="years of a seeded synthetic path (default)")
    src.add_argument("--source", choices=["ib"],
                     help="ib: QQQ daily bars from IB Gateway (IB_HOST, IB_PORT, IB_CLIENT_ID + 1)")
    bt.add_argument("--seed", type=int, default=1, help="seed of the synthetic and intraday paths")
    bt.add_argument("--start", type=_date)
    bt.add_argument("--end", type=_date)
    bt.add_argument("--capital", type=_money, default=Decimal(100_000), help="starting cash in USD")
    bt.add_argument("--iv", default="0.25",
                    help="implied volatility: a constant (0.25 or 25%%), a column of --csv, or PATH:COLUMN")
    bt.add_argument("--cash-rate", default="0", metavar="RATE",
                    help="interest on idle cash: a constant (0, 4%%) or PATH:COLUMN, a dated series in percent a year "
                         "(e.g. ../shared/data/tbill_3m.csv:TB3MS); default 0")
    add_pricing_flags(bt)
    bt.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="change a setting (repeatable; same names and checks as /set)")
    bt.add_argument("--chart", type=Path, help="write an equity/positions PNG here")
    bt.add_argument("--json", action="store_true", help="print the result as JSON on stdout, nothing else")
    bt.add_argument("--every-tick", action="store_true",
                    help="evaluate every 5-minute tick through the engine (slow; the default skips only the ticks "
                         "at which nothing can happen, with identical trades)")
    rb = bt.add_argument_group("robustness (many histories)")
    rb.add_argument("--paths", type=int, metavar="N",
                    help="replay the strategy over N block-bootstrap histories of the data and report the spread")
    rb.add_argument("--block-days", type=int, default=None, metavar="D",
                    help="sessions per bootstrap block (default 21, about a month)")
    rb.add_argument("--workers", type=int, default=None, metavar="N",
                    help="with --paths: parallel backtests (default: CPU count)")
    rb.add_argument("--ray", metavar="ADDRESS", help="with --paths: run on Ray (auto, local or HOST:PORT)")
    rb.add_argument("--out", type=Path, metavar="CSV",
                    help="with --paths: one line per finished path, appended; a rerun resumes it")
    ch = sub.add_parser("chain", help="print the option chain the simulator quotes at one moment")
    ch.add_argument("--date", type=_date, required=True, help="the session (YYYY-MM-DD)")
    ch.add_argument("--time", type=_hhmm, default=None, metavar="HH:MM", help="New York time (default 15:45)")
    ch.add_argument("--json", action="store_true", help="every listed expiry and strike as JSON on stdout")
    _add_data_flags(ch)
    add_pricing_flags(ch)
    cal = sub.add_parser("calibrate", help="fit the option market's parameters to real quotes (a CSV)")
    cal.add_argument("quotes", type=Path, metavar="QUOTES.csv", nargs="?",
                     help="columns date,expiry,strike,right,bid,ask[,underlying][,time]")
    cal.add_argument("--from-db", action="store_true",
                     help="fit to the LEAPS quotes the bot recorded at IB (the database of DATA_DIR/DATABASE_URL)")
    cal.add_argument("--save", type=Path, metavar="FILE", help="write the fitted parameters here (for --pricing)")
    cal.add_argument("--min-days", type=int, default=365, help="the table's quotes: at least this many days out")
    _add_data_flags(cal)
    add_pricing_flags(cal)
    from bot.lab.sweep_cli import add_sweep_parser

    add_sweep_parser(sub, _date, _money)
    return p


def _hhmm(text: str) -> Any:
    from datetime import time

    try:
        return time.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a time (HH:MM)") from None


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    """The price-data flags of `backtest`, for `chain` and `calibrate`."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--csv", type=Path, help="daily bars (Date,Open,High,Low,Close), as for backtest")
    src.add_argument("--synthetic-years", type=int, default=10, help="years of a seeded synthetic path (default)")
    src.add_argument("--source", choices=["ib"], help="ib: QQQ daily bars from IB Gateway, as for backtest")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic and intraday paths")
    p.add_argument("--start", type=_date)
    p.add_argument("--end", type=_date)
    p.add_argument("--iv", default="0.25",
                   help="the 30-day volatility index: a constant (0.25 or 25%%), a column of --csv, or PATH:COLUMN")


def _data_config(args: argparse.Namespace) -> Any:
    from bot.lab.backtest import BacktestConfig

    cfg = BacktestConfig(csv=args.csv, synthetic_years=args.synthetic_years, seed=args.seed, start=args.start,
                         end=args.end, iv=args.iv, pricing=args.pricing, option_rate=args.option_rate)
    if args.source == "ib":
        cfg.bars = _ib_bars(args)
    return cfg


def cmd_chain(args: argparse.Namespace) -> int:
    from bot.lab.backtest import BacktestError
    from bot.lab.chain import DEFAULT_TIME, build_chain, chain_json, format_chain

    try:
        view = build_chain(_data_config(args), args.date, args.time or DEFAULT_TIME)
    except BacktestError as e:
        print(f"qqq-bot chain: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(chain_json(view), sys.stdout)
        sys.stdout.write("\n")
    else:
        print(format_chain(view))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from bot.lab.backtest import BacktestError, load_pricing_inputs
    from bot.lab.calibrate import (
        CalibrateError,
        calibrate,
        format_calibration,
        read_quotes,
        source_of,
    )
    from bot.lab.pricing import save_pricing

    if (args.quotes is None) == (not args.from_db):
        print("qqq-bot calibrate: give either QUOTES.csv or --from-db", file=sys.stderr)
        return 2
    where = args.quotes if args.quotes is not None else "the recorded quotes"
    try:
        cfg = _data_config(args)
        start, _ = load_pricing_inputs(cfg)
        quotes = read_quotes(args.quotes, cfg) if args.quotes is not None else _recorded_quotes(cfg)
        result = calibrate(quotes, start, args.min_days)
    except (BacktestError, CalibrateError) as e:
        print(f"qqq-bot calibrate: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # no usable quote
        print(f"qqq-bot calibrate: {where}: {e}", file=sys.stderr)
        return 2
    print(format_calibration(result))
    if args.save:
        save_pricing(result.fit.params, args.save, source_of(args.quotes, result.fit.quotes))
        print(f"\nparameters written to {args.save} (use them with --pricing {args.save} or SIM_PRICING)")
    return 0


def _recorded_quotes(cfg: BacktestConfig) -> list[RealQuote]:
    """The quotes the bot recorded, read from its database (the configuration's)."""
    from bot.app.config import ConfigError, load_config
    from bot.lab.calibrate import CalibrateError, read_recorded
    from storage.db import close_database, open_database

    try:
        app = load_config()
    except ConfigError as e:
        raise CalibrateError(f"configuration: {e}") from None
    db = open_database(app.db_url)
    try:
        return read_recorded(cfg)
    finally:
        close_database(db)


def add_pricing_flags(p: argparse.ArgumentParser) -> None:
    """The option market's flags, shared by backtest, sweep and chain."""
    p.add_argument("--pricing", default="", metavar="FILE",
                   help="the option market's parameters (`qqq-bot calibrate --save FILE`); default: the built-in ones")
    p.add_argument("--rate", dest="option_rate", default="", metavar="RATE",
                   help="the rate options are priced with: a constant (3.5%%) or PATH:COLUMN in percent a year "
                        "(e.g. ../shared/data/tbill_3m.csv:TB3MS); default: the parameters' (3.5 %%)")


def _setup_logging(level: str, fmt: str = "text", secrets: list[str] | None = None) -> None:
    from bot.logs import setup_logging

    setup_logging(level, fmt, secrets)


def cmd_paths(args: argparse.Namespace) -> int:
    """`qqq-bot backtest --paths N`: the strategy over N bootstrap histories (``bot.lab.paths``)."""
    from bot.lab import paths, paths_report

    def fail(message: str) -> int:
        print(f"qqq-bot backtest: {message}", file=sys.stderr)
        return 2

    if args.source == "ib":
        return fail("--paths needs --csv or --synthetic-years (not --source ib)")
    spec = paths.Spec(args.csv, args.synthetic_years, args.seed, args.start, args.end, args.capital, args.iv,
                      args.cash_rate, tuple(args.overrides),
                      paths.DEFAULT_BLOCK_DAYS if args.block_days is None else args.block_days,
                      args.every_tick)
    try:
        plan = paths.build_plan(spec, args.paths, args.out, args.chart)
        out = paths.PathsFile(args.out, plan) if args.out else None
        todo = args.paths - len([i for i in (out.read() if out else {}) if i < args.paths])
        backend = paths.make_backend(args.workers, args.ray)
    except paths.PathsError as e:
        return fail(str(e))
    if out is not None and todo < args.paths:
        print(f"qqq-bot backtest: {args.paths - todo} of {args.paths} paths already in {args.out}: "
              f"running the other {todo}", file=sys.stderr)
    outcome = paths.run_paths(plan, backend, out, paths.Progress(todo, sys.stderr))
    if outcome.interrupted:
        where = f"; they are in {args.out}: rerun the same command to go on" if out else " (none kept: no --out)"
        print(f"qqq-bot backtest: interrupted; {len(outcome.summaries)} of {args.paths} paths finished{where}",
              file=sys.stderr)
        return 130
    if args.chart and outcome.summaries:
        paths_report.write_fan_chart(plan, outcome, args.chart)
    if args.json:
        json.dump(paths_report.result_json(plan, outcome), sys.stdout)
        sys.stdout.write("\n")
    else:
        print(paths_report.text(plan, outcome))
        if args.chart and outcome.summaries:
            print(f"\nfan chart written to {args.chart}")
        if out is not None:
            print(f"paths in {args.out}")
    for p, error in sorted(outcome.failed.items()):
        print(f"qqq-bot backtest: path {p} failed: {error}", file=sys.stderr)
    return 1 if outcome.failed else 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from bot.lab.backtest import BacktestConfig, BacktestError, TerminalProgress, run_backtest

    if args.paths is not None:
        return cmd_paths(args)
    for flag, value in (("--block-days", args.block_days), ("--workers", args.workers), ("--ray", args.ray),
                        ("--out", args.out)):
        if value is not None:
            print(f"qqq-bot backtest: {flag} needs --paths N", file=sys.stderr)
            return 2
    from bot.lab.backtest_report import format_report, write_chart

    cfg = BacktestConfig(csv=args.csv, synthetic_years=args.synthetic_years, seed=args.seed, start=args.start,
                         cash_rate=args.cash_rate,
                         end=args.end, capital=args.capital, iv=args.iv, overrides=list(args.overrides),
                         every_tick=args.every_tick, pricing=args.pricing, option_rate=args.option_rate)
    # Progress goes to stderr, so --json's stdout stays only the result.
    progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
    try:
        if args.source == "ib":
            cfg.bars = _ib_bars(args)
        with tempfile.TemporaryDirectory(prefix="qqq-backtest-") as tmp:  # its ledger goes with it
            run = asyncio.run(run_backtest(cfg, workdir=Path(tmp), progress=progress))
    except BacktestError as e:
        print(f"qqq-bot backtest: {e}", file=sys.stderr)
        return 2
    if args.chart:
        write_chart(run.result, run.positions, run.buy_hold, args.chart)
    if args.json:
        json.dump(run.result, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(format_report(run.result))
        if args.chart:
            print(f"\nchart written to {args.chart}")
    return 0


def _ib_bars(args: argparse.Namespace) -> list[Any]:
    from datetime import timedelta

    from bot.app.config import ConfigError, load_config
    from bot.lab.backtest import BacktestError, fetch_ib_bars

    try:
        app = load_config()
    except ConfigError as e:
        raise BacktestError(f"configuration: {e}") from None
    end = args.end or date.today()
    start = args.start or end - timedelta(days=365 * args.synthetic_years)
    return asyncio.run(fetch_ib_bars(app.ib_host, app.ib_port, app.ib_client_id + 1, start, end))


def cmd_run(args: argparse.Namespace, run_bot: RunBot | None) -> int:
    from bot.app.config import ConfigError, load_config
    from bot.app.runner import run_headless

    try:
        cfg = load_config()
    except ConfigError as e:
        print(f"qqq-bot: configuration error: {e}", file=sys.stderr)
        return 2
    _setup_logging(cfg.log_level, cfg.log_format, cfg.secrets())
    if args.headless:
        try:
            asyncio.run(run_headless(cfg, max_ticks=args.max_ticks))
        except KeyboardInterrupt:
            pass
        return 0
    problem = cfg.telegram_problem()
    if problem is not None:
        print(f"qqq-bot: configuration error: {problem}", file=sys.stderr)
        return 2
    if run_bot is None:  # `python -m bot.app.cli run`: the Telegram layer is wired by the qqq-bot entry point
        print("qqq-bot: start the Telegram bot with `qqq-bot run` (or `python -m handlers.app run`)", file=sys.stderr)
        return 2
    return run_bot(cfg)


def cmd_totp(args: argparse.Namespace) -> int:
    from bot.app.config import ConfigError, load_config
    from bot.app.totp import enroll_in_terminal, keygen

    if args.totp_command == "keygen":
        print(keygen())
        return 0
    try:
        cfg = load_config()
    except ConfigError as e:
        print(f"qqq-bot totp: configuration error: {e}", file=sys.stderr)
        return 2
    if args.user_id not in cfg.admin_user_ids:
        print(f"qqq-bot totp: {args.user_id} is not in ADMIN_USER_IDS", file=sys.stderr)
        return 2
    from storage import auth
    from storage.db import close_database, open_database

    db = open_database(cfg.db_url)
    try:
        if args.totp_command == "reset":
            auth.reset_enrollment(args.user_id)
            print(f"admin {args.user_id}: secret removed; enroll again with /start or `qqq-bot totp enroll`")
            return 0
        if cfg.totp_encryption_key is None:
            print("qqq-bot totp: TOTP_ENCRYPTION_KEY: missing (`qqq-bot totp keygen` prints one)", file=sys.stderr)
            return 2
        enroll_in_terminal(args.user_id, cfg.totp_encryption_key.get_secret_value(), sys.stdout)
        return 0
    finally:
        close_database(db)


def cmd_health(args: argparse.Namespace) -> int:
    """One line; exit 0 only when the heartbeat is recent, the database opens and (ib) the gateway
    connection is up."""
    from datetime import UTC, datetime

    from bot.app.config import ConfigError, load_config
    from bot.app.health import check_heartbeat
    from storage.db import close_database, open_database

    try:
        cfg = load_config()
    except ConfigError as e:
        print(f"unhealthy: configuration: {e}")
        return 1
    try:
        db = open_database(cfg.db_url)
    except Exception as e:
        print(f"unhealthy: database does not open: {type(e).__name__}: {e}")
        return 1
    try:
        result = check_heartbeat(datetime.now(UTC), cfg.broker)
    finally:
        close_database(db)
    print(result.message if result.ok else f"unhealthy: {result.message}")
    return 0 if result.ok else 1


def cmd_db(args: argparse.Namespace) -> int:
    from bot.app.config import ConfigError, load_config
    from storage.backup import BackupError, backup_sqlite, sqlite_path

    try:
        cfg = load_config()
        target = Path(args.path)
        if args.path.endswith(("/", "\\")):
            target.mkdir(parents=True, exist_ok=True)
        dest = backup_sqlite(sqlite_path(cfg.db_url), target)
    except (ConfigError, BackupError) as e:
        print(f"qqq-bot db backup: {e}", file=sys.stderr)
        return 2
    print(f"backup written to {dest}")
    return 0


def main(argv: list[str] | None = None, run_bot: RunBot | None = None) -> int:
    """Every `qqq-bot` command. ``run_bot`` starts the Telegram bot (`qqq-bot run`); the entry point
    (`handlers.app.main`) passes it in, so nothing in the shell imports the Telegram layer."""
    args = build_parser().parse_args(argv)
    if args.command == "backtest":
        _setup_logging("WARNING")
        return cmd_backtest(args)
    if args.command == "sweep":
        from bot.lab.sweep_cli import cmd_sweep

        _setup_logging("WARNING")
        return cmd_sweep(args)
    if args.command in ("chain", "calibrate"):
        _setup_logging("WARNING")
        return cmd_chain(args) if args.command == "chain" else cmd_calibrate(args)
    if args.command == "health":
        return cmd_health(args)
    if args.command == "db":
        return cmd_db(args)
    if args.command == "totp":
        return cmd_totp(args)
    return cmd_run(args, run_bot)


if __name__ == "__main__":
    raise SystemExit(main())
