"""What the control plane asks of the bot: one method per command, returning plain views for the
formatters. Every broker call here has a short timeout, so a slow or hung broker turns into a
note in the reply ("quote unavailable") and never delays a command; nothing here trades except
through the engine and the settings service."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TypeVar

from bot.engine import Engine, TickReport
from bot.settings_service import SettingsService
from broker.base import AccountSummary, Position
from storage import kv, ledger
from strategy.calendar import NY
from strategy.model import OptionQuote
from strategy.rules import lot_pnl_pct, take_profit_target
from strategy.settings import SettingChange, SettingError, StrategySettings

log = logging.getLogger(__name__)
T = TypeVar("T")
BROKER_TIMEOUT_S = 4.0
CHECK_TIMEOUT_S = 60.0
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class StatusView:
    mode: str
    broker: str
    connection: str
    paused: bool
    market_open: bool
    qqq_last: Decimal | None
    prev_close: Decimal | None
    change_pct: Decimal | None
    next_tick: datetime | None
    last_tick_time: str | None
    last_tick_summary: str | None
    open_lots: int
    max_positions: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LotRow:
    id: int
    contract: str
    qty: int
    entry: Decimal
    mid: Decimal | None
    pnl_pct: Decimal | None
    pnl_usd: Decimal | None
    held_days: int
    target_pct: Decimal
    days_to_force_exit: int
    dte: int


@dataclass(frozen=True, slots=True)
class PositionsView:
    lots: tuple[LotRow, ...]
    others: dict[str, tuple[Position, ...]]
    cash: dict[str, Decimal]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AccountView:
    account: AccountSummary | None
    qqqm_shares: int
    qqqm_cost: Decimal
    qqqm_value: Decimal | None
    pool: Decimal
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TradeRow:
    time: datetime
    side: str
    qty: int
    what: str
    price: Decimal
    commission: Decimal | None
    realized: Decimal | None
    purpose: str


@dataclass(frozen=True, slots=True)
class PnlView:
    realized_options: Decimal
    unrealized_options: Decimal | None
    qqqm_cost: Decimal
    qqqm_value: Decimal | None
    pool: Decimal
    closed_lots: int
    wins: int
    curve: tuple[tuple[datetime, Decimal], ...] = field(default=())
    notes: tuple[str, ...] = ()


class BotService:
    def __init__(self, engine: Engine, settings: SettingsService, mode: str) -> None:
        self.engine = engine
        self.settings = settings
        self.mode = mode

    async def _ask(self, what: str, call: Awaitable[T], notes: list[str]) -> T | None:
        """A broker call bounded in time; a failure becomes a note for the reply."""
        try:
            return await asyncio.wait_for(call, BROKER_TIMEOUT_S)
        except TimeoutError:
            notes.append(f"{what} unavailable: the broker did not answer within {BROKER_TIMEOUT_S:.0f} s")
        except Exception as e:
            log.warning("%s failed: %s", what, e)
            notes.append(f"{what} unavailable: {type(e).__name__}: {e}")
        return None

    def _today(self) -> date:
        return self.engine.clock.now().astimezone(NY).date()

    # --- read-only --------------------------------------------------------------------------------

    async def status(self) -> StatusView:
        notes: list[str] = []
        eng, s = self.engine, self.settings.current
        now = eng.clock.now()
        session = eng.calendar.open_session(now)
        quote = await self._ask("QQQ quote", eng.broker.quote("QQQ"), notes)
        day = session.day if session is not None else self._today()
        prev = await self._ask("previous close", eng.prev_close(day), notes)
        last = quote.last if quote is not None and quote.last is not None else (quote.mid if quote else None)
        change = (last / prev - 1) * 100 if last is not None and prev else None
        report = eng.last_report
        if report is not None:
            last_time, last_summary = report.time.isoformat(timespec="seconds"), report.summary()
        else:
            raw = kv.get("last_tick")
            last_time = last_summary = None
            if raw:
                try:
                    stored = json.loads(raw)
                    last_time, last_summary = stored["time"], stored["summary"]
                except (ValueError, KeyError, TypeError):
                    notes.append("the stored last tick is unreadable")
        return StatusView(
            mode=self.mode, broker=eng.broker.name, connection=eng.broker.state.value, paused=s.paused,
            market_open=session is not None, qqq_last=last, prev_close=prev, change_pct=change,
            next_tick=eng.calendar.next_tick(now, s.check_interval_min, s.delay_after_open_min),
            last_tick_time=last_time, last_tick_summary=last_summary, open_lots=len(ledger.open_lots()),
            max_positions=s.max_positions, notes=tuple(notes),
        )

    async def positions(self) -> PositionsView:
        notes: list[str] = []
        lots = ledger.open_lots()
        s = self.settings.current
        today = self._today()
        quotes: dict[object, OptionQuote] = {}
        if lots:
            got = await self._ask("option quotes", self.engine.broker.option_quotes([lot.contract for lot in lots]),
                                  notes)
            quotes = {q.contract: q for q in got or []}
        rows = []
        for lot in lots:
            q = quotes.get(lot.contract)
            mid = q.mid if q is not None else None
            held = lot.held_days(today)
            pct = lot_pnl_pct(mid, lot.avg_price) if mid is not None and lot.avg_price > 0 else None
            usd = (mid - lot.avg_price) * lot.qty * lot.contract.multiplier if mid is not None else None
            rows.append(LotRow(lot.id, lot.contract.key, lot.qty, lot.avg_price, mid, pct, usd, held,
                               take_profit_target(held, s.tp_tiers), s.force_exit_days - held,
                               lot.contract.dte(today)))
        held_by_bot = {lot.contract: lot.qty for lot in lots}
        others: dict[str, list[Position]] = {"stock": [], "option": [], "bond": []}
        cash: dict[str, Decimal] = {}
        positions = await self._ask("positions", self.engine.broker.positions(), notes)
        for p in positions or []:
            if p.category == "cash":
                cash[p.currency] = cash.get(p.currency, ZERO) + (p.market_value or p.qty)
                continue
            if p.contract is not None and p.contract in held_by_bot:
                rest = p.qty - held_by_bot[p.contract]
                if rest == 0:
                    continue
                p = Position(p.category, p.symbol, p.description + " (besides the bot's lot)", rest, p.avg_cost,
                             p.market_price, None, p.currency, p.contract)
            others.setdefault(p.category, []).append(p)
        if not cash and positions is not None:
            account = await self._ask("account summary", self.engine.broker.account_summary(), notes)
            if account is not None:
                cash = dict(account.cash_by_currency)
        return PositionsView(tuple(rows), {k: tuple(v) for k, v in others.items()}, cash, tuple(notes))

    async def account(self) -> AccountView:
        notes: list[str] = []
        account = await self._ask("account summary", self.engine.broker.account_summary(), notes)
        shares, cost = ledger.qqqm_bought()
        value = None
        if shares:
            q = await self._ask("QQQM quote", self.engine.broker.quote("QQQM"), notes)
            price = (q.last or q.mid) if q is not None else None
            value = price * shares if price is not None else None
        return AccountView(account, shares, cost, value, ledger.recycling_pool(), tuple(notes))

    def trades(self, n: int) -> list[TradeRow]:
        rows = []
        for f in reversed(ledger.fills_in_order(limit=n)):
            order = f.order
            what = f.symbol if f.sec_type != "OPT" else (
                f"{f.symbol} {f.expiry.isoformat()} {Decimal(f.strike).normalize():f}{f.right}")
            rows.append(TradeRow(f.time, f.side, f.qty, what, f.price, f.commission, f.realized_pnl,
                                 order.purpose if order is not None else "outside the bot"))
        return rows

    async def pnl(self) -> PnlView:
        notes: list[str] = []
        positions = await self.positions()
        notes.extend(positions.notes)
        unrealized: Decimal | None = ZERO
        for row in positions.lots:
            if row.pnl_usd is None:
                unrealized = None
                break
            unrealized = (unrealized or ZERO) + row.pnl_usd
        account = await self.account()
        notes.extend(n for n in account.notes if n not in notes)
        curve, total = [], ZERO
        for f in ledger.fills_in_order():
            if f.sec_type == "OPT" and f.realized_pnl is not None:
                total += f.realized_pnl
                curve.append((f.time, total))
        closed = ledger.closed_lot_pnls()
        return PnlView(ledger.realized_option_pnl(), unrealized, account.qqqm_cost, account.qqqm_value,
                       account.pool, len(closed), sum(1 for p in closed if p > 0), tuple(curve), tuple(notes))

    def current_settings(self) -> StrategySettings:
        return self.settings.current

    # --- changing ---------------------------------------------------------------------------------

    def set_setting(self, key: str, value: str, who: str) -> SettingChange | SettingError:
        return self.settings.update(key, value, who)

    def set_paused(self, paused: bool, who: str) -> SettingChange | SettingError:
        return self.settings.update("paused", "on" if paused else "off", who)

    async def check(self) -> TickReport:
        """Evaluate a tick now and say what it would do, without trading."""
        return await asyncio.wait_for(self.engine.tick(dry_run=True), CHECK_TIMEOUT_S)
