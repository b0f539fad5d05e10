"""Market data for the `sim` broker: daily bars (from a CSV or a seeded synthetic path), the
intraday path of each session built from its OHLC, and the implied-volatility input."""

from __future__ import annotations

import bisect
import csv
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import pairwise
from pathlib import Path

from broker.base import DailyBar as DailyBar  # re-exported: its home was here
from strategy.calendar import Session, SessionCalendar, TickSchedule

log = logging.getLogger(__name__)

QQQM_RATIO = 0.4115  # QQQM is priced as QQQ × this
_NULLS = ("", "null", "nan", "n/a", ".")


class CsvError(ValueError):
    """A CSV the bot cannot use, with the file, the line and the problem."""


@dataclass(frozen=True, slots=True)
class OhlcFile:
    """The bars of a CSV and how many rows were skipped for missing ("null") prices."""

    bars: list[DailyBar]
    skipped_null: int


def _parse_date(text: str) -> date:
    text = text.strip()
    if len(text) == 8 and text.isdigit():
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    return date.fromisoformat(text[:10])


def _open_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise CsvError(f"{path}: the file is empty")
    header = [h.strip().lower() for h in rows[0]]
    body = [(i + 2, r) for i, r in enumerate(rows[1:]) if any(c.strip() for c in r)]
    return header, body


def _date_at(path: Path, line: int, text: str, last: date | None) -> date:
    try:
        day = _parse_date(text)
    except ValueError:
        raise CsvError(f"{path}, line {line}: '{text}' is not a date (YYYY-MM-DD or YYYYMMDD)") from None
    if last is not None and day <= last:
        what = "duplicate date" if day == last else "dates must ascend"
        raise CsvError(f"{path}, line {line}: {what} ({day} after {last})")
    return day


def read_ohlc_csv(path: Path | str) -> OhlcFile:
    """Daily bars from a Yahoo/IB export (Date,Open,High,Low,Close[,...]); Yahoo's "null" rows are
    skipped and counted; anything else malformed raises CsvError naming the line."""
    path = Path(path)
    header, body = _open_rows(path)
    need = ["date", "open", "high", "low", "close"]
    missing = [n for n in need if n not in header]
    if missing:
        raise CsvError(f"{path}: missing column(s) {', '.join(missing)} (need Date,Open,High,Low,Close; "
                       f"found {','.join(header)})")
    idx = [header.index(n) for n in need]
    bars: list[DailyBar] = []
    skipped = 0
    for line, row in body:
        try:
            cells = [row[i].strip() for i in idx]
        except IndexError:
            raise CsvError(f"{path}, line {line}: too few columns (need Date,Open,High,Low,Close)") from None
        if any(c.lower() in _NULLS for c in cells[1:]):
            skipped += 1
            continue
        day = _date_at(path, line, cells[0], bars[-1].day if bars else None)
        try:
            o, h, lo, c = (float(x) for x in cells[1:])
        except ValueError:
            raise CsvError(f"{path}, line {line}: a price is not a number ({','.join(cells[1:])})") from None
        if not all(math.isfinite(v) and v > 0 for v in (o, h, lo, c)):
            raise CsvError(f"{path}, line {line}: prices must be positive numbers ({','.join(cells[1:])})")
        tol = 1e-6 * max(1.0, h)
        if lo > h + tol:
            raise CsvError(f"{path}, line {line}: low {lo:g} is above high {h:g}")
        if not lo - tol <= c <= h + tol:
            raise CsvError(f"{path}, line {line}: close {c:g} is outside the low–high range [{lo:g}, {h:g}]")
        # An open just outside the range (seen in some exports) widens it rather than failing.
        bars.append(DailyBar(day, o, max(h, o, c), min(lo, o, c), c))
    if not bars:
        raise CsvError(f"{path}: no rows with prices (only a header, or every price is null)")
    return OhlcFile(bars, skipped)


