"""What one tick saw, decided and did: the record the engine returns for /status, /check and the log."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from strategy.explain import Reason
from strategy.model import TickPlan
from strategy.settings import PauseMode


@dataclass
class TickReport:
    """What one tick saw, decided and did (for /status, /check and the log)."""

    time: datetime
    session: date | None
    change: Decimal | None = None
    qqq: Decimal | None = None
    prev_close: Decimal | None = None
    plan: TickPlan | None = None
    dry_run: bool = False
    paused: PauseMode = PauseMode.OFF
    actions: list[str] = field(default_factory=list)
    skipped: str = ""
    reasons: tuple[Reason, ...] = ()  # why: each topic's decision or the reason there is none

    def summary(self) -> str:
        if self.skipped:
            return self.skipped
        parts = []
        if self.change is not None:
            parts.append(f"QQQ {self.qqq} ({self.change * 100:+.2f}% vs {self.prev_close})")
        plan = self.plan
        if plan is not None:
            exits_would = "would " if (self.dry_run or self.paused.holds_exits) else ""
            buys_would = "would " if (self.dry_run or self.paused) else ""
            for e in plan.exits:
                parts.append(f"{exits_would}sell lot #{e.lot_id} ({e.reason.label})")
            if plan.retry_roll_buy is not None:
                parts.append(f"{buys_would}retry roll #{plan.retry_roll_buy} buy leg")
            if plan.roll is not None:
                parts.append(f"{buys_would}roll lot #{plan.roll.lot_id}")
            if plan.entry is not None:
                parts.append(f"{buys_would}enter a new LEAPS")
            if plan.recycle is not None:
                parts.append(f"{buys_would}buy {plan.recycle.shares} QQQM (recycling)")
            parts.extend(plan.notes)
            if plan.is_empty and not plan.notes:
                parts.append("no action")
        if self.paused:
            parts.append("(paused)" if self.paused.holds_exits else "(entries paused)")
        parts.extend(self.actions)
        return "; ".join(parts)
