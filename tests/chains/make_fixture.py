"""Writes ``qqq_leaps_2026-02.csv``: a reconstruction of the real QQQ LEAPS call quotes of
2026-02-11 (calm), 2026-02-12 (QQQ −2.0 %) and 2026-02-13 (the day after), built ONLY from the
figures published in issue 19 (public chain snapshots of February 2026), not a copy of a real chain:

- expiries 2027-01-15 (338 days on the 12th, not a LEAPS) and those at ≥ 365 days: 2027-06-17,
  2027-09-17, 2027-12-17, 2028-01-21, 2028-06-16 (nothing listed in between);
- the ~0.6-delta LEAPS at 23 % implied volatility on all three days (while VXN went 23 → 27);
- a skew of 0.27 × ln(K/F)/√T on every expiry and day;
- r − q = 2.9 % (the issue: 2.8–3 %), here r = 3.5 %, q = 0.6 %;
- spreads: a dollar part plus a share of the mid, with a seeded ±15 % strike-to-strike scatter (real
  quotes are irregular: on the first LEAPS expiry a few strikes quote tighter than their
  neighbours), rounded to 5 cents, so that 0.55–0.65-delta calls at ≥ 365 days have a median spread
  of about 5.6 % of the mid (the issue: median 5.00 USD, ~5.6 %; with these model mids a 5.6 %
  median comes out at ~4.75 USD: both medians cannot hold at once with 23 % IV mids);
- QQQ's price: the day's close (the snapshot is taken at 15:45 New York), from
  ``/work/shared/data/qqq_daily.csv`` (613.11, 600.64, 601.92).

Strikes every 5 USD with a delta of 0.25–0.92. Run ``python tests/chains/make_fixture.py`` to
rewrite it; the output is deterministic.
"""

from __future__ import annotations

import csv
import math
import random
from datetime import date
from pathlib import Path
from statistics import NormalDist

from strategy.pricing import bs_price_delta

DAYS = {date(2026, 2, 11): 613.11, date(2026, 2, 12): 600.64, date(2026, 2, 13): 601.92}
EXPIRIES = (date(2027, 1, 15), date(2027, 6, 17), date(2027, 9, 17), date(2027, 12, 17), date(2028, 1, 21),
            date(2028, 6, 16))
RATE, YIELD, IV60, SKEW = 0.035, 0.006, 0.23, 0.27
SPREAD_USD, SPREAD_SHARE, SCATTER = 2.30, 0.029, 0.15
HERE = Path(__file__).resolve().parent


def rows() -> list[dict[str, str]]:
    rng = random.Random(19)
    out = []
    for day, spot in DAYS.items():
        for expiry in EXPIRIES:
            # 15:45 → the 16:00 close of the expiry day: days plus a quarter hour
            T = ((expiry - day).days + 0.25 / 24) / 365
            F = spot * math.exp((RATE - YIELD) * T)
            d1 = NormalDist().inv_cdf(0.6 / math.exp(-YIELD * T))
            x60 = -d1 * IV60 * math.sqrt(T) + 0.5 * IV60 * IV60 * T  # ln(K/F) of the 0.6-delta call
            atm = IV60 + SKEW * x60 / math.sqrt(T)
            for strike in range(300, 1200, 5):
                iv = atm - SKEW * math.log(strike / F) / math.sqrt(T)
                mid, delta = bs_price_delta(spot, strike, T, RATE, YIELD, iv, "C")
                if not 0.25 <= delta <= 0.92:
                    continue
                width = round((SPREAD_USD + SPREAD_SHARE * mid) * rng.uniform(1 - SCATTER, 1 + SCATTER) * 20) / 20
                bid = round(mid - width / 2, 2)
                out.append({"date": day.isoformat(), "time": "15:45", "expiry": expiry.isoformat(),
                            "strike": str(strike), "right": "C", "bid": f"{bid:.2f}", "ask": f"{bid + width:.2f}",
                            "underlying": f"{spot:.2f}"})
    return out


def main() -> None:
    data = rows()
    with open(HERE / "qqq_leaps_2026-02.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(data[0]))
        w.writeheader()
        w.writerows(data)


if __name__ == "__main__":
    main()