def load_ohlc_csv(path: Path | str) -> list[DailyBar]:
    """The bars of :func:`read_ohlc_csv`; the count of skipped "null" rows is logged."""
    result = read_ohlc_csv(path)
    if result.skipped_null:
        log.info("%s: skipped %d row(s) without prices", path, result.skipped_null)
    return result.bars


def _dated_column(path: Path | str, column: str, value: Callable[[float, str], float]) -> dict[date, float]:
    """One numeric column of a dated CSV, by date, each value checked and converted by ``value``
    (which raises CsvError's message as ValueError); empty/"null" values are skipped."""
    path = Path(path)
    header, body = _open_rows(path)
    if "date" not in header:
        raise CsvError(f"{path}: no Date column (found {','.join(header)})")
    col = column.strip().lower()
    if col not in header:
        raise CsvError(f"{path}: no column '{column}' (found {','.join(header)})")
    di, ci = header.index("date"), header.index(col)
    out: dict[date, float] = {}
    last: date | None = None
    for line, row in body:
        if max(di, ci) >= len(row):
            raise CsvError(f"{path}, line {line}: too few columns")
        day = _date_at(path, line, row[di], last)
        last = day
        text = row[ci].strip()
        if text.lower() in _NULLS:
            continue
        try:
            v = float(text)
        except ValueError:
            raise CsvError(f"{path}, line {line}: '{text}' is not a number") from None
        try:
            out[day] = value(v, text)
        except ValueError as e:
            raise CsvError(f"{path}, line {line}: {e}") from None
    if not out:
        raise CsvError(f"{path}: column '{column}' has no values")
    return out


def _volatility(v: float, text: str) -> float:
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"a volatility must be positive, got {text}")
    return v / 100 if v > 3 else v


def load_series_csv(path: Path | str, column: str) -> dict[date, float]:
    """One volatility column by date (e.g. VXN) as fractions; values above 3 are taken as percent
    (25.3 → 0.253). Empty/"null" values are skipped."""
    return _dated_column(path, column, _volatility)


class IvSource:
    """Implied volatility by day: a constant, or a series (latest value on or before the day;
    before the first value, the first)."""

    def __init__(self, constant: float | None = None, series: dict[date, float] | None = None) -> None:
        if constant is None and not series:
            raise ValueError("IvSource needs a constant or a non-empty series")
        if constant is not None and not 0 < constant < 10:
            raise ValueError(f"implied volatility must be a positive fraction, got {constant}")
        self._constant = constant
        self._days = sorted(series) if series else []
        self._values = [series[d] for d in self._days] if series else []

    @classmethod
    def constant(cls, sigma: float) -> IvSource:
        return cls(constant=sigma)

    @classmethod
    def from_series(cls, series: dict[date, float]) -> IvSource:
        return cls(series=series)

    def iv(self, day: date) -> float:
        if self._constant is not None:
            return self._constant
        i = bisect.bisect_right(self._days, day) - 1
        return self._values[max(i, 0)]

    def before(self, day: date) -> float:
        """The latest value strictly before ``day`` (what is known during ``day``'s session, before
        its close); before the second value, the first."""
        if self._constant is not None:
            return self._constant
        i = bisect.bisect_left(self._days, day) - 1
        return self._values[max(i, 0)]


class CashRate:
    """The interest rate on idle cash by day, a fraction a year: a constant, or a dated series (the
    value in force on a day is the latest on or before it; before the first, the first; past the
    last, the last, carried forward)."""

    def __init__(self, constant: float | None = None, series: dict[date, float] | None = None,
                 label: str = "") -> None:
        if constant is None and not series:
            raise ValueError("CashRate needs a constant or a non-empty series")
        if constant is not None and not 0 <= constant < 1:
            raise ValueError(f"an interest rate must be a fraction a year in 0..1, got {constant}")
        self._constant = constant
        self._days = sorted(series) if series else []
        self._values = [series[d] for d in self._days] if series else []
        self.label = label or (f"{constant * 100:g} % a year" if constant is not None else "a dated series")

    @classmethod
    def constant(cls, rate: float) -> CashRate:
        return cls(constant=rate)

    @classmethod
    def none(cls) -> CashRate:
        return cls(constant=0.0, label="none")

    @property
    def is_zero(self) -> bool:
        return self._constant == 0.0

    @property
    def last_day(self) -> date | None:
        """The series' last date (None for a constant)."""
        return self._days[-1] if self._days else None

    def rate(self, day: date) -> float:
        if self._constant is not None:
            return self._constant
        i = bisect.bisect_right(self._days, day) - 1
        return self._values[max(i, 0)]


