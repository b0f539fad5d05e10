"""Issue 19's last piece: with BROKER=ib the bot keeps the LEAPS quotes it asks IB for (a capped
table), and `qqq-bot calibrate --from-db` fits the option market to what the account saw."""

from __future__ import annotations

import csv
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from peewee import Database

from bot.app.cli import main
from storage import quotes
from storage.db import close_database, database_url_for, open_database
from storage.models import LeapsQuote
from strategy.model import NY, OptionContract, OptionQuote
from tests.fake_gateway.testing import ib_errors
from tests.test_engine import bars_oc
from tests.test_ib_engine import WorldFactory, ib_world

__all__ = ["ib_errors", "ib_world"]
CHAINS = Path(__file__).resolve().parent / "chains"
QUOTES = CHAINS / "qqq_leaps_2026-02.csv"
VXN = f"{CHAINS / 'vxn_2026-02.csv'}:VXN"


async def test_the_bot_keeps_the_leaps_quotes_it_asks_ib_for(ib_world: WorldFactory) -> None:
    bars = bars_oc([(500, 500), (490, 489)])
    w = await ib_world(bars)
    w.engine.desk.record_quotes = w.engine._record_quotes  # as the composition root does with BROKER=ib
    await w.run_session(bars[1].day, max_ticks=3)
    rows = list(LeapsQuote.select())
    assert len(rows) >= 8  # the strike window of the entry, then the lot at each tick
    day = bars[1].day
    assert all(r.expiry - day >= timedelta(days=quotes.MIN_DAYS) and 0 < r.bid <= r.ask for r in rows)
    assert all(r.underlying is not None and abs(r.underlying - Decimal(489)) < 15 for r in rows)


def test_the_table_keeps_only_the_newest_rows(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quotes, "MAX_ROWS", 5)
    at = datetime(2026, 2, 11, 15, 0, tzinfo=NY)
    for k in range(8):
        c = OptionContract("QQQ", date(2027, 6, 17), Decimal(600 + k), "C")
        quotes.record(at + timedelta(minutes=k), Decimal(613), [OptionQuote(c, Decimal(50), Decimal(52), at)])
    near = OptionContract("QQQ", date(2026, 3, 20), Decimal(600), "C")  # short-dated: not kept
    assert quotes.record(at, Decimal(613), [OptionQuote(near, Decimal(20), Decimal(21), at)]) == 0
    assert [int(r.strike) for r in LeapsQuote.select().order_by(LeapsQuote.id)] == [603, 604, 605, 606, 607]


def test_calibrate_from_the_database_fits_as_the_same_quotes_in_a_csv(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    database = open_database(database_url_for(tmp_path))
    with open(QUOTES, newline="") as f:
        for row in csv.DictReader(f):
            at = datetime.combine(date.fromisoformat(row["date"]), time.fromisoformat(row["time"]), NY)
            c = OptionContract("QQQ", date.fromisoformat(row["expiry"]), Decimal(row["strike"]), row["right"])
            LeapsQuote.create(at=at, symbol="QQQ", expiry=c.expiry, strike=c.strike, right=c.right,
                              bid=Decimal(row["bid"]), ask=Decimal(row["ask"]), underlying=Decimal(row["underlying"]))
    close_database(database)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert main(["calibrate", "--from-db", "--iv", VXN, "--save", str(tmp_path / "p.json")]) == 0
    from_db = capsys.readouterr().out
    assert main(["calibrate", str(QUOTES), "--iv", VXN]) == 0
    from_csv = capsys.readouterr().out
    assert from_db.split("\nparameters written")[0].strip() == from_csv.strip()  # the same fit, the same table
    assert "recorded by the bot" in (tmp_path / "p.json").read_text()


def test_calibrate_needs_quotes_from_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--iv", VXN]) == 2
    assert capsys.readouterr().err.strip() == "qqq-bot calibrate: give either QUOTES.csv or --from-db"
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert main(["calibrate", "--from-db", "--iv", VXN]) == 2
    assert "holds no recorded quotes yet" in capsys.readouterr().err
