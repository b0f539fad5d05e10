"""Market data for the `sim` broker: daily bars (from a CSV or a seeded synthetic path), the
intraday path of each session built from its OHLC, and the implied-volatility input."""

from __future__ import annotations

import bisect
import csv
import itertools
import math
import random
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from strategy.calendar import Session, SessionCalendar

QQQM_RATIO = 0.4115


@dataclass(frozen=True, slots=True)
class DailyBar:
    day: date
    open: float
    high: float
    low: float
    close: float


class CsvError(ValueError):
    """A CSV the bot cannot use, with the file, the line and the problem."""


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


def load_ohlc_csv(path: Path | str) -> list[DailyBar]:
    """Daily bars from a Yahoo/IB export (Date,Open,High,Low,Close[,...]); rows of Yahoo's "null"
    are skipped; anything else malformed raises CsvError naming the line."""
    path = Path(path)
    header, body = _open_rows(path)
    need = ["date", "open", "high", "low", "close"]
    missing = [n for n in need if n not in header]
    if missing:
        raise CsvError(f"{path}: missing column(s) {', '.join(missing)} (need Date,Open,High,Low,Close; "
                       f"found {','.join(header)})")
    idx = [header.index(n) for n in need]
    bars: list[DailyBar] = []
    for line, row in body:
        try:
            cells = [row[i].strip() for i in idx]
        except IndexError:
            raise CsvError(f"{path}, line {line}: too few columns") from None
        if any(c.lower() in ("null", "") for c in cells[1:]):
            continue
        try:
            day = _parse_date(cells[0])
        except ValueError:
            raise CsvError(f"{path}, line {line}: '{cells[0]}' is not a date (YYYY-MM-DD)") from None
        try:
            o, h, lo, c = (float(x) for x in cells[1:])
        except ValueError:
            raise CsvError(f"{path}, line {line}: a price is not a number ({','.join(cells[1:])})") from None
        if not all(math.isfinite(v) and v > 0 for v in (o, h, lo, c)):
            raise CsvError(f"{path}, line {line}: prices must be positive numbers")
        tol = 1e-6 * h
        if lo > h + tol or not (lo - tol <= c <= h + tol) or not (lo - tol <= o <= h + tol):
            raise CsvError(f"{path}, line {line}: open/close outside the low–high range")
        if bars and day <= bars[-1].day:
            raise CsvError(f"{path}, line {line}: date {day} is not after {bars[-1].day} (duplicate or unsorted)")
        bars.append(DailyBar(day, o, h, lo, c))
    if not bars:
        raise CsvError(f"{path}: no usable rows (the file is empty of prices)")
    return bars


def load_series_csv(path: Path | str, column: str) -> dict[date, float]:
    """One numeric column by date (e.g. VXN); values above 3 are percent (25.3 → 0.253)."""
    path = Path(path)
    header, body = _open_rows(path)
    if "date" not in header:
        raise CsvError(f"{path}: no Date column")
    col = column.strip().lower()
    if col not in header:
        raise CsvError(f"{path}: no column '{column}' (found {','.join(header)})")
    di, ci = header.index("date"), header.index(col)
    out: dict[date, float] = {}
    for line, row in body:
        try:
            day = _parse_date(row[di])
            text = row[ci].strip()
        except (ValueError, IndexError):
            raise CsvError(f"{path}, line {line}: unreadable date or missing value") from None
        if text.lower() in ("", "null", "."):
            continue
        try:
            v = float(text)
        except ValueError:
            raise CsvError(f"{path}, line {line}: '{text}' is not a number") from None
        if not math.isfinite(v) or v <= 0:
            raise CsvError(f"{path}, line {line}: volatility must be positive")
        out[day] = v / 100 if v > 3 else v
    if not out:
        raise CsvError(f"{path}: column '{column}' has no values")
    return out


class IvSource:
    """Implied volatility by day: a constant, or a series (latest value on or before the day)."""

    def __init__(self, constant: float | None = None, series: dict[date, float] | None = None) -> None:
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