def _rate(v: float, text: str) -> float:
    if not math.isfinite(v) or not 0 <= v <= 100:
        raise ValueError(f"a rate must be 0–100 % a year, got {text}")
    return v / 100


def load_rate_series_csv(path: Path | str, column: str) -> dict[date, float]:
    """A column of rates in percent a year by date (FRED's TB3MS, a daily or monthly series) as
    fractions; empty, "null" or "." values are skipped. A rate must be 0–100 %."""
    return _dated_column(path, column, _rate)


def synthetic_bars(
    sessions: list[Session], seed: int, s0: float = 100.0, mu: float = 0.10, sigma: float = 0.22
) -> list[DailyBar]:
    """A seeded daily path: GBM with GARCH-like volatility clustering and rare downward jumps, so
    calm stretches alternate with stressed ones (−1 % days common, −5 % days rare but present)."""
    rng = random.Random(seed)
    daily_var = sigma * sigma / 252
    var = daily_var
    price = s0
    out = []
    for s in sessions:
        vol = math.sqrt(var)
        gap = rng.gauss(0, vol * 0.35)
        body = rng.gauss(0, vol * 0.94)
        jump = rng.gauss(-0.035, 0.015) if rng.random() < 0.0015 else 0.0
        ret = mu / 252 - 0.5 * vol * vol + gap + body + jump
        o = price * math.exp(gap)
        c = price * math.exp(ret)
        span = abs(rng.gauss(0, vol * 0.6))
        h = max(o, c) * math.exp(span * rng.random())
        lo = min(o, c) * math.exp(-span * rng.random())
        out.append(DailyBar(s.day, o, h, lo, c))
        shock = (ret - mu / 252) ** 2
        var = 0.02 * daily_var + 0.90 * var + 0.08 * shock
        price = c
    return out


