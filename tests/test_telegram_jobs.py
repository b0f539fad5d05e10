"""The jobs of `qqq-bot run`: the aligned tick (sessions only, once per tick time, a stalled loop
runs the missed tick once), the after-close summary, and message splitting under 4096."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.app.jobs import due_tick
from handlers.app import summary_job, tick_job
from handlers.format import e, split_message
from storage.models import AlertRecord
from strategy.calendar import NY, nyse
from tests.tg_harness import Tg, bars_oc, open_tg

CAL = nyse()


def at(d: date, hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(d.year, d.month, d.day, hh, mm, ss, tzinfo=NY)


def test_due_tick_is_aligned_and_runs_once() -> None:
    day = date(2024, 3, 5)
    assert due_tick(CAL, at(day, 9, 34, 59), 5, 5, None) is None  # before the first tick
    first = due_tick(CAL, at(day, 9, 35, 0), 5, 5, None)
    assert first == at(day, 9, 35)
    assert due_tick(CAL, at(day, 9, 36, 0), 5, 5, first) is None  # already run
    assert due_tick(CAL, at(day, 9, 40, 30), 5, 5, first) == at(day, 9, 40)
    # a loop stalled past the grace period does not run a stale tick
    assert due_tick(CAL, at(day, 9, 42, 0), 5, 5, first) is None
    # the interval setting applies at once
    assert due_tick(CAL, at(day, 9, 45, 0), 15, 5, first) == at(day, 9, 45)


def test_due_tick_only_in_sessions() -> None:
    assert due_tick(CAL, at(date(2024, 3, 9), 10, 0), 5, 5, None) is None  # Saturday
    assert due_tick(CAL, at(date(2024, 12, 25), 10, 0), 5, 5, None) is None  # Christmas
    early = date(2024, 11, 29)  # the day after Thanksgiving closes at 13:00
    assert due_tick(CAL, at(early, 12, 55), 5, 5, None) == at(early, 12, 55)
    assert due_tick(CAL, at(early, 13, 0), 5, 5, None) is None
    assert due_tick(CAL, at(date(2024, 3, 5), 16, 0), 5, 5, None) is None


@pytest.fixture
async def tg(tmp_path: Path) -> AsyncIterator[Tg]:
    async for t in open_tg(tmp_path, bars_oc([(500, 500), (490, 489)])):
        yield t


async def test_tick_job_ticks_once_per_tick_time(tg: Tg) -> None:
    ctx = SimpleNamespace(application=tg.parts.app, job=None)
    session = tg.world.cal.session(tg.world.path.first_day + timedelta(days=1))
    assert session is not None
    tg.clock.advance_to(session.open + timedelta(minutes=5, seconds=1))
    await tick_job(ctx)  # type: ignore[arg-type]
    first = tg.parts.engine.last_report
    assert first is not None and first.session == session.day
    await tick_job(ctx)  # type: ignore[arg-type]
    assert tg.parts.engine.last_report is first  # the same tick time is not run twice
    tg.clock.advance_to(session.open + timedelta(minutes=10, seconds=3))
    await tick_job(ctx)  # type: ignore[arg-type]
    assert tg.parts.engine.last_report is not first


async def test_daily_summary_once_per_session(tg: Tg) -> None:
    day = tg.world.path.first_day + timedelta(days=1)
    await tg.world.run_days([day])
    session = tg.world.cal.session(day)
    assert session is not None
    tg.clock.advance_to(session.close + timedelta(minutes=10))
    ctx = SimpleNamespace(application=tg.parts.app, job=None)
    await summary_job(ctx)  # type: ignore[arg-type]
    await summary_job(ctx)  # type: ignore[arg-type]
    rows = list(AlertRecord.select().where(AlertRecord.kind == "daily_summary"))
    assert len(rows) == 1
    lines = rows[0].text.split("\n")
    assert lines[1].startswith(f"{day:%a %Y-%m-%d} · QQQ closed at ")
    assert lines[0] == "[SIM] <b>📊 Daily summary</b>"
    assert lines[3] == "Fills today: 1 fill" and lines[4].startswith("Lots: 1 of 3 open, unrealized ")


@given(st.lists(st.text(alphabet=st.sampled_from("ab &<>é\t"), max_size=300) | st.text(max_size=300),
                min_size=1, max_size=60), st.integers(50, 4096))
def test_split_message_keeps_every_line_under_the_limit(lines: list[str], limit: int) -> None:
    text = "\n".join(f"<b>{e(line)}</b>" for line in lines)
    chunks = split_message(text, limit)
    assert all(len(c) <= limit for c in chunks)
    if all(len(f"<b>{e(line)}</b>") <= limit for line in lines):
        assert "\n".join(chunks) == text  # nothing lost when no single line is too long