def synthetic_bars(
    sessions: list[Session], seed: int, s0: float = 100.0, mu: float = 0.10, sigma: float = 0.22
) -> list[DailyBar]:
    """A seeded daily path: GBM with GARCH-like volatility clustering, so calm stretches alternate
    with stressed ones (−1 % days are common, −5 % days rare but present)."""
    rng = random.Random(seed)
    daily_var = sigma * sigma / 252
    var = daily_var
    price = s0
    out = []
    for s in sessions:
        vol = math.sqrt(var)
        gap = rng.gauss(0, vol * 0.35)
        body = rng.gauss(0, vol * 0.94)
        ret = mu / 252 - 0.5 * vol * vol + gap + body
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
    ``step_min`` resolution, interpolated linearly; outside hours, the last close."""

    def __init__(self, sessions: list[Session], points: list[list[float]], step_s: float, skipped: int = 0) -> None:
        self.sessions = sessions
        self._points = points
        self._step_s = step_s
        self._opens = [s.open for s in sessions]
        self._days = [s.day for s in sessions]
        self._index = {s.day: i for i, s in enumerate(sessions)}
        self.skipped = skipped
        self._cache_i = 0

    @classmethod
    def from_bars(cls, bars: list[DailyBar], calendar: SessionCalendar, seed: int, step_min: int = 5) -> PricePath:
        rng = random.Random(seed * 7919 + 17)
        sessions: list[Session] = []
        points: list[list[float]] = []
        skipped = 0
        for b in bars:
            s = calendar.session(b.day)
            if s is None:
                skipped += 1
                continue
            n = max(2, int((s.close - s.open).total_seconds() // (step_min * 60)))
            sessions.append(s)
            points.append(_intraday(b, n, rng))
        if not sessions:
            raise ValueError("no bar falls on a session of the calendar")
        return cls(sessions, points, step_min * 60.0, skipped)

    @classmethod
    def wall_clock(cls, calendar: SessionCalendar, seed: int, start: date, end: date, s0: float = 480.0) -> PricePath:
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
        i = self._session_index(t)
        if i < 0:
            return self._points[0][0]
        s = self.sessions[i]
        pts = self._points[i]
        if t >= s.close:
            return pts[-1]
        x = (t - s.open).total_seconds() / self._step_s
        k = int(x)
        if k >= len(pts) - 1:
            return pts[-1]
        frac = x - k
        return pts[k] + (pts[k + 1] - pts[k]) * frac

    def close_of(self, day: date) -> float | None:
        i = self._index.get(day)
        return None if i is None else self._points[i][-1]

    def prev_close(self, day: date) -> float | None:
        """The close of the session before ``day``."""
        i = bisect.bisect_left(self._days, day) - 1
        return self._points[i][-1] if i >= 0 else None

    def session_at(self, t: datetime) -> Session | None:
        i = self._session_index(t)
        if i < 0:
            return None
        s = self.sessions[i]
        return s if t < s.close else None


def _intraday(b: DailyBar, n: int, rng: random.Random) -> list[float]:
    """n+1 points from open to close that touch the high and the low (a Brownian bridge through
    both extremes at random times), clipped to [low, high]."""
    t_hi, t_lo = rng.randint(1, n - 1) if n > 2 else 1, rng.randint(1, n - 1) if n > 2 else 1
    if t_hi == t_lo:
        t_lo = t_lo + 1 if t_lo < n - 1 else t_lo - 1
    anchors = sorted({0: b.open, n: b.close, t_hi: b.high, t_lo: b.low}.items())
    pts = [0.0] * (n + 1)
    scale = (b.high - b.low) * 0.25 + 1e-9
    for (k0, v0), (k1, v1) in itertools.pairwise(anchors):
        steps = k1 - k0
        walk = [0.0]
        for _ in range(steps):
            walk.append(walk[-1] + rng.gauss(0, 1))
        for j in range(steps + 1):
            frac = j / steps if steps else 0
            bridge = walk[j] - frac * walk[-1]
            pts[k0 + j] = v0 + (v1 - v0) * frac + bridge * scale / math.sqrt(max(steps, 1)) * 0.5
    for k, v in anchors:
        pts[k] = v
    return [min(max(p, b.low), b.high) for p in pts]