class PricePath:
    """QQQ's price at any instant: per session, a seeded intraday path through O, H, L, C at
    ``step_min`` resolution, interpolated linearly; outside hours, the last close. ``bars`` are the
    daily bars it was built from, one per session."""

    def __init__(self, bars: list[DailyBar], sessions: list[Session], points: list[list[float]] | None,
                 step_s: float, skipped: int = 0, draws: IntradayDraws | None = None) -> None:
        if points is None and draws is None:
            raise ValueError("a price path needs its points or the draws that make them")
        if not sessions or not len(bars) == len(sessions) or (points is not None and len(points) != len(sessions)):
            raise ValueError("a price path needs one bar and one point list per session")
        self.bars = bars
        self.sessions = sessions
        self._points: list[list[float] | None] = list(points) if points is not None else [None] * len(sessions)
        self._draws = draws
        # A path's first point is its bar's open and its last its close, both clipped to the bar's
        # range as the points are; kept apart so that closes never need a session's points drawn.
        self._first = [p[0] for p in points] if points is not None else [_clip(b.open, b) for b in bars]
        self._last = [p[-1] for p in points] if points is not None else [_clip(b.close, b) for b in bars]
        self._step_s = step_s
        self._opens = [s.open for s in sessions]
        self._days = [s.day for s in sessions]
        self._index = {s.day: i for i, s in enumerate(sessions)}
        self.skipped = skipped  # bars on days the calendar does not know
        self._cache_i = 0

    @classmethod
    def from_bars(cls, bars: list[DailyBar], calendar: SessionCalendar, seed: int, step_min: int = 5) -> PricePath:
        """One intraday path per bar whose day is a session of ``calendar`` (others are skipped).
        Each session's points are drawn when first asked for, the same as if all were drawn in order
        (``IntradayDraws``)."""
        if step_min <= 0:
            raise ValueError("step_min must be positive")
        sessions: list[Session] = []
        kept: list[DailyBar] = []
        steps: list[int] = []
        skipped = 0
        for b in bars:
            s = calendar.session(b.day)
            if s is None:
                skipped += 1
                continue
            sessions.append(s)
            steps.append(max(3, int((s.close - s.open).total_seconds() // (step_min * 60))))
            kept.append(b)
        if not sessions:
            raise ValueError("no bar falls on a session of the calendar")
        if skipped:
            log.info("price path: skipped %d bar(s) on days that are not sessions", skipped)
        return cls(kept, sessions, None, step_min * 60.0, skipped, draws=IntradayDraws(kept, steps, seed))

    def points(self, index: int) -> list[float]:
        """Session ``index``'s intraday points (drawn now if they were not yet)."""
        pts = self._points[index]
        if pts is None:
            assert self._draws is not None  # only a path built from draws has sessions not drawn
            pts = self._points[index] = self._draws.points(index)
        return pts

    @classmethod
    def wall_clock(cls, calendar: SessionCalendar, seed: int, start: date, end: date, s0: float = 480.0) -> PricePath:
        """A synthetic path over today's dates, for the live demo on the wall clock."""
        sessions = calendar.sessions_between(start, end)
        return cls.from_bars(synthetic_bars(sessions, seed, s0=s0), calendar, seed)

    @property
    def first_day(self) -> date:
        return self._days[0]

    @property
    def last_day(self) -> date:
        return self._days[-1]

    def _session_index(self, t: datetime) -> int:
        """Index of the last session whose open is at or before t (-1 before the first)."""
        i = self._cache_i
        opens = self._opens
        if opens[i] <= t and (i + 1 == len(opens) or t < opens[i + 1]):
            return i
        i = bisect.bisect_right(opens, t) - 1
        if i >= 0:
            self._cache_i = i
        return i

    def price_at(self, t: datetime) -> float:
        """The price at ``t``; outside hours the last close, before the first session its open."""
        i = self._session_index(t)
        if i < 0:
            return self._first[0]
        s = self.sessions[i]
        if t >= s.close:
            return self._last[i]
        pts = self.points(i)
        x = (t - s.open).total_seconds() / self._step_s
        k = int(x)
        if k >= len(pts) - 1:
            return pts[-1]
        return pts[k] + (pts[k + 1] - pts[k]) * (x - k)

    def session_prices(self, index: int, times: Sequence[datetime]) -> list[float]:
        """``[price_at(t) for t in times]`` for times of session ``index`` (in order), bit for bit.
        When the times fall exactly on the path's points at one stride (the 5-minute ticks on the
        5-minute path) they are read off the points; otherwise each goes through ``price_at``."""
        s = self.sessions[index]
        n = len(times)
        if n > 1 and s.open <= times[0] and times[-1] < s.close:
            pts = self.points(index)
            step = timedelta(seconds=self._step_s)
            k0, rem = divmod(times[0] - s.open, step)
            stride = times[1] - times[0]
            m, rem2 = divmod(stride, step)
            last_k = k0 + (n - 1) * m
            uniform = isinstance(times, TickSchedule) or not any(b - a != stride for a, b in pairwise(times))
            if not rem and not rem2 and m > 0 and last_k < len(pts) - 1 and uniform:
                return pts[k0:last_k + 1:m]
        return [self.price_at(t) for t in times]

    def close_of(self, day: date) -> float | None:
        i = self._index.get(day)
        return None if i is None else self._last[i]

    def prev_close(self, day: date) -> float | None:
        """The close of the last session strictly before ``day``."""
        i = bisect.bisect_left(self._days, day) - 1
        return self._last[i] if i >= 0 else None

    def last_session_day(self, day: date) -> date | None:
        """The last session on or before ``day``."""
        i = bisect.bisect_right(self._days, day) - 1
        return self._days[i] if i >= 0 else None

    def session_at(self, t: datetime) -> Session | None:
        """The session open at ``t``, if any."""
        i = self._session_index(t)
        if i < 0:
            return None
        s = self.sessions[i]
        return s if t < s.close else None


def _clip(v: float, b: DailyBar) -> float:
    """``v`` clipped to the bar's range, exactly as ``_intraday`` clips its points."""
    lo, hi = b.low, b.high
    return lo if v < lo else hi if v > hi else v


class IntradayDraws:
    """The seeded intraday points of every session, drawn on demand and the same as drawing them all
    in order from one ``random.Random(seed * 7919 + 17)``: a session not asked for is passed over by
    advancing the generator by exactly the random numbers its points would have used (its two
    ``randint`` calls, then its Gaussians: two ``random()`` calls, four 32-bit words, per pair, the
    last pair drawn for real when it leaves its second value for the next session). The generator's
    state is kept every ``CHECKPOINT`` sessions, so going back costs at most that many skips."""

    CHECKPOINT = 64

    def __init__(self, bars: list[DailyBar], steps: list[int], seed: int) -> None:
        self._bars = bars
        self._steps = steps
        self._rng = random.Random(seed * 7919 + 17)
        self._next = 0  # the session the generator's state is at the start of
        self._states: dict[int, tuple[object, ...]] = {0: self._rng.getstate()}

    def points(self, index: int) -> list[float]:
        """Session ``index``'s points, as ``_intraday`` draws them in the full sequence."""
        rng = self._rng
        if index < self._next:
            start = index - index % self.CHECKPOINT
            rng.setstate(self._states[start])
            self._next = start
        while self._next < index:
            self._skip(self._steps[self._next], rng)
            self._advanced()
        pts = _intraday(self._bars[index], self._steps[index], rng)
        self._advanced()
        return pts

    def _advanced(self) -> None:
        self._next += 1
        if self._next % self.CHECKPOINT == 0 and self._next not in self._states:
            self._states[self._next] = self._rng.getstate()

    @staticmethod
    def _skip(n: int, rng: random.Random) -> None:
        """Advance ``rng`` exactly as ``_intraday`` with ``n`` steps would, without its points."""
        rng.randint(1, n - 1)
        rng.randint(1, n - 1)
        draws = n  # _intraday takes exactly n Gaussians (its segments' steps add up to n)
        if rng.gauss_next is not None:  # type: ignore[attr-defined]
            draws -= 1  # the first is the value the last pair left
        rng.gauss_next = None  # type: ignore[attr-defined]
        pairs = (draws + 1) // 2
        if draws % 2:  # the last pair leaves its second value for the next session: draw it for real
            if pairs > 1:
                rng.getrandbits(128 * (pairs - 1))
            rng.gauss()
        elif pairs:
            rng.getrandbits(128 * pairs)


def _intraday(b: DailyBar, n: int, rng: random.Random) -> list[float]:
    """n+1 (n ≥ 3) points from open to close that touch the high and the low (a Brownian bridge through
    both extremes at random times), clipped to [low, high]."""
    t_hi = rng.randint(1, n - 1)
    t_lo = rng.randint(1, n - 1)
    if t_hi == t_lo:
        t_lo = t_lo + 1 if t_lo < n - 1 else t_lo - 1
    anchors = {0: b.open, n: b.close, t_hi: b.high, t_lo: b.low}
    ordered = sorted(anchors.items())
    pts = [0.0] * (n + 1)
    scale = (b.high - b.low) * 0.125
    gauss = rng.gauss
    for (k0, v0), (k1, v1) in pairwise(ordered):
        steps = k1 - k0
        walk = [0.0] * (steps + 1)
        end = 0.0
        for i in range(1, steps + 1):
            end += gauss(0, 1)
            walk[i] = end
        amp = scale / math.sqrt(steps)
        move = v1 - v0
        pts[k0:k1 + 1] = [v0 + move * (j / steps) + (w - (j / steps) * end) * amp for j, w in enumerate(walk)]
    for k, v in ordered:
        pts[k] = v
    lo, hi = b.low, b.high
    return [lo if p < lo else hi if p > hi else p for p in pts]
